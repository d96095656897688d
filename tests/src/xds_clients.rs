//! Real gRPC xDS clients and servers for the end-to-end tests, written by
//! nobody here: Python `grpcio` and Node `@grpc/grpc-js-xds` clients, a
//! `grpcio` test server, and Envoy's validation annotations through
//! protoc-gen-validate. The programs live in `tests/xds-clients/`; their
//! interpreters and packages are installed by `scripts/test-all.sh` into
//! `target/xds-venv`, `target/pgv-venv` and `tests/xds-clients/node/node_modules`.
//!
//! Start with [`TestServer::start`] (a backend naming itself in every reply),
//! [`crate::dp::Agent`] (the `meridian-dp` whose bootstrap a client runs
//! with), [`run_client`] (N calls, counted per answering server and per
//! status) or [`WatchClient`] (per-second counts while a test changes things),
//! and [`validate_envoy`] for sidecar resources.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// How long a client run may take unless told otherwise.
pub const DEFAULT_CLIENT_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a test server may take to print `READY`.
const SERVER_START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the Envoy validator may take.
const VALIDATE_TIMEOUT: Duration = Duration::from_secs(120);

const INSTALL_HINT: &str = "run scripts/test-all.sh to install";

/// The workspace root (the parent of this crate).
fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_path_buf()
}

/// `tests/xds-clients`, where the client and server programs live.
pub fn clients_dir() -> PathBuf {
    workspace_root().join("tests").join("xds-clients")
}

fn venv_python(venv: &str, what: &str) -> PathBuf {
    let p = workspace_root().join("target").join(venv).join("bin").join("python");
    assert!(
        p.exists(),
        "{} is missing: {INSTALL_HINT} {what} (the block between the \"real gRPC xDS clients\" markers)",
        p.display()
    );
    p
}

/// The Python of `target/xds-venv` (grpcio, grpcio-health-checking).
pub fn python() -> PathBuf {
    venv_python("xds-venv", "grpcio and grpcio-health-checking")
}

/// The Python of `target/pgv-venv` (protoc-gen-validate 1.1, protobuf<5, xds-protos<1.60).
pub fn pgv_python() -> PathBuf {
    venv_python("pgv-venv", "protoc-gen-validate and xds-protos")
}

/// The `node` binary, once `tests/xds-clients/node/node_modules` is installed.
pub fn node() -> PathBuf {
    let modules = clients_dir()
        .join("node")
        .join("node_modules")
        .join("@grpc")
        .join("grpc-js-xds");
    assert!(
        modules.exists(),
        "{} is missing: {INSTALL_HINT} @grpc/grpc-js-xds (npm ci in tests/xds-clients/node)",
        modules.display()
    );
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("node"))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| panic!("node is not on PATH: {INSTALL_HINT} Node.js (apt-get install nodejs npm)"))
}

/// A `server.py` backend: serves `/meridian.test.Echo/Call` (replying with its
/// name) and the gRPC health service on 127.0.0.1. Killed on drop.
pub struct TestServer {
    pub port: u16,
    pub name: String,
    pub child: Child,
    output: Arc<Mutex<String>>,
}

impl TestServer {
    /// Starts `server.py --name NAME FLAGS…` and waits for its `READY <port>`.
    /// Without `--port` in `flags` the kernel picks a free port (no race).
    /// Flags: `--fail-first N`, `--fail-code CODE`, `--delay-ms D`, `--port P`.
    pub fn start(name: &str, flags: &[&str]) -> TestServer {
        Self::spawn(name, flags, None)
    }

    /// Starts `server.py --xds` as an xDS-enabled server on 127.0.0.1:`port`
    /// with `bootstrap` (its `meridian-dp`'s, which names the server Listener
    /// template) and waits for its
    /// `READY`. It serves only once the zone has sent its Listener: wait for
    /// a client's calls to succeed. xDS servers need a fixed port.
    pub fn start_xds(name: &str, port: u16, bootstrap: &str, flags: &[&str]) -> TestServer {
        let port = port.to_string();
        let mut all = vec!["--xds", "--port", port.as_str()];
        all.extend_from_slice(flags);
        Self::spawn(name, &all, Some(bootstrap))
    }

    fn spawn(name: &str, flags: &[&str], bootstrap: Option<&str>) -> TestServer {
        let mut cmd = Command::new(python());
        cmd.arg(clients_dir().join("server.py")).args(["--name", name]);
        if !flags.contains(&"--port") {
            cmd.args(["--port", "0"]);
        }
        cmd.env_remove("GRPC_XDS_BOOTSTRAP")
            .env_remove("GRPC_XDS_BOOTSTRAP_CONFIG");
        if let Some(b) = bootstrap {
            cmd.env("GRPC_XDS_BOOTSTRAP_CONFIG", b);
        }
        cmd.args(flags)
            .env("PYTHONUNBUFFERED", "1")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn server.py {name}: {e}"));
        let output = Arc::new(Mutex::new(String::new()));
        let (ready_tx, ready_rx) = mpsc::channel();
        if let Some(stdout) = child.stdout.take() {
            let output = Arc::clone(&output);
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if let Some(port) = line.strip_prefix("READY ").and_then(|p| p.trim().parse::<u16>().ok()) {
                        let _ = ready_tx.send(port);
                    }
                    append(&output, &line);
                }
            });
        }
        if let Some(stderr) = child.stderr.take() {
            let output = Arc::clone(&output);
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    append(&output, &line);
                }
            });
        }
        let deadline = Instant::now() + SERVER_START_TIMEOUT;
        let port = loop {
            match ready_rx.recv_timeout(Duration::from_millis(50)) {
                Ok(port) => break port,
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => {}
            }
            if let Ok(Some(status)) = child.try_wait() {
                std::thread::sleep(Duration::from_millis(100)); // let the readers drain
                panic!(
                    "server.py {name} exited with {status} before READY; output:\n{}",
                    text(&output)
                );
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "server.py {name} not READY after {SERVER_START_TIMEOUT:?}; output:\n{}",
                    text(&output)
                );
            }
        };
        TestServer {
            port,
            name: name.to_string(),
            child,
            output,
        }
    }

    /// `127.0.0.1:<port>`, a target for a client without xDS.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// What the server printed so far (stdout and stderr).
    pub fn output(&self) -> String {
        text(&self.output)
    }

    /// SIGKILL (for failover tests); dropping does the same.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn append(buf: &Arc<Mutex<String>>, line: &str) {
    if let Ok(mut b) = buf.lock() {
        b.push_str(line);
        b.push('\n');
    }
}

fn text(buf: &Arc<Mutex<String>>) -> String {
    buf.lock().map(|b| b.clone()).unwrap_or_default()
}

/// A gRPC xDS bootstrap naming a plaintext ADS server at
/// `127.0.0.1:<xds_port>` directly, for the harness's own tests (a client
/// without an ADS server). A zone's xDS port takes TLS and a token only:
/// clients of a zone run with the bootstrap of their `meridian-dp`
/// ([`crate::dp::Agent`]). `node.locality` is present (empty) because
/// @grpc/grpc-js-xds refuses a bootstrap without it.
pub fn bootstrap_json(node_id: &str, xds_port: u16) -> String {
    json!({
        "xds_servers": [{
            "server_uri": format!("127.0.0.1:{xds_port}"),
            "channel_creds": [{"type": "insecure"}],
            "server_features": ["xds_v3"],
        }],
        "node": {
            "id": node_id,
            "locality": {},
        },
    })
    .to_string()
}

/// Which real client library to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientKind {
    /// `client.py`: grpcio (gRPC C-core's xDS client).
    Python,
    /// `node/client.js`: @grpc/grpc-js with @grpc/grpc-js-xds.
    Node,
}

impl ClientKind {
    pub const ALL: [ClientKind; 2] = [ClientKind::Python, ClientKind::Node];

    fn command(self) -> Command {
        match self {
            ClientKind::Python => {
                let mut c = Command::new(python());
                c.arg(clients_dir().join("client.py"))
                    .env("PYTHONUNBUFFERED", "1")
                    .env("PYTHONDONTWRITEBYTECODE", "1");
                c
            }
            ClientKind::Node => {
                let mut c = Command::new(node());
                c.arg(clients_dir().join("node").join("client.js"));
                c
            }
        }
    }
}

/// What a client counted: one JSON line of `client.py` / `client.js`.
#[derive(Debug, Clone, Default)]
pub struct ClientReport {
    /// Successful calls per answering server (its `--name`).
    pub ok: BTreeMap<String, u64>,
    /// Failed calls per gRPC status code name (`UNAVAILABLE`, `DEADLINE_EXCEEDED`, …).
    pub errors: BTreeMap<String, u64>,
    pub total: u64,
    /// Over successful calls: the attempt number the server saw (above 1 after retries).
    pub attempts: BTreeMap<u32, u64>,
    /// The first error message seen per status code.
    pub error_samples: BTreeMap<String, String>,
    /// Watch mode: the second this window covers; `None` in count mode.
    pub t: Option<u64>,
    /// Watch mode: the last line, covering the whole run.
    pub summary: bool,
    /// The line as printed.
    pub raw: Value,
    /// The client's stderr (library logs), for failure messages.
    pub stderr: String,
}

impl ClientReport {
    /// Parses one JSON line of a client.
    pub fn parse(line: &str) -> Result<ClientReport, String> {
        let raw: Value = serde_json::from_str(line).map_err(|e| format!("not a JSON report ({e}): {line}"))?;
        if raw.get("setup_error").is_some() {
            return Err(format!("client setup error: {}", raw["setup_error"]));
        }
        let counts = |key: &str| -> BTreeMap<String, u64> {
            raw[key]
                .as_object()
                .map(|o| o.iter().map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0))).collect())
                .unwrap_or_default()
        };
        let attempts = counts("attempts")
            .into_iter()
            .filter_map(|(k, v)| k.parse::<u32>().ok().map(|k| (k, v)))
            .collect();
        let error_samples = raw["error_samples"]
            .as_object()
            .map(|o| {
                o.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect()
            })
            .unwrap_or_default();
        Ok(ClientReport {
            ok: counts("ok"),
            errors: counts("errors"),
            total: raw["total"].as_u64().ok_or_else(|| format!("no total in {line}"))?,
            attempts,
            error_samples,
            t: raw["t"].as_u64(),
            summary: raw["summary"].as_bool().unwrap_or(false),
            raw,
            stderr: String::new(),
        })
    }

    /// Successful calls, all servers together.
    pub fn ok_total(&self) -> u64 {
        self.ok.values().sum()
    }

    /// Successful calls answered by `server`.
    pub fn ok_from(&self, server: &str) -> u64 {
        self.ok.get(server).copied().unwrap_or(0)
    }

    /// Failed calls with status `code` (e.g. `"UNAVAILABLE"`).
    pub fn errors_of(&self, code: &str) -> u64 {
        self.errors.get(code).copied().unwrap_or(0)
    }

    /// The share of all calls that `server` answered, in 0..=1.
    pub fn share(&self, server: &str) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.ok_from(server) as f64 / self.total as f64
        }
    }
}

/// A client that exited non-zero or printed no report.
#[derive(Debug, Clone)]
pub struct ClientFailure {
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
}

impl std::fmt::Display for ClientFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "client exited with {:?}\nstdout:\n{}\nstderr:\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

fn client_command(kind: ClientKind, target: &str, extra_args: &[&str], bootstrap: Option<&str>) -> Command {
    let mut cmd = kind.command();
    cmd.args(["--target", target]).args(extra_args);
    cmd.env_remove("GRPC_XDS_BOOTSTRAP")
        .env_remove("GRPC_XDS_BOOTSTRAP_CONFIG");
    if let Some(b) = bootstrap {
        cmd.env("GRPC_XDS_BOOTSTRAP_CONFIG", b);
    }
    cmd
}

/// Runs `kind`'s client for `n` calls to `target` (`127.0.0.1:port` or
/// `xds:///SERVICE`) with `extra_args` (`--deadline-ms`, `--concurrency`,
/// `--interval-ms`, `--request-id-prefix`, `--service-config`,
/// `--ready-timeout-ms`) and the bootstrap JSON in `GRPC_XDS_BOOTSTRAP_CONFIG`.
/// Panics, with the client's output, if it fails to set up or takes longer
/// than [`DEFAULT_CLIENT_TIMEOUT`].
pub fn run_client(
    kind: ClientKind,
    target: &str,
    n: usize,
    extra_args: &[&str],
    bootstrap: Option<&str>,
) -> ClientReport {
    try_run_client(kind, target, n, extra_args, bootstrap, DEFAULT_CLIENT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{kind:?} client for {target}: {e}"))
}

/// [`run_client`] that returns a client's setup failure (exit 2: bad
/// arguments or bootstrap; 3: channel not ready) instead of panicking. Still
/// panics if the client outlives `timeout`.
pub fn try_run_client(
    kind: ClientKind,
    target: &str,
    n: usize,
    extra_args: &[&str],
    bootstrap: Option<&str>,
    timeout: Duration,
) -> Result<ClientReport, ClientFailure> {
    let n = n.to_string();
    let mut args = vec!["--count", n.as_str()];
    args.extend_from_slice(extra_args);
    let mut cmd = client_command(kind, target, &args, bootstrap);
    let (status, stdout, stderr) = run_with_deadline(&mut cmd, None, timeout, &format!("{kind:?} client for {target}"));
    let failure = || ClientFailure {
        status: Some(status),
        stdout: stdout.clone(),
        stderr: stderr.clone(),
    };
    if !status.success() {
        return Err(failure());
    }
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .ok_or_else(failure)?;
    let mut report = ClientReport::parse(line).map_err(|_| failure())?;
    report.stderr = stderr;
    Ok(report)
}

/// A client in `--watch` mode: one [`ClientReport`] per second of calls, for
/// tests that change a policy or kill a backend while traffic flows on one
/// channel. Killed on drop.
pub struct WatchClient {
    child: Child,
    lines: Receiver<String>,
    stderr: Arc<Mutex<String>>,
    what: String,
}

impl WatchClient {
    /// Starts `kind`'s client calling `target` for `seconds`.
    pub fn start(
        kind: ClientKind,
        target: &str,
        seconds: u64,
        extra_args: &[&str],
        bootstrap: Option<&str>,
    ) -> WatchClient {
        let secs = seconds.to_string();
        let mut args = vec!["--watch", secs.as_str()];
        args.extend_from_slice(extra_args);
        let mut cmd = client_command(kind, target, &args, bootstrap);
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let what = format!("{kind:?} watch client for {target}");
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {what}: {e}"));
        let (tx, lines) = mpsc::channel();
        if let Some(stdout) = child.stdout.take() {
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        return;
                    }
                }
            });
        }
        let stderr = Arc::new(Mutex::new(String::new()));
        if let Some(err) = child.stderr.take() {
            let buf = Arc::clone(&stderr);
            std::thread::spawn(move || {
                for line in BufReader::new(err).lines().map_while(Result::ok) {
                    append(&buf, &line);
                }
            });
        }
        WatchClient {
            child,
            lines,
            stderr,
            what,
        }
    }

    /// The next line: a one-second window, or the final summary
    /// (`report.summary`); `None` once the client has exited. Panics after
    /// `timeout` without a line, or on a setup error.
    pub fn next(&mut self, timeout: Duration) -> Option<ClientReport> {
        match self.lines.recv_timeout(timeout) {
            Ok(line) => match ClientReport::parse(&line) {
                Ok(r) => Some(r),
                Err(e) => panic!("{}: {e}\nstderr:\n{}", self.what, text(&self.stderr)),
            },
            Err(RecvTimeoutError::Disconnected) => None,
            Err(RecvTimeoutError::Timeout) => panic!(
                "{}: no report for {timeout:?}\nstderr:\n{}",
                self.what,
                text(&self.stderr)
            ),
        }
    }

    /// Reads windows until one satisfies `f` (returning it), panicking after
    /// `timeout` or when the client ends first, with the windows seen.
    pub fn wait_for_window(
        &mut self,
        what: &str,
        timeout: Duration,
        mut f: impl FnMut(&ClientReport) -> bool,
    ) -> ClientReport {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "{}: timed out after {timeout:?} waiting for {what}; windows: {seen:#?}",
                self.what
            );
            match self.next(left.max(Duration::from_millis(1))) {
                Some(r) if !r.summary && f(&r) => return r,
                Some(r) => seen.push(r.raw),
                None => panic!("{}: ended before {what}; windows: {seen:#?}", self.what),
            }
        }
    }

    /// Reads up to the final summary line (waiting at most `timeout`).
    pub fn summary(&mut self, timeout: Duration) -> ClientReport {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "{}: no summary after {timeout:?}", self.what);
            match self.next(left) {
                Some(r) if r.summary => return r,
                Some(_) => {}
                None => panic!(
                    "{}: exited without a summary\nstderr:\n{}",
                    self.what,
                    text(&self.stderr)
                ),
            }
        }
    }

    /// The client's stderr so far.
    pub fn stderr(&self) -> String {
        text(&self.stderr)
    }
}

impl Drop for WatchClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `cmd` to completion with `stdin`, killing it and panicking (with its
/// output) after `timeout`. Returns the status, stdout and stderr.
pub(crate) fn run_with_deadline(
    cmd: &mut Command,
    stdin: Option<Vec<u8>>,
    timeout: Duration,
    what: &str,
) -> (ExitStatus, String, String) {
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    if let (Some(mut sin), Some(data)) = (child.stdin.take(), stdin) {
        std::thread::spawn(move || {
            let _ = sin.write_all(&data);
        });
    }
    let reader = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut p) = pipe {
                let mut bytes = Vec::new();
                let _ = p.read_to_end(&mut bytes);
                s = String::from_utf8_lossy(&bytes).into_owned();
            }
            s
        })
    };
    let out = reader(child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let err = reader(child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                let stdout = out.join().unwrap_or_default();
                let stderr = err.join().unwrap_or_default();
                panic!("{what} still running after {timeout:?}; killed\nstdout:\n{stdout}\nstderr:\n{stderr}");
            }
            Err(e) => panic!("{what}: wait: {e}"),
        }
    };
    (status, out.join().unwrap_or_default(), err.join().unwrap_or_default())
}

/// Holds Envoy resources (type URL, protobuf bytes) against Envoy's
/// validation annotations, unpacking every `Any` inside (`validate_envoy.py`).
/// `Err` carries the violations, with field paths, as pretty JSON. Panics if
/// the validator cannot run.
pub fn validate_envoy<T: AsRef<str>, B: AsRef<[u8]>>(resources: &[(T, B)]) -> Result<(), String> {
    let input: Vec<Value> = resources
        .iter()
        .map(|(type_url, bytes)| json!({"typeUrl": type_url.as_ref(), "value": base64(bytes.as_ref())}))
        .collect();
    let mut cmd = Command::new(pgv_python());
    cmd.arg(clients_dir().join("validate_envoy.py"))
        .arg("-")
        .env("PYTHONDONTWRITEBYTECODE", "1");
    let (status, stdout, stderr) = run_with_deadline(
        &mut cmd,
        Some(Value::Array(input).to_string().into_bytes()),
        VALIDATE_TIMEOUT,
        "validate_envoy.py",
    );
    let report: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!("validate_envoy.py printed no JSON ({e}); exit {status}\nstdout:\n{stdout}\nstderr:\n{stderr}")
    });
    match status.code() {
        Some(0) => Ok(()),
        Some(1) => Err(serde_json::to_string_pretty(&report).unwrap_or_else(|_| report.to_string())),
        _ => panic!("validate_envoy.py failed ({status}): {report}\nstderr:\n{stderr}"),
    }
}

/// Runs `validate_envoy.py --self-test`: `Err` with its output if it does not
/// catch what it must.
pub fn validate_envoy_self_test() -> Result<(), String> {
    let mut cmd = Command::new(pgv_python());
    cmd.arg(clients_dir().join("validate_envoy.py"))
        .arg("--self-test")
        .env("PYTHONDONTWRITEBYTECODE", "1");
    let (status, stdout, stderr) = run_with_deadline(&mut cmd, None, VALIDATE_TIMEOUT, "validate_envoy.py --self-test");
    if status.success() {
        Ok(())
    } else {
        Err(format!("exit {status}\nstdout:\n{stdout}\nstderr:\n{stderr}"))
    }
}

/// Standard base64 with padding (the validator's input format).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18u32, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (input, want) in cases {
            assert_eq!(base64(input.as_bytes()), want, "{input:?}");
        }
        assert_eq!(base64(&[0xff, 0xfe, 0xfd, 0x00]), "//79AA==");
    }

    #[test]
    fn bootstrap_names_node_and_server() {
        let b: Value = serde_json::from_str(&bootstrap_json("default.client-1", 5678)).unwrap_or_default();
        assert_eq!(b["node"]["id"], "default.client-1");
        assert_eq!(b["xds_servers"][0]["server_uri"], "127.0.0.1:5678");
        assert_eq!(b["xds_servers"][0]["channel_creds"][0]["type"], "insecure");
        assert_eq!(b["xds_servers"][0]["server_features"][0], "xds_v3");
        assert!(b["node"]["locality"].is_object());
    }

    #[test]
    fn report_parses_counts() {
        let r = ClientReport::parse(
            r#"{"ok": {"a": 3, "b": 1}, "errors": {"UNAVAILABLE": 2}, "total": 6, "attempts": {"1": 3, "2": 1}, "error_samples": {"UNAVAILABLE": "x"}, "elapsed_ms": 5}"#,
        )
        .unwrap_or_default();
        assert_eq!(r.ok_total(), 4);
        assert_eq!(r.ok_from("a"), 3);
        assert_eq!(r.errors_of("UNAVAILABLE"), 2);
        assert_eq!(r.attempts.get(&2), Some(&1));
        assert!((r.share("a") - 0.5).abs() < 1e-9);
        assert!(ClientReport::parse(r#"{"setup_error": "no bootstrap"}"#).is_err());
    }
}
