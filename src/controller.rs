//! The imperative shell: fetch what the pure core needs, apply what it decides. One reconcile
//! runs `dereference → resolve → ensure children → decide → write status → delete → create`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;

use crate::api::{
    ClusterTrainingRuntime, GROUP, MANAGED_BY_TRAINER, TrainJob, TrainJobStatus, TrainingRuntime,
    TrainingRuntimeSpec,
};
use crate::metrics::{FailureLabels, JobLabels, Metrics};
use crate::resolve::{Plan, Role, resolve};
use crate::ssh::{KeyAlgorithm, KeyPair};
use crate::status::{self, Decision, Severity, conditions};
use crate::{hostfile, names, pods};

/// Operator settings.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Algorithm of new SSH keys.
    pub ssh_algorithm: KeyAlgorithm,
    /// Jobs reconciled in parallel.
    pub concurrency: u16,
    /// Name of this instance in Events.
    pub instance: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            ssh_algorithm: KeyAlgorithm::default(),
            concurrency: 8,
            instance: "trainjob-operator".into(),
        }
    }
}

/// Reconcile failures; each is retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API error while {action}: {source}")]
    Kube {
        action: String,
        #[source]
        source: kube::Error,
    },
    #[error("Secret {0} exists but belongs to another owner; delete it or rename the TrainJob")]
    ForeignSecret(String),
    #[error("runtime snapshot {name} is unreadable: {reason}")]
    Snapshot { name: String, reason: String },
    #[error(transparent)]
    Ssh(#[from] crate::ssh::SshError),
    #[error("SSH key generation task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

impl Error {
    /// Short label for the error metric.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Kube { .. } => "kube",
            Error::ForeignSecret(_) => "foreign_secret",
            Error::Snapshot { .. } => "snapshot",
            Error::Ssh(_) | Error::Join(_) => "ssh",
        }
    }
}

fn kube_err(action: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let action = action.into();
    move |source| Error::Kube { action, source }
}

/// Shared state of the reconciler.
pub struct Context {
    /// API client (the operator's identity).
    pub client: Client,
    /// Settings.
    pub settings: Settings,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    pods: Store<Pod>,
    recorder: Recorder,
}

/// Runs the controller until `shutdown` resolves.
pub async fn run(
    client: Client,
    settings: Settings,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let jobs: Api<TrainJob> = Api::all(client.clone());
    let managed =
        watcher::Config::default().labels(&format!("{}={}", names::MANAGED_BY_LABEL, names::MANAGED_BY));
    let (pods, writer) = reflector::store();
    let pod_events = watcher(Api::<Pod>::all(client.clone()), managed.clone())
        .default_backoff()
        .modify(|p| p.managed_fields_mut().clear())
        .reflect(writer)
        .touched_objects();
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: names::FIELD_MANAGER.into(),
            instance: Some(settings.instance.clone()),
        },
    );
    let ctx = Arc::new(Context {
        client: client.clone(),
        settings: settings.clone(),
        metrics,
        pods,
        recorder,
    });

    let controller = Controller::new(jobs, watcher::Config::default().any_semantic());
    let store = controller.store();
    // A runtime change matters to jobs that have not frozen their runtime yet; reconciling a
    // frozen job is a cheap no-op, so map to every job referencing it.
    let referencing = move |kind: &'static str, runtime_ns: Option<String>, runtime_name: String| {
        store
            .state()
            .into_iter()
            .filter(|j| {
                j.spec.runtime_ref.name == runtime_name
                    && j.spec
                        .runtime_ref
                        .kind
                        .as_deref()
                        .unwrap_or("ClusterTrainingRuntime")
                        == kind
                    && (runtime_ns.is_none() || j.metadata.namespace == runtime_ns)
                    && !status::finished(j.status.as_ref())
            })
            .map(|j| ObjectRef::from_obj(&*j))
            .collect::<Vec<_>>()
    };
    let by_cluster_runtime = referencing.clone();
    controller
        .owns_stream(pod_events)
        .owns(Api::<ConfigMap>::all(client.clone()), managed.clone())
        .owns(Api::<Service>::all(client.clone()), managed)
        .watches(
            Api::<TrainingRuntime>::all(client.clone()),
            watcher::Config::default(),
            move |rt| referencing("TrainingRuntime", rt.namespace(), rt.name_any()),
        )
        .watches(
            Api::<ClusterTrainingRuntime>::all(client),
            watcher::Config::default(),
            move |rt| by_cluster_runtime("ClusterTrainingRuntime", None, rt.name_any()),
        )
        .with_config(ControllerConfig::default().concurrency(settings.concurrency))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "reconcile failed");
            }
        })
        .await;
}

/// Retries failed reconciles after a short pause; records the error.
pub fn error_policy(job: Arc<TrainJob>, error: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(job = %job.name_any(), namespace = job.namespace().unwrap_or_default(), %error, "reconcile failed");
    ctx.metrics
        .reconcile_errors
        .get_or_create(&crate::metrics::ErrorLabels {
            error: error.kind().into(),
        })
        .inc();
    Action::requeue(Duration::from_secs(5))
}

/// Reconciles one TrainJob.
pub async fn reconcile(job: Arc<TrainJob>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let result = reconcile_inner(&job, &ctx).await;
    ctx.metrics
        .reconcile_duration
        .observe(started.elapsed().as_secs_f64());
    result
}

async fn reconcile_inner(job: &TrainJob, ctx: &Context) -> Result<Action, Error> {
    let (Some(ns), Some(name)) = (job.namespace(), job.metadata.name.clone()) else {
        return Ok(Action::await_change());
    };
    if job.metadata.deletion_timestamp.is_some() {
        ctx.metrics.set_phase(&ns, &name, None);
        return Ok(Action::await_change());
    }
    if job
        .spec
        .managed_by
        .as_deref()
        .is_some_and(|m| m != MANAGED_BY_TRAINER)
    {
        tracing::debug!(job = %name, namespace = %ns, "managed by another controller; skipping");
        return Ok(Action::await_change());
    }
    let now = status::now();
    let runtime_label = job.spec.runtime_ref.name.clone();

    let runtime = match frozen_runtime(job, ctx, &ns, &name).await? {
        Ok(runtime) => runtime,
        Err(message) => {
            if !status::finished(job.status.as_ref()) {
                let status = status::failed_status(job, conditions::REASON_RUNTIME_NOT_FOUND, &message, &now);
                write_status(job, ctx, &status).await?;
                record(
                    ctx,
                    job,
                    Severity::Warning,
                    conditions::REASON_RUNTIME_NOT_FOUND,
                    &message,
                )
                .await;
                count_failure(ctx, &ns, &runtime_label, conditions::REASON_RUNTIME_NOT_FOUND);
            }
            ctx.metrics.set_phase(&ns, &name, None);
            return Ok(Action::await_change());
        }
    };
    let plan = match resolve(job, &runtime.0, &runtime.1) {
        Ok(plan) => plan,
        Err(e) => {
            if !status::finished(job.status.as_ref()) {
                let message = e.to_string();
                write_status(job, ctx, &status::failed_status(job, e.reason(), &message, &now)).await?;
                record(ctx, job, Severity::Warning, e.reason(), &message).await;
                count_failure(ctx, &ns, &runtime_label, e.reason());
            }
            ctx.metrics.set_phase(&ns, &name, None);
            return Ok(Action::await_change());
        }
    };

    let running = !status::finished(job.status.as_ref()) && !job.spec.suspend.unwrap_or(false);
    if running {
        ensure_children(job, ctx, &ns, &name, &plan).await?;
    }
    let pods: Vec<Pod> = ctx
        .pods
        .state()
        .into_iter()
        .filter(|p| p.metadata.namespace.as_deref() == Some(&ns))
        .filter(|p| p.labels().get(names::TRAINJOB_NAME_LABEL) == Some(&name))
        .map(|p| (*p).clone())
        .collect();
    let decision = status::decide(job, &plan, &pods, &now);
    apply(job, ctx, &ns, &plan, &pods, &decision, &now).await?;

    ctx.metrics.set_phase(&ns, &name, decision.phase);
    Ok(match decision.requeue_after {
        Some(after) => Action::requeue(after),
        // Watches drive everything; the periodic pass only repairs drift.
        None => Action::requeue(Duration::from_secs(300)),
    })
}

/// The runtime the job runs on, frozen at its first reconcile in `<job>-runtime-snapshot` so
/// later edits or deletion of the runtime never change a running job. `Ok(Err(message))` when
/// the runtime does not exist (and was never frozen).
async fn frozen_runtime(
    job: &TrainJob,
    ctx: &Context,
    ns: &str,
    name: &str,
) -> Result<Result<(String, TrainingRuntimeSpec), String>, Error> {
    let cms: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), ns);
    let snapshot_name = names::runtime_snapshot(name);
    let uid = job.metadata.uid.clone().unwrap_or_default();
    if let Some(cm) = cms
        .get_opt(&snapshot_name)
        .await
        .map_err(kube_err("reading the runtime snapshot"))?
    {
        let owned = cm.owner_references().iter().any(|o| o.uid == uid);
        let data = cm.data.unwrap_or_default();
        if owned && let (Some(runtime), Some(label)) = (data.get("runtime"), data.get("name")) {
            let spec = serde_json::from_str(runtime).map_err(|e| Error::Snapshot {
                name: snapshot_name.clone(),
                reason: e.to_string(),
            })?;
            return Ok(Ok((label.clone(), spec)));
        }
        if !owned {
            // Left over from a deleted job of the same name; the garbage collector removes it.
            return Err(Error::Snapshot {
                name: snapshot_name,
                reason: "owned by another TrainJob".into(),
            });
        }
    }

    let r = &job.spec.runtime_ref;
    let kind = r.kind.as_deref().unwrap_or("ClusterTrainingRuntime");
    let group = r.api_group.as_deref().unwrap_or(GROUP);
    let fetched = match (group, kind) {
        (GROUP, "ClusterTrainingRuntime") => Api::<ClusterTrainingRuntime>::all(ctx.client.clone())
            .get_opt(&r.name)
            .await
            .map(|o| o.map(|rt| rt.spec.0)),
        (GROUP, "TrainingRuntime") => {
            Api::<TrainingRuntime>::namespaced(ctx.client.clone(), ns).get_opt(&r.name).await.map(|o| o.map(|rt| rt.spec))
        }
        _ => {
            return Ok(Err(format!(
                "unsupported runtime: {kind}.{group}; spec.runtimeRef must name a TrainingRuntime or ClusterTrainingRuntime in {GROUP}"
            )));
        }
    }
    .map_err(kube_err(format!("reading {kind} {}", r.name)))?;
    let Some(spec) = fetched else {
        let whereabouts = if kind == "TrainingRuntime" {
            format!(" in namespace {ns}")
        } else {
            String::new()
        };
        return Ok(Err(format!(
            "{kind} \"{}\" not found{whereabouts}: create it, or point spec.runtimeRef at an existing one (kubectl get {}s)",
            r.name,
            kind.to_lowercase()
        )));
    };
    let label = format!("{kind}/{}", r.name);
    let mut cm = ConfigMap {
        metadata: names::child_meta(job, &snapshot_name),
        ..Default::default()
    };
    let runtime_json = serde_json::to_string(&spec).map_err(|e| Error::Snapshot {
        name: snapshot_name.clone(),
        reason: e.to_string(),
    })?;
    cm.data = Some(
        [
            ("runtime".to_string(), runtime_json),
            ("name".to_string(), label.clone()),
        ]
        .into(),
    );
    cms.create(
        &PostParams {
            field_manager: Some(names::FIELD_MANAGER.into()),
            ..Default::default()
        },
        &cm,
    )
    .await
    .map_err(kube_err("freezing the runtime"))?;
    ctx.metrics
        .jobs_created
        .get_or_create(&JobLabels {
            namespace: ns.into(),
            runtime: r.name.clone(),
        })
        .inc();
    record(
        ctx,
        job,
        Severity::Normal,
        "RuntimeFrozen",
        &format!("using {label}; later edits to it do not affect this job"),
    )
    .await;
    Ok(Ok((label, spec)))
}

/// The Secret (created once, never updated), the hostfile ConfigMap and the headless Service.
async fn ensure_children(
    job: &TrainJob,
    ctx: &Context,
    ns: &str,
    name: &str,
    plan: &Plan,
) -> Result<(), Error> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let secret_name = names::ssh_secret(name);
    match secrets
        .get_opt(&secret_name)
        .await
        .map_err(kube_err("reading the SSH Secret"))?
    {
        Some(s) => {
            let uid = job.metadata.uid.as_deref().unwrap_or_default();
            if !s.owner_references().iter().any(|o| o.uid == uid) {
                return Err(Error::ForeignSecret(secret_name));
            }
        }
        None => {
            let algorithm = ctx.settings.ssh_algorithm;
            let comment = format!("trainjob/{ns}/{name}");
            let keys = if algorithm.is_slow() {
                tokio::task::spawn_blocking(move || KeyPair::generate(algorithm, &comment)).await??
            } else {
                KeyPair::generate(algorithm, &comment)?
            };
            let secret = keys.secret(job)?;
            match secrets
                .create(
                    &PostParams {
                        field_manager: Some(names::FIELD_MANAGER.into()),
                        ..Default::default()
                    },
                    &secret,
                )
                .await
            {
                Ok(_) => tracing::info!(job = %name, namespace = %ns, %algorithm, "created SSH Secret"),
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => return Err(kube_err("creating the SSH Secret")(e)),
            }
        }
    }
    let params = PatchParams::apply(names::FIELD_MANAGER).force();
    let cm = hostfile::configmap(job, plan);
    Api::<ConfigMap>::namespaced(ctx.client.clone(), ns)
        .patch(&names::hostfile_configmap(name), &params, &Patch::Apply(&cm))
        .await
        .map_err(kube_err("applying the hostfile ConfigMap"))?;
    let svc = pods::service(job, plan);
    Api::<Service>::namespaced(ctx.client.clone(), ns)
        .patch(&plan.subdomain, &params, &Patch::Apply(&svc))
        .await
        .map_err(kube_err("applying the headless Service"))?;
    Ok(())
}

/// Writes the decision: status first (a restart is counted before its pods go), then deletes,
/// then creates, then Events and metrics.
async fn apply(
    job: &TrainJob,
    ctx: &Context,
    ns: &str,
    plan: &Plan,
    observed: &[Pod],
    decision: &Decision,
    now: &Time,
) -> Result<(), Error> {
    let old = job.status.clone().unwrap_or_default();
    if job.status.as_ref() != Some(&decision.status) {
        write_status(job, ctx, &decision.status).await?;
    }
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    for name in &decision.delete {
        match pods.delete(name, &DeleteParams::background()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(kube_err(format!("deleting pod {name}"))(e)),
        }
    }
    let attempt = decision.status.restarts.unwrap_or(0);
    let params = PatchParams::apply(names::FIELD_MANAGER).force();
    for (i, at) in &decision.create {
        let pod = pods::pod(job, plan, &plan.jobs[*i], *at, attempt);
        let name = pod.metadata.name.clone().unwrap_or_default();
        pods.patch(&name, &params, &Patch::Apply(&pod))
            .await
            .map_err(kube_err(format!("creating pod {name}")))?;
    }
    for note in &decision.notes {
        record(ctx, job, note.severity, note.reason, &note.message).await;
    }
    observe_milestones(job, ctx, plan, observed, decision, &old, now);
    Ok(())
}

fn observe_milestones(
    job: &TrainJob,
    ctx: &Context,
    plan: &Plan,
    observed: &[Pod],
    decision: &Decision,
    old: &TrainJobStatus,
    now: &Time,
) {
    let ns = job.namespace().unwrap_or_default();
    let ns = ns.as_str();
    let runtime = job.spec.runtime_ref.name.clone();
    let since_creation = || {
        job.metadata
            .creation_timestamp
            .as_ref()
            .map(|c| now.0.duration_since(c.0).as_secs_f64().max(0.0))
            .unwrap_or(0.0)
    };
    let first_run = decision.status.restarts.unwrap_or(0) == 0;
    let created_roles = |role: Role| {
        decision
            .create
            .iter()
            .filter(|(i, _)| plan.jobs[*i].role == role)
            .count()
    };
    if first_run && created_roles(Role::Launcher) > 0 {
        ctx.metrics.time_to_launcher_created.observe(since_creation());
    }
    if first_run && created_roles(Role::Node) > 0 {
        let workers = plan.job(Role::Node).map(|j| j.pods()).unwrap_or(0) as usize;
        let existing = observed
            .iter()
            .filter(|p| p.labels().get(names::JOB_ROLE_LABEL).map(String::as_str) == Some("node"))
            .count();
        if existing + created_roles(Role::Node) >= workers {
            ctx.metrics.time_to_pods_created.observe(since_creation());
        }
    }
    let became = |type_: &str| {
        let is = |s: &TrainJobStatus| {
            s.conditions
                .iter()
                .any(|c| c.type_ == type_ && c.status == "True")
        };
        is(&decision.status) && !is(old)
    };
    if became(conditions::COMPLETE) {
        ctx.metrics
            .jobs_completed
            .get_or_create(&JobLabels {
                namespace: ns.into(),
                runtime: runtime.clone(),
            })
            .inc();
        ctx.metrics.time_to_complete.observe(since_creation());
    }
    if became(conditions::FAILED) {
        let reason = decision
            .status
            .conditions
            .iter()
            .find(|c| c.type_ == conditions::FAILED)
            .map(|c| c.reason.clone())
            .unwrap_or_default();
        count_failure(ctx, ns, &runtime, &reason);
    }
}

fn count_failure(ctx: &Context, ns: &str, runtime: &str, reason: &str) {
    ctx.metrics
        .jobs_failed
        .get_or_create(&FailureLabels {
            namespace: ns.into(),
            runtime: runtime.into(),
            reason: reason.into(),
        })
        .inc();
}

async fn write_status(job: &TrainJob, ctx: &Context, status: &TrainJobStatus) -> Result<(), Error> {
    let api: Api<TrainJob> = Api::namespaced(ctx.client.clone(), &job.namespace().unwrap_or_default());
    let patch =
        json!({"apiVersion": TrainJob::api_version(&()), "kind": TrainJob::kind(&()), "status": status});
    api.patch_status(
        &job.name_any(),
        &PatchParams::apply(names::FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(kube_err("writing status"))?;
    Ok(())
}

/// Records an Event on the job and logs the same line, so operators see every phase change in
/// the operator's log too.
async fn record(ctx: &Context, job: &TrainJob, severity: Severity, reason: &str, message: &str) {
    let (ns, name) = (job.namespace().unwrap_or_default(), job.name_any());
    match severity {
        Severity::Normal => tracing::info!(namespace = %ns, job = %name, reason, "{message}"),
        Severity::Warning => tracing::warn!(namespace = %ns, job = %name, reason, "{message}"),
    }
    let event = Event {
        type_: match severity {
            Severity::Normal => EventType::Normal,
            Severity::Warning => EventType::Warning,
        },
        reason: reason.into(),
        // Event notes are capped at 1 KiB by the API server.
        note: Some(message.chars().take(1000).collect()),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &job.object_ref(&())).await {
        tracing::warn!(error = %e, reason, "could not record an Event");
    }
}
