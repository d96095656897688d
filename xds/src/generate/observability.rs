//! Observability in an Envoy sidecar's configuration: MeshAccessLog's
//! access logs and MeshTrace's tracing on the HTTP connection managers and
//! TCP proxies of its listeners, MeshMetric's Prometheus listener, and the
//! clusters of the collectors they send to.
//!
//! # Access logs (MeshAccessLog)
//!
//! Each backend of the effective `from` (inbound) or `to` (outbound)
//! configuration becomes one Envoy access logger on the listener's HTTP
//! connection manager, or on its TCP proxy for TCP traffic:
//!
//! - `file`: `envoy.access_loggers.file` writing to the path;
//! - `openTelemetry`: `envoy.access_loggers.open_telemetry`, over gRPC to a
//!   cluster of the collector's `host:port` (HTTP/2);
//! - `tcp`: `envoy.access_loggers.file` writing JSON records
//!   `{"address": "<host:port>", "message": <line or object>}` to the
//!   dataplane's named pipe ([`access_log_pipe`]); meridian-dp reads it and
//!   sends each message to its address over TCP, one line per record.
//!
//! Formats are Envoy's command operators, plus Meridian's placeholders for
//! what only the control plane knows, replaced when the configuration is
//! generated (the same names Kuma uses, so Kuma formats carry over):
//! `%KUMA_MESH%`, `%KUMA_SOURCE_SERVICE%`, `%KUMA_DESTINATION_SERVICE%`,
//! `%KUMA_SOURCE_ADDRESS%`, `%KUMA_SOURCE_ADDRESS_WITHOUT_PORT%` and
//! `%KUMA_TRAFFIC_DIRECTION%` (see [`Traffic`]). Without a format, the
//! default line of [`DEFAULT_HTTP_FORMAT`] or [`DEFAULT_TCP_FORMAT`] is
//! written. Plain lines get a newline; an inbound logs its own service as
//! the destination (Kuma 2.7 logs the proxy's first service on every
//! inbound).
//!
//! # Tracing (MeshTrace)
//!
//! The proxy-wide configuration sets `tracing` on every HTTP connection
//! manager of the sidecar (inbound and outbound): the provider (Zipkin,
//! Datadog, OpenTelemetry) with a cluster of its collector, the sampling
//! percentages and the custom tags. Envoy's defaults (100 % everywhere)
//! hold where the policy says nothing.
//!
//! # Metrics (MeshMetric)
//!
//! Each Prometheus backend gets a listener on the dataplane's address and
//! the backend's port (5670) whose path (`/metrics`) goes to `meridian-dp`'s
//! metrics endpoint ([`METRICS_AGENT_CLUSTER`], a Unix socket), with what to
//! serve in a request header ([`MetricsRequest`]: `includeUnused`, the
//! profiles with include/exclude, the applications to scrape). The agent
//! reads Envoy's admin stats, filters them, adds the applications' metrics
//! and labels every series (dp/src/metrics.rs). TLS and OpenTelemetry
//! backends are not generated (`meridian_core::unapplied` reports them).
//!
//! # Clusters of collectors
//!
//! A collector's cluster is named after the backend kind and the collector's
//! `host:port` ([`Collector::name`]), so that every listener logging to one
//! collector shares one cluster. An IP address gives a static cluster, a host
//! name a strict-DNS one; `https://` gives TLS with the host as SNI.

use std::collections::BTreeMap;
use std::net::IpAddr;

use envoy_types::pb::envoy::config::accesslog::v3::{access_log, AccessLog};
use envoy_types::pb::envoy::config::cluster::v3::{
    cluster::{ClusterDiscoveryType, DiscoveryType},
    Cluster,
};
use envoy_types::pb::envoy::config::core::v3::{
    data_source::Specifier, grpc_service, substitution_format_string, transport_socket, ApiVersion, DataSource,
    GrpcService, SubstitutionFormatString, TransportSocket,
};
use envoy_types::pb::envoy::config::trace::v3::{
    tracing::{http, Http as TracingHttp},
    zipkin_config::CollectorEndpointVersion,
    DatadogConfig, OpenTelemetryConfig, ZipkinConfig,
};
use envoy_types::pb::envoy::extensions::access_loggers::file::v3::{file_access_log, FileAccessLog};
use envoy_types::pb::envoy::extensions::access_loggers::grpc::v3::CommonGrpcAccessLogConfig;
use envoy_types::pb::envoy::extensions::access_loggers::open_telemetry::v3::OpenTelemetryAccessLogConfig;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::Tracing;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::UpstreamTlsContext;
use envoy_types::pb::envoy::r#type::tracing::v3::{custom_tag, CustomTag};
use envoy_types::pb::envoy::r#type::v3::Percent;
use envoy_types::pb::google::protobuf::{value::Kind, BoolValue, Struct, Value as PbValue};
use envoy_types::pb::opentelemetry::proto::common::v1::{any_value, AnyValue, ArrayValue, KeyValue, KeyValueList};
use meridian_core::policy::common::split_url;
use meridian_core::policy::{meshaccesslog, meshtrace};
use serde_json::Value;

use super::clusters::http2_upstream;
use super::sidecar::{local_cluster, socket};

/// How long connecting to a collector (or the admin interface) may take.
const COLLECTOR_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
use super::any;

/// The line a file backend writes for HTTP traffic when its policy gives
/// no format.
pub const DEFAULT_HTTP_FORMAT: &str = "[%START_TIME%] %KUMA_MESH% \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-B3-TRACEID?X-DATADOG-TRACEID)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%KUMA_SOURCE_SERVICE%\" \"%KUMA_DESTINATION_SERVICE%\" \"%KUMA_SOURCE_ADDRESS_WITHOUT_PORT%\" \"%UPSTREAM_HOST%\"";

/// The same for TCP traffic.
pub const DEFAULT_TCP_FORMAT: &str = "[%START_TIME%] %RESPONSE_FLAGS% %KUMA_MESH% %KUMA_SOURCE_ADDRESS_WITHOUT_PORT%(%KUMA_SOURCE_SERVICE%)->%UPSTREAM_HOST%(%KUMA_DESTINATION_SERVICE%) took %DURATION%ms, sent %BYTES_SENT% bytes, received: %BYTES_RECEIVED% bytes";

/// Which way the logged traffic goes, from the proxy's point of view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Inbound,
    Outbound,
}

impl Direction {
    fn name(self) -> &'static str {
        match self {
            Direction::Inbound => "INBOUND",
            Direction::Outbound => "OUTBOUND",
        }
    }
}

/// What the control plane knows about the traffic of one listener: the
/// values of the `%KUMA_…%` placeholders.
#[derive(Clone, Debug)]
pub struct Traffic<'a> {
    pub mesh: &'a str,
    pub direction: Direction,
    /// Outbound: this proxy's service; inbound: `None` (`unknown`).
    pub source_service: Option<&'a str>,
    pub destination_service: &'a str,
    /// This proxy's address (advertised, else its own).
    pub address: &'a str,
    /// The dataplane's name (its access-log pipe's, [`access_log_pipe`]).
    pub proxy_name: &'a str,
}

/// The named pipe through which a sidecar's Envoy hands `tcp` access-log
/// lines to its meridian-dp, which sends them on (`meridian-dp`'s
/// `accesslog` module): one per dataplane, in the temporary directory.
pub fn access_log_pipe(mesh: &str, name: &str) -> String {
    let clean = |s: &str| s.replace(['/', '\0'], "_");
    format!("/tmp/meridian-al-{}-{}.pipe", clean(mesh), clean(name))
}

impl Traffic<'_> {
    /// Replaces the placeholders in `format`. As in Kuma, the source
    /// address is this proxy's own, in both directions, and an inbound's
    /// source service is `unknown` (the caller is known to Envoy only).
    pub fn expand(&self, format: &str) -> String {
        const PREFIX: &str = "%KUMA_";
        let mut out = String::with_capacity(format.len() + 64);
        let mut rest = format;
        while let Some(at) = rest.find(PREFIX) {
            out.push_str(&rest[..at]);
            let tail = &rest[at..];
            let name = tail[1..].find('%').map(|end| &tail[..end + 2]);
            let value = match name {
                Some("%KUMA_MESH%") => Some(self.mesh),
                Some("%KUMA_SOURCE_ADDRESS_WITHOUT_PORT%") => Some(self.address),
                Some("%KUMA_SOURCE_ADDRESS%") => {
                    if self.address.contains(':') {
                        out.push('[');
                        out.push_str(self.address);
                        out.push_str("]:0");
                    } else {
                        out.push_str(self.address);
                        out.push_str(":0");
                    }
                    None
                }
                Some("%KUMA_SOURCE_SERVICE%") => Some(self.source_service.unwrap_or("unknown")),
                Some("%KUMA_DESTINATION_SERVICE%") => Some(self.destination_service),
                Some("%KUMA_TRAFFIC_DIRECTION%") => Some(self.direction.name()),
                // Not one of ours: Envoy's to read (and refuse).
                _ => {
                    out.push_str(PREFIX);
                    rest = &tail[PREFIX.len()..];
                    continue;
                }
            };
            if let Some(v) = value {
                out.push_str(v);
            }
            let len = name.map_or(PREFIX.len(), str::len);
            rest = &tail[len..];
        }
        out.push_str(rest);
        out
    }
}

/// A collector that a backend sends to, and the cluster that reaches it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Collector {
    /// What kind of backend (`accesslog:otel`, `trace:zipkin`, …).
    pub kind: &'static str,
    pub host: String,
    pub port: u32,
    /// HTTP/2 upstream (gRPC collectors).
    pub http2: bool,
    /// TLS to the collector (an `https://` URL), with the host as SNI.
    pub tls: bool,
}

impl Collector {
    /// `host[:port]` or `scheme://host[:port][/path]`; `default_port` when
    /// the address has none (443 for `https`). `None` for an address that
    /// does not parse (validation refuses those).
    pub fn parse(kind: &'static str, address: &str, default_port: u32, http2: bool) -> Option<Collector> {
        let parts = split_url(address)?;
        let tls = parts.scheme == Some("https");
        let port = match parts.port {
            Some(p) => p.parse::<u32>().ok().filter(|p| (1..=65535).contains(p))?,
            None if tls => 443,
            None => default_port,
        };
        Some(Collector {
            kind,
            host: parts.host.to_string(),
            port,
            http2,
            tls,
        })
    }

    /// The cluster's name: `_meridian:<kind>:<host>:<port>`.
    pub fn name(&self) -> String {
        format!("_meridian:{}:{}:{}", self.kind, self.host, self.port)
    }

    pub fn cluster(&self) -> Cluster {
        let is_ip = self.host.parse::<IpAddr>().is_ok();
        let mut cluster = local_cluster(&self.name(), &self.host, self.port, COLLECTOR_CONNECT_TIMEOUT);
        if !is_ip {
            cluster.cluster_discovery_type = Some(ClusterDiscoveryType::Type(DiscoveryType::StrictDns as i32));
        }
        if self.http2 {
            cluster.typed_extension_protocol_options = http2_upstream();
        }
        cluster.transport_socket = self.tls.then(|| TransportSocket {
            name: "envoy.transport_sockets.tls".into(),
            config_type: Some(transport_socket::ConfigType::TypedConfig(any(&UpstreamTlsContext {
                sni: if is_ip { String::new() } else { self.host.clone() },
                ..Default::default()
            }))),
        });
        cluster
    }
}

/// The collectors the clusters of a sidecar must reach, by cluster name.
pub type Collectors = BTreeMap<String, Collector>;

fn add(collectors: &mut Collectors, c: Collector) -> String {
    let name = c.name();
    collectors.entry(name.clone()).or_insert(c);
    name
}

fn envoy_grpc(cluster: String) -> GrpcService {
    GrpcService {
        target_specifier: Some(grpc_service::TargetSpecifier::EnvoyGrpc(grpc_service::EnvoyGrpc {
            cluster_name: cluster,
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// The collector of an OpenTelemetry access-log backend (OTLP/gRPC, port
/// 4317 by default).
pub fn access_log_collector(backend: &meshaccesslog::Backend) -> Option<Collector> {
    let otel = backend.open_telemetry.as_ref()?;
    Collector::parse("accesslog:otel", &otel.endpoint, 4317, true)
}

fn text_format(text: String) -> substitution_format_string::Format {
    substitution_format_string::Format::TextFormatSource(DataSource {
        specifier: Some(Specifier::InlineString(text)),
        ..Default::default()
    })
}

fn log_format(format: Option<&meshaccesslog::Format>, http: bool, traffic: &Traffic<'_>) -> SubstitutionFormatString {
    let default = || if http { DEFAULT_HTTP_FORMAT } else { DEFAULT_TCP_FORMAT };
    let Some(f) = format else {
        return SubstitutionFormatString {
            format: Some(text_format(traffic.expand(&format!("{}\n", default())))),
            ..Default::default()
        };
    };
    let omit_empty_values = f.omit_empty_values.unwrap_or(false);
    let format = match (&f.json, &f.plain) {
        (Some(fields), _) => {
            let fields = fields
                .iter()
                .map(|kv| {
                    let value = traffic.expand(kv.value.as_deref().unwrap_or_default());
                    (
                        kv.key.clone().unwrap_or_default(),
                        PbValue {
                            kind: Some(Kind::StringValue(value)),
                        },
                    )
                })
                .collect();
            substitution_format_string::Format::JsonFormat(Struct { fields })
        }
        (None, Some(plain)) => {
            // Envoy writes exactly the format: a line needs its newline.
            text_format(traffic.expand(&format!("{plain}\n")))
        }
        (None, None) => text_format(traffic.expand(&format!("{}\n", default()))),
    };
    SubstitutionFormatString {
        format: Some(format),
        omit_empty_values,
        ..Default::default()
    }
}

/// An OpenTelemetry `AnyValue` from the JSON of a MeshAccessLog `body`:
/// OTLP's JSON form (`{"kvlistValue": …}`, `{"stringValue": …}`) is read as
/// such; any other JSON maps to the obvious value. Strings have their
/// placeholders replaced.
fn any_value(v: &Value, traffic: &Traffic<'_>) -> AnyValue {
    let value = match v {
        Value::Null => None,
        Value::Bool(b) => Some(any_value::Value::BoolValue(*b)),
        Value::Number(n) => Some(match n.as_i64() {
            Some(i) => any_value::Value::IntValue(i),
            None => any_value::Value::DoubleValue(n.as_f64().unwrap_or_default()),
        }),
        Value::String(s) => Some(any_value::Value::StringValue(traffic.expand(s))),
        Value::Array(items) => Some(any_value::Value::ArrayValue(ArrayValue {
            values: items.iter().map(|i| any_value(i, traffic)).collect(),
        })),
        Value::Object(map) => {
            if map.len() == 1 {
                if let Some((key, inner)) = map.iter().next() {
                    if let Some(v) = otlp_json(key, inner, traffic) {
                        return AnyValue { value: Some(v) };
                    }
                }
            }
            Some(any_value::Value::KvlistValue(KeyValueList {
                values: map
                    .iter()
                    .map(|(k, v)| KeyValue {
                        key: traffic.expand(k),
                        value: Some(any_value(v, traffic)),
                        ..Default::default()
                    })
                    .collect(),
            }))
        }
    };
    AnyValue { value }
}

/// One member of OTLP's JSON form of an `AnyValue`.
fn otlp_json(key: &str, inner: &Value, traffic: &Traffic<'_>) -> Option<any_value::Value> {
    Some(match key {
        "stringValue" => any_value::Value::StringValue(traffic.expand(inner.as_str()?)),
        "boolValue" => any_value::Value::BoolValue(inner.as_bool()?),
        "intValue" => any_value::Value::IntValue(match inner {
            Value::String(s) => s.parse().ok()?,
            other => other.as_i64()?,
        }),
        "doubleValue" => any_value::Value::DoubleValue(inner.as_f64()?),
        "arrayValue" => any_value::Value::ArrayValue(ArrayValue {
            values: inner
                .get("values")?
                .as_array()?
                .iter()
                .map(|v| any_value(v, traffic))
                .collect(),
        }),
        "kvlistValue" => any_value::Value::KvlistValue(KeyValueList {
            values: inner
                .get("values")?
                .as_array()?
                .iter()
                .map(|kv| {
                    Some(KeyValue {
                        key: traffic.expand(kv.get("key")?.as_str()?),
                        value: kv.get("value").map(|v| any_value(v, traffic)),
                        ..Default::default()
                    })
                })
                .collect::<Option<Vec<_>>>()?,
        }),
        _ => return None,
    })
}

/// The access loggers of `backends` for one listener's traffic; the
/// collectors they send to are added to `collectors`. `http` says whether
/// they log HTTP requests (connection manager) or connections (TCP proxy).
#[allow(deprecated)] // `common_config`: what Envoy 1.29+, which meridian-dp runs, reads
pub fn access_logs(
    backends: &[meshaccesslog::Backend],
    traffic: &Traffic<'_>,
    http: bool,
    collectors: &mut Collectors,
) -> Vec<AccessLog> {
    let mut out = Vec::new();
    for backend in backends {
        if let Some(file) = &backend.file {
            let config = FileAccessLog {
                path: file.path.clone(),
                access_log_format: Some(file_access_log::AccessLogFormat::LogFormat(log_format(
                    file.format.as_ref(),
                    http,
                    traffic,
                ))),
            };
            out.push(AccessLog {
                name: "envoy.access_loggers.file".into(),
                config_type: Some(access_log::ConfigType::TypedConfig(file_log_any(&config))),
                ..Default::default()
            });
        }
        if let Some(tcp) = &backend.tcp {
            out.push(tcp_access_log(&tcp.address, tcp.format.as_ref(), http, traffic));
        }
        if let (Some(otel), Some(collector)) = (&backend.open_telemetry, access_log_collector(backend)) {
            let cluster = add(collectors, collector);
            let body = match &otel.body {
                Some(body) => any_value(body, traffic),
                None => AnyValue {
                    value: Some(any_value::Value::StringValue(traffic.expand(if http {
                        DEFAULT_HTTP_FORMAT
                    } else {
                        DEFAULT_TCP_FORMAT
                    }))),
                },
            };
            let attributes = otel.attributes.as_ref().map(|list| KeyValueList {
                values: list
                    .iter()
                    .map(|kv| KeyValue {
                        key: kv.key.clone().unwrap_or_default(),
                        value: Some(AnyValue {
                            value: Some(any_value::Value::StringValue(
                                traffic.expand(kv.value.as_deref().unwrap_or_default()),
                            )),
                        }),
                        ..Default::default()
                    })
                    .collect(),
            });
            let config = OpenTelemetryAccessLogConfig {
                common_config: Some(CommonGrpcAccessLogConfig {
                    log_name: "MeshAccessLog".into(),
                    grpc_service: Some(envoy_grpc(cluster)),
                    transport_api_version: ApiVersion::V3 as i32,
                    ..Default::default()
                }),
                body: Some(body),
                attributes,
                ..Default::default()
            };
            out.push(AccessLog {
                name: "envoy.access_loggers.open_telemetry".into(),
                config_type: Some(access_log::ConfigType::TypedConfig(any(&config))),
                ..Default::default()
            });
        }
    }
    out
}

/// A `tcp` backend's logger: JSON records on the dataplane's pipe, each
/// the collector's address and the message (a line, or the object of a JSON
/// format), which meridian-dp sends on.
fn tcp_access_log(
    address: &str,
    format: Option<&meshaccesslog::Format>,
    http: bool,
    traffic: &Traffic<'_>,
) -> AccessLog {
    let string = |s: String| PbValue {
        kind: Some(Kind::StringValue(s)),
    };
    let inner = log_format(format, http, traffic);
    let message = match inner.format {
        Some(substitution_format_string::Format::JsonFormat(fields)) => PbValue {
            kind: Some(Kind::StructValue(fields)),
        },
        Some(substitution_format_string::Format::TextFormatSource(DataSource {
            specifier: Some(Specifier::InlineString(line)),
            ..
        })) => string(line),
        _ => string(String::new()),
    };
    let record = Struct {
        fields: [
            ("address".to_string(), string(address.to_string())),
            ("message".to_string(), message),
        ]
        .into_iter()
        .collect(),
    };
    let config = FileAccessLog {
        path: access_log_pipe(traffic.mesh, traffic.proxy_name),
        access_log_format: Some(file_access_log::AccessLogFormat::LogFormat(SubstitutionFormatString {
            format: Some(substitution_format_string::Format::JsonFormat(record)),
            omit_empty_values: inner.omit_empty_values,
            ..Default::default()
        })),
    };
    AccessLog {
        name: "envoy.access_loggers.file".into(),
        config_type: Some(access_log::ConfigType::TypedConfig(file_log_any(&config))),
        ..Default::default()
    }
}

/// Wire twins of `google.protobuf.Struct` and of the messages that carry
/// one in a file logger, with their fields in key order: prost encodes a
/// `Struct`'s `HashMap` in an order that changes from process to process,
/// and a configuration's version is a hash of its bytes.
mod sorted {
    use std::collections::BTreeMap;

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Struct {
        #[prost(btree_map = "string, message", tag = "1")]
        pub fields: BTreeMap<String, Value>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Value {
        #[prost(oneof = "Kind", tags = "1, 2, 3, 4, 5, 6")]
        pub kind: Option<Kind>,
    }

    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Kind {
        #[prost(int32, tag = "1")]
        Null(i32),
        #[prost(double, tag = "2")]
        Number(f64),
        #[prost(string, tag = "3")]
        Text(String),
        #[prost(bool, tag = "4")]
        Bool(bool),
        #[prost(message, tag = "5")]
        Struct(Struct),
        #[prost(message, tag = "6")]
        List(List),
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct List {
        #[prost(message, repeated, tag = "1")]
        pub values: Vec<Value>,
    }

    /// `SubstitutionFormatString` with `json_format` (tag 2).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct JsonFormat {
        #[prost(message, optional, tag = "2")]
        pub json_format: Option<Struct>,
        #[prost(bool, tag = "3")]
        pub omit_empty_values: bool,
    }

    /// `FileAccessLog` with `log_format` (tag 5).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct FileLog {
        #[prost(string, tag = "1")]
        pub path: String,
        #[prost(message, optional, tag = "5")]
        pub log_format: Option<JsonFormat>,
    }
}

fn sorted_struct(s: &Struct) -> sorted::Struct {
    sorted::Struct {
        fields: s.fields.iter().map(|(k, v)| (k.clone(), sorted_value(v))).collect(),
    }
}

fn sorted_value(v: &PbValue) -> sorted::Value {
    let kind = v.kind.as_ref().map(|k| match k {
        Kind::NullValue(n) => sorted::Kind::Null(*n),
        Kind::NumberValue(n) => sorted::Kind::Number(*n),
        Kind::StringValue(s) => sorted::Kind::Text(s.clone()),
        Kind::BoolValue(b) => sorted::Kind::Bool(*b),
        Kind::StructValue(s) => sorted::Kind::Struct(sorted_struct(s)),
        Kind::ListValue(l) => sorted::Kind::List(sorted::List {
            values: l.values.iter().map(sorted_value).collect(),
        }),
    });
    sorted::Value { kind }
}

/// A file logger packed with its JSON format's fields in key order (the
/// same message, encoded deterministically).
fn file_log_any(config: &FileAccessLog) -> envoy_types::pb::google::protobuf::Any {
    let Some(file_access_log::AccessLogFormat::LogFormat(SubstitutionFormatString {
        format: Some(substitution_format_string::Format::JsonFormat(fields)),
        omit_empty_values,
        ..
    })) = &config.access_log_format
    else {
        return any(config);
    };
    let twin = sorted::FileLog {
        path: config.path.clone(),
        log_format: Some(sorted::JsonFormat {
            json_format: Some(sorted_struct(fields)),
            omit_empty_values: *omit_empty_values,
        }),
    };
    envoy_types::pb::google::protobuf::Any {
        type_url: <FileAccessLog as prost::Name>::type_url(),
        value: prost::Message::encode_to_vec(&twin),
    }
}

/// The collector of a MeshTrace backend: Zipkin and Datadog over HTTP
/// (ports 9411 and 8126 by default), OpenTelemetry over gRPC (4317).
pub fn trace_collector(backend: &meshtrace::Backend) -> Option<Collector> {
    if let Some(z) = &backend.zipkin {
        return Collector::parse("trace:zipkin", &z.url, 9411, false);
    }
    if let Some(d) = &backend.datadog {
        return Collector::parse("trace:datadog", &d.url, 8126, false);
    }
    let o = backend.open_telemetry.as_ref()?;
    Collector::parse("trace:otel", &o.endpoint, 4317, true)
}

fn percent(v: Option<&meridian_core::policy::common::IntOrString>) -> Option<Percent> {
    v.and_then(|v| v.as_f64()).map(|value| Percent { value })
}

/// The tracing of an HTTP connection manager of a proxy of `service` for
/// traffic to or from `peer` (the Datadog service name with
/// `splitService`); `None` when the configuration has no backend.
pub fn tracing(
    conf: &meshtrace::Conf,
    service: &str,
    direction: Direction,
    peer: &str,
    collectors: &mut Collectors,
) -> Option<Tracing> {
    let backend = conf.backends.as_ref()?.first()?;
    let collector = trace_collector(backend)?;
    let host = format!("{}:{}", collector.host, collector.port);
    let cluster = add(collectors, collector);
    let provider = if let Some(z) = &backend.zipkin {
        let path = split_url(&z.url).map(|p| p.rest).unwrap_or_default();
        let endpoint = if path.is_empty() { "/api/v2/spans" } else { path };
        let version = match z.api_version {
            Some(meshtrace::ZipkinApiVersion::HttpProto) => CollectorEndpointVersion::HttpProto,
            _ => CollectorEndpointVersion::HttpJson,
        };
        TracingHttp {
            name: "envoy.tracers.zipkin".into(),
            config_type: Some(http::ConfigType::TypedConfig(any(&ZipkinConfig {
                collector_cluster: cluster,
                collector_endpoint: endpoint.to_string(),
                trace_id_128bit: z.trace_id_128bit.unwrap_or(false),
                shared_span_context: Some(BoolValue {
                    value: z.shared_span_context.unwrap_or(true),
                }),
                collector_endpoint_version: version as i32,
                collector_hostname: host,
                ..Default::default()
            }))),
        }
    } else if let Some(d) = &backend.datadog {
        let service_name = if d.split_service.unwrap_or(false) {
            match direction {
                Direction::Inbound => format!("{service}_INBOUND"),
                Direction::Outbound => format!("{service}_OUTBOUND_{peer}"),
            }
        } else {
            service.to_string()
        };
        TracingHttp {
            name: "envoy.tracers.datadog".into(),
            config_type: Some(http::ConfigType::TypedConfig(any(&DatadogConfig {
                collector_cluster: cluster,
                service_name,
                ..Default::default()
            }))),
        }
    } else {
        TracingHttp {
            name: "envoy.tracers.opentelemetry".into(),
            config_type: Some(http::ConfigType::TypedConfig(any(&OpenTelemetryConfig {
                grpc_service: Some(envoy_grpc(cluster)),
                service_name: service.to_string(),
                ..Default::default()
            }))),
        }
    };
    let sampling = conf.sampling.as_ref();
    let custom_tags = conf
        .tags
        .iter()
        .flatten()
        .map(|t| CustomTag {
            tag: t.name.clone(),
            r#type: Some(match (&t.literal, &t.header) {
                (Some(l), _) => custom_tag::Type::Literal(custom_tag::Literal { value: l.clone() }),
                (None, Some(h)) => custom_tag::Type::RequestHeader(custom_tag::Header {
                    name: h.name.clone(),
                    default_value: h.default.clone().unwrap_or_default(),
                }),
                (None, None) => custom_tag::Type::Literal(custom_tag::Literal::default()),
            }),
        })
        .collect();
    Some(Tracing {
        overall_sampling: percent(sampling.and_then(|s| s.overall.as_ref())),
        client_sampling: percent(sampling.and_then(|s| s.client.as_ref())),
        random_sampling: percent(sampling.and_then(|s| s.random.as_ref())),
        custom_tags,
        provider: Some(provider),
        ..Default::default()
    })
}

/// The cluster of `meridian-dp`'s metrics endpoint, a Unix socket
/// ([`metrics_socket`]), which the Prometheus listeners send scrapes to.
pub const METRICS_AGENT_CLUSTER: &str = "_meridian:metrics:agent";
/// The path `meridian-dp` serves MeshMetric scrapes at.
pub const METRICS_AGENT_PATH: &str = "/meshmetric";
/// The request header that carries a scrape's [`MetricsRequest`] (JSON),
/// set by Envoy's route over anything a client sent.
pub const METRICS_REQUEST_HEADER: &str = "x-meridian-meshmetric";
/// The longest header value Envoy takes in `request_headers_to_add`.
const MAX_HEADER_VALUE: usize = 16_384;
/// MeshMetric's Prometheus port and path when the backend names none.
pub const DEFAULT_PROMETHEUS_PORT: u32 = 5670;
pub const DEFAULT_PROMETHEUS_PATH: &str = "/metrics";
/// An application's metrics path when it names none (Kuma's default).
pub const DEFAULT_APPLICATION_PATH: &str = "/metrics/prometheus";

/// What `meridian-dp` serves for one scrape: Envoy's metrics filtered by
/// the profiles, then each application's, every series labelled with the
/// proxy's `mesh`, `dataplane` and `service`.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MetricsRequest {
    /// Envoy's metrics that are not in use too (`sidecar.includeUnused`).
    #[serde(default)]
    pub include_unused: bool,
    /// `sidecar.profiles`; absent: Kuma's default, `Basic`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profiles: Option<meridian_core::policy::meshmetric::Profiles>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub applications: Vec<ScrapedApplication>,
    pub mesh: String,
    pub dataplane: String,
    pub service: String,
}

/// An application's metrics endpoint, with the defaults filled in.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ScrapedApplication {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub address: String,
    pub port: u16,
    pub path: String,
}

/// A Unix socket of dataplane `name` of `mesh` for `kind`:
/// `/tmp/meridian-<kind>-<mesh>-<name>[-<extra>].sock`, or, when that is
/// longer than a socket address holds, `/tmp/meridian-<kind>-<hash>.sock`.
fn agent_socket(kind: &str, mesh: &str, name: &str, extra: Option<&str>) -> String {
    let clean = |s: &str| s.replace(['/', '\0', ':'], "_");
    let mut path = format!("/tmp/meridian-{kind}-{}-{}", clean(mesh), clean(name));
    if let Some(e) = extra {
        path.push('-');
        path.push_str(&clean(e));
    }
    path.push_str(".sock");
    // sun_path holds 108 bytes with the terminating NUL.
    if path.len() <= 100 {
        return path;
    }
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in mesh
        .bytes()
        .chain([0])
        .chain(name.bytes())
        .chain([0])
        .chain(extra.unwrap_or("").bytes())
    {
        hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("/tmp/meridian-{kind}-{hash:016x}.sock")
}

/// The Unix socket `meridian-dp` serves MeshMetric scrapes on.
pub fn metrics_socket(mesh: &str, name: &str) -> String {
    agent_socket("mm", mesh, name, None)
}

/// The Unix socket Envoy serves the proxy's [`MetricsConfig`] on, which
/// `meridian-dp` polls (only with an OpenTelemetry backend).
pub fn metrics_config_socket(mesh: &str, name: &str) -> String {
    agent_socket("dc", mesh, name, None)
}

/// The Unix socket on which Envoy takes OTLP for the collector `collector`
/// (a cluster name) and sends it on.
pub fn metrics_otel_socket(mesh: &str, name: &str, collector: &str) -> String {
    agent_socket("mo", mesh, name, Some(collector))
}

/// What `meridian-dp` pushes to OpenTelemetry collectors: the same metrics a
/// scrape gets ([`MetricsRequest`]), every `refreshIntervalSeconds`, as OTLP
/// over gRPC to each backend's Envoy socket.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MetricsConfig {
    pub request: MetricsRequest,
    #[serde(default)]
    pub open_telemetry: Vec<OtelExport>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OtelExport {
    /// The collector's endpoint, as the policy wrote it.
    pub endpoint: String,
    /// Envoy's listener for it ([`metrics_otel_socket`]).
    pub socket: String,
    pub refresh_interval_seconds: u64,
}

/// Listener `name` at `address` whose HTTP connection manager serves `routes`.
fn http_listener(
    name: &str,
    address: envoy_types::pb::envoy::config::core::v3::Address,
    routes: envoy_types::pb::envoy::config::route::v3::RouteConfiguration,
    direction: envoy_types::pb::envoy::config::core::v3::TrafficDirection,
) -> envoy_types::pb::envoy::config::listener::v3::Listener {
    use envoy_types::pb::envoy::config::listener::v3::{filter, Filter, FilterChain, Listener};
    use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
        http_connection_manager::{CodecType, RouteSpecifier},
        http_filter::ConfigType,
        HttpConnectionManager, HttpFilter,
    };
    let hcm = HttpConnectionManager {
        stat_prefix: name.replace(':', "_"),
        codec_type: CodecType::Auto as i32,
        route_specifier: Some(RouteSpecifier::RouteConfig(routes)),
        http_filters: vec![HttpFilter {
            name: "envoy.filters.http.router".into(),
            config_type: Some(ConfigType::TypedConfig(any(&Router::default()))),
            ..Default::default()
        }],
        ..Default::default()
    };
    Listener {
        name: name.to_string(),
        address: Some(address),
        stat_prefix: name.replace(':', "_"),
        filter_chains: vec![FilterChain {
            filters: vec![Filter {
                name: "envoy.filters.network.http_connection_manager".into(),
                config_type: Some(filter::ConfigType::TypedConfig(any(&hcm))),
            }],
            ..Default::default()
        }],
        traffic_direction: direction as i32,
        ..Default::default()
    }
}

/// The TLS of a Prometheus listener with `ProvidedTLS`: the certificate and
/// key files of the proxy's host, read by Envoy.
fn provided_tls(files: &crate::snapshot::MetricsTlsFiles) -> TransportSocket {
    use envoy_types::pb::envoy::config::core::v3::{data_source::Specifier, DataSource};
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
        CommonTlsContext, DownstreamTlsContext, TlsCertificate,
    };
    let file = |path: &str| DataSource {
        specifier: Some(Specifier::Filename(path.to_string())),
        ..Default::default()
    };
    TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(any(&DownstreamTlsContext {
            common_tls_context: Some(CommonTlsContext {
                tls_certificates: vec![TlsCertificate {
                    certificate_chain: Some(file(&files.cert)),
                    private_key: Some(file(&files.key)),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        }))),
    }
}

/// A Unix socket address Envoy connects to.
fn pipe(path: String) -> envoy_types::pb::envoy::config::core::v3::Address {
    pipe_with_mode(path, 0)
}

/// The Unix socket address a listener of Envoy binds: its owner's only
/// (0600), whatever the umask; only the agent beside it connects.
fn listener_pipe(path: String) -> envoy_types::pb::envoy::config::core::v3::Address {
    pipe_with_mode(path, 0o600)
}

fn pipe_with_mode(path: String, mode: u32) -> envoy_types::pb::envoy::config::core::v3::Address {
    use envoy_types::pb::envoy::config::core::v3::{address, Address, Pipe};
    Address {
        address: Some(address::Address::Pipe(Pipe { path, mode })),
    }
}

/// The default `refreshInterval` of MeshMetric's OpenTelemetry backends.
const DEFAULT_OTEL_REFRESH: std::time::Duration = std::time::Duration::from_secs(60);
/// The OpenTelemetry collector's port when the endpoint names none (OTLP
/// over gRPC).
const DEFAULT_OTEL_PORT: u32 = 4317;
/// The listener that serves `meridian-dp` its [`MetricsConfig`].
pub const METRICS_CONFIG_LISTENER: &str = "_meridian:dynamicconfig:observability";

/// MeshMetric's backends for a sidecar:
/// - each Prometheus backend: a listener on the dataplane's address and the
///   backend's port, whose path is sent to `meridian-dp`'s metrics endpoint
///   with the scrape's [`MetricsRequest`] in a header, and the cluster of
///   that endpoint. A backend whose port an inbound already uses is left
///   out (logged), as in Kuma;
/// - each OpenTelemetry backend: a listener on a Unix socket of the proxy
///   that sends what `meridian-dp` pushes there to the collector's cluster
///   (HTTP/2; TLS for `https://`), and, for all of them, the listener that
///   serves `meridian-dp` the [`MetricsConfig`].
pub fn metrics(
    conf: &meridian_core::policy::meshmetric::Conf,
    net: &meridian_core::dataplane::DataplaneNetworking,
    mesh: &str,
    dataplane: &str,
    tls_files: Option<&crate::snapshot::MetricsTlsFiles>,
) -> (
    Vec<envoy_types::pb::envoy::config::listener::v3::Listener>,
    Vec<Cluster>,
) {
    use envoy_types::pb::envoy::config::core::v3::{
        data_source::Specifier, header_value_option::HeaderAppendAction, DataSource, HeaderValue, HeaderValueOption,
        TrafficDirection,
    };
    use envoy_types::pb::envoy::config::route::v3::{
        route::Action, route_action::ClusterSpecifier, route_match::PathSpecifier, DirectResponseAction, RouteAction,
    };
    use meridian_core::policy::meshmetric::{BackendType, TlsMode};

    let sidecar = conf.sidecar.as_ref();
    let request = MetricsRequest {
        include_unused: sidecar.and_then(|s| s.include_unused).unwrap_or(false),
        profiles: sidecar.and_then(|s| s.profiles.clone()),
        applications: conf
            .applications
            .iter()
            .flatten()
            .filter_map(|a| {
                Some(ScrapedApplication {
                    name: a.name.clone(),
                    address: a.address.clone().unwrap_or_else(|| net.address.clone()),
                    port: u16::try_from(a.port).ok()?,
                    path: a.path.clone().unwrap_or_else(|| DEFAULT_APPLICATION_PATH.to_string()),
                })
            })
            .collect(),
        mesh: mesh.to_string(),
        dataplane: dataplane.to_string(),
        service: net
            .inbound
            .iter()
            .filter_map(|i| i.tags.get("kuma.io/service"))
            .min()
            .cloned()
            .unwrap_or_default(),
    };
    let mut listeners = Vec::new();
    let mut clusters = Vec::new();

    // Compact JSON escapes control characters: a valid header value. Envoy
    // reads `%…%` in added headers as its formatters: `%%` is a literal `%`.
    let header = serde_json::to_string(&request).unwrap_or_default().replace('%', "%%");
    let taken: std::collections::BTreeSet<u32> = net.inbound.iter().map(|i| i.port).collect();
    for backend in conf.backends.iter().flatten() {
        let (BackendType::Prometheus, Some(p)) = (backend.backend_type, backend.prometheus.as_ref()) else {
            continue;
        };
        let port = p
            .port
            .and_then(|p| u32::try_from(p).ok())
            .unwrap_or(DEFAULT_PROMETHEUS_PORT);
        if taken.contains(&port) {
            tracing::warn!(
                port,
                "MeshMetric's Prometheus port is an inbound's: no metrics listener"
            );
            continue;
        }
        if header.len() > MAX_HEADER_VALUE {
            tracing::warn!(
                bytes = header.len(),
                "MeshMetric's applications and profiles do not fit Envoy's header value limit: no metrics listener"
            );
            continue;
        }
        let name = format!(
            "_meridian:metrics:prometheus:{}",
            p.client_id.as_deref().unwrap_or("default-backend")
        );
        let path = p.path.as_deref().unwrap_or(DEFAULT_PROMETHEUS_PATH);
        let mut routes = super::sidecar::single_route(
            &name,
            PathSpecifier::Path(path.to_string()),
            RouteAction {
                cluster_specifier: Some(ClusterSpecifier::Cluster(METRICS_AGENT_CLUSTER.into())),
                prefix_rewrite: METRICS_AGENT_PATH.into(),
                ..Default::default()
            },
        );
        for route in routes.virtual_hosts.iter_mut().flat_map(|v| v.routes.iter_mut()) {
            route.request_headers_to_add = vec![HeaderValueOption {
                header: Some(HeaderValue {
                    key: METRICS_REQUEST_HEADER.into(),
                    value: header.clone(),
                    ..Default::default()
                }),
                append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
                ..Default::default()
            }];
        }
        let mut listener = http_listener(&name, socket(&net.address, port), routes, TrafficDirection::Inbound);
        let mode = p.tls.as_ref().and_then(|t| t.mode);
        if mode == Some(TlsMode::ActiveMtlsBackend) {
            // Reported on the write; never plaintext in its place.
            continue;
        }
        if mode == Some(TlsMode::ProvidedTls) {
            // TLS only, with the files the proxy's agent names; without
            // them, no listener rather than a plaintext one.
            let Some(files) = tls_files else {
                tracing::warn!(
                    mesh, dataplane,
                    "MeshMetric's Prometheus backend asks for ProvidedTLS, but the proxy's agent names no certificate (meridian-dp --metrics-cert-file, --metrics-key-file): no metrics listener"
                );
                continue;
            };
            for chain in &mut listener.filter_chains {
                chain.transport_socket = Some(provided_tls(files));
            }
        }
        listeners.push(listener);
    }
    if !listeners.is_empty() {
        let mut agent = local_cluster(METRICS_AGENT_CLUSTER, "127.0.0.1", 0, COLLECTOR_CONNECT_TIMEOUT);
        for endpoint in agent
            .load_assignment
            .iter_mut()
            .flat_map(|a| a.endpoints.iter_mut())
            .flat_map(|l| l.lb_endpoints.iter_mut())
        {
            if let Some(envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier::Endpoint(e)) =
                endpoint.host_identifier.as_mut()
            {
                e.address = Some(pipe(metrics_socket(mesh, dataplane)));
            }
        }
        clusters.push(agent);
    }

    let mut exports = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for backend in conf.backends.iter().flatten() {
        let (BackendType::OpenTelemetry, Some(o)) = (backend.backend_type, backend.open_telemetry.as_ref()) else {
            continue;
        };
        let Some(collector) = Collector::parse("metrics:otel", &o.endpoint, DEFAULT_OTEL_PORT, true) else {
            continue;
        };
        let cluster = collector.name();
        if !seen.insert(cluster.clone()) {
            continue;
        }
        let socket = metrics_otel_socket(mesh, dataplane, &format!("{}:{}", collector.host, collector.port));
        let name = format!("_meridian:metrics:opentelemetry:{}:{}", collector.host, collector.port);
        let routes = super::sidecar::single_route(
            &name,
            PathSpecifier::Prefix("/".into()),
            RouteAction {
                cluster_specifier: Some(ClusterSpecifier::Cluster(cluster.clone())),
                ..Default::default()
            },
        );
        listeners.push(http_listener(
            &name,
            listener_pipe(socket.clone()),
            routes,
            TrafficDirection::Outbound,
        ));
        clusters.push(collector.cluster());
        exports.push(OtelExport {
            endpoint: o.endpoint.clone(),
            socket,
            refresh_interval_seconds: o
                .refresh_interval
                .as_ref()
                .map(|d| d.as_std())
                .unwrap_or(DEFAULT_OTEL_REFRESH)
                .as_secs()
                .max(1),
        });
    }
    if !exports.is_empty() {
        let config = MetricsConfig {
            request,
            open_telemetry: exports,
        };
        let body = serde_json::to_string(&config).unwrap_or_default();
        let mut routes = super::sidecar::single_route_with(
            METRICS_CONFIG_LISTENER,
            PathSpecifier::Prefix("/".into()),
            Action::DirectResponse(DirectResponseAction {
                status: 200,
                body: Some(DataSource {
                    specifier: Some(Specifier::InlineString(body.clone())),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        );
        // Envoy's default limit is 4 KiB.
        routes.max_direct_response_body_size_bytes = Some(super::u32_value(
            u32::try_from(body.len()).unwrap_or(u32::MAX).max(4096),
        ));
        listeners.push(http_listener(
            METRICS_CONFIG_LISTENER,
            listener_pipe(metrics_config_socket(mesh, dataplane)),
            routes,
            TrafficDirection::Inbound,
        ));
    }
    (listeners, clusters)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn traffic(direction: Direction, address: &str) -> Traffic<'_> {
        Traffic {
            mesh: "default",
            direction,
            source_service: (direction == Direction::Outbound).then_some("web"),
            destination_service: "backend",
            address,
            proxy_name: "web-1",
        }
    }

    #[test]
    fn json_formats_encode_the_same_bytes_every_time() {
        use prost::Message;
        let format: meshaccesslog::Format = serde_json::from_value(serde_json::json!({
            "type": "Json",
            "json": (0..20).map(|i| serde_json::json!({"key": format!("k{i}"), "value": "%START_TIME%"})).collect::<Vec<_>>()
        }))
        .unwrap();
        let t = traffic(Direction::Outbound, "10.0.0.1");
        let encode = || {
            let logs = access_logs(
                &[meshaccesslog::Backend {
                    backend_type: meshaccesslog::BackendType::Tcp,
                    tcp: Some(meshaccesslog::TcpBackend {
                        format: Some(format.clone()),
                        address: "logs:5000".into(),
                    }),
                    file: None,
                    open_telemetry: None,
                }],
                &t,
                true,
                &mut Collectors::new(),
            );
            logs[0].encode_to_vec()
        };
        let first = encode();
        for _ in 0..20 {
            assert_eq!(encode(), first, "the same configuration, the same bytes");
        }
        // And Envoy reads them as its own message.
        let Some(access_log::ConfigType::TypedConfig(a)) = AccessLog::decode(first.as_slice()).unwrap().config_type
        else {
            panic!()
        };
        let file = FileAccessLog::decode(a.value.as_slice()).unwrap();
        let Some(file_access_log::AccessLogFormat::LogFormat(f)) = file.access_log_format else {
            panic!()
        };
        let Some(substitution_format_string::Format::JsonFormat(record)) = f.format else {
            panic!()
        };
        let Some(Kind::StructValue(message)) = &record.fields["message"].kind else {
            panic!()
        };
        assert_eq!(message.fields.len(), 20);
    }

    #[test]
    fn placeholders_expand_once_each_and_others_stay() {
        let t = traffic(Direction::Outbound, "10.0.0.1");
        assert_eq!(
            t.expand("%KUMA_MESH% %KUMA_SOURCE_SERVICE%@%KUMA_SOURCE_ADDRESS% -> %KUMA_DESTINATION_SERVICE% %KUMA_TRAFFIC_DIRECTION% %KUMA_SOURCE_ADDRESS_WITHOUT_PORT% %START_TIME% %KUMA_OTHER% 100% %KUMA_"),
            "default web@10.0.0.1:0 -> backend OUTBOUND 10.0.0.1 %START_TIME% %KUMA_OTHER% 100% %KUMA_"
        );
        let t = traffic(Direction::Inbound, "fd00::1");
        assert_eq!(
            t.expand("%KUMA_SOURCE_SERVICE% %KUMA_SOURCE_ADDRESS% %KUMA_TRAFFIC_DIRECTION%"),
            "unknown [fd00::1]:0 INBOUND"
        );
        assert_eq!(t.expand(""), "");
        assert_eq!(t.expand("ünïcode %KUMA_MESH%é"), "ünïcode defaulté");
    }
}
