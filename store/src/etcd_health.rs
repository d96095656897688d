//! Keeps an [`EtcdStore`](crate::etcd::EtcdStore)'s requests on the etcd
//! members that answer.
//!
//! The etcd client balances requests over every endpoint it was given and
//! keeps a dead member in that set: its connection reports ready, then each
//! request routed to it fails at once with a connect error. With one member of
//! three killed, a third of the writes at a global would fail for as long as
//! the member stays down, although the cluster has a quorum.
//!
//! A probe task asks each member for its status every
//! [`PROBE_INTERVAL`] over a client of its own (one endpoint each). A member
//! that does not answer within [`PROBE_TIMEOUT`], reports errors, or knows no
//! leader is taken out of the shared client's balancer; it is put back as
//! soon as it answers again. The balancer is never emptied: when no member
//! answers, every endpoint stays in so that requests fail with etcd's own
//! error and recover by themselves. A failed request wakes the probe at once
//! ([`Prober::nudge`]), so failover does not wait for the next tick.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions};
use tokio::sync::Notify;

/// How often every member is asked for its status.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(500);
/// How long a member has to answer a status request.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// What one probe found out about a member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Health {
    Answers,
    Fails(String),
}

/// Which endpoints belong in the balancer, given what the probes found:
/// those that answer, or all of them when none does.
pub(crate) fn wanted(results: &[(String, Health)]) -> BTreeSet<String> {
    let answering: BTreeSet<String> = results
        .iter()
        .filter(|(_, h)| *h == Health::Answers)
        .map(|(e, _)| e.clone())
        .collect();
    if answering.is_empty() {
        results.iter().map(|(e, _)| e.clone()).collect()
    } else {
        answering
    }
}

/// The handle of a running probe task; the task ends when the last handle is
/// dropped (the last clone of the store).
pub(crate) struct Prober {
    nudge: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Prober {
    /// Starts probing `endpoints` (at least two; one has nothing to fail
    /// over to) and steering `shared`'s balancer. `options` build the
    /// per-member probe clients.
    pub(crate) async fn start(shared: Client, endpoints: &[String], options: ConnectOptions) -> Result<Prober, String> {
        let mut probes = Vec::with_capacity(endpoints.len());
        for e in endpoints {
            // Connecting is lazy: this builds a channel and touches no network.
            let client = Client::connect([e.as_str()], Some(options.clone()))
                .await
                .map_err(|err| format!("etcd {e}: {err}"))?;
            probes.push((e.clone(), client));
        }
        let nudge = Arc::new(Notify::new());
        let task = tokio::spawn(run(shared, probes, nudge.clone()));
        Ok(Prober { nudge, task })
    }

    /// Asks for a probe now (a request just failed).
    pub(crate) fn nudge(&self) {
        self.nudge.notify_one();
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn probe(client: &mut Client) -> Health {
    match tokio::time::timeout(PROBE_TIMEOUT, client.status()).await {
        Err(_) => Health::Fails(format!("no status within {PROBE_TIMEOUT:?}")),
        Ok(Err(e)) => Health::Fails(e.to_string()),
        Ok(Ok(s)) if !s.errors().is_empty() => Health::Fails(s.errors().join("; ")),
        Ok(Ok(s)) if s.leader() == 0 => Health::Fails("knows no leader".into()),
        Ok(Ok(_)) => Health::Answers,
    }
}

async fn run(shared: Client, mut probes: Vec<(String, Client)>, nudge: Arc<Notify>) {
    let mut in_balancer: BTreeSet<String> = probes.iter().map(|(e, _)| e.clone()).collect();
    loop {
        let results: Vec<(String, Health)> = futures::future::join_all(probes.iter_mut().map(|(e, c)| async move {
            let h = probe(c).await;
            (e.clone(), h)
        }))
        .await;
        let want = wanted(&results);
        for (endpoint, health) in &results {
            let present = in_balancer.contains(endpoint);
            let should = want.contains(endpoint);
            if present && !should {
                let reason = match health {
                    Health::Fails(r) => r.as_str(),
                    Health::Answers => "",
                };
                match shared.remove_endpoint(endpoint).await {
                    Ok(()) => {
                        tracing::warn!(%endpoint, %reason, "etcd member does not answer; requests go to the others");
                        in_balancer.remove(endpoint);
                    }
                    Err(e) => tracing::warn!(%endpoint, error = %e, "could not take an etcd member out of rotation"),
                }
            } else if !present && should {
                match shared.add_endpoint(endpoint).await {
                    Ok(()) => {
                        tracing::info!(%endpoint, "etcd member answers again; back in rotation");
                        in_balancer.insert(endpoint.clone());
                    }
                    Err(e) => tracing::warn!(%endpoint, error = %e, "could not put an etcd member back in rotation"),
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(PROBE_INTERVAL) => {}
            _ = nudge.notified() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(e: &str, ok: bool) -> (String, Health) {
        (
            e.to_string(),
            if ok {
                Health::Answers
            } else {
                Health::Fails("down".into())
            },
        )
    }

    #[test]
    fn only_answering_members_are_wanted() {
        let want = wanted(&[r("a", true), r("b", false), r("c", true)]);
        assert_eq!(want.into_iter().collect::<Vec<_>>(), ["a", "c"]);
    }

    #[test]
    fn the_balancer_is_never_emptied() {
        let want = wanted(&[r("a", false), r("b", false)]);
        assert_eq!(want.into_iter().collect::<Vec<_>>(), ["a", "b"]);
    }
}
