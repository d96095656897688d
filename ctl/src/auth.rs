//! Which control plane to talk to, and with which token (DESIGN §12).
//!
//! Everything here is a pure function of what `main` read from the flags,
//! the environment and the context file, so the precedence is tested without
//! touching the real `HOME` or working directory.
//!
//! The address: `--api` (or `MERIDIAN_API`), else the current context's,
//! else `http://127.0.0.1:5681`. A context's token file and CA file go only
//! to the context's own address: `--api` naming another control plane does
//! not receive the context's token.
//!
//! The token, first that applies:
//! 1. `--token-file F` (or `MERIDIAN_API_TOKEN_FILE`);
//! 2. `MERIDIAN_API_TOKEN`, the token itself;
//! 3. the current context's token file;
//! 4. for a loopback address only, the local admin token
//!    `./meridian-data/admin-token`, else `./meridian-zone-data/admin-token`
//!    when it exists.
//!
//! A token that is named but cannot be read, or is empty, is an error naming
//! where it came from: a broken token never silently becomes "no token".

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};

use crate::contexts::ControlPlane;

/// The address used when neither `--api` nor a context names one.
pub const DEFAULT_API: &str = "http://127.0.0.1:5681";

/// Where a local global, then a local zone, keeps its admin token (relative
/// to the working directory: both processes' default data directories).
pub const LOCAL_ADMIN_TOKENS: [&str; 2] = ["meridian-data/admin-token", "meridian-zone-data/admin-token"];

/// The control plane a command talks to.
#[derive(Debug, PartialEq, Eq)]
pub struct Target<'a> {
    /// The API's base URL, without a trailing `/`.
    pub address: String,
    /// The current context, when its credentials apply to `address`.
    pub context: Option<&'a ControlPlane>,
}

/// Picks the address: `--api`, else the current context's, else the default.
/// A context's credentials apply only to its own address.
pub fn target<'a>(api_flag: Option<&str>, current: Option<&'a ControlPlane>) -> anyhow::Result<Target<'a>> {
    let (address, context) = match (api_flag, current) {
        (Some(api), ctx) => {
            let api = normalize(api);
            let ctx = ctx.filter(|c| normalize(&c.address) == api);
            (api, ctx)
        }
        (None, Some(ctx)) => (normalize(&ctx.address), Some(ctx)),
        (None, None) => (DEFAULT_API.to_string(), None),
    };
    let what = match (api_flag, context) {
        (Some(_), _) => "--api (MERIDIAN_API)".to_string(),
        (None, Some(c)) => format!("the address of control plane {:?}", c.name),
        (None, None) => "the default address".to_string(),
    };
    api_host(&address).with_context(|| format!("{what} {address:?}"))?;
    Ok(Target { address, context })
}

/// `HOST:PORT` without a scheme is taken as `http://HOST:PORT` (what the
/// control planes print and listen on by default).
fn normalize(address: &str) -> String {
    let address = address.trim().trim_end_matches('/');
    if address.contains("://") {
        address.to_string()
    } else {
        format!("http://{address}")
    }
}

/// The host of an `http://` or `https://` URL (an IPv6 address without its
/// brackets).
pub fn api_host(address: &str) -> anyhow::Result<String> {
    let uri: ureq::http::Uri = address
        .parse()
        .map_err(|e| anyhow!("not a URL: {e} (expected http://HOST:PORT or https://HOST:PORT)"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        Some(other) => bail!("scheme {other:?} is not http or https"),
        None => bail!("no scheme (expected http://HOST:PORT or https://HOST:PORT)"),
    }
    if uri.query().is_some() {
        bail!("a control plane's address has no query");
    }
    let host = uri.host().filter(|h| !h.is_empty()).ok_or_else(|| anyhow!("no host"))?;
    Ok(host.trim_start_matches('[').trim_end_matches(']').to_string())
}

/// Whether `host` is this machine: `localhost`, 127.0.0.0/8 or `::1` (also
/// IPv4-mapped).
pub fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.trim_end_matches('.').eq_ignore_ascii_case("localhost") {
        return true;
    }
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => ip.is_loopback(),
        Ok(IpAddr::V6(ip)) => ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
        Err(_) => false,
    }
}

/// Where the token came from: what errors and hints name (never the token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// `--token-file` or `MERIDIAN_API_TOKEN_FILE`.
    FlagFile(PathBuf),
    /// `MERIDIAN_API_TOKEN`.
    Env,
    /// The current context's token file.
    Context { name: String, file: PathBuf },
    /// A local control plane's admin token file.
    LocalAdmin(PathBuf),
}

impl fmt::Display for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenSource::FlagFile(p) => write!(f, "--token-file {}", p.display()),
            TokenSource::Env => write!(f, "MERIDIAN_API_TOKEN"),
            TokenSource::Context { name, file } => {
                write!(f, "{} (the token file of control plane {name:?})", file.display())
            }
            TokenSource::LocalAdmin(p) => write!(f, "{} (the local admin token)", p.display()),
        }
    }
}

/// A bearer token and where it came from.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiToken {
    pub secret: String,
    pub source: TokenSource,
}

impl fmt::Debug for ApiToken {
    // Never print the secret, not even in a debug dump.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiToken")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// What the token is chosen from.
pub struct TokenInputs<'a> {
    /// `--token-file` or `MERIDIAN_API_TOKEN_FILE`.
    pub flag_file: Option<&'a Path>,
    /// `MERIDIAN_API_TOKEN`.
    pub env_token: Option<&'a str>,
    /// The current context, when it applies to the address.
    pub context: Option<&'a ControlPlane>,
    /// Whether the address's host is this machine.
    pub loopback: bool,
    /// The directory relative paths (and the local admin tokens) resolve in.
    pub cwd: &'a Path,
}

/// Chooses the token by the precedence in the module docs; `None` when no
/// source applies (the request goes without, and a 401 explains).
pub fn resolve_token(inputs: &TokenInputs<'_>) -> anyhow::Result<Option<ApiToken>> {
    if let Some(file) = inputs.flag_file {
        let secret = read_token_file(&inputs.cwd.join(file))
            .with_context(|| "--token-file (MERIDIAN_API_TOKEN_FILE)".to_string())?;
        return Ok(Some(ApiToken {
            secret,
            source: TokenSource::FlagFile(file.to_path_buf()),
        }));
    }
    if let Some(token) = inputs.env_token {
        let secret = check_token(token).context("MERIDIAN_API_TOKEN")?;
        return Ok(Some(ApiToken {
            secret,
            source: TokenSource::Env,
        }));
    }
    if let Some((ctx, file)) = inputs.context.and_then(|c| Some((c, c.token_file.as_deref()?))) {
        let secret = read_token_file(&inputs.cwd.join(file))
            .with_context(|| format!("the token file of control plane {:?}", ctx.name))?;
        return Ok(Some(ApiToken {
            secret,
            source: TokenSource::Context {
                name: ctx.name.clone(),
                file: file.to_path_buf(),
            },
        }));
    }
    if inputs.loopback {
        for rel in LOCAL_ADMIN_TOKENS {
            let path = inputs.cwd.join(rel);
            // An error other than "not found" (a directory we may not search)
            // counts as present, so that reading it reports the problem.
            if path.try_exists().unwrap_or(true) {
                let secret = read_token_file(&path).context("the local admin token")?;
                return Ok(Some(ApiToken {
                    secret,
                    source: TokenSource::LocalAdmin(PathBuf::from(".").join(rel)),
                }));
            }
        }
    }
    Ok(None)
}

/// Reads a token file: its content, trimmed, must be one non-empty token.
pub fn read_token_file(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading the token file {}", path.display()))?;
    check_token(&text).with_context(|| format!("the token file {}", path.display()))
}

/// Trims a token and checks that it can go into an `Authorization` header.
fn check_token(text: &str) -> anyhow::Result<String> {
    let token = text.trim();
    if token.is_empty() {
        bail!("is empty: it holds no token");
    }
    if !token.chars().all(|c| c.is_ascii_graphic()) {
        bail!("is not a token: it holds spaces, line breaks or non-ASCII characters");
    }
    Ok(token.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(name: &str, address: &str, token_file: Option<&Path>) -> ControlPlane {
        ControlPlane {
            name: name.into(),
            address: address.into(),
            token_file: token_file.map(Path::to_path_buf),
            ca_file: None,
        }
    }

    struct Fixture {
        dir: tempfile::TempDir,
    }

    impl Fixture {
        fn new() -> Self {
            Fixture {
                dir: tempfile::tempdir().expect("temp dir"),
            }
        }
        fn path(&self) -> &Path {
            self.dir.path()
        }
        fn write(&self, rel: &str, text: &str) -> PathBuf {
            let p = self.path().join(rel);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(&p, text).expect("write");
            p
        }
        fn inputs<'a>(
            &'a self,
            flag_file: Option<&'a Path>,
            env_token: Option<&'a str>,
            context: Option<&'a ControlPlane>,
            loopback: bool,
        ) -> TokenInputs<'a> {
            TokenInputs {
                flag_file,
                env_token,
                context,
                loopback,
                cwd: self.path(),
            }
        }
    }

    fn resolved(inputs: &TokenInputs<'_>) -> Option<(String, TokenSource)> {
        resolve_token(inputs).expect("resolves").map(|t| (t.secret, t.source))
    }

    #[test]
    fn token_precedence_is_flag_env_context_local() {
        let f = Fixture::new();
        let flag = f.write("flag.token", "  flag-token\n");
        let ctx_file = f.write("ctx.token", "ctx-token\n");
        f.write("meridian-data/admin-token", "global-admin\n");
        f.write("meridian-zone-data/admin-token", "zone-admin\n");
        let c = ctx("prod", "http://127.0.0.1:5681", Some(&ctx_file));

        let all = f.inputs(Some(&flag), Some("env-token"), Some(&c), true);
        assert_eq!(
            resolved(&all),
            Some(("flag-token".into(), TokenSource::FlagFile(flag.clone())))
        );

        let no_flag = f.inputs(None, Some("env-token"), Some(&c), true);
        assert_eq!(resolved(&no_flag), Some(("env-token".into(), TokenSource::Env)));

        let no_env = f.inputs(None, None, Some(&c), true);
        assert_eq!(
            resolved(&no_env),
            Some((
                "ctx-token".into(),
                TokenSource::Context {
                    name: "prod".into(),
                    file: ctx_file.clone()
                }
            ))
        );

        let local = f.inputs(None, None, None, true);
        assert_eq!(
            resolved(&local),
            Some((
                "global-admin".into(),
                TokenSource::LocalAdmin(PathBuf::from("./meridian-data/admin-token"))
            ))
        );
    }

    #[test]
    fn a_context_without_token_file_falls_through_to_the_local_token() {
        let f = Fixture::new();
        f.write("meridian-data/admin-token", "global-admin");
        let c = ctx("local", "http://localhost:5681", None);
        let got = resolved(&f.inputs(None, None, Some(&c), true));
        assert_eq!(got.map(|(s, _)| s), Some("global-admin".into()));
    }

    #[test]
    fn the_zone_admin_token_is_used_when_no_global_one_exists() {
        let f = Fixture::new();
        f.write("meridian-zone-data/admin-token", "zone-admin\n");
        let got = resolved(&f.inputs(None, None, None, true));
        assert_eq!(
            got,
            Some((
                "zone-admin".into(),
                TokenSource::LocalAdmin(PathBuf::from("./meridian-zone-data/admin-token"))
            ))
        );
    }

    #[test]
    fn local_admin_tokens_are_not_sent_to_other_hosts() {
        let f = Fixture::new();
        f.write("meridian-data/admin-token", "global-admin");
        assert_eq!(resolved(&f.inputs(None, None, None, false)), None);
    }

    #[test]
    fn no_source_means_no_token() {
        let f = Fixture::new();
        assert_eq!(resolved(&f.inputs(None, None, None, true)), None);
    }

    #[test]
    fn a_relative_flag_file_resolves_in_the_working_directory() {
        let f = Fixture::new();
        f.write("t/my.token", "abc");
        let rel = Path::new("t/my.token");
        let got = resolved(&f.inputs(Some(rel), None, None, false));
        assert_eq!(got, Some(("abc".into(), TokenSource::FlagFile(rel.into()))));
    }

    #[test]
    fn broken_token_sources_are_errors_naming_them() {
        let f = Fixture::new();
        let empty = f.write("empty.token", " \n\t\n");
        let missing = f.path().join("missing.token");
        let two_lines = f.write("two.token", "abc\ndef\n");
        // Even with a good fallback, a named source that is broken fails.
        let good = f.write("good.token", "good");
        let c = ctx("prod", "https://cp.example.com", Some(&good));

        for file in [&empty, &missing, &two_lines] {
            let err = resolve_token(&f.inputs(Some(file), Some("env"), Some(&c), true)).expect_err("must fail");
            let msg = format!("{err:#}");
            assert!(msg.contains("--token-file"), "{msg}");
            assert!(msg.contains(&file.display().to_string()), "{msg}");
        }

        let msg = format!(
            "{:#}",
            resolve_token(&f.inputs(None, Some("  "), None, true)).expect_err("empty env")
        );
        assert!(msg.contains("MERIDIAN_API_TOKEN") && msg.contains("empty"), "{msg}");

        let broken = ctx("prod", "https://cp.example.com", Some(&missing));
        let msg = format!(
            "{:#}",
            resolve_token(&f.inputs(None, None, Some(&broken), true)).expect_err("ctx")
        );
        assert!(msg.contains("\"prod\"") && msg.contains("missing.token"), "{msg}");

        f.write("meridian-data/admin-token", "");
        let msg = format!(
            "{:#}",
            resolve_token(&f.inputs(None, None, None, true)).expect_err("local")
        );
        assert!(
            msg.contains("meridian-data/admin-token") && msg.contains("empty"),
            "{msg}"
        );
    }

    #[test]
    fn loopback_hosts() {
        for host in [
            "localhost",
            "LOCALHOST",
            "localhost.",
            "127.0.0.1",
            "127.1.2.3",
            "::1",
            "[::1]",
            "::ffff:127.0.0.1",
        ] {
            assert!(is_loopback(host), "{host}");
        }
        for host in [
            "10.0.0.1",
            "128.0.0.1",
            "::",
            "::2",
            "example.com",
            "localhost.example.com",
            "0.0.0.0",
            "",
        ] {
            assert!(!is_loopback(host), "{host}");
        }
    }

    #[test]
    fn hosts_of_api_addresses() {
        assert_eq!(api_host("http://127.0.0.1:5681").expect("v4"), "127.0.0.1");
        assert_eq!(api_host("https://[::1]:5682/").expect("v6"), "::1");
        assert_eq!(api_host("https://cp.example.com").expect("name"), "cp.example.com");
        for bad in [
            "127.0.0.1:5681",
            "ftp://host",
            "http://",
            "not a url",
            "http://h:5681/?x=1",
        ] {
            assert!(api_host(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_api_flag_overrides_the_context_and_drops_its_credentials() {
        let c = ctx("prod", "https://cp.example.com:5682/", Some(Path::new("/t")));
        let t = target(None, Some(&c)).expect("context");
        assert_eq!(t.address, "https://cp.example.com:5682");
        assert_eq!(t.context, Some(&c));

        let same = target(Some("https://cp.example.com:5682"), Some(&c)).expect("same");
        assert_eq!(same.context, Some(&c));

        let other = target(Some("http://127.0.0.1:5681"), Some(&c)).expect("other");
        assert_eq!(other.address, "http://127.0.0.1:5681");
        assert_eq!(other.context, None);

        let default = target(None, None).expect("default");
        assert_eq!(default.address, DEFAULT_API);

        // HOST:PORT without a scheme is plain HTTP, as the control planes listen.
        let bare = target(Some("localhost:5681"), None).expect("bare");
        assert_eq!(bare.address, "http://localhost:5681");

        let msg = format!("{:#}", target(Some("ftp://localhost:5681"), None).expect_err("bad"));
        assert!(msg.contains("--api"), "{msg}");
    }
}
