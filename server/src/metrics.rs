//! Prometheus metrics of a control plane, each group held in a struct
//! registered on a registry that the caller owns (no process-global
//! registry): the API ([`ApiMetrics`]), KDS streams ([`KdsMetrics`]), store
//! operations ([`StoreMetrics`], through [`crate::metered_store`]) and the
//! process itself ([`ProcessCollector`]). The zone's xDS metrics live in
//! `meridian_xds::metrics`. Names carry their unit (`_seconds`, `_bytes`)
//! and counters end in `_total`, as Prometheus asks.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
pub use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub resource_type: String,
}

#[derive(Clone)]
pub struct ApiMetrics {
    pub requests: Family<RequestLabels, Counter>,
    pub request_seconds: Histogram,
    pub resources: Family<KindLabel, Gauge>,
    pub store_revision: Gauge,
    pub leader: Gauge,
}

impl ApiMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = ApiMetrics {
            requests: Family::default(),
            request_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            resources: Family::default(),
            store_revision: Gauge::default(),
            leader: Gauge::default(),
        };
        registry.register(
            "meridian_api_requests",
            "HTTP API requests by method and status",
            m.requests.clone(),
        );
        registry.register(
            "meridian_api_request_duration_seconds",
            "HTTP API request latency",
            m.request_seconds.clone(),
        );
        registry.register(
            "meridian_resources",
            "Resources in the store by type",
            m.resources.clone(),
        );
        registry.register(
            "meridian_store_revision",
            "Store revision seen by the cache",
            m.store_revision.clone(),
        );
        registry.register(
            "meridian_leader",
            "1 while this replica leads the one-time work (defaults), else 0",
            m.leader.clone(),
        );
        m
    }
}

/// A resource type's label (`type="Mesh"`, `type="Cluster"`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabel {
    pub r#type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ZoneLabel {
    pub zone: String,
}

/// KDS, on either end: the global counts per zone stream and per type what
/// it sends to zones and how they answer; a zone counts what it sends to
/// the global (its dataplanes and insights) and whether it is connected.
#[derive(Clone, Default)]
pub struct KdsMetrics {
    /// Open streams per zone (the global), or to the global (a zone: one
    /// label, `zone="<its own name>"`).
    pub streams: Family<ZoneLabel, Gauge>,
    pub responses_sent: Family<TypeLabel, Counter>,
    pub responses_acked: Family<TypeLabel, Counter>,
    pub responses_nacked: Family<TypeLabel, Counter>,
    /// Resources the other end sent and this one refused to store.
    pub resources_refused: Family<TypeLabel, Counter>,
}

impl KdsMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = KdsMetrics::default();
        // Failures show from the start, at 0, for every type, so rates and
        // alerts have a series before the first one.
        for kind in meridian_core::ResourceType::ALL {
            let _ = m.responses_nacked.get_or_create(&Self::type_label(kind));
            let _ = m.resources_refused.get_or_create(&Self::type_label(kind));
        }
        registry.register(
            "meridian_kds_streams",
            "Open KDS streams by zone (a zone counts its own streams to the global)",
            m.streams.clone(),
        );
        registry.register(
            "meridian_kds_responses_sent",
            "KDS responses sent, by resource type",
            m.responses_sent.clone(),
        );
        registry.register(
            "meridian_kds_responses_acked",
            "KDS responses the other end acknowledged, by resource type",
            m.responses_acked.clone(),
        );
        registry.register(
            "meridian_kds_responses_nacked",
            "KDS responses the other end rejected, by resource type",
            m.responses_nacked.clone(),
        );
        registry.register(
            "meridian_kds_resources_refused",
            "Resources received over KDS and refused (not stored), by resource type",
            m.resources_refused.clone(),
        );
        m
    }

    pub fn type_label(kind: meridian_core::ResourceType) -> TypeLabel {
        TypeLabel {
            r#type: kind.name().to_string(),
        }
    }

    /// Counts an open stream of `zone` until the guard drops.
    pub fn stream_opened(&self, zone: &str) -> StreamGauge {
        let label = ZoneLabel { zone: zone.to_string() };
        self.streams.get_or_create(&label).inc();
        StreamGauge {
            streams: self.streams.clone(),
            label,
        }
    }
}

/// Holds one open stream in [`KdsMetrics::streams`].
pub struct StreamGauge {
    streams: Family<ZoneLabel, Gauge>,
    label: ZoneLabel,
}

impl Drop for StreamGauge {
    fn drop(&mut self) {
        self.streams.get_or_create(&self.label).dec();
    }
}

impl crate::kds::StreamObserver for KdsMetrics {
    fn sent(&self, kind: meridian_core::ResourceType, _resources: usize) {
        self.responses_sent.get_or_create(&Self::type_label(kind)).inc();
    }

    fn acked(&self, kind: meridian_core::ResourceType, _applied: usize) {
        self.responses_acked.get_or_create(&Self::type_label(kind)).inc();
    }

    fn rejected(&self, kind: meridian_core::ResourceType, _reason: &str) {
        self.responses_nacked.get_or_create(&Self::type_label(kind)).inc();
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabel {
    pub operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationErrorLabel {
    pub operation: &'static str,
    pub error: &'static str,
}

/// The `operation` label values of [`StoreMetrics`].
pub const STORE_OPERATIONS: [&str; 11] = [
    "create",
    "update",
    "delete",
    "get",
    "list",
    "watch",
    "get_system",
    "put_system",
    "put_system_if_absent",
    "list_system",
    "delete_system",
];

/// Latency and failures of store operations, by operation.
#[derive(Clone)]
pub struct StoreMetrics {
    pub duration: Family<OperationLabel, Histogram>,
    pub errors: Family<OperationErrorLabel, Counter>,
}

impl StoreMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = StoreMetrics {
            // 50 µs to ~1.6 s.
            duration: Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.00005, 2.0, 16))),
            errors: Family::default(),
        };
        // The failure to alert on shows from the start, at 0.
        for operation in STORE_OPERATIONS {
            let _ = m.errors.get_or_create(&OperationErrorLabel {
                operation,
                error: "unavailable",
            });
        }
        registry.register(
            "meridian_store_operation_duration_seconds",
            "Time of store operations (create, update, delete, get, list, watch, system records)",
            m.duration.clone(),
        );
        registry.register(
            "meridian_store_operation_errors",
            "Store operations that failed, by operation and error kind",
            m.errors.clone(),
        );
        m
    }
}

/// The usual `process_*` metrics, read from `/proc/self` at each scrape
/// (on systems without `/proc` the collector reports nothing).
#[derive(Debug)]
pub struct ProcessCollector {
    /// Clock ticks per second of `/proc/self/stat`'s CPU times.
    ticks_per_second: f64,
    page_size: f64,
    boot_time: Option<f64>,
}

impl Default for ProcessCollector {
    fn default() -> Self {
        let ticks = rustix::param::clock_ticks_per_second();
        ProcessCollector {
            ticks_per_second: if ticks > 0 { ticks as f64 } else { 100.0 },
            page_size: rustix::param::page_size() as f64,
            boot_time: boot_time(),
        }
    }
}

/// What the process collector reads: fields of `/proc/self/stat` after the
/// command name, which may itself hold spaces or parentheses.
#[derive(Debug, Default, PartialEq)]
pub struct ProcStat {
    pub utime_ticks: u64,
    pub stime_ticks: u64,
    pub threads: u64,
    pub start_ticks: u64,
    pub vsize_bytes: u64,
    pub rss_pages: u64,
}

/// Parses `/proc/<pid>/stat`; `None` when it is not of that form.
pub fn parse_proc_stat(text: &str) -> Option<ProcStat> {
    let after = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields counted from 3 (state) in proc(5); f[0] is field 3.
    let at = |n: usize| f.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    Some(ProcStat {
        utime_ticks: at(14)?,
        stime_ticks: at(15)?,
        threads: at(20)?,
        start_ticks: at(22)?,
        vsize_bytes: at(23)?,
        rss_pages: at(24)?,
    })
}

fn boot_time() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse::<f64>().ok())
}

fn max_open_files() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3).and_then(|v| v.parse().ok())
}

impl prometheus_client::collector::Collector for ProcessCollector {
    fn encode(&self, mut encoder: prometheus_client::encoding::DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::gauge::ConstGauge;

        let Some(stat) = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .as_deref()
            .and_then(parse_proc_stat)
        else {
            return Ok(());
        };
        let cpu = ConstCounter::new((stat.utime_ticks + stat.stime_ticks) as f64 / self.ticks_per_second);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "User and system CPU time spent",
            None,
            cpu.metric_type(),
        )?)?;
        let mut gauge = |name: &str, help: &str, value: f64| -> Result<(), std::fmt::Error> {
            let g = ConstGauge::new(value);
            g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)
        };
        gauge(
            "process_resident_memory_bytes",
            "Resident memory size",
            stat.rss_pages as f64 * self.page_size,
        )?;
        gauge(
            "process_virtual_memory_bytes",
            "Virtual memory size",
            stat.vsize_bytes as f64,
        )?;
        gauge("process_threads", "Operating system threads", stat.threads as f64)?;
        if let Some(boot) = self.boot_time {
            gauge(
                "process_start_time_seconds",
                "Start time of the process since the Unix epoch",
                boot + stat.start_ticks as f64 / self.ticks_per_second,
            )?;
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            gauge("process_open_fds", "Open file descriptors", dir.count() as f64)?;
        }
        if let Some(max) = max_open_files() {
            gauge("process_max_fds", "Limit of open file descriptors", max as f64)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_fields_are_read_after_the_command_name() {
        // A command name with a space and a parenthesis, as proc(5) allows.
        let line = "4242 (meridian (x) y) S 1 4242 4242 0 -1 4194560 500 0 0 0 \
                    250 75 0 0 20 0 9 0 123456 104857600 2560 18446744073709551615 \
                    1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        let stat = parse_proc_stat(line).unwrap();
        assert_eq!(
            stat,
            ProcStat {
                utime_ticks: 250,
                stime_ticks: 75,
                threads: 9,
                start_ticks: 123456,
                vsize_bytes: 104857600,
                rss_pages: 2560,
            }
        );
        assert_eq!(parse_proc_stat("no parenthesis"), None);
        assert_eq!(parse_proc_stat("1 (x) S 1 2"), None);
    }

    #[test]
    fn the_process_collector_reports_this_process() {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(ProcessCollector::default()));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        for name in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_start_time_seconds",
        ] {
            assert!(out.contains(&format!("\n{name} ")), "{name} missing in:\n{out}");
        }
        let rss: f64 = out
            .lines()
            .find_map(|l| l.strip_prefix("process_resident_memory_bytes "))
            .and_then(|v| v.parse().ok())
            .unwrap();
        assert!(rss > 1_000_000.0, "resident memory {rss}");
    }
}
