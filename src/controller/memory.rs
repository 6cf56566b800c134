//! What the operator remembers between reconciles about each job, keyed by the job's uid: the
//! one per-job store. Of a finished job only the last two items are kept (`settle`); of a job
//! that is gone, nothing (`forget`, and `retain` after a re-list).
//! - when it first saw the job, so its latency histograms count from there with the watch's
//!   precision instead of from the whole-second `creationTimestamp`;
//! - when it last wrote the job's status, so that a change in pod counts alone is written at
//!   most once per [`STATUS_INTERVAL`] (conditions are always written at once, and a job's
//!   first status no later than [`MAX_COUNTS_INTERVAL`] after its creation, however often
//!   leadership moves);
//! - that such a change waits, so that while many do (a burst of jobs coming up) the counts
//!   between milestones wait longer ([`COUNT_WRITES_PER_SECOND`]);
//! - that the job's SSH Secret exists, and its uid, so a reconcile does not read it again
//!   (Secrets are not watched: the operator may only get the ones it names), nor does the
//!   deletion of a finished job's key;
//! - the pods it created that the pod watch has not shown yet (the Kubernetes controllers'
//!   "expectations"), so a reconcile that runs before the watch catches up does not create them
//!   again: a 409 each, and a second PodsCreated Event;
//! - that a pod create of the job failed, so its next creates start with one (slow start);
//! - the foreign pods it reported on the job already;
//! - the phase the `trainjob_jobs_active` gauge counts the job in;
//! - that this operator wrote the status that finished the job, so a reconcile of a cached copy
//!   from before that write (the TrainJob watch lags the pod watch now and then) does not
//!   finish it again: no second Event, count or transition time;
//! - that it made sure the finished job's Secret is gone, so later reconciles do not read it.
//!
//! A job that is gone is remembered as gone for a while ([`GONE_WINDOW`]): a reconcile that
//! began before its deletion then cannot count it again, nor leave an entry behind.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::api::TrainJob;
use crate::lifecycle::{self, Phase};
use crate::metrics::Metrics;
use crate::observed::StatusHold;

/// How often pod counts alone reach a job's status. A job's pods turn Running and Ready one by
/// one; a write every few seconds shows that to users and Kueue soon enough (Kueue waits minutes
/// for pods to be ready), where one write per pod event cost the API server more than the pods
/// themselves did. Conditions are never held back.
pub const STATUS_INTERVAL: Duration = Duration::from_secs(5);

/// How many writes of counts between milestones (see `Decision::milestone`) all jobs together
/// send per second, about, while many jobs' counts wait: each of n waiting jobs waits n / this
/// many seconds. In a burst of hundreds of jobs each job's pods come up over a minute or more,
/// and a write every [`STATUS_INTERVAL`] for each was most of its status writes, each also a
/// watch event for every client of TrainJobs. Only people read these counts (`kubectl get -o
/// yaml`; the plugin and dashboard read the pods), Kueue reads the milestones, which are not
/// held longer, nor are conditions.
pub const COUNT_WRITES_PER_SECOND: u32 = 5;

/// The longest counts between milestones wait, however many jobs' counts do: a minute late at
/// worst, in a cluster busy enough to need it.
pub const MAX_COUNTS_INTERVAL: Duration = Duration::from_secs(60);

/// How long after this operator finished a job a copy of it that still runs counts as
/// outdated: far longer than the watch lags, short enough that a status someone else cleared
/// does not leave the job unreconciled for long.
const OUTDATED_WINDOW: Duration = Duration::from_secs(30);

/// How long a created pod may stay unseen before it is presumed gone (deleted before the watch
/// showed it) and may be created again.
const PATIENCE: Duration = Duration::from_secs(30);

/// How long a job that is gone stays known as gone: far longer than any reconcile runs.
const GONE_WINDOW: Duration = Duration::from_secs(600);

#[derive(Default)]
struct Remembered {
    /// First seen by the watch, as wall-clock time, before any status was written.
    first_seen: Option<Time>,
    /// Monotonic time of the first sight, else of the first status write.
    since: Option<Instant>,
    last_status: Option<Instant>,
    /// The uid of the job's SSH Secret, once created or read.
    secret: Option<Box<str>>,
    /// Pods created and not shown by the watch yet, and when the last of them was created.
    awaited: BTreeSet<String>,
    awaited_since: Option<Instant>,
    /// A pod create of the job failed, and none has succeeded since: its creates start small.
    create_failed: bool,
    /// Pods deleted (by uid) that the watch has not shown deleting yet, and when (monotonic,
    /// and the wall-clock time they are shown deleting since).
    deleted: HashMap<String, (Instant, Time)>,
    /// Foreign pods already reported (see [`Memory::unreported`]).
    foreign: BTreeSet<String>,
    /// The phase the active gauge counts the job in.
    phase: Option<Phase>,
    /// When this run of the operator wrote the status that finished the job.
    finished: Option<Instant>,
    /// This run of the operator made sure the finished job's Secret is gone.
    key_retired: bool,
}

#[derive(Default)]
struct State {
    jobs: HashMap<String, Remembered>,
    /// Jobs, by uid, whose status waits with a change in pod counts.
    holding: HashSet<String>,
    /// Jobs gone, by uid, and since when.
    gone: HashMap<String, Instant>,
    /// When `gone` was last cleared of what is past [`GONE_WINDOW`].
    swept: Option<Instant>,
}

impl State {
    /// Drops the entry of `uid` and remembers it as gone; returns its phase.
    fn drop_job(&mut self, uid: &str) -> Option<Phase> {
        // At most once a minute, so that a burst of deletions costs no more than its length.
        if self.swept.is_none_or(|at| at.elapsed() > Duration::from_secs(60)) {
            self.gone.retain(|_, since| since.elapsed() < GONE_WINDOW);
            self.swept = Some(Instant::now());
        }
        self.gone.insert(uid.to_string(), Instant::now());
        self.holding.remove(uid);
        self.jobs.remove(uid).and_then(|r| r.phase)
    }
}

/// See the module documentation.
pub struct Memory {
    state: Mutex<State>,
    metrics: Arc<Metrics>,
}

fn uid(job: &TrainJob) -> Option<&str> {
    job.metadata.uid.as_deref()
}

/// Whether the job was created more than `age` ago (to the second of its `creationTimestamp`).
fn older_than(job: &TrainJob, age: Duration) -> bool {
    job.metadata.creation_timestamp.as_ref().is_some_and(|created| {
        let elapsed = lifecycle::now().0.duration_since(created.0);
        elapsed.as_secs() > i64::try_from(age.as_secs()).unwrap_or(i64::MAX)
    })
}

impl Memory {
    /// An empty memory whose phases the active gauge of `metrics` counts.
    pub fn new(metrics: Arc<Metrics>) -> Memory {
        Memory {
            state: Mutex::default(),
            metrics,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What `f` says of the job's entry, if there is one.
    fn read<T>(&self, job: &TrainJob, f: impl FnOnce(&Remembered) -> T) -> Option<T> {
        self.lock().jobs.get(uid(job)?).map(f)
    }

    /// Changes the job's entry, making it if need be; nothing for a job that is gone.
    fn note<T>(&self, job: &TrainJob, change: impl FnOnce(&mut Remembered) -> T) -> Option<T> {
        let uid = uid(job)?;
        let mut state = self.lock();
        if state.gone.contains_key(uid) {
            return None;
        }
        Some(change(state.jobs.entry(uid.to_string()).or_default()))
    }

    /// Notes a job the watch delivered. Only a job nobody has reconciled yet (no status) is
    /// new; one that has a status was seen by an earlier run of the operator.
    pub fn saw(&self, job: &TrainJob) {
        if job.status.is_none() {
            self.note(job, |r| {
                if r.first_seen.is_none() {
                    r.first_seen = Some(lifecycle::now());
                    r.since = Some(Instant::now());
                }
            });
        }
    }

    /// When the operator first saw the job, if this run of it did.
    pub fn first_seen(&self, job: &TrainJob) -> Option<Time> {
        self.read(job, |r| r.first_seen.clone()).flatten()
    }

    /// How long a status that differs only in pod counts should wait.
    pub fn status_wait(&self, job: &TrainJob) -> StatusHold {
        let state = self.lock();
        let Some(since) = uid(job)
            .and_then(|uid| state.jobs.get(uid))
            .and_then(|r| r.last_status.or(r.since))
        else {
            return StatusHold::default();
        };
        let waiting = u32::try_from(state.holding.len()).unwrap_or(u32::MAX);
        let counts = (Duration::from_secs(1) * waiting / COUNT_WRITES_PER_SECOND)
            .clamp(STATUS_INTERVAL, MAX_COUNTS_INTERVAL);
        let left = |interval: Duration, longest: Duration| {
            // Each new leader starts with an empty memory, so under frequent leader changes a
            // hold timed from first sight could keep a job's first status from ever being
            // written: one without a status waits no longer than `longest` after its creation.
            if job.status.is_none() && older_than(job, longest) {
                return None;
            }
            interval.checked_sub(since.elapsed()).filter(|d| !d.is_zero())
        };
        StatusHold {
            milestone: left(STATUS_INTERVAL, STATUS_INTERVAL),
            // In a burst a new job's first counts wait too, to go with its later ones.
            counts: left(counts, MAX_COUNTS_INTERVAL),
        }
    }

    /// Notes that the job's status was just written.
    pub fn status_written(&self, job: &TrainJob) {
        self.note(job, |r| r.last_status = Some(Instant::now()));
    }

    /// Notes whether the job's status waits with a change in pod counts (see [`Memory::status_wait`]).
    pub fn status_holding(&self, job: &TrainJob, holding: bool) {
        let Some(uid) = uid(job) else { return };
        let mut state = self.lock();
        match holding && state.jobs.contains_key(uid) {
            true => state.holding.insert(uid.to_string()),
            false => state.holding.remove(uid),
        };
    }

    /// Whether the job's SSH Secret is known to exist.
    pub fn secret_known(&self, job: &TrainJob) -> bool {
        self.read(job, |r| r.secret.is_some()).unwrap_or(false)
    }

    /// The uid of the job's SSH Secret, when known to exist.
    pub fn secret_uid(&self, job: &TrainJob) -> Option<String> {
        self.read(job, |r| {
            r.secret.as_deref().filter(|u| !u.is_empty()).map(String::from)
        })
        .flatten()
    }

    /// Notes that the job's SSH Secret, the object with `uid`, exists (created, or read).
    pub fn secret_exists(&self, job: &TrainJob, uid: &str) {
        self.note(job, |r| r.secret = Some(uid.into()));
    }

    /// Whether a pod create of the job failed and none succeeded since (see [`Memory::create_result`]).
    pub fn create_failed(&self, job: &TrainJob) -> bool {
        self.read(job, |r| r.create_failed).unwrap_or(false)
    }

    /// Notes how the job's last pod creates went: `ok` false after a refused create.
    pub fn create_result(&self, job: &TrainJob, ok: bool) {
        if ok == self.create_failed(job) {
            self.note(job, |r| r.create_failed = !ok);
        }
    }

    /// Notes pods just created for the job.
    pub fn created(&self, job: &TrainJob, names: impl IntoIterator<Item = String>) {
        self.note(job, |r| {
            r.awaited.extend(names);
            r.awaited_since = Some(Instant::now());
        });
    }

    /// Forgets the created pods the watch now shows (`seen`) and returns those still awaited;
    /// none once they were awaited for longer than [`PATIENCE`].
    pub fn awaited(&self, job: &TrainJob, seen: &[Arc<Pod>]) -> BTreeSet<String> {
        let Some(uid) = uid(job) else {
            return BTreeSet::new();
        };
        let mut state = self.lock();
        let Some(r) = state.jobs.get_mut(uid) else {
            return BTreeSet::new();
        };
        for pod in seen {
            if let Some(name) = &pod.metadata.name {
                r.awaited.remove(name);
            }
        }
        if r.awaited_since.is_some_and(|since| since.elapsed() > PATIENCE) {
            r.awaited.clear();
        }
        r.awaited.clone()
    }

    /// Notes pods of the job just deleted, by uid.
    pub fn deleted(&self, job: &TrainJob, uids: impl IntoIterator<Item = String>) {
        // In whole seconds, as the API server keeps times: the `Resumed` transition a resumed
        // job compares it with comes back from the API server so, and a pod deleted by the
        // suspension earlier in the second of the resume must not look deleted after it.
        let wall = lifecycle::now().0;
        let second = k8s_openapi::jiff::Timestamp::from_second(wall.as_second()).unwrap_or(wall);
        let now = (Instant::now(), Time(second));
        self.note(job, |r| {
            r.deleted.extend(uids.into_iter().map(|uid| (uid, now.clone())))
        });
    }

    /// The pods the watch shows (`seen`), those this run deleted shown as deleting since the
    /// delete (a resumed job tells its suspension's pods by that time): the watch brings their
    /// deletion a moment later, and a reconcile in between must not delete them again. Forgets
    /// a deletion once the watch shows it, or after [`PATIENCE`].
    pub fn deleting(&self, job: &TrainJob, seen: Vec<Arc<Pod>>) -> Vec<Arc<Pod>> {
        let Some(uid) = uid(job) else { return seen };
        let mut state = self.lock();
        let Some(r) = state.jobs.get_mut(uid).filter(|r| !r.deleted.is_empty()) else {
            return seen;
        };
        r.deleted.retain(|_, (at, _)| at.elapsed() < PATIENCE);
        let shown: Vec<&str> = seen
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter_map(|p| p.metadata.uid.as_deref())
            .collect();
        r.deleted.retain(|uid, _| shown.contains(&uid.as_str()));
        seen.into_iter()
            .map(
                |pod| match pod.metadata.uid.as_ref().and_then(|u| r.deleted.get(u)) {
                    Some((_, since)) => {
                        let mut pod = (*pod).clone();
                        pod.metadata.deletion_timestamp = Some(since.clone());
                        pod.metadata.deletion_grace_period_seconds = None;
                        Arc::new(pod)
                    }
                    None => pod,
                },
            )
            .collect()
    }

    /// Whether this run made sure the finished job's Secret is gone.
    pub fn key_retired(&self, job: &TrainJob) -> bool {
        self.read(job, |r| r.key_retired).unwrap_or(false)
    }

    /// Notes that the finished job's Secret is gone.
    pub fn retire_key(&self, job: &TrainJob) {
        self.note(job, |r| r.key_retired = true);
    }

    /// Notes that the status that finishes the job was just written.
    pub fn finished(&self, job: &TrainJob) {
        self.note(job, |r| r.finished = Some(Instant::now()));
    }

    /// Whether `job` is a copy from before this operator finished it: its status says it runs,
    /// but the status written since says otherwise. Only for [`OUTDATED_WINDOW`]: should someone
    /// else clear the status later, the job is reconciled as it is.
    pub fn outdated(&self, job: &TrainJob) -> bool {
        !lifecycle::finished(job.status.as_ref())
            && self
                .read(job, |r| {
                    r.finished.is_some_and(|at| at.elapsed() < OUTDATED_WINDOW)
                })
                .unwrap_or(false)
    }

    /// Of the foreign pods `names`, those not reported on the job yet; notes them as reported.
    pub fn unreported(&self, job: &TrainJob, names: impl IntoIterator<Item = String>) -> Vec<String> {
        self.note(job, |r| {
            names
                .into_iter()
                .filter(|n| r.foreign.insert(n.clone()))
                .collect()
        })
        .unwrap_or_default()
    }

    /// Records the job's phase for the active gauge; finished phases are not counted.
    pub fn set_phase(&self, job: &TrainJob, phase: Option<Phase>) {
        let phase = phase.filter(|p| !matches!(p, Phase::Complete | Phase::Failed));
        let old = self.note(job, |r| std::mem::replace(&mut r.phase, phase));
        if let Some(old) = old {
            self.metrics.phase_changed(old, phase);
        }
    }

    /// Whether the active gauge counts the job with `uid`.
    pub fn counts_active(&self, uid: &str) -> bool {
        self.lock().jobs.get(uid).is_some_and(|r| r.phase.is_some())
    }

    /// Forgets what a finished job needs no more, keeping what tells a later reconcile of it
    /// that this run finished it ([`Memory::outdated`]) and retired its key.
    pub fn settle(&self, job: &TrainJob) {
        self.status_holding(job, false);
        let old = self.note(job, |r| {
            let phase = r.phase;
            *r = Remembered {
                finished: r.finished,
                key_retired: r.key_retired,
                // Finishing deletes the workers: the next reconcile must not do it again.
                deleted: std::mem::take(&mut r.deleted),
                ..Remembered::default()
            };
            phase
        });
        if let Some(old) = old.flatten() {
            self.metrics.phase_changed(Some(old), None);
        }
    }

    /// Forgets a job that is gone.
    pub fn forget(&self, job: &TrainJob) {
        let Some(uid) = uid(job) else { return };
        let old = self.lock().drop_job(uid);
        self.metrics.phase_changed(old, None);
    }

    /// Keeps only the jobs whose uid `live` accepts: after a re-list, which delivers no delete
    /// events for the jobs deleted while the watch was away.
    pub fn retain(&self, live: impl Fn(&str) -> bool) {
        let mut state = self.lock();
        let dead: Vec<String> = state.jobs.keys().filter(|uid| !live(uid)).cloned().collect();
        let phases: Vec<Option<Phase>> = dead.iter().map(|uid| state.drop_job(uid)).collect();
        drop(state);
        for old in phases {
            self.metrics.phase_changed(old, None);
        }
    }

    /// Jobs remembered.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().jobs.len()
    }
}

#[cfg(test)]
mod tests;
