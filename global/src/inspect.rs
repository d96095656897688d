//! Inspection forwarded to zones: `GET /meshes/{m}/dataplanes/{name}/xds`
//! (and `_rules`, `policies`) asked at the global is answered by the zone
//! that holds the dataplane. Each zone keeps an `Inspect` stream open to the
//! global it is connected to; requests go down it with an id, answers come
//! back with the same id. A zone connected to another replica of the global
//! cannot be asked from this one (the error says so).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meridian_proto as pb;
use meridian_server::api::{Inspection, ZoneForwarder};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

/// How long the global waits for a zone's answer.
pub const INSPECT_TIMEOUT: Duration = Duration::from_secs(10);

type Waiting = Arc<Mutex<HashMap<u64, oneshot::Sender<pb::InspectResponse>>>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The open Inspect stream of one zone.
struct Link {
    stream: u64,
    requests: mpsc::Sender<pb::InspectRequest>,
    waiting: Waiting,
}

/// Every zone's Inspect stream at this global.
#[derive(Default)]
pub struct Inspections {
    links: Mutex<HashMap<String, Link>>,
    next: AtomicU64,
}

/// What a zone's stream task completes answers through.
pub struct Answers(Waiting);

impl Answers {
    /// Hands `answer` to whoever waits for its id (nobody, once timed out).
    pub fn complete(&self, answer: pb::InspectResponse) {
        if let Some(tx) = lock(&self.0).remove(&answer.id) {
            let _ = tx.send(answer);
        }
    }
}

impl Inspections {
    pub fn next_id(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// Makes `requests` the way to `zone` (replacing an older stream of it).
    pub fn attach(&self, zone: &str, stream: u64, requests: mpsc::Sender<pb::InspectRequest>) -> Answers {
        let waiting = Waiting::default();
        lock(&self.links).insert(
            zone.to_string(),
            Link {
                stream,
                requests,
                waiting: waiting.clone(),
            },
        );
        Answers(waiting)
    }

    /// Forgets stream `stream` of `zone` (unless a newer one took its
    /// place); whoever waits on it gets an error at once.
    pub fn detach(&self, zone: &str, stream: u64) {
        let mut links = lock(&self.links);
        if links.get(zone).is_some_and(|l| l.stream == stream) {
            links.remove(zone);
        }
    }

    async fn ask(&self, zone: &str, inspection: Inspection) -> Result<(u16, Value), String> {
        let id = self.next_id();
        let (tx, rx) = oneshot::channel();
        let (requests, waiting) = {
            let links = lock(&self.links);
            let link = links.get(zone).ok_or_else(|| {
                format!(
                    "zone {zone:?} has no inspection stream open at this global: it is offline, connected to another replica of the global, or older than this global"
                )
            })?;
            lock(&link.waiting).insert(id, tx);
            (link.requests.clone(), link.waiting.clone())
        };
        let request = pb::InspectRequest {
            id,
            kind: inspection.kind.to_string(),
            mesh: inspection.mesh,
            name: inspection.name,
            include_eds: inspection.include_eds,
        };
        let answer = tokio::time::timeout(INSPECT_TIMEOUT, async {
            requests
                .send(request)
                .await
                .map_err(|_| format!("zone {zone:?}'s inspection stream closed"))?;
            rx.await
                .map_err(|_| format!("zone {zone:?}'s inspection stream closed before it answered"))
        })
        .await;
        lock(&waiting).remove(&id);
        match answer {
            Ok(a) => read_answer(zone, &a?),
            Err(_) => Err(format!("zone {zone:?} did not answer within {INSPECT_TIMEOUT:?}")),
        }
    }
}

/// A zone's answer as an HTTP status and a JSON body; anything else is an
/// error that names the zone (the zone is authenticated, not trusted to be
/// well-formed).
pub fn read_answer(zone: &str, answer: &pb::InspectResponse) -> Result<(u16, Value), String> {
    let status = u16::try_from(answer.status)
        .ok()
        .filter(|s| (200..600).contains(s))
        .ok_or_else(|| format!("zone {zone:?} answered with status {}", answer.status))?;
    let body: Value = serde_json::from_slice(&answer.body)
        .map_err(|e| format!("zone {zone:?} answered with a body that is not JSON: {e}"))?;
    Ok((status, body))
}

#[async_trait::async_trait]
impl ZoneForwarder for Inspections {
    async fn inspect(&self, zone: &str, inspection: Inspection) -> Result<(u16, Value), String> {
        self.ask(zone, inspection).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inspection() -> Inspection {
        Inspection {
            kind: "rules",
            mesh: "default".into(),
            name: "web-1".into(),
            include_eds: false,
        }
    }

    #[tokio::test]
    async fn a_request_goes_down_the_zones_stream_and_its_answer_comes_back() {
        let inspections = Arc::new(Inspections::default());
        let (tx, mut rx) = mpsc::channel(4);
        let answers = inspections.attach("zone-1", 1, tx);
        let zone = tokio::spawn(async move {
            let req = rx.recv().await.unwrap();
            assert_eq!((req.kind.as_str(), req.name.as_str()), ("rules", "web-1"));
            answers.complete(pb::InspectResponse {
                id: req.id,
                status: 200,
                body: br#"{"rules": []}"#.to_vec(),
            });
        });
        let (status, body) = inspections.inspect("zone-1", inspection()).await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(body, serde_json::json!({"rules": []}));
        zone.await.unwrap();
    }

    #[tokio::test]
    async fn an_absent_or_gone_zone_is_an_error_not_a_wait() {
        let inspections = Inspections::default();
        let err = inspections.inspect("zone-9", inspection()).await.unwrap_err();
        assert!(err.contains("no inspection stream"), "{err}");
        let (tx, rx) = mpsc::channel(4);
        let _answers = inspections.attach("zone-1", 7, tx);
        drop(rx);
        let err = inspections.inspect("zone-1", inspection()).await.unwrap_err();
        assert!(err.contains("closed"), "{err}");
        inspections.detach("zone-1", 7);
        assert!(inspections.inspect("zone-1", inspection()).await.is_err());
    }

    #[tokio::test]
    async fn a_bad_answer_is_refused() {
        let inspections = Arc::new(Inspections::default());
        let (tx, mut rx) = mpsc::channel(4);
        let answers = inspections.attach("zone-1", 1, tx);
        tokio::spawn(async move {
            let req = rx.recv().await.unwrap();
            answers.complete(pb::InspectResponse {
                id: req.id,
                status: 200,
                body: b"not json".to_vec(),
            });
        });
        let err = inspections.inspect("zone-1", inspection()).await.unwrap_err();
        assert!(err.contains("not JSON"), "{err}");
    }
}
