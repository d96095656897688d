//! A thin client over the HTTP API: sends the bearer token on every request,
//! verifies `https://` with the Mozilla roots or `--ca-file`, and turns
//! error answers into messages that show the server's causes and, for 401
//! and 403, what to do about them.

use std::path::Path;

use anyhow::{anyhow, Context};
use serde_json::Value;
use ureq::tls::{Certificate, PemItem, RootCerts, TlsConfig};

use crate::auth::{ApiToken, TokenSource};

/// A thin client over the HTTP API.
pub struct Client {
    base: String,
    agent: ureq::Agent,
    token: Option<ApiToken>,
    /// Whether `--ca-file` (or the context's) replaced the public roots.
    private_ca: bool,
}

impl Client {
    /// The control plane's address (`http://host:port`).
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `ca` are the only roots an `https://` address is verified with, when
    /// given; otherwise the Mozilla roots.
    pub fn new(base: &str, token: Option<ApiToken>, ca: Option<Vec<Certificate<'static>>>) -> Self {
        let mut config = ureq::Agent::config_builder().http_status_as_error(false);
        let private_ca = ca.is_some();
        if let Some(certs) = ca {
            config = config.tls_config(TlsConfig::builder().root_certs(RootCerts::from(certs)).build());
        }
        Client {
            base: base.trim_end_matches('/').to_string(),
            agent: ureq::Agent::new_with_config(config.build()),
            token,
            private_ca,
        }
    }

    pub fn call(&self, method: &str, path: &str, body: Option<&Value>) -> anyhow::Result<(u16, Value)> {
        let url = format!("{}{}", self.base, path);
        let auth = self.token.as_ref().map(|t| format!("Bearer {}", t.secret));
        let resp = match (method, body) {
            ("GET", _) => with_auth(self.agent.get(&url), auth.as_deref()).call(),
            ("DELETE", _) => with_auth(self.agent.delete(&url), auth.as_deref()).call(),
            ("PUT", Some(b)) => with_auth(self.agent.put(&url), auth.as_deref()).send_json(b),
            ("POST", Some(b)) => with_auth(self.agent.post(&url), auth.as_deref()).send_json(b),
            _ => return Err(anyhow!("unsupported request {method} {path}")),
        };
        let mut resp = resp.map_err(|e| {
            let hint = if self.base.starts_with("https://") && !self.private_ca && e.to_string().contains("certificate")
            {
                " (a control plane with a certificate of a private CA: give --ca-file FILE)"
            } else {
                ""
            };
            anyhow!(e).context(format!("cannot reach the control plane at {}{hint}", self.base))
        })?;
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .read_to_string()
            .with_context(|| format!("reading the answer to {method} {path}"))?;
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok((status, value))
    }

    /// Calls and turns an error status into an error that shows the causes
    /// (and, for 401 and 403, a hint).
    pub fn expect_ok(&self, method: &str, path: &str, body: Option<&Value>) -> anyhow::Result<(u16, Value)> {
        let (status, value) = self.call(method, path, body)?;
        if (200..300).contains(&status) {
            return Ok((status, value));
        }
        let mut msg = format!("{method} {path}: {status}: {}", describe_error(&value));
        if let Some(hint) = auth_hint(status, self.token.as_ref().map(|t| &t.source)) {
            msg.push_str("\nhint: ");
            msg.push_str(&hint);
        }
        Err(anyhow!(msg))
    }
}

fn with_auth<B>(req: ureq::RequestBuilder<B>, auth: Option<&str>) -> ureq::RequestBuilder<B> {
    match auth {
        Some(a) => req.header("Authorization", a),
        None => req,
    }
}

pub fn describe_error(v: &Value) -> String {
    let mut out = v
        .get("details")
        .or_else(|| v.get("title"))
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| v.to_string());
    if let Some(causes) = v.get("causes").and_then(Value::as_array) {
        for c in causes {
            let field = c.get("field").and_then(Value::as_str).unwrap_or("");
            let msg = c.get("message").and_then(Value::as_str).unwrap_or("");
            out.push_str(&format!("\n  {field}: {msg}"));
        }
    }
    out
}

const HOW_TO_GIVE_A_TOKEN: &str = "Give one with --token-file FILE (before the command), \
MERIDIAN_API_TOKEN_FILE=FILE or MERIDIAN_API_TOKEN=TOKEN, or keep one in a context:
  meridianctl config control-planes add --name NAME --address URL --token-file FILE
A control plane writes its admin token to DATA-DIR/admin-token (./meridian-data/admin-token for a global, \
./meridian-zone-data/admin-token for a zone); `meridianctl generate user-token` issues user tokens.";

/// What to tell the user about a 401 or 403, given where the token came from.
pub fn auth_hint(status: u16, source: Option<&TokenSource>) -> Option<String> {
    match (status, source) {
        (401, None) => Some(format!("meridianctl sent no token. {HOW_TO_GIVE_A_TOKEN}")),
        (401, Some(source)) => {
            let zone = if matches!(source, TokenSource::LocalAdmin(p) if p.ends_with("meridian-data/admin-token")) {
                " (a local zone's is in ./meridian-zone-data/admin-token)"
            } else {
                ""
            };
            Some(format!(
                "the token from {source} was refused: expired, revoked, or of another control plane{zone}? {HOW_TO_GIVE_A_TOKEN}"
            ))
        }
        (403, source) => Some(format!(
            "the token{} is valid but lacks this permission: an AccessRoleBinding must give its user or one of its \
             groups an AccessRole with the access named above (see `meridianctl get access-role-bindings`)",
            source.map(|s| format!(" from {s}")).unwrap_or_default()
        )),
        _ => None,
    }
}

/// Reads PEM CA certificates (`--ca-file`, or a context's `caFile`).
pub fn load_ca(path: &Path, what: &str) -> anyhow::Result<Vec<Certificate<'static>>> {
    let pem = std::fs::read(path).with_context(|| format!("{what}: reading {}", path.display()))?;
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        // A key bundled in the same file is not a root; skip it.
        if let PemItem::Certificate(c) = item.with_context(|| format!("{what}: {} is not valid PEM", path.display()))? {
            certs.push(c);
        }
    }
    if certs.is_empty() {
        anyhow::bail!("{what}: {} holds no PEM certificate", path.display());
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    #[test]
    fn a_401_without_a_token_says_how_to_give_one() {
        let hint = auth_hint(401, None).expect("hint");
        assert!(hint.contains("sent no token"), "{hint}");
        for way in [
            "--token-file",
            "MERIDIAN_API_TOKEN",
            "config control-planes add",
            "admin-token",
        ] {
            assert!(hint.contains(way), "{way}: {hint}");
        }
    }

    #[test]
    fn a_401_names_the_refused_token_and_a_403_the_missing_role() {
        let src = TokenSource::FlagFile(PathBuf::from("/t/alice.token"));
        let hint = auth_hint(401, Some(&src)).expect("401");
        assert!(hint.contains("/t/alice.token") && hint.contains("refused"), "{hint}");

        let local = TokenSource::LocalAdmin(PathBuf::from("./meridian-data/admin-token"));
        let hint = auth_hint(401, Some(&local)).expect("local");
        assert!(hint.contains("./meridian-zone-data/admin-token"), "{hint}");

        let hint = auth_hint(403, Some(&TokenSource::Env)).expect("403");
        assert!(
            hint.contains("MERIDIAN_API_TOKEN") && hint.contains("AccessRoleBinding"),
            "{hint}"
        );

        assert_eq!(auth_hint(404, None), None);
        assert_eq!(auth_hint(400, Some(&src)), None);
    }

    #[test]
    fn error_bodies_show_details_and_causes() {
        let body = serde_json::json!({
            "title": "Forbidden",
            "details": "user alice may not CREATE MeshTimeout in mesh team-b",
            "causes": [{"field": "mesh", "message": "no role grants CREATE"}],
        });
        assert_eq!(
            describe_error(&body),
            "user alice may not CREATE MeshTimeout in mesh team-b\n  mesh: no role grants CREATE"
        );
        assert_eq!(describe_error(&Value::String("plain".into())), "\"plain\"");
    }

    #[test]
    fn ca_files_must_hold_certificates() {
        let tmp = tempfile::tempdir().expect("tmp");
        let empty = tmp.path().join("empty.pem");
        std::fs::write(&empty, "no pem here\n").expect("write");
        let msg = format!("{:#}", load_ca(&empty, "--ca-file").expect_err("empty"));
        assert!(msg.contains("--ca-file") && msg.contains("empty.pem"), "{msg}");
        let missing = tmp.path().join("missing.pem");
        let msg = format!("{:#}", load_ca(&missing, "--ca-file").expect_err("missing"));
        assert!(msg.contains("missing.pem"), "{msg}");
    }
}
