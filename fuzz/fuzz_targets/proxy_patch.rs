//! Feeds arbitrary MeshProxyPatch modifications (a JSON document decoded
//! as `appendModifications`, values and JSON patches included) to the
//! patcher (`meridian_xds::generate::patch::apply`) over a sidecar's
//! generated configuration. Any panic is a bug: a modification that cannot
//! apply is a `PatchError`; one that applies yields a configuration that
//! passes the structural invariants.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meridian_core::policy::meshproxypatch::Conf;
use meridian_xds::generate::{invariants, patch, sidecar, NoPolicies};
use meridian_xds::snapshot::{DataplaneEntry, MeshSnapshot, ProxyContext, ProxyKind};
use std::sync::OnceLock;

fn base() -> &'static (meridian_xds::resources::ResourceSet, ProxyContext) {
    static BASE: OnceLock<(meridian_xds::resources::ResourceSet, ProxyContext)> = OnceLock::new();
    BASE.get_or_init(|| {
        let web: meridian_core::dataplane::Dataplane = serde_json::from_value(serde_json::json!({
            "networking": {"address": "10.0.0.1",
                "inbound": [{"port": 15001, "servicePort": 8080, "tags": {"kuma.io/service": "web", "kuma.io/protocol": "http"}},
                            {"port": 15002, "tags": {"kuma.io/service": "web-admin"}}],
                "outbound": [{"port": 10001, "tags": {"kuma.io/service": "backend"}}]}}))
        .expect("a valid dataplane");
        let backend: meridian_core::dataplane::Dataplane = serde_json::from_value(serde_json::json!({
            "networking": {"address": "10.0.0.2",
                "inbound": [{"port": 15001, "tags": {"kuma.io/service": "backend", "kuma.io/protocol": "http"}}]}}))
        .expect("a valid dataplane");
        let snap = MeshSnapshot {
            zone: "z".into(),
            mesh: "default".into(),
            dataplanes: vec![
                DataplaneEntry { name: "web-1".into(), spec: web.clone() },
                DataplaneEntry { name: "backend-1".into(), spec: backend },
            ],
            ..Default::default()
        };
        let proxy = ProxyContext {
            mesh: "default".into(),
            name: "web-1".into(),
            kind: ProxyKind::Sidecar,
            dataplane: web,
            tls: Default::default(),
        };
        (sidecar::generate(&snap, &proxy, &NoPolicies), proxy)
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(modifications) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let Ok(conf) = serde_json::from_value::<Conf>(serde_json::json!({"appendModifications": modifications})) else {
        return;
    };
    let (set, proxy) = base();
    if let Ok(patched) = patch::apply(set, &conf, &proxy.dataplane.networking) {
        assert_eq!(invariants::check(&patched), Vec::<String>::new());
    }
});
