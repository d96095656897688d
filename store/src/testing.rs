//! Test support: a real etcd process on free loopback ports.
//!
//! ```no_run
//! # async fn demo() -> Result<(), meridian_store::testing::HarnessError> {
//! use meridian_store::testing::EtcdServer;
//! let mut etcd = EtcdServer::start().await?;   // fails clearly if etcd is not installed
//! let endpoints = etcd.endpoints();            // ["http://127.0.0.1:PORT"]
//! etcd.stop();                                 // SIGKILL, like a crash
//! etcd.restart().await?;                       // same ports, same data
//! # Ok(()) }                                   // killed and its data removed on drop
//! ```
//!
//! The binary is Debian's `etcd-server` (`/usr/bin/etcd`, or `etcd` on the
//! `PATH`). When it is missing, [`EtcdServer::start`] returns
//! [`HarnessError::Missing`] saying how to install it: tests that need etcd
//! fail, they never skip silently.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use etcd_client::{Client, ConnectOptions};
use tokio::time::Instant;

/// Where the etcd binary may be, in order.
const CANDIDATES: &[&str] = &["etcd", "/usr/bin/etcd", "/usr/local/bin/etcd"];

/// How long etcd may take to answer after being started (a busy 2-core CI
/// machine is slow).
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Errors of the etcd test harness.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// No etcd binary on this machine.
    #[error(
        "etcd binary not found (tried {0}): install Debian's etcd-server \
         (`apt-get install -y etcd-server`, provides /usr/bin/etcd); the etcd tests cannot run without it"
    )]
    Missing(String),
    /// The process could not be spawned, or its files created.
    #[error("could not start etcd: {0}")]
    Spawn(String),
    /// etcd exited before it answered.
    #[error("etcd exited during startup ({status}); its log ends with:\n{log}")]
    Exited { status: String, log: String },
    /// etcd did not answer in time.
    #[error("etcd did not answer on {endpoint} within {timeout:?}; its log ends with:\n{log}")]
    NotReady {
        endpoint: String,
        timeout: Duration,
        log: String,
    },
}

/// One etcd member (by default a single-member cluster) in a temporary
/// directory, killed (and its data removed) on drop.
pub struct EtcdServer {
    child: Option<Child>,
    binary: PathBuf,
    client_port: u16,
    peer_port: u16,
    dir: tempfile::TempDir,
    /// The member's name and the cluster it belongs to.
    name: String,
    initial_cluster: Option<String>,
    tls: Option<ServerTls>,
    /// More etcd flags (e.g. `--max-request-bytes=…`).
    extra: Vec<String>,
}

/// TLS of a test etcd: its serving certificate (files), client certificate
/// authentication against `ca_file`, and the material a client presents.
#[derive(Clone, Debug)]
pub struct ServerTls {
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// What clients (the harness's probe included) connect with.
    pub client: crate::etcd::EtcdTls,
}

/// A cluster of etcd members on loopback, killed on drop.
pub struct EtcdCluster {
    pub members: Vec<EtcdServer>,
}

impl EtcdCluster {
    /// Starts `n` members together and waits until each answers.
    pub async fn start(n: usize) -> Result<Self, HarnessError> {
        let binary = find_binary()?;
        let mut members = Vec::new();
        for i in 0..n {
            let (client_port, peer_port) = free_ports()?;
            let dir = tempfile::Builder::new()
                .prefix("meridian-etcd-")
                .tempdir()
                .map_err(|e| HarnessError::Spawn(format!("temp dir: {e}")))?;
            members.push(EtcdServer {
                child: None,
                binary: binary.clone(),
                client_port,
                peer_port,
                dir,
                name: format!("member-{i}"),
                initial_cluster: None,
                tls: None,
                extra: Vec::new(),
            });
        }
        let cluster = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        for m in &mut members {
            m.initial_cluster = Some(cluster.clone());
            m.spawn()?;
        }
        for m in &mut members {
            m.wait_ready().await?;
        }
        Ok(EtcdCluster { members })
    }

    /// Every member's client URL.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(EtcdServer::endpoint).collect()
    }

    /// The index of the member that leads the raft group now.
    pub async fn leader(&self) -> Option<usize> {
        let mut client = self.members.first()?.client().await.ok()?;
        let status = client.status().await.ok()?;
        let leader = status.leader();
        for (i, m) in self.members.iter().enumerate() {
            let mut c = m.client().await.ok()?;
            if c.status().await.ok()?.header().map(|h| h.member_id()) == Some(leader) {
                return Some(i);
            }
        }
        None
    }
}

impl EtcdServer {
    /// Starts a single-member etcd serving TLS with client certificate
    /// authentication (`tls`'s files; the certificate must name 127.0.0.1).
    pub async fn start_tls(tls: ServerTls) -> Result<Self, HarnessError> {
        Self::start_single(Some(tls), &[]).await
    }

    /// Starts etcd on free loopback ports and waits until it answers.
    pub async fn start() -> Result<Self, HarnessError> {
        Self::start_single(None, &[]).await
    }

    /// [`EtcdServer::start`] with more etcd flags.
    pub async fn start_with(extra: &[&str]) -> Result<Self, HarnessError> {
        Self::start_single(None, extra).await
    }

    async fn start_single(tls: Option<ServerTls>, extra: &[&str]) -> Result<Self, HarnessError> {
        let binary = find_binary()?;
        let mut last = None;
        // Another process may grab a port between our probe and etcd's
        // bind; retry with fresh ports.
        for _ in 0..3 {
            let (client_port, peer_port) = free_ports()?;
            let dir = tempfile::Builder::new()
                .prefix("meridian-etcd-")
                .tempdir()
                .map_err(|e| HarnessError::Spawn(format!("temp dir: {e}")))?;
            let mut server = EtcdServer {
                child: None,
                binary: binary.clone(),
                client_port,
                peer_port,
                dir,
                name: "meridian-test".into(),
                initial_cluster: None,
                tls: tls.clone(),
                extra: extra.iter().map(|a| a.to_string()).collect(),
            };
            match server.launch().await {
                Ok(()) => return Ok(server),
                Err(e @ HarnessError::Exited { .. }) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| HarnessError::Spawn("no attempt made".into())))
    }

    /// The client URL, `http://127.0.0.1:PORT` (`https` with TLS).
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    /// The client URLs, as [`crate::etcd::EtcdStore::connect`] takes them.
    pub fn endpoints(&self) -> Vec<String> {
        vec![self.endpoint()]
    }

    /// The data directory (kept across [`EtcdServer::restart`]).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Whether the process is running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Kills etcd (SIGKILL, like a crash) and waits for it to exit. Its data
    /// stays for [`EtcdServer::restart`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGKILL also ends a paused process.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes etcd (SIGSTOP): its sockets stay open but nothing answers,
    /// like a hung machine or a partition. [`EtcdServer::resume`] undoes it.
    pub fn pause(&mut self) -> Result<(), HarnessError> {
        self.signal("-STOP")
    }

    /// Resumes a paused etcd (SIGCONT).
    pub fn resume(&mut self) -> Result<(), HarnessError> {
        self.signal("-CONT")
    }

    fn signal(&mut self, sig: &str) -> Result<(), HarnessError> {
        let Some(child) = self.child.as_ref() else {
            return Err(HarnessError::Spawn("etcd is not running".into()));
        };
        let status = Command::new("kill")
            .arg(sig)
            .arg(child.id().to_string())
            .status()
            .map_err(|e| HarnessError::Spawn(format!("kill {sig}: {e}")))?;
        if status.success() {
            Ok(())
        } else {
            Err(HarnessError::Spawn(format!("kill {sig} {}: {status}", child.id())))
        }
    }

    /// Starts etcd again on the same ports and data, and waits until it
    /// answers. Stops it first if it runs.
    pub async fn restart(&mut self) -> Result<(), HarnessError> {
        self.stop();
        self.launch().await
    }

    /// A client with short timeouts, for tests that poke etcd directly.
    pub async fn client(&self) -> Result<Client, etcd_client::Error> {
        let mut options = client_options();
        if let Some(tls) = &self.tls {
            let mut config =
                etcd_client::TlsOptions::new().ca_certificate(etcd_client::Certificate::from_pem(&tls.client.ca_pem));
            if let Some((cert, key)) = &tls.client.client {
                config = config.identity(etcd_client::Identity::from_pem(cert, key));
            }
            options = options.with_tls(config);
        }
        Client::connect(self.endpoints(), Some(options)).await
    }

    /// The last few KiB of etcd's output, for failure messages.
    pub fn log_tail(&self) -> String {
        tail(&self.dir.path().join("etcd.log"), 4096)
    }

    async fn launch(&mut self) -> Result<(), HarnessError> {
        self.spawn()?;
        self.wait_ready().await
    }

    fn spawn(&mut self) -> Result<(), HarnessError> {
        let log_path = self.dir.path().join("etcd.log");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| HarnessError::Spawn(format!("{}: {e}", log_path.display())))?;
        let log2 = log
            .try_clone()
            .map_err(|e| HarnessError::Spawn(format!("{}: {e}", log_path.display())))?;
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let cluster = self
            .initial_cluster
            .clone()
            .unwrap_or_else(|| format!("{}={peer}", self.name));
        let mut cmd = Command::new(&self.binary);
        if let Some(tls) = &self.tls {
            cmd.arg(format!("--cert-file={}", tls.cert_file.display()))
                .arg(format!("--key-file={}", tls.key_file.display()))
                .arg(format!("--trusted-ca-file={}", tls.ca_file.display()))
                .arg("--client-cert-auth");
        }
        cmd.args(&self.extra);
        let child = cmd
            .arg(format!("--name={}", self.name))
            .arg(format!("--data-dir={}", self.data_dir().display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster={cluster}"))
            .arg("--initial-cluster-state=new")
            .arg("--initial-cluster-token=meridian-test")
            .arg("--heartbeat-interval=50")
            .arg("--election-timeout=500")
            .arg("--logger=zap")
            .arg("--log-level=warn")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| HarnessError::Spawn(format!("{}: {e}", self.binary.display())))?;
        self.child = Some(child);
        Ok(())
    }

    /// Polls etcd with a read until it answers, it exits, or the deadline.
    async fn wait_ready(&mut self) -> Result<(), HarnessError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(HarnessError::Exited {
                        status: status.to_string(),
                        log: self.log_tail(),
                    });
                }
            }
            if self.answers().await {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(HarnessError::NotReady {
                    endpoint: self.endpoint(),
                    timeout: READY_TIMEOUT,
                    log: self.log_tail(),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn answers(&self) -> bool {
        let probe = async {
            let mut client = self.client().await.ok()?;
            client.get("/meridian-test-health", None).await.ok()
        };
        matches!(tokio::time::timeout(Duration::from_secs(2), probe).await, Ok(Some(_)))
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A key prefix no other test uses (tests of one process share an etcd).
pub fn unique_prefix(name: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "/meridian-test/{}-{}-{}",
        name,
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

fn client_options() -> ConnectOptions {
    ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(1))
        .with_timeout(Duration::from_secs(2))
}

fn find_binary() -> Result<PathBuf, HarnessError> {
    for candidate in CANDIDATES {
        let path = Path::new(candidate);
        let found = if path.is_absolute() {
            path.is_file()
        } else {
            // A bare name: let the OS search the PATH.
            Command::new(candidate)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        if found {
            return Ok(path.to_path_buf());
        }
    }
    Err(HarnessError::Missing(CANDIDATES.join(", ")))
}

/// Two distinct free loopback ports (held together while probing, so they
/// differ).
fn free_ports() -> Result<(u16, u16), HarnessError> {
    let bind = || TcpListener::bind("127.0.0.1:0").map_err(|e| HarnessError::Spawn(format!("free port: {e}")));
    let (a, b) = (bind()?, bind()?);
    let port = |l: &TcpListener| {
        l.local_addr()
            .map(|a| a.port())
            .map_err(|e| HarnessError::Spawn(format!("free port: {e}")))
    };
    Ok((port(&a)?, port(&b)?))
}

fn tail(path: &Path, max: u64) -> String {
    let Ok(mut f) = File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(max)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}
