//! The imperative shell: one reconcile is `dereference → resolve → validate → decide → build →
//! apply → observe`. Reading and writing live in `dereference` and `apply`, Events and metrics
//! in `observe`; everything between is pure (`resolve`, `validate`, `lifecycle`, `desired`). Errors that cannot heal (a name that cannot fit,
//! an object owned by someone else, a pod the API server refuses) fail the job with a condition
//! instead of being retried; the others back off per job. The watches are wired in `watches`.

mod apply;
mod backoff;
mod dereference;
mod error;
mod events;
mod index;
mod memory;
mod observe;
mod watches;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use events::Recorder;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Service};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};

use crate::api::{MANAGED_BY_TRAINER, TrainJob};
use crate::listed::Listed;
use crate::metrics::{ErrorLabels, Metrics};
use crate::observed::Observed;
use crate::plan::Cluster;
use crate::resolve::resolve;
use crate::ssh::{KeyAlgorithm, KeyPair};
use crate::validate::{self, Limits, validate};
use crate::{desired, lifecycle};
use backoff::Backoff;
pub use error::Error;
use index::JobPods;
pub use memory::Memory;
pub use watches::run;

/// Operator settings.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Algorithm of new SSH keys.
    pub ssh_algorithm: KeyAlgorithm,
    /// Jobs reconciled in parallel.
    pub concurrency: u16,
    /// Name of this instance in Events.
    pub instance: String,
    /// Limits on a single job.
    pub limits: Limits,
    /// The cluster's DNS domain and whether jobs get NetworkPolicies.
    pub cluster: Cluster,
    /// Keep a finished job's SSH Secret (for debugging) instead of deleting it.
    pub keep_ssh_secrets: bool,
    /// Where jobs' pods report their progress; `None`: the status server is off.
    pub progress: Option<crate::progress::Reporting>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            ssh_algorithm: KeyAlgorithm::default(),
            concurrency: 32,
            instance: "trainjob-operator".into(),
            limits: Limits::default(),
            cluster: Cluster::default(),
            keep_ssh_secrets: false,
            progress: None,
        }
    }
}

/// Shared state of the reconciler.
pub struct Context {
    /// API client (the operator's identity).
    pub client: Client,
    /// Settings.
    pub settings: Settings,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    pods: Arc<JobPods>,
    configmaps: Store<ConfigMap>,
    services: Store<Service>,
    /// Which of the watches above (and the jobs') have listed once.
    listed: Arc<Listed>,
    /// Every namespace's metadata, to tell one that is being deleted.
    namespaces: Store<PartialObjectMeta<Namespace>>,
    /// Every node's readiness, to tell pods lost with their node.
    nodes: Store<Node>,
    recorder: Recorder,
    backoff: Backoff,
    in_flight: AtomicUsize,
    /// Pod creates and deletes in flight across all reconciles: below the API server's default
    /// limit of 200 mutating requests, so a burst is queued here rather than refused there.
    writes: tokio::sync::Semaphore,
    /// What the operator remembers of each job.
    memory: Arc<Memory>,
    runtimes: crate::runtimes::Cache,
}

/// Counts a reconcile as in flight for as long as it lives.
struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    fn new(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::SeqCst);
        InFlight(counter)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// How soon a reconcile of an outdated copy of a job (see `Memory::outdated`) looks again, should
/// the watch event that ends the wait be lost.
const OUTDATED_RETRY: Duration = Duration::from_secs(2);

/// Watches bring every change; this periodic pass only repairs drift they cannot see.
const DRIFT_CHECK: Duration = Duration::from_secs(300);

/// Reconciles one TrainJob.
pub async fn reconcile(job: Arc<TrainJob>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _in_flight = InFlight::new(&ctx.in_flight);
    let started = Instant::now();
    let result = if job.metadata.deletion_timestamp.is_some() {
        // Owner references remove the children (a foreground deletion waits for them).
        ctx.memory.forget(&job);
        Ok(Action::await_change())
    } else if !managed_here(&job) {
        Ok(Action::await_change())
    } else if ctx.memory.outdated(&job) {
        // This operator finished the job; the watch brings that status soon. Acting on the
        // older copy would finish it a second time.
        Ok(Action::requeue(OUTDATED_RETRY))
    } else if namespace_deleted(&ctx, &job) {
        // The namespace controller deletes the job soon: a pod of it that vanishes now is no
        // failure, and nothing written now would last.
        ctx.memory.forget(&job);
        Ok(Action::await_change())
    } else {
        match pipeline(&job, &ctx).await {
            Err(e) if e.permanent().is_some() => fail(&job, &ctx, &e).await,
            Err(e) if error::namespace_ending(&e) => {
                // The namespace controller deletes the job next: nothing to retry or report.
                tracing::debug!(job = %job.name_any(), namespace = job.namespace().unwrap_or_default(), "the namespace is being deleted; the job goes with it");
                ctx.memory.forget(&job);
                Ok(Action::await_change())
            }
            result => result,
        }
    };
    if result.is_ok() {
        ctx.backoff.succeeded(&key(&job));
    }
    ctx.metrics
        .reconcile_duration
        .observe(started.elapsed().as_secs_f64());
    result
}

/// Whether the job's namespace is being deleted.
fn namespace_deleted(ctx: &Context, job: &TrainJob) -> bool {
    let ns = job.namespace().unwrap_or_default();
    ctx.namespaces
        .get(&ObjectRef::new(&ns))
        .is_some_and(|n| n.metadata.deletion_timestamp.is_some())
}

/// Whether `spec.managedBy` leaves the job to this operator (Kueue's MultiKueue sets another).
fn managed_here(job: &TrainJob) -> bool {
    job.spec
        .managed_by
        .as_deref()
        .is_none_or(|m| m == MANAGED_BY_TRAINER)
}

async fn pipeline(job: &TrainJob, ctx: &Context) -> Result<Action, Error> {
    let now = lifecycle::now();
    let observed = dereference::observe(job, ctx).await?;
    let cluster = Cluster {
        reporting: ctx.settings.progress.as_ref().and_then(|p| p.current()),
        ..ctx.settings.cluster.clone()
    };
    let plan = resolve(job, &observed.runtime, &cluster)?;
    validate(job, &observed.runtime.label, &plan, &ctx.settings.limits)?;
    validate::initializers(job, &observed.runtime.label, &plan)?;
    if let Some(quotas) = &observed.quotas {
        validate::quotas(job, &plan, quotas)?;
    }
    let decision = lifecycle::decide(job, &plan, &observed, &now)?;
    let keys = match desired::needs_key(&decision, &observed) {
        true => Some(new_key(job, ctx).await?),
        false => None,
    };
    let objects = desired::objects(job, &plan, &observed, &decision, keys.as_ref())?;
    let updates = desired::updates(job, &observed, &decision, ctx.settings.keep_ssh_secrets, &now);
    apply::apply(job, ctx, &objects, &updates).await?;
    ctx.memory.status_holding(job, updates.held.is_some());
    note_deleted(job, ctx, &observed, &decision.delete);
    observe::decision(job, ctx, Some(&plan), &observed, &decision, &now).await;
    let wake = [decision.requeue_after, updates.held].into_iter().flatten().min();
    Ok(Action::requeue(wake.unwrap_or(DRIFT_CHECK)))
}

/// A key pair for the job's new Secret.
async fn new_key(job: &TrainJob, ctx: &Context) -> Result<KeyPair, Error> {
    let algorithm = ctx.settings.ssh_algorithm;
    let comment = format!(
        "trainjob/{}/{}",
        job.namespace().unwrap_or_default(),
        job.name_any()
    );
    Ok(KeyPair::generate_off_executor(algorithm, comment).await?)
}

/// A permanent error: `Failed` with the error's reason and message, its running pods stopped,
/// and no retry until the job changes. A job that already finished only has its pods stopped.
async fn fail(job: &TrainJob, ctx: &Context, error: &Error) -> Result<Action, Error> {
    let now = lifecycle::now();
    if !lifecycle::finished(job.status.as_ref()) {
        count_error(ctx, error);
    }
    let (pods, foreign) = dereference::own_pods(job, ctx);
    let reason = error.permanent().unwrap_or_default();
    let decision = lifecycle::stop(job, &pods, reason, &error.to_string(), &now);
    let observed = Observed {
        pods,
        foreign,
        key_retired: ctx.memory.key_retired(job),
        ..Observed::default()
    };
    let updates = desired::updates(job, &observed, &decision, ctx.settings.keep_ssh_secrets, &now);
    apply::apply(job, ctx, &desired::Objects::default(), &updates).await?;
    note_deleted(job, ctx, &observed, &decision.delete);
    observe::decision(job, ctx, None, &observed, &decision, &now).await;
    Ok(Action::await_change())
}

/// Notes the pods named in `deleted` as deleted: until the watch shows them deleting, the next
/// reconcile sees them so (see [`Memory::deleting`]) and does not delete them again.
fn note_deleted(job: &TrainJob, ctx: &Context, observed: &Observed, deleted: &[String]) {
    if deleted.is_empty() {
        return;
    }
    let uids = observed
        .pods
        .iter()
        .filter(|p| p.metadata.name.as_ref().is_some_and(|n| deleted.contains(n)))
        .filter_map(|p| p.metadata.uid.clone());
    ctx.memory.deleted(job, uids);
}

fn key(job: &TrainJob) -> (String, String) {
    (job.namespace().unwrap_or_default(), job.name_any())
}

fn count_error(ctx: &Context, error: &Error) {
    let labels = ErrorLabels {
        error: error.label().into(),
    };
    ctx.metrics.reconcile_errors.get_or_create(&labels).inc();
}

/// A transient error: counted, logged, and retried after the job's own backoff.
pub fn error_policy(job: Arc<TrainJob>, error: &Error, ctx: Arc<Context>) -> Action {
    let retry = ctx.backoff.failed(key(&job));
    tracing::warn!(job = %job.name_any(), namespace = job.namespace().unwrap_or_default(), %error, retry_in = ?retry, "reconcile failed");
    count_error(&ctx, error);
    Action::requeue(retry)
}
