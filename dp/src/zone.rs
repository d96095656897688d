//! The agent's connection to its zone: one TLS channel (verified with the
//! zone's CA), the token read from its file (again before every attempt,
//! so a renewed file takes effect), the dataplane service calls, and what a
//! failure means to an operator.
//!
//! Every failure is a [`Failure`] of one cause — bad token, not allowed,
//! wrong CA, zone unreachable, token file unreadable, or another refusal —
//! and [`FailureLog`] logs one line when the cause changes, not one per
//! retry.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use meridian_proto::dp::dataplanes_client::DataplanesClient;
use meridian_proto::dp::{
    CertificateBundle, CertificatesRequest, DeregisterRequest, RegisterRequest, RegisterResponse,
};
use meridian_xds::client::{self, Bearer};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Status, Streaming};

use crate::dataplane::Definition;

/// Why talking to the zone failed, as an operator should read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The zone refused the token (`UNAUTHENTICATED`).
    BadToken(String),
    /// The token does not cover this proxy (`PERMISSION_DENIED`).
    NotAllowed(String),
    /// The zone's certificate does not verify with the CA file.
    WrongCa { ca_file: PathBuf, detail: String },
    /// No connection to the zone.
    Unreachable { address: String, detail: String },
    /// The token file cannot be read.
    TokenFile(String),
    /// Any other answer of the zone.
    Refused { code: Code, message: String },
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::BadToken(m) => write!(f, "bad token: the zone refused the dataplane token: {m}"),
            Failure::NotAllowed(m) => write!(f, "not allowed: the token does not cover this proxy: {m}"),
            Failure::WrongCa { ca_file, detail } => write!(
                f,
                "wrong CA: the zone's certificate does not verify with {} (give the zone's GET /xds-ca as --ca-cert-file): {detail}",
                ca_file.display()
            ),
            Failure::Unreachable { address, detail } => write!(f, "zone unreachable at {address}: {detail}"),
            Failure::TokenFile(m) => write!(f, "token file: {m}"),
            Failure::Refused { code, message } => write!(f, "the zone answered {code:?}: {message}"),
        }
    }
}

/// A status's message and the text of every error below it, innermost
/// last, without repeats.
fn chain(status: &Status) -> String {
    let mut text = status.message().to_string();
    let mut next = std::error::Error::source(status);
    while let Some(s) = next {
        let s_text = s.to_string();
        if !s_text.is_empty() && !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        next = s.source();
    }
    text
}

impl Failure {
    /// What `status` (of a call or stream to the zone at `address`) means.
    pub fn from_status(status: &Status, address: &str, ca_file: &Path) -> Failure {
        match status.code() {
            Code::Unauthenticated => Failure::BadToken(status.message().to_string()),
            Code::PermissionDenied => Failure::NotAllowed(status.message().to_string()),
            Code::Unavailable | Code::Unknown | Code::Internal
                if std::error::Error::source(status).is_some() || status.message().contains("connect") =>
            {
                let detail = chain(status);
                let tls = [
                    "certificate",
                    "UnknownIssuer",
                    "NotValidForName",
                    "BadSignature",
                    "handshake",
                ];
                if tls.iter().any(|t| detail.contains(t)) {
                    Failure::WrongCa {
                        ca_file: ca_file.to_path_buf(),
                        detail,
                    }
                } else {
                    Failure::Unreachable {
                        address: address.to_string(),
                        detail,
                    }
                }
            }
            code => Failure::Refused {
                code,
                message: status.message().to_string(),
            },
        }
    }

    /// The cause, to log a line only when it changes.
    pub fn cause(&self) -> &'static str {
        match self {
            Failure::BadToken(_) => "bad token",
            Failure::NotAllowed(_) => "not allowed",
            Failure::WrongCa { .. } => "wrong CA",
            Failure::Unreachable { .. } => "zone unreachable",
            Failure::TokenFile(_) => "token file",
            Failure::Refused { .. } => "refused",
        }
    }
}

/// Logs a failure when its cause differs from the last one, and a recovery.
#[derive(Debug, Default)]
pub struct FailureLog {
    what: &'static str,
    last: Option<&'static str>,
}

impl FailureLog {
    pub fn new(what: &'static str) -> Self {
        FailureLog { what, last: None }
    }

    /// Records a failure; returns whether it was logged.
    pub fn failed(&mut self, f: &Failure) -> bool {
        let cause = f.cause();
        if self.last == Some(cause) {
            tracing::debug!(what = self.what, "{f}");
            return false;
        }
        self.last = Some(cause);
        tracing::error!(what = self.what, cause, "{f}");
        true
    }

    /// Records a success; logs it when it ends failures.
    pub fn ok(&mut self, message: &str) {
        if self.last.take().is_some() {
            tracing::info!(what = self.what, "{message} (recovered)");
        }
    }
}

/// The zone as the agent reaches it.
pub struct Zone {
    address: String,
    ca_file: PathBuf,
    token_file: PathBuf,
    channel: Channel,
    bearer: Bearer,
    token: Mutex<String>,
}

fn read_token(path: &Path) -> Result<String, Failure> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Failure::TokenFile(format!("cannot read {}: {e}", path.display())))?;
    let token = text.trim().to_string();
    if token.is_empty() {
        return Err(Failure::TokenFile(format!("{} is empty", path.display())));
    }
    Ok(token)
}

impl Zone {
    /// Sets up the channel (it connects lazily, on the first call); fails
    /// on an unusable address, CA file or token file.
    pub fn new(address: &str, ca_file: &Path, token_file: &Path) -> anyhow::Result<Zone> {
        let ca_pem = std::fs::read_to_string(ca_file)
            .map_err(|e| anyhow::anyhow!("--ca-cert-file {}: {e}", ca_file.display()))?;
        let token = read_token(token_file).map_err(|f| anyhow::anyhow!("{f}"))?;
        let channel = client::endpoint(address, &ca_pem)?
            .connect_timeout(Duration::from_secs(5))
            .http2_keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(10))
            .connect_lazy();
        Ok(Zone {
            address: address.to_string(),
            ca_file: ca_file.to_path_buf(),
            token_file: token_file.to_path_buf(),
            channel,
            bearer: Bearer::new(&token)?,
            token: Mutex::new(token),
        })
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    pub fn bearer(&self) -> Bearer {
        self.bearer.clone()
    }

    /// The token as last read.
    pub fn token(&self) -> String {
        self.token.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Reads the token file again; calls from now on carry what it holds.
    pub fn refresh_token(&self) -> Result<(), Failure> {
        let fresh = read_token(&self.token_file)?;
        let mut current = self.token.lock().unwrap_or_else(|p| p.into_inner());
        if *current != fresh {
            self.bearer
                .set(&fresh)
                .map_err(|e| Failure::TokenFile(format!("{}: {e}", self.token_file.display())))?;
            tracing::info!(file = %self.token_file.display(), "read a new dataplane token");
            *current = fresh;
        }
        Ok(())
    }

    /// What `status` from this zone means.
    pub fn failure(&self, status: &Status) -> Failure {
        Failure::from_status(status, &self.address, &self.ca_file)
    }

    fn dataplanes(&self) -> DataplanesClient<InterceptedService<Channel, Bearer>> {
        DataplanesClient::with_interceptor(self.channel.clone(), self.bearer.clone())
    }

    /// Registers `def`; returns the zone's outcome (created, updated, …)
    /// and the open call, which holds the registration until it ends.
    pub async fn register(&self, def: &Definition) -> Result<(String, Streaming<RegisterResponse>), Failure> {
        self.refresh_token()?;
        let req = RegisterRequest {
            mesh: def.mesh.clone(),
            name: def.name.clone(),
            dataplane_json: def.fields.to_string(),
        };
        let mut stream = self
            .dataplanes()
            .register(req)
            .await
            .map_err(|s| self.failure(&s))?
            .into_inner();
        match stream.message().await {
            Ok(Some(first)) => Ok((first.outcome, stream)),
            Ok(None) => Err(self.failure(&Status::unavailable("the zone ended the registration at once"))),
            Err(s) => Err(self.failure(&s)),
        }
    }

    /// Follows the mesh mTLS material of dataplane `mesh`.`name`.
    pub async fn certificates(&self, mesh: &str, name: &str) -> Result<Streaming<CertificateBundle>, Failure> {
        self.refresh_token()?;
        let req = CertificatesRequest {
            mesh: mesh.to_string(),
            name: name.to_string(),
        };
        self.dataplanes()
            .certificates(req)
            .await
            .map(|r| r.into_inner())
            .map_err(|s| self.failure(&s))
    }

    /// Removes the dataplane `mesh`.`name` this agent registered.
    pub async fn deregister(&self, mesh: &str, name: &str) -> Result<bool, Failure> {
        let req = DeregisterRequest {
            mesh: mesh.to_string(),
            name: name.to_string(),
        };
        self.dataplanes()
            .deregister(req)
            .await
            .map(|r| r.into_inner().removed)
            .map_err(|s| self.failure(&s))
    }
}

/// The delays between attempts: exponential from 100 ms to `max`, with
/// jitter, never giving up.
pub fn backoff(max: Duration) -> backoff::ExponentialBackoff {
    backoff::ExponentialBackoffBuilder::new()
        .with_initial_interval(Duration::from_millis(100))
        .with_max_interval(max)
        .with_randomization_factor(0.3)
        .with_max_elapsed_time(None)
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_causes() {
        let ca = Path::new("/ca.pem");
        let f = Failure::from_status(&Status::unauthenticated("expired"), "z:1", ca);
        assert_eq!(f, Failure::BadToken("expired".into()));
        assert!(f.to_string().starts_with("bad token"), "{f}");
        let f = Failure::from_status(&Status::permission_denied("mesh"), "z:1", ca);
        assert_eq!(f.cause(), "not allowed");
        let f = Failure::from_status(&Status::not_found("no dataplane"), "z:1", ca);
        assert_eq!(
            f,
            Failure::Refused {
                code: Code::NotFound,
                message: "no dataplane".into()
            }
        );
    }

    #[test]
    fn one_line_per_cause() {
        let mut log = FailureLog::new("test");
        let bad = Failure::BadToken("x".into());
        assert!(log.failed(&bad));
        assert!(!log.failed(&bad), "the same cause again is not logged");
        assert!(log.failed(&Failure::TokenFile("y".into())));
        log.ok("registered");
        assert!(log.failed(&bad), "after a success the cause is logged again");
    }

    #[test]
    fn token_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t");
        assert!(matches!(read_token(&p), Err(Failure::TokenFile(_))));
        std::fs::write(&p, "\n").unwrap();
        assert!(matches!(read_token(&p), Err(Failure::TokenFile(m)) if m.contains("empty")));
        std::fs::write(&p, "abc\n").unwrap();
        assert_eq!(read_token(&p).unwrap(), "abc");
    }
}
