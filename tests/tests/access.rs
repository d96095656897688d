#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly
//! Control-plane access (DESIGN §12) with real processes: tokens, roles,
//! filtered lists, the audit log, zones accepting the global's users, TLS.

use std::time::Duration;

use meridian_e2e::*;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);

fn as_user(token: &str, method: &str, url: &str, body: Option<Value>) -> (u16, Value) {
    http_as(Some(token), method, url, body.map(|b| b.to_string()), None).unwrap()
}

fn anonymous(method: &str, url: &str) -> (u16, Value) {
    http_as(None, method, url, None, None).unwrap()
}

fn timeout_policy(mesh: &str, name: &str) -> Value {
    json!({"type": "MeshTimeout", "mesh": mesh, "name": name,
           "spec": {"targetRef": {"kind": "Mesh"},
                    "to": [{"targetRef": {"kind": "Mesh"}, "default": {"idleTimeout": "1h"}}]}})
}

/// `meridianctl generate user-token` against `g` (with the admin token).
fn user_token(g: &Proc, name: &str, groups: &[&str], valid_for: &str) -> String {
    let mut args = vec!["generate", "user-token", "--name", name, "--valid-for", valid_for];
    for grp in groups {
        args.extend(["--group", grp]);
    }
    let out = g.ctl(&args, None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn jti(token: &str) -> String {
    use base64::Engine;
    let claims = token.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(claims).unwrap();
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    v["jti"].as_str().unwrap().to_string()
}

/// `token` with its claims changed to the admin group, signature kept.
fn tampered(token: &str) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let parts: Vec<&str> = token.split('.').collect();
    let mut claims: Value = serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
    claims["groups"] = json!(["mesh-system:admin"]);
    let claims = b64.encode(serde_json::to_vec(&claims).unwrap());
    format!("{}.{claims}.{}", parts[0], parts[2])
}

fn details(body: &Value) -> String {
    body["details"].as_str().unwrap_or_default().to_string()
}

#[test]
fn tokens_are_required_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let g = start_global_embedded(dir.path(), &dir.path().join("data"), &[]);
    let api = &g.api;

    // Probes stay open; everything else needs a token and says so.
    for open in ["/", "/ready", "/healthy"] {
        assert_eq!(anonymous("GET", &format!("{api}{open}")).0, 200, "{open}");
    }
    for closed in [
        "/meshes",
        "/metrics",
        "/global-insight",
        "/audit",
        "/zones",
        "/access-roles",
    ] {
        let (status, body) = anonymous("GET", &format!("{api}{closed}"));
        assert_eq!(status, 401, "{closed}: {body}");
        assert!(details(&body).contains("no token was presented"), "{closed}: {body}");
    }
    let (status, body) = http_as(
        None,
        "POST",
        &format!("{api}/tokens/zone"),
        Some(r#"{"zone":"east"}"#.into()),
        None,
    )
    .unwrap();
    assert_eq!(status, 401, "an anonymous caller must not mint zone tokens: {body}");

    // The admin token is in the data dir, mode 0600, and works.
    let file = dir.path().join("data/admin-token");
    let g2 = {
        // The harness points the token elsewhere; the default path is
        // <data-dir>/admin-token, which a second global shows.
        let port = free_port();
        let data = dir.path().join("data2");
        let args: Vec<String> = [
            "run",
            "--api-addr",
            &format!("127.0.0.1:{port}"),
            "--kds-addr",
            &format!("127.0.0.1:{}", free_port()),
            "--data-dir",
            data.to_str().unwrap(),
            "--admin-token-file",
            file.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut p = Proc::spawn("meridian-global", &args, &[], dir.path(), port);
        p.wait_ready(WAIT);
        p
    };
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the admin token is a secret");
    }
    let admin2 = std::fs::read_to_string(&file).unwrap().trim().to_string();
    assert_eq!(as_user(&admin2, "GET", &format!("{}/meshes", g2.api), None).0, 200);

    // Wrong tokens, each refused with the reason.
    let alice = user_token(&g, "alice", &["team-a"], "1h");
    let foreign = user_token(&g2, "alice", &["team-a"], "1h");
    let cases: Vec<(String, &str)> = vec![
        ("not-a-token".into(), "malformed"),
        ("a.b.c".into(), "malformed"),
        (admin2.clone(), "not this control plane's"),
        (foreign.clone(), "signature is invalid"),
        (format!("{alice}x"), "malformed"),
        (tampered(&alice), "signature is invalid"),
    ];
    for (token, why) in &cases {
        let (status, body) = as_user(token, "GET", &format!("{api}/meshes"), None);
        assert_eq!(status, 401, "{token}: {body}");
        assert!(details(&body).contains(why), "{why} not in {body}");
    }
    let (status, body) = http_as(None, "GET", &format!("{api}/meshes"), None, None).unwrap();
    assert_eq!(status, 401, "{body}");
    // A header that is not `Bearer …`.
    let resp = ureq::get(&format!("{api}/meshes"))
        .header("authorization", "Basic YWRtaW46YWRtaW4=")
        .config()
        .http_status_as_error(false)
        .build()
        .call()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    assert_eq!(
        resp.headers().get("www-authenticate").and_then(|v| v.to_str().ok()),
        Some("Bearer realm=\"meridian\"")
    );

    // A valid user token without a binding is authenticated but allowed nothing.
    let (status, body) = as_user(&alice, "GET", &format!("{api}/meshes"), None);
    assert_eq!((status, body["total"].as_u64()), (200, Some(0)), "{body}");
    let (status, body) = as_user(
        &alice,
        "PUT",
        &format!("{api}/meshes/default/meshtimeouts/t"),
        Some(timeout_policy("default", "t")),
    );
    assert_eq!(status, 403, "{body}");

    // Revoked and expired tokens stop working.
    let short = user_token(&g, "bob", &[], "1s");
    let out = g.ctl(&["revoke", "user-token", "--id", &jti(&alice)], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (status, body) = as_user(&alice, "GET", &format!("{api}/meshes"), None);
    assert_eq!(status, 401, "{body}");
    assert!(details(&body).contains("revoked"), "{body}");
    wait_until("the 1s token to expire", WAIT, Duration::from_millis(200), || {
        let (status, body) = as_user(&short, "GET", &format!("{api}/meshes"), None);
        if status == 401 && details(&body).contains("expired") {
            Ok(())
        } else {
            Err(format!("{status} {body}"))
        }
    });

    // meridianctl: no token → the server's reason and a hint; a token file works.
    let out = std::process::Command::new(bin("meridianctl"))
        .args(["--api", api, "get", "meshes"])
        .current_dir(dir.path())
        .env_remove("MERIDIAN_API_TOKEN")
        .env("MERIDIAN_CONFIG", dir.path().join("none.yaml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("401") && err.contains("no token was presented"), "{err}");
    let token_file = dir.path().join("g-admin-token");
    std::fs::write(&token_file, g.admin_token()).unwrap();
    let out = std::process::Command::new(bin("meridianctl"))
        .args([
            "--api",
            api,
            "--token-file",
            token_file.to_str().unwrap(),
            "get",
            "meshes",
        ])
        .env("MERIDIAN_CONFIG", dir.path().join("none.yaml"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("default"));
}

#[test]
fn teams_are_confined_to_their_meshes_and_everything_is_audited() {
    let dir = tempfile::tempdir().unwrap();
    let g = start_global_embedded(dir.path(), &dir.path().join("data"), &[]);
    let api = g.api.clone();

    // The defaults: an admin role and a binding of the admin group.
    let (_, roles) = g.get("/access-roles");
    assert_eq!(names(&roles), ["admin"]);
    let (_, bindings) = g.get("/access-role-bindings");
    assert_eq!(bindings["items"][0]["subjects"][0]["name"], "mesh-system:admin");

    for mesh in ["team-a", "team-b"] {
        let (status, body) = g.put_json(&format!("/meshes/{mesh}"), &json!({"type": "Mesh", "name": mesh}));
        assert_eq!(status, 201, "{body}");
    }
    let role = json!({"type": "AccessRole", "name": "team-a", "rules": [
        {"mesh": "team-a", "access": ["CREATE", "UPDATE", "DELETE", "VIEW", "VIEW_AUDIT", "GENERATE_DATAPLANE_TOKEN"]},
    ]});
    assert_eq!(g.put_json("/access-roles/team-a", &role).0, 201);

    // A binding naming a role that does not exist is refused, naming it.
    let (status, body) = g.put_json(
        "/access-role-bindings/team-a",
        &json!({"type": "AccessRoleBinding", "name": "team-a",
                "subjects": [{"type": "Group", "name": "team-a"}], "roles": ["team-a", "nosuch"]}),
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["causes"][0]["field"], "roles[1]", "{body}");
    assert_eq!(g.get("/access-role-bindings/team-a").0, 404, "nothing stored");
    let binding = json!({"type": "AccessRoleBinding", "name": "team-a",
                         "subjects": [{"type": "Group", "name": "team-a"}], "roles": ["team-a"]});
    assert_eq!(g.put_json("/access-role-bindings/team-a", &binding).0, 201);

    let alice = user_token(&g, "alice", &["team-a"], "1h");
    // Team A writes its mesh…
    let put = |mesh: &str, name: &str| {
        as_user(
            &alice,
            "PUT",
            &format!("{api}/meshes/{mesh}/meshtimeouts/{name}"),
            Some(timeout_policy(mesh, name)),
        )
    };
    assert_eq!(put("team-a", "t1").0, 201);
    assert_eq!(put("team-a", "t1").0, 200);
    // …and gets 403 in team B's, naming the permission it lacks.
    let (status, body) = put("team-b", "t1");
    assert_eq!(status, 403, "{body}");
    let why = details(&body);
    assert!(
        why.contains("\"alice\"") && why.contains("CREATE") && why.contains("\"team-b\""),
        "{why}"
    );
    assert_eq!(g.get("/meshes/team-b/meshtimeouts/t1").0, 404, "nothing stored");
    let (status, body) = as_user(&alice, "DELETE", &format!("{api}/meshes/team-b"), None);
    assert!(status == 403 && details(&body).contains("DELETE"), "{status} {body}");
    let (status, _) = as_user(&alice, "GET", &format!("{api}/meshes/team-b/meshtimeouts/t1"), None);
    assert_eq!(status, 403);

    // Lists hold only what the caller may view.
    let (_, meshes) = as_user(&alice, "GET", &format!("{api}/meshes"), None);
    assert_eq!(names(&meshes), ["team-a"]);
    let (_, b) = as_user(&alice, "GET", &format!("{api}/meshes/team-b/meshtimeouts"), None);
    assert_eq!(b["total"], 0, "{b}");
    let (_, a) = as_user(&alice, "GET", &format!("{api}/meshes/team-a/meshtimeouts"), None);
    assert!(names(&a).contains(&"t1".to_string()), "{a}");
    let (_, insight) = as_user(&alice, "GET", &format!("{api}/global-insight"), None);
    assert_eq!(insight["meshes"]["total"], 1, "{insight}");
    // Secrets need VIEW_SECRETS; zone tokens GENERATE_ZONE_TOKEN.
    let (status, body) = as_user(&alice, "GET", &format!("{api}/meshes/team-a/secrets/s"), None);
    assert!(
        status == 403 && details(&body).contains("VIEW_SECRETS"),
        "{status} {body}"
    );
    let (status, body) = as_user(
        &alice,
        "POST",
        &format!("{api}/tokens/zone"),
        Some(json!({"zone": "east"})),
    );
    assert!(
        status == 403 && details(&body).contains("GENERATE_ZONE_TOKEN"),
        "{status} {body}"
    );
    let (status, _) = as_user(
        &alice,
        "POST",
        &format!("{api}/tokens/dataplane"),
        Some(json!({"mesh": "team-a"})),
    );
    assert_eq!(status, 200, "dataplane tokens of its own mesh");
    let (status, _) = as_user(
        &alice,
        "POST",
        &format!("{api}/tokens/dataplane"),
        Some(json!({"mesh": "team-b"})),
    );
    assert_eq!(status, 403);
    // A team user cannot mint an admin.
    let (status, _) = as_user(
        &alice,
        "POST",
        &format!("{api}/tokens/user"),
        Some(json!({"name": "x", "groups": ["mesh-system:admin"]})),
    );
    assert_eq!(status, 403);

    // No change may lock every admin out.
    let (status, body) = g.delete("/access-role-bindings/admin");
    assert!(
        status == 409 && details(&body).contains("lock every admin out"),
        "{status} {body}"
    );
    let (status, body) = g.put_json(
        "/access-roles/admin",
        &json!({"type": "AccessRole", "name": "admin", "rules": [{"access": ["VIEW"]}]}),
    );
    assert_eq!(status, 409, "{body}");
    let (status, body) = g.delete("/access-roles/team-a");
    assert!(
        status == 409 && details(&body).contains("team-a"),
        "a role in use: {status} {body}"
    );
    let (status, body) = g.put_json(
        "/access-roles/bad",
        &json!({"type": "AccessRole", "name": "bad", "rules": [{"types": ["Nope"], "access": ["FLY"]}]}),
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        g.get("/access-roles/admin").1["rules"][0]["access"]
            .as_array()
            .unwrap()
            .len(),
        10
    );

    // The audit log: who, what, result — and each team sees its own mesh's.
    let (status, audit) = g.get("/audit?user=alice");
    assert_eq!(status, 200, "{audit}");
    let items = audit["items"].as_array().unwrap();
    let find = |action: &str, mesh: &str, result: &str| {
        items
            .iter()
            .find(|e| e["action"] == action && e["mesh"] == mesh && e["result"] == result)
    };
    let created = find("CREATE", "team-a", "succeeded").expect("alice's create");
    assert_eq!(created["type"], "MeshTimeout");
    assert_eq!(created["name"], "t1");
    assert_eq!(created["status"], 201);
    assert_eq!(created["groups"], json!(["team-a"]));
    assert!(created["time"].as_str().unwrap().ends_with('Z'));
    assert!(find("UPDATE", "team-a", "succeeded").is_some());
    let denied = find("CREATE", "team-b", "denied").expect("alice's denied create");
    assert!(denied["reason"].as_str().unwrap().contains("CREATE"));
    let (_, denied_only) = g.get("/audit?user=alice&result=denied&mesh=team-b");
    assert!(denied_only["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["result"] == "denied" && e["mesh"] == "team-b"));
    assert!(denied_only["total"].as_u64().unwrap() >= 2, "{denied_only}");
    let (_, mine) = as_user(&alice, "GET", &format!("{api}/audit"), None);
    let mine = mine["items"].as_array().unwrap().clone();
    assert!(
        !mine.is_empty() && mine.iter().all(|e| e["mesh"] == "team-a"),
        "{mine:?}"
    );
    let (_, admin_actions) = g.get("/audit?action=GENERATE_USER_TOKEN");
    assert!(
        admin_actions["items"][0]["user"] == "mesh-system:admin",
        "{admin_actions}"
    );
    assert_eq!(g.get("/audit?result=maybe").0, 400);
    // meridianctl reads it too.
    let out = g.ctl(&["get", "audit", "--user", "alice", "--result", "denied"], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("denied"));
    assert!(g.log_text().contains("meridian::audit"), "audited requests are logged");
    // The audit log is in the store: a restart keeps it, and the admin token.
    let total = g.get("/audit").1["total"].as_u64().unwrap();
    assert!(total > 10, "{total}");
    let admin = g.admin_token();
    let mut g = g;
    assert!(g.terminate().success());
    let g = start_global_embedded(dir.path(), &dir.path().join("data"), &[]);
    assert_eq!(g.admin_token(), admin);
    assert!(g.get("/audit").1["total"].as_u64().unwrap() >= total);
}

#[test]
fn zones_accept_the_globals_users_and_roles() {
    let dir = tempfile::tempdir().unwrap();
    let g = start_global_embedded(dir.path(), &dir.path().join("data"), &[]);
    let join = zone_join(&g, "zone-1", dir.path());
    let zone = start_zone(dir.path(), &join, None, &["--store", "memory"]);
    let zapi = zone.api.clone();

    // The zone has its own admin token; without a token nothing is served.
    assert_eq!(anonymous("GET", &format!("{zapi}/meshes")).0, 401);
    assert_ne!(zone.admin_token(), g.admin_token());
    assert_eq!(as_user(&g.admin_token(), "GET", &format!("{zapi}/meshes"), None).0, 401);

    assert_eq!(
        g.put_json("/meshes/team-a", &json!({"type": "Mesh", "name": "team-a"}))
            .0,
        201
    );
    let role = json!({"type": "AccessRole", "name": "viewers", "rules": [{"mesh": "team-a", "access": ["VIEW", "CREATE", "UPDATE", "DELETE"]}]});
    assert_eq!(g.put_json("/access-roles/viewers", &role).0, 201);
    let binding = json!({"type": "AccessRoleBinding", "name": "carol", "subjects": [{"type": "User", "name": "carol"}], "roles": ["viewers"]});
    assert_eq!(g.put_json("/access-role-bindings/carol", &binding).0, 201);
    let carol = user_token(&g, "carol", &[], "1h");

    // Once KDS delivered keys and roles, the zone accepts carol as the global does.
    wait_until("the zone to accept carol", WAIT, Duration::from_millis(100), || {
        let (status, body) = as_user(&carol, "GET", &format!("{zapi}/meshes"), None);
        if status == 200 && names(&body) == ["team-a"] {
            Ok(())
        } else {
            Err(format!("{status} {body}"))
        }
    });
    let dp = json!({"type": "Dataplane", "mesh": "team-a", "name": "dp-1",
        "networking": {"address": "10.0.0.1", "inbound": [{"port": 8080, "tags": {"kuma.io/service": "web"}}]}});
    assert_eq!(
        as_user(
            &carol,
            "PUT",
            &format!("{zapi}/meshes/team-a/dataplanes/dp-1"),
            Some(dp.clone())
        )
        .0,
        201
    );
    let (status, body) = as_user(
        &carol,
        "PUT",
        &format!("{zapi}/meshes/default/dataplanes/dp-1"),
        Some(json!({
        "type": "Dataplane", "mesh": "default", "name": "dp-1",
        "networking": {"address": "10.0.0.1", "inbound": [{"port": 8080, "tags": {"kuma.io/service": "web"}}]}})),
    );
    assert_eq!(status, 403, "{body}");
    // Roles are the global's: the zone refuses to change them.
    let (status, _) = http_as(
        Some(&zone.admin_token()),
        "PUT",
        &format!("{zapi}/access-roles/x"),
        Some(json!({"type": "AccessRole", "name": "x", "rules": [{"access": ["VIEW"]}]}).to_string()),
        None,
    )
    .unwrap();
    assert_eq!(status, 405);
    // User tokens are issued by the global only.
    let (status, _) = http_as(
        Some(&zone.admin_token()),
        "POST",
        &format!("{zapi}/tokens/user"),
        Some(json!({"name": "x"}).to_string()),
        None,
    )
    .unwrap();
    assert_eq!(status, 405);
    // A revocation at the global reaches the zone.
    let out = g.ctl(&["revoke", "user-token", "--id", &jti(&carol)], None);
    assert!(out.status.success());
    wait_until(
        "the zone to refuse the revoked token",
        WAIT,
        Duration::from_millis(100),
        || {
            let (status, body) = as_user(&carol, "GET", &format!("{zapi}/meshes"), None);
            if status == 401 && details(&body).contains("revoked") {
                Ok(())
            } else {
                Err(format!("{status} {body}"))
            }
        },
    );
    // The zone audits its own writes.
    let (_, audit) = zone.get("/audit?user=carol");
    let results: Vec<&str> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["result"].as_str())
        .collect();
    assert!(results.contains(&"succeeded") && results.contains(&"denied"), "{audit}");
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn failed_authentications_do_not_grow_memory() {
    let dir = tempfile::tempdir().unwrap();
    let g = start_global_embedded(dir.path(), &dir.path().join("data"), &[]);
    let url = format!("{}/meshes", g.api);
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let junk = "A".repeat(1000);
    let bad = [
        format!("Bearer {junk}"),
        format!("Bearer {junk}.{junk}.{junk}"),
        format!("Bearer meridian-admin.{}", "B".repeat(43)),
        "Basic eDp5".to_string(),
    ];
    let send = |n: usize| {
        for i in 0..n {
            let status = agent
                .get(&url)
                .header("authorization", &bad[i % bad.len()])
                .call()
                .unwrap()
                .status()
                .as_u16();
            assert_eq!(status, 401);
        }
    };
    send(1_000);
    let warm = rss_kib(g.child.id());
    send(10_000);
    let after = rss_kib(g.child.id());
    eprintln!("RSS after 1,000 failed authentications {warm} KiB, after 11,000 {after} KiB");
    // Each refused request carried about 3 KB: had anything been kept per
    // failure, 10,000 of them would add ~30 MB.
    assert!(
        after.saturating_sub(warm) < 8 * 1024,
        "RSS grew from {warm} KiB to {after} KiB over 10,000 failed authentications"
    );
    // And the process still serves everyone else.
    assert_eq!(g.get("/meshes").0, 200);
}

#[test]
fn the_api_serves_tls_when_given_a_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    let (cert_file, key_file) = (dir.path().join("api.pem"), dir.path().join("api-key.pem"));
    std::fs::write(&cert_file, cert.cert.pem()).unwrap();
    std::fs::write(&key_file, cert.signing_key.serialize_pem()).unwrap();
    let port = free_port();
    let args: Vec<String> = [
        "run",
        "--api-addr",
        &format!("127.0.0.1:{port}"),
        "--kds-addr",
        &format!("127.0.0.1:{}", free_port()),
        "--data-dir",
        dir.path().join("data").to_str().unwrap(),
        "--api-tls-cert",
        cert_file.to_str().unwrap(),
        "--api-tls-key",
        key_file.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let g = Proc::spawn("meridian-global", &args, &[], dir.path(), port);
    let https = format!("https://127.0.0.1:{port}");
    let token_file = dir.path().join("admin-token-file");
    wait_until("the TLS API to answer", WAIT, Duration::from_millis(100), || {
        // The token file exists once the API is up.
        let token = std::fs::read_to_string(g.admin_token_file.as_ref().unwrap()).map_err(|e| e.to_string())?;
        std::fs::write(&token_file, token).map_err(|e| e.to_string())?;
        let out = std::process::Command::new(bin("meridianctl"))
            .args(["--api", &https, "--ca-file", cert_file.to_str().unwrap()])
            .args(["--token-file", token_file.to_str().unwrap(), "get", "meshes"])
            .env("MERIDIAN_CONFIG", dir.path().join("none.yaml"))
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() && String::from_utf8_lossy(&out.stdout).contains("default") {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    });
    // Plain HTTP on the TLS port is not served.
    assert!(http_as(None, "GET", &format!("http://127.0.0.1:{port}/ready"), None, None).map(|(s, _)| s) != Ok(200));
}
