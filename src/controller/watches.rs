//! The watches that feed the controller, and the controller itself: TrainJobs as the primary
//! watch; the pods, ConfigMaps and Services the operator labels, mapped to their owning job;
//! runtimes, mapped to the unfinished jobs that reference them; namespaces by metadata, to tell
//! one that is being deleted. Readiness comes from each stream's own first list (`listed`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::events::Recorder;
use futures::{FutureExt, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Namespace, Node, Pod, PodSpec, ResourceRequirements, Service, Volume,
};
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Config as ControllerConfig, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};

use super::apply::MAX_POD_WRITES;
use super::backoff::Backoff;
use super::index::JobPods;
use super::memory::Memory;
use super::{Context, Settings, error_policy, reconcile};
use crate::api::{ClusterTrainingRuntime, TrainJob, TrainingRuntime};
use crate::listed::Listed;
use crate::metrics::Metrics;
use crate::{lifecycle, names};

/// How long a shutdown waits for in-flight reconciles; below the pod's default 30 s grace period.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

/// Runs the controller until `shutdown` resolves, remembering what it learns of each job in
/// `memory` (one per process: a new leader is a new process, and starts empty). Sets `ready`
/// once every watch cache has listed: from then on a new job is reconciled at once, without
/// waiting for them.
pub async fn run(
    client: Client,
    settings: Settings,
    runtimes: crate::runtimes::Cache,
    metrics: Arc<Metrics>,
    memory: Arc<Memory>,
    ready: Arc<AtomicBool>,
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
    // Nodes by readiness only; one that stops being Ready wakes the jobs with pods on it (its
    // pods are marked not ready too, but the node's own watch may come later than theirs).
    let (nodes, writer) = reflector::store();
    let pods = Arc::new(JobPods::default());
    let on_node = pods.clone();
    let node_events = watcher(Api::<Node>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .modify(crate::nodes::trim)
        .reflect(writer)
        .applied_objects()
        .predicate_filter(
            |node: &Node| Some(u64::from(crate::nodes::not_ready(node).is_some())),
            Default::default(),
        )
        .try_filter(|node| std::future::ready(crate::nodes::not_ready(node).is_some()));
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
    let (jobs, writer) = reflector::store();
    let ctx = Arc::new(Context {
        recorder: Recorder::new(client.clone(), names::FIELD_MANAGER, &settings.instance),
        client: client.clone(),
        settings: settings.clone(),
        metrics,
        pods,
        configmaps,
        services,
        listed: listed.clone(),
        namespaces,
        nodes,
        backoff: Backoff::default(),
        in_flight: AtomicUsize::new(0),
        writes: tokio::sync::Semaphore::new(MAX_POD_WRITES),
        memory,
        runtimes,
    });
    let shutdown = shutdown.shared();

    // The jobs' own watch notes when each new job was first seen, and forgets the ones that go.
    let memory = ctx.memory.clone();
    let watched = jobs.clone();
    let job_events = watcher(
        Api::<TrainJob>::all(client.clone()),
        watcher::Config::default().any_semantic(),
    )
    .default_backoff()
    .modify(|j| j.managed_fields_mut().clear())
    .reflect(writer)
    .inspect_ok(listed.on_list("trainjobs"))
    .inspect_ok(move |event| match event {
        watcher::Event::Apply(job) | watcher::Event::InitApply(job) => memory.saw(job),
        // A job deleted without a finalizer is never reconciled again.
        watcher::Event::Delete(job) => memory.forget(job),
        // A watch that lists again after a gap delivers no delete events for what went in it.
        watcher::Event::InitDone => {
            let live: std::collections::HashSet<String> = watched
                .state()
                .iter()
                .filter_map(|j| j.metadata.uid.clone())
                .collect();
            memory.retain(|uid| live.contains(uid));
        }
        watcher::Event::Init => {}
    })
    .applied_objects()
    .predicate_filter(reconciled_part, Default::default());
    let controller = Controller::for_stream(job_events, jobs.clone());
    tokio::spawn(signal_ready(ctx.clone(), ready));
    let by_namespaced = jobs.clone();
    let reconciles = controller
        .owns_stream(pod_events)
        .owns_stream(configmap_events)
        .owns_stream(service_events)
        .watches_stream(node_events, move |node| {
            on_node
                .jobs_on(&node.name_any())
                .into_iter()
                .map(|(ns, job)| ObjectRef::new(&job).within(&ns))
        })
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
async fn signal_ready(ctx: Arc<Context>, ready: Arc<AtomicBool>) {
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
/// the status, and for the messages that explain a pod: its containers' memory limits and its
/// volume claims). The rest of the spec, most of a pod's bytes, is the operator's own template;
/// a burst of thousands of pods held whole took most of the operator's memory.
fn trim_pod(pod: &mut Pod) {
    pod.managed_fields_mut().clear();
    let Some(spec) = pod.spec.as_mut() else { return };
    // Only the containers with a memory limit, each with its name and that limit alone: a
    // `Container` is large even when empty, and a burst holds thousands of pods.
    let limits = |containers: Vec<Container>| -> Vec<Container> {
        containers
            .into_iter()
            .filter_map(|c| {
                let memory = c.resources?.limits?.remove_entry("memory")?;
                Some(Container {
                    name: c.name,
                    resources: Some(ResourceRequirements {
                        limits: Some([memory].into()),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
            })
            .collect()
    };
    let claims: Vec<Volume> = spec
        .volumes
        .take()
        .into_iter()
        .flatten()
        .filter(|v| v.persistent_volume_claim.is_some())
        .map(|v| Volume {
            name: v.name,
            persistent_volume_claim: v.persistent_volume_claim,
            ..Default::default()
        })
        .collect();
    *spec = PodSpec {
        node_name: spec.node_name.take(),
        containers: limits(std::mem::take(&mut spec.containers)),
        init_containers: spec.init_containers.take().map(limits).filter(|c| !c.is_empty()),
        volumes: (!claims.is_empty()).then_some(claims),
        ..Default::default()
    };
}

/// A hash of what reconciles read of a job: all of it but its `resourceVersion`, `managedFields`
/// and `status.trainerStatus`, the progress its pods report, which no decision reads. Training
/// code reporting every few seconds must not cost a reconcile each time.
fn reconciled_part(job: &TrainJob) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut job = job.clone();
    job.metadata.resource_version = None;
    job.metadata.managed_fields = None;
    if let Some(status) = job.status.as_mut() {
        status.trainer_status = None;
    }
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    serde_json::to_vec(&job).ok()?.hash(&mut hasher);
    Some(hasher.finish())
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
    use serde_json::json;

    use super::*;

    #[test]
    fn a_progress_report_alone_does_not_wake_a_reconcile() {
        let job = |rv: &str, progress: i32, condition: &str| -> TrainJob {
            serde_json::from_value(json!({
                "apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob",
                "metadata": {"name": "pi", "namespace": "ns", "resourceVersion": rv},
                "spec": {"runtimeRef": {"name": "mpi-openmpi"}},
                "status": {
                    "conditions": [{"type": condition, "status": "True", "reason": "R", "message": "",
                                    "lastTransitionTime": "2026-12-04T10:00:00Z"}],
                    "trainerStatus": {"progressPercentage": progress, "lastUpdatedTime": "2026-12-04T10:00:00Z"},
                },
            }))
            .expect("job")
        };
        let base = reconciled_part(&job("1", 10, "Suspended"));
        assert!(base.is_some());
        assert_eq!(reconciled_part(&job("2", 60, "Suspended")), base);
        assert_ne!(reconciled_part(&job("3", 60, "Complete")), base);
    }
}
