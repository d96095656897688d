//! A zone's identity in the federation, with real processes: one zone
//! control plane per zone name (a second one is refused while the first
//! lives, and admitted once it is gone), and a zone token that is revoked
//! or expires closes the live stream within seconds.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use base64::Engine;
use meridian_e2e::*;
use serde_json::{json, Value};

const CONVERGE: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(100);

/// The open subscriptions of `zone` at the global: (zone instance, global instance).
fn open_subscriptions(global: &Proc, zone: &str) -> Vec<(String, String)> {
    let (_, body) = global.get(&format!("/zones+insights/{zone}"));
    body["zoneInsight"]["subscriptions"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|s| s.get("disconnectTime").is_none_or(Value::is_null))
        .map(|s| {
            (
                s["zoneInstanceId"].as_str().unwrap_or_default().to_string(),
                s["globalInstanceId"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

fn global_dataplanes(global: &Proc) -> Vec<String> {
    names(&global.get("/meshes/default/dataplanes").1)
}

fn dataplane(name: &str) -> Value {
    json!({"type": "Dataplane", "mesh": "default", "name": name,
           "networking": {"address": "127.0.0.1",
                          "inbound": [{"port": 9000, "tags": {"kuma.io/service": "web"}}]}})
}

/// Lines of `p`'s log containing `needle`.
fn log_lines(p: &Proc, needle: &str) -> Vec<String> {
    p.log_text()
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_string)
        .collect()
}

#[test]
fn a_second_zone_control_plane_under_one_name_is_refused_while_the_first_lives() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let global = start_global_embedded(d, &d.join("global"), &[]);
    let join = zone_join(&global, "zone-a", &d.join("join"));
    let mut first = start_zone(d, &join, None, &["--store", "memory", "--kds-keepalive", "1s"]);
    wait_for("zone-a online", CONVERGE, || {
        zone_online(&global, "zone-a").then_some(())
    });
    wait_for("the default mesh at the zone", CONVERGE, || {
        (first.get("/meshes/default").0 == 200).then_some(())
    });
    let (status, body) = first.put_json("/meshes/default/dataplanes/dp-first", &dataplane("dp-first"));
    assert_eq!(status / 100, 2, "{body}");
    let dp = "zone-a.dp-first".to_string();
    wait_for("the first zone's dataplane at the global", CONVERGE, || {
        global_dataplanes(&global).contains(&dp).then_some(())
    });
    let held_by = open_subscriptions(&global, "zone-a");
    assert_eq!(held_by.len(), 1, "{held_by:?}");
    // The overview says which build connected, from where and when.
    let (_, overview) = global.get("/zones+insights/zone-a");
    assert_eq!(overview["version"], env!("CARGO_PKG_VERSION"), "{overview}");
    assert!(
        overview["address"]
            .as_str()
            .is_some_and(|a| a.starts_with("127.0.0.1:")),
        "{overview}"
    );
    assert!(overview["lastConnectTime"].is_string(), "{overview}");
    let out = global.ctl(&["inspect", "zones"], None);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("VERSION") && table.contains("LAST CONNECTED"), "{table}");
    assert!(table.contains(env!("CARGO_PKG_VERSION")), "{table}");

    // The same name and token, another process.
    let second = start_zone(d, &join, None, &["--store", "memory", "--kds-keepalive", "1s"]);
    wait_until("the second zone to be refused twice", CONVERGE, POLL, || {
        let refusals = log_lines(&second, "ALREADY_EXISTS");
        (refusals.len() >= 2).then_some(()).ok_or(second.log_text())
    });
    let refusal = log_lines(&second, "ALREADY_EXISTS").remove(0);
    eprintln!("second zone: {refusal}");
    assert!(
        refusal.contains("second zone control plane") && refusal.contains(&held_by[0].0),
        "the refusal names the holder: {refusal}"
    );
    assert!(
        global.log_text().contains("another zone control plane holds"),
        "the global logs the refusal"
    );
    // The first one's view is intact: it still holds the only open
    // subscription, and its dataplane was never replaced by the second's
    // (empty) inventory.
    assert_eq!(open_subscriptions(&global, "zone-a"), held_by);
    assert!(global_dataplanes(&global).contains(&dp));
    assert_eq!(
        second.get("/meshes/default").0,
        404,
        "nothing was synced to the refused zone"
    );

    // Once the first is gone (SIGKILL), the second gets in.
    first.kill9();
    let killed = Instant::now();
    wait_until("the second zone admitted", CONVERGE, POLL, || {
        let subs = open_subscriptions(&global, "zone-a");
        (subs.len() == 1 && subs[0].0 != held_by[0].0)
            .then_some(())
            .ok_or(format!("{subs:?}"))
    });
    eprintln!(
        "RELIABILITY zone-duplicate: refused while the first lived; admitted {:?} after the first was killed",
        killed.elapsed()
    );
    // Its inventory (none) is now zone-a's at the global.
    wait_for("the first zone's dataplane gone from the global", CONVERGE, || {
        (!global_dataplanes(&global).contains(&dp)).then_some(())
    });
}

/// The id (`jti`) of a zone token.
fn token_id(token: &str) -> String {
    let claims = token.trim().split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(claims).unwrap();
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    v["jti"].as_str().unwrap().to_string()
}

/// The zone-join arguments with `--token-file` pointing at `token`.
fn with_token(join: &[String], dir: &std::path::Path, name: &str, token: &str) -> Vec<String> {
    let file = dir.join(name);
    std::fs::write(&file, token).unwrap();
    let mut join = join.to_vec();
    let i = join.iter().position(|a| a == "--token-file").unwrap();
    join[i + 1] = file.display().to_string();
    join
}

#[test]
fn a_revoked_or_expired_zone_token_closes_the_live_stream() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let global = start_global_embedded(d, &d.join("global"), &[]);

    // Revoked.
    let join = zone_join(&global, "zone-r", &d.join("join-r"));
    let i = join.iter().position(|a| a == "--token-file").unwrap();
    let token = std::fs::read_to_string(&join[i + 1]).unwrap();
    let zone_r = start_zone(d, &join, None, &["--store", "memory"]);
    wait_for("zone-r online", CONVERGE, || {
        zone_online(&global, "zone-r").then_some(())
    });
    let revoked_at = Instant::now();
    let (status, body) = http(
        "POST",
        &format!("{}/tokens/zone/revoke", global.api),
        Some(json!({"id": token_id(&token)}).to_string()),
        Some("application/json"),
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
    wait_until("zone-r offline after the revocation", CONVERGE, POLL, || {
        (!zone_online(&global, "zone-r"))
            .then_some(())
            .ok_or("online".to_string())
    });
    let offline_after = revoked_at.elapsed();
    wait_until("zone-r to log why", CONVERGE, POLL, || {
        (!log_lines(&zone_r, "was revoked").is_empty())
            .then_some(())
            .ok_or(zone_r.log_text())
    });

    // Expired: a token valid for 3 s.
    let join = zone_join(&global, "zone-e", &d.join("join-e"));
    let (status, short) = http(
        "POST",
        &format!("{}/tokens/zone", global.api),
        Some(json!({"zone": "zone-e", "validFor": "3s"}).to_string()),
        Some("application/json"),
    )
    .map(|(s, v)| (s, v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string())))
    .unwrap();
    assert_eq!(status, 200, "{short}");
    let issued = Instant::now();
    let join = with_token(&join, d, "short.token", &short);
    let zone_e = start_zone(d, &join, None, &["--store", "memory"]);
    wait_for("zone-e online", CONVERGE, || {
        zone_online(&global, "zone-e").then_some(())
    });
    wait_until("zone-e offline after its token expired", CONVERGE, POLL, || {
        (!zone_online(&global, "zone-e"))
            .then_some(())
            .ok_or("online".to_string())
    });
    let expired_after = issued.elapsed().saturating_sub(Duration::from_secs(3));
    wait_until("zone-e to log why", CONVERGE, POLL, || {
        (!log_lines(&zone_e, "expired").is_empty())
            .then_some(())
            .ok_or(zone_e.log_text())
    });
    eprintln!(
        "RELIABILITY zone-token: revoked → zone offline at the global after {offline_after:?}; \
         expired → offline {expired_after:?} after the expiry"
    );
    assert!(offline_after < Duration::from_secs(10), "{offline_after:?}");
    assert!(expired_after < Duration::from_secs(10), "{expired_after:?}");
}
