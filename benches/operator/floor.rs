//! The floor: the fastest plain client doing the API work of one job with no operator. It
//! creates exactly the objects the operator creates for the job (built by the operator's own
//! pure functions), each step's objects at once: the runtime snapshot, SSH Secret, hostfile,
//! Service and NetworkPolicy together; then every worker together; then, once its own watch
//! shows every worker Ready, the launcher (as the operator starts `mpirun` only then); and once
//! the launcher succeeded, one collection delete of the workers, which would otherwise run sshd
//! for ever (as the operator does, and upstream's JobSet). All of a run's requests share
//! [`IN_FLIGHT`] slots, as a client with that many requests in flight. No status, no Events, no
//! Secret deleted: the least any operator must send.
//!
//! With [`Floor::keeping_jobs`], a labelled extra: the same client also keeps the TrainJob as
//! the Kubeflow API asks of any implementation (the status a user and Kueue read, the job's
//! Events, no key left behind): three status writes (workers created, launcher created,
//! `Complete`), three Events and the Secret's deletion, the operator's count of each.

use std::sync::Arc;
use std::time::Instant;

use futures::future::join_all;
use k8s_openapi::api::core::v1::{ConfigMap, Event, EventSource, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::Semaphore;
use trainjob_operator::api::{JobStatus, LAUNCHER, NODE, TrainJob, TrainJobStatus, TrainingRuntimeSpec};
use trainjob_operator::desired::{hostfile, netpol, pods};
use trainjob_operator::names;
use trainjob_operator::plan::Cluster;
use trainjob_operator::resolve::{Runtime, resolve};
use trainjob_operator::ssh::{KeyAlgorithm, KeyPair};

use crate::watch::{Recorder, Seen};

/// Requests in flight at once: the floor's, and the TrainJob creates of a burst.
pub const IN_FLIGHT: usize = 32;

/// One run's plain client.
pub struct Floor {
    client: Client,
    runtime: TrainingRuntimeSpec,
    slots: Arc<Semaphore>,
    /// Also keeps each TrainJob (see the module documentation).
    keeps_jobs: bool,
}

impl Floor {
    /// A client acting as `client`, for jobs of `runtime`.
    pub fn new(client: Client, runtime: TrainingRuntimeSpec) -> Floor {
        Floor {
            client,
            runtime,
            slots: Arc::new(Semaphore::new(IN_FLIGHT)),
            keeps_jobs: false,
        }
    }

    /// The same client, also keeping each TrainJob, which must exist (see the module
    /// documentation).
    pub fn keeping_jobs(self) -> Floor {
        Floor {
            keeps_jobs: true,
            ..self
        }
    }

    /// Creates `job` as `admin` (the user) in one of the run's slots; returns it as created.
    pub async fn submit(&self, admin: &Client, job: &TrainJob) -> TrainJob {
        let _slot = self.slots.acquire().await.expect("slots");
        Api::<TrainJob>::namespaced(
            admin.clone(),
            job.metadata.namespace.as_deref().unwrap_or_default(),
        )
        .create(&PostParams::default(), job)
        .await
        .expect("floor creating a TrainJob")
    }

    /// Creates the objects of `job` (in its namespace), the launcher once `recorder` shows
    /// every worker Ready, and deletes the workers once it shows the launcher Succeeded; waits
    /// no longer than `deadline`.
    pub async fn run_job(&self, job: &TrainJob, recorder: &Recorder, deadline: Instant) {
        let cluster = Cluster {
            network_policies: true,
            ..Cluster::default()
        };
        let runtime = Runtime::new("ClusterTrainingRuntime/mpi-openmpi", self.runtime.clone());
        let plan = resolve(job, &runtime, &cluster).expect("plan");
        let ns = job.metadata.namespace.clone().unwrap_or_default();
        let name = job.metadata.name.clone().unwrap_or_default();
        let snapshot = ConfigMap {
            metadata: names::child_meta(job, &names::runtime_snapshot(&name)),
            data: Some(
                [(
                    "runtime".to_string(),
                    serde_json::to_string(&self.runtime).expect("runtime json"),
                )]
                .into(),
            ),
            ..Default::default()
        };
        let keys = KeyPair::generate(KeyAlgorithm::default(), &name).expect("key");
        futures::join!(
            self.create(&ns, snapshot),
            self.create::<Secret>(&ns, keys.secret(job).expect("secret")),
            self.create(&ns, hostfile::configmap(job, &plan)),
            self.create::<Service>(&ns, pods::service(job, &plan)),
            self.create::<NetworkPolicy>(&ns, netpol::network_policy(job, &plan)),
        );
        let (launcher, workers): (Vec<Pod>, Vec<Pod>) =
            pods::of_jobs(job, &plan, 0, |_| true).into_iter().partition(|p| {
                p.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(names::JOB_ROLE_LABEL))
                    .is_some_and(|r| r == LAUNCHER)
            });
        let count = workers.len();
        join_all(workers.into_iter().map(|pod| self.create(&ns, pod))).await;
        self.keep(job, count, 0, None, "PodsCreated").await;
        let ready = recorder.until(&name, |s: &Seen| s.workers_ready.len() >= count);
        if tokio::time::timeout_at(deadline.into(), ready).await.is_err() {
            return;
        }
        join_all(launcher.into_iter().map(|pod| self.create(&ns, pod))).await;
        self.keep(job, count, 1, None, "LauncherCreated").await;
        let succeeded = recorder.until(&name, |s: &Seen| s.launcher_succeeded.is_some());
        if tokio::time::timeout_at(deadline.into(), succeeded).await.is_err() {
            return;
        }
        if self.keeps_jobs {
            let secret = names::ssh_secret(&name);
            let _slot = self.slots.acquire().await.expect("slots");
            Api::<Secret>::namespaced(self.client.clone(), &ns)
                .delete(&secret, &DeleteParams::default())
                .await
                .expect("floor deleting the Secret");
        }
        self.keep(job, count, 1, Some("Complete"), "Completed").await;
        let _slot = self.slots.acquire().await.expect("slots");
        let workers = format!(
            "{}={name},{}={NODE}",
            names::TRAINJOB_NAME_LABEL,
            names::JOB_ROLE_LABEL
        );
        Api::<Pod>::namespaced(self.client.clone(), &ns)
            .delete_collection(
                &DeleteParams::background(),
                &ListParams::default().labels(&workers),
            )
            .await
            .expect("floor deleting the workers");
    }

    /// When keeping jobs: `job`'s status (`workers` and `launchers` active, or succeeded once
    /// `condition` is `Complete`) applied as the operator applies it, and an Event of `reason`.
    async fn keep(
        &self,
        job: &TrainJob,
        workers: usize,
        launchers: usize,
        condition: Option<&str>,
        reason: &str,
    ) {
        if !self.keeps_jobs {
            return;
        }
        let ns = job.metadata.namespace.clone().unwrap_or_default();
        let name = job.metadata.name.clone().unwrap_or_default();
        let now = Time(Timestamp::now());
        let done = condition.is_some();
        let counts = |replicated: &str, n: usize| {
            let n = i32::try_from(n).unwrap_or(i32::MAX);
            let (active, succeeded) = if done { (0, n) } else { (n, 0) };
            JobStatus {
                name: replicated.into(),
                active,
                ready: active,
                succeeded,
                ..JobStatus::default()
            }
        };
        let status = TrainJobStatus {
            conditions: condition
                .map(|c| Condition {
                    type_: c.into(),
                    status: "True".into(),
                    reason: "AllJobsCompleted".into(),
                    message: "every replicated job completed".into(),
                    last_transition_time: now.clone(),
                    observed_generation: None,
                })
                .into_iter()
                .collect(),
            jobs_status: vec![counts(LAUNCHER, launchers), counts(NODE, workers)],
            ..TrainJobStatus::default()
        };
        let status = serde_json::json!({
            "apiVersion": TrainJob::api_version(&()), "kind": TrainJob::kind(&()), "status": status,
        });
        let event = Event {
            metadata: kube::core::ObjectMeta {
                generate_name: Some(format!("{name}.")),
                ..Default::default()
            },
            involved_object: job.object_ref(&()),
            reason: Some(reason.into()),
            message: Some(format!("{reason}: {workers} workers, {launchers} launcher")),
            type_: Some("Normal".into()),
            count: Some(1),
            first_timestamp: Some(now.clone()),
            last_timestamp: Some(now),
            source: Some(EventSource {
                component: Some(names::FIELD_MANAGER.into()),
                host: None,
            }),
            reporting_component: Some(names::FIELD_MANAGER.into()),
            reporting_instance: Some("floor".into()),
            ..Default::default()
        };
        let status_write = async {
            let _slot = self.slots.acquire().await.expect("slots");
            Api::<TrainJob>::namespaced(self.client.clone(), &ns)
                .patch_status(
                    &name,
                    &PatchParams::apply(names::FIELD_MANAGER).force(),
                    &Patch::Apply(&status),
                )
                .await
                .expect("floor writing the status");
        };
        let event_write = async {
            let _slot = self.slots.acquire().await.expect("slots");
            Api::<Event>::namespaced(self.client.clone(), &ns)
                .create(&PostParams::default(), &event)
                .await
                .expect("floor creating an Event");
        };
        futures::join!(status_write, event_write);
    }

    /// Creates `object` in one of the run's slots. Without owner references unless keeping
    /// jobs: otherwise the TrainJob they name does not exist, and the garbage collector would
    /// delete the object.
    async fn create<K>(&self, ns: &str, mut object: K)
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + Serialize
            + DeserializeOwned
            + std::fmt::Debug,
    {
        let _slot = self.slots.acquire().await.expect("slots");
        if !self.keeps_jobs {
            object.meta_mut().owner_references = None;
        }
        Api::<K>::namespaced(self.client.clone(), ns)
            .create(&PostParams::default(), &object)
            .await
            .expect("floor create");
    }
}
