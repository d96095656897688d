//! Feeds arbitrary bytes to what meridian-dp's metrics endpoint decodes: the
//! first line as the scrape's `x-meridian-meshmetric` header (JSON), the
//! rest as Prometheus text from Envoy or an application, rendered and then
//! turned into OTLP metrics. Any panic is a bug. Every line rendered is a
//! comment or a sample that carries the labels added (or already had
//! them), and every OTLP histogram has one more bucket than bounds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meridian_dp::metrics::{label_value, render, Filter};
use meridian_dp::otlp::{to_otlp, Data};
use meridian_xds::generate::observability::MetricsRequest;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (header, body) = text.split_once('\n').unwrap_or((text, ""));
    let filter = serde_json::from_str::<MetricsRequest>(header)
        .ok()
        .and_then(|r| Filter::new(r.profiles.as_ref()).ok());
    let mut out = String::new();
    render(body, filter.as_ref(), &[("mesh", "m")], &mut out);
    for line in out.lines() {
        assert!(line.starts_with('#') || label_value(line, "mesh").is_some(), "{line:?}");
    }
    for metric in to_otlp(&out, 1, 2) {
        if let Some(Data::Histogram(h)) = metric.data {
            for p in h.data_points {
                assert_eq!(p.bucket_counts.len(), p.explicit_bounds.len() + 1, "{}", metric.name);
            }
        }
    }
});
