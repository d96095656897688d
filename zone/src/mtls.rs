//! Mesh mTLS at a zone (DESIGN §11, docs/decisions/0006): the zone's
//! intermediate CA of each mesh, and the workload certificates it issues to
//! its proxies.
//!
//! **Intermediates.** For the enabled backend `B` of a mesh `M`, the zone
//! makes a P-256 key once and keeps it in its own store (the mesh system
//! record `mtls-intermediate/<B>`; it never leaves the zone), and asks for a
//! certificate with `ZoneCertificateRequest M/<B>` (its public key), which
//! KDS carries to the global (a standalone zone's own authority answers
//! it). The answer, `ZoneCertificate M/<zone>.<B>`, arrives in the replica;
//! with it the zone can issue certificates, also while the global is away
//! and across a restart.
//!
//! **Workload certificates** are issued on demand ([`ZoneMtls::identity`])
//! for a proxy the zone admitted: URI SANs `spiffe://M/<service>` for each
//! inbound service and `kuma://<tag>/<value>` for each tag, valid for the
//! backend's `dpCert.rotation.expiration`. One certificate per dataplane,
//! kept in memory: the sidecar's SDS secret and the files `meridian-dp`
//! writes for a gRPC application are the same certificate. It is renewed at
//! 4/5 of its lifetime less a jitter of up to 1/20 (so a zone's proxies do
//! not all renew at once), and at once when the dataplane's identity
//! changes (services, tags) or the mesh's CA does. A renewal changes the
//! proxy's configuration (a new SDS secret, new files): no reconnection.
//! When the dataplane goes, so does its certificate; nothing renews it.
//!
//! **A new root is trusted before it is used.** The trust bundle holds the
//! roots of every backend the mesh lists, from the moment the zone has
//! them; certificates of a backend whose root arrived while the zone runs
//! are issued, when proxies of the mesh hold certificates of another
//! backend, only [`TRUST_SETTLE`] later, so that every proxy trusts the
//! new root (sidecars over SDS at once, gRPC applications within their file
//! refresh) before any peer presents a certificate that chains to it. Until
//! then, and whenever issuing fails, a proxy keeps its current certificate
//! while it is valid. With the API keeping the previously enabled backend
//! listed during a switch, switching `enabledBackend` drops no request.
//!
//! [`ZoneMtls::changed`] wakes the xDS side and the agents' certificate
//! streams when to look again, and [`ZoneMtls::take_changes`] says what: a
//! mesh whose CA material changed, proxies whose certificates are due or
//! were first issued.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use meridian_core::dataplane::{Dataplane, SERVICE_TAG};
use meridian_core::decode::Document;
use meridian_core::mesh::Mesh;
use meridian_core::mtls::{zone_certificate_name, CertificateAuthority, ZoneCertificate, ZoneCertificateRequest};
use meridian_core::{ResourceKey, ResourceType};
use meridian_server::manager::Manager;
use meridian_server::mtls::pki::{self, Intermediate, PkiError, WorkloadCertificate};
use meridian_store::{Event, Filter};
use meridian_xds::snapshot::{MeshTls, ProxyIdentity};
use meridian_xds::source::ProxyId;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch};

/// How long a root that arrived while the zone runs is in every trust bundle
/// before certificates chaining to it are issued: longer than a gRPC
/// application takes to read its files again (one second) and than a
/// bundle takes to reach every proxy.
pub const TRUST_SETTLE: Duration = Duration::from_secs(5);

/// Certificates due within this many milliseconds of each other are renewed
/// in one batch.
const RENEWAL_BATCH_MS: i64 = 100;

/// The prefix of the mesh system records holding the zone's intermediate keys.
pub const KEY_RECORD_PREFIX: &str = "mtls-intermediate/";

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct StoredKey {
    key_pem: String,
    public_key_pem: String,
}

/// An intermediate key of this zone.
#[derive(Clone)]
struct LocalKey {
    key_pem: String,
    public_key_pem: String,
}

/// A mesh's issuing CA at this zone: the backend and its intermediate.
struct MeshCa {
    backend: String,
    /// The `ZoneCertificate` it was built from (its PEM), to notice a new one.
    certificate_pem: String,
    intermediate: Intermediate,
}

/// A certificate issued to a proxy.
struct Issued {
    /// Certificates issued to this proxy before this one.
    regenerations: u64,
    /// What it was issued for; another identity or CA means a new one.
    identity_of: IdentityInputs,
    certificate: WorkloadCertificate,
    renew_at: DateTime<Utc>,
    shared: Arc<ProxyIdentity>,
}

/// What a workload certificate says and who signed it.
#[derive(Clone, PartialEq, Eq)]
struct IdentityInputs {
    backend: String,
    ca_pem: String,
    services: Vec<String>,
    tags: BTreeMap<String, Vec<String>>,
    validity: Duration,
}

/// What changed for the proxies of the zone since it was last taken.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Meshes whose CA material changed.
    pub meshes: BTreeSet<String>,
    /// Proxies whose certificates are due for renewal, or were issued their
    /// first one.
    pub proxies: BTreeSet<ProxyId>,
}

struct Inner {
    manager: Arc<Manager>,
    zone: String,
    /// Intermediate keys, by (mesh, backend).
    keys: Mutex<HashMap<(String, String), LocalKey>>,
    /// Issuing CAs, by mesh.
    cas: Mutex<HashMap<String, Arc<MeshCa>>>,
    /// When this zone first saw each root (mesh, backend, certificate);
    /// roots present at start count as seen long ago.
    roots_seen: Mutex<HashMap<(String, String, String), std::time::Instant>>,
    issued: Mutex<HashMap<ProxyId, Issued>>,
    /// When each held certificate is due, earliest first (renewal loop).
    schedule: Mutex<BTreeSet<(DateTime<Utc>, ProxyId)>>,
    /// When the renewal loop wakes next, if it sleeps until a deadline.
    next_wake: Mutex<Option<DateTime<Utc>>>,
    /// Changes not taken yet (by the xDS side, [`ZoneMtls::take_changes`]).
    pending: Mutex<Changes>,
    /// Every change as it happens: wakes whoever follows certificates.
    events: broadcast::Sender<Arc<Changes>>,
    /// Backends that issued the certificates held, per mesh.
    in_use: Mutex<HashMap<String, BTreeSet<String>>>,
    /// Wakes the renewal timer when an earlier deadline appears.
    reschedule: tokio::sync::Notify,
}

/// Mesh mTLS of one zone; cheap to clone.
#[derive(Clone)]
pub struct ZoneMtls {
    inner: Arc<Inner>,
}

/// Why a proxy has no certificate (yet).
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The mesh has no mTLS; nothing to issue.
    #[error("mesh {0:?} has no mTLS enabled")]
    Disabled(String),
    /// The zone's intermediate for the mesh has not arrived yet.
    #[error("the zone's intermediate CA of mesh {mesh:?} (backend {backend:?}) is not signed yet")]
    NotReady { mesh: String, backend: String },
    #[error(transparent)]
    Pki(#[from] PkiError),
}

impl ZoneMtls {
    /// Starts the loop that keeps the intermediates; it ends with `shutdown`.
    pub fn start(manager: Arc<Manager>, zone: String, shutdown: watch::Receiver<bool>) -> Self {
        let (events, _) = broadcast::channel(1024);
        let z = ZoneMtls {
            inner: Arc::new(Inner {
                manager,
                zone,
                keys: Mutex::new(HashMap::new()),
                cas: Mutex::new(HashMap::new()),
                roots_seen: Mutex::new(HashMap::new()),
                issued: Mutex::new(HashMap::new()),
                schedule: Mutex::new(BTreeSet::new()),
                next_wake: Mutex::new(None),
                pending: Mutex::new(Changes::default()),
                events,
                in_use: Mutex::new(HashMap::new()),
                reschedule: tokio::sync::Notify::new(),
            }),
        };
        tokio::spawn(z.clone().keys_loop(shutdown.clone()));
        tokio::spawn(z.clone().renewal_loop(shutdown));
        z
    }

    /// Every change (renewals due, a mesh's CA material) as it happens; a
    /// subscriber that lags must look at everything again.
    pub fn changed(&self) -> broadcast::Receiver<Arc<Changes>> {
        self.inner.events.subscribe()
    }

    /// The changes since the last call (the xDS side regenerates them).
    pub fn take_changes(&self) -> Changes {
        std::mem::take(&mut *lock(&self.inner.pending))
    }

    fn announce(&self, meshes: BTreeSet<String>, proxies: BTreeSet<ProxyId>) {
        if meshes.is_empty() && proxies.is_empty() {
            return;
        }
        {
            let mut p = lock(&self.inner.pending);
            p.meshes.extend(meshes.iter().cloned());
            p.proxies.extend(proxies.iter().cloned());
        }
        // Nobody listening is fine: the pending set keeps it.
        let _ = self.inner.events.send(Arc::new(Changes { meshes, proxies }));
    }

    /// The issuing CA of `mesh` for `backend`, built from the replica's
    /// `ZoneCertificate` and this zone's key when both are there.
    fn mesh_ca(&self, mesh: &str, backend: &str) -> Option<Arc<MeshCa>> {
        // A root settles only when proxies hold certificates of another
        // backend: otherwise no peer could present a certificate that an
        // up-to-date bundle does not trust.
        let rotating = lock(&self.inner.in_use)
            .get(mesh)
            .is_some_and(|b| b.iter().any(|b| b != backend));
        if rotating && !self.root_settled(mesh, backend) {
            return None;
        }
        // The CA the keys loop keeps current; it rebuilds it when a new
        // zone certificate arrives (and announces the mesh).
        if let Some(ca) = lock(&self.inner.cas).get(mesh) {
            if ca.backend == backend {
                return Some(ca.clone());
            }
        }
        self.build_mesh_ca(mesh, backend)
    }

    /// The CA of `mesh` for `backend` from the replica's `ZoneCertificate`
    /// and this zone's key, kept for the next calls.
    fn build_mesh_ca(&self, mesh: &str, backend: &str) -> Option<Arc<MeshCa>> {
        let key = lock(&self.inner.keys)
            .get(&(mesh.to_string(), backend.to_string()))
            .cloned()?;
        let name = zone_certificate_name(&self.inner.zone, backend);
        let cert = self
            .inner
            .manager
            .get(&ResourceKey::in_mesh(ResourceType::ZoneCertificate, mesh, &name))
            .and_then(|r| serde_json::from_value::<ZoneCertificate>(r.spec).ok())
            .filter(|c| c.public_key == key.public_key_pem)?;
        if let Some(ca) = lock(&self.inner.cas).get(mesh) {
            if ca.backend == backend && ca.certificate_pem == cert.certificate {
                return Some(ca.clone());
            }
        }
        let intermediate = match Intermediate::new(&key.key_pem, &cert.certificate) {
            Ok(i) => i,
            Err(e) => {
                tracing::warn!(mesh, backend, error = %e, "the zone certificate from the global does not fit this zone's key");
                return None;
            }
        };
        let ca = Arc::new(MeshCa {
            backend: backend.to_string(),
            certificate_pem: cert.certificate,
            intermediate,
        });
        lock(&self.inner.cas).insert(mesh.to_string(), ca.clone());
        Some(ca)
    }

    /// Whether the root of `backend` has been trusted long enough to issue
    /// certificates chaining to it (see [`TRUST_SETTLE`]).
    fn root_settled(&self, mesh: &str, backend: &str) -> bool {
        let Some(root) = root_of(&self.inner.manager, mesh, backend) else {
            return false;
        };
        lock(&self.inner.roots_seen)
            .get(&(mesh.to_string(), backend.to_string(), root))
            .is_some_and(|seen| seen.elapsed() >= TRUST_SETTLE)
    }

    /// Records the roots of `mesh` this zone has now; returns when the
    /// youngest becomes settled, if one is not yet.
    fn note_roots(&self, mesh: &str, spec: &Mesh, at_start: bool) -> Option<std::time::Instant> {
        let now = std::time::Instant::now();
        let long_ago = now.checked_sub(TRUST_SETTLE).unwrap_or(now);
        let mut seen = lock(&self.inner.roots_seen);
        let mut pending: Option<std::time::Instant> = None;
        for b in spec.ca_backends() {
            let Some(root) = root_of(&self.inner.manager, mesh, &b.name) else {
                continue;
            };
            let at = *seen
                .entry((mesh.to_string(), b.name.clone(), root))
                .or_insert(if at_start { long_ago } else { now });
            let settled = at + TRUST_SETTLE;
            if settled > now {
                pending = Some(pending.map_or(settled, |p| p.min(settled)));
            }
        }
        pending
    }

    /// The workload certificate of proxy `id` defined as `dataplane` in a
    /// mesh of spec `mesh`, for its xDS configuration (which this call is
    /// building): the current one, or a new one when there is none, it is
    /// due, or what it says changed.
    pub fn identity(
        &self,
        id: &ProxyId,
        mesh: &Mesh,
        dataplane: &Dataplane,
    ) -> Result<Arc<ProxyIdentity>, IdentityError> {
        self.identity_at(id, mesh, dataplane, Utc::now(), false)
    }

    /// [`Self::identity`] for an agent's certificate stream: a proxy's first
    /// certificate issued here is announced, since the proxy's xDS (a gRPC
    /// application's TLS settings) waits for it.
    pub fn identity_for_agent(
        &self,
        id: &ProxyId,
        mesh: &Mesh,
        dataplane: &Dataplane,
    ) -> Result<Arc<ProxyIdentity>, IdentityError> {
        self.identity_at(id, mesh, dataplane, Utc::now(), true)
    }

    fn identity_at(
        &self,
        id: &ProxyId,
        mesh: &Mesh,
        dataplane: &Dataplane,
        now: DateTime<Utc>,
        announce_first: bool,
    ) -> Result<Arc<ProxyIdentity>, IdentityError> {
        let Some(mtls) = mesh.mtls_enabled() else {
            return Err(IdentityError::Disabled(id.mesh.clone()));
        };
        let backend = mtls.enabled.name.clone();
        let Some(ca) = self.mesh_ca(&id.mesh, &backend) else {
            // Not issuable yet (a new backend settling, an intermediate on
            // its way): the current certificate serves while it is valid.
            if let Some(i) = lock(&self.inner.issued).get(id) {
                if now < i.certificate.not_after {
                    return Ok(i.shared.clone());
                }
            }
            return Err(IdentityError::NotReady {
                mesh: id.mesh.clone(),
                backend,
            });
        };
        let (services, tags) = identity_of(dataplane);
        let inputs = IdentityInputs {
            backend,
            ca_pem: ca.certificate_pem.clone(),
            services,
            tags,
            validity: mtls.dp_cert_validity,
        };
        if let Some(i) = lock(&self.inner.issued).get(id) {
            // Due within the renewal loop's batch counts as due: the loop
            // announced it already and will not again.
            let due = now + chrono::Duration::milliseconds(RENEWAL_BATCH_MS) >= i.renew_at;
            if i.identity_of == inputs && !due {
                return Ok(i.shared.clone());
            }
        }
        let certificate = ca
            .intermediate
            .issue(&id.mesh, &inputs.services, &inputs.tags, inputs.validity, now)?;
        let renew_at = renewal_time(&certificate, jitter_fraction());
        let shared = Arc::new(ProxyIdentity::new(
            certificate.chain_pem.clone(),
            certificate.key_pem.clone(),
        ));
        lock(&self.inner.in_use)
            .entry(id.mesh.clone())
            .or_default()
            .insert(inputs.backend.clone());
        let mut issued = lock(&self.inner.issued);
        let regenerations = issued.get(id).map_or(0, |i| i.regenerations + 1);
        let previous = issued.insert(
            id.clone(),
            Issued {
                regenerations,
                identity_of: inputs,
                certificate,
                renew_at,
                shared: shared.clone(),
            },
        );
        drop(issued);
        {
            let mut schedule = lock(&self.inner.schedule);
            if let Some(p) = &previous {
                schedule.remove(&(p.renew_at, id.clone()));
            }
            schedule.insert((renew_at, id.clone()));
        }
        // The renewal loop sleeps until its earliest deadline: wake it only
        // for an earlier one.
        if lock(&self.inner.next_wake).is_none_or(|t| renew_at < t) {
            self.inner.reschedule.notify_one();
        }
        if previous.is_none() && announce_first {
            // A proxyless node's TLS settings wait for its first certificate.
            self.announce(BTreeSet::new(), BTreeSet::from([id.clone()]));
        }
        tracing::debug!(proxy = %id, %renew_at, "issued a workload certificate");
        Ok(shared)
    }

    /// What the DataplaneInsight of `id` says of its certificate (Kuma's
    /// `mTLS` field: backend, expiry, last regeneration, regenerations).
    pub fn status(&self, id: &ProxyId) -> Option<serde_json::Value> {
        let issued = lock(&self.inner.issued);
        let i = issued.get(id)?;
        Some(serde_json::json!({
            "issuedBackend": i.identity_of.backend,
            "certificateExpirationTime": meridian_core::resource::format_time(&i.certificate.not_after),
            "lastCertificateRegeneration": meridian_core::resource::format_time(&i.certificate.not_before),
            "certificateRegenerations": i.regenerations,
        }))
    }

    /// The identity `id` holds now, without issuing one (inspection).
    pub fn current(&self, id: &ProxyId) -> Option<Arc<ProxyIdentity>> {
        lock(&self.inner.issued).get(id).map(|i| i.shared.clone())
    }

    /// The certificate of `id` as issued (with its times), if any.
    pub fn issued(&self, id: &ProxyId) -> Option<WorkloadCertificate> {
        lock(&self.inner.issued).get(id).map(|i| i.certificate.clone())
    }

    /// Forgets the certificate of a proxy that is gone.
    pub fn forget(&self, id: &ProxyId) {
        if let Some(i) = lock(&self.inner.issued).remove(id) {
            lock(&self.inner.schedule).remove(&(i.renew_at, id.clone()));
        }
    }

    /// Forgets the certificates of the proxies `keep` does not keep.
    pub fn retain(&self, keep: impl Fn(&ProxyId) -> bool) {
        let mut issued = lock(&self.inner.issued);
        let before = issued.len();
        issued.retain(|id, _| keep(id));
        if issued.len() != before {
            lock(&self.inner.schedule).retain(|(_, id)| issued.contains_key(id));
        }
        let mut in_use: HashMap<String, BTreeSet<String>> = HashMap::new();
        for (id, i) in issued.iter() {
            in_use
                .entry(id.mesh.clone())
                .or_default()
                .insert(i.identity_of.backend.clone());
        }
        *lock(&self.inner.in_use) = in_use;
    }

    /// How many certificates are held.
    pub fn issued_count(&self) -> usize {
        lock(&self.inner.issued).len()
    }

    /// Announces the proxies whose certificates are due, at their time.
    async fn renewal_loop(self, mut shutdown: watch::Receiver<bool>) {
        loop {
            let now = Utc::now();
            // Certificates due within the next moment go together: one
            // regeneration for a batch, at most a moment early.
            let horizon = now + chrono::Duration::milliseconds(RENEWAL_BATCH_MS);
            let (due, next): (BTreeSet<ProxyId>, Option<DateTime<Utc>>) = {
                let mut schedule = lock(&self.inner.schedule);
                let mut due = BTreeSet::new();
                while let Some((t, _)) = schedule.first() {
                    if *t > horizon {
                        break;
                    }
                    if let Some((_, id)) = schedule.pop_first() {
                        due.insert(id);
                    }
                }
                (due, schedule.first().map(|(t, _)| *t))
            };
            *lock(&self.inner.next_wake) = next;
            if !due.is_empty() {
                tracing::debug!(count = due.len(), "workload certificates due for renewal");
                self.announce(BTreeSet::new(), due);
            }
            let wait = next
                .and_then(|t| (t - now).to_std().ok())
                .unwrap_or(Duration::from_secs(3600))
                .max(Duration::from_millis(10));
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.inner.reschedule.notified() => {}
                _ = shutdown.wait_for(|v| *v) => return,
            }
        }
    }

    /// Keeps an intermediate key and request for the enabled backend of
    /// every mesh, and announces meshes whose CA material changed.
    async fn keys_loop(self, mut shutdown: watch::Receiver<bool>) {
        let manager = self.inner.manager.clone();
        let _ = manager.cache().ready().clone().wait_for(|r| *r).await;
        let mut events = manager.cache().subscribe();
        let all = |m: &Manager| -> BTreeSet<String> {
            m.list(&Filter::kind(ResourceType::Mesh))
                .into_iter()
                .map(|r| r.key.name)
                .collect()
        };
        let mut dirty = all(&manager);
        let mut at_start = true;
        // Meshes waiting for a root to settle, and when.
        let mut settling: BTreeMap<String, std::time::Instant> = BTreeMap::new();
        loop {
            let mut retry = false;
            let mut changed = BTreeSet::new();
            let now = std::time::Instant::now();
            settling.retain(|mesh, at| {
                let due = *at <= now;
                if due {
                    dirty.insert(mesh.clone());
                    // Certificates of the settled root can be issued now.
                    changed.insert(mesh.clone());
                }
                !due
            });
            for mesh in std::mem::take(&mut dirty) {
                if let Some(spec) = manager
                    .get(&ResourceKey::global(ResourceType::Mesh, &mesh))
                    .and_then(|r| serde_json::from_value::<Mesh>(r.spec).ok())
                {
                    if let Some(at) = self.note_roots(&mesh, &spec, at_start) {
                        settling.insert(mesh.clone(), at);
                    }
                }
                match self.reconcile(&mesh).await {
                    Ok(true) => {
                        changed.insert(mesh);
                    }
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(mesh, error = %e, "mesh mTLS at this zone not brought up to date; retrying");
                        dirty.insert(mesh);
                        retry = true;
                    }
                }
            }
            at_start = false;
            self.announce(changed, BTreeSet::new());
            let mut wait = if retry {
                Duration::from_secs(1)
            } else {
                Duration::from_secs(86_400)
            };
            if let Some(at) = settling.values().min() {
                wait = wait.min(at.saturating_duration_since(std::time::Instant::now()));
            }
            let backoff = tokio::time::sleep(wait);
            tokio::select! {
                ev = events.recv() => match ev {
                    Ok(ev) => if let Some(m) = mesh_of_interest(&ev) { dirty.insert(m); },
                    Err(broadcast::error::RecvError::Lagged(_)) => dirty = all(&manager),
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = backoff => {}
                _ = shutdown.wait_for(|v| *v) => return,
            }
        }
    }

    /// Brings the zone's key and request of `mesh` up to date; `true` when
    /// what proxies of the mesh get may have changed.
    async fn reconcile(&self, mesh: &str) -> Result<bool, String> {
        let manager = &self.inner.manager;
        let spec = match manager.get(&ResourceKey::global(ResourceType::Mesh, mesh)) {
            Some(r) => {
                serde_json::from_value::<Mesh>(r.spec).map_err(|e| format!("stored mesh does not decode: {e}"))?
            }
            None => {
                let had = lock(&self.inner.cas).remove(mesh).is_some();
                lock(&self.inner.keys).retain(|(m, _), _| m != mesh);
                return Ok(had);
            }
        };
        let enabled = spec.mtls_enabled().map(|m| m.enabled.name.clone());
        // Requests of backends no longer enabled go.
        for r in manager.list(&Filter::in_mesh(ResourceType::ZoneCertificateRequest, mesh)) {
            if Some(&r.key.name) != enabled.as_ref() {
                manager.delete(&r.key).await.map_err(|e| e.to_string())?;
            }
        }
        let Some(backend) = enabled else {
            let had = lock(&self.inner.cas).remove(mesh).is_some();
            return Ok(had);
        };
        let key = self.local_key(mesh, &backend).await?;
        let request = ZoneCertificateRequest {
            backend: backend.clone(),
            public_key: key.public_key_pem.clone(),
        };
        let request_key = ResourceKey::in_mesh(ResourceType::ZoneCertificateRequest, mesh, &backend);
        let spec_json = serde_json::to_value(&request).map_err(|e| e.to_string())?;
        if manager.get(&request_key).is_none_or(|r| r.spec != spec_json) {
            manager
                .apply(Document {
                    key: request_key,
                    labels: BTreeMap::from([(meridian_server::kds::labels::ZONE.to_string(), self.inner.zone.clone())]),
                    spec: spec_json,
                })
                .await
                .map_err(|e| e.to_string())?;
            tracing::info!(mesh, backend = %backend, "asked for this zone's intermediate CA");
        }
        let before = lock(&self.inner.cas).get(mesh).map(|c| c.certificate_pem.clone());
        let after = self.build_mesh_ca(mesh, &backend).map(|c| c.certificate_pem.clone());
        let changed = after.is_some() && before != after;
        if changed {
            tracing::info!(mesh, backend = %backend, "this zone's intermediate CA is ready");
        }
        // Events of the replica (a new trust bundle, a new zone certificate)
        // regenerate the mesh by themselves; announced here is what only
        // this loop knows: a CA that became usable once its key was loaded.
        Ok(changed)
    }

    /// The zone's key for `backend` of `mesh`, made once.
    async fn local_key(&self, mesh: &str, backend: &str) -> Result<LocalKey, String> {
        let k = (mesh.to_string(), backend.to_string());
        if let Some(key) = lock(&self.inner.keys).get(&k) {
            return Ok(key.clone());
        }
        let store = self.inner.manager.store();
        let record = format!("{KEY_RECORD_PREFIX}{backend}");
        let bytes = match store.get_system(Some(mesh), &record).await.map_err(|e| e.to_string())? {
            Some(b) => b,
            None => {
                let (key_pem, public_key_pem) = pki::generate_intermediate_key().map_err(|e| e.to_string())?;
                let fresh = serde_json::to_vec(&StoredKey {
                    key_pem,
                    public_key_pem,
                })
                .map_err(|e| e.to_string())?;
                store
                    .put_system_if_absent(Some(mesh), &record, fresh)
                    .await
                    .map_err(|e| e.to_string())?
            }
        };
        let stored: StoredKey =
            serde_json::from_slice(&bytes).map_err(|e| format!("stored intermediate key does not decode: {e}"))?;
        let key = LocalKey {
            key_pem: stored.key_pem,
            public_key_pem: stored.public_key_pem,
        };
        lock(&self.inner.keys).insert(k, key.clone());
        Ok(key)
    }
}

/// The mesh's mTLS as generation sees it: mode and trust bundle (the roots
/// of every backend the mesh lists that the replica has).
pub fn mesh_tls(manager: &Manager, mesh: &str, spec: &Mesh) -> Option<MeshTls> {
    let mtls = spec.mtls_enabled()?;
    let mut bundle = String::new();
    for b in spec.ca_backends() {
        let key = ResourceKey::in_mesh(ResourceType::CertificateAuthority, mesh, &b.name);
        if let Some(ca) = manager
            .get(&key)
            .and_then(|r| serde_json::from_value::<CertificateAuthority>(r.spec).ok())
        {
            bundle.push_str(ca.certificate.trim());
            bundle.push('\n');
        }
    }
    Some(MeshTls {
        mode: mtls.mode,
        trust_bundle_pem: bundle,
    })
}

/// The root certificate the replica holds for `backend` of `mesh`.
fn root_of(manager: &Manager, mesh: &str, backend: &str) -> Option<String> {
    manager
        .get(&ResourceKey::in_mesh(ResourceType::CertificateAuthority, mesh, backend))
        .and_then(|r| serde_json::from_value::<CertificateAuthority>(r.spec).ok())
        .map(|ca| ca.certificate)
}

/// A fraction in [0, 1) from the system's randomness (0 without it).
fn jitter_fraction() -> f64 {
    let mut b = [0u8; 4];
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).is_err() {
        return 0.0;
    }
    f64::from(u32::from_le_bytes(b)) / (f64::from(u32::MAX) + 1.0)
}

/// When `c` is renewed: at 4/5 of its lifetime, earlier by `jitter` (in
/// [0, 1)) times 1/20 of it.
fn renewal_time(c: &WorkloadCertificate, jitter: f64) -> DateTime<Utc> {
    let lifetime = (c.not_after - c.not_before).num_milliseconds().max(0) as f64;
    let at = lifetime * (0.8 - 0.05 * jitter.clamp(0.0, 1.0));
    c.not_before + chrono::Duration::milliseconds(at as i64)
}

/// The services and tags a dataplane's certificate names: every inbound's
/// (or the gateway's) `kuma.io/service`, and every tag value by name.
fn identity_of(dataplane: &Dataplane) -> (Vec<String>, BTreeMap<String, Vec<String>>) {
    let mut services = BTreeSet::new();
    let mut tags: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let n = &dataplane.networking;
    let all = n
        .inbound
        .iter()
        .map(|i| &i.tags)
        .chain(n.gateway.iter().map(|g| &g.tags));
    for t in all {
        if let Some(s) = t.get(SERVICE_TAG) {
            services.insert(s.clone());
        }
        for (k, v) in t {
            tags.entry(k.clone()).or_default().insert(v.clone());
        }
    }
    (
        services.into_iter().collect(),
        tags.into_iter().map(|(k, v)| (k, v.into_iter().collect())).collect(),
    )
}

/// The mesh whose CA material an event may change.
fn mesh_of_interest(ev: &Event) -> Option<String> {
    let key = ev.key();
    match key.kind {
        ResourceType::Mesh => Some(key.name.clone()),
        ResourceType::ZoneCertificate | ResourceType::CertificateAuthority | ResourceType::ZoneCertificateRequest => {
            key.mesh.clone()
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_at_four_fifths_less_up_to_a_twentieth() {
        let now = Utc::now();
        let c = WorkloadCertificate {
            chain_pem: String::new(),
            key_pem: String::new(),
            not_before: now,
            not_after: now + chrono::Duration::seconds(1000),
        };
        assert_eq!((renewal_time(&c, 0.0) - now).num_seconds(), 800);
        assert_eq!((renewal_time(&c, 0.999_999) - now).num_seconds(), 750);
        let j = jitter_fraction();
        assert!((0.0..1.0).contains(&j));
    }

    #[test]
    fn identity_names_every_service_and_tag_once() {
        let dp: Dataplane =
            serde_json::from_value(serde_json::json!({"networking": {"address": "10.0.0.1", "inbound": [
                {"port": 1, "tags": {"kuma.io/service": "web", "version": "v1"}},
                {"port": 2, "tags": {"kuma.io/service": "admin", "version": "v1"}}
            ]}}))
            .unwrap();
        let (services, tags) = identity_of(&dp);
        assert_eq!(services, ["admin", "web"]);
        assert_eq!(tags["version"], ["v1"]);
        assert_eq!(tags["kuma.io/service"], ["admin", "web"]);
    }
}
