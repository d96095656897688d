#![allow(clippy::unwrap_used, clippy::expect_used)] // a test harness: failing loudly is its job
//! Harness for end-to-end tests: starts the real binaries (built by
//! `cargo build --workspace --bins`, found next to the test executable),
//! waits for conditions with deadlines, and kills what it started on drop.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

pub use meridian_store::testing::{unique_prefix, EtcdServer};

pub mod dp;
pub mod envoy_bootstrap;
pub mod xds_clients;

/// The directory holding the workspace's binaries (`target/debug`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/debug/deps/<test> -> target/debug
    exe.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .expect("target directory")
}

/// The path of a workspace binary; panics with a clear message if it was not built.
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --workspace --bins` before the end-to-end tests",
        p.display()
    );
    p
}

/// A free TCP port on 127.0.0.1, for a process to listen on.
///
/// Taken below the kernel's ephemeral range: a port the kernel hands out
/// for `bind(0)` is also what it hands out for outgoing connections, so
/// between this probe and the process's own bind another connection could
/// take it. Each test process walks its own stretch of the range (from its
/// pid), skipping ports in use.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse::<u32>().ok()))
        .unwrap_or(32768);
    let (low, high) = (10_000u32, ephemeral_low.clamp(12_000, 65_535));
    let span = high - low;
    let start = std::process::id().wrapping_mul(7919) % span;
    for _ in 0..span {
        let port = low + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span;
        let Ok(port) = u16::try_from(port) else { continue };
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Polls `f` until it returns `Some`, or panics after `timeout` with `what`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Polls `f` until it returns `Ok`, or panics after `timeout` with `what`
/// and the last `Err` it returned (what it saw). Polls every `every`.
pub fn wait_until<T>(what: &str, timeout: Duration, every: Duration, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match f() {
            Ok(v) => return v,
            Err(seen) if Instant::now() >= deadline => {
                panic!("timed out after {timeout:?} waiting for {what}; last seen: {seen}")
            }
            Err(_) => std::thread::sleep(every),
        }
    }
}

/// The bearer token [`http`] and [`ctl`] send to each API base URL.
static TOKENS: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

/// Makes [`http`] and [`ctl`] present `token` to the API at `base`
/// (`http://127.0.0.1:PORT`); a later call for the same base replaces it.
pub fn register_token(base: &str, token: &str) {
    let mut t = TOKENS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    t.retain(|(b, _)| b != base);
    t.push((base.to_string(), token.trim().to_string()));
}

/// The token registered for the API `url` belongs to.
pub fn token_for(url: &str) -> Option<String> {
    let t = TOKENS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    t.iter()
        .find(|(b, _)| url == b || url.starts_with(&format!("{b}/")))
        .map(|(_, tok)| tok.clone())
}

/// A running control-plane process, killed on drop.
pub struct Proc {
    pub child: Child,
    pub api: String,
    pub log: PathBuf,
    /// Where a control plane writes its admin token (`None` for other processes).
    pub admin_token_file: Option<PathBuf>,
}

impl Proc {
    /// Starts `binary` with `args` and env; output goes to a log file in `dir`.
    pub fn spawn(binary: &str, args: &[String], envs: &[(&str, &str)], dir: &Path, api_port: u16) -> Proc {
        // A restart on the same port keeps the earlier log.
        let log = (0..)
            .map(|n| match n {
                0 => dir.join(format!("{binary}-{api_port}.log")),
                n => dir.join(format!("{binary}-{api_port}.{n}.log")),
            })
            .find(|p| !p.exists())
            .expect("a free log name");
        let file = std::fs::File::create(&log).expect("log file");
        let err = file.try_clone().expect("log file");
        let mut cmd = Command::new(bin(binary));
        cmd.args(args).stdout(Stdio::from(file)).stderr(Stdio::from(err));
        // Each control plane writes its admin token next to its log, where
        // wait_ready picks it up for the harness's requests.
        let control_plane =
            matches!(binary, "meridian-global" | "meridian-zone") && args.first().map(String::as_str) == Some("run");
        let admin_token_file = if !control_plane {
            None
        } else if let Some(i) = args.iter().position(|a| a == "--admin-token-file") {
            args.get(i + 1).map(PathBuf::from)
        } else {
            let f = dir.join(format!("admin-token-{api_port}"));
            cmd.arg("--admin-token-file").arg(&f);
            Some(f)
        };
        // A clean environment for the settings the tests control.
        for (k, _) in std::env::vars() {
            if k.starts_with("MERIDIAN_") || k.starts_with("KUMA_") {
                cmd.env_remove(k);
            }
        }
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn control plane");
        Proc {
            child,
            api: format!("http://127.0.0.1:{api_port}"),
            log,
            admin_token_file,
        }
    }

    /// The control plane's admin token (read from its file).
    pub fn admin_token(&self) -> String {
        let f = self.admin_token_file.as_ref().expect("not a control plane");
        std::fs::read_to_string(f)
            .unwrap_or_else(|e| panic!("reading {}: {e}", f.display()))
            .trim()
            .to_string()
    }

    /// Waits until `/ready` answers 200, failing with the log if the process died.
    pub fn wait_ready(&mut self, timeout: Duration) {
        let api = self.api.clone();
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("process exited with {status} before ready; log:\n{}", self.log_text());
            }
            if let Ok((200, _)) = http("GET", &format!("{api}/ready"), None, None) {
                if self.admin_token_file.is_some() {
                    register_token(&api, &self.admin_token());
                }
                return;
            }
            if Instant::now() > deadline {
                panic!("not ready after {timeout:?}; log:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL, no clean shutdown.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGSTOP: the process keeps its sockets open but answers nothing,
    /// like a hung machine or a network partition. [`Proc::resume`] undoes it.
    pub fn pause(&mut self) {
        self.signal("-STOP");
    }

    /// SIGCONT after [`Proc::pause`].
    pub fn resume(&mut self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(sig)
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {sig} {}: {status}", self.child.id());
    }

    /// SIGTERM and wait for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        self.child.wait().expect("wait for exit")
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        http("GET", &format!("{}{}", self.api, path), None, None).expect("GET")
    }

    pub fn put_json(&self, path: &str, body: &Value) -> (u16, Value) {
        http(
            "PUT",
            &format!("{}{}", self.api, path),
            Some(body.to_string()),
            Some("application/json"),
        )
        .expect("PUT")
    }

    pub fn put_raw(&self, path: &str, body: &str, content_type: &str) -> (u16, Value) {
        http(
            "PUT",
            &format!("{}{}", self.api, path),
            Some(body.to_string()),
            Some(content_type),
        )
        .expect("PUT")
    }

    pub fn delete(&self, path: &str) -> (u16, Value) {
        http("DELETE", &format!("{}{}", self.api, path), None, None).expect("DELETE")
    }

    /// Runs `meridianctl --api <this> args…` with `stdin`.
    pub fn ctl(&self, args: &[&str], stdin: Option<&str>) -> Output {
        ctl(&self.api, args, stdin)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // SIGKILL also ends a paused process.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs meridianctl against `api`.
pub fn ctl(api: &str, args: &[&str], stdin: Option<&str>) -> Output {
    use std::io::Write;
    let mut cmd = Command::new(bin("meridianctl"));
    cmd.arg("--api").arg(api).args(args);
    // Only what the test gives: no contexts or tokens of the machine.
    for (k, _) in std::env::vars() {
        if k.starts_with("MERIDIAN_") {
            cmd.env_remove(k);
        }
    }
    cmd.env(
        "MERIDIAN_CONFIG",
        std::env::temp_dir().join("meridian-e2e-no-contexts.yaml"),
    );
    if let Some(token) = token_for(api) {
        cmd.env("MERIDIAN_API_TOKEN", token);
    }
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn meridianctl");
    if let Some(mut sin) = child.stdin.take() {
        if let Some(text) = stdin {
            sin.write_all(text.as_bytes()).expect("write stdin");
        }
    }
    child.wait_with_output().expect("meridianctl output")
}

/// One HTTP call with the token registered for the API of `url` (see
/// [`register_token`]); returns the status and the body as JSON (or a JSON
/// string).
pub fn http(method: &str, url: &str, body: Option<String>, content_type: Option<&str>) -> Result<(u16, Value), String> {
    let token = token_for(url);
    http_as(token.as_deref(), method, url, body, content_type)
}

/// [`http`] presenting `token` (none: no Authorization header).
pub fn http_as(
    token: Option<&str>,
    method: &str,
    url: &str,
    body: Option<String>,
    content_type: Option<&str>,
) -> Result<(u16, Value), String> {
    let auth = token.map(|t| format!("Bearer {t}"));
    let config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build();
    let agent = ureq::Agent::new_with_config(config);
    let resp = match (method, &auth) {
        ("GET", Some(a)) => agent.get(url).header("authorization", a).call(),
        ("GET", None) => agent.get(url).call(),
        ("DELETE", Some(a)) => agent.delete(url).header("authorization", a).call(),
        ("DELETE", None) => agent.delete(url).call(),
        ("PUT" | "POST", _) => {
            let req = if method == "PUT" {
                agent.put(url)
            } else {
                agent.post(url)
            };
            let req = req.header("content-type", content_type.unwrap_or("application/json"));
            match &auth {
                Some(a) => req.header("authorization", a).send(body.unwrap_or_default()),
                None => req.send(body.unwrap_or_default()),
            }
        }
        _ => return Err(format!("unsupported method {method}")),
    };
    let mut resp = resp.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let text = resp
        .body_mut()
        .with_config()
        .limit(64 * 1024 * 1024)
        .read_to_string()
        .map_err(|e| e.to_string())?;
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Ok((status, value))
}

/// Starts `meridian-global run` on the embedded store in `data_dir`.
pub fn start_global_embedded(dir: &Path, data_dir: &Path, envs: &[(&str, &str)]) -> Proc {
    let port = free_port();
    let args = vec![
        "run".to_string(),
        "--api-addr".into(),
        format!("127.0.0.1:{port}"),
        "--kds-addr".into(),
        format!("127.0.0.1:{}", free_port()),
        "--store".into(),
        "embedded".into(),
        "--data-dir".into(),
        data_dir.display().to_string(),
    ];
    let mut p = Proc::spawn("meridian-global", &args, envs, dir, port);
    p.wait_ready(Duration::from_secs(30));
    p
}

/// Starts `meridian-global run` on the embedded store in `data_dir` on the
/// given ports, with `extra` arguments (e.g. `--kds-keepalive 2s`); the same
/// ports and data dir restart the same global.
pub fn start_global_on(dir: &Path, data_dir: &Path, api_port: u16, kds_port: u16, extra: &[&str]) -> Proc {
    let mut args = vec![
        "run".to_string(),
        "--api-addr".into(),
        format!("127.0.0.1:{api_port}"),
        "--kds-addr".into(),
        format!("127.0.0.1:{kds_port}"),
        "--store".into(),
        "embedded".into(),
        "--data-dir".into(),
        data_dir.display().to_string(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    let mut p = Proc::spawn("meridian-global", &args, &[], dir, api_port);
    p.wait_ready(Duration::from_secs(30));
    p
}

/// Runs `meridianctl generate zone-join --zone ZONE --output-dir OUT` against
/// `global` and returns the printed command's arguments after
/// `meridian-zone` (`run --zone … --ca-file …`).
pub fn zone_join(global: &Proc, zone: &str, out: &Path) -> Vec<String> {
    let o = global.ctl(
        &[
            "generate",
            "zone-join",
            "--zone",
            zone,
            "--output-dir",
            out.to_str().expect("utf-8 path"),
        ],
        None,
    );
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "zone-join: {}", String::from_utf8_lossy(&o.stderr));
    assert!(!stdout.contains(['\'', '"']), "a path that needs quoting: {stdout}");
    let mut words = stdout.split_whitespace().map(str::to_string);
    assert_eq!(words.next().as_deref(), Some("meridian-zone"), "{stdout}");
    words.collect()
}

/// Starts `meridian-zone` with the arguments of a zone-join line, an API on
/// `api_port` (a free one when `None`) and `extra` arguments (e.g.
/// `--store embedded --data-dir D`); waits until its API is ready (which
/// does not wait for the global).
pub fn start_zone(dir: &Path, join: &[String], api_port: Option<u16>, extra: &[&str]) -> Proc {
    start_zone_xds(dir, join, api_port, free_port(), extra)
}

/// [`start_zone`] with its ADS server on `127.0.0.1:<xds_port>`, for tests
/// whose xDS clients need to know where it is.
pub fn start_zone_xds(dir: &Path, join: &[String], api_port: Option<u16>, xds_port: u16, extra: &[&str]) -> Proc {
    let port = api_port.unwrap_or_else(free_port);
    let mut args = join.to_vec();
    args.extend([
        "--api-addr".to_string(),
        format!("127.0.0.1:{port}"),
        "--xds-addr".into(),
        format!("127.0.0.1:{xds_port}"),
    ]);
    args.extend(extra.iter().map(|a| a.to_string()));
    let mut p = Proc::spawn("meridian-zone", &args, &[], dir, port);
    p.wait_ready(Duration::from_secs(30));
    p
}

/// Starts `meridian-global run` on etcd with key prefix `prefix`.
pub fn start_global_etcd(dir: &Path, endpoints: &str, prefix: &str) -> Proc {
    start_global_etcd_with(dir, endpoints, prefix, &[])
}

/// [`start_global_etcd`] with `extra` arguments.
pub fn start_global_etcd_with(dir: &Path, endpoints: &str, prefix: &str, extra: &[&str]) -> Proc {
    let port = free_port();
    let mut args = vec![
        "run".to_string(),
        "--api-addr".into(),
        format!("127.0.0.1:{port}"),
        "--kds-addr".into(),
        format!("127.0.0.1:{}", free_port()),
        "--store".into(),
        "etcd".into(),
        "--etcd-endpoints".into(),
        endpoints.to_string(),
        "--etcd-prefix".into(),
        prefix.to_string(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    let mut p = Proc::spawn("meridian-global", &args, &[], dir, port);
    p.wait_ready(Duration::from_secs(30));
    p
}

/// The names of the items of a list response.
pub fn names(list: &Value) -> Vec<String> {
    list["items"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|i| i["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Copies bytes both ways between two connections until each side closes
/// (a stand-in for a TCP proxy: an ingress, a forwarder); returns at once.
pub fn splice(a: std::net::TcpStream, b: std::net::TcpStream) {
    use std::io::{Read, Write};
    for (from, into) in [(a.try_clone(), b.try_clone()), (b.try_clone(), a.try_clone())] {
        let (Ok(mut from), Ok(mut into)) = (from, into) else {
            continue;
        };
        std::thread::spawn(move || {
            let mut buf = [0u8; 16 * 1024];
            while let Ok(n) = from.read(&mut buf) {
                if n == 0 || into.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            let _ = into.shutdown(std::net::Shutdown::Write);
        });
    }
}

/// Whether the global shows one of `zone`'s KDS subscriptions open.
pub fn zone_online(global: &Proc, zone: &str) -> bool {
    global.get(&format!("/zones+insights/{zone}")).1["online"] == true
}

/// A TCP proxy of the tests' own that can cut the path without closing
/// it: while partitioned, bytes are held in both directions (nothing is
/// lost, nothing arrives, no FIN or RST — as when a network drops packets
/// and TCP keeps retransmitting), and new connections are accepted and held
/// the same way. Healing lets the held bytes through; peers whose keepalive
/// gave up in between have closed their side by then.
pub struct FaultProxy {
    pub addr: std::net::SocketAddr,
    state: std::sync::Arc<ProxyState>,
}

#[derive(Default)]
struct ProxyState {
    held: std::sync::atomic::AtomicBool,
    stopped: std::sync::atomic::AtomicBool,
    conns: std::sync::Mutex<Vec<std::net::TcpStream>>,
}

impl FaultProxy {
    /// Forwards connections on a free loopback port to `target`.
    pub fn start(target: std::net::SocketAddr) -> FaultProxy {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a proxy port");
        let addr = listener.local_addr().expect("the proxy's address");
        let state = std::sync::Arc::new(ProxyState::default());
        let st = state.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if st.stopped.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                let Ok(upstream) = std::net::TcpStream::connect(target) else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = upstream.set_nodelay(true);
                if let (Ok(a), Ok(b)) = (client.try_clone(), upstream.try_clone()) {
                    let mut conns = st.conns.lock().unwrap_or_else(|p| p.into_inner());
                    conns.push(a);
                    conns.push(b);
                }
                for (from, into) in [
                    (client.try_clone(), upstream.try_clone()),
                    (upstream.try_clone(), client.try_clone()),
                ] {
                    let (Ok(from), Ok(into)) = (from, into) else { continue };
                    let st = st.clone();
                    std::thread::spawn(move || forward(from, into, &st));
                }
            }
        });
        FaultProxy { addr, state }
    }

    /// Holds every byte from now on, in both directions.
    pub fn partition(&self) {
        self.state.held.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Lets bytes through again.
    pub fn heal(&self) {
        self.state.held.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

fn forward(mut from: std::net::TcpStream, mut into: std::net::TcpStream, st: &ProxyState) {
    use std::io::{Read, Write};
    use std::sync::atomic::Ordering;
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        // Held: keep this chunk (and, by not reading, everything behind it
        // in the kernel's buffers) until the partition heals.
        while st.held.load(Ordering::SeqCst) && !st.stopped.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(5));
        }
        if st.stopped.load(Ordering::SeqCst) || into.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = into.shutdown(std::net::Shutdown::Write);
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.state.stopped.store(true, std::sync::atomic::Ordering::SeqCst);
        for c in self.state.conns.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
        // Wake the accept loop so that it sees the stop.
        let _ = std::net::TcpStream::connect(self.addr);
    }
}

/// The text of `GET /metrics` of the control plane at `api` (with its
/// registered token).
pub fn scrape(api: &str) -> String {
    match http("GET", &format!("{api}/metrics"), None, None) {
        Ok((200, Value::String(text))) => text,
        other => panic!("GET {api}/metrics: {other:?}"),
    }
}

/// The sum of the samples of `name` whose label sets hold every one of
/// `labels` (`zone="zone-1"`); `None` when there is none.
pub fn sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else { continue };
        let (set, value) = match rest.strip_prefix('{') {
            Some(r) => match r.split_once("} ") {
                Some((set, value)) => (set, value),
                None => continue,
            },
            None => match rest.strip_prefix(' ') {
                Some(value) => ("", value),
                None => continue,
            },
        };
        let set: Vec<&str> = set.split(',').collect();
        if labels.iter().all(|l| set.contains(l)) {
            if let Ok(v) = value.split_whitespace().next().unwrap_or_default().parse::<f64>() {
                *found.get_or_insert(0.0) += v;
            }
        }
    }
    found
}

/// The metric families (`# TYPE` names) a scrape declares.
pub fn declared_metrics(text: &str) -> std::collections::BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// The metric families the queries of a Grafana dashboard read: every
/// `meridian_*` and `process_*` name in a target's `expr`, without the
/// `_total`, `_bucket`, `_sum` and `_count` the exposition adds.
pub fn dashboard_metrics(dashboard: &Value) -> std::collections::BTreeSet<String> {
    fn exprs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(e)) = m.get("expr") {
                    out.push(e);
                }
                m.values().for_each(|v| exprs(v, out));
            }
            Value::Array(a) => a.iter().for_each(|v| exprs(v, out)),
            _ => {}
        }
    }
    let mut all = Vec::new();
    exprs(dashboard, &mut all);
    let mut names = std::collections::BTreeSet::new();
    for e in all {
        let bytes = e.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            let starts = (e[i..].starts_with("meridian_") || e[i..].starts_with("process_"))
                && (i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_'));
            if !starts {
                i += 1;
                continue;
            }
            let end = e[i..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .map_or(e.len(), |n| i + n);
            let name = &e[i..end];
            let base = ["_total", "_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            names.insert(base.to_string());
            i = end;
        }
    }
    names
}
