//! The imperative shell: one reconcile is `dereference → resolve → validate → decide → apply →
//! observe`. Reading and writing live in `dereference` and `apply`, Events and metrics in
//! `observe`; everything between is pure. Errors that cannot heal (a name that cannot fit, an
//! object owned by someone else, a pod the API server refuses) fail the job with a condition
//! instead of being retried; the others back off per job.

mod apply;
mod backoff;
mod dereference;
mod expectations;
mod index;
mod memory;
mod observe;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::sync::atomic::{AtomicUsize, Ordering};

use futures::{FutureExt, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Service};
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};

use crate::api::{ClusterTrainingRuntime, MANAGED_BY_TRAINER, TrainJob, TrainingRuntime};
use crate::listed::Listed;
use crate::metrics::{ErrorLabels, Metrics};
use crate::resolve::{ResolveError, resolve};
use crate::ssh::KeyAlgorithm;
use crate::validate::{Limits, ValidateError, validate};
use crate::{lifecycle, names};
use backoff::Backoff;
use index::JobPods;

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
    /// The cluster's DNS domain (kubelet `--cluster-domain`).
    pub cluster_domain: String,
    /// Keep a finished job's SSH Secret (for debugging) instead of deleting it.
    pub keep_ssh_secrets: bool,
    /// Give each job a NetworkPolicy that admits only its own pods.
    pub network_policies: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            ssh_algorithm: KeyAlgorithm::default(),
            concurrency: 32,
            instance: "trainjob-operator".into(),
            limits: Limits::default(),
            cluster_domain: crate::plan::DEFAULT_CLUSTER_DOMAIN.into(),
            keep_ssh_secrets: false,
            network_policies: false,
        }
    }
}

/// A failed reconcile, by the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Dereference(#[from] dereference::Error),
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    #[error(transparent)]
    Validate(#[from] ValidateError),
    #[error(transparent)]
    Apply(#[from] apply::Error),
}

impl Error {
    /// The `Failed` reason when the error cannot heal without the user changing something.
    pub fn permanent(&self) -> Option<&'static str> {
        match self {
            Error::Dereference(e) => e.permanent(),
            Error::Resolve(e) => Some(e.reason()),
            Error::Validate(e) => Some(e.reason()),
            Error::Apply(e) => e.permanent(),
        }
    }

    /// Stable label for the `trainjob_reconcile_errors` metric: one per variant.
    pub fn label(&self) -> &'static str {
        match self {
            Error::Dereference(e) => e.label(),
            Error::Resolve(e) => e.label(),
            Error::Validate(e) => e.label(),
            Error::Apply(e) => e.label(),
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
    recorder: Recorder,
    backoff: Backoff,
    in_flight: AtomicUsize,
    /// Pod creates and deletes in flight across all reconciles: below the API server's default
    /// limit of 200 mutating requests, so a burst is queued here rather than refused there.
    writes: tokio::sync::Semaphore,
    memory: Arc<memory::Memory>,
    /// The TrainJobs as the watch holds them.
    jobs: Store<TrainJob>,
    runtimes: crate::runtimes::Cache,
    expected: expectations::Expectations,
}

/// Pod writes in flight at once (see [`Context::writes`]).
const MAX_POD_WRITES: usize = 64;

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

/// How long a shutdown waits for in-flight reconciles; below the pod's default 30 s grace period.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

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
        forget(&ctx, &job);
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
        forget(&ctx, &job);
        Ok(Action::await_change())
    } else {
        match pipeline(&job, &ctx).await {
            Err(e) if e.permanent().is_some() => fail_permanently(&job, &ctx, &e).await,
            Err(e) if namespace_ending(&e) => {
                // The namespace controller deletes the job next: nothing to retry or report.
                tracing::debug!(job = %job.name_any(), namespace = job.namespace().unwrap_or_default(), "the namespace is being deleted; the job goes with it");
                forget(&ctx, &job);
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

/// Whether `error` comes from writing into a namespace that is being deleted (or is gone).
pub(crate) fn namespace_ending(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(kube::Error::Api(status)) = e.downcast_ref::<kube::Error>() {
            let causes = status
                .details
                .as_ref()
                .map(|d| d.causes.as_slice())
                .unwrap_or_default();
            let terminating = status.code == 403 && causes.iter().any(|c| c.reason == "NamespaceTerminating");
            let gone = status.code == 404 && status.details.as_ref().is_some_and(|d| d.kind == "namespaces");
            return terminating || gone;
        }
        next = e.source();
    }
    false
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
    let active = !lifecycle::finished(job.status.as_ref()) && !job.spec.suspend.unwrap_or(false);
    let inputs = dereference::inputs(job, ctx, active).await?;
    let mut plan = resolve(job, &inputs.runtime.label, &inputs.runtime.spec)?;
    plan.cluster_domain.clone_from(&ctx.settings.cluster_domain);
    plan.network_policy = ctx.settings.network_policies;
    validate(job, &inputs.runtime.label, &plan, &ctx.settings.limits)?;
    let pods = inputs.pods.iter().map(AsRef::as_ref);
    let seen = lifecycle::Seen {
        launcher_log: inputs.launcher_log.as_deref(),
        gang: inputs.gang.as_ref(),
    };
    let mut decision = lifecycle::decide_with(job, &plan, pods, &now, seen);
    // A job that goes on needs its key; one that finishes now does not (it may well be this
    // operator's own half-done finish that deleted it).
    if decision.phase.is_some_and(lifecycle::Phase::needs_children)
        && dereference::key_lost(inputs.secret_exists, &inputs.pods)
    {
        return Err(dereference::Error::SecretDeleted {
            name: names::ssh_secret(&job.name_any()),
        }
        .into());
    }
    let uid = job.metadata.uid.as_deref().unwrap_or_default();
    let awaited = ctx.expected.awaited(uid, &inputs.pods);
    if !awaited.is_empty() {
        let job_name = job.name_any();
        decision.create.retain(|(i, at)| {
            !awaited.contains(&names::pod(
                &job_name,
                &plan.jobs[*i].name,
                at.job_index,
                at.index,
            ))
        });
    }
    // A pod the job does not own holds a name it needs: say whose it is, as for its other
    // children (or wait, if an earlier job of the same name is still being collected).
    let job_name = job.name_any();
    for (i, at) in &decision.create {
        let wanted = names::pod(&job_name, &plan.jobs[*i].name, at.job_index, at.index);
        if let Some(pod) = inputs
            .foreign
            .iter()
            .find(|p| p.metadata.name.as_deref() == Some(&wanted))
        {
            dereference::check_owner(job, "Pod", &pod.metadata)?;
        }
    }
    let held = apply::decision(job, ctx, &plan, &inputs, &decision).await?;
    observe::decision(job, ctx, &plan, &inputs, &decision, &now).await;
    let wake = [decision.requeue_after, held].into_iter().flatten().min();
    Ok(Action::requeue(wake.unwrap_or(DRIFT_CHECK)))
}

/// A permanent error: `Failed` with the error's reason and message, its running pods stopped,
/// and no retry until the job changes. A job that already finished only has its pods stopped.
async fn fail_permanently(job: &TrainJob, ctx: &Context, error: &Error) -> Result<Action, Error> {
    let (pods, _) = dereference::own_pods(job, ctx);
    if !lifecycle::finished(job.status.as_ref()) {
        count_error(ctx, error);
        let now = lifecycle::now();
        let reason = error.permanent().unwrap_or_default();
        let status = lifecycle::failed_status(job.status.as_ref(), reason, &error.to_string(), &now);
        apply::write_status(job, ctx, &status).await?;
        apply::retire_key(job, ctx, &status).await?;
        observe::failure(job, ctx, &status, &now).await;
    }
    apply::stop_pods(job, ctx, &pods).await?;
    Ok(Action::await_change())
}

/// Drops everything kept about a job that is being deleted or is gone, its phase included.
fn forget(ctx: &Context, job: &TrainJob) {
    ctx.memory.forget(job);
    let_go(ctx, job);
}

/// Drops what a finished job needs no more (see `Memory::settle`), its phase included.
fn settle(ctx: &Context, job: &TrainJob) {
    ctx.memory.settle(job);
    let_go(ctx, job);
}

/// Stops counting the job as active and awaiting its pods.
fn let_go(ctx: &Context, job: &TrainJob) {
    let (ns, name) = key(job);
    ctx.metrics.forget_phase(&ns, &name);
    ctx.expected
        .forget(job.metadata.uid.as_deref().unwrap_or_default());
}

/// After a (re-)list, drops what is kept about jobs deleted while the watch was away: a watch
/// that lists again delivers no delete events for them.
fn prune(ctx: &Context) {
    let jobs = ctx.jobs.state();
    let uids: HashSet<&str> = jobs.iter().filter_map(|j| j.metadata.uid.as_deref()).collect();
    let keys: HashSet<(String, String)> = jobs.iter().map(|j| key(j)).collect();
    ctx.memory.retain(|uid| uids.contains(uid));
    ctx.expected.retain(|uid| uids.contains(uid));
    ctx.metrics
        .retain_phases(|ns, name| keys.contains(&(ns.to_string(), name.to_string())));
}

/// Whether the jobs' watch still holds this job (the same one, not a successor of its name).
fn held(ctx: &Context, job: &TrainJob) -> bool {
    ctx.jobs
        .get(&ObjectRef::from_obj(job))
        .is_some_and(|held| held.metadata.uid == job.metadata.uid)
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

/// Runs the controller until `shutdown` resolves. Sets `ready` once every watch cache has
/// listed: from then on a new job is reconciled at once, without waiting for them.
pub async fn run(
    client: Client,
    settings: Settings,
    runtimes: crate::runtimes::Cache,
    metrics: Arc<Metrics>,
    ready: Arc<std::sync::atomic::AtomicBool>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let managed =
        watcher::Config::default().labels(&format!("{}={}", names::MANAGED_BY_LABEL, names::MANAGED_BY));
    let listed = Listed::new(["pods", "configmaps", "services", "trainjobs", "namespaces"]);
    // Namespaces by metadata only: a job whose namespace is being deleted is left to go with it.
    let (namespaces, writer) = reflector::store();
    let namespace_events = watcher(
        Api::<PartialObjectMeta<Namespace>>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(writer)
    .inspect_ok(listed.on_list("namespaces"));
    tokio::spawn(namespace_events.for_each(|_| async {}));
    let pods = Arc::new(JobPods::default());
    let index = pods.clone();
    let pod_events = watcher(Api::<Pod>::all(client.clone()), managed.clone())
        .default_backoff()
        .modify(trim_pod)
        .inspect_ok(move |event| index.apply(event))
        .inspect_ok(listed.on_list("pods"))
        .touched_objects();
    let (configmaps, writer) = reflector::store();
    let configmap_events = watcher(Api::<ConfigMap>::all(client.clone()), managed.clone())
        .default_backoff()
        .modify(|c| c.managed_fields_mut().clear())
        .reflect(writer)
        .inspect_ok(listed.on_list("configmaps"))
        .touched_objects();
    let (services, writer) = reflector::store();
    let service_events = watcher(Api::<Service>::all(client.clone()), managed)
        .default_backoff()
        .modify(|s| s.managed_fields_mut().clear())
        .reflect(writer)
        .inspect_ok(listed.on_list("services"))
        .touched_objects();
    let reporter = Reporter {
        controller: names::FIELD_MANAGER.into(),
        instance: Some(settings.instance.clone()),
    };
    let (jobs, writer) = reflector::store();
    let ctx = Arc::new(Context {
        recorder: Recorder::new(client.clone(), reporter),
        client: client.clone(),
        settings: settings.clone(),
        metrics,
        pods,
        configmaps,
        services,
        listed: listed.clone(),
        namespaces,
        backoff: Backoff::default(),
        in_flight: AtomicUsize::new(0),
        writes: tokio::sync::Semaphore::new(MAX_POD_WRITES),
        memory: Arc::default(),
        jobs: jobs.clone(),
        runtimes,
        expected: Default::default(),
    });
    let shutdown = shutdown.shared();

    // The jobs' own watch notes when each new job was first seen (see `memory`).
    let seen = ctx.clone();
    let job_events = watcher(
        Api::<TrainJob>::all(client.clone()),
        watcher::Config::default().any_semantic(),
    )
    .default_backoff()
    .modify(|j| j.managed_fields_mut().clear())
    .reflect(writer)
    .inspect_ok(listed.on_list("trainjobs"))
    .inspect_ok(move |event| match event {
        watcher::Event::Apply(job) | watcher::Event::InitApply(job) => seen.memory.saw(job),
        // A job deleted without a finalizer is never reconciled again: forget it here, and stop
        // counting it as active.
        watcher::Event::Delete(job) => forget(&seen, job),
        watcher::Event::InitDone => prune(&seen),
        watcher::Event::Init => {}
    })
    .applied_objects();
    let controller = Controller::for_stream(job_events, jobs.clone());
    tokio::spawn(signal_ready(ctx.clone(), ready));
    let by_namespaced = jobs.clone();
    let reconciles = controller
        .owns_stream(pod_events)
        .owns_stream(configmap_events)
        .owns_stream(service_events)
        .watches(
            Api::<TrainingRuntime>::all(client.clone()),
            watcher::Config::default(),
            move |rt| referencing(&by_namespaced, "TrainingRuntime", rt.namespace(), &rt.name_any()),
        )
        .watches(
            Api::<ClusterTrainingRuntime>::all(client),
            watcher::Config::default(),
            move |rt| referencing(&jobs, "ClusterTrainingRuntime", None, &rt.name_any()),
        )
        .with_config(ControllerConfig::default().concurrency(settings.concurrency))
        .graceful_shutdown_on(shutdown.clone())
        .run(reconcile, error_policy, ctx.clone())
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "reconcile failed");
            }
        });
    // kube's graceful shutdown can wait forever when it comes before the job cache's first
    // list completes; reconciles are safe to cut short (the next leader redoes them), so stop
    // once none is in flight, or after the grace period.
    let drained = async {
        shutdown.await;
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        while ctx.in_flight.load(Ordering::SeqCst) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::select! {
        _ = reconciles => {}
        _ = drained => {}
    }
}

/// Sets `ready` once every watch cache has listed; says which ones it still waits for every
/// 30 s until then.
async fn signal_ready(ctx: Arc<Context>, ready: Arc<std::sync::atomic::AtomicBool>) {
    let started = Instant::now();
    let all = futures::future::join(ctx.listed.all(), ctx.runtimes.ready());
    let mut all = std::pin::pin!(all);
    loop {
        tokio::select! {
            _ = &mut all => break,
            _ = tokio::time::sleep(Duration::from_secs(30)) => {
                let mut waiting = ctx.listed.pending();
                waiting.extend(ctx.runtimes.pending());
                tracing::warn!(waiting_for = %waiting.join(", "), "watch caches not listed yet; not ready");
            }
        }
    }
    tracing::info!(
        after_ms = started.elapsed().as_millis() as u64,
        "watch caches listed; ready"
    );
    ready.store(true, Ordering::Relaxed);
}

/// What the pod cache keeps of a pod: what reconciles read (metadata, the node it is bound to,
/// the status). The rest of the spec, most of a pod's bytes, is the operator's own template; a
/// burst of thousands of pods held whole took most of the operator's memory.
fn trim_pod(pod: &mut Pod) {
    pod.managed_fields_mut().clear();
    if let Some(spec) = pod.spec.as_mut() {
        *spec = k8s_openapi::api::core::v1::PodSpec {
            node_name: spec.node_name.take(),
            ..Default::default()
        };
    }
}

/// Unfinished jobs that reference a runtime. Only jobs that have not frozen their runtime yet
/// care, and reconciling a frozen one is a cheap no-op, so this need not tell them apart.
fn referencing(
    jobs: &Store<TrainJob>,
    kind: &str,
    namespace: Option<String>,
    name: &str,
) -> Vec<ObjectRef<TrainJob>> {
    jobs.state()
        .into_iter()
        .filter(|j| {
            let r = &j.spec.runtime_ref;
            r.name == name
                && r.kind.as_deref().unwrap_or("ClusterTrainingRuntime") == kind
                && (namespace.is_none() || j.metadata.namespace == namespace)
                && !lifecycle::finished(j.status.as_ref())
        })
        .map(|j| ObjectRef::from_obj(&*j))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error(status: serde_json::Value) -> Error {
        let status: kube::core::Status = serde_json::from_value(status).expect("status");
        Error::Apply(apply::Error::Kube {
            action: "creating pod pi-node-0-0".into(),
            source: kube::Error::Api(Box::new(status)),
        })
    }

    #[test]
    fn writes_into_a_namespace_being_deleted_are_told_apart() {
        let terminating = api_error(serde_json::json!({
            "code": 403, "reason": "Forbidden",
            "message": "pods \"pi-node-0-0\" is forbidden: unable to create new content in namespace x because it is being terminated",
            "details": {"name": "pi-node-0-0", "kind": "pods", "causes": [
                {"reason": "NamespaceTerminating", "message": "namespace x is being terminated", "field": "metadata.namespace"}]},
        }));
        assert!(namespace_ending(&terminating));
        let gone = api_error(serde_json::json!({
            "code": 404, "reason": "NotFound", "message": "namespaces \"x\" not found",
            "details": {"name": "x", "kind": "namespaces"},
        }));
        assert!(namespace_ending(&gone));
        let forbidden = api_error(serde_json::json!({
            "code": 403, "reason": "Forbidden", "message": "pods is forbidden: User cannot create",
        }));
        assert!(!namespace_ending(&forbidden), "a plain 403 is a real error");
        let missing_pod = api_error(serde_json::json!({
            "code": 404, "reason": "NotFound", "message": "pods \"p\" not found",
            "details": {"name": "p", "kind": "pods"},
        }));
        assert!(!namespace_ending(&missing_pod));
    }
}
