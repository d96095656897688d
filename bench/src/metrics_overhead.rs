//! What the control plane's Prometheus metrics cost on the paths they
//! count, beside the same work without them, in one run:
//! - store operations through `MeteredStore` (a histogram observation, and
//!   a counter on failure) against the memory store alone: `get` of a
//!   present key, `get` of an absent one, `update`;
//! - the ADS loop's accounting of one response and its ACK (two counter
//!   increments, a histogram observation) and the zone's timing of one
//!   generation, against an empty loop.
//!
//! Rounds alternate between the two sides; the median round is reported.

use std::sync::Arc;
use std::time::Instant;

use meridian_core::{Resource, ResourceKey, ResourceType};
use meridian_server::metered_store::MeteredStore;
use meridian_server::metrics::{Registry, StoreMetrics};
use meridian_store::memory::MemoryStore;
use meridian_store::Store;
use meridian_xds::metrics::{type_label, XdsMetrics};
use meridian_xds::snapshot::ProxyKind;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

async fn per_op<F, Fut>(n: usize, mut f: F) -> f64
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let start = Instant::now();
    for i in 0..n {
        f(i).await;
    }
    start.elapsed().as_nanos() as f64 / n as f64
}

pub async fn run(ops: usize, rounds: usize) -> anyhow::Result<()> {
    let mut registry = Registry::default();
    let raw: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let metered = MeteredStore::wrap(Arc::new(MemoryStore::new()), StoreMetrics::register(&mut registry));
    let key = ResourceKey::new(ResourceType::Mesh, None, "m");
    let absent = ResourceKey::new(ResourceType::Mesh, None, "absent");
    let mut current = Vec::new();
    for store in [&raw, &metered] {
        let r = Resource::new(
            key.clone(),
            Default::default(),
            serde_json::json!({}),
            chrono::Utc::now(),
        );
        current.push(store.create(r).await?);
    }
    println!("metrics overhead: {ops} operations per round, {rounds} rounds alternating with and without metrics; ns per operation, median round\n");
    println!("| path                                   |  without |     with |  added |");
    println!("|----------------------------------------|----------|----------|--------|");
    let stores = [
        ("store get (present key)", 0),
        ("store get (absent key)", 1),
        ("store update", 2),
    ];
    for (what, op) in stores {
        let mut sides = [Vec::new(), Vec::new()];
        for round in 0..rounds {
            for side in [round % 2, 1 - round % 2] {
                let store = if side == 0 { &raw } else { &metered };
                let ns = match op {
                    0 => per_op(ops, |_| async { drop(store.get(&key).await) }).await,
                    1 => per_op(ops, |_| async { drop(store.get(&absent).await) }).await,
                    _ => {
                        let n = ops / 10;
                        let mut r = current[side].clone();
                        let start = Instant::now();
                        for _ in 0..n {
                            r = store.update(r).await?;
                        }
                        current[side] = r;
                        start.elapsed().as_nanos() as f64 / n as f64
                    }
                };
                sides[side].push(ns);
            }
        }
        let (a, b) = (median(sides[0].clone()), median(sides[1].clone()));
        println!("| {what:<38} | {a:>8.0} | {b:>8.0} | {:>+6.0} |", b - a);
    }

    // The ADS loop per response: sent + ACK counters and the send → ACK
    // histogram; the zone per generation: a clock read and a histogram.
    let xds = XdsMetrics::register(&mut registry);
    let url = meridian_xds::resources::CLUSTER;
    let mut rows = Vec::new();
    for (what, counted) in [
        ("ADS: one response and its ACK", true),
        ("zone: timing one generation", false),
    ] {
        let mut sides = [Vec::new(), Vec::new()];
        for round in 0..rounds {
            for side in [round % 2, 1 - round % 2] {
                let start = Instant::now();
                for i in 0..ops {
                    if side == 1 {
                        if counted {
                            let sent = Instant::now();
                            if let Some(label) = type_label(url) {
                                xds.responses_sent.get_or_create(&label).inc();
                                xds.responses_acked.get_or_create(&label).inc();
                                xds.push_ack.get_or_create(&label).observe(sent.elapsed().as_secs_f64());
                            }
                        } else {
                            let t = Instant::now();
                            std::hint::black_box(i);
                            xds.generated(ProxyKind::Sidecar, t.elapsed());
                        }
                    } else {
                        std::hint::black_box(i);
                    }
                }
                sides[side].push(start.elapsed().as_nanos() as f64 / ops as f64);
            }
        }
        rows.push((what, median(sides[0].clone()), median(sides[1].clone())));
    }
    for (what, a, b) in rows {
        println!("| {what:<38} | {a:>8.1} | {b:>8.1} | {:>+6.1} |", b - a);
    }
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)?;
    let series = text.lines().filter(|l| !l.starts_with('#')).count();
    println!(
        "\n(the registry then held {series} series; {} bytes of exposition)",
        text.len()
    );
    Ok(())
}
