//! Mesh mTLS (DESIGN §11): what a Mesh's `mtls` backends say, the `Secret`
//! resource a provided CA is read from, and the resources through which the
//! global and the zones share certificate authorities without sharing keys.
//!
//! - [`CertificateAuthority`] `M/<backend>`: the root certificate of backend
//!   `<backend>` of mesh `M`, written by the global (or a standalone zone),
//!   synced to every zone. Its key stays where it was made (builtin: a mesh
//!   system record of the global) or given (provided: a `Secret`, which is
//!   never synced).
//! - [`ZoneCertificateRequest`] `M/<backend>`: a zone's request for an
//!   intermediate CA of backend `<backend>`: the public key of a key pair the
//!   zone made and keeps. Zone-owned; at the global it is `<zone>.<backend>`.
//! - [`ZoneCertificate`] `M/<zone>.<backend>`: the intermediate certificate
//!   the global signed for that public key; synced to zones.
//!
//! The certificate checks themselves (X.509) live in `meridian-server`;
//! this module has no I/O and parses no certificates.

use std::time::Duration as StdDuration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::duration::LongDuration;
use crate::error::{Causes, FieldPath};
use crate::mesh::{CaBackend, CaType, Mesh, MtlsMode};
use crate::names::check_subdomain;
use crate::spec::{decode, Spec};

/// How long workload certificates live when `dpCert.rotation.expiration` is
/// not set (Kuma's default).
pub const DEFAULT_DP_CERT_VALIDITY: StdDuration = StdDuration::from_secs(24 * 3600);
/// How long a builtin root lives when `conf.caCert.expiration` is not set
/// (Kuma's default: ten years).
pub const DEFAULT_ROOT_VALIDITY: StdDuration = StdDuration::from_secs(10 * 365 * 24 * 3600);
/// The RSA key size of a builtin root when `conf.caCert.RSAbits` is not set
/// (Kuma's default).
pub const DEFAULT_RSA_BITS: u32 = 2048;
/// The RSA key sizes a builtin root may have.
pub const RSA_BITS: [u32; 3] = [2048, 3072, 4096];
/// The shortest workload certificate lifetime: renewal happens at 4/5 of it,
/// and a shorter one would renew faster than a change reaches a proxy.
pub const MIN_DP_CERT_VALIDITY: StdDuration = StdDuration::from_secs(10);
/// The largest `Secret` a mesh accepts (its data, decoded).
pub const MAX_SECRET_BYTES: usize = 64 * 1024;

/// The `conf` of a `builtin` backend.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BuiltinConf {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_cert: Option<CaCertConf>,
}

/// The root certificate of a `builtin` backend.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaCertConf {
    /// The RSA key size (2048, 3072 or 4096; Kuma spells it `RSAbits`).
    #[serde(default, rename = "RSAbits", skip_serializing_if = "Option::is_none")]
    pub rsa_bits: Option<u32>,
    /// How long the root is valid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiration: Option<LongDuration>,
}

/// The `conf` of a `provided` backend: where its certificate and key are.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ProvidedConf {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<DataSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<DataSource>,
}

/// Kuma's data source. Meridian reads a provided CA from a `Secret` only:
/// the Mesh is synced to every zone, so a key written inline (or a file
/// path only one host has) would leave the global or mean nothing.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DataSource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inline: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inline_string: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
}

/// A backend's `conf`, by type.
#[derive(Clone, Debug, PartialEq)]
pub enum BackendConf {
    Builtin(BuiltinConf),
    /// The names of the `Secret`s holding the certificate and the key.
    Provided {
        cert_secret: String,
        key_secret: String,
    },
}

impl BuiltinConf {
    pub fn rsa_bits(&self) -> u32 {
        self.ca_cert
            .as_ref()
            .and_then(|c| c.rsa_bits)
            .unwrap_or(DEFAULT_RSA_BITS)
    }

    pub fn root_validity(&self) -> StdDuration {
        self.ca_cert
            .as_ref()
            .and_then(|c| c.expiration.as_ref())
            .map_or(DEFAULT_ROOT_VALIDITY, LongDuration::as_std)
    }
}

fn check_source(source: &Option<DataSource>, path: &FieldPath, causes: &mut Causes) -> Option<String> {
    let Some(s) = source else {
        causes.add(path, "has to be defined");
        return None;
    };
    for (field, set) in [
        ("inline", s.inline.is_some()),
        ("inlineString", s.inline_string.is_some()),
        ("file", s.file.is_some()),
    ] {
        if set {
            causes.add(
                &path.field(field),
                "is not supported: a provided CA is read from a Secret of the mesh (`secret: NAME`), so that its key never leaves the global",
            );
        }
    }
    match &s.secret {
        None => {
            causes.add(&path.field("secret"), "has to be defined");
            None
        }
        Some(name) => match check_subdomain(name) {
            Ok(()) => Some(name.clone()),
            Err(e) => {
                causes.add(&path.field("secret"), e);
                None
            }
        },
    }
}

/// Decodes and checks the `conf` of `backend` (at `path`, the backend);
/// `None` when it has errors, which are in `causes`.
pub fn backend_conf(backend: &CaBackend, path: &FieldPath, causes: &mut Causes) -> Option<BackendConf> {
    let conf_path = path.field("conf");
    let value = backend
        .conf
        .clone()
        .unwrap_or_else(|| serde_json::Value::Object(Default::default()));
    match backend.kind {
        CaType::Builtin => match decode::<BuiltinConf>(value, &conf_path) {
            Ok(conf) => {
                let before = causes.len();
                if let Some(c) = &conf.ca_cert {
                    if let Some(bits) = c.rsa_bits {
                        if !RSA_BITS.contains(&bits) {
                            causes.add(
                                &conf_path.field("caCert").field("RSAbits"),
                                format!("must be one of {RSA_BITS:?}, got {bits}"),
                            );
                        }
                    }
                    if let Some(e) = &c.expiration {
                        if e.as_std() < StdDuration::from_secs(3600) {
                            causes.add(&conf_path.field("caCert").field("expiration"), "must be at least 1h");
                        }
                    }
                }
                (causes.len() == before).then_some(BackendConf::Builtin(conf))
            }
            Err(e) => {
                causes.extend_from(e);
                None
            }
        },
        CaType::Provided => match decode::<ProvidedConf>(value, &conf_path) {
            Ok(conf) => {
                let cert = check_source(&conf.cert, &conf_path.field("cert"), causes);
                let key = check_source(&conf.key, &conf_path.field("key"), causes);
                Some(BackendConf::Provided {
                    cert_secret: cert?,
                    key_secret: key?,
                })
            }
            Err(e) => {
                causes.extend_from(e);
                None
            }
        },
    }
}

/// What a mesh's mTLS settings come to.
#[derive(Clone, Debug, PartialEq)]
pub struct MeshMtls<'a> {
    /// The backend that issues certificates.
    pub enabled: &'a CaBackend,
    pub mode: MtlsMode,
    /// The lifetime of workload certificates.
    pub dp_cert_validity: StdDuration,
}

impl Mesh {
    /// The mesh's mTLS, when a backend is enabled.
    pub fn mtls_enabled(&self) -> Option<MeshMtls<'_>> {
        let mtls = self.mtls.as_ref()?;
        let name = mtls.enabled_backend.as_deref().filter(|n| !n.is_empty())?;
        let enabled = mtls.backends.iter().find(|b| b.name == name)?;
        Some(MeshMtls {
            enabled,
            mode: enabled.mode.unwrap_or(MtlsMode::Strict),
            dp_cert_validity: enabled
                .dp_cert
                .as_ref()
                .and_then(|d| d.rotation.as_ref())
                .map_or(DEFAULT_DP_CERT_VALIDITY, |r| r.expiration.as_std()),
        })
    }

    /// Every backend of the mesh (enabled or not).
    pub fn ca_backends(&self) -> &[CaBackend] {
        self.mtls.as_ref().map_or(&[], |m| m.backends.as_slice())
    }
}

/// A mesh-scoped secret (Kuma's universal `Secret`): `data` is base64.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Secret {
    pub data: String,
}

impl Secret {
    /// The decoded data; `None` when it is not base64 (never for a stored
    /// secret: validation refuses it).
    pub fn bytes(&self) -> Option<Vec<u8>> {
        STANDARD.decode(self.data.trim()).ok()
    }
}

impl Spec for Secret {
    fn validate(&self, path: &FieldPath, causes: &mut Causes) {
        let p = path.field("data");
        match self.bytes() {
            None => causes.add(&p, "must be base64 (standard alphabet, padded)"),
            Some(b) if b.is_empty() => causes.add(&p, "cannot be empty"),
            Some(b) if b.len() > MAX_SECRET_BYTES => {
                causes.add(&p, format!("must be at most {MAX_SECRET_BYTES} bytes decoded"))
            }
            Some(_) => {}
        }
    }
}

const PEM_CERTIFICATE: &str = "-----BEGIN CERTIFICATE-----";
const PEM_PUBLIC_KEY: &str = "-----BEGIN PUBLIC KEY-----";

fn check_pem(text: &str, header: &str, path: &FieldPath, causes: &mut Causes) {
    if !text.trim_start().starts_with(header) {
        causes.add(path, format!("must be PEM starting with {header}"));
    }
}

/// The root certificate of one CA backend of a mesh.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CertificateAuthority {
    /// The backend's type.
    #[serde(rename = "type")]
    pub kind: CaType,
    /// The CA certificate(s), PEM; the first signs intermediates.
    pub certificate: String,
    /// Until when the first certificate is valid (RFC 3339).
    pub not_after: String,
}

impl Spec for CertificateAuthority {
    fn validate(&self, path: &FieldPath, causes: &mut Causes) {
        check_pem(&self.certificate, PEM_CERTIFICATE, &path.field("certificate"), causes);
        check_time(&self.not_after, &path.field("notAfter"), causes);
    }
}

/// A zone's request for an intermediate CA of one backend.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ZoneCertificateRequest {
    pub backend: String,
    /// The intermediate's public key (SubjectPublicKeyInfo, PEM).
    pub public_key: String,
}

impl Spec for ZoneCertificateRequest {
    fn validate(&self, path: &FieldPath, causes: &mut Causes) {
        if let Err(e) = check_subdomain(&self.backend) {
            causes.add(&path.field("backend"), e);
        }
        check_pem(&self.public_key, PEM_PUBLIC_KEY, &path.field("publicKey"), causes);
    }
}

/// An intermediate CA the global signed for a zone.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ZoneCertificate {
    pub zone: String,
    pub backend: String,
    /// The public key of the request it answers.
    pub public_key: String,
    /// The intermediate certificate, PEM, followed by the chain up to (not
    /// including) the root.
    pub certificate: String,
    /// Until when it is valid (RFC 3339).
    pub not_after: String,
    /// The digest of the CA certificate that signed it: a changed root
    /// means a new intermediate.
    pub authority: String,
}

impl Spec for ZoneCertificate {
    fn validate(&self, path: &FieldPath, causes: &mut Causes) {
        if let Err(e) = crate::names::check_rfc1035_label(&self.zone) {
            causes.add(&path.field("zone"), e);
        }
        if let Err(e) = check_subdomain(&self.backend) {
            causes.add(&path.field("backend"), e);
        }
        check_pem(&self.public_key, PEM_PUBLIC_KEY, &path.field("publicKey"), causes);
        check_pem(&self.certificate, PEM_CERTIFICATE, &path.field("certificate"), causes);
        check_time(&self.not_after, &path.field("notAfter"), causes);
    }
}

/// The name of the zone certificate of `zone` for `backend`.
pub fn zone_certificate_name(zone: &str, backend: &str) -> String {
    format!("{zone}.{backend}")
}

fn check_time(text: &str, path: &FieldPath, causes: &mut Causes) {
    if chrono::DateTime::parse_from_rfc3339(text).is_err() {
        causes.add(path, format!("must be an RFC 3339 time, got {text:?}"));
    }
}

/// The SPIFFE ID of `service` in `mesh`: what a workload certificate
/// carries for each service it serves, and what clients verify.
pub fn spiffe_id(mesh: &str, service: &str) -> String {
    format!("spiffe://{mesh}/{service}")
}

/// The prefix every SPIFFE ID of `mesh` starts with.
pub fn spiffe_prefix(mesh: &str) -> String {
    format!("spiffe://{mesh}/")
}

/// The URI SAN for tag `name` = `value` (`kuma://version/v1`).
pub fn tag_uri(name: &str, value: &str) -> String {
    format!("kuma://{name}/{value}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::check;
    use serde_json::json;

    fn mesh_errors(v: serde_json::Value) -> Vec<(String, String)> {
        match check::<Mesh>(v, &FieldPath::root()) {
            Ok(_) => Vec::new(),
            Err(e) => e.causes.into_iter().map(|c| (c.field, c.message)).collect(),
        }
    }

    #[test]
    fn kuma_mesh_with_builtin_and_provided_backends_is_accepted() {
        let errs = mesh_errors(json!({"mtls": {
            "enabledBackend": "ca-1",
            "backends": [
                {"name": "ca-1", "type": "builtin", "mode": "PERMISSIVE",
                 "dpCert": {"rotation": {"expiration": "1d"}},
                 "conf": {"caCert": {"RSAbits": 2048, "expiration": "10y"}}},
                {"name": "ca-2", "type": "provided",
                 "conf": {"cert": {"secret": "root-cert"}, "key": {"secret": "root-key"}}}
            ]
        }}));
        assert!(errs.is_empty(), "{errs:?}");
        let mesh: Mesh = serde_json::from_value(json!({"mtls": {"enabledBackend": "ca-1", "backends": [
            {"name": "ca-1", "type": "builtin", "dpCert": {"rotation": {"expiration": "1d"}}}
        ]}}))
        .unwrap();
        let m = mesh.mtls_enabled().unwrap();
        assert_eq!(m.mode, MtlsMode::Strict, "Kuma's default mode");
        assert_eq!(m.dp_cert_validity, StdDuration::from_secs(86_400));
    }

    #[test]
    fn bad_backend_conf_names_the_field() {
        let errs = mesh_errors(json!({"mtls": {"backends": [
            {"name": "a", "type": "builtin", "conf": {"caCert": {"RSAbits": 1024}}},
            {"name": "b", "type": "builtin", "conf": {"caCert": {"expiration": "1 year"}}},
            {"name": "c", "type": "provided", "conf": {"cert": {"inlineString": "x"}}},
            {"name": "d", "type": "builtin", "conf": {"keyType": "ec"}},
            {"name": "e", "type": "builtin", "dpCert": {"rotation": {"expiration": "5s"}}}
        ]}}));
        let fields: Vec<&str> = errs.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            [
                "mtls.backends[0].conf.caCert.RSAbits",
                "mtls.backends[1].conf.caCert.expiration",
                "mtls.backends[2].conf.cert.inlineString",
                "mtls.backends[2].conf.cert.secret",
                "mtls.backends[2].conf.key",
                "mtls.backends[3].conf.keyType",
                "mtls.backends[4].dpCert.rotation.expiration",
            ],
            "{errs:?}"
        );
    }

    #[test]
    fn no_enabled_backend_means_no_mtls() {
        let mesh: Mesh =
            serde_json::from_value(json!({"mtls": {"backends": [{"name": "a", "type": "builtin"}]}})).unwrap();
        assert!(mesh.mtls_enabled().is_none());
        assert!(Mesh::default().mtls_enabled().is_none());
    }

    #[test]
    fn secrets_must_be_base64_and_not_empty() {
        let ok = check::<Secret>(json!({"data": STANDARD.encode(b"pem")}), &FieldPath::root());
        assert!(ok.is_ok());
        for bad in [json!({"data": "not base64!"}), json!({"data": ""})] {
            let err = check::<Secret>(bad, &FieldPath::root()).unwrap_err();
            assert_eq!(err.causes[0].field, "data");
        }
        let big = STANDARD.encode(vec![b'x'; MAX_SECRET_BYTES + 1]);
        assert!(check::<Secret>(json!({"data": big}), &FieldPath::root()).is_err());
    }

    #[test]
    fn identities() {
        assert_eq!(spiffe_id("default", "backend"), "spiffe://default/backend");
        assert_eq!(spiffe_prefix("default"), "spiffe://default/");
        assert_eq!(tag_uri("version", "v1"), "kuma://version/v1");
        assert_eq!(zone_certificate_name("zone-1", "ca-1"), "zone-1.ca-1");
    }
}
