//! What the operator remembers between reconciles about each job, keyed by the job's uid (of a
//! finished job, only the last two items; of a deleted one, nothing):
//! - when it first saw the job, so its latency histograms count from there with the watch's
//!   precision instead of from the whole-second `creationTimestamp`;
//! - when it last wrote the job's status, so that a change in pod counts alone is written at
//!   most once per [`STATUS_INTERVAL`] (conditions are always written at once, and a job's
//!   first status no later than that after its creation, however often leadership moves);
//! - that the job's SSH Secret exists, so a reconcile does not read it again (Secrets are not
//!   watched: the operator may only get the ones it names);
//! - that this operator wrote the status that finished the job, so a reconcile of a cached copy
//!   from before that write (the TrainJob watch lags the pod watch now and then) does not
//!   finish it again: no second Event, count or transition time;
//! - that it made sure the finished job's Secret is gone, so later reconciles do not read it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::api::TrainJob;
use crate::lifecycle;

/// How often pod counts alone reach a job's status. A job's pods turn Running and Ready one by
/// one; a write every few seconds shows that to users and Kueue soon enough (Kueue waits minutes
/// for pods to be ready), where one write per pod event cost the API server more than the pods
/// themselves did. Conditions are never held back.
pub const STATUS_INTERVAL: Duration = Duration::from_secs(5);

/// How long after this operator finished a job a copy of it that still runs counts as
/// outdated: far longer than the watch lags, short enough that a status someone else cleared
/// does not leave the job unreconciled for long.
const OUTDATED_WINDOW: Duration = Duration::from_secs(30);

#[derive(Default)]
struct Remembered {
    /// First seen by the watch, as wall-clock time, before any status was written.
    first_seen: Option<Time>,
    /// Monotonic time of the first sight, else of the first status write.
    since: Option<Instant>,
    last_status: Option<Instant>,
    secret: bool,
    /// When this run of the operator wrote the status that finished the job.
    finished: Option<Instant>,
    /// This run of the operator made sure the finished job's Secret is gone.
    key_retired: bool,
    /// Foreign pods already reported (see [`Memory::unreported`]).
    foreign: std::collections::BTreeSet<String>,
}

/// Whether the job was created more than `age` ago (to the second of its `creationTimestamp`).
fn older_than(job: &TrainJob, age: Duration) -> bool {
    job.metadata.creation_timestamp.as_ref().is_some_and(|created| {
        let elapsed = lifecycle::now().0.duration_since(created.0);
        elapsed.as_secs() > i64::try_from(age.as_secs()).unwrap_or(i64::MAX)
    })
}

/// See the module documentation.
#[derive(Default)]
pub struct Memory {
    jobs: Mutex<HashMap<String, Remembered>>,
}

fn uid(job: &TrainJob) -> Option<&str> {
    job.metadata.uid.as_deref()
}

impl Memory {
    fn with<T>(
        &self,
        job: &TrainJob,
        f: impl FnOnce(&mut HashMap<String, Remembered>, &str) -> T,
    ) -> Option<T> {
        let uid = uid(job)?;
        let mut jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        Some(f(&mut jobs, uid))
    }

    /// Notes a job the watch delivered. Only a job nobody has reconciled yet (no status) is
    /// new; one that has a status was seen by an earlier run of the operator.
    pub fn saw(&self, job: &TrainJob) {
        if job.status.is_some() {
            return;
        }
        self.with(job, |jobs, uid| {
            jobs.entry(uid.to_string()).or_insert_with(|| Remembered {
                first_seen: Some(lifecycle::now()),
                since: Some(Instant::now()),
                ..Remembered::default()
            });
        });
    }

    /// When the operator first saw the job, if this run of it did.
    pub fn first_seen(&self, job: &TrainJob) -> Option<Time> {
        self.with(job, |jobs, uid| jobs.get(uid).and_then(|c| c.first_seen.clone()))
            .flatten()
    }

    /// How long a status that differs only in pod counts should wait; `None`: write it now.
    pub fn status_wait(&self, job: &TrainJob) -> Option<Duration> {
        // Each new leader starts with an empty memory, so under frequent leader changes a hold
        // timed from first sight could keep a job's first status from ever being written.
        if job.status.is_none() && older_than(job, STATUS_INTERVAL) {
            return None;
        }
        self.with(job, |jobs, uid| {
            let clock = jobs.get(uid)?;
            let since = clock.last_status.or(clock.since)?;
            STATUS_INTERVAL
                .checked_sub(since.elapsed())
                .filter(|d| !d.is_zero())
        })
        .flatten()
    }

    /// What `test` says of the job's entry; `false` for a job not remembered.
    fn check(&self, job: &TrainJob, test: impl FnOnce(&Remembered) -> bool) -> bool {
        self.with(job, |jobs, uid| jobs.get(uid).is_some_and(test))
            .unwrap_or(false)
    }

    /// Changes the job's entry, making it if need be.
    fn note(&self, job: &TrainJob, change: impl FnOnce(&mut Remembered)) {
        self.with(job, |jobs, uid| change(jobs.entry(uid.to_string()).or_default()));
    }

    /// Notes that the job's status was just written.
    pub fn status_written(&self, job: &TrainJob) {
        self.note(job, |c| c.last_status = Some(Instant::now()));
    }

    /// Whether the job's SSH Secret is known to exist.
    pub fn secret_known(&self, job: &TrainJob) -> bool {
        self.check(job, |c| c.secret)
    }

    /// Notes that the job's SSH Secret exists (created, or read).
    pub fn secret_exists(&self, job: &TrainJob) {
        self.note(job, |c| c.secret = true);
    }

    /// Whether this run made sure the finished job's Secret is gone.
    pub fn key_retired(&self, job: &TrainJob) -> bool {
        self.check(job, |c| c.key_retired)
    }

    /// Notes that the finished job's Secret is gone.
    pub fn retire_key(&self, job: &TrainJob) {
        self.note(job, |c| c.key_retired = true);
    }

    /// Notes that the status that finishes the job was just written.
    pub fn finished(&self, job: &TrainJob) {
        self.note(job, |c| c.finished = Some(Instant::now()));
    }

    /// Whether `job` is a copy from before this operator finished it: its status says it runs,
    /// but the status written since says otherwise. Only for [`OUTDATED_WINDOW`]: should someone
    /// else clear the status later, the job is reconciled as it is.
    pub fn outdated(&self, job: &TrainJob) -> bool {
        !lifecycle::finished(job.status.as_ref())
            && self.check(job, |c| {
                c.finished.is_some_and(|at| at.elapsed() < OUTDATED_WINDOW)
            })
    }

    /// Of the foreign pods `names`, those not reported on the job yet; notes them as reported.
    pub fn unreported(&self, job: &TrainJob, names: impl IntoIterator<Item = String>) -> Vec<String> {
        self.with(job, |jobs, uid| {
            let reported = &mut jobs.entry(uid.to_string()).or_default().foreign;
            names.into_iter().filter(|n| reported.insert(n.clone())).collect()
        })
        .unwrap_or_default()
    }

    /// Forgets what a finished job needs no more, keeping what tells a later reconcile of it
    /// that this run finished it ([`Memory::outdated`]) and retired its key.
    pub fn settle(&self, job: &TrainJob) {
        self.with(job, |jobs, uid| {
            if let Some(c) = jobs.get_mut(uid) {
                *c = Remembered {
                    finished: c.finished,
                    key_retired: c.key_retired,
                    ..Remembered::default()
                };
            }
        });
    }

    /// Forgets a job that is gone.
    pub fn forget(&self, job: &TrainJob) {
        self.with(job, |jobs, uid| jobs.remove(uid));
    }

    /// Keeps only the jobs whose uid `live` accepts.
    pub fn retain(&self, live: impl Fn(&str) -> bool) {
        self.jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|uid, _| live(uid));
    }

    /// Jobs remembered.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.jobs.lock().map(|j| j.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn job(status: Option<serde_json::Value>) -> TrainJob {
        let mut value = json!({
            "apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob",
            "metadata": {"name": "pi", "namespace": "ns", "uid": "u1"},
            "spec": {"runtimeRef": {"name": "mpi"}},
        });
        if let Some(status) = status {
            value["status"] = status;
        }
        serde_json::from_value(value).expect("job")
    }

    #[test]
    fn a_new_job_counts_from_first_sight_its_pod_counts_wait_and_its_secret_is_remembered() {
        let memory = Memory::default();
        let new = job(None);
        assert_eq!(memory.status_wait(&new), None, "unknown job: write at once");
        memory.saw(&new);
        let first = memory.first_seen(&new).expect("first seen");
        memory.saw(&new);
        assert_eq!(memory.first_seen(&new), Some(first), "the first sight stays");
        assert!(memory.status_wait(&new).is_some_and(|d| d <= STATUS_INTERVAL));
        memory.status_written(&new);
        assert!(memory.status_wait(&new).is_some());
        assert!(!memory.secret_known(&new));
        memory.secret_exists(&new);
        assert!(memory.secret_known(&new));
        assert_eq!(
            memory.unreported(&new, ["x".to_string(), "y".to_string()]),
            ["x", "y"]
        );
        assert_eq!(
            memory.unreported(&new, ["y".to_string(), "z".to_string()]),
            ["z"],
            "each foreign pod is reported once"
        );
        memory.retain(|uid| uid == "u1");
        assert_eq!(memory.len(), 1, "a live job is kept");
        memory.retain(|_| false);
        assert_eq!(memory.len(), 0, "a job gone while the watch was away is dropped");
        memory.saw(&new);
        memory.forget(&new);
        assert_eq!((memory.len(), memory.first_seen(&new)), (0, None));
        assert!(
            !memory.secret_known(&new),
            "a finished job's Secret is read again, if ever"
        );
    }

    #[test]
    fn a_copy_from_before_the_finishing_write_is_outdated_and_the_finished_one_is_not() {
        let memory = Memory::default();
        let running = job(Some(json!({"jobsStatus": []})));
        assert!(!memory.outdated(&running));
        memory.secret_exists(&running);
        memory.finished(&running);
        memory.retire_key(&running);
        memory.settle(&running);
        assert!(memory.outdated(&running), "the cache has not caught up yet");
        assert!(memory.key_retired(&running), "settling keeps the retired key");
        assert!(!memory.secret_known(&running), "and drops the rest");
        let complete = job(Some(json!({"conditions": [{"type": "Complete", "status": "True",
            "reason": "JobsCompleted", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}]})));
        assert!(!memory.outdated(&complete));
        memory.forget(&running);
        assert!(!memory.outdated(&running), "forgotten with the job");
    }

    #[test]
    fn a_job_without_status_waits_no_longer_than_the_interval_after_its_creation() {
        let memory = Memory::default();
        let mut new = job(None);
        new.metadata.creation_timestamp = Some(lifecycle::now());
        memory.saw(&new);
        assert!(
            memory.status_wait(&new).is_some(),
            "just created: its counts wait"
        );
        let created = lifecycle::now().0 - k8s_openapi::jiff::SignedDuration::from_secs(10);
        new.metadata.creation_timestamp = Some(Time(created));
        assert_eq!(
            memory.status_wait(&new),
            None,
            "a new leader seeing it for the first time writes at once"
        );
    }

    #[test]
    fn a_job_an_earlier_run_reconciled_is_not_timed_from_now() {
        let memory = Memory::default();
        let old = job(Some(json!({"jobsStatus": []})));
        memory.saw(&old);
        assert_eq!((memory.first_seen(&old), memory.len()), (None, 0));
        assert_eq!(memory.status_wait(&old), None);
    }
}
