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
    ConfigMap, Container, ContainerStatus, Namespace, Node, Pod, PodCondition, PodSpec, PodStatus,
    ResourceRequirements, Service, ServiceSpec, Volume,
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
    let (jobs, jobs_writer) = reflector::store();
    let index = pods.clone();
    let of_jobs = jobs.clone();
    let pod_events = watcher(Api::<Pod>::all(client.clone()), managed.clone())
        .default_backoff()
        .modify(trim_pod)
        // The index first: once `listed` says the pods have listed, a reconcile reads them.
        // Relist events always pass the filter, so `listed` sees the list's end.
        .try_filter(move |event| std::future::ready(index.apply(event)))
        .inspect_ok(listed.on_list("pods"))
        .touched_objects()
        .try_filter(move |pod| std::future::ready(wakes_job(&of_jobs, pod)));
    let pod_events = OwnTask::spawn(pod_events);
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
        .modify(trim_service)
        .reflect(writer)
        .inspect_ok(listed.on_list("services"))
        .touched_objects();
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
    .modify(TrainJob::drop_bookkeeping)
    .reflect(jobs_writer)
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

/// A stream driven on a task of its own, yielding what it yields; dropping it ends the task.
/// The pods' watch brings most of the operator's watch events. On the controller's task, which
/// also polls every reconcile, decoding, trimming and indexing them took turns with the
/// reconciles, one core at most for both: in a burst of 500 jobs the operator's CPU rose by a
/// third and every job came out Complete 20-30 s later once the index encoded pods too.
struct OwnTask<T> {
    items: tokio::sync::mpsc::Receiver<T>,
    task: tokio::task::AbortHandle,
}

impl<T: Send + 'static> OwnTask<T> {
    fn spawn(stream: impl futures::Stream<Item = T> + Send + 'static) -> Self {
        // Room enough to run ahead of a reconcile, little enough (these are pods) to hold no
        // second cache when the controller falls behind.
        let (tx, items) = tokio::sync::mpsc::channel(128);
        let task = tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(item) = stream.next().await {
                if tx.send(item).await.is_err() {
                    break;
                }
            }
        });
        OwnTask {
            items,
            task: task.abort_handle(),
        }
    }
}

impl<T> futures::Stream for OwnTask<T> {
    type Item = T;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<T>> {
        self.get_mut().items.poll_recv(cx)
    }
}

impl<T> Drop for OwnTask<T> {
    fn drop(&mut self) {
        self.task.abort();
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

/// Whether a pod's event can change a decision of its job: not when the pod is on its way out
/// of a job that has finished. Finishing deletes a job's workers, and each then brings two
/// events (its deletion, then its removal) that would each wake a reconcile with nothing to do:
/// the status already leaves out pods being deleted, and a pod left on a lost node is the
/// node's event to report. A job the cache does not show finished is woken as always.
fn wakes_job(jobs: &Store<TrainJob>, pod: &Pod) -> bool {
    if pod.metadata.deletion_timestamp.is_none() {
        return true;
    }
    let owner = pod
        .owner_references()
        .iter()
        .find(|o| o.controller == Some(true) && o.kind == "TrainJob");
    let Some(owner) = owner else { return true };
    let job = jobs.get(&ObjectRef::new(&owner.name).within(&pod.namespace().unwrap_or_default()));
    !job.is_some_and(|j| {
        j.metadata.uid.as_deref() == Some(owner.uid.as_str()) && lifecycle::finished(j.status.as_ref())
    })
}

/// What the pod cache keeps of a pod: what reconciles read (metadata but its annotations, the
/// node it is bound to, the status's phase, conditions and container states, and for the
/// messages that explain a pod: its containers' images and memory limits and its volume
/// claims). The rest, most of a pod's bytes, is the operator's own template and what the
/// kubelet reports for people (addresses, image digests, container IDs); a burst of thousands
/// of pods held whole took most of the operator's memory.
fn trim_pod(pod: &mut Pod) {
    pod.managed_fields_mut().clear();
    pod.metadata.annotations = None;
    if let Some(status) = pod.status.as_mut() {
        *status = trim_pod_status(std::mem::take(status));
    }
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
        // Marks a native gang's member, whose binding its job reads.
        scheduling_group: spec.scheduling_group.take(),
        containers: limits(std::mem::take(&mut spec.containers)),
        init_containers: spec.init_containers.take().map(limits).filter(|c| !c.is_empty()),
        volumes: (!claims.is_empty()).then_some(claims),
        ..Default::default()
    };
}

/// What the Service cache keeps of a Service: its metadata but annotations, and the parts of
/// its spec a reconcile compares with the desired one (see `desired::service_matches`); the
/// rest (ports, IP families, status) is the API server's defaulting, one copy per job.
fn trim_service(service: &mut Service) {
    service.managed_fields_mut().clear();
    service.metadata.annotations = None;
    service.status = None;
    if let Some(spec) = service.spec.take() {
        service.spec = Some(ServiceSpec {
            selector: spec.selector,
            publish_not_ready_addresses: spec.publish_not_ready_addresses,
            cluster_ip: spec.cluster_ip,
            ..Default::default()
        });
    }
}

/// A pod's status as decisions read it: phase, reason and message (eviction), each condition's
/// type, status, reason and message (scheduling, readiness), and each container's name, image,
/// readiness, restarts and states (exit codes, waiting reasons).
fn trim_pod_status(status: PodStatus) -> PodStatus {
    let containers = |statuses: Option<Vec<ContainerStatus>>| {
        statuses.map(|all| {
            all.into_iter()
                .map(|c| ContainerStatus {
                    name: c.name,
                    image: c.image,
                    ready: c.ready,
                    restart_count: c.restart_count,
                    state: c.state,
                    last_state: c.last_state,
                    ..Default::default()
                })
                .collect()
        })
    };
    PodStatus {
        phase: status.phase,
        reason: status.reason,
        message: status.message,
        conditions: status.conditions.map(|all| {
            all.into_iter()
                .map(|c| PodCondition {
                    type_: c.type_,
                    status: c.status,
                    reason: c.reason,
                    message: c.message,
                    ..Default::default()
                })
                .collect()
        }),
        container_statuses: containers(status.container_statuses),
        init_container_statuses: containers(status.init_container_statuses),
        ..Default::default()
    }
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

    #[tokio::test]
    async fn a_stream_on_its_own_task_yields_its_items_and_its_task_ends_when_it_is_dropped() {
        let (tx, rx) = tokio::sync::mpsc::channel::<u32>(4);
        let source = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|i| (i, rx)) });
        let mut own = OwnTask::spawn(source);
        for i in [1, 2] {
            tx.send(i).await.expect("the task reads");
        }
        assert_eq!(own.next().await, Some(1));
        assert_eq!(own.next().await, Some(2));
        drop(own);
        // The task held the source, and with it the receiving end.
        tokio::time::timeout(Duration::from_secs(30), tx.closed())
            .await
            .expect("the task ended with its stream");
    }

    #[test]
    fn only_a_finished_jobs_leaving_pods_wake_nothing() {
        let job = |name: &str, condition: &str| -> TrainJob {
            serde_json::from_value(json!({
                "apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob",
                "metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}")},
                "spec": {"runtimeRef": {"name": "mpi-openmpi"}},
                "status": {"conditions": [{"type": condition, "status": "True", "reason": "R", "message": "",
                                           "lastTransitionTime": "2026-12-04T10:00:00Z"}]},
            }))
            .expect("job")
        };
        let (jobs, mut writer) = reflector::store::<TrainJob>();
        writer.apply_watcher_event(&watcher::Event::Apply(job("done", "Complete")));
        writer.apply_watcher_event(&watcher::Event::Apply(job("running", "Suspended")));
        let pod = |job: &str, uid: &str, deleting: bool| -> Pod {
            let mut meta = json!({"name": format!("{job}-node-0-0"), "namespace": "ns",
                "ownerReferences": [{"apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob",
                                     "name": job, "uid": uid, "controller": true}]});
            if deleting {
                meta["deletionTimestamp"] = json!("2026-12-04T10:01:00Z");
            }
            serde_json::from_value(json!({"metadata": meta})).expect("pod")
        };
        assert!(!wakes_job(&jobs, &pod("done", "uid-done", true)));
        assert!(
            wakes_job(&jobs, &pod("done", "uid-done", false)),
            "still to be deleted"
        );
        assert!(
            wakes_job(&jobs, &pod("running", "uid-running", true)),
            "a restart waits for it"
        );
        assert!(
            wakes_job(&jobs, &pod("done", "uid-earlier", true)),
            "an earlier job of the name"
        );
        assert!(wakes_job(&jobs, &pod("unseen", "uid-unseen", true)));
    }

    #[test]
    fn a_trimmed_pod_keeps_what_decisions_read() {
        let mut pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "pi-node-0-0", "namespace": "ns", "labels": {"a": "b"},
                         "annotations": {"big": "x"}, "ownerReferences": [{"apiVersion": "v1",
                         "kind": "TrainJob", "name": "pi", "uid": "u", "controller": true}]},
            "spec": {"nodeName": "n1", "containers": [
                {"name": "node", "image": "mpi", "resources": {"limits": {"memory": "1Gi", "cpu": "1"}}}]},
            "status": {
                "phase": "Running", "reason": "Evicted", "message": "low on memory",
                "podIP": "10.0.0.1", "hostIP": "192.168.0.1", "qosClass": "Burstable",
                "startTime": "2026-12-04T10:00:00Z",
                "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                "message": "0/3 nodes", "lastTransitionTime": "2026-12-04T10:00:00Z"}],
                "containerStatuses": [{"name": "node", "image": "mpi", "imageID": "sha256:abc",
                    "containerID": "containerd://1", "ready": true, "restartCount": 2, "started": true,
                    "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off"}},
                    "lastState": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}],
            },
        }))
        .expect("pod");
        trim_pod(&mut pod);
        assert_eq!(pod.metadata.annotations, None);
        assert!(pod.metadata.owner_references.is_some() && pod.metadata.labels.is_some());
        let spec = pod.spec.as_ref().expect("spec");
        assert_eq!(spec.node_name.as_deref(), Some("n1"));
        let limits = spec.containers[0]
            .resources
            .as_ref()
            .and_then(|r| r.limits.as_ref());
        assert_eq!(limits.map(|l| l.len()), Some(1), "the memory limit alone");
        let status = pod.status.as_ref().expect("status");
        assert_eq!(
            (
                status.phase.as_deref(),
                status.reason.as_deref(),
                status.message.as_deref()
            ),
            (Some("Running"), Some("Evicted"), Some("low on memory"))
        );
        assert_eq!((status.pod_ip.as_ref(), status.start_time.as_ref()), (None, None));
        let c = &status.conditions.as_ref().expect("conditions")[0];
        assert_eq!(
            (
                c.type_.as_str(),
                c.status.as_str(),
                c.reason.as_deref(),
                c.message.as_deref()
            ),
            ("PodScheduled", "False", Some("Unschedulable"), Some("0/3 nodes"))
        );
        let c = &status.container_statuses.as_ref().expect("containers")[0];
        assert_eq!(
            (c.name.as_str(), c.image.as_str(), c.ready, c.restart_count),
            ("node", "mpi", true, 2)
        );
        assert_eq!(
            (c.image_id.as_str(), c.container_id.as_ref(), c.started),
            ("", None, None)
        );
        let waiting = c.state.as_ref().and_then(|s| s.waiting.as_ref());
        assert_eq!(
            waiting.and_then(|w| w.reason.as_deref()),
            Some("CrashLoopBackOff")
        );
        let last = c.last_state.as_ref().and_then(|s| s.terminated.as_ref());
        assert_eq!(last.map(|t| t.exit_code), Some(137));
    }

    #[test]
    fn a_cached_job_keeps_its_annotations_but_kubectls_copy_of_it() {
        let mut job: TrainJob = serde_json::from_value(json!({
            "apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob",
            "metadata": {"name": "pi", "namespace": "ns", "annotations": {
                names::LAST_APPLIED_ANNOTATION: "{\"spec\": {}}", "team": "vision"}},
            "spec": {"runtimeRef": {"name": "mpi-openmpi"}},
        }))
        .expect("job");
        job.drop_bookkeeping();
        let kept: Vec<&String> = job.annotations().keys().collect();
        assert_eq!(kept, ["team"]);
    }

    #[test]
    fn a_trimmed_service_as_the_api_server_returns_it_still_matches_the_desired_one() {
        let job = crate::fixtures::job(json!({"trainer": {"numNodes": 2}}));
        let desired = crate::desired::pods::service(&job, &crate::fixtures::plan(&job, "mpi-openmpi"));
        let mut served = serde_json::to_value(&desired).expect("encodes");
        served["metadata"]["annotations"] = json!({"note": "x"});
        let spec = &mut served["spec"];
        spec["ports"] = json!([{"name": "ssh", "port": 22, "protocol": "TCP", "targetPort": 22}]);
        spec["clusterIPs"] = json!(["None"]);
        spec["ipFamilies"] = json!(["IPv4"]);
        spec["sessionAffinity"] = json!("None");
        spec["type"] = json!("ClusterIP");
        served["status"] = json!({"loadBalancer": {}});
        let mut cached: Service = serde_json::from_value(served).expect("service");
        trim_service(&mut cached);
        assert!(crate::desired::service_matches(&cached, &desired));
        let spec = cached.spec.as_ref().expect("spec");
        assert_eq!((spec.ports.as_ref(), spec.cluster_ips.as_ref()), (None, None));
        assert_eq!(
            (cached.metadata.annotations.as_ref(), cached.status.as_ref()),
            (None, None)
        );
        assert!(cached.metadata.owner_references.is_some(), "the owner is checked");
    }

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
