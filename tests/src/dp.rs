//! `meridian-dp` for the end-to-end tests: the agent every proxyless client
//! and xDS-enabled server of the tests runs beside, as an operator would run
//! it (`--proxy grpc`: a token file, the zone's CA, a bootstrap file).
//!
//! [`dataplane_token`] asks the global (or a standalone zone) for a token,
//! [`xds_ca`] fetches a zone's xDS CA, and [`Agent::grpc`] starts the agent
//! and waits for the bootstrap it writes; the clients then run with that
//! bootstrap (`GRPC_XDS_BOOTSTRAP_CONFIG` holds the same text).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{bin, http, Proc};

/// How long an agent may take to write its bootstrap.
const START_TIMEOUT: Duration = Duration::from_secs(30);

static AGENTS: AtomicUsize = AtomicUsize::new(0);

/// `POST /tokens/dataplane` with `body` (`{"mesh", "name"?, "tags"?,
/// "validFor"?}`) at `api`; panics with the answer unless it is a token.
pub fn dataplane_token(api: &str, body: &Value) -> String {
    match http("POST", &format!("{api}/tokens/dataplane"), Some(body.to_string()), None) {
        Ok((200, Value::String(token))) => token,
        other => panic!("POST {api}/tokens/dataplane {body}: {other:?}"),
    }
}

/// The token id (`jti`) of a token, read from its claims.
pub fn token_id(token: &str) -> String {
    use base64::Engine;
    let claims = token.split('.').nth(1).expect("a JWT");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(claims)
        .expect("base64url claims");
    let v: Value = serde_json::from_slice(&bytes).expect("JSON claims");
    v["jti"].as_str().expect("a jti").to_string()
}

/// Writes the zone's xDS CA (`GET /xds-ca`) to a file in `dir` and returns it.
pub fn xds_ca(zone: &Proc, dir: &Path) -> PathBuf {
    let (status, body) = zone.get("/xds-ca");
    let Value::String(pem) = body else {
        panic!("GET /xds-ca: {status} {body}")
    };
    assert_eq!(status, 200, "GET /xds-ca: {pem}");
    let port = zone.api.rsplit(':').next().unwrap_or("zone");
    let path = dir.join(format!("xds-ca-{port}.pem"));
    std::fs::write(&path, pem).expect("write the xDS CA");
    path
}

/// A running `meridian-dp`, killed on drop.
pub struct Agent {
    pub child: Child,
    pub dir: PathBuf,
    pub log: PathBuf,
    bootstrap: String,
}

/// What an agent is started with.
pub struct AgentSpec<'a> {
    /// The zone's xDS port on 127.0.0.1.
    pub xds_port: u16,
    /// The zone's xDS CA file.
    pub ca_file: &'a Path,
    pub token: &'a str,
    pub mesh: &'a str,
    pub name: &'a str,
    /// A dataplane to register (the universal form's fields and identity),
    /// or none when it is registered through the API.
    pub dataplane: Option<&'a Value>,
    /// More flags.
    pub extra: &'a [&'a str],
    /// More environment (`RUST_LOG`, …).
    pub env: &'a [(&'a str, &'a str)],
}

impl Agent {
    /// Starts `meridian-dp run --proxy grpc` in a directory of its own under
    /// `dir` and waits for its bootstrap.
    pub fn grpc(dir: &Path, spec: &AgentSpec<'_>) -> Agent {
        let n = AGENTS.fetch_add(1, Ordering::SeqCst);
        let own = dir.join(format!("dp-{n}-{}", spec.name));
        std::fs::create_dir_all(&own).expect("agent dir");
        let token_file = own.join("token");
        std::fs::write(&token_file, spec.token).expect("token file");
        let bootstrap_file = own.join("bootstrap.json");
        let log = own.join("meridian-dp.log");
        let mut args: Vec<String> = vec![
            "run".into(),
            "--cp-address".into(),
            format!("https://127.0.0.1:{}", spec.xds_port),
            "--ca-cert-file".into(),
            spec.ca_file.display().to_string(),
            "--dataplane-token-file".into(),
            token_file.display().to_string(),
            "--mesh".into(),
            spec.mesh.into(),
            "--name".into(),
            spec.name.into(),
            "--proxy".into(),
            "grpc".into(),
            "--grpc-bootstrap-file".into(),
            bootstrap_file.display().to_string(),
            "--certificates-dir".into(),
            own.join("certs").display().to_string(),
            "--reconnect-max-delay".into(),
            "1s".into(),
        ];
        if let Some(dp) = spec.dataplane {
            let file = own.join("dataplane.json");
            std::fs::write(&file, dp.to_string()).expect("dataplane file");
            args.extend(["--dataplane-file".into(), file.display().to_string()]);
        }
        args.extend(spec.extra.iter().map(|a| a.to_string()));
        let file = std::fs::File::create(&log).expect("agent log");
        let err = file.try_clone().expect("agent log");
        let mut cmd = Command::new(bin("meridian-dp"));
        for (k, _) in std::env::vars() {
            if k.starts_with("MERIDIAN_") {
                cmd.env_remove(k);
            }
        }
        cmd.envs(spec.env.iter().copied());
        let mut child = cmd
            .args(&args)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::from(file))
            .stderr(Stdio::from(err))
            .spawn()
            .expect("spawn meridian-dp");
        let deadline = Instant::now() + START_TIMEOUT;
        let bootstrap = loop {
            if let Ok(text) = std::fs::read_to_string(&bootstrap_file) {
                break text;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "meridian-dp exited with {status} before writing its bootstrap; log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "meridian-dp wrote no bootstrap within {START_TIMEOUT:?}; log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        Agent {
            child,
            dir: own,
            log,
            bootstrap,
        }
    }

    /// The gRPC xDS bootstrap the agent wrote (JSON text).
    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, and the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        self.child.wait().expect("wait for meridian-dp")
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
