//! Leader election on a `coordination.k8s.io` Lease, with client-go's semantics: replicas
//! campaign for the Lease, one holds and renews it, and only the holder reconciles. A candidate
//! judges another holder's lease by its own clock (from when it saw the last renewal change), so
//! the replicas' clocks need not agree. A leader that cannot renew within the renew deadline,
//! which is shorter than the lease, stops leading before any other replica may take over: no
//! two replicas ever write at once. On a graceful stop the leader releases the Lease, so the
//! next one takes over at once instead of after the lease runs out.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, PostParams};
use rand::Rng;

use crate::metrics::Metrics;
use crate::names;

/// How long a lease lasts, when its holder must have renewed it, and how often to try.
#[derive(Clone, Debug)]
pub struct Timing {
    /// How long others wait after the last renewal they saw before taking over.
    pub lease: Duration,
    /// How long the leader keeps leading without a successful renewal; below `lease`.
    pub renew_deadline: Duration,
    /// How often the leader renews and the others try to take over.
    pub retry: Duration,
}

impl Default for Timing {
    /// client-go's and controller-runtime's defaults.
    fn default() -> Self {
        Timing {
            lease: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry: Duration::from_secs(2),
        }
    }
}

impl Timing {
    /// Refuses timings that would let two leaders overlap, naming the flags to change.
    pub fn check(&self) -> Result<(), String> {
        if self.renew_deadline >= self.lease {
            return Err(format!(
                "--leader-elect-renew-deadline ({:?}) must be shorter than --leader-elect-lease-duration ({:?}): a leader must give up before others may take over",
                self.renew_deadline, self.lease
            ));
        }
        if self.retry >= self.renew_deadline {
            return Err(format!(
                "--leader-elect-retry-period ({:?}) must be shorter than --leader-elect-renew-deadline ({:?}), or the leader never renews in time",
                self.retry, self.renew_deadline
            ));
        }
        if self.lease < Duration::from_secs(1) {
            return Err(
                "--leader-elect-lease-duration must be at least 1s (a Lease counts whole seconds)".into(),
            );
        }
        Ok(())
    }
}

/// Where the Lease lives and who this replica is.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Namespace of the Lease (the operator's own).
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This replica's identity in `holderIdentity`: unique per process.
    pub identity: String,
    /// Durations.
    pub timing: Timing,
}

/// A unique identity for this process: the pod's name plus a random suffix, so that a restarted
/// container never mistakes its predecessor's lease for its own.
pub fn identity(pod: &str) -> String {
    format!("{pod}_{:08x}", rand::thread_rng().r#gen::<u32>())
}

/// The holder `try_hold` reports when another replica's write to the Lease won the race.
const RACED: &str = "another replica, just now";

/// Why a leader stopped leading.
#[derive(Debug, thiserror::Error)]
pub enum Lost {
    #[error("could not renew the leader Lease within the renew deadline ({0:?})")]
    Deadline(Duration),
    #[error("another replica ({0}) holds the leader Lease")]
    TakenBy(String),
}

/// What `me` writes to take or keep the lease `current` (`None`: no Lease yet); `None` while
/// another holder's lease still runs. `expired`: by this candidate's clock, the current holder
/// has not renewed for a whole lease.
pub fn claim(
    current: Option<&LeaseSpec>,
    me: &str,
    expired: bool,
    now: Timestamp,
    lease: Duration,
) -> Option<LeaseSpec> {
    let holder = current
        .and_then(|s| s.holder_identity.as_deref())
        .filter(|h| !h.is_empty());
    let mine = holder == Some(me);
    if holder.is_some() && !mine && !expired {
        return None;
    }
    let now = MicroTime(now);
    let transitions = current.and_then(|s| s.lease_transitions).unwrap_or(0);
    Some(LeaseSpec {
        holder_identity: Some(me.to_string()),
        lease_duration_seconds: Some(i32::try_from(lease.as_secs()).unwrap_or(i32::MAX)),
        acquire_time: if mine {
            current.and_then(|s| s.acquire_time.clone())
        } else {
            Some(now.clone())
        },
        renew_time: Some(now),
        lease_transitions: Some(if mine || current.is_none() {
            transitions
        } else {
            transitions + 1
        }),
        ..LeaseSpec::default()
    })
}

/// The Lease `current` set free, as a leader leaves it on a graceful stop: no holder, and a
/// one-second lease, so that candidates that still see the old holder take over at once too.
pub fn released(current: &LeaseSpec, now: Timestamp) -> LeaseSpec {
    LeaseSpec {
        holder_identity: None,
        lease_duration_seconds: Some(1),
        acquire_time: Some(MicroTime(now)),
        renew_time: Some(MicroTime(now)),
        lease_transitions: current.lease_transitions,
        ..LeaseSpec::default()
    }
}

/// One replica's view of the Lease.
pub struct Elector {
    api: Api<Lease>,
    settings: Settings,
    /// The holder and renew time last read, and when (by this clock) they last changed.
    observed: Option<(Option<String>, Option<MicroTime>, Instant)>,
}

impl Elector {
    /// An elector for the Lease in `settings`.
    pub fn new(client: Client, settings: Settings) -> Elector {
        Elector {
            api: Api::namespaced(client, &settings.namespace),
            settings,
            observed: None,
        }
    }

    /// One try to take or renew the Lease: whether this replica holds it afterwards, and if not,
    /// who does.
    async fn try_hold(&mut self) -> Result<Result<(), String>, kube::Error> {
        let params = PostParams {
            field_manager: Some(names::FIELD_MANAGER.into()),
            ..PostParams::default()
        };
        let me = self.settings.identity.clone();
        let lease = self.settings.timing.lease;
        let Some(mut current) = self.api.get_opt(&self.settings.name).await? else {
            let new = Lease {
                metadata: ObjectMeta {
                    name: Some(self.settings.name.clone()),
                    namespace: Some(self.settings.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: claim(None, &me, true, Timestamp::now(), lease),
            };
            return match self.api.create(&params, &new).await {
                Ok(_) => Ok(Ok(())),
                Err(e) if conflict(&e) => Ok(Err(RACED.into())),
                Err(e) => Err(e),
            };
        };
        let spec = current.spec.clone().unwrap_or_default();
        let seen = (spec.holder_identity.clone(), spec.renew_time.clone());
        let changed_at = match &self.observed {
            Some((holder, renewed, at)) if (holder, renewed) == (&seen.0, &seen.1) => *at,
            _ => Instant::now(),
        };
        self.observed = Some((seen.0, seen.1, changed_at));
        let runs = spec
            .lease_duration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .map_or(lease, Duration::from_secs);
        let expired = changed_at.elapsed() >= runs;
        let Some(new) = claim(Some(&spec), &me, expired, Timestamp::now(), lease) else {
            return Ok(Err(spec.holder_identity.unwrap_or_default()));
        };
        current.spec = Some(new);
        // The read's resourceVersion rides along: of two replicas racing for the same Lease,
        // the API server lets only one write win.
        match self.api.replace(&self.settings.name, &params, &current).await {
            Ok(_) => Ok(Ok(())),
            Err(e) if conflict(&e) => Ok(Err(RACED.into())),
            Err(e) => Err(e),
        }
    }

    /// Tries every retry period (with jitter, so replicas do not collide) until this replica
    /// holds the Lease.
    async fn acquire(&mut self) {
        let mut waiting_for = None;
        loop {
            match self.try_hold().await {
                Ok(Ok(())) => return,
                Ok(Err(holder)) => {
                    if waiting_for.as_ref() != Some(&holder) {
                        tracing::info!(leader = %holder, lease = %self.settings.name, "another replica leads; standing by");
                        waiting_for = Some(holder);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, lease = %self.settings.name, "could not read or take the leader Lease")
                }
            }
            let retry = self.settings.timing.retry;
            let jitter = rand::thread_rng().gen_range(0..=retry.as_millis() / 5);
            tokio::time::sleep(retry + Duration::from_millis(jitter as u64)).await;
        }
    }

    /// Renews every retry period; returns once this replica may no longer lead.
    async fn keep(&mut self) -> Lost {
        let timing = self.settings.timing.clone();
        let mut renewed = Instant::now();
        loop {
            tokio::time::sleep(timing.retry).await;
            // Measured from before the request: others measure from after they see its result.
            let attempt = Instant::now();
            let left = timing.renew_deadline.saturating_sub(renewed.elapsed());
            match tokio::time::timeout(left, self.try_hold()).await {
                Ok(Ok(Ok(()))) => renewed = attempt,
                Ok(Ok(Err(holder))) => return Lost::TakenBy(holder),
                Ok(Err(e)) => tracing::warn!(error = %e, "could not renew the leader Lease; retrying"),
                Err(_) => {}
            }
            if renewed.elapsed() >= timing.renew_deadline {
                return Lost::Deadline(timing.renew_deadline);
            }
        }
    }

    /// Frees the Lease if this replica still holds it.
    async fn release(&mut self) {
        let result = async {
            let Some(mut current) = self.api.get_opt(&self.settings.name).await? else {
                return Ok(());
            };
            let spec = current.spec.clone().unwrap_or_default();
            if spec.holder_identity.as_deref() != Some(self.settings.identity.as_str()) {
                return Ok(());
            }
            current.spec = Some(released(&spec, Timestamp::now()));
            let params = PostParams {
                field_manager: Some(names::FIELD_MANAGER.into()),
                ..PostParams::default()
            };
            self.api
                .replace(&self.settings.name, &params, &current)
                .await
                .map(|_| ())
        };
        match result.await {
            Ok(()) => tracing::info!(lease = %self.settings.name, "released the leader Lease"),
            Err(e) => {
                tracing::warn!(error = %e, "could not release the leader Lease; others take over once it runs out")
            }
        }
    }
}

fn conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

/// Runs `work` while this replica leads. Campaigns until it holds the Lease (or `shutdown`
/// comes first), then runs `work` while renewing. `work` ends on `shutdown` by itself, and
/// the Lease is released after it. Should the Lease be lost, `work` is dropped at once, wherever
/// it is, and the loss returned: the process should exit, and rejoin the election when
/// restarted.
pub async fn lead(
    mut elector: Elector,
    leading: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
    work: impl Future<Output = ()>,
) -> Result<(), Lost> {
    tokio::select! {
        _ = shutdown => return Ok(()),
        _ = elector.acquire() => {}
    }
    let identity = elector.settings.identity.clone();
    tracing::info!(identity = %identity, lease = %elector.settings.name, "became the leader; reconciling");
    leading.store(true, Ordering::SeqCst);
    metrics.leader.set(1);
    metrics.leader_transitions.inc();
    let outcome = tokio::select! {
        _ = work => Ok(()),
        lost = elector.keep() => Err(lost),
    };
    leading.store(false, Ordering::SeqCst);
    metrics.leader.set(0);
    match &outcome {
        Ok(()) => elector.release().await,
        Err(lost) => {
            tracing::error!(identity = %identity, reason = %lost, "stopped leading; every reconcile was dropped")
        }
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(15);

    fn held(by: &str, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(by.into()),
            lease_duration_seconds: Some(15),
            acquire_time: Some(MicroTime(Timestamp::UNIX_EPOCH)),
            renew_time: Some(MicroTime(Timestamp::UNIX_EPOCH)),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn a_new_lease_is_taken_with_no_transition() {
        let now = Timestamp::now();
        let spec = claim(None, "a", true, now, LEASE).expect("free");
        assert_eq!(spec.holder_identity.as_deref(), Some("a"));
        assert_eq!(spec.lease_duration_seconds, Some(15));
        assert_eq!(spec.lease_transitions, Some(0));
        assert_eq!(spec.acquire_time, Some(MicroTime(now)));
    }

    #[test]
    fn another_holders_running_lease_is_left_alone() {
        assert_eq!(
            claim(Some(&held("b", 3)), "a", false, Timestamp::now(), LEASE),
            None
        );
    }

    #[test]
    fn an_expired_lease_is_taken_over_and_counted() {
        let now = Timestamp::now();
        let spec = claim(Some(&held("b", 3)), "a", true, now, LEASE).expect("expired");
        assert_eq!(spec.holder_identity.as_deref(), Some("a"));
        assert_eq!(spec.lease_transitions, Some(4));
        assert_eq!(spec.acquire_time, Some(MicroTime(now)));
    }

    #[test]
    fn renewing_keeps_the_acquire_time_and_the_count() {
        let now = Timestamp::now();
        let spec = claim(Some(&held("a", 3)), "a", false, now, LEASE).expect("mine");
        assert_eq!(spec.lease_transitions, Some(3));
        assert_eq!(spec.acquire_time, Some(MicroTime(Timestamp::UNIX_EPOCH)));
        assert_eq!(spec.renew_time, Some(MicroTime(now)));
    }

    #[test]
    fn a_released_lease_is_free_for_anyone_at_once() {
        let free = released(&held("a", 3), Timestamp::now());
        assert_eq!(free.holder_identity, None);
        assert_eq!(free.lease_transitions, Some(3));
        let spec = claim(Some(&free), "b", false, Timestamp::now(), LEASE).expect("free");
        assert_eq!(spec.holder_identity.as_deref(), Some("b"));
        assert_eq!(spec.lease_transitions, Some(4));
    }

    #[test]
    fn timings_that_could_overlap_two_leaders_are_refused() {
        assert!(Timing::default().check().is_ok());
        let overlap = Timing {
            renew_deadline: Duration::from_secs(15),
            ..Timing::default()
        };
        assert!(
            overlap
                .check()
                .unwrap_err()
                .contains("--leader-elect-renew-deadline")
        );
        let slow = Timing {
            retry: Duration::from_secs(10),
            ..Timing::default()
        };
        assert!(slow.check().unwrap_err().contains("--leader-elect-retry-period"));
    }

    #[test]
    fn identities_are_unique_per_process() {
        let a = identity("trainjob-operator-abc");
        assert!(a.starts_with("trainjob-operator-abc_"));
        assert_ne!(a, identity("trainjob-operator-abc"));
    }
}
