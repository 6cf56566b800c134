//! The floor: a plain client doing the API work of one job with no operator. It creates, one
//! after another, exactly the objects the operator creates for the job (built by the operator's
//! own pure functions): the runtime snapshot, SSH Secret, hostfile, Service, NetworkPolicy,
//! worker pods and launcher. No status, no Events, no cleanup: the least any operator must send.

use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, PostParams};
use kube::{Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use trainjob_operator::api::{TrainJob, TrainingRuntimeSpec};
use trainjob_operator::desired::{hostfile, netpol, pods};
use trainjob_operator::names;
use trainjob_operator::plan::Cluster;
use trainjob_operator::resolve::{Runtime, resolve};
use trainjob_operator::ssh::{KeyAlgorithm, KeyPair};

/// Creates the objects of `job` (in its namespace) as `client`, in the operator's order.
pub async fn create_job(client: &Client, job: &TrainJob, runtime: &TrainingRuntimeSpec) {
    let cluster = Cluster {
        network_policies: true,
        ..Cluster::default()
    };
    let runtime_ref = Runtime::new("ClusterTrainingRuntime/mpi-openmpi", runtime.clone());
    let plan = resolve(job, &runtime_ref, &cluster).expect("plan");
    let ns = job.metadata.namespace.clone().unwrap_or_default();
    let name = job.metadata.name.clone().unwrap_or_default();
    let snapshot = ConfigMap {
        metadata: names::child_meta(job, &names::runtime_snapshot(&name)),
        data: Some(
            [(
                "runtime".to_string(),
                serde_json::to_string(runtime).expect("runtime json"),
            )]
            .into(),
        ),
        ..Default::default()
    };
    create(client, &ns, snapshot).await;
    let keys = KeyPair::generate(KeyAlgorithm::default(), &name).expect("key");
    create::<Secret>(client, &ns, keys.secret(job).expect("secret")).await;
    create(client, &ns, hostfile::configmap(job, &plan)).await;
    create::<Service>(client, &ns, pods::service(job, &plan)).await;
    create::<NetworkPolicy>(client, &ns, netpol::network_policy(job, &plan)).await;
    // Workers first, then the launcher, as the operator orders them.
    let mut all: Vec<Pod> = pods::of_jobs(job, &plan, 0, |_| true);
    all.sort_by_key(|p| {
        p.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(names::JOB_ROLE_LABEL))
            .is_some_and(|r| r == "launcher")
    });
    for pod in all {
        create(client, &ns, pod).await;
    }
}

/// Creates `object` without owner references: the TrainJob they name does not exist, and the
/// garbage collector would delete the object.
async fn create<K>(client: &Client, ns: &str, mut object: K)
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Serialize
        + DeserializeOwned
        + std::fmt::Debug,
{
    object.meta_mut().owner_references = None;
    Api::<K>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &object)
        .await
        .expect("floor create");
}
