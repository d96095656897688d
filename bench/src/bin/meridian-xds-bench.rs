//! xDS benchmarks: generation time for large meshes. Prints a table; see
//! BENCHMARKS.md for the commands and results.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use meridian_core::dataplane::Dataplane;
use meridian_core::defaults::initial_policies;
use meridian_core::mesh::Mesh;
use meridian_xds::generate::{invariants, proxyless, sidecar, PolicyResolver};
use meridian_xds::resources::{ResourceSet, CLUSTER, ENDPOINT, LISTENER, ROUTE};
use meridian_xds::snapshot::{DataplaneEntry, MeshSnapshot, ProxyContext, ProxyKind};
use meridian_zone::policies::MeshPolicies;
use serde_json::json;

fn dataplane(address: &str, service: &str, outbounds: &[String]) -> anyhow::Result<Dataplane> {
    dataplane_from(address, service, outbounds, 10000)
}

/// A dataplane whose outbounds listen from `first_port` on.
fn dataplane_from(address: &str, service: &str, outbounds: &[String], first_port: usize) -> anyhow::Result<Dataplane> {
    let outbound: Vec<_> = outbounds
        .iter()
        .enumerate()
        .map(|(i, s)| json!({"port": first_port + i, "tags": {"kuma.io/service": s}}))
        .collect();
    Ok(serde_json::from_value(json!({"networking": {"address": address,
        "inbound": [{"port": 8080, "tags": {"kuma.io/service": service, "kuma.io/protocol": "grpc", "version": "v1"}}],
        "outbound": outbound}}))?)
}

/// A mesh with `services` services of `per_service` dataplanes each, and
/// the mesh's default policies.
fn snapshot(services: usize, per_service: usize) -> anyhow::Result<MeshSnapshot> {
    let mut dataplanes = Vec::with_capacity(services * per_service);
    for s in 0..services {
        for i in 0..per_service {
            let n = s * per_service + i;
            let address = format!("10.{}.{}.{}", n / 65536, (n / 256) % 256, n % 256);
            dataplanes.push(DataplaneEntry {
                name: format!("svc-{s}-{i}"),
                spec: dataplane(&address, &format!("svc-{s}"), &[])?,
            });
        }
    }
    let mut policies: BTreeMap<String, Vec<(String, serde_json::Value)>> = BTreeMap::new();
    for doc in initial_policies("default", &Mesh::default()) {
        policies
            .entry(doc.key.kind.name().to_string())
            .or_default()
            .push((doc.key.name, doc.spec));
    }
    Ok(MeshSnapshot {
        zone: "zone-1".into(),
        mesh: "default".into(),
        spec: Mesh::default(),
        dataplanes,
        remote_ingresses: Vec::new(),
        policies,
        mtls: None,
    })
}

/// `snap` with all three observability policies in force mesh-wide:
/// MeshAccessLog (a file and an OpenTelemetry collector, inbound and
/// outbound), MeshTrace (Zipkin) and MeshMetric (Prometheus).
fn with_observability(mut snap: MeshSnapshot) -> MeshSnapshot {
    let backends = serde_json::json!({"backends": [
        {"type": "File", "file": {"path": "/var/log/mesh.log"}},
        {"type": "OpenTelemetry", "openTelemetry": {"endpoint": "otel-collector:4317"}}]});
    let add = |snap: &mut MeshSnapshot, kind: &str, spec: serde_json::Value| {
        snap.policies
            .entry(kind.to_string())
            .or_default()
            .push((format!("bench-{kind}"), spec));
    };
    add(
        &mut snap,
        "MeshAccessLog",
        serde_json::json!({"targetRef": {"kind": "Mesh"},
            "to": [{"targetRef": {"kind": "Mesh"}, "default": backends}],
            "from": [{"targetRef": {"kind": "Mesh"}, "default": backends}]}),
    );
    add(
        &mut snap,
        "MeshTrace",
        serde_json::json!({"targetRef": {"kind": "Mesh"}, "default": {"backends": [
            {"type": "Zipkin", "zipkin": {"url": "http://zipkin:9411/api/v2/spans"}}],
            "sampling": {"overall": 50}}}),
    );
    add(
        &mut snap,
        "MeshMetric",
        serde_json::json!({"targetRef": {"kind": "Mesh"}, "default": {"backends": [
            {"type": "Prometheus", "prometheus": {"port": 5670}}]}}),
    );
    snap
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * q).round() as usize]
}

fn measure(name: &str, iterations: usize, mut f: impl FnMut() -> ResourceSet) -> anyhow::Result<()> {
    let mut samples = Vec::with_capacity(iterations);
    let mut last = ResourceSet::new();
    for _ in 0..iterations {
        let start = Instant::now();
        last = f();
        samples.push(start.elapsed());
    }
    let problems = invariants::check(&last);
    if !problems.is_empty() {
        anyhow::bail!(
            "{name}: generated config violates invariants: {:?}",
            &problems[..problems.len().min(5)]
        );
    }
    samples.sort();
    let bytes: usize = [LISTENER, ROUTE, CLUSTER, ENDPOINT]
        .iter()
        .flat_map(|t| last.of_type(t).map(|r| r.body.value.len()))
        .sum();
    println!(
        "| {name:<54} | {:>5} | {:>5} | {:>5} | {:>6} | {:>7.0} KiB | {:>8.3} | {:>8.3} |",
        last.len(LISTENER),
        last.len(ROUTE),
        last.len(CLUSTER),
        last.len(ENDPOINT),
        bytes as f64 / 1024.0,
        percentile(&samples, 0.5).as_secs_f64() * 1000.0,
        percentile(&samples, 0.99).as_secs_f64() * 1000.0,
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let services = 1000;
    let per_service = 10;
    let iterations: usize = std::env::var("MERIDIAN_BENCH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let snap = snapshot(services, per_service)?;
    let all: Vec<String> = (0..services).map(|s| format!("svc-{s}")).collect();
    let sidecar_proxy = ProxyContext {
        mesh: "default".into(),
        name: "web".into(),
        kind: ProxyKind::Sidecar,
        dataplane: dataplane("10.200.0.1", "web", &all)?,
        tls: Default::default(),
    };
    let client = ProxyContext {
        mesh: "default".into(),
        name: "client".into(),
        kind: ProxyKind::Proxyless,
        dataplane: dataplane("10.200.0.2", "client", &[])?,
        tls: Default::default(),
    };
    println!("generation: {services} services x {per_service} dataplanes ({} endpoints), default policies; {iterations} runs each; times in ms\n", services * per_service);
    println!("| proxy                                                  |   LDS |   RDS |   CDS |    EDS |        bytes |      p50 |      p99 |");
    println!("|--------------------------------------------------------|-------|-------|-------|--------|--------------|----------|----------|");
    let start = Instant::now();
    let resolver = MeshPolicies::new(&snap);
    let resolver_time = start.elapsed();
    // The zone regenerates every proxy of a mesh against one snapshot and
    // one resolver, whose cache the proxies share: the first proxy after a
    // change builds everything ("cold"), the others reuse the clusters,
    // endpoints, routes (and listeners, where their outbounds are alike).
    // The same three rows again with every observability policy in force.
    let observed = with_observability(snapshot(services, per_service)?);
    for (snap, suffix) in [(&snap, ""), (&observed, " +obs")] {
        let resolver = MeshPolicies::new(snap);
        measure(
            &format!("sidecar, 1,000 outbounds: first after a change{suffix}"),
            iterations,
            || {
                let r: Box<dyn PolicyResolver> = Box::new(MeshPolicies::new(snap));
                sidecar::generate(snap, &sidecar_proxy, r.as_ref())
            },
        )?;
        let _ = sidecar::generate(snap, &sidecar_proxy, &resolver);
        let alike: Vec<ProxyContext> = (0..iterations)
            .map(|i| ProxyContext {
                name: format!("web-{i}"),
                ..sidecar_proxy.clone()
            })
            .collect();
        let mut next = alike.iter();
        measure(
            &format!("sidecar, next proxy, same outbounds{suffix}"),
            iterations,
            || {
                next.next()
                    .map(|p| sidecar::generate(snap, p, &resolver))
                    .unwrap_or_default()
            },
        )?;
        let own_ports: Vec<ProxyContext> = (0..iterations)
            .map(|i| -> anyhow::Result<ProxyContext> {
                Ok(ProxyContext {
                    name: format!("api-{i}"),
                    dataplane: dataplane_from("10.200.0.3", "api", &all, 20000 + i)?,
                    ..sidecar_proxy.clone()
                })
            })
            .collect::<anyhow::Result<_>>()?;
        let mut next = own_ports.iter();
        measure(
            &format!("sidecar, next proxy, its own outbound ports{suffix}"),
            iterations,
            || {
                next.next()
                    .map(|p| sidecar::generate(snap, p, &resolver))
                    .unwrap_or_default()
            },
        )?;
    }
    measure(
        "proxyless client, 1,000 services: first after a change",
        iterations,
        || {
            let r: Box<dyn PolicyResolver> = Box::new(MeshPolicies::new(&snap));
            proxyless::generate(&snap, &client, r.as_ref())
        },
    )?;
    let _ = proxyless::generate(&snap, &client, &resolver);
    let clients: Vec<ProxyContext> = (0..iterations)
        .map(|i| ProxyContext {
            name: format!("client-{i}"),
            ..client.clone()
        })
        .collect();
    let mut next = clients.iter();
    measure("proxyless client, 1,000 services: next client", iterations, || {
        next.next()
            .map(|p| proxyless::generate(&snap, p, &resolver))
            .unwrap_or_default()
    })?;
    let small = snapshot(10, 3)?;
    measure(
        "proxyless client, 10 services: first after a change",
        iterations * 10,
        || {
            let r = MeshPolicies::new(&small);
            proxyless::generate(&small, &client, &r)
        },
    )?;
    println!(
        "\nresolver construction (decoding the mesh's policies): {:.3} ms",
        resolver_time.as_secs_f64() * 1000.0
    );
    // Every resource's version is a hash of its encoding: the two hashes
    // over the bytes of the sidecar's configuration with observability.
    let set = sidecar::generate(&observed, &sidecar_proxy, &MeshPolicies::new(&observed));
    let bodies: Vec<Vec<u8>> = [LISTENER, ROUTE, CLUSTER, ENDPOINT]
        .iter()
        .flat_map(|t| set.of_type(t).map(|r| r.body.value.clone()).collect::<Vec<_>>())
        .collect();
    let total: usize = bodies.iter().map(Vec::len).sum();
    let time = |f: fn(&[u8]) -> String| {
        let mut samples: Vec<f64> = (0..iterations)
            .map(|_| {
                let t = Instant::now();
                for b in &bodies {
                    std::hint::black_box(f(b));
                }
                t.elapsed().as_secs_f64() * 1000.0
            })
            .collect();
        samples.sort_by(f64::total_cmp);
        samples[samples.len() / 2]
    };
    let fnv = time(meridian_xds::resources::hash_hex);
    let words = time(meridian_xds::resources::version_hex);
    println!(
        "versions of {} resources ({} KiB), p50: FNV-1a byte by byte {fnv:.3} ms, word by word (version_hex) {words:.3} ms",
        bodies.len(),
        total / 1024
    );
    Ok(())
}
