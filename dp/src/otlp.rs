//! MeshMetric's OpenTelemetry backends: every `refreshInterval` the agent
//! takes the same metrics a Prometheus scrape gets (Envoy's, filtered by
//! the profiles, and the applications', labelled) and exports them as OTLP
//! over gRPC to the backend's Envoy socket, which sends them on to the
//! collector. What to export comes from Envoy's dynamic configuration
//! listener (`metrics_config_socket`), polled every [`POLL`]: the
//! configuration Envoy has, not one of its own.
//!
//! Prometheus families become OTLP metrics as Kuma's agent maps them:
//! counters are monotonic cumulative sums, gauges and untyped samples
//! gauges, histograms cumulative explicit-bucket histograms (bucket counts
//! per bucket, not cumulative as in the text format). Summaries are left
//! out (Envoy has none).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use envoy_types::pb::opentelemetry::proto::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use meridian_xds::generate::observability::{MetricsConfig, OtelExport};

/// How often the agent reads Envoy's metrics configuration.
pub const POLL: Duration = Duration::from_secs(10);
/// How long one export may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// The gRPC method of OTLP metrics export.
const EXPORT_PATH: &str = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export";

/// `opentelemetry.proto.collector.metrics.v1.ExportMetricsServiceRequest`
/// and what it holds (field numbers of OTLP's protos; common types from
/// `envoy-types`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct ExportMetricsServiceRequest {
    #[prost(message, repeated, tag = "1")]
    pub resource_metrics: Vec<ResourceMetrics>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ExportMetricsServiceResponse {}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ResourceMetrics {
    #[prost(message, optional, tag = "1")]
    pub resource: Option<Resource>,
    #[prost(message, repeated, tag = "2")]
    pub scope_metrics: Vec<ScopeMetrics>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Resource {
    #[prost(message, repeated, tag = "1")]
    pub attributes: Vec<KeyValue>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ScopeMetrics {
    #[prost(message, optional, tag = "1")]
    pub scope: Option<InstrumentationScope>,
    #[prost(message, repeated, tag = "2")]
    pub metrics: Vec<Metric>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Metric {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub description: String,
    #[prost(oneof = "Data", tags = "5, 7, 9")]
    pub data: Option<Data>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Data {
    #[prost(message, tag = "5")]
    Gauge(Gauge),
    #[prost(message, tag = "7")]
    Sum(Sum),
    #[prost(message, tag = "9")]
    Histogram(Histogram),
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Gauge {
    #[prost(message, repeated, tag = "1")]
    pub data_points: Vec<NumberDataPoint>,
}

/// `AGGREGATION_TEMPORALITY_CUMULATIVE`.
const CUMULATIVE: i32 = 2;

#[derive(Clone, PartialEq, prost::Message)]
pub struct Sum {
    #[prost(message, repeated, tag = "1")]
    pub data_points: Vec<NumberDataPoint>,
    #[prost(int32, tag = "2")]
    pub aggregation_temporality: i32,
    #[prost(bool, tag = "3")]
    pub is_monotonic: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Histogram {
    #[prost(message, repeated, tag = "1")]
    pub data_points: Vec<HistogramDataPoint>,
    #[prost(int32, tag = "2")]
    pub aggregation_temporality: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct NumberDataPoint {
    #[prost(message, repeated, tag = "7")]
    pub attributes: Vec<KeyValue>,
    #[prost(fixed64, tag = "2")]
    pub start_time_unix_nano: u64,
    #[prost(fixed64, tag = "3")]
    pub time_unix_nano: u64,
    #[prost(double, tag = "4")]
    pub as_double: f64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct HistogramDataPoint {
    #[prost(message, repeated, tag = "9")]
    pub attributes: Vec<KeyValue>,
    #[prost(fixed64, tag = "2")]
    pub start_time_unix_nano: u64,
    #[prost(fixed64, tag = "3")]
    pub time_unix_nano: u64,
    #[prost(fixed64, tag = "4")]
    pub count: u64,
    #[prost(double, optional, tag = "5")]
    pub sum: Option<f64>,
    #[prost(fixed64, repeated, tag = "6")]
    pub bucket_counts: Vec<u64>,
    #[prost(double, repeated, tag = "7")]
    pub explicit_bounds: Vec<f64>,
}

/// A label value of the text format, unescaped.
fn unescape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        match (c, c == '\\') {
            (_, true) => match chars.next() {
                Some('n') => out.push('\n'),
                Some(other) => out.push(other),
                None => out.push('\\'),
            },
            (c, false) => out.push(c),
        }
    }
    out
}

fn attribute(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_string())),
        }),
        ..Default::default()
    }
}

/// A sample's value: the text format's floats, `+Inf`, `-Inf` and `NaN`.
fn parse_value(v: &str) -> Option<f64> {
    match v {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => v.parse().ok(),
    }
}

/// One histogram series being assembled: `le` bound → cumulative count.
#[derive(Default)]
struct Buckets {
    bounds: BTreeMap<u64, (f64, f64)>,
    sum: Option<f64>,
    count: Option<f64>,
}

/// The metrics of Prometheus `text` (as [`crate::metrics::render`] writes
/// it) as OTLP metrics, stamped `now` and cumulative since `start`.
pub fn to_otlp(text: &str, start: u64, now: u64) -> Vec<Metric> {
    let mut kinds: HashMap<&str, &str> = HashMap::new();
    let mut help: HashMap<&str, &str> = HashMap::new();
    for line in text.lines() {
        let mut words = line.splitn(4, ' ');
        match (words.next(), words.next(), words.next(), words.next()) {
            (Some("#"), Some("TYPE"), Some(name), Some(kind)) => {
                kinds.insert(name, kind.trim());
            }
            (Some("#"), Some("HELP"), Some(name), Some(text)) => {
                help.insert(name, text);
            }
            _ => {}
        }
    }
    // Family → metric; histograms by family and labels without `le`.
    let mut metrics: BTreeMap<String, Metric> = BTreeMap::new();
    let mut histograms: BTreeMap<(String, Vec<(String, String)>), Buckets> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(sample) = crate::metrics::parse_sample(line) else {
            continue;
        };
        let Some(value) = sample.rest.split_whitespace().next().and_then(parse_value) else {
            continue;
        };
        let labels: Vec<(String, String)> = sample
            .labels
            .iter()
            .map(|(k, v)| (k.to_string(), unescape(v)))
            .collect();
        // The family: a `# TYPE` name this sample is, or is a part of.
        let family_kind = [
            (sample.name, ""),
            (sample.name.strip_suffix("_total").unwrap_or(""), "_total"),
            (sample.name.strip_suffix("_bucket").unwrap_or(""), "_bucket"),
            (sample.name.strip_suffix("_sum").unwrap_or(""), "_sum"),
            (sample.name.strip_suffix("_count").unwrap_or(""), "_count"),
        ]
        .into_iter()
        .find_map(|(family, suffix)| kinds.get(family).map(|kind| (family, *kind, suffix)));
        let (family, kind, suffix) = family_kind.unwrap_or((sample.name, "untyped", ""));
        if kind == "histogram" {
            let rest: Vec<(String, String)> = labels.iter().filter(|(k, _)| k != "le").cloned().collect();
            let series = histograms.entry((family.to_string(), rest)).or_default();
            match suffix {
                "_bucket" => {
                    // Finite bounds and `+Inf`, the overflow bucket.
                    let Some(le) = labels
                        .iter()
                        .find(|(k, _)| k == "le")
                        .and_then(|(_, v)| parse_value(v))
                        .filter(|le| le.is_finite() || *le == f64::INFINITY)
                    else {
                        continue;
                    };
                    series.bounds.insert(le.to_bits(), (le, value));
                }
                "_sum" => series.sum = Some(value),
                "_count" => series.count = Some(value),
                _ => {}
            }
            continue;
        }
        if kind == "summary" {
            continue;
        }
        let point = NumberDataPoint {
            attributes: labels.iter().map(|(k, v)| attribute(k, v)).collect(),
            start_time_unix_nano: start,
            time_unix_nano: now,
            as_double: value,
        };
        let metric = metrics.entry(family.to_string()).or_insert_with(|| Metric {
            name: family.to_string(),
            description: help.get(family).map(|h| h.to_string()).unwrap_or_default(),
            data: Some(match kind {
                "counter" => Data::Sum(Sum {
                    data_points: Vec::new(),
                    aggregation_temporality: CUMULATIVE,
                    is_monotonic: true,
                }),
                _ => Data::Gauge(Gauge::default()),
            }),
        });
        match metric.data.as_mut() {
            Some(Data::Sum(s)) => s.data_points.push(point),
            Some(Data::Gauge(g)) => g.data_points.push(point),
            _ => {}
        }
    }
    for ((family, labels), series) in histograms {
        // Bounds in order (`+Inf` last); per-bucket counts from the
        // cumulative ones.
        let mut ordered: Vec<(f64, f64)> = series.bounds.into_values().collect();
        ordered.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut bounds = Vec::new();
        let mut counts = Vec::new();
        let mut previous = 0.0;
        for (le, cumulative) in &ordered {
            if le.is_finite() {
                bounds.push(*le);
            }
            counts.push((cumulative - previous).max(0.0) as u64);
            previous = *cumulative;
        }
        // Without a `+Inf` bucket, the overflow bucket is what `_count`
        // says beyond the last bound.
        if ordered.last().is_none_or(|(le, _)| le.is_finite()) {
            counts.push((series.count.unwrap_or(previous) - previous).max(0.0) as u64);
        }
        let point = HistogramDataPoint {
            attributes: labels.iter().map(|(k, v)| attribute(k, v)).collect(),
            start_time_unix_nano: start,
            time_unix_nano: now,
            count: series.count.unwrap_or(previous).max(0.0) as u64,
            sum: series.sum,
            bucket_counts: counts,
            explicit_bounds: bounds,
        };
        let metric = metrics.entry(family.clone()).or_insert_with(|| Metric {
            name: family.clone(),
            description: help.get(family.as_str()).map(|h| h.to_string()).unwrap_or_default(),
            data: Some(Data::Histogram(Histogram {
                data_points: Vec::new(),
                aggregation_temporality: CUMULATIVE,
            })),
        });
        if let Some(Data::Histogram(h)) = metric.data.as_mut() {
            h.data_points.push(point);
        }
    }
    metrics.into_values().collect()
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Exports `metrics` as OTLP over gRPC to the Unix socket `socket`.
async fn export(socket: &str, service: &str, metrics: Vec<Metric>) -> anyhow::Result<()> {
    let path = PathBuf::from(socket);
    let channel = tonic::transport::Endpoint::try_from("http://localhost")
        .context("endpoint")?
        .connect_timeout(EXPORT_TIMEOUT)
        .timeout(EXPORT_TIMEOUT)
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
        .with_context(|| format!("connecting to {socket}"))?;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.context("the channel")?;
    let request = ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: vec![attribute("service.name", service)],
            }),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(InstrumentationScope {
                    name: "meridian-dp".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                metrics,
            }],
        }],
    };
    let codec = tonic_prost::ProstCodec::<ExportMetricsServiceRequest, ExportMetricsServiceResponse>::default();
    grpc.unary(
        tonic::Request::new(request),
        tonic::codegen::http::uri::PathAndQuery::from_static(EXPORT_PATH),
        codec,
    )
    .await
    .map_err(|s| anyhow::anyhow!("the collector answered {:?}: {}", s.code(), s.message()))?;
    Ok(())
}

/// Every `export.refresh_interval_seconds`, the metrics of `config`'s
/// request to `export`'s socket; failures are logged and retried at the
/// next interval.
async fn run_export(admin: SocketAddr, config: MetricsConfig, export_to: OtelExport) {
    let start = unix_nanos(SystemTime::now());
    let mut tick = tokio::time::interval(Duration::from_secs(export_to.refresh_interval_seconds.max(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let text = match crate::metrics::scrape(admin, &config.request).await {
            Ok(t) => t,
            Err((_, why)) => {
                tracing::warn!(endpoint = %export_to.endpoint, reason = %why, "no metrics to export this time");
                continue;
            }
        };
        let metrics = to_otlp(&text, start, unix_nanos(SystemTime::now()));
        let n = metrics.len();
        match export(&export_to.socket, &config.request.service, metrics).await {
            Ok(()) => tracing::debug!(endpoint = %export_to.endpoint, metrics = n, "exported metrics"),
            Err(e) => {
                tracing::warn!(endpoint = %export_to.endpoint, error = %format!("{e:#}"), "exporting metrics failed")
            }
        }
    }
}

/// GET `/` on the Unix socket `socket`: the body of a 200 answer, `None`
/// when nothing listens there.
async fn fetch_config(socket: &str) -> anyhow::Result<Option<MetricsConfig>> {
    let stream = match tokio::net::UnixStream::connect(socket).await {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None)
        }
        Err(e) => return Err(e).with_context(|| format!("connecting to {socket}")),
    };
    let (status, body) = crate::metrics::http_get(stream, "localhost", "/", 4 << 20).await?;
    anyhow::ensure!(status == hyper::StatusCode::OK, "answered {status}");
    let config = serde_json::from_slice(&body).context("the metrics configuration")?;
    Ok(Some(config))
}

/// Polls Envoy's metrics configuration at `socket` every [`POLL`] and keeps
/// one exporter running per OpenTelemetry backend it names, restarting
/// those whose configuration changed.
pub async fn run(socket: String, admin: SocketAddr) {
    let mut running: HashMap<OtelExport, (MetricsConfig, tokio::task::JoinHandle<()>)> = HashMap::new();
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let config = match tokio::time::timeout(EXPORT_TIMEOUT, fetch_config(&socket)).await {
            Ok(Ok(c)) => c.unwrap_or_default(),
            Ok(Err(e)) => {
                tracing::warn!(socket = %socket, error = %format!("{e:#}"), "reading the metrics configuration failed; keeping the exporters as they are");
                continue;
            }
            Err(_) => {
                tracing::warn!(socket = %socket, "the metrics configuration did not come within {EXPORT_TIMEOUT:?}");
                continue;
            }
        };
        let wanted: HashMap<OtelExport, MetricsConfig> = config
            .open_telemetry
            .iter()
            .map(|e| (e.clone(), config.clone()))
            .collect();
        running.retain(|export, (cfg, task)| {
            let keep = wanted.get(export) == Some(cfg);
            if !keep {
                task.abort();
                tracing::info!(endpoint = %export.endpoint, "stopped exporting metrics");
            }
            keep
        });
        for (export, cfg) in wanted {
            if running.contains_key(&export) {
                continue;
            }
            tracing::info!(endpoint = %export.endpoint, every_s = export.refresh_interval_seconds, "exporting metrics");
            let task = tokio::spawn(run_export(admin, cfg.clone(), export.clone()));
            running.insert(export, (cfg, task));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_become_sums_gauges_and_histograms() {
        let text = "# TYPE rq_total counter\n\
rq_total{envoy_cluster_name=\"a\\\"b\",mesh=\"m\"} 7\n\
# HELP up Whether it is up.\n\
# TYPE up gauge\n\
up{mesh=\"m\"} 1\n\
loose{mesh=\"m\"} 3.5\n\
# TYPE t histogram\n\
t_bucket{le=\"0.5\",mesh=\"m\"} 1\n\
t_bucket{le=\"1\",mesh=\"m\"} 3\n\
t_bucket{le=\"+Inf\",mesh=\"m\"} 4\n\
t_sum{mesh=\"m\"} 2.75\n\
t_count{mesh=\"m\"} 4\n";
        let metrics = to_otlp(text, 10, 20);
        let by_name: BTreeMap<&str, &Metric> = metrics.iter().map(|m| (m.name.as_str(), m)).collect();
        assert_eq!(
            by_name.keys().copied().collect::<Vec<_>>(),
            ["loose", "rq_total", "t", "up"]
        );
        let Some(Data::Sum(rq)) = &by_name["rq_total"].data else {
            panic!()
        };
        assert!(rq.is_monotonic && rq.aggregation_temporality == CUMULATIVE);
        assert_eq!(rq.data_points[0].as_double, 7.0);
        assert_eq!(
            rq.data_points[0].attributes[0],
            attribute("envoy_cluster_name", "a\"b"),
            "label values are unescaped"
        );
        let Some(Data::Gauge(up)) = &by_name["up"].data else {
            panic!()
        };
        assert_eq!(
            (up.data_points[0].start_time_unix_nano, up.data_points[0].time_unix_nano),
            (10, 20)
        );
        assert_eq!(by_name["up"].description, "Whether it is up.");
        assert!(
            matches!(by_name["loose"].data, Some(Data::Gauge(_))),
            "untyped samples are gauges"
        );
        let Some(Data::Histogram(t)) = &by_name["t"].data else {
            panic!()
        };
        let p = &t.data_points[0];
        assert_eq!(p.explicit_bounds, [0.5, 1.0]);
        assert_eq!(p.bucket_counts, [1, 2, 1], "per bucket, not cumulative");
        assert_eq!((p.count, p.sum), (4, Some(2.75)));
        assert_eq!(p.attributes, [attribute("mesh", "m")], "no le attribute");
    }
}
