//! The bootstraps the agent writes: gRPC's xDS bootstrap (the application's
//! `GRPC_XDS_BOOTSTRAP`, naming the relay) and Envoy's (ADS over TLS to the
//! zone with the token as initial metadata). Files are written whole
//! (temporary file, then rename) and readable by their owner only: the
//! Envoy bootstrap holds the token.

use std::path::Path;

use serde_json::{json, Map, Value};

/// The node as both bootstraps describe it.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeInfo {
    /// `<mesh>.<name>`, or the ingress name.
    pub id: String,
    /// Envoy's node cluster (the dataplane's first service), if any.
    pub cluster: Option<String>,
    /// Node metadata fields (JSON).
    pub metadata: Map<String, Value>,
}

impl NodeInfo {
    fn json(&self) -> Value {
        let mut node = json!({"id": self.id, "locality": {}});
        if let (Some(c), Value::Object(m)) = (&self.cluster, &mut node) {
            m.insert("cluster".into(), Value::String(c.clone()));
        }
        if !self.metadata.is_empty() {
            if let Value::Object(m) = &mut node {
                m.insert("metadata".into(), Value::Object(self.metadata.clone()));
            }
        }
        node
    }
}

/// gRPC's xDS bootstrap: the relay at `relay`, plaintext (it is local and
/// speaks TLS to the zone), the server listener template that makes an
/// xDS-enabled server ask for its inbound's Listener, and, when given, the
/// certificate providers of mesh mTLS (gRFC A29).
pub fn grpc(node: &NodeInfo, relay: std::net::SocketAddr, certificate_providers: Option<Value>) -> Value {
    let mut b = json!({
        "xds_servers": [{
            "server_uri": relay.to_string(),
            "channel_creds": [{"type": "insecure"}],
            "server_features": ["xds_v3"],
        }],
        "node": node.json(),
        "server_listener_resource_name_template": "grpc/server?xds.resource.listening_address=%s",
    });
    if let (Some(p), Value::Object(m)) = (certificate_providers, &mut b) {
        m.insert("certificate_providers".into(), p);
    }
    b
}

/// Where Envoy reaches the zone.
#[derive(Debug, Clone, PartialEq)]
pub struct EnvoyUpstream {
    pub host: String,
    pub port: u16,
    pub ca_file: String,
    pub token: String,
}

/// The name of the bootstrap's static cluster of the zone's xDS server.
pub const XDS_CLUSTER: &str = "meridian_xds";

/// Envoy's bootstrap: ADS over gRPC to the static cluster of the zone, TLS
/// verified with the zone's CA for the zone's name, the token in the
/// stream's initial metadata; listeners and clusters from ADS.
pub fn envoy(node: &NodeInfo, up: &EnvoyUpstream, admin: std::net::SocketAddr) -> Value {
    let is_ip = up.host.parse::<std::net::IpAddr>().is_ok();
    let san_type = if is_ip { "IP_ADDRESS" } else { "DNS" };
    let mut node = node.json();
    if let Value::Object(m) = &mut node {
        // Envoy's Locality has no empty form to keep; it is set by the zone.
        m.remove("locality");
    }
    let mut tls = json!({
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        "common_tls_context": {
            "validation_context": {
                "trusted_ca": {"filename": up.ca_file},
                "match_typed_subject_alt_names": [{
                    "san_type": san_type,
                    "matcher": {"exact": up.host},
                }],
            },
        },
    });
    // SNI names hosts, never IP addresses (RFC 6066); an IP is verified by
    // the SAN matcher alone.
    if let (false, Value::Object(m)) = (is_ip, &mut tls) {
        m.insert("sni".into(), Value::String(up.host.clone()));
    }
    json!({
        "node": node,
        "admin": {
            "address": {"socket_address": {"address": admin.ip().to_string(), "port_value": admin.port()}},
        },
        "dynamic_resources": {
            "ads_config": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "set_node_on_first_message_only": true,
                "grpc_services": [{
                    "envoy_grpc": {"cluster_name": XDS_CLUSTER},
                    "initial_metadata": [{"key": "authorization", "value": format!("Bearer {}", up.token)}],
                }],
            },
            "cds_config": {"ads": {}, "resource_api_version": "V3"},
            "lds_config": {"ads": {}, "resource_api_version": "V3"},
        },
        "static_resources": {
            "clusters": [{
                "name": XDS_CLUSTER,
                "type": if is_ip { "STATIC" } else { "STRICT_DNS" },
                "connect_timeout": "5s",
                "typed_extension_protocol_options": {
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                        "explicit_http_config": {"http2_protocol_options": {}},
                    },
                },
                "load_assignment": {
                    "cluster_name": XDS_CLUSTER,
                    "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                        "address": up.host, "port_value": up.port}}}}]}],
                },
                "transport_socket": {
                    "name": "envoy.transport_sockets.tls",
                    "typed_config": tls,
                },
            }],
        },
    })
}

/// Writes `value` as JSON to `path`, whole and readable by the owner only.
pub fn write(path: &Path, value: &Value) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    let text = serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?;
    f.write_all(&text)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn node() -> NodeInfo {
        NodeInfo {
            id: "default.web-1".into(),
            cluster: Some("web".into()),
            metadata: [("dataplane".to_string(), json!({"networking": {"address": "10.0.0.1"}}))]
                .into_iter()
                .collect(),
        }
    }

    #[test]
    fn grpc_bootstrap_names_the_relay() {
        let b = grpc(&node(), "127.0.0.1:41000".parse().unwrap(), None);
        assert_eq!(b["xds_servers"][0]["server_uri"], "127.0.0.1:41000");
        assert_eq!(b["xds_servers"][0]["channel_creds"][0]["type"], "insecure");
        assert_eq!(b["node"]["id"], "default.web-1");
        assert_eq!(b["node"]["locality"], json!({}));
    }

    #[test]
    fn envoy_bootstrap_verifies_the_zone_and_carries_the_token() {
        let up = EnvoyUpstream {
            host: "zone-1.example".into(),
            port: 5678,
            ca_file: "/etc/ca.pem".into(),
            token: "TOKEN".into(),
        };
        let b = envoy(&node(), &up, "127.0.0.1:9901".parse().unwrap());
        let ads = &b["dynamic_resources"]["ads_config"]["grpc_services"][0];
        assert_eq!(ads["initial_metadata"][0]["value"], "Bearer TOKEN");
        let c = &b["static_resources"]["clusters"][0];
        assert_eq!(c["type"], "STRICT_DNS");
        let tls = &c["transport_socket"]["typed_config"];
        assert_eq!(tls["sni"], "zone-1.example");
        assert_eq!(
            tls["common_tls_context"]["validation_context"]["match_typed_subject_alt_names"][0]["san_type"],
            "DNS"
        );
        let ip = envoy(
            &node(),
            &EnvoyUpstream {
                host: "127.0.0.1".into(),
                ..up
            },
            "127.0.0.1:9901".parse().unwrap(),
        );
        assert_eq!(ip["static_resources"]["clusters"][0]["type"], "STATIC");
    }

    #[test]
    fn files_are_written_whole_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub").join("b.json");
        write(&p, &json!({"a": 1})).unwrap();
        let read: Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        assert_eq!(read, json!({"a": 1}));
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
