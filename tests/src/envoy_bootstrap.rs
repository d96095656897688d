//! Whole Envoy bootstraps (what `meridian-dp --proxy envoy` writes) held
//! against Envoy's own protos: `validate_envoy.py --bootstrap` parses the
//! JSON strictly into `envoy.config.bootstrap.v3.Bootstrap`, checks Envoy's
//! `(validate.rules)` on it and on every `Any` inside it, and that the ADS
//! service names a static cluster that speaks HTTP/2. It runs in
//! `target/pgv-venv`, as [`crate::xds_clients::validate_envoy`] does for
//! xDS resources.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::xds_clients::{clients_dir, pgv_python, run_with_deadline};

/// How long the validator may take (it imports Envoy's protos on demand).
const VALIDATE_TIMEOUT: Duration = Duration::from_secs(120);

/// Validates `json`, an Envoy bootstrap. `Err` carries the validator's
/// report (the violations with their field paths) as pretty JSON. Panics if
/// the validator cannot run.
pub fn validate_envoy_bootstrap(json: &str) -> Result<(), String> {
    validate_document("--bootstrap", json)
}

/// Validates `json`, Envoy's admin `ConfigDump` (what `/config_dump`
/// answers): parsed strictly by protobuf's own JSON parser with Envoy's
/// protos, every `Any` inside unpacked, Envoy's rules checked.
pub fn validate_envoy_config_dump(json: &str) -> Result<(), String> {
    validate_document("--config-dump", json)
}

fn validate_document(mode: &str, json: &str) -> Result<(), String> {
    let what = format!("validate_envoy.py {mode}");
    let mut cmd = Command::new(pgv_python());
    cmd.arg(clients_dir().join("validate_envoy.py"))
        .args([mode, "-"])
        .env("PYTHONDONTWRITEBYTECODE", "1");
    let (status, stdout, stderr) = run_with_deadline(&mut cmd, Some(json.as_bytes().to_vec()), VALIDATE_TIMEOUT, &what);
    let report: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!("{what} printed no JSON ({e}); exit {status}\nstdout:\n{stdout}\nstderr:\n{stderr}")
    });
    match (status.code(), report["ok"].as_bool()) {
        (Some(0), Some(true)) => Ok(()),
        (Some(1), Some(false)) => Err(serde_json::to_string_pretty(&report).unwrap_or_else(|_| report.to_string())),
        _ => panic!("{what} failed ({status}): {report}\nstderr:\n{stderr}"),
    }
}
