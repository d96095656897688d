//! `Mesh.logging`, `Mesh.tracing` and `Mesh.metrics`: Kuma's mesh-wide
//! observability backends, validated as Kuma 2.7's mesh validator does
//! (`pkg/core/resources/apis/mesh/mesh_validator.go`): unique non-empty
//! backend names, a default or enabled backend that exists, known types,
//! and each type's `conf` (violations under `backends[i].config`, as Kuma
//! names them). Each default (or enabled) backend is applied as its policy
//! equivalent would be (`as_access_log`, `as_mesh_trace`, `as_mesh_metric`;
//! docs/observability.md): Kuma needs a TrafficLog or TrafficTrace naming
//! the backend, which Meridian does not accept.

use std::collections::HashSet;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Causes, FieldPath};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Logging {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_backend: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<LoggingBackend>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LoggingBackend {
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    #[serde(default, rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conf: Option<Value>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Tracing {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_backend: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<TracingBackend>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TracingBackend {
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampling: Option<f64>,
    #[serde(default, rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conf: Option<Value>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Metrics {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled_backend: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<MetricsBackend>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MetricsBackend {
    #[serde(default)]
    pub name: String,
    #[serde(default, rename = "type")]
    pub kind: String,
    /// Prometheus settings; Kuma's validator does not look inside.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conf: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct FileConf {
    #[serde(default)]
    path: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct TcpConf {
    #[serde(default)]
    address: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ZipkinConf {
    #[serde(default)]
    url: String,
    #[serde(default, rename = "traceId128bit")]
    trace_id_128bit: Option<bool>,
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    shared_span_context: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct DatadogConf {
    #[serde(default)]
    address: String,
    #[serde(default)]
    port: Option<i64>,
    #[serde(default)]
    split_service: Option<bool>,
}

/// `conf` as `T`, or a violation at `at` that says why not (Kuma: "could
/// not parse config").
fn conf<T: DeserializeOwned>(conf: Option<&Value>, at: &FieldPath, causes: &mut Causes) -> Option<T> {
    let value = conf.cloned().unwrap_or_else(|| Value::Object(Default::default()));
    match serde_json::from_value(value) {
        Ok(c) => Some(c),
        Err(e) => {
            causes.add(at, format!("could not parse config: {e}"));
            None
        }
    }
}

/// Names must be unique (Kuma: `"x" name is already used for another
/// backend`); `selected` (the default or enabled backend) must be one.
fn names<'a>(
    names: impl Iterator<Item = &'a str>,
    selected: Option<&str>,
    path: &FieldPath,
    selected_field: &str,
    selected_message: &str,
    causes: &mut Causes,
) {
    let mut used = HashSet::new();
    for (i, name) in names.enumerate() {
        if !used.insert(name) {
            causes.add(
                &path.field("backends").index(i).field("name"),
                format!("{name:?} name is already used for another backend"),
            );
        }
    }
    if let Some(s) = selected.filter(|s| !s.is_empty()) {
        if !used.contains(s) {
            causes.add(&path.field(selected_field), selected_message);
        }
    }
}

impl Logging {
    pub fn validate(&self, path: &FieldPath, causes: &mut Causes) {
        for (i, b) in self.backends.iter().enumerate() {
            let bp = path.field("backends").index(i);
            if b.name.is_empty() {
                causes.add(&bp.field("name"), "cannot be empty");
            }
            let cp = bp.field("config");
            match b.kind.as_str() {
                "file" => {
                    if let Some(c) = conf::<FileConf>(b.conf.as_ref(), &cp, causes) {
                        if c.path.is_empty() {
                            causes.add(&cp.field("path"), "cannot be empty");
                        }
                    }
                }
                "tcp" => {
                    if let Some(c) = conf::<TcpConf>(b.conf.as_ref(), &cp, causes) {
                        if c.address.is_empty() {
                            causes.add(&cp.field("address"), "cannot be empty");
                        } else if !is_host_port(&c.address) {
                            causes.add(&cp.field("address"), "has to be in format of HOST:PORT");
                        }
                    }
                }
                _ => causes.add(
                    &bp.field("type"),
                    "unknown backend type. Available backends: \"tcp\", \"file\"",
                ),
            }
        }
        names(
            self.backends.iter().map(|b| b.name.as_str()),
            self.default_backend.as_deref(),
            path,
            "defaultBackend",
            "has to be set to one of the logging backend in mesh",
            causes,
        );
    }
}

impl Tracing {
    pub fn validate(&self, path: &FieldPath, causes: &mut Causes) {
        for (i, b) in self.backends.iter().enumerate() {
            let bp = path.field("backends").index(i);
            if b.name.is_empty() {
                causes.add(&bp.field("name"), "cannot be empty");
            }
            if b.sampling.is_some_and(|s| !(0.0..=100.0).contains(&s)) {
                causes.add(&bp.field("sampling"), "has to be in [0.0 - 100.0] range");
            }
            let cp = bp.field("config");
            match b.kind.as_str() {
                "zipkin" => {
                    if let Some(c) = conf::<ZipkinConf>(b.conf.as_ref(), &cp, causes) {
                        if !matches!(c.api_version.as_str(), "" | "httpJsonV1" | "httpJson" | "httpProto") {
                            causes.add(
                                &cp.field("apiVersion"),
                                "has invalid value. Allowed values: httpJsonV1, httpJson, httpProto",
                            );
                        }
                        if c.url.is_empty() {
                            causes.add(&cp.field("url"), "cannot be empty");
                        } else {
                            match url_port(&c.url) {
                                None => causes.add(&cp.field("url"), "invalid URL"),
                                Some(false) => causes.add(&cp.field("url"), "port has to be explicitly specified"),
                                Some(true) => {}
                            }
                        }
                    }
                }
                "datadog" => {
                    if let Some(c) = conf::<DatadogConf>(b.conf.as_ref(), &cp, causes) {
                        if c.address.is_empty() {
                            causes.add(&cp.field("address"), "cannot be empty");
                        }
                        if !c.port.is_some_and(|p| (1..=65535).contains(&p)) {
                            causes.add(&cp.field("port"), "must be a number in range 1-65535");
                        }
                    }
                }
                _ => causes.add(
                    &bp.field("type"),
                    "unknown backend type. Available backends: \"zipkin\", \"datadog\"",
                ),
            }
        }
        names(
            self.backends.iter().map(|b| b.name.as_str()),
            self.default_backend.as_deref(),
            path,
            "defaultBackend",
            "has to be set to one of the tracing backend in mesh",
            causes,
        );
    }
}

impl Metrics {
    pub fn validate(&self, path: &FieldPath, causes: &mut Causes) {
        for (i, b) in self.backends.iter().enumerate() {
            let bp = path.field("backends").index(i);
            if b.kind != "prometheus" {
                causes.add(
                    &bp.field("type"),
                    "unknown backend type. Available backends: \"prometheus\"",
                );
            }
            if b.conf.as_ref().is_some_and(|c| !c.is_object()) {
                causes.add(&bp.field("conf"), "must be an object");
            }
            // Meridian applies it as a regex of Envoy's metric names.
            if let Some(regex) = b.conf.as_ref().and_then(|c| c.pointer("/envoy/filterRegex")) {
                let at = bp.field("conf").field("envoy").field("filterRegex");
                match regex.as_str() {
                    None => causes.add(&at, "must be a string"),
                    Some("") => {}
                    Some(r) => crate::policy::common::check_regex(r, &at, causes),
                }
            }
        }
        names(
            self.backends.iter().map(|b| b.name.as_str()),
            self.enabled_backend.as_deref(),
            path,
            "enabledBackend",
            "has to be set to one of the backends in the mesh",
            causes,
        );
    }
}

/// `HOST:PORT` with both parts present (`[v6]:port` too), as Go's
/// `net.SplitHostPort` with non-empty parts.
fn is_host_port(s: &str) -> bool {
    let (host, port) = match s.strip_prefix('[') {
        Some(rest) => match rest.split_once("]:") {
            Some((h, p)) => (h, p),
            None => return false,
        },
        None => match s.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') => (h, p),
            _ => return false,
        },
    };
    !host.is_empty() && !port.is_empty()
}

/// `Some(has_port)` for an absolute URL (`scheme://host[:port][/path]`),
/// `None` when it is not one.
fn url_port(url: &str) -> Option<bool> {
    let parts = crate::policy::common::split_url(url)?;
    parts.scheme?;
    match parts.port {
        None | Some("") => Some(false),
        Some(p) if p.chars().all(|c| c.is_ascii_digit()) => Some(true),
        Some(_) => None,
    }
}

impl Logging {
    /// The default backend as a MeshAccessLog backend (its `format` as a
    /// plain format, with Kuma's placeholders); `None` without a default
    /// backend, or when it does not decode (refused at the write).
    pub fn as_access_log(&self) -> Option<crate::policy::meshaccesslog::Backend> {
        use crate::policy::meshaccesslog::{Backend, BackendType, FileBackend, Format, FormatType, TcpBackend};
        let name = self.default_backend.as_deref().filter(|n| !n.is_empty())?;
        let backend = self.backends.iter().find(|b| b.name == name)?;
        let format = backend.format.as_ref().map(|f| Format {
            format_type: FormatType::Plain,
            plain: Some(f.clone()),
            json: None,
            omit_empty_values: None,
        });
        let value = backend
            .conf
            .clone()
            .unwrap_or_else(|| Value::Object(Default::default()));
        match backend.kind.as_str() {
            "file" => {
                let c: FileConf = serde_json::from_value(value).ok()?;
                Some(Backend {
                    backend_type: BackendType::File,
                    tcp: None,
                    file: Some(FileBackend { format, path: c.path }),
                    open_telemetry: None,
                })
            }
            "tcp" => {
                let c: TcpConf = serde_json::from_value(value).ok()?;
                Some(Backend {
                    backend_type: BackendType::Tcp,
                    tcp: Some(TcpBackend {
                        format,
                        address: c.address,
                    }),
                    file: None,
                    open_telemetry: None,
                })
            }
            _ => None,
        }
    }
}

impl Tracing {
    /// The default backend as MeshTrace configuration: its `sampling` (100
    /// when absent, as in Kuma) as the overall sampling, Zipkin's URL and
    /// options as they are (`httpJsonV1`, which Envoy no longer has, as
    /// `httpJson`: reported by `unapplied`), Datadog's address and port as
    /// the agent's URL. `None` without a default backend, or when it does
    /// not decode (refused at the write).
    pub fn as_mesh_trace(&self) -> Option<crate::policy::meshtrace::Conf> {
        use crate::policy::common::IntOrString;
        use crate::policy::meshtrace::{Backend, BackendType, Conf, Datadog, Sampling, Zipkin, ZipkinApiVersion};
        let name = self.default_backend.as_deref().filter(|n| !n.is_empty())?;
        let source = self.backends.iter().find(|b| b.name == name)?;
        let value = source.conf.clone().unwrap_or_else(|| Value::Object(Default::default()));
        let backend = match source.kind.as_str() {
            "zipkin" => {
                let c: ZipkinConf = serde_json::from_value(value).ok()?;
                Backend {
                    backend_type: BackendType::Zipkin,
                    zipkin: Some(Zipkin {
                        url: c.url,
                        trace_id_128bit: c.trace_id_128bit,
                        api_version: Some(match c.api_version.as_str() {
                            "httpProto" => ZipkinApiVersion::HttpProto,
                            _ => ZipkinApiVersion::HttpJson,
                        }),
                        shared_span_context: c.shared_span_context,
                    }),
                    datadog: None,
                    open_telemetry: None,
                }
            }
            "datadog" => {
                let c: DatadogConf = serde_json::from_value(value).ok()?;
                let host = if c.address.contains(':') {
                    format!("[{}]", c.address)
                } else {
                    c.address
                };
                Backend {
                    backend_type: BackendType::Datadog,
                    zipkin: None,
                    datadog: Some(Datadog {
                        url: format!("http://{host}:{}", c.port?),
                        split_service: c.split_service,
                    }),
                    open_telemetry: None,
                }
            }
            _ => return None,
        };
        let sampling = source.sampling.unwrap_or(100.0);
        let overall = if sampling.fract() == 0.0 {
            IntOrString::Int(sampling as i64)
        } else {
            IntOrString::Str(sampling.to_string())
        };
        Some(Conf {
            backends: Some(vec![backend]),
            sampling: Some(Sampling {
                overall: Some(overall),
                client: None,
                random: None,
            }),
            tags: None,
        })
    }
}

impl Metrics {
    /// The enabled Prometheus backend as MeshMetric configuration (what
    /// Kuma generates for it: a listener on `conf.port`, 5670, serving
    /// `conf.path`, `/metrics`, with every metric unless
    /// `conf.envoy.usedOnly`, only those `conf.envoy.filterRegex` matches
    /// when set, and the `conf.aggregate` applications' metrics); `None`
    /// without one, or when its port or path is not usable (reported by
    /// `unapplied`).
    pub fn as_mesh_metric(&self) -> Option<crate::policy::meshmetric::Conf> {
        use crate::policy::meshmetric::{
            Application, Backend, BackendType, Conf, Profile, ProfileName, Profiles, Prometheus, PrometheusTls,
            Selector, SelectorType, Sidecar, TlsMode,
        };
        let name = self.enabled_backend.as_deref()?;
        let backend = self
            .backends
            .iter()
            .find(|b| b.name == name && b.kind == "prometheus")?;
        let conf = backend.conf.clone().unwrap_or(Value::Null);
        let port = match conf.get("port") {
            None => 5670,
            Some(p) => p.as_i64().filter(|p| (1..=65535).contains(p))?,
        };
        let path = match conf.get("path") {
            None => "/metrics".to_string(),
            Some(p) => p.as_str().filter(|p| p.starts_with('/'))?.to_string(),
        };
        let used_only = conf
            .pointer("/envoy/usedOnly")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        // `envoy.filterRegex` keeps only Envoy's metrics it matches (Kuma
        // hands it to Envoy's admin as `filter`); without it, every one.
        let profiles = match conf.pointer("/envoy/filterRegex").and_then(Value::as_str) {
            Some(regex) if !regex.is_empty() => Profiles {
                append_profiles: Some(vec![Profile {
                    name: ProfileName::None,
                }]),
                exclude: None,
                include: Some(vec![Selector {
                    selector_type: SelectorType::Regex,
                    match_value: regex.to_string(),
                }]),
            },
            _ => Profiles {
                append_profiles: Some(vec![Profile { name: ProfileName::All }]),
                exclude: None,
                include: None,
            },
        };
        // `aggregate`: the applications whose metrics are merged in, unless
        // `enabled: false`.
        let applications: Vec<Application> = conf
            .get("aggregate")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|a| a.get("enabled").and_then(Value::as_bool) != Some(false))
            .filter_map(|a| {
                Some(Application {
                    name: a.get("name").and_then(Value::as_str).map(str::to_string),
                    path: a.get("path").and_then(Value::as_str).map(str::to_string),
                    address: a.get("address").and_then(Value::as_str).map(str::to_string),
                    port: a
                        .get("port")
                        .and_then(Value::as_i64)
                        .filter(|p| (1..=65535).contains(p))?,
                })
            })
            .collect();
        Some(Conf {
            // MeshMetric's default profile (Basic) is not what Mesh.metrics
            // serves.
            sidecar: Some(Sidecar {
                profiles: Some(profiles),
                include_unused: Some(!used_only),
            }),
            applications: (!applications.is_empty()).then_some(applications),
            backends: Some(vec![Backend {
                backend_type: BackendType::Prometheus,
                prometheus: Some(Prometheus {
                    client_id: Some(name.to_string()),
                    port: Some(port),
                    path: Some(path),
                    // `activeMTLSBackend` is served in plaintext (reported).
                    tls: (conf.pointer("/tls/mode").and_then(Value::as_str) == Some("providedTLS")).then_some(
                        PrometheusTls {
                            mode: Some(TlsMode::ProvidedTls),
                        },
                    ),
                }),
                open_telemetry: None,
            }]),
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_enabled_prometheus_backend_becomes_mesh_metric_configuration() {
        let metrics = |conf: serde_json::Value| -> Metrics {
            serde_json::from_value(serde_json::json!({"enabledBackend": "prom", "backends": [
                {"name": "other", "type": "prometheus", "conf": {"port": 1111}},
                {"name": "prom", "type": "prometheus", "conf": conf}]}))
            .unwrap()
        };
        let c = metrics(serde_json::json!({"port": 5671, "path": "/stats", "envoy": {"usedOnly": true}}))
            .as_mesh_metric()
            .unwrap();
        let p = c.backends.as_ref().unwrap()[0].prometheus.clone().unwrap();
        assert_eq!(
            (p.port, p.path.as_deref(), p.client_id.as_deref()),
            (Some(5671), Some("/stats"), Some("prom"))
        );
        assert_eq!(c.sidecar.unwrap().include_unused, Some(false));
        let f = metrics(serde_json::json!({"envoy": {"filterRegex": "http2_.*"}, "aggregate": [
            {"name": "app", "port": 8080, "path": "/stats"}, {"name": "off", "port": 8081, "enabled": false}]}))
        .as_mesh_metric()
        .unwrap();
        let profiles = f.sidecar.unwrap().profiles.unwrap();
        assert_eq!(
            profiles.append_profiles.unwrap()[0].name,
            crate::policy::meshmetric::ProfileName::None
        );
        assert_eq!(profiles.include.unwrap()[0].match_value, "http2_.*");
        let apps = f.applications.unwrap();
        assert_eq!(apps.len(), 1, "a disabled application is not scraped");
        assert_eq!((apps[0].port, apps[0].path.as_deref()), (8080, Some("/stats")));
        let d = metrics(serde_json::json!({})).as_mesh_metric().unwrap();
        let p = d.backends.as_ref().unwrap()[0].prometheus.clone().unwrap();
        assert_eq!((p.port, p.path.as_deref()), (Some(5670), Some("/metrics")));
        assert_eq!(
            d.sidecar.unwrap().include_unused,
            Some(true),
            "Kuma serves every metric by default"
        );
        assert!(metrics(serde_json::json!({"port": 70000})).as_mesh_metric().is_none());
        assert!(metrics(serde_json::json!({"path": "metrics"}))
            .as_mesh_metric()
            .is_none());
        let none: Metrics =
            serde_json::from_value(serde_json::json!({"backends": [{"name": "p", "type": "prometheus"}]})).unwrap();
        assert!(none.as_mesh_metric().is_none(), "no enabled backend, no listener");
    }

    use super::*;
    use crate::mesh::Mesh;
    use crate::spec::check;
    use serde_json::json;

    fn violations(mesh: Value) -> Vec<(String, String)> {
        match check::<Mesh>(mesh, &FieldPath::root()) {
            Ok(_) => Vec::new(),
            Err(e) => e.causes.into_iter().map(|c| (c.field, c.message)).collect(),
        }
    }

    #[test]
    fn kumas_documented_backends_are_accepted() {
        let mesh = json!({
            "logging": {"defaultBackend": "file", "backends": [
                {"name": "logstash", "format": "{\"start_time\": \"%START_TIME%\"}", "type": "tcp",
                 "conf": {"address": "127.0.0.1:5000"}},
                {"name": "file", "type": "file", "conf": {"path": "/tmp/access.log"}}]},
            "tracing": {"defaultBackend": "jaeger-collector", "backends": [
                {"name": "jaeger-collector", "type": "zipkin", "sampling": 100.0,
                 "conf": {"url": "http://jaeger-collector:9411/api/v2/spans", "apiVersion": "httpJson"}},
                {"name": "datadog-collector", "type": "datadog", "sampling": 50,
                 "conf": {"address": "127.0.0.1", "port": 8126, "splitService": true}}]},
            "metrics": {"enabledBackend": "prometheus-1", "backends": [
                {"name": "prometheus-1", "type": "prometheus",
                 "conf": {"port": 5670, "path": "/metrics", "skipMTLS": false,
                          "tags": {"kuma.io/service": "dataplane-metrics"}}}]},
        });
        assert_eq!(violations(mesh), Vec::<(String, String)>::new());
    }

    #[test]
    fn each_rule_of_kumas_validator_names_its_field() {
        let cases = [
            (
                json!({"metrics": {"backends": [{"name": "p", "type": "prometheus", "conf": {"envoy": {"filterRegex": "("}}}]}}),
                "metrics.backends[0].conf.envoy.filterRegex",
                "invalid regular expression \"(\": error: unclosed group",
            ),
            (
                json!({"logging": {"defaultBackend": "nope", "backends": [{"name": "f", "type": "file", "conf": {"path": "/x"}}]}}),
                "logging.defaultBackend",
                "has to be set to one of the logging backend in mesh",
            ),
            (
                json!({"logging": {"backends": [{"name": "f", "type": "file", "conf": {}}]}}),
                "logging.backends[0].config.path",
                "cannot be empty",
            ),
            (
                json!({"logging": {"backends": [{"name": "t", "type": "tcp", "conf": {"address": "nohost"}}]}}),
                "logging.backends[0].config.address",
                "has to be in format of HOST:PORT",
            ),
            (
                json!({"logging": {"backends": [{"name": "t", "type": "syslog", "conf": {}}]}}),
                "logging.backends[0].type",
                "unknown backend type. Available backends: \"tcp\", \"file\"",
            ),
            (
                json!({"logging": {"backends": [{"name": "a", "type": "file", "conf": {"path": "/a"}},
                                                 {"name": "a", "type": "file", "conf": {"path": "/b"}}]}}),
                "logging.backends[1].name",
                "\"a\" name is already used for another backend",
            ),
            (
                json!({"tracing": {"backends": [{"name": "z", "type": "zipkin", "sampling": 101,
                    "conf": {"url": "http://z:9411/api/v2/spans"}}]}}),
                "tracing.backends[0].sampling",
                "has to be in [0.0 - 100.0] range",
            ),
            (
                json!({"tracing": {"backends": [{"name": "z", "type": "zipkin", "conf": {"url": "http://zipkin/api/v2/spans"}}]}}),
                "tracing.backends[0].config.url",
                "port has to be explicitly specified",
            ),
            (
                json!({"tracing": {"backends": [{"name": "z", "type": "zipkin", "conf": {"url": "not a url"}}]}}),
                "tracing.backends[0].config.url",
                "invalid URL",
            ),
            (
                json!({"tracing": {"backends": [{"name": "z", "type": "zipkin",
                    "conf": {"url": "http://z:9411/", "apiVersion": "grpc"}}]}}),
                "tracing.backends[0].config.apiVersion",
                "has invalid value. Allowed values: httpJsonV1, httpJson, httpProto",
            ),
            (
                json!({"tracing": {"backends": [{"name": "d", "type": "datadog", "conf": {"address": "dd", "port": 0}}]}}),
                "tracing.backends[0].config.port",
                "must be a number in range 1-65535",
            ),
            (
                json!({"metrics": {"enabledBackend": "p", "backends": [{"name": "q", "type": "prometheus"}]}}),
                "metrics.enabledBackend",
                "has to be set to one of the backends in the mesh",
            ),
            (
                json!({"metrics": {"backends": [{"name": "q", "type": "statsd"}]}}),
                "metrics.backends[0].type",
                "unknown backend type. Available backends: \"prometheus\"",
            ),
        ];
        for (mesh, field, message) in cases {
            let got = violations(mesh.clone());
            assert!(
                got.iter().any(|(f, m)| f == field && m == message),
                "{mesh}: expected {field}: {message}, got {got:?}"
            );
        }
        let unknown = violations(json!({"logging": {"backends": [{"name": "f", "type": "file",
            "conf": {"path": "/x", "rotate": true}}]}}));
        assert_eq!(unknown.len(), 1, "{unknown:?}");
        assert_eq!(unknown[0].0, "logging.backends[0].config");
        assert!(unknown[0].1.starts_with("could not parse config"), "{unknown:?}");
    }

    #[test]
    fn urls_and_addresses() {
        assert_eq!(url_port("http://a:9411/x"), Some(true));
        assert_eq!(url_port("https://[::1]:8080"), Some(true));
        assert_eq!(url_port("http://a/x"), Some(false));
        assert_eq!(url_port("a:9411"), None);
        assert_eq!(url_port("http://a:port/"), None);
        assert!(is_host_port("127.0.0.1:5000"));
        assert!(is_host_port("[::1]:5000"));
        assert!(!is_host_port(":5000"));
        assert!(!is_host_port("host:"));
        assert!(!is_host_port("host"));
    }
}
