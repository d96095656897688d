//! A proxy's resources as Envoy's admin `/config_dump` shows them: an
//! `envoy.admin.v3.ConfigDump` of the dynamic clusters, endpoints (only
//! when asked, as Envoy's `?include_eds`), listeners, route configurations
//! and secrets, in proto3 JSON with Envoy's field names, so that Envoy's
//! tools and any protobuf JSON parser read it. Private keys are replaced by
//! `[redacted]`, as Envoy's admin does.
//!
//! The JSON is written from descriptors compiled at build time from the
//! `.proto` files of `envoy-types` (see `build.rs`): every `Any` inside is
//! expanded by its type, and a type without a descriptor is an error, not a
//! silently opaque blob.

use std::sync::OnceLock;

use envoy_types::pb::envoy::admin::v3::{
    clusters_config_dump, endpoints_config_dump, listeners_config_dump, routes_config_dump, secrets_config_dump,
    ClustersConfigDump, ConfigDump, EndpointsConfigDump, ListenersConfigDump, RoutesConfigDump, SecretsConfigDump,
};
use envoy_types::pb::envoy::config::core::v3::{data_source, DataSource};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{secret, Secret};
use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};
use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};
use serde_json::Value;

use crate::resources::{ResourceSet, CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET};

static DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/envoy_descriptors.bin"));

/// What Envoy's admin shows in place of a private key.
pub const REDACTED: &str = "[redacted]";

#[derive(Debug, thiserror::Error)]
pub enum ConfigDumpError {
    #[error("the Envoy descriptors built into this binary do not load: {0}")]
    Descriptors(String),
    #[error("{0} has no descriptor here: it cannot be shown as JSON")]
    UnknownType(String),
    #[error("a resource of type {type_url} named {name:?} does not decode: {reason}")]
    Undecodable {
        type_url: String,
        name: String,
        reason: String,
    },
    #[error("writing the configuration dump as JSON: {0}")]
    Json(String),
}

/// The descriptors of the Envoy messages a dump can hold.
pub fn descriptors() -> Result<&'static DescriptorPool, ConfigDumpError> {
    static POOL: OnceLock<Result<DescriptorPool, String>> = OnceLock::new();
    POOL.get_or_init(|| DescriptorPool::decode(DESCRIPTORS).map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| ConfigDumpError::Descriptors(e.clone()))
}

/// The `ConfigDump` of `set` (endpoints only with `include_eds`).
pub fn config_dump(set: &ResourceSet, include_eds: bool) -> Result<ConfigDump, ConfigDumpError> {
    let mut configs = Vec::new();
    let clusters = ClustersConfigDump {
        version_info: set.type_version(CLUSTER),
        dynamic_active_clusters: set
            .of_type(CLUSTER)
            .map(|r| clusters_config_dump::DynamicCluster {
                version_info: r.version.clone(),
                cluster: Some(r.body.clone()),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    configs.push(pack(&clusters));
    if include_eds {
        let endpoints = EndpointsConfigDump {
            dynamic_endpoint_configs: set
                .of_type(ENDPOINT)
                .map(|r| endpoints_config_dump::DynamicEndpointConfig {
                    version_info: r.version.clone(),
                    endpoint_config: Some(r.body.clone()),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        configs.push(pack(&endpoints));
    }
    let listeners = ListenersConfigDump {
        version_info: set.type_version(LISTENER),
        dynamic_listeners: set
            .of_type(LISTENER)
            .map(|r| listeners_config_dump::DynamicListener {
                name: r.name.clone(),
                active_state: Some(listeners_config_dump::DynamicListenerState {
                    version_info: r.version.clone(),
                    listener: Some(r.body.clone()),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    configs.push(pack(&listeners));
    let routes = RoutesConfigDump {
        dynamic_route_configs: set
            .of_type(ROUTE)
            .map(|r| routes_config_dump::DynamicRouteConfig {
                version_info: r.version.clone(),
                route_config: Some(r.body.clone()),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    configs.push(pack(&routes));
    let mut secrets = Vec::new();
    for r in set.of_type(SECRET) {
        let mut secret = Secret::decode(r.body.value.as_slice()).map_err(|e| ConfigDumpError::Undecodable {
            type_url: SECRET.to_string(),
            name: r.name.clone(),
            reason: e.to_string(),
        })?;
        redact(&mut secret);
        secrets.push(secrets_config_dump::DynamicSecret {
            name: r.name.clone(),
            version_info: r.version.clone(),
            secret: Some(pack(&secret)),
            ..Default::default()
        });
    }
    configs.push(pack(&SecretsConfigDump {
        dynamic_active_secrets: secrets,
        ..Default::default()
    }));
    Ok(ConfigDump { configs })
}

/// [`config_dump`] in proto3 JSON, with Envoy's (snake_case) field names.
pub fn config_dump_json(set: &ResourceSet, include_eds: bool) -> Result<Value, ConfigDumpError> {
    to_json(&config_dump(set, include_eds)?)
}

/// Any Envoy message whose type has a descriptor here, in proto3 JSON.
pub fn to_json<M: Message + Name>(msg: &M) -> Result<Value, ConfigDumpError> {
    let pool = descriptors()?;
    let full_name = M::full_name();
    let descriptor = pool
        .get_message_by_name(&full_name)
        .ok_or(ConfigDumpError::UnknownType(full_name))?;
    let dynamic = DynamicMessage::decode(descriptor, msg.encode_to_vec().as_slice())
        .map_err(|e| ConfigDumpError::Json(e.to_string()))?;
    let options = SerializeOptions::new().use_proto_field_name(true);
    dynamic
        .serialize_with_options(serde_json::value::Serializer, &options)
        .map_err(|e| {
            // The one way a decoded message fails to serialize: an Any
            // whose type the pool does not know ("message 'x.Y' not found").
            let text = e.to_string();
            match text
                .strip_prefix("message '")
                .and_then(|rest| rest.strip_suffix("' not found"))
            {
                Some(name) => ConfigDumpError::UnknownType(name.to_string()),
                None => ConfigDumpError::Json(text),
            }
        })
}

fn pack<M: Message + Name>(m: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: m.encode_to_vec(),
    }
}

/// Replaces a certificate's private key by [`REDACTED`].
pub fn redact(secret: &mut Secret) {
    if let Some(secret::Type::TlsCertificate(c)) = &mut secret.r#type {
        if c.private_key.is_some() {
            c.private_key = Some(DataSource {
                specifier: Some(data_source::Specifier::InlineString(REDACTED.into())),
                ..Default::default()
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::TlsCertificate;

    #[test]
    fn the_built_in_descriptors_know_every_served_type_and_the_dump() {
        let pool = descriptors().unwrap();
        for t in crate::resources::TYPES_IN_ORDER {
            let name = t.trim_start_matches("type.googleapis.com/");
            assert!(pool.get_message_by_name(name).is_some(), "{name}");
        }
        assert!(pool.get_message_by_name("envoy.admin.v3.ConfigDump").is_some());
    }

    #[test]
    fn a_dump_names_its_parts_by_type_and_hides_keys() {
        let mut set = ResourceSet::new();
        set.insert(
            CLUSTER,
            "backend",
            &Cluster {
                name: "backend".into(),
                ..Default::default()
            },
        );
        let key = DataSource {
            specifier: Some(data_source::Specifier::InlineString(
                "-----BEGIN PRIVATE KEY-----".into(),
            )),
            ..Default::default()
        };
        set.insert(
            SECRET,
            "identity",
            &Secret {
                name: "identity".into(),
                r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
                    private_key: Some(key),
                    ..Default::default()
                })),
            },
        );
        let json = config_dump_json(&set, false).unwrap();
        let text = json.to_string();
        assert!(!text.contains("PRIVATE KEY"), "{text}");
        let configs = json["configs"].as_array().unwrap();
        let types: Vec<&str> = configs.iter().map(|c| c["@type"].as_str().unwrap()).collect();
        assert_eq!(
            types,
            [
                "type.googleapis.com/envoy.admin.v3.ClustersConfigDump",
                "type.googleapis.com/envoy.admin.v3.ListenersConfigDump",
                "type.googleapis.com/envoy.admin.v3.RoutesConfigDump",
                "type.googleapis.com/envoy.admin.v3.SecretsConfigDump",
            ]
        );
        let cluster = &configs[0]["dynamic_active_clusters"][0]["cluster"];
        assert_eq!(cluster["@type"], CLUSTER);
        assert_eq!(cluster["name"], "backend");
        let secret = &configs[3]["dynamic_active_secrets"][0]["secret"];
        assert_eq!(secret["tls_certificate"]["private_key"]["inline_string"], REDACTED);
        let with_eds = config_dump_json(&set, true).unwrap();
        assert_eq!(
            with_eds["configs"][1]["@type"],
            "type.googleapis.com/envoy.admin.v3.EndpointsConfigDump"
        );
    }

    #[test]
    fn an_any_of_a_type_without_descriptor_is_an_error_naming_it() {
        let mut set = ResourceSet::new();
        let cluster = Cluster {
            name: "c".into(),
            typed_extension_protocol_options: [(
                "x".to_string(),
                Any {
                    type_url: "type.googleapis.com/made.up.Type".into(),
                    value: vec![],
                },
            )]
            .into_iter()
            .collect(),
            ..Default::default()
        };
        set.insert(CLUSTER, "c", &cluster);
        match config_dump_json(&set, false) {
            Err(ConfigDumpError::UnknownType(t)) => assert_eq!(t, "made.up.Type"),
            other => panic!("{other:?}"),
        }
    }
}
