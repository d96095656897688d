//! Zone tokens, KDS join information and `meridianctl generate` against real
//! `meridian-global` processes. (Tokens being checked over KDS is covered by
//! the KDS tests.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use meridian_e2e::*;
use serde_json::{json, Value};

fn post(g: &Proc, path: &str, body: &str) -> (u16, Value) {
    http("POST", &format!("{}{path}", g.api), Some(body.to_string()), None).unwrap()
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn assert_token_shape(token: &str) {
    let parts: Vec<&str> = token.trim().split('.').collect();
    assert_eq!(parts.len(), 3, "not a token: {token:?}");
    assert!(
        parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')),
        "not base64url parts: {token:?}"
    );
}

/// The field named by the first cause of a Kuma-style error body.
fn cause_field(body: &Value) -> &str {
    body["causes"][0]["field"].as_str().unwrap_or_default()
}

fn start(dir: &Path) -> Proc {
    start_global_embedded(dir, &dir.join("data"), &[])
}

#[test]
fn tokens_are_issued_through_the_api_and_meridianctl() {
    let dir = tempfile::tempdir().unwrap();
    let g = start(dir.path());

    let (status, token) = post(&g, "/tokens/zone", r#"{"zone": "zone-1", "validFor": "24h"}"#);
    assert_eq!(status, 200, "{token}");
    assert_token_shape(token.as_str().unwrap());
    // validFor may be left out.
    let (status, token) = post(&g, "/tokens/zone", r#"{"zone": "zone-1"}"#);
    assert_eq!(status, 200, "{token}");

    let out = g.ctl(
        &["generate", "zone-token", "--zone", "zone-2", "--valid-for", "1h"],
        None,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_token_shape(&stdout(&out));
    assert!(stderr(&out).contains("revoke zone-token --id"), "{}", stderr(&out));

    // Bad input: 400, naming the field.
    let cases = [
        (r#"{"zone": "Bad_Zone", "validFor": "1h"}"#, "zone"),
        (r#"{"zone": "a.b"}"#, "zone"),
        (r#"{"validFor": "1h"}"#, "zone"),
        (r#"{"zone": 7}"#, "zone"),
        (r#"{"zone": "z", "validFor": "soon"}"#, "validFor"),
        (r#"{"zone": "z", "validFor": "0s"}"#, "validFor"),
        (r#"{"zone": "z", "validFor": "-1h"}"#, "validFor"),
        (r#"{"zone": "z", "validFor": "1000000h"}"#, "validFor"),
        (r#"{"zone": "z", "validFor": 3600}"#, "validFor"),
        (r#"{"zone": "z", "validfor": "1h"}"#, "validfor"),
    ];
    for (body, field) in cases {
        let (status, err) = post(&g, "/tokens/zone", body);
        assert_eq!(status, 400, "{body}: {err}");
        assert_eq!(cause_field(&err), field, "{body}: {err}");
        assert!(
            !err["causes"][0]["message"].as_str().unwrap_or_default().is_empty(),
            "{err}"
        );
    }
    for body in ["", "not json", "[1]", r#""zone""#, "{"] {
        let (status, err) = post(&g, "/tokens/zone", body);
        assert_eq!(status, 400, "{body:?}: {err}");
        assert!(err["details"].as_str().is_some(), "{body:?}: {err}");
    }
    let out = g.ctl(&["generate", "zone-token", "--zone", "Not_A_Zone"], None);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("zone:"), "{}", stderr(&out));

    // Revocation: by id through the API, by token file through meridianctl.
    let (status, body) = post(&g, "/tokens/zone/revoke", r#"{"id": "abcDEF123_-"}"#);
    assert_eq!((status, body), (200, json!({})));
    for (body, field) in [(r#"{"id": "a/b"}"#, "id"), (r#"{}"#, "id"), (r#"{"id": ""}"#, "id")] {
        let (status, err) = post(&g, "/tokens/zone/revoke", body);
        assert_eq!(status, 400, "{body}: {err}");
        assert_eq!(cause_field(&err), field, "{body}: {err}");
    }
    let file = dir.path().join("t.token");
    std::fs::write(&file, stdout(&out_token(&g))).unwrap();
    let out = g.ctl(&["revoke", "zone-token", "--token-file", file.to_str().unwrap()], None);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).starts_with("revoked zone token "), "{}", stdout(&out));
}

fn out_token(g: &Proc) -> std::process::Output {
    let out = g.ctl(&["generate", "zone-token", "--zone", "zone-3"], None);
    assert!(out.status.success(), "{}", stderr(&out));
    out
}

#[test]
fn zone_join_writes_the_token_and_ca_and_prints_the_command() {
    let dir = tempfile::tempdir().unwrap();
    let g = start(dir.path());
    let (status, info) = g.get("/kds-info");
    assert_eq!(status, 200, "{info}");
    let address = info["kdsAddress"].as_str().unwrap();
    assert!(address.starts_with("grpcs://127.0.0.1:"), "{info}");
    let ca = info["caCert"].as_str().unwrap();
    assert!(ca.starts_with("-----BEGIN CERTIFICATE-----\n"), "{ca}");
    assert!(ca.trim_end().ends_with("-----END CERTIFICATE-----"), "{ca}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("data/kds-ca.pem")).unwrap(),
        ca,
        "the data dir holds a copy of the CA"
    );

    let out_dir = dir.path().join("join");
    let out = g.ctl(
        &[
            "generate",
            "zone-join",
            "--zone",
            "east",
            "--output-dir",
            out_dir.to_str().unwrap(),
        ],
        None,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let line = stdout(&out);
    assert_eq!(line.lines().count(), 1, "one line: {line}");
    let abs = std::fs::canonicalize(&out_dir).unwrap();
    let token_file = abs.join("zone-east.token");
    let ca_file = abs.join("global-ca.pem");
    let (head, local) = line
        .trim_end()
        .split_once(" --api-addr ")
        .unwrap_or_else(|| panic!("the global is on this host: the line names the zone's ports: {line}"));
    assert_eq!(
        head,
        format!(
            "meridian-zone run --zone east --global-address {address} --token-file {} --ca-file {}",
            token_file.display(),
            ca_file.display()
        )
    );
    // Free ports of this host and a data directory next to the token.
    let words: Vec<&str> = local.split(' ').collect();
    assert_eq!(words.len(), 5, "{local}");
    assert!(words[0].starts_with("127.0.0.1:"), "{local}");
    assert_eq!((words[1], words[3]), ("--xds-addr", "--data-dir"), "{local}");
    assert!(words[2].starts_with("127.0.0.1:") && words[2] != words[0], "{local}");
    assert_eq!(words[4], abs.join("zone-east-data").display().to_string());
    assert!(line.contains("--global-address grpcs://") && line.contains("--token-file /"));
    assert!(line.contains("--ca-file /"));
    assert_token_shape(&std::fs::read_to_string(&token_file).unwrap());
    let mode = std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the token is a secret");
    assert_eq!(std::fs::read_to_string(&ca_file).unwrap(), ca);

    // The default output dir is the working directory; a relative one is
    // printed absolute.
    let out = std::process::Command::new(bin("meridianctl"))
        .args([
            "--api",
            &g.api,
            "generate",
            "zone-join",
            "--zone",
            "west",
            "--valid-for",
            "2h",
        ])
        .current_dir(dir.path())
        .env("MERIDIAN_API_TOKEN", g.admin_token())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let cwd = std::fs::canonicalize(dir.path()).unwrap();
    assert!(
        stdout(&out).contains(&format!("--token-file {}", cwd.join("zone-west.token").display())),
        "{}",
        stdout(&out)
    );
    assert!(cwd.join("global-ca.pem").exists());

    let out = g.ctl(
        &[
            "generate",
            "zone-join",
            "--zone",
            "bad.zone",
            "--output-dir",
            out_dir.to_str().unwrap(),
        ],
        None,
    );
    assert!(!out.status.success());
    assert!(!out_dir.join("zone-bad.zone.token").exists());
}

#[test]
fn the_kds_ca_survives_a_restart_on_the_same_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let mut g = start(dir.path());
    let (_, first) = g.get("/kds-info");
    assert_eq!(g.get("/kds-info").1, first, "stable while running");
    assert_eq!(g.terminate().code(), Some(0));
    let g = start(dir.path());
    let (status, second) = g.get("/kds-info");
    assert_eq!(status, 200);
    assert_eq!(second["caCert"], first["caCert"]);
    assert!(second["caCert"].as_str().unwrap().contains("BEGIN CERTIFICATE"));

    // Another data dir is another global with another CA.
    let other = tempfile::tempdir().unwrap();
    let g2 = start(other.path());
    assert_ne!(g2.get("/kds-info").1["caCert"], first["caCert"]);
}

#[test]
fn two_globals_on_one_etcd_hand_out_the_same_ca() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let etcd = rt
        .block_on(EtcdServer::start())
        .expect("etcd must be installed (apt-get install etcd-server)");
    let dir = tempfile::tempdir().unwrap();
    let prefix = unique_prefix("e2e-tokens");
    let a = start_global_etcd(dir.path(), &etcd.endpoint(), &prefix);
    let b = start_global_etcd(dir.path(), &etcd.endpoint(), &prefix);
    let (ca_a, ca_b) = (a.get("/kds-info").1, b.get("/kds-info").1);
    assert_eq!(ca_a["caCert"], ca_b["caCert"]);
    assert!(ca_a["caCert"].as_str().unwrap().contains("BEGIN CERTIFICATE"));
    // Either replica issues tokens (on one shared signing key).
    for g in [&a, &b] {
        let (status, token) = post(g, "/tokens/zone", r#"{"zone": "z", "validFor": "1h"}"#);
        assert_eq!(status, 200, "{token}");
    }
}
