//! Mesh mTLS in what the zone generates (DESIGN §11, docs/decisions/0006).
//!
//! # Envoy sidecars: SDS over ADS
//!
//! Two secrets per proxy, named as Kuma names them so that existing
//! dashboards and habits carry over: [`identity_secret`]
//! (`identity_cert:secret:<mesh>`, the proxy's certificate chain and key)
//! and [`mesh_ca_secret`] (`mesh_ca:secret:<mesh>`, the trust bundle: the
//! roots of every backend of the mesh). Listeners and clusters refer to them
//! by name through `sds_config: {ads: {}}`; Envoy waits for a secret it does
//! not have yet (a listener stays warming), so a proxy whose certificate is
//! not issued yet serves nothing rather than plaintext.
//!
//! - Inbound ([`sidecar_downstream`]): the proxy's certificate, a client
//!   certificate verified against the bundle and required to carry a URI
//!   SAN with the prefix `spiffe://<mesh>/`. STRICT: the listener's only
//!   filter chain is TLS. PERMISSIVE: a `tls_inspector` and two chains, TLS
//!   (`transport_protocol: tls`) and plaintext (`raw_buffer`), with the same
//!   filters; MeshTrafficPermission identities only ever match TLS callers.
//! - Outbound ([`sidecar_upstream`]): the proxy's certificate, the
//!   destination verified by its exact SPIFFE ID `spiffe://<mesh>/<service>`,
//!   and the server name [`super::ingress::sni`] of the destination (service
//!   and subset): what the other zones' ingresses route by, passing the TLS
//!   through untouched; local endpoints ignore it.
//!
//! # Proxyless gRPC: certificate provider instances (gRFC A29)
//!
//! gRPC has no SDS: its TLS contexts name a certificate provider instance of
//! the application's bootstrap, whose files `meridian-dp` writes and renews
//! (`file_watcher`). A node says which instance it has in its metadata
//! ([`CERTIFICATE_PROVIDER_METADATA`]); a node without one gets no TLS
//! context at all (it could not resolve the instance and would refuse the
//! resource).
//!
//! - Clusters ([`proxyless_upstream`]): identity and root certificates from
//!   the instance, the destination's SPIFFE ID (exact) and the ingress
//!   server name, as for sidecars.
//! - Server listeners ([`proxyless_downstream`]): identity and root from the
//!   instance; STRICT requires a client certificate. PERMISSIVE cannot be
//!   expressed as plaintext-or-TLS: gRPC chooses a filter chain before the
//!   handshake and ignores `transport_protocol: tls` (gRFC A36), so a
//!   PERMISSIVE server serves TLS with the client certificate optional;
//!   plaintext callers are refused.

use envoy_types::pb::envoy::config::core::v3::{data_source, transport_socket, DataSource, TransportSocket};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    common_tls_context::{CombinedCertificateValidationContext, ValidationContextType},
    secret,
    subject_alt_name_matcher::SanType,
    CertificateProviderPluginInstance, CertificateValidationContext, CommonTlsContext, DownstreamTlsContext,
    SdsSecretConfig, Secret, SubjectAltNameMatcher, TlsCertificate, UpstreamTlsContext,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{string_matcher::MatchPattern, StringMatcher};
use envoy_types::pb::google::protobuf::BoolValue;
use meridian_core::mesh::MtlsMode;
use meridian_core::mtls::{spiffe_id, spiffe_prefix};
use std::collections::BTreeMap;

use super::{ads_source, any};
use std::sync::Arc;

use crate::resources::{ResourceSet, XdsResource, SECRET};
use crate::snapshot::{MeshSnapshot, ProxyContext};

/// The node metadata field in which a proxyless node names the certificate
/// provider instance of its bootstrap.
pub const CERTIFICATE_PROVIDER_METADATA: &str = "meridian.io/certificate-provider";
/// The instance `meridian-dp` defines in the bootstraps it writes.
pub const DEFAULT_CERTIFICATE_PROVIDER: &str = "meridian-mesh";
/// The transport socket name both Envoy and gRPC expect.
pub const TLS_TRANSPORT_SOCKET: &str = "envoy.transport_sockets.tls";

/// The SDS secret holding a proxy's certificate and key.
pub fn identity_secret(mesh: &str) -> String {
    format!("identity_cert:secret:{mesh}")
}

/// The SDS secret holding the mesh's trust bundle.
pub fn mesh_ca_secret(mesh: &str) -> String {
    format!("mesh_ca:secret:{mesh}")
}

fn inline(pem: &str) -> DataSource {
    DataSource {
        specifier: Some(data_source::Specifier::InlineString(pem.to_string())),
        ..Default::default()
    }
}

/// Adds a sidecar's SDS secrets to `set`: its identity when issued, and the
/// mesh's trust bundle when the zone has it.
pub fn add_sidecar_secrets(
    set: &mut ResourceSet,
    snapshot: &MeshSnapshot,
    proxy: &ProxyContext,
    cache: Option<&super::cache::SharedCache>,
) {
    let Some(mtls) = &snapshot.mtls else {
        return;
    };
    if let Some(identity) = &proxy.tls.identity {
        let encoded = identity.encoded.get_or_init(|| {
            let name = identity_secret(&snapshot.mesh);
            let s = Secret {
                name: name.clone(),
                r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
                    certificate_chain: Some(inline(&identity.chain_pem)),
                    private_key: Some(inline(&identity.key_pem)),
                    ..Default::default()
                })),
            };
            Arc::new(XdsResource::new(SECRET, &name, &s))
        });
        set.insert_shared(SECRET, encoded.clone());
    }
    if !mtls.trust_bundle_pem.is_empty() {
        let bundle = || {
            let name = mesh_ca_secret(&snapshot.mesh);
            let s = Secret {
                name: name.clone(),
                r#type: Some(secret::Type::ValidationContext(CertificateValidationContext {
                    trusted_ca: Some(inline(&mtls.trust_bundle_pem)),
                    ..Default::default()
                })),
            };
            Arc::new(XdsResource::new(SECRET, &name, &s))
        };
        // One encoding per snapshot, shared by its proxies.
        let encoded = match cache {
            Some(c) => c.trust_bundle(bundle),
            None => bundle(),
        };
        set.insert_shared(SECRET, encoded);
    }
}

fn sds(name: String) -> SdsSecretConfig {
    SdsSecretConfig {
        name,
        sds_config: Some(ads_source()),
    }
}

fn uri_matcher(pattern: MatchPattern) -> SubjectAltNameMatcher {
    SubjectAltNameMatcher {
        san_type: SanType::Uri as i32,
        matcher: Some(StringMatcher {
            match_pattern: Some(pattern),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A sidecar's common TLS context: its identity, the bundle, the peer's SAN.
fn sidecar_common(mesh: &str, peer: MatchPattern) -> CommonTlsContext {
    CommonTlsContext {
        tls_certificate_sds_secret_configs: vec![sds(identity_secret(mesh))],
        validation_context_type: Some(ValidationContextType::CombinedValidationContext(
            CombinedCertificateValidationContext {
                default_validation_context: Some(CertificateValidationContext {
                    match_typed_subject_alt_names: vec![uri_matcher(peer)],
                    ..Default::default()
                }),
                validation_context_sds_secret_config: Some(sds(mesh_ca_secret(mesh))),
                ..Default::default()
            },
        )),
        ..Default::default()
    }
}

/// A transport socket carrying `ctx`.
pub fn transport_socket<M: prost::Message + prost::Name>(ctx: &M) -> TransportSocket {
    TransportSocket {
        name: TLS_TRANSPORT_SOCKET.into(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(any(ctx))),
    }
}

/// What a sidecar's inbound listener terminates: the proxy's certificate; a
/// client certificate of the mesh, required.
pub fn sidecar_downstream(mesh: &str) -> DownstreamTlsContext {
    DownstreamTlsContext {
        common_tls_context: Some(sidecar_common(mesh, MatchPattern::Prefix(spiffe_prefix(mesh)))),
        require_client_certificate: Some(BoolValue { value: true }),
        ..Default::default()
    }
}

/// What a sidecar's cluster towards `service` (restricted to `subset`)
/// originates.
pub fn sidecar_upstream(mesh: &str, service: &str, subset: &BTreeMap<String, String>) -> UpstreamTlsContext {
    UpstreamTlsContext {
        common_tls_context: Some(sidecar_common(mesh, MatchPattern::Exact(spiffe_id(mesh, service)))),
        sni: super::ingress::sni(mesh, service, subset),
        ..Default::default()
    }
}

fn instance(name: &str, certificate: &str) -> CertificateProviderPluginInstance {
    CertificateProviderPluginInstance {
        instance_name: name.to_string(),
        certificate_name: certificate.to_string(),
    }
}

/// A proxyless common TLS context: identity and roots from the instance.
fn proxyless_common(provider: &str, peer: Option<StringMatcher>) -> CommonTlsContext {
    CommonTlsContext {
        tls_certificate_provider_instance: Some(instance(provider, "default")),
        validation_context_type: Some(ValidationContextType::ValidationContext(CertificateValidationContext {
            ca_certificate_provider_instance: Some(instance(provider, "ROOTCA")),
            // gRPC reads the untyped matchers (C-core and grpc-js alike).
            #[allow(deprecated)]
            match_subject_alt_names: peer.into_iter().collect(),
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// What a proxyless client's cluster towards `service` (restricted to
/// `subset`) originates, with certificates of instance `provider`.
pub fn proxyless_upstream(
    mesh: &str,
    service: &str,
    subset: &BTreeMap<String, String>,
    provider: &str,
) -> UpstreamTlsContext {
    let peer = StringMatcher {
        match_pattern: Some(MatchPattern::Exact(spiffe_id(mesh, service))),
        ..Default::default()
    };
    UpstreamTlsContext {
        common_tls_context: Some(proxyless_common(provider, Some(peer))),
        sni: super::ingress::sni(mesh, service, subset),
        ..Default::default()
    }
}

/// What an xDS-enabled gRPC server terminates in a mesh of `mode`, with
/// certificates of instance `provider` (no SAN matcher: gRPC refuses one on
/// a server; the mesh's own root is the only one trusted, and
/// MeshTrafficPermission matches the identity).
pub fn proxyless_downstream(mode: MtlsMode, provider: &str) -> DownstreamTlsContext {
    DownstreamTlsContext {
        common_tls_context: Some(proxyless_common(provider, None)),
        require_client_certificate: Some(BoolValue {
            value: mode == MtlsMode::Strict,
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kuma_secret_names() {
        assert_eq!(identity_secret("default"), "identity_cert:secret:default");
        assert_eq!(mesh_ca_secret("default"), "mesh_ca:secret:default");
    }

    #[test]
    fn upstream_verifies_the_destination_and_sends_the_ingress_name() {
        let ctx = sidecar_upstream("default", "backend", &BTreeMap::new());
        assert_eq!(
            ctx.sni,
            super::super::ingress::sni("default", "backend", &BTreeMap::new())
        );
        let Some(ValidationContextType::CombinedValidationContext(v)) =
            ctx.common_tls_context.unwrap().validation_context_type
        else {
            panic!("combined validation context expected");
        };
        let m = &v.default_validation_context.unwrap().match_typed_subject_alt_names[0];
        assert_eq!(m.san_type, SanType::Uri as i32);
        assert_eq!(
            m.matcher.as_ref().unwrap().match_pattern,
            Some(MatchPattern::Exact("spiffe://default/backend".into()))
        );
    }

    #[test]
    fn proxyless_server_requires_a_client_certificate_only_when_strict() {
        let strict = proxyless_downstream(MtlsMode::Strict, "p");
        assert_eq!(strict.require_client_certificate, Some(BoolValue { value: true }));
        let permissive = proxyless_downstream(MtlsMode::Permissive, "p");
        assert_eq!(permissive.require_client_certificate, Some(BoolValue { value: false }));
        let common = strict.common_tls_context.unwrap();
        assert_eq!(common.tls_certificate_provider_instance.unwrap().instance_name, "p");
    }
}
