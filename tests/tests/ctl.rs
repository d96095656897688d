//! meridianctl as an operator uses it: apply from several files and
//! directories, unchanged and dry-run, type aliases, version, completion,
//! an address without a scheme, and a pipe closed early.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

use meridian_e2e::*;

fn timeout_doc(name: &str, idle: &str) -> String {
    format!(
        "type: MeshTimeout\nmesh: default\nname: {name}\nspec:\n  targetRef: {{kind: Mesh}}\n  to:\n  - targetRef: {{kind: Mesh}}\n    default: {{idleTimeout: {idle}}}\n"
    )
}

fn text(o: &std::process::Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn meridianctl_applies_like_an_operator_expects() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let global = start_global_embedded(d, &d.join("g"), &[]);
    let nested = d.join("policies/team-a");
    std::fs::create_dir_all(&nested).unwrap();
    std::fs::write(d.join("policies/one.yaml"), timeout_doc("one", "1m")).unwrap();
    std::fs::write(nested.join("two.yml"), timeout_doc("two", "2m")).unwrap();
    std::fs::write(nested.join("notes.txt"), "not a resource").unwrap();
    std::fs::write(d.join("three.yaml"), timeout_doc("three", "3m")).unwrap();

    // Dry run: nothing written, each document named.
    let policies = d.join("policies");
    let three = d.join("three.yaml");
    let args = [
        "apply",
        "--dry-run",
        "-f",
        policies.to_str().unwrap(),
        three.to_str().unwrap(),
    ];
    let out = global.ctl(&args, None);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stdout.matches("would be created (dry run)").count(), 3, "{stdout}");
    assert_eq!(global.get("/meshes/default/meshtimeouts/one").0, 404);

    // For real: a directory (recursively) and a file after one -f.
    let out = global.ctl(&args[..1].iter().chain(&args[2..]).copied().collect::<Vec<_>>(), None);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stdout.matches(" created").count(), 3, "{stdout}");
    for name in ["one", "two", "three"] {
        assert_eq!(
            global.get(&format!("/meshes/default/meshtimeouts/{name}")).0,
            200,
            "{name}"
        );
    }

    // Again: unchanged, and nothing written (the version stays).
    let (_, before) = global.get("/meshes/default/meshtimeouts/two");
    let out = global.ctl(&["apply", "-f", policies.to_str().unwrap()], None);
    let (stdout, _) = text(&out);
    assert_eq!(stdout.matches("unchanged").count(), 2, "{stdout}");
    let (_, after) = global.get("/meshes/default/meshtimeouts/two");
    assert_eq!(before["modificationTime"], after["modificationTime"]);
    // What `get -o yaml` prints applies as unchanged too.
    let out = global.ctl(&["get", "meshtimeout", "one", "-o", "yaml"], None);
    let (yaml, _) = text(&out);
    let out = global.ctl(&["apply", "-f", "-"], Some(&yaml));
    assert!(text(&out).0.contains("unchanged"), "{yaml} → {:?}", text(&out));
    // A change is an update.
    std::fs::write(d.join("policies/one.yaml"), timeout_doc("one", "9m")).unwrap();
    let out = global.ctl(&["apply", "-f", d.join("policies/one.yaml").to_str().unwrap()], None);
    assert!(text(&out).0.contains("updated"), "{:?}", text(&out));

    // Type aliases with hyphens.
    let out = global.ctl(&["get", "zone-ingresses"], None);
    assert!(out.status.success(), "{:?}", text(&out));

    // An address without a scheme.
    let bare = global.api.trim_start_matches("http://");
    let out = Command::new(bin("meridianctl"))
        .args(["--api", bare, "--token-file"])
        .arg(
            dir.path()
                .join(format!("admin-token-{}", bare.rsplit(':').next().unwrap())),
        )
        .args(["get", "meshes"])
        .env("MERIDIAN_CONFIG", d.join("no-contexts.yaml"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{:?}", text(&out));
    assert!(text(&out).0.contains("default"));

    // version: both sides.
    let out = global.ctl(&["version"], None);
    let (stdout, _) = text(&out);
    let ours = env!("CARGO_PKG_VERSION");
    assert!(stdout.contains(&format!("meridianctl: {ours}")), "{stdout}");
    assert!(stdout.contains(&format!("control plane (global): {ours}")), "{stdout}");

    // completion scripts for three shells.
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef meridianctl"),
        ("fish", "complete -c meridianctl"),
    ] {
        let out = global.ctl(&["completion", shell], None);
        assert!(
            out.status.success() && text(&out).0.contains(marker),
            "{shell}: {:?}",
            text(&out)
        );
    }

    // A reader that stops early (`| head -c 1`): no panic, no error text.
    let mut child = Command::new(bin("meridianctl"))
        .args(["--api", &global.api, "--token-file"])
        .arg(
            dir.path()
                .join(format!("admin-token-{}", bare.rsplit(':').next().unwrap())),
        )
        .args(["completion", "bash"])
        .env("MERIDIAN_CONFIG", d.join("no-contexts.yaml"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 1];
    child.stdout.take().unwrap().read_exact(&mut first).unwrap();
    // The pipe's reading end is dropped here; the writer sees EPIPE.
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(status.success() || status.code().is_none(), "{status:?}: {stderr}");
}

/// The overviews an operator reads first: meshes, services, dataplanes
/// filtered by tag, zone ingresses, at a zone and at the global, as tables
/// (and wider with `-o wide`) and as JSON.
#[test]
fn meridianctl_inspects_meshes_services_dataplanes_and_ingresses() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let global = start_global_embedded(d, &d.join("g"), &[]);
    let join = zone_join(&global, "zone-1", &d.join("join"));
    let zone = start_zone(d, &join, None, &["--ingress-address", "127.0.0.1:10001"]);
    wait_until(
        "zone-1 online",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || {
            zone_online(&global, "zone-1")
                .then_some(())
                .ok_or_else(|| "offline".to_string())
        },
    );
    for (name, service, version) in [("web-1", "web", "v1"), ("web-2", "web", "v2"), ("api-1", "api", "v1")] {
        let dp = serde_json::json!({"type": "Dataplane", "mesh": "default", "name": name,
            "networking": {"address": "127.0.0.1",
                "inbound": [{"port": 8080, "tags": {"kuma.io/service": service, "version": version}}]}});
        let (status, body) = zone.put_json(&format!("/meshes/default/dataplanes/{name}"), &dp);
        assert!(status == 200 || status == 201, "{status} {body}");
    }
    let run = |cp: &Proc, args: &[&str]| -> String {
        let out = cp.ctl(args, None);
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "meridianctl {args:?}: {stderr}");
        stdout
    };
    let rows = |table: &str, first: &str| -> Vec<String> {
        table
            .lines()
            .skip(1)
            .filter(|l| l.split_whitespace().next() == Some(first))
            .map(str::to_string)
            .collect()
    };

    // Dataplanes by tag: a value matches as a substring, several tags all.
    let web = run(&zone, &["inspect", "dataplanes", "--tag", "kuma.io/service=web"]);
    assert!(
        web.contains("web-1") && web.contains("web-2") && !web.contains("api-1"),
        "{web}"
    );
    let v2 = run(
        &zone,
        &[
            "get",
            "dataplanes",
            "--tag",
            "kuma.io/service=web",
            "--tag",
            "version=v2",
            "-o",
            "json",
        ],
    );
    let v2: serde_json::Value = serde_json::from_str(&v2).unwrap();
    assert_eq!(v2["name"], "web-2", "one item prints as an object: {v2}");
    let wide = run(&zone, &["inspect", "dataplanes", "-o", "wide"]);
    assert!(
        wide.lines()
            .next()
            .is_some_and(|h| h.contains("TAGS") && h.contains("LABELS")),
        "{wide}"
    );
    assert!(
        wide.contains("kuma.io/service=api,kuma.io/zone=zone-1,version=v1"),
        "{wide}"
    );
    let bad = zone.ctl(&["inspect", "dataplanes", "--tag", "novalue"], None);
    assert!(
        !bad.status.success() && text(&bad).1.contains("KEY=VALUE"),
        "{}",
        text(&bad).1
    );
    let (status, body) = zone.get("/meshes/default/dataplanes?tag=broken");
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("tag"), "{body}");

    // Services: both of web's dataplanes, none online (no proxy runs).
    let services = run(&zone, &["inspect", "services"]);
    let web_row = rows(&services, "default")
        .into_iter()
        .find(|r| r.contains(" web "))
        .unwrap_or_default();
    let cells: Vec<&str> = web_row.split_whitespace().collect();
    assert_eq!(cells, ["default", "web", "offline", "2", "0", "zone-1"], "{services}");

    // Meshes: the default mesh with its three dataplanes and two services.
    let meshes = run(&zone, &["inspect", "meshes", "-o", "json"]);
    let meshes: serde_json::Value = serde_json::from_str(&meshes).unwrap();
    let default = if meshes.is_array() { meshes[0].clone() } else { meshes };
    assert_eq!(default["dataplanes"]["total"], 3, "{default}");
    assert_eq!(default["services"]["total"], 2, "{default}");
    assert!(
        default["policiesTotal"].as_u64().unwrap_or(0) > 0,
        "the default policies: {default}"
    );

    // The zone's ingress: known to be offline at its zone (no proxy).
    let ingress = wait_until(
        "zone-1's ingress",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || {
            let t = run(&zone, &["inspect", "zone-ingresses"]);
            rows(&t, "ingress").first().cloned().ok_or(t)
        },
    );
    let cells: Vec<&str> = ingress.split_whitespace().collect();
    assert_eq!(
        &cells[..5],
        ["ingress", "zone-1", "false", "127.0.0.1", "10001"],
        "{ingress}"
    );

    // The global: the zone's dataplanes and ingress under the zone's name;
    // whether the ingress's proxy is connected is not known there ("-").
    wait_until(
        "the global to hold zone-1's services",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || {
            let t = run(&global, &["inspect", "services"]);
            let web = rows(&t, "default")
                .into_iter()
                .find(|r| r.contains(" web "))
                .unwrap_or_default();
            let cells: Vec<String> = web.split_whitespace().map(str::to_string).collect();
            (cells == ["default", "web", "offline", "2", "0", "zone-1"])
                .then_some(())
                .ok_or(t)
        },
    );
    let at_global = wait_until(
        "the global to hold the ingress",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || {
            let t = run(&global, &["inspect", "zone-ingresses"]);
            rows(&t, "zone-1.ingress").first().cloned().ok_or(t)
        },
    );
    let cells: Vec<&str> = at_global.split_whitespace().collect();
    assert_eq!(&cells[..3], ["zone-1.ingress", "zone-1", "-"], "{at_global}");
}

/// The line `generate zone-join` prints runs as it is on the global's own
/// host: it names free ports and a data directory of the zone's own, so the
/// zone collides neither with the global (API 5681) nor with another zone.
#[test]
fn the_zone_join_line_runs_as_printed_beside_the_global() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let global = start_global_embedded(d, &d.join("g"), &[]);
    let mut zones = Vec::new();
    for zone in ["zone-1", "zone-2"] {
        let join = zone_join(&global, zone, &d.join("join"));
        let value = |flag: &str| -> String {
            let at = join
                .iter()
                .position(|a| a == flag)
                .unwrap_or_else(|| panic!("no {flag} in {join:?}"));
            join[at + 1].clone()
        };
        let api = value("--api-addr");
        assert!(api.starts_with("127.0.0.1:"), "{join:?}");
        assert!(value("--data-dir").ends_with(&format!("zone-{zone}-data")), "{join:?}");
        let port: u16 = api.rsplit_once(':').unwrap().1.parse().unwrap();
        let mut p = Proc::spawn("meridian-zone", &join, &[], d, port);
        p.wait_ready(Duration::from_secs(30));
        zones.push(p);
    }
    for zone in ["zone-1", "zone-2"] {
        wait_until(
            &format!("{zone} online"),
            Duration::from_secs(30),
            Duration::from_millis(100),
            || {
                zone_online(&global, zone)
                    .then_some(())
                    .ok_or_else(|| "offline".to_string())
            },
        );
    }
}
