//! Prometheus metrics of the zone's proxy side. The ADS loop counts
//! responses, ACKs and NACKs by type and times each response to its ACK;
//! the zone counts connected proxies by mesh and kind and times
//! generation. The struct is registered on a registry the caller owns; an
//! unregistered one ([`XdsMetrics::default`]) counts into nothing.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::snapshot::ProxyKind;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabel {
    pub r#type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProxyLabel {
    pub mesh: String,
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    pub code: &'static str,
}

#[derive(Clone)]
pub struct XdsMetrics {
    pub responses_sent: Family<TypeLabel, Counter>,
    pub responses_acked: Family<TypeLabel, Counter>,
    pub responses_nacked: Family<TypeLabel, Counter>,
    /// From a response's send to the proxy's ACK or NACK of that type.
    pub push_ack: Family<TypeLabel, Histogram>,
    pub connected: Family<ProxyLabel, Gauge>,
    /// Streams that ended before a proxy was admitted, by gRPC code.
    pub refused: Family<CodeLabel, Counter>,
    /// Generation of one proxy's whole configuration.
    pub generation: Family<KindLabel, Histogram>,
}

impl Default for XdsMetrics {
    fn default() -> Self {
        XdsMetrics {
            responses_sent: Family::default(),
            responses_acked: Family::default(),
            responses_nacked: Family::default(),
            // 100 µs to ~6.5 s.
            push_ack: Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.0001, 2.0, 17))),
            connected: Family::default(),
            refused: Family::default(),
            // 10 µs to ~0.65 s.
            generation: Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.00001, 2.0, 17))),
        }
    }
}

impl XdsMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = XdsMetrics::default();
        // NACKs and refusals show from the start, at 0, so rates and alerts
        // have a series before the first one.
        for t in crate::resources::TYPES_IN_ORDER {
            if let Some(label) = type_label(t) {
                let _ = m.responses_nacked.get_or_create(&label);
            }
        }
        for code in [
            "UNAUTHENTICATED",
            "PERMISSION_DENIED",
            "NOT_FOUND",
            "ALREADY_EXISTS",
            "INVALID_ARGUMENT",
        ] {
            let _ = m.refused.get_or_create(&CodeLabel { code });
        }
        registry.register(
            "meridian_xds_responses_sent",
            "xDS responses sent to proxies, by type",
            m.responses_sent.clone(),
        );
        registry.register(
            "meridian_xds_responses_acked",
            "xDS responses proxies acknowledged, by type",
            m.responses_acked.clone(),
        );
        registry.register(
            "meridian_xds_responses_nacked",
            "xDS responses proxies rejected, by type",
            m.responses_nacked.clone(),
        );
        registry.register(
            "meridian_xds_push_ack_duration_seconds",
            "Time from sending a response to the proxy's ACK or NACK of its type",
            m.push_ack.clone(),
        );
        registry.register(
            "meridian_xds_connected_proxies",
            "Proxies with an admitted ADS stream, by mesh and kind",
            m.connected.clone(),
        );
        registry.register(
            "meridian_xds_streams_refused",
            "ADS streams refused before a proxy was admitted, by gRPC code",
            m.refused.clone(),
        );
        registry.register(
            "meridian_xds_generation_duration_seconds",
            "Time to generate one proxy's configuration, by proxy kind",
            m.generation.clone(),
        );
        m
    }

    /// Counts a connected proxy until the guard drops.
    pub fn proxy_connected(&self, mesh: &str, kind: ProxyKind) -> ConnectedGauge {
        let label = ProxyLabel {
            mesh: mesh.to_string(),
            kind: kind_name(kind),
        };
        self.connected.get_or_create(&label).inc();
        ConnectedGauge {
            connected: self.connected.clone(),
            label,
        }
    }

    pub fn generated(&self, kind: ProxyKind, took: Duration) {
        self.generation
            .get_or_create(&KindLabel { kind: kind_name(kind) })
            .observe(took.as_secs_f64());
    }
}

/// Holds one proxy in [`XdsMetrics::connected`].
pub struct ConnectedGauge {
    connected: Family<ProxyLabel, Gauge>,
    label: ProxyLabel,
}

impl Drop for ConnectedGauge {
    fn drop(&mut self) {
        self.connected.get_or_create(&self.label).dec();
    }
}

pub fn kind_name(kind: ProxyKind) -> &'static str {
    match kind {
        ProxyKind::Sidecar => "sidecar",
        ProxyKind::Proxyless => "proxyless",
        ProxyKind::Ingress => "ingress",
    }
}

/// The `type` label of a served type URL: its message name (`Cluster`);
/// `None` for a type Meridian does not serve, so a proxy cannot make
/// series up.
pub fn type_label(type_url: &str) -> Option<TypeLabel> {
    crate::resources::TYPES_IN_ORDER
        .iter()
        .find(|t| **t == type_url)
        .map(|t| TypeLabel {
            r#type: t.rsplit('.').next().unwrap_or(t),
        })
}

/// The `code` label of a gRPC status.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_labels_are_message_names_of_served_types_only() {
        assert_eq!(
            type_label("type.googleapis.com/envoy.config.cluster.v3.Cluster").map(|l| l.r#type),
            Some("Cluster")
        );
        assert_eq!(type_label("type.googleapis.com/made.up.Type"), None);
    }

    #[test]
    fn status_names_are_the_canonical_ones() {
        assert_eq!(code_name(tonic::Code::Unauthenticated), "UNAUTHENTICATED");
        assert_eq!(code_name(tonic::Code::PermissionDenied), "PERMISSION_DENIED");
        assert_eq!(code_name(tonic::Code::Ok), "OK");
    }

    #[test]
    fn a_connected_proxy_is_counted_while_its_guard_lives() {
        let m = XdsMetrics::default();
        let label = ProxyLabel {
            mesh: "m".into(),
            kind: "sidecar",
        };
        let a = m.proxy_connected("m", ProxyKind::Sidecar);
        let b = m.proxy_connected("m", ProxyKind::Sidecar);
        assert_eq!(m.connected.get_or_create(&label).get(), 2);
        drop(a);
        drop(b);
        assert_eq!(m.connected.get_or_create(&label).get(), 0);
    }
}
