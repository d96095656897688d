//! TLS material of the global's KDS server (DESIGN §7) and of a zone's xDS
//! server (DESIGN §10): one mechanism, two [`Purpose`]s.
//!
//! With `--kds-tls-cert`/`--kds-tls-key` (`--xds-tls-…`) the files are used
//! as given. Without them the process makes its own: a CA (an ECDSA P-256
//! key and a self-signed CA certificate) kept in the store as a system
//! record ([`KDS`]`.ca_record`),
//! created with `put_system_if_absent` so that every replica on one etcd, and
//! every restart on one data dir, shares one CA. Each process then signs its
//! own serving certificate with that CA for the names it is reached by, so
//! replicas on different hosts each present a certificate that is valid for
//! their own names, and zones need to trust only the CA (`--ca-file`). A copy
//! of the CA certificate goes to `<data dir>/kds-ca.pem` for operators;
//! `GET /kds-info` and `meridianctl generate zone-join` hand it out too. A
//! zone does the same for its xDS server (`xds-ca.pem`, `GET /xds-ca`, what
//! `meridian-dp --ca-cert-file` takes).

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};
use chrono::Datelike;
use meridian_store::Store;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};

/// Which server the material is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Purpose {
    /// The system record holding the generated CA (JSON: `certPem`, `keyPem`).
    pub ca_record: &'static str,
    /// The file in the data dir that receives a copy of the generated CA.
    pub ca_file_name: &'static str,
    /// Names the server in messages (`KDS`, `xDS`).
    pub what: &'static str,
    /// The flag prefix of the given files (`--kds-tls`).
    pub flag: &'static str,
    ca_common_name: &'static str,
    leaf_common_name: &'static str,
    /// Who receives the CA copy, for the log line.
    ca_for: &'static str,
}

/// The global's KDS server, which zones verify.
pub const KDS: Purpose = Purpose {
    ca_record: "kds-tls-ca",
    ca_file_name: "kds-ca.pem",
    what: "KDS",
    flag: "--kds-tls",
    ca_common_name: "Meridian KDS CA",
    leaf_common_name: "meridian-global KDS",
    ca_for: "zones (--ca-file)",
};

/// A zone's xDS server, which proxies verify.
pub const XDS: Purpose = Purpose {
    ca_record: "xds-tls-ca",
    ca_file_name: "xds-ca.pem",
    what: "xDS",
    flag: "--xds-tls",
    ca_common_name: "Meridian zone xDS CA",
    leaf_common_name: "meridian-zone xDS",
    ca_for: "proxies (meridian-dp --ca-cert-file)",
};

/// The KDS CA's system record (kept for callers that name it).
pub const CA_RECORD: &str = KDS.ca_record;
/// The KDS CA's file in the data dir.
pub const CA_FILE_NAME: &str = KDS.ca_file_name;
/// Names every generated serving certificate is valid for.
pub const ALWAYS_NAMES: [&str; 2] = ["localhost", "127.0.0.1"];
/// How long generated certificates are valid, in years.
const VALID_YEARS: i32 = 10;

/// What the server serves and what its clients must trust.
#[derive(Clone)]
pub struct TlsMaterial {
    /// The serving certificate chain (PEM): leaf first.
    pub cert_pem: String,
    /// The serving certificate's private key (PEM).
    pub key_pem: String,
    /// What a zone passes as `--ca-file` (PEM): the generated CA, or the
    /// given certificate chain.
    pub ca_pem: String,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("cert_pem", &self.cert_pem)
            .field("ca_pem", &self.ca_pem)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredCa {
    cert_pem: String,
    key_pem: String,
}

/// Loads the given certificate and key, or generates a serving certificate
/// for `names` (plus `localhost` and `127.0.0.1`) signed by the CA kept in
/// the store. See the module docs.
pub async fn load_or_generate(
    purpose: &Purpose,
    store: &Arc<dyn Store>,
    data_dir: Option<&Path>,
    cert: Option<&Path>,
    key: Option<&Path>,
    names: &[String],
) -> anyhow::Result<TlsMaterial> {
    match (cert, key) {
        (Some(cert), Some(key)) => load(purpose, cert, key).await,
        (Some(_), None) => {
            let f = purpose.flag;
            bail!("{f}-cert is given without {f}-key: give both, or neither to generate them")
        }
        (None, Some(_)) => {
            let f = purpose.flag;
            bail!("{f}-key is given without {f}-cert: give both, or neither to generate them")
        }
        (None, None) => {
            let material = generate(purpose, store, names).await?;
            if let Some(dir) = data_dir {
                write_ca_copy(purpose, dir, &material.ca_pem).await;
            }
            Ok(material)
        }
    }
}

async fn load(purpose: &Purpose, cert: &Path, key: &Path) -> anyhow::Result<TlsMaterial> {
    let what = purpose.what;
    let cert_pem = tokio::fs::read_to_string(cert)
        .await
        .with_context(|| format!("reading the {what} certificate {}", cert.display()))?;
    let key_pem = tokio::fs::read_to_string(key)
        .await
        .with_context(|| format!("reading the {what} private key {}", key.display()))?;
    let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{} is not a PEM certificate chain", cert.display()))?;
    if certs.is_empty() {
        bail!("{} holds no PEM certificate", cert.display());
    }
    PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .with_context(|| format!("{} is not a PEM private key", key.display()))?;
    Ok(TlsMaterial {
        ca_pem: cert_pem.clone(),
        cert_pem,
        key_pem,
    })
}

/// The CA's parameters; rebuilt identically each time, so that an issuer
/// made from them and the stored key signs as the stored CA certificate.
fn ca_params(purpose: &Purpose) -> anyhow::Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, purpose.ca_common_name);
    params.distinguished_name.push(DnType::OrganizationName, "Meridian");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(&mut params);
    Ok(params)
}

fn set_validity(params: &mut CertificateParams) {
    // From yesterday, to absorb clock skew between the global and zones.
    let from = chrono::Utc::now() - chrono::Duration::days(1);
    let day = from.day().min(28) as u8;
    let month = from.month() as u8;
    params.not_before = rcgen::date_time_ymd(from.year(), month, day);
    params.not_after = rcgen::date_time_ymd(from.year() + VALID_YEARS, month, day);
}

/// The CA from the store, created there by the first caller.
async fn shared_ca(purpose: &Purpose, store: &Arc<dyn Store>) -> anyhow::Result<StoredCa> {
    let (what, record) = (purpose.what, purpose.ca_record);
    let stored = match store
        .get_system(None, record)
        .await
        .with_context(|| format!("reading the {what} CA from the store"))?
    {
        Some(bytes) => bytes,
        None => {
            let key = KeyPair::generate().with_context(|| format!("generating the {what} CA key"))?;
            let cert = ca_params(purpose)?
                .self_signed(&key)
                .with_context(|| format!("signing the {what} CA certificate"))?;
            let fresh = StoredCa {
                cert_pem: cert.pem(),
                key_pem: key.serialize_pem(),
            };
            store
                .put_system_if_absent(None, record, serde_json::to_vec(&fresh)?)
                .await
                .with_context(|| format!("storing the {what} CA"))?
        }
    };
    serde_json::from_slice(&stored)
        .with_context(|| format!("the stored {what} CA (system record {record}) is unreadable"))
}

async fn generate(purpose: &Purpose, store: &Arc<dyn Store>, names: &[String]) -> anyhow::Result<TlsMaterial> {
    let what = purpose.what;
    let ca = shared_ca(purpose, store).await?;
    let ca_key = KeyPair::from_pem(&ca.key_pem).with_context(|| format!("the stored {what} CA key is unreadable"))?;
    let issuer = Issuer::new(ca_params(purpose)?, ca_key);

    let sans: BTreeSet<String> = ALWAYS_NAMES
        .iter()
        .map(|s| s.to_string())
        .chain(names.iter().map(|n| n.trim().to_string()))
        .filter(|n| !n.is_empty())
        .collect();
    let sans: Vec<String> = sans.into_iter().collect();
    for name in &sans {
        check_name(name).map_err(|e| anyhow::anyhow!("cannot put {name:?} in the {what} server certificate: {e}"))?;
    }
    let mut params = CertificateParams::new(sans.clone())
        .with_context(|| format!("the {what} server names {sans:?} are not valid DNS names or IP addresses"))?;
    params
        .distinguished_name
        .push(DnType::CommonName, purpose.leaf_common_name);
    params.is_ca = IsCa::NoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params);
    let key = KeyPair::generate().with_context(|| format!("generating the {what} server key"))?;
    let cert = params
        .signed_by(&key, &issuer)
        .with_context(|| format!("signing the {what} server certificate"))?;
    tracing::info!(names = ?sans, "generated the {what} server certificate from the shared CA");
    Ok(TlsMaterial {
        cert_pem: format!("{}{}", cert.pem(), ca.cert_pem),
        key_pem: key.serialize_pem(),
        ca_pem: ca.cert_pem,
    })
}

/// Checks that `name` can go into a serving certificate: an IP address or
/// a DNS name.
pub fn check_name(name: &str) -> Result<(), String> {
    rustls_pki_types::ServerName::try_from(name)
        .map(|_| ())
        .map_err(|_| "not a DNS name or an IP address".to_string())
}

/// Writes the CA for operators; a failure only warns: the store holds the
/// CA and the API serves it.
async fn write_ca_copy(purpose: &Purpose, dir: &Path, ca_pem: &str) {
    let path = dir.join(purpose.ca_file_name);
    let (what, ca_for) = (purpose.what, purpose.ca_for);
    let result = async {
        tokio::fs::create_dir_all(dir).await?;
        tokio::fs::write(&path, ca_pem).await
    }
    .await;
    match result {
        Ok(()) => tracing::info!(path = %path.display(), "wrote the {what} CA certificate for {ca_for}"),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "could not write a copy of the {what} CA certificate")
        }
    }
}

#[cfg(test)]
mod tests {
    use meridian_store::memory::MemoryStore;
    use rustls_pki_types::{ServerName, UnixTime};

    use super::*;

    fn certs(pem: &str) -> Vec<CertificateDer<'static>> {
        CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap()
    }

    /// What a zone does: trust `ca_pem`, verify the served chain for `name`.
    fn verify_as_zone(m: &TlsMaterial, name: &str) -> Result<(), webpki::Error> {
        let ca = certs(&m.ca_pem);
        let anchors: Vec<_> = ca
            .iter()
            .map(|c| webpki::anchor_from_trusted_cert(c).unwrap().to_owned())
            .collect();
        let chain = certs(&m.cert_pem);
        let leaf = webpki::EndEntityCert::try_from(&chain[0])?;
        leaf.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            &chain[1..],
            UnixTime::now(),
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )?;
        leaf.verify_is_valid_for_subject_name(&ServerName::try_from(name.to_string()).unwrap())
    }

    #[tokio::test]
    async fn generated_once_and_shared() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let names = vec!["global.example".to_string(), "10.1.2.3".to_string()];
        let first = load_or_generate(&KDS, &store, Some(&data), None, None, &names)
            .await
            .unwrap();
        assert!(
            first.ca_pem.starts_with("-----BEGIN CERTIFICATE-----"),
            "{}",
            first.ca_pem
        );
        assert_eq!(certs(&first.ca_pem).len(), 1);
        assert_eq!(certs(&first.cert_pem).len(), 2, "leaf and CA");
        PrivateKeyDer::from_pem_slice(first.key_pem.as_bytes()).unwrap();
        assert_eq!(std::fs::read_to_string(data.join(CA_FILE_NAME)).unwrap(), first.ca_pem);

        for name in ["localhost", "127.0.0.1", "global.example", "10.1.2.3"] {
            verify_as_zone(&first, name).unwrap_or_else(|e| panic!("{name}: {e:?}"));
        }
        assert!(verify_as_zone(&first, "other.example").is_err());

        // A second replica (or a restart) on the same store: the same CA,
        // and its own serving certificate for its own names verifies too.
        let second = load_or_generate(&KDS, &store, None, None, None, &["replica-2".to_string()])
            .await
            .unwrap();
        assert_eq!(second.ca_pem, first.ca_pem);
        let mut crossed = second.clone();
        crossed.ca_pem = first.ca_pem.clone();
        verify_as_zone(&crossed, "replica-2").unwrap();

        // Concurrent first starts agree on one CA.
        let fresh: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let (a, b) = tokio::join!(
            load_or_generate(&KDS, &fresh, None, None, None, &[]),
            load_or_generate(&KDS, &fresh, None, None, None, &[])
        );
        assert_eq!(a.unwrap().ca_pem, b.unwrap().ca_pem);

        // Another store, another CA: its certificate does not verify here.
        let other: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let mut foreign = load_or_generate(&KDS, &other, None, None, None, &[]).await.unwrap();
        assert_ne!(foreign.ca_pem, first.ca_pem);
        foreign.ca_pem = first.ca_pem.clone();
        assert!(verify_as_zone(&foreign, "localhost").is_err());
    }

    #[tokio::test]
    async fn each_purpose_has_its_own_ca() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let dir = tempfile::tempdir().unwrap();
        let kds = load_or_generate(&KDS, &store, Some(dir.path()), None, None, &[])
            .await
            .unwrap();
        let xds = load_or_generate(&XDS, &store, Some(dir.path()), None, None, &[])
            .await
            .unwrap();
        assert_ne!(kds.ca_pem, xds.ca_pem);
        verify_as_zone(&xds, "127.0.0.1").unwrap();
        let mut crossed = xds.clone();
        crossed.ca_pem = kds.ca_pem.clone();
        assert!(
            verify_as_zone(&crossed, "127.0.0.1").is_err(),
            "the KDS CA does not vouch for xDS"
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("xds-ca.pem")).unwrap(),
            xds.ca_pem
        );
        let err = load_or_generate(&XDS, &store, None, Some(dir.path()), None, &[])
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("--xds-tls-cert is given without --xds-tls-key"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn given_files_are_used_as_they_are() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let generated = load_or_generate(&KDS, &store, None, None, None, &[]).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&cert, &generated.cert_pem).unwrap();
        std::fs::write(&key, &generated.key_pem).unwrap();
        let empty: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let loaded = load_or_generate(&KDS, &empty, Some(dir.path()), Some(&cert), Some(&key), &[])
            .await
            .unwrap();
        assert_eq!(loaded.cert_pem, generated.cert_pem);
        assert_eq!(loaded.key_pem, generated.key_pem);
        assert_eq!(loaded.ca_pem, generated.cert_pem, "the chain as given");
        assert_eq!(
            empty.get_system(None, CA_RECORD).await.unwrap(),
            None,
            "nothing generated"
        );
        assert!(!dir.path().join(CA_FILE_NAME).exists());

        let err = load_or_generate(&KDS, &store, None, Some(&cert), None, &[])
            .await
            .unwrap_err();
        assert!(err.to_string().contains("without --kds-tls-key"), "{err}");
        let err = load_or_generate(&KDS, &store, None, None, Some(&key), &[])
            .await
            .unwrap_err();
        assert!(err.to_string().contains("without --kds-tls-cert"), "{err}");

        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a pem").unwrap();
        let err = load_or_generate(&KDS, &store, None, Some(&junk), Some(&key), &[])
            .await
            .unwrap_err();
        assert!(format!("{err:#}").contains("junk.pem"), "{err:#}");
        let err = load_or_generate(&KDS, &store, None, Some(&cert), Some(&junk), &[])
            .await
            .unwrap_err();
        assert!(format!("{err:#}").contains("not a PEM private key"), "{err:#}");
        let missing = dir.path().join("missing.pem");
        let err = load_or_generate(&KDS, &store, None, Some(&missing), Some(&key), &[])
            .await
            .unwrap_err();
        assert!(format!("{err:#}").contains("missing.pem"), "{err:#}");
    }

    #[tokio::test]
    async fn bad_names_and_a_corrupt_record_are_errors() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let err = load_or_generate(&KDS, &store, None, None, None, &["bad name!".to_string()])
            .await
            .unwrap_err();
        assert!(format!("{err:#}").contains("bad name!"), "{err:#}");
        store.put_system(None, CA_RECORD, b"{".to_vec()).await.unwrap();
        let err = load_or_generate(&KDS, &store, None, None, None, &[]).await.unwrap_err();
        assert!(format!("{err:#}").contains(CA_RECORD), "{err:#}");
    }
}
