//! Stalled jobs that need a cluster to happen, on kwok nodes: pods the scheduler cannot place
//! (no gang) and pods waiting for a volume claim. The job says why with `Stalled`, an Event and a
//! metric, waits, and goes on by itself once capacity or the claim comes. And a node that stops
//! answering: its pods are lost, the gang restarts elsewhere, or the job fails naming the node. What the kubelet
//! reports (images, configuration, crash loops, OOM) is proven on the real node
//! (`tests/realnode_stalls.rs`).

use trainjob_testbed::support;

use std::time::Duration;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, PostParams};
use serde_json::json;
use support::jobs::{
    HOLD, create_job, pod_meta, pod_spec, pods_of, runtime, setup, wait_condition, wait_event, wait_pods,
    wait_stalled,
};
use support::{DEADLINE, eventually, operator};
use trainjob_operator::api::TrainJob;
use trainjob_testbed::FakeNode;

/// The job's `Stalled` condition once it has `status`, `reason` and `words` in its message.
async fn stalled(jobs: &Api<TrainJob>, name: &str, status: &str, reason: &str, words: &str) -> Condition {
    wait_stalled(jobs, name, (status, reason, words), DEADLINE).await
}

/// The shared operator's `trainjob_jobs_stalled_total` for `namespace` and `reason`.
fn stalled_count(namespace: &str, reason: &str) -> u64 {
    let text = operator().metrics.encode();
    let wanted = format!("trainjob_jobs_stalled_total{{namespace=\"{namespace}\",runtime=");
    text.lines()
        .filter(|l| l.starts_with(&wanted) && l.contains(&format!("reason=\"{reason}\"")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test]
async fn workers_nobody_can_place_wait_with_the_schedulers_reason_until_a_node_comes() {
    let (ns, c) = setup("nogpu").await;
    let ns = ns.name.as_str();
    // The bed's nodes have 8 GPUs each: 9 per worker fit nowhere.
    runtime(&c, ns, "mpi-openmpi", "openmpi", |_| {}).await;
    let jobs = create_job(
        &c,
        ns,
        "gpu",
        "openmpi",
        json!({"trainer": {"numNodes": 2, "resourcesPerNode": {"limits": {"nvidia.com/gpu": "9"}}}}),
    )
    .await;
    // Both workers, once the scheduler has tried both.
    let waiting = stalled(&jobs, "gpu", "True", "Unschedulable", "(1 more pod alike)").await;
    assert!(
        waiting
            .message
            .starts_with("worker pod gpu-node-0-0: cannot be scheduled: 0/")
            && waiting.message.contains("Insufficient nvidia.com/gpu")
            && waiting.message.contains("(1 more pod alike)")
            && waiting
                .message
                .ends_with("(spec.trainer.resourcesPerNode, the runtime's nodeSelector and tolerations)"),
        "{}",
        waiting.message
    );
    wait_event(&c, ns, "gpu", "Unschedulable", |r, n| {
        r == "Unschedulable"
            && n.starts_with("worker pod gpu-node-0-")
            && n.contains("Insufficient nvidia.com/gpu")
    })
    .await;
    assert_eq!(stalled_count(ns, "Unschedulable"), 1);
    let job = jobs.get("gpu").await.expect("job");
    assert!(
        !job.status
            .iter()
            .flat_map(|s| &s.conditions)
            .any(|c| c.type_ == "Failed"),
        "an unschedulable job waits"
    );

    // Capacity comes: a node with room for both workers.
    support::bed()
        .add_node(&FakeNode::new("kwok-node-gpus", 64, 18))
        .await
        .expect("adding a node");
    let recovered = stalled(&jobs, "gpu", "False", "Recovered", "").await;
    assert_eq!(recovered.message, "nothing holds the job's pods up any more");
    wait_event(&c, ns, "gpu", "Recovered", |r, _| r == "Recovered").await;
    wait_condition(&jobs, "gpu", "Complete").await;
    assert_eq!(stalled_count(ns, "Unschedulable"), 1, "counted once per stall");
}

#[tokio::test]
async fn workers_wait_for_their_volume_claim_until_it_is_bound() {
    let (ns, c) = setup("noclaim").await;
    let ns = ns.name.as_str();
    let claim = format!("data-{ns}");
    let claim_ref = claim.clone();
    runtime(&c, ns, "mpi-openmpi", "with-data", move |spec| {
        pod_spec(spec, "node")["volumes"] =
            json!([{"name": "data", "persistentVolumeClaim": {"claimName": claim_ref}}]);
    })
    .await;
    let jobs = create_job(&c, ns, "pi", "with-data", json!({})).await;
    // Both workers, once the scheduler has tried both: it may try either first.
    let waiting = stalled(&jobs, "pi", "True", "VolumeClaimNotBound", "(1 more pod alike)").await;
    assert!(
        waiting.message.starts_with(&format!(
            "worker pod pi-node-0-0: waits for its volume claim \"{claim}\" (not found): 0/"
        )) && waiting
            .message
            .contains(&format!("persistentvolumeclaim \"{claim}\" not found"))
            && waiting.message.contains("(1 more pod alike)")
            && waiting.message.ends_with(
                "create the PersistentVolumeClaim, or check that its StorageClass can provision it"
            ),
        "{}",
        waiting.message
    );
    wait_event(&c, ns, "pi", "VolumeClaimNotBound", |r, _| {
        r == "VolumeClaimNotBound"
    })
    .await;

    // The claim is created, and kube-controller-manager binds it to a volume made for it.
    let volume: PersistentVolume = serde_json::from_value(json!({
        "metadata": {"name": claim},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteMany"], "storageClassName": "manual",
            "hostPath": {"path": "/tmp/unused"}, "claimRef": {"namespace": ns, "name": claim}},
    }))
    .expect("volume");
    Api::<PersistentVolume>::all(c.clone())
        .create(&PostParams::default(), &volume)
        .await
        .expect("creating the volume");
    let pvc: PersistentVolumeClaim = serde_json::from_value(json!({
        "metadata": {"name": claim},
        "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "manual", "resources": {"requests": {"storage": "1Gi"}}},
    }))
    .expect("claim");
    Api::<PersistentVolumeClaim>::namespaced(c.clone(), ns)
        .create(&PostParams::default(), &pvc)
        .await
        .expect("creating the claim");
    stalled(&jobs, "pi", "False", "Recovered", "").await;
    wait_condition(&jobs, "pi", "Complete").await;
}

/// How long the node controller takes to call a node whose kubelet went silent lost: its
/// `--node-monitor-grace-period` (50 s) after the last heartbeat, with room for a loaded machine.
const NODE_LOSS: Duration = Duration::from_secs(180);

/// A kwok node in this test's own pool: labelled and tainted so that only pods that ask for the
/// pool (`pooled`) land on it, and no other test's pod is lost with it.
fn pool_node(name: &str, pool: &str) -> FakeNode {
    let mut node = FakeNode::new(name, 64, 0);
    node.labels.insert(POOL.into(), pool.into());
    node.taints = vec![json!({"key": POOL, "value": pool, "effect": "NoSchedule"})];
    node
}

const POOL: &str = "trainjob.test/pool";

/// Puts a runtime's pods in `pool`.
fn pooled(spec: &mut serde_json::Value, pool: &str) {
    for rjob in ["node", "launcher"] {
        let pod = pod_spec(spec, rjob);
        pod["nodeSelector"] = json!({POOL: pool});
        pod["tolerations"] =
            json!([{"key": POOL, "operator": "Equal", "value": pool, "effect": "NoSchedule"}]);
    }
}

#[tokio::test]
async fn a_lost_node_restarts_the_gang_at_once_or_fails_the_job_naming_it() {
    let (ns, c) = setup("lostnode").await;
    let ns = ns.name.as_str();
    let bed = support::bed();
    let doomed = format!("{ns}-a");
    bed.add_node(&pool_node(&doomed, ns))
        .await
        .expect("adding a node");
    for (name, restarts) in [("again", 1), ("once", 0)] {
        runtime(&c, ns, "mpi-openmpi", name, |spec| {
            pooled(spec, ns);
            pod_meta(spec, "launcher")["annotations"][HOLD] = json!("true");
            spec["template"]["spec"]["failurePolicy"] = json!({"maxRestarts": restarts});
        })
        .await;
    }
    let jobs = create_job(&c, ns, "again", "again", json!({})).await;
    create_job(&c, ns, "once", "once", json!({})).await;
    wait_pods(
        &c,
        ns,
        "again",
        &["again-launcher-0-0", "again-node-0-0", "again-node-0-1"],
    )
    .await;
    wait_pods(
        &c,
        ns,
        "once",
        &["once-launcher-0-0", "once-node-0-0", "once-node-0-1"],
    )
    .await;

    // The node goes silent, as one whose kubelet died.
    bed.silence_node(&doomed).await.expect("silencing the node");

    let failed = eventually("the job without restarts to fail", NODE_LOSS, || async {
        let job = jobs_api(&c, ns).get("once").await.map_err(|e| e.to_string())?;
        let conditions = job.status.map(|s| s.conditions).unwrap_or_default();
        conditions
            .into_iter()
            .find(|c| c.type_ == "Failed" && c.status == "True")
            .ok_or("not failed yet".to_string())
    })
    .await;
    assert_eq!(failed.reason, "FailedJobs");
    assert!(
        failed
            .message
            .contains(&format!(" lost its node {doomed} (NodeStatusUnknown: "))
            && failed.message.ends_with("; MPI cannot continue without it"),
        "{}",
        failed.message
    );
    let restart = wait_event(&c, ns, "again", "Restarting", |r, _| r == "Restarting").await;
    assert!(
        restart.iter().any(|(r, n)| r == "Restarting"
            && n.contains(&format!("lost its node {doomed}"))
            && n.ends_with("(restart 1 of 1)")),
        "{restart:?}"
    );
    // The lost pods go at once (no kubelet would confirm a graceful delete), and the next
    // attempt waits, unschedulable, for room in the pool, then runs there.
    let waiting = stalled(&jobs, "again", "True", "Unschedulable", "").await;
    assert!(
        waiting.message.contains("node(s) had untolerated taint"),
        "{}",
        waiting.message
    );
    eventually("the failed job's lost pods to be gone", DEADLINE, || async {
        match pods_of(&c, ns, "once").await.as_slice() {
            [] => Ok(()),
            pods => Err(format!("{} pods left", pods.len())),
        }
    })
    .await;
    bed.add_node(&pool_node(&format!("{ns}-b"), ns))
        .await
        .expect("adding a node");
    stalled(&jobs, "again", "False", "Recovered", "").await;
    let b = format!("{ns}-b");
    eventually("the next attempt to run on the new node", DEADLINE, || async {
        let pods = wait_pods(
            &c,
            ns,
            "again",
            &["again-launcher-0-0", "again-node-0-0", "again-node-0-1"],
        )
        .await;
        let placed: Vec<(Option<String>, Option<String>)> = pods
            .iter()
            .map(|p| {
                let attempt = p
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get("trainer.kubeflow.org/restart-attempt"));
                (
                    attempt.cloned(),
                    p.spec.as_ref().and_then(|s| s.node_name.clone()),
                )
            })
            .collect();
        match placed
            .iter()
            .all(|(a, n)| a.as_deref() == Some("1") && n.as_ref() == Some(&b))
        {
            true => Ok(()),
            false => Err(format!("{placed:?}")),
        }
    })
    .await;
}

fn jobs_api(c: &kube::Client, ns: &str) -> Api<TrainJob> {
    Api::namespaced(c.clone(), ns)
}
