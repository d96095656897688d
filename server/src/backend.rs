//! Opening the configured store, and who leads the one-time work on it.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use meridian_store::embedded::EmbeddedStore;
use meridian_store::etcd::EtcdStore;
use meridian_store::leader::{LeaderElector, LeaderHandle};
use meridian_store::memory::MemoryStore;
use meridian_store::Store;
use serde::Deserialize;

/// The store backends a control plane can run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// A crash-safe database file in the data directory (the default).
    Embedded,
    /// Nothing persisted; for tests.
    Memory,
    /// etcd, shared by several replicas of the global.
    Etcd,
}

/// Where the store lives.
#[derive(Clone, Debug)]
pub struct StoreSettings<'a> {
    pub kind: StoreKind,
    pub data_dir: &'a Path,
    pub etcd_endpoints: &'a [String],
    pub etcd_prefix: &'a str,
    /// A name for this replica in leader election.
    pub instance_id: &'a str,
    /// TLS to etcd.
    pub etcd_tls: &'a EtcdTlsFiles,
}

/// `--etcd-cacert`, `--etcd-cert`, `--etcd-key`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EtcdTlsFiles {
    pub cacert: Option<std::path::PathBuf>,
    pub cert: Option<std::path::PathBuf>,
    pub key: Option<std::path::PathBuf>,
}

impl EtcdTlsFiles {
    /// Reads the files; `None` without a CA. A certificate needs its key
    /// and the other way round.
    pub fn load(&self) -> anyhow::Result<Option<meridian_store::etcd::EtcdTls>> {
        let read = |flag: &str, p: &Path| std::fs::read(p).with_context(|| format!("{flag} {}", p.display()));
        let client = match (&self.cert, &self.key) {
            (Some(c), Some(k)) => Some((read("--etcd-cert", c)?, read("--etcd-key", k)?)),
            (None, None) => None,
            (Some(_), None) => anyhow::bail!("--etcd-cert needs --etcd-key"),
            (None, Some(_)) => anyhow::bail!("--etcd-key needs --etcd-cert"),
        };
        match &self.cacert {
            Some(ca) => Ok(Some(meridian_store::etcd::EtcdTls {
                ca_pem: read("--etcd-cacert", ca)?,
                client,
            })),
            None if client.is_some() => anyhow::bail!("--etcd-cert and --etcd-key need --etcd-cacert"),
            None => Ok(None),
        }
    }
}

/// An open store and the leadership of one-time work on it; keep the
/// handle alive for as long as the process serves.
pub struct Backend {
    pub store: Arc<dyn Store>,
    pub leader: LeaderHandle,
}

/// Opens the store. On etcd, leadership comes from an election among the
/// replicas; on a local store this process is the only one and always leads.
pub async fn open(s: &StoreSettings<'_>) -> anyhow::Result<Backend> {
    match s.kind {
        StoreKind::Memory => Ok(Backend {
            store: Arc::new(MemoryStore::new()),
            leader: LeaderHandle::always(),
        }),
        StoreKind::Embedded => {
            let store = EmbeddedStore::open(s.data_dir)
                .with_context(|| format!("opening the embedded store in {}", s.data_dir.display()))?;
            Ok(Backend {
                store: Arc::new(store),
                leader: LeaderHandle::always(),
            })
        }
        StoreKind::Etcd => {
            let options = meridian_store::etcd::EtcdOptions {
                tls: s.etcd_tls.load()?,
                ..Default::default()
            };
            let store = EtcdStore::connect_with(s.etcd_endpoints, s.etcd_prefix, options)
                .await
                .with_context(|| format!("connecting to etcd at {}", s.etcd_endpoints.join(",")))?;
            let leader = LeaderElector::for_store(&store, s.instance_id).start();
            Ok(Backend {
                store: Arc::new(store),
                leader,
            })
        }
    }
}
