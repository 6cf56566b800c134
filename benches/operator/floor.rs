//! The floor: the fastest plain client doing the API work of one job with no operator. It
//! creates exactly the objects the operator creates for the job (built by the operator's own
//! pure functions), each step's objects at once: the runtime snapshot, SSH Secret, hostfile,
//! Service and NetworkPolicy together; then every worker together; then, once its own watch
//! shows every worker Ready, the launcher (as the operator starts `mpirun` only then); and once
//! the launcher succeeded, one collection delete of the workers, which would otherwise run sshd
//! for ever (as the operator does, and upstream's JobSet). All of a run's requests share
//! [`IN_FLIGHT`] slots, as a client with that many requests in flight. No status, no Events, no
//! Secret deleted: the least any operator must send.

use std::sync::Arc;
use std::time::Instant;

use futures::future::join_all;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::{Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::Semaphore;
use trainjob_operator::api::{NODE, TrainJob, TrainingRuntimeSpec};
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
}

impl Floor {
    /// A client acting as `client`, for jobs of `runtime`.
    pub fn new(client: Client, runtime: TrainingRuntimeSpec) -> Floor {
        Floor {
            client,
            runtime,
            slots: Arc::new(Semaphore::new(IN_FLIGHT)),
        }
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
                    .is_some_and(|r| r == "launcher")
            });
        let count = workers.len();
        join_all(workers.into_iter().map(|pod| self.create(&ns, pod))).await;
        let ready = recorder.until(&name, |s: &Seen| s.workers_ready.len() >= count);
        if tokio::time::timeout_at(deadline.into(), ready).await.is_err() {
            return;
        }
        join_all(launcher.into_iter().map(|pod| self.create(&ns, pod))).await;
        let succeeded = recorder.until(&name, |s: &Seen| s.launcher_succeeded.is_some());
        if tokio::time::timeout_at(deadline.into(), succeeded).await.is_err() {
            return;
        }
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

    /// Creates `object` in one of the run's slots, without owner references: the TrainJob they
    /// name does not exist, and the garbage collector would delete the object.
    async fn create<K>(&self, ns: &str, mut object: K)
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + Serialize
            + DeserializeOwned
            + std::fmt::Debug,
    {
        let _slot = self.slots.acquire().await.expect("slots");
        object.meta_mut().owner_references = None;
        Api::<K>::namespaced(self.client.clone(), ns)
            .create(&PostParams::default(), &object)
            .await
            .expect("floor create");
    }
}
