//! MeshMetric's Prometheus endpoint: Envoy's Prometheus listener sends each
//! scrape here (a Unix socket, `metrics_socket`) with what to serve in the
//! `x-meridian-meshmetric` header ([`MetricsRequest`], set by Envoy over
//! anything the client sent). The answer is Envoy's admin stats filtered by
//! the profiles (Kuma 2.7's rules: profile, then `exclude`, then `include`
//! by metric family name; `Basic` also drops the series of Meridian's own
//! clusters), then each application's metrics as they are; every series
//! gets `mesh`, `dataplane` and `service` labels (kept where it has them).
//! An application that does not answer in time is left out and logged.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, Empty, Limited};
use meridian_core::policy::meshmetric::{ProfileName, Profiles, Selector, SelectorType};
use meridian_xds::generate::observability::{MetricsRequest, METRICS_AGENT_PATH, METRICS_REQUEST_HEADER};

/// How long one scrape of Envoy or an application may take.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest metrics body read from Envoy or an application.
const MAX_BODY: usize = 64 << 20;
/// The Prometheus text format's content type.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Kuma 2.7's `Basic` profile: metric families whose names match one of
/// these (its "golden signals" and dashboards).
const BASIC: &[(SelectorType, &str)] = &[
    (SelectorType::Contains, "rq_time"),
    (SelectorType::Contains, "cx_length_ms"),
    (SelectorType::Contains, "cx_count"),
    (SelectorType::Contains, "_rq"),
    (SelectorType::Contains, "bytes"),
    (SelectorType::Contains, "timeout"),
    (SelectorType::Contains, "health_check"),
    (SelectorType::Contains, "lb_healthy_panic"),
    (SelectorType::Contains, "cx_destroy"),
    (SelectorType::Exact, "envoy_cluster_membership_degraded"),
    (SelectorType::Exact, "envoy_cluster_membership_healthy"),
    (SelectorType::Contains, "error"),
    (SelectorType::Contains, "fail"),
    (SelectorType::Contains, "reset"),
    (SelectorType::Contains, "eject"),
    (SelectorType::Contains, "overflow"),
    (SelectorType::Contains, "cancelled"),
    (SelectorType::Contains, "max_duration_reached"),
    (SelectorType::Contains, "no_cluster"),
    (SelectorType::Contains, "no_route"),
    (SelectorType::Contains, "no_filter_chain"),
    (SelectorType::Contains, "reject"),
    (SelectorType::Contains, "denied"),
    (SelectorType::Contains, "days_until_first_cert_expiring"),
    (SelectorType::Prefix, "envoy_server"),
    (SelectorType::Prefix, "envoy_control_plane"),
    (SelectorType::Contains, "rbac"),
    (SelectorType::Contains, "cx_active"),
    (SelectorType::Contains, "cx_connect"),
    (SelectorType::Exact, "envoy_cluster_ssl_handshake"),
    (SelectorType::Exact, "envoy_cluster_membership_total"),
];

/// One selector, its regex compiled.
enum Matcher {
    Prefix(String),
    Exact(String),
    Contains(String),
    Regex(regex::Regex),
}

impl Matcher {
    fn new(kind: SelectorType, value: &str) -> Result<Matcher, regex::Error> {
        Ok(match kind {
            SelectorType::Prefix => Matcher::Prefix(value.to_string()),
            SelectorType::Exact => Matcher::Exact(value.to_string()),
            SelectorType::Contains => Matcher::Contains(value.to_string()),
            // Unanchored, as Go's regexp.MatchString.
            SelectorType::Regex => Matcher::Regex(regex::Regex::new(value)?),
        })
    }

    fn matches(&self, name: &str) -> bool {
        match self {
            Matcher::Prefix(p) => name.starts_with(p.as_str()),
            Matcher::Exact(e) => name == e,
            Matcher::Contains(c) => name.contains(c.as_str()),
            Matcher::Regex(r) => r.is_match(name),
        }
    }
}

/// Which of Envoy's metric families and series a scrape keeps.
pub struct Filter {
    profile: Vec<Matcher>,
    exclude: Vec<Matcher>,
    include: Vec<Matcher>,
    /// `Basic` is the broadest profile: drop Meridian's own clusters.
    internal_clusters: bool,
}

impl Filter {
    /// The filter of `profiles` (absent or no profile listed: `Basic`).
    pub fn new(profiles: Option<&Profiles>) -> Result<Filter, regex::Error> {
        let names: Vec<ProfileName> = profiles
            .and_then(|p| p.append_profiles.as_ref())
            .map(|l| l.iter().map(|p| p.name).collect())
            .filter(|l: &Vec<ProfileName>| !l.is_empty())
            .unwrap_or_else(|| vec![ProfileName::Basic]);
        // The broadest profile listed decides.
        let broadest = if names.contains(&ProfileName::All) {
            ProfileName::All
        } else if names.contains(&ProfileName::Basic) {
            ProfileName::Basic
        } else {
            ProfileName::None
        };
        let profile = match broadest {
            ProfileName::All => vec![Matcher::Prefix(String::new())],
            ProfileName::Basic => BASIC
                .iter()
                .map(|(kind, value)| Matcher::new(*kind, value))
                .collect::<Result<_, _>>()?,
            ProfileName::None => Vec::new(),
        };
        let compile = |list: Option<&Vec<Selector>>| -> Result<Vec<Matcher>, regex::Error> {
            list.into_iter()
                .flatten()
                .map(|s| Matcher::new(s.selector_type, &s.match_value))
                .collect()
        };
        Ok(Filter {
            profile,
            exclude: compile(profiles.and_then(|p| p.exclude.as_ref()))?,
            include: compile(profiles.and_then(|p| p.include.as_ref()))?,
            internal_clusters: broadest == ProfileName::Basic,
        })
    }

    /// Whether family `name` is kept: the profile, then `exclude`, then
    /// `include` (which wins).
    pub fn keeps(&self, name: &str) -> bool {
        if self.include.iter().any(|m| m.matches(name)) {
            return true;
        }
        self.profile.iter().any(|m| m.matches(name)) && !self.exclude.iter().any(|m| m.matches(name))
    }

    /// Whether the series `sample` is kept.
    fn keeps_series(&self, sample: &Sample<'_>) -> bool {
        !self.internal_clusters
            || !sample
                .labels
                .iter()
                .any(|(k, v)| *k == "envoy_cluster_name" && is_internal_cluster(v))
    }
}

/// Meridian's own clusters (collectors, the agent, the bootstrap's xDS
/// cluster): every one starts with `_`, as Kuma's internal clusters do.
fn is_internal_cluster(name: &str) -> bool {
    name.starts_with('_') || name == crate::bootstrap::XDS_CLUSTER
}

/// A sample line of the text format: `name{label="value",…} rest`.
pub(crate) struct Sample<'a> {
    pub(crate) name: &'a str,
    /// Each label's name and value as written (escapes kept).
    pub(crate) labels: Vec<(&'a str, &'a str)>,
    /// What follows the labels: the value and maybe a timestamp.
    pub(crate) rest: &'a str,
}

fn is_name(s: &str, colons: bool) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || (colons && c == ':'))
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || (colons && c == ':'))
}

/// `line` as a sample; `None` when it is not one (such lines are dropped).
pub(crate) fn parse_sample(line: &str) -> Option<Sample<'_>> {
    let end = line
        .find(|c: char| c == '{' || c.is_ascii_whitespace())
        .unwrap_or(line.len());
    let name = &line[..end];
    if !is_name(name, true) {
        return None;
    }
    let mut labels = Vec::new();
    let mut rest = &line[end..];
    if let Some(mut inner) = rest.strip_prefix('{') {
        loop {
            inner = inner.trim_start();
            if let Some(after) = inner.strip_prefix('}') {
                rest = after;
                break;
            }
            let (key, after) = inner.split_once('=')?;
            let key = key.trim();
            if !is_name(key, false) {
                return None;
            }
            let after = after.trim_start().strip_prefix('"')?;
            let mut escaped = false;
            let close = after.char_indices().find_map(|(i, c)| {
                let found = c == '"' && !escaped;
                escaped = c == '\\' && !escaped;
                found.then_some(i)
            })?;
            labels.push((key, &after[..close]));
            inner = after[close + 1..].trim_start();
            inner = inner.strip_prefix(',').unwrap_or(inner);
        }
    }
    if !rest.starts_with([' ', '\t']) || rest.trim().is_empty() {
        return None;
    }
    Some(Sample { name, labels, rest })
}

/// The family a sample of `name` belongs to, given the family whose `# TYPE`
/// or `# HELP` came last.
fn belongs_to(name: &str, family: Option<&str>) -> bool {
    let Some(family) = family else {
        return false;
    };
    name == family
        || name
            .strip_prefix(family)
            .is_some_and(|rest| matches!(rest, "_bucket" | "_sum" | "_count" | "_total" | "_created" | "_info"))
}

/// The value of label `key` in a sample line (escapes kept as written).
pub fn label_value<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    parse_sample(line)?
        .labels
        .into_iter()
        .find_map(|(k, v)| (k == key).then_some(v))
}

/// `sample` written back with `labels` added; labels it already has are
/// kept as they are.
fn with_labels(sample: &Sample<'_>, labels: &[(&str, &str)]) -> String {
    let mut all: Vec<String> = sample.labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    for (k, v) in labels {
        if !sample.labels.iter().any(|(have, _)| have == k) {
            all.push(format!("{k}=\"{}\"", escape(v)));
        }
    }
    if all.is_empty() {
        format!("{}{}", sample.name, sample.rest)
    } else {
        format!("{}{{{}}}{}", sample.name, all.join(","), sample.rest)
    }
}

/// A label value escaped for the text format.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Appends to `out` the families of `text` that `filter` keeps (all with
/// `None`), each series labelled with `labels`. Lines that are neither
/// comments nor well-formed samples are dropped.
pub fn render(text: &str, filter: Option<&Filter>, labels: &[(&str, &str)], out: &mut String) {
    // The family of the last `# TYPE`/`# HELP`, and whether it is kept.
    let mut family: Option<&str> = None;
    let mut kept = true;
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() || line.starts_with("# EOF") {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let mut words = comment.split_whitespace();
            if let (Some("TYPE" | "HELP"), Some(name)) = (words.next(), words.next()) {
                if family != Some(name) {
                    family = Some(name);
                    kept = filter.is_none_or(|f| f.keeps(name));
                }
                if kept {
                    out.push_str(line);
                    out.push('\n');
                }
            }
            continue;
        }
        let Some(sample) = parse_sample(line) else {
            continue;
        };
        if !belongs_to(sample.name, family) {
            family = None;
            kept = filter.is_none_or(|f| f.keeps(sample.name));
        }
        if kept && filter.is_none_or(|f| f.keeps_series(&sample)) {
            out.push_str(&with_labels(&sample, labels));
            out.push('\n');
        }
    }
}

/// What the agent needs to answer scrapes.
struct Scraper {
    /// Envoy's admin address.
    admin: SocketAddr,
}

/// GET `path` over `stream` (HTTP/1.1, `host` as the Host header): the
/// status and at most `limit` bytes of body.
pub(crate) async fn http_get<S>(
    stream: S,
    host: &str,
    path: &str,
    limit: usize,
) -> anyhow::Result<(hyper::StatusCode, hyper::body::Bytes)>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .context("HTTP handshake")?;
    let driver = tokio::spawn(connection);
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, host)
        .body(Empty::<hyper::body::Bytes>::new())
        .context("request")?;
    let response = sender.send_request(request).await.context("sending the request")?;
    let status = response.status();
    let body = Limited::new(response.into_body(), limit)
        .collect()
        .await
        .map_err(|e| anyhow::anyhow!("reading the body: {e}"))?
        .to_bytes();
    driver.abort();
    Ok((status, body))
}

/// GET `http://<address>:<port><path>`: the body of a 200 answer.
async fn get(address: &str, port: u16, path: &str) -> anyhow::Result<String> {
    let host = if address.contains(':') && !address.starts_with('[') {
        format!("[{address}]")
    } else {
        address.to_string()
    };
    let fetch = async {
        let stream = tokio::net::TcpStream::connect((address.trim_matches(['[', ']']), port))
            .await
            .context("connecting")?;
        let (status, body) = http_get(stream, &format!("{host}:{port}"), path, MAX_BODY).await?;
        anyhow::ensure!(status == hyper::StatusCode::OK, "answered {status}");
        String::from_utf8(body.to_vec()).context("the body is not UTF-8")
    };
    tokio::time::timeout(SCRAPE_TIMEOUT, fetch)
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {SCRAPE_TIMEOUT:?}"))?
}

/// The answer to one scrape described by `request`.
pub(crate) async fn scrape(admin: SocketAddr, request: &MetricsRequest) -> Result<String, (StatusCode, String)> {
    let filter = Filter::new(request.profiles.as_ref())
        .map_err(|e| (StatusCode::BAD_REQUEST, format!("a profile selector's regex: {e}")))?;
    let stats = if request.include_unused {
        "/stats/prometheus"
    } else {
        "/stats/prometheus?usedonly"
    };
    let admin_ip = admin.ip().to_string();
    let envoy = get(&admin_ip, admin.port(), stats);
    let apps = futures::future::join_all(
        request
            .applications
            .iter()
            .map(|a| async move { (a, get(&a.address, a.port, &a.path).await) }),
    );
    let (envoy, apps) = tokio::join!(envoy, apps);
    let envoy = envoy.map_err(|e| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("Envoy's admin at {admin}: {e:#}"),
        )
    })?;
    let labels = [
        ("mesh", request.mesh.as_str()),
        ("dataplane", request.dataplane.as_str()),
        ("service", request.service.as_str()),
    ];
    let mut out = String::with_capacity(envoy.len());
    render(&envoy, Some(&filter), &labels, &mut out);
    for (app, body) in apps {
        match body {
            Ok(text) => render(&text, None, &labels, &mut out),
            Err(e) => tracing::warn!(
                application = app.name.as_deref().unwrap_or(""),
                address = %app.address, port = app.port, path = %app.path,
                error = %format!("{e:#}"),
                "an application's metrics are left out of this scrape"
            ),
        }
    }
    Ok(out)
}

async fn serve_scrape(State(s): State<Arc<Scraper>>, headers: HeaderMap) -> Response {
    let request: MetricsRequest = match headers
        .get(METRICS_REQUEST_HEADER)
        .map(|v| serde_json::from_slice(v.as_bytes()))
    {
        Some(Ok(r)) => r,
        Some(Err(e)) => {
            return (StatusCode::BAD_REQUEST, format!("{METRICS_REQUEST_HEADER}: {e}")).into_response();
        }
        None => {
            return (
                StatusCode::BAD_REQUEST,
                format!("no {METRICS_REQUEST_HEADER} header: scrape the proxy's Prometheus listener"),
            )
                .into_response();
        }
    };
    match scrape(s.admin, &request).await {
        Ok(body) => ([(axum::http::header::CONTENT_TYPE, TEXT_FORMAT)], body).into_response(),
        Err((status, why)) => {
            tracing::warn!(%status, reason = %why, "a metrics scrape failed");
            (status, why).into_response()
        }
    }
}

/// Binds `socket` (0600; a stale socket file is replaced, anything else is
/// refused).
pub fn bind(socket: &Path) -> anyhow::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    match std::fs::symlink_metadata(socket) {
        Ok(m) if m.file_type().is_socket() => {
            std::fs::remove_file(socket).with_context(|| format!("removing the stale socket {}", socket.display()))?
        }
        Ok(_) => anyhow::bail!("{} exists and is not a socket: not replacing it", socket.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("checking {}", socket.display())),
    }
    let listener = tokio::net::UnixListener::bind(socket).with_context(|| format!("binding {}", socket.display()))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting {}", socket.display()))?;
    Ok(listener)
}

/// Serves MeshMetric scrapes on `listener` from Envoy's admin at `admin`.
pub async fn serve(listener: tokio::net::UnixListener, admin: SocketAddr) -> anyhow::Result<()> {
    let app = axum::Router::new()
        .route(METRICS_AGENT_PATH, axum::routing::get(serve_scrape))
        .with_state(Arc::new(Scraper { admin }));
    axum::serve(listener, app).await.context("serving metrics")
}

/// Removes the socket when the agent stops.
pub struct SocketCleanup(pub PathBuf, pub tokio::task::JoinHandle<()>);

impl Drop for SocketCleanup {
    fn drop(&mut self) {
        self.1.abort();
        let _ = std::fs::remove_file(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_xds::generate::observability::ScrapedApplication;
    use serde_json::json;

    fn filter(profiles: serde_json::Value) -> Filter {
        let p: Option<Profiles> = serde_json::from_value(profiles).unwrap();
        Filter::new(p.as_ref()).unwrap()
    }

    const ENVOY: &str = "# TYPE envoy_cluster_upstream_rq_total counter\n\
envoy_cluster_upstream_rq_total{envoy_cluster_name=\"backend\"} 7\n\
envoy_cluster_upstream_rq_total{envoy_cluster_name=\"_meridian:metrics:agent\"} 3\n\
envoy_cluster_upstream_rq_total{envoy_cluster_name=\"meridian_xds\"} 3\n\
# TYPE envoy_cluster_lb_zone_routing_all_directly counter\n\
envoy_cluster_lb_zone_routing_all_directly{envoy_cluster_name=\"backend\"} 0\n\
# TYPE envoy_server_uptime gauge\n\
envoy_server_uptime 12\n\
# TYPE envoy_cluster_upstream_cx_connect_ms histogram\n\
envoy_cluster_upstream_cx_connect_ms_bucket{envoy_cluster_name=\"backend\",le=\"0.5\"} 1\n\
envoy_cluster_upstream_cx_connect_ms_bucket{envoy_cluster_name=\"backend\",le=\"+Inf\"} 2\n\
envoy_cluster_upstream_cx_connect_ms_sum{envoy_cluster_name=\"backend\"} 3.5\n\
envoy_cluster_upstream_cx_connect_ms_count{envoy_cluster_name=\"backend\"} 2\n";

    fn names(text: &str) -> Vec<String> {
        let mut v: Vec<String> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| parse_sample(l).unwrap().name.to_string())
            .collect();
        v.dedup();
        v
    }

    #[test]
    fn basic_is_the_default_and_drops_meridians_own_clusters() {
        let mut out = String::new();
        render(ENVOY, Some(&filter(json!(null))), &[], &mut out);
        assert_eq!(
            names(&out),
            [
                "envoy_cluster_upstream_rq_total",
                "envoy_server_uptime",
                "envoy_cluster_upstream_cx_connect_ms_bucket",
                "envoy_cluster_upstream_cx_connect_ms_sum",
                "envoy_cluster_upstream_cx_connect_ms_count",
            ]
        );
        assert!(!out.contains("_meridian:") && !out.contains("meridian_xds"), "{out}");
        assert!(
            out.contains("# TYPE envoy_cluster_upstream_cx_connect_ms histogram"),
            "{out}"
        );
    }

    #[test]
    fn include_wins_over_exclude_which_wins_over_the_profile() {
        let f = filter(json!({"appendProfiles": [{"name": "All"}],
            "exclude": [{"type": "Prefix", "match": "envoy_cluster_"}],
            "include": [{"type": "Regex", "match": "rq_total$"}]}));
        let mut out = String::new();
        render(ENVOY, Some(&f), &[], &mut out);
        assert_eq!(names(&out), ["envoy_cluster_upstream_rq_total", "envoy_server_uptime"]);
        assert!(
            out.contains("_meridian:metrics:agent"),
            "All keeps internal clusters: {out}"
        );
        let none = filter(json!({"appendProfiles": [{"name": "None"}],
            "include": [{"type": "Exact", "match": "envoy_server_uptime"}]}));
        let mut out = String::new();
        render(ENVOY, Some(&none), &[], &mut out);
        assert_eq!(names(&out), ["envoy_server_uptime"]);
        // The broadest listed profile decides.
        let both = filter(json!({"appendProfiles": [{"name": "None"}, {"name": "Basic"}]}));
        assert!(both.keeps("envoy_server_uptime") && !both.keeps("envoy_cluster_lb_zone_routing_all_directly"));
    }

    #[test]
    fn labels_are_added_to_every_series_and_kept_where_present() {
        let labels = [("mesh", "default"), ("dataplane", "web-1"), ("service", "we\"b")];
        let add = |line: &str, labels: &[(&str, &str)]| with_labels(&parse_sample(line).unwrap(), labels);
        assert_eq!(
            add("up 1", &labels),
            "up{mesh=\"default\",dataplane=\"web-1\",service=\"we\\\"b\"} 1"
        );
        assert_eq!(
            add("x{a=\"}{,\\\"\",mesh=\"other\",} 2 1700000000", &labels),
            "x{a=\"}{,\\\"\",mesh=\"other\",dataplane=\"web-1\",service=\"we\\\"b\"} 2 1700000000"
        );
        assert_eq!(add("x{} 2", &labels[..1]), "x{mesh=\"default\"} 2");
        assert_eq!(label_value("x{a=\"1\", b=\"two\"} 3", "b"), Some("two"));
        for broken in [
            "x{a=\"1\" 2",
            "x{\"a\":1} 2",
            "!x 1",
            "x{a=\"1\"}",
            "x{a=1} 2",
            "x{a=\"1\"}2",
        ] {
            assert!(parse_sample(broken).is_none(), "{broken:?} is no sample");
        }
    }

    #[test]
    fn application_text_passes_unfiltered_with_untyped_samples() {
        let app = "# HELP app_requests Requests.\n# TYPE app_requests counter\napp_requests_total 4\nplain_gauge 1\n\n# EOF\n";
        let mut out = String::new();
        render(app, None, &[("mesh", "m")], &mut out);
        assert_eq!(
            out,
            "# HELP app_requests Requests.\n# TYPE app_requests counter\napp_requests_total{mesh=\"m\"} 4\nplain_gauge{mesh=\"m\"} 1\n"
        );
    }

    #[test]
    fn a_bad_regex_is_an_error() {
        let p: Profiles = serde_json::from_value(json!({"include": [{"type": "Regex", "match": "("}]})).unwrap();
        assert!(Filter::new(Some(&p)).is_err());
    }

    #[tokio::test]
    async fn scrapes_envoy_and_applications_through_the_socket() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // Envoy's admin and one application: plain HTTP servers on loopback.
        async fn text_server(body: &'static str) -> SocketAddr {
            let app = axum::Router::new().fallback(move || async move { body });
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let a = l.local_addr().unwrap();
            tokio::spawn(async move { axum::serve(l, app).await });
            a
        }
        let admin = text_server(ENVOY).await;
        let app = text_server("# TYPE app_up gauge\napp_up 1\n").await;
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("mm.sock");
        let listener = bind(&socket).unwrap();
        tokio::spawn(serve(listener, admin));
        let request = MetricsRequest {
            include_unused: false,
            profiles: None,
            applications: vec![
                ScrapedApplication {
                    name: Some("app".into()),
                    address: "127.0.0.1".into(),
                    port: app.port(),
                    path: "/metrics".into(),
                },
                // Nobody listens here: left out, the scrape still answers.
                ScrapedApplication {
                    name: None,
                    address: "127.0.0.1".into(),
                    port: 1,
                    path: "/metrics".into(),
                },
            ],
            mesh: "default".into(),
            dataplane: "web-1".into(),
            service: "web".into(),
        };
        let header = serde_json::to_string(&request).unwrap();
        let mut conn = tokio::net::UnixStream::connect(&socket).await.unwrap();
        conn.write_all(
            format!("GET /meshmetric HTTP/1.1\r\nHost: x\r\n{METRICS_REQUEST_HEADER}: {header}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
        let mut answer = String::new();
        conn.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(
            answer.contains("envoy_server_uptime{mesh=\"default\",dataplane=\"web-1\",service=\"web\"} 12"),
            "{answer}"
        );
        assert!(
            answer.contains("app_up{mesh=\"default\",dataplane=\"web-1\",service=\"web\"} 1"),
            "{answer}"
        );
        assert!(
            !answer.contains("lb_zone_routing"),
            "Basic filtered Envoy's metrics: {answer}"
        );
        // Without the header: refused, saying why.
        let mut conn = tokio::net::UnixStream::connect(&socket).await.unwrap();
        conn.write_all(b"GET /meshmetric HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        conn.read_to_string(&mut answer).await.unwrap();
        assert!(
            answer.starts_with("HTTP/1.1 400") && answer.contains("no x-meridian-meshmetric header"),
            "{answer}"
        );
    }
}
