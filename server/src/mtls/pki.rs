//! The certificates of mesh mTLS (DESIGN §11), made and checked here: a
//! builtin backend's root, the check of a provided one, the intermediate the
//! root signs for each zone, and the workload certificates a zone issues.
//!
//! ```text
//! root (builtin: RSA, conf.caCert; provided: from Secrets)   kept by the global
//!  └─ intermediate per zone and mesh (ECDSA P-256)            key kept by the zone
//!      └─ workload certificate per proxy (ECDSA P-256)        key sent to the proxy
//! ```
//!
//! Every certificate of a mesh carries the mesh's trust domain: the root and
//! the intermediates the URI SAN `spiffe://<mesh>`, workload certificates
//! `spiffe://<mesh>/<service>` for each service they serve and
//! `kuma://<tag>/<value>` for each of their tags (Kuma's identities).
//! Workload keys are P-256, not Kuma's RSA 2048: a zone issues one per proxy,
//! and a P-256 key costs microseconds where an RSA one costs tens of
//! milliseconds.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use meridian_core::mtls::{spiffe_id, tag_uri};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PublicKeyData, SanType, SerialNumber, SubjectPublicKeyInfo,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Certificates start this long before they are made, so that clocks a
/// little behind still accept them.
pub const BACKDATE: Duration = Duration::from_secs(60);
/// How long an intermediate lives (never past its root).
pub const INTERMEDIATE_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

/// Why a certificate could not be made or a CA was refused; each variant
/// names what is wrong in words an operator can act on.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// The PEM does not hold what it should.
    #[error("{0}")]
    Pem(String),
    /// A certificate is not usable as a CA (the reason).
    #[error("{0}")]
    NotCa(String),
    /// The key does not belong to the certificate.
    #[error("the key does not match the certificate's public key")]
    KeyMismatch,
    /// The certificate is outside its validity.
    #[error("{0}")]
    Expired(String),
    /// Key generation or signing failed.
    #[error("{0}")]
    Crypto(String),
}

fn crypto(e: impl std::fmt::Display) -> PkiError {
    PkiError::Crypto(e.to_string())
}

/// A CA that signs: its certificate (PEM, the signing certificate first,
/// then any chain above it) and its key.
pub struct SigningCa {
    /// What clients must trust or what the chain continues with.
    pub cert_pem: String,
    pub not_after: DateTime<Utc>,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for SigningCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningCa")
            .field("cert_pem", &self.cert_pem)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

fn to_offset(t: DateTime<Utc>) -> Result<time::OffsetDateTime, PkiError> {
    time::OffsetDateTime::from_unix_timestamp(t.timestamp()).map_err(crypto)
}

fn std_to_chrono(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

fn random_serial() -> Result<SerialNumber, PkiError> {
    let mut bytes = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| crypto("no randomness"))?;
    // Positive and never zero: clear the top bit, set a low one.
    bytes[0] &= 0x7f;
    bytes[15] |= 1;
    Ok(SerialNumber::from_slice(&bytes))
}

fn mesh_uri(mesh: &str) -> Result<SanType, PkiError> {
    Ok(SanType::URI(format!("spiffe://{mesh}").try_into().map_err(crypto)?))
}

fn ca_params(mesh: &str, common_name: &str, path_len: Option<u8>) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::OrganizationName, "Meridian");
    params.distinguished_name.push(DnType::OrganizationalUnitName, "Mesh");
    params.distinguished_name.push(DnType::CommonName, common_name);
    params.is_ca = IsCa::Ca(match path_len {
        Some(n) => BasicConstraints::Constrained(n),
        None => BasicConstraints::Unconstrained,
    });
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.subject_alt_names = vec![mesh_uri(mesh)?];
    params.serial_number = Some(random_serial()?);
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

/// A new RSA key of `bits` bits as PKCS#8 DER. ring cannot generate RSA
/// keys; the `rsa` crate makes them, ring signs with them.
fn generate_rsa(bits: u32) -> Result<Vec<u8>, PkiError> {
    use rsa::pkcs8::EncodePrivateKey;
    let mut rng = rand_core_06::OsRng;
    let key = rsa::RsaPrivateKey::new(&mut rng, bits as usize).map_err(crypto)?;
    Ok(key.to_pkcs8_der().map_err(crypto)?.as_bytes().to_vec())
}

/// A builtin backend's root: a self-signed RSA CA of `rsa_bits` for `mesh`,
/// valid for `validity` from `now`. Returns the CA and its key (PEM).
pub fn generate_root(
    mesh: &str,
    rsa_bits: u32,
    validity: Duration,
    now: DateTime<Utc>,
) -> Result<(SigningCa, String), PkiError> {
    let der = generate_rsa(rsa_bits)?;
    let key = KeyPair::from_pkcs8_der_and_sign_algo(&der.as_slice().into(), &rcgen::PKCS_RSA_SHA256).map_err(crypto)?;
    let key_pem = key.serialize_pem();
    let mut params = ca_params(mesh, mesh, None)?;
    let not_after = now + std_to_chrono(validity);
    params.not_before = to_offset(now - std_to_chrono(BACKDATE))?;
    params.not_after = to_offset(not_after)?;
    let cert = params.self_signed(&key).map_err(crypto)?;
    let cert_pem = cert.pem();
    Ok((
        SigningCa {
            cert_pem,
            not_after,
            issuer: Issuer::new(params, key),
        },
        key_pem,
    ))
}

fn certificates(pem: &str) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PkiError::Pem(format!("not a PEM certificate: {e}")))?;
    if certs.is_empty() {
        return Err(PkiError::Pem("holds no PEM certificate".into()));
    }
    Ok(certs)
}

fn parse<'a>(der: &'a CertificateDer<'_>) -> Result<X509Certificate<'a>, PkiError> {
    X509Certificate::from_der(der.as_ref())
        .map(|(_, c)| c)
        .map_err(|e| PkiError::Pem(format!("not an X.509 certificate: {e}")))
}

/// Checks that the subject of a CA certificate can be written again as the
/// issuer of the certificates it signs: every attribute type an encodable
/// object identifier (first arc 0–2, second below 40 under 0 and 1). A
/// certificate that breaks this parses, but its name cannot be re-encoded.
fn check_subject(cert: &X509Certificate<'_>) -> Result<(), PkiError> {
    for attr in cert.subject().iter_attributes() {
        let arcs: Option<Vec<u64>> = attr.attr_type().iter().map(|i| i.collect());
        let ok = match arcs.as_deref() {
            Some([first, second, ..]) => *first <= 2 && (*first == 2 || *second < 40),
            _ => false,
        };
        if !ok {
            return Err(PkiError::Pem(format!(
                "the certificate's subject holds an attribute of type {}, which is not an encodable object identifier",
                attr.attr_type()
            )));
        }
    }
    Ok(())
}

fn not_after_of(cert: &X509Certificate<'_>) -> Result<DateTime<Utc>, PkiError> {
    DateTime::from_timestamp(cert.validity().not_after.timestamp(), 0)
        .ok_or_else(|| PkiError::Pem("the certificate's notAfter is out of range".into()))
}

/// Checks that certificate `i` of a chain is usable as a CA at `now`.
fn check_ca_cert(cert: &X509Certificate<'_>, i: usize, now: DateTime<Utc>) -> Result<(), PkiError> {
    let which = if i == 0 {
        "the certificate".to_string()
    } else {
        format!("certificate {i} of the chain")
    };
    match cert.basic_constraints() {
        Ok(Some(bc)) if bc.value.ca => {}
        Ok(_) => {
            return Err(PkiError::NotCa(format!(
                "{which} is not a CA: basic constraint CA must be true"
            )))
        }
        Err(e) => {
            return Err(PkiError::NotCa(format!(
                "{which}: basic constraints do not decode: {e}"
            )))
        }
    }
    match cert.key_usage() {
        Ok(Some(ku)) if ku.value.key_cert_sign() => {}
        Ok(Some(_)) => {
            return Err(PkiError::NotCa(format!(
                "{which} may not sign certificates: key usage keyCertSign must be set"
            )))
        }
        Ok(None) => {
            return Err(PkiError::NotCa(format!(
                "{which} has no key usage extension: keyCertSign must be set"
            )))
        }
        Err(e) => return Err(PkiError::NotCa(format!("{which}: key usage does not decode: {e}"))),
    }
    let v = cert.validity();
    let (from, until) = (v.not_before.timestamp(), v.not_after.timestamp());
    if now.timestamp() > until {
        return Err(PkiError::Expired(format!("{which} expired at {}", v.not_after)));
    }
    if now.timestamp() < from {
        return Err(PkiError::Expired(format!(
            "{which} is not valid before {}",
            v.not_before
        )));
    }
    Ok(())
}

/// A provided backend's CA from the PEM of its certificate (chain: the
/// signing CA first) and of its key, checked: PEM, each certificate a CA
/// (basic constraint CA, key usage keyCertSign) valid at `now`, the key the
/// first certificate's.
pub fn load_provided(cert_pem: &str, key_pem: &str, now: DateTime<Utc>) -> Result<SigningCa, PkiError> {
    let ders = certificates(cert_pem)?;
    let mut first_not_after = None;
    for (i, der) in ders.iter().enumerate() {
        let cert = parse(der)?;
        check_ca_cert(&cert, i, now)?;
        if i == 0 {
            first_not_after = Some(not_after_of(&cert)?);
        }
    }
    let key = KeyPair::from_pem(key_pem).map_err(|e| PkiError::Pem(format!("not a PEM private key: {e}")))?;
    let first = parse(&ders[0])?;
    check_subject(&first)?;
    if first.public_key().raw != key.subject_public_key_info().as_slice() {
        return Err(PkiError::KeyMismatch);
    }
    let issuer = Issuer::from_ca_cert_der(&ders[0], key).map_err(crypto)?;
    Ok(SigningCa {
        cert_pem: cert_pem.trim().to_string() + "\n",
        not_after: first_not_after.unwrap_or(now),
        issuer,
    })
}

/// A root from its stored certificate and key (both written by Meridian).
pub fn load_root(cert_pem: &str, key_pem: &str) -> Result<SigningCa, PkiError> {
    let ders = certificates(cert_pem)?;
    let cert = parse(&ders[0])?;
    check_subject(&cert)?;
    let not_after = not_after_of(&cert)?;
    let key = KeyPair::from_pem(key_pem).map_err(|e| PkiError::Pem(format!("not a PEM private key: {e}")))?;
    let issuer = Issuer::from_ca_cert_der(&ders[0], key).map_err(crypto)?;
    Ok(SigningCa {
        cert_pem: cert_pem.to_string(),
        not_after,
        issuer,
    })
}

/// The from-time of the first certificate of `pem`.
pub fn not_before(pem: &str) -> Result<DateTime<Utc>, PkiError> {
    let ders = certificates(pem)?;
    let cert = parse(&ders[0])?;
    DateTime::from_timestamp(cert.validity().not_before.timestamp(), 0)
        .ok_or_else(|| PkiError::Pem("the certificate's notBefore is out of range".into()))
}

/// The until-time of the first certificate of `pem`.
pub fn not_after(pem: &str) -> Result<DateTime<Utc>, PkiError> {
    let ders = certificates(pem)?;
    not_after_of(&parse(&ders[0])?)
}

/// Signs an intermediate CA for `zone` in `mesh` over `public_key_pem` (a
/// SubjectPublicKeyInfo): path length 0 (it signs workloads only), valid
/// for [`INTERMEDIATE_VALIDITY`] but never past the root. Returns the
/// intermediate's PEM and its end.
pub fn sign_intermediate(
    root: &SigningCa,
    mesh: &str,
    zone: &str,
    public_key_pem: &str,
    now: DateTime<Utc>,
) -> Result<(String, DateTime<Utc>), PkiError> {
    let public = SubjectPublicKeyInfo::from_pem(public_key_pem)
        .map_err(|e| PkiError::Pem(format!("not a PEM public key: {e}")))?;
    let mut params = ca_params(mesh, &format!("{zone} ({mesh})"), Some(0))?;
    let not_after = (now + std_to_chrono(INTERMEDIATE_VALIDITY)).min(root.not_after);
    params.not_before = to_offset(now - std_to_chrono(BACKDATE))?;
    params.not_after = to_offset(not_after)?;
    let cert = params.signed_by(&public, &root.issuer).map_err(crypto)?;
    // The certificates above the signing CA (a provided root may come with
    // its chain) are all in the trust bundle, so the chain a workload
    // presents ends with its intermediate.
    Ok((cert.pem(), not_after))
}

/// A zone's intermediate: its key (made here, never sent anywhere) and, once
/// the global signed it, the certificate chain.
pub struct Intermediate {
    /// The intermediate and the chain above it up to the root (excluded).
    pub chain_pem: String,
    pub not_after: DateTime<Utc>,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Intermediate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Intermediate")
            .field("chain_pem", &self.chain_pem)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// A new intermediate key pair (P-256): its PKCS#8 PEM and public key PEM.
pub fn generate_intermediate_key() -> Result<(String, String), PkiError> {
    let key = KeyPair::generate().map_err(crypto)?;
    Ok((key.serialize_pem(), key.public_key_pem()))
}

impl Intermediate {
    /// The intermediate from its key and the chain the global signed; the
    /// chain's first certificate must be for this key.
    pub fn new(key_pem: &str, chain_pem: &str) -> Result<Self, PkiError> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| PkiError::Pem(format!("not a PEM private key: {e}")))?;
        let ders = certificates(chain_pem)?;
        let first = parse(&ders[0])?;
        check_subject(&first)?;
        if first.public_key().raw != key.subject_public_key_info().as_slice() {
            return Err(PkiError::KeyMismatch);
        }
        let not_after = not_after_of(&first)?;
        let issuer = Issuer::from_ca_cert_der(&ders[0], key).map_err(crypto)?;
        Ok(Intermediate {
            chain_pem: chain_pem.to_string(),
            not_after,
            issuer,
        })
    }

    /// Issues a workload certificate in `mesh` for a proxy serving
    /// `services` with `tags` (every tag of every inbound, by name), valid
    /// for `validity` from `now` but never past the intermediate.
    pub fn issue(
        &self,
        mesh: &str,
        services: &[String],
        tags: &BTreeMap<String, Vec<String>>,
        validity: Duration,
        now: DateTime<Utc>,
    ) -> Result<WorkloadCertificate, PkiError> {
        let key = KeyPair::generate().map_err(crypto)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyAgreement];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let mut sans = Vec::new();
        for s in services {
            sans.push(spiffe_id(mesh, s));
        }
        for (name, values) in tags {
            for v in values {
                sans.push(tag_uri(name, v));
            }
        }
        params.subject_alt_names = sans
            .into_iter()
            .map(|u| u.try_into().map(SanType::URI).map_err(crypto))
            .collect::<Result<_, _>>()?;
        params.serial_number = Some(random_serial()?);
        params.use_authority_key_identifier_extension = true;
        let not_after = (now + std_to_chrono(validity)).min(self.not_after);
        params.not_before = to_offset(now - std_to_chrono(BACKDATE))?;
        params.not_after = to_offset(not_after)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(crypto)?;
        Ok(WorkloadCertificate {
            chain_pem: format!("{}{}", cert.pem(), self.chain_pem),
            key_pem: key.serialize_pem(),
            not_before: now,
            not_after,
        })
    }
}

/// What a proxy proves its identity with.
#[derive(Clone, PartialEq, Eq)]
pub struct WorkloadCertificate {
    /// The certificate, then the intermediate chain (PEM).
    pub chain_pem: String,
    /// Its private key (PKCS#8 PEM).
    pub key_pem: String,
    /// When it was issued.
    pub not_before: DateTime<Utc>,
    pub not_after: DateTime<Utc>,
}

impl std::fmt::Debug for WorkloadCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkloadCertificate")
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls_pki_types::UnixTime;
    use webpki::{anchor_from_trusted_cert, EndEntityCert, KeyUsage, ALL_VERIFICATION_ALGS};

    fn now() -> DateTime<Utc> {
        Utc::now()
    }

    fn ders(pem: &str) -> Vec<CertificateDer<'static>> {
        certificates(pem).unwrap()
    }

    /// Verifies `chain_pem` (leaf first) against `roots_pem` as a TLS peer
    /// would, for client authentication.
    fn verify(chain_pem: &str, roots_pem: &str) -> Result<(), webpki::Error> {
        let roots = ders(roots_pem);
        let anchors: Vec<_> = roots
            .iter()
            .map(|c| anchor_from_trusted_cert(c).unwrap().to_owned())
            .collect();
        let chain = ders(chain_pem);
        let leaf = EndEntityCert::try_from(&chain[0]).unwrap();
        let time = UnixTime::since_unix_epoch(std::time::Duration::from_secs(Utc::now().timestamp() as u64));
        leaf.verify_for_usage(
            ALL_VERIFICATION_ALGS,
            &anchors,
            &chain[1..],
            time,
            KeyUsage::client_auth(),
            None,
            None,
        )
        .map(|_| ())
    }

    fn uris(pem: &str) -> Vec<String> {
        let d = ders(pem);
        let cert = parse(&d[0]).unwrap();
        let san = cert.subject_alternative_name().unwrap().unwrap();
        san.value
            .general_names
            .iter()
            .filter_map(|n| match n {
                x509_parser::extensions::GeneralName::URI(u) => Some(u.to_string()),
                _ => None,
            })
            .collect()
    }

    struct Chain {
        root: SigningCa,
        intermediate: Intermediate,
    }

    fn chain(mesh: &str) -> Chain {
        let (root, _) = generate_root(mesh, 2048, Duration::from_secs(10 * 365 * 86400), now()).unwrap();
        let (key_pem, public_pem) = generate_intermediate_key().unwrap();
        let (cert_pem, _) = sign_intermediate(&root, mesh, "zone-1", &public_pem, now()).unwrap();
        let intermediate = Intermediate::new(&key_pem, &cert_pem).unwrap();
        Chain { root, intermediate }
    }

    #[test]
    fn workload_certificates_chain_to_the_root_and_carry_kuma_identities() {
        let c = chain("default");
        let tags = BTreeMap::from([
            ("kuma.io/service".to_string(), vec!["backend".to_string()]),
            ("version".to_string(), vec!["v1".to_string(), "v2".to_string()]),
        ]);
        let w = c
            .intermediate
            .issue("default", &["backend".into()], &tags, Duration::from_secs(3600), now())
            .unwrap();
        verify(&w.chain_pem, &c.root.cert_pem).unwrap();
        assert_eq!(
            uris(&w.chain_pem),
            [
                "spiffe://default/backend",
                "kuma://kuma.io/service/backend",
                "kuma://version/v1",
                "kuma://version/v2"
            ]
        );
        assert_eq!(uris(&c.root.cert_pem), ["spiffe://default"]);
        let lifetime = w.not_after - w.not_before;
        assert_eq!(lifetime.num_seconds(), 3600);
        // The key is the certificate's.
        let key = KeyPair::from_pem(&w.key_pem).unwrap();
        let leaf = ders(&w.chain_pem);
        assert_eq!(
            parse(&leaf[0]).unwrap().public_key().raw,
            key.subject_public_key_info().as_slice()
        );
    }

    #[test]
    fn another_meshs_root_does_not_verify() {
        let a = chain("team-a");
        let b = chain("team-b");
        let w = a
            .intermediate
            .issue(
                "team-a",
                &["web".into()],
                &BTreeMap::new(),
                Duration::from_secs(600),
                now(),
            )
            .unwrap();
        assert!(verify(&w.chain_pem, &b.root.cert_pem).is_err());
        // Both roots trusted (a CA rotation): verifies.
        let both = format!("{}{}", b.root.cert_pem, a.root.cert_pem);
        verify(&w.chain_pem, &both).unwrap();
    }

    #[test]
    fn workload_certificates_never_outlive_the_intermediate() {
        let c = chain("default");
        let w = c
            .intermediate
            .issue(
                "default",
                &["a".into()],
                &BTreeMap::new(),
                Duration::from_secs(10 * 365 * 86400),
                now(),
            )
            .unwrap();
        assert_eq!(w.not_after, c.intermediate.not_after);
    }

    #[test]
    fn provided_ca_is_checked() {
        let (root, key_pem) = generate_root("default", 2048, Duration::from_secs(86400 * 30), now()).unwrap();
        let ok = load_provided(&root.cert_pem, &key_pem, now()).unwrap();
        // It signs intermediates that chain to it.
        let (ikey, ipub) = generate_intermediate_key().unwrap();
        let (icert, _) = sign_intermediate(&ok, "default", "zone-1", &ipub, now()).unwrap();
        let i = Intermediate::new(&ikey, &icert).unwrap();
        let w = i
            .issue(
                "default",
                &["a".into()],
                &BTreeMap::new(),
                Duration::from_secs(600),
                now(),
            )
            .unwrap();
        verify(&w.chain_pem, &root.cert_pem).unwrap();

        // Another key.
        let (_, other_key) = generate_root("default", 2048, Duration::from_secs(86400), now()).unwrap();
        assert!(matches!(
            load_provided(&root.cert_pem, &other_key, now()),
            Err(PkiError::KeyMismatch)
        ));
        // Expired: checked as of a time after its end.
        let later = now() + chrono::Duration::days(31);
        assert!(matches!(
            load_provided(&root.cert_pem, &key_pem, later),
            Err(PkiError::Expired(_))
        ));
        // Not a CA: a workload certificate and its key.
        let err = load_provided(&w.chain_pem, &w.key_pem, now()).unwrap_err();
        assert!(matches!(err, PkiError::NotCa(_)), "{err}");
        // Garbage.
        let garbage =
            "-----BEGIN CERTIFICATE-----\n".to_string() + &"QUJD".repeat(25_000) + "\n-----END CERTIFICATE-----\n";
        assert!(load_provided(&garbage, &key_pem, now()).is_err());
        assert!(load_provided("no pem at all", &key_pem, now()).is_err());
        assert!(load_provided(&root.cert_pem, "not a key", now()).is_err());
    }

    /// Found by the mtls_pem fuzz target: a subject attribute whose type
    /// decodes to an object identifier with a first arc above 2 made rcgen
    /// panic when the CA signed (it writes the subject back as the issuer).
    #[test]
    fn a_subject_that_cannot_be_written_back_is_refused_not_a_panic() {
        use base64::Engine;
        let (root, key_pem) = generate_root("default", 2048, Duration::from_secs(86400), now()).unwrap();
        let mut der = ders(&root.cert_pem)[0].to_vec();
        // The organizationName attribute type 2.5.4.10 (55 04 0a) becomes
        // 3.7.4.10: 0x7f decodes as 40 * 3 + 7.
        // The subject comes after the issuer: the last occurrence.
        let at = der.windows(3).rposition(|w| w == [0x55, 0x04, 0x0a]).unwrap();
        der[at] = 0x7f;
        let b64 = base64::engine::general_purpose::STANDARD.encode(&der);
        let pem = format!("-----BEGIN CERTIFICATE-----\n{b64}\n-----END CERTIFICATE-----\n");
        match load_provided(&pem, &key_pem, now()) {
            Err(PkiError::Pem(m)) => assert!(m.contains("subject"), "{m}"),
            other => panic!("expected a refusal naming the subject, got {other:?}"),
        }
        assert!(load_root(&pem, &key_pem).is_err());
    }

    #[test]
    fn an_intermediate_refuses_a_certificate_for_another_key() {
        let c = chain("default");
        let (other_key, _) = generate_intermediate_key().unwrap();
        assert!(matches!(
            Intermediate::new(&other_key, &c.intermediate.chain_pem),
            Err(PkiError::KeyMismatch)
        ));
    }

    #[test]
    fn stored_roots_load_back() {
        let (root, key_pem) = generate_root("m", 2048, Duration::from_secs(86400), now()).unwrap();
        let again = load_root(&root.cert_pem, &key_pem).unwrap();
        assert_eq!(again.not_after.timestamp(), root.not_after.timestamp());
        let (ikey, ipub) = generate_intermediate_key().unwrap();
        let (icert, _) = sign_intermediate(&again, "m", "z", &ipub, now()).unwrap();
        let i = Intermediate::new(&ikey, &icert).unwrap();
        let w = i
            .issue("m", &["s".into()], &BTreeMap::new(), Duration::from_secs(600), now())
            .unwrap();
        verify(&w.chain_pem, &root.cert_pem).unwrap();
    }
}
