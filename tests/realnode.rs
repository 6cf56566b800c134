//! MPI for real: the operator's Secret, hostfile, Service and environment drive a real `mpirun`
//! across real pods on a real kubelet node (containerd, CNI bridge, CoreDNS; `hack/node.sh`),
//! with images built from Debian packages (`hack/images.sh`).

mod support;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, LogParams, PostParams};
use serde_json::json;
use support::jobs::wait_condition;
use support::{TestNs, client, operator, real_bed};
use trainjob_operator::api::TrainJob;
use trainjob_testbed::REAL_NODE;

/// Open MPI 4 from Debian, laid out like the image the shipped runtime names (`hack/images`).
const OPENMPI4: &str = "trainjob.local/openmpi4:bed";

/// A TrainJob on a shipped ClusterTrainingRuntime as written, sent to the real node the way
/// Kueue would: `runtimePatches` with a node selector and a toleration.
fn on_real_node(name: &str, ns: &str, runtime: &str, trainer: serde_json::Value) -> TrainJob {
    let pod = json!({"spec": {
        "nodeSelector": {REAL_NODE: "true"},
        "tolerations": [{"key": REAL_NODE, "operator": "Exists", "effect": "NoSchedule"}],
    }});
    let patch = |rjob: &str| json!({"name": rjob, "template": {"spec": {"template": pod}}});
    serde_json::from_value(json!({
        "apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "runtimeRef": {"name": runtime},
            "trainer": trainer,
            "runtimePatches": [{"manager": "trainjob.test/real-node", "trainingRuntimeSpec": {"template": {"spec": {
                "replicatedJobs": [patch("node"), patch("launcher")],
            }}}}],
        },
    }))
    .expect("job")
}

#[tokio::test]
async fn open_mpi_runs_across_real_pods_on_the_shipped_runtime() {
    real_bed();
    operator();
    let ns = TestNs::new("mpi").await;
    let c = client(support::Identity::Admin).await;
    let jobs: Api<TrainJob> = Api::namespaced(c.clone(), &ns.name);
    let trainer = json!({"image": OPENMPI4, "numNodes": 2, "numProcPerNode": 2,
        "command": ["mpirun", "/home/mpiuser/pi"]});
    jobs.create(
        &PostParams::default(),
        &on_real_node("pi", &ns.name, "mpi-openmpi", trainer),
    )
    .await
    .expect("create");
    let (_, complete) = wait_condition(&jobs, "pi", "Complete").await;
    assert_eq!(complete.reason, "AllJobsCompleted");

    // What the SDK does: the launcher's log through the API server and the kubelet.
    let pods: Api<Pod> = Api::namespaced(c.clone(), &ns.name);
    let log = pods
        .logs(
            "pi-launcher-0-0",
            &LogParams {
                container: Some("node".into()),
                ..Default::default()
            },
        )
        .await
        .expect("kubectl logs of the launcher");
    let hostfile = Api::<ConfigMap>::namespaced(c.clone(), &ns.name)
        .get("pi-mpi-hostfile")
        .await
        .expect("hostfile")
        .data
        .and_then(|mut d| d.remove("hostfile"))
        .unwrap_or_default();
    // Open MPI fills each host's slots in hostfile order: ranks 0-1 on the first, 2-3 on the second.
    let hosts: Vec<&str> = hostfile
        .lines()
        .filter_map(|l| l.split(['.', ' ']).next())
        .collect();
    assert_eq!(hosts, ["pi-node-0-0", "pi-node-0-1"], "{hostfile}");
    let ranks: BTreeMap<u32, String> = log
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("rank ")?;
            let (rank, rest) = rest.split_once(" of 4 on ")?;
            Some((rank.parse().ok()?, rest.trim().to_string()))
        })
        .collect();
    let expected: BTreeMap<u32, String> = (0..4).map(|r| (r, hosts[(r / 2) as usize].to_string())).collect();
    assert_eq!(
        ranks, expected,
        "every rank on the host the hostfile gave it:\n{log}"
    );
    assert!(
        log.contains("pi is approximately 3.14159265 from 4 ranks"),
        "the allreduce over every rank:\n{log}"
    );
}
