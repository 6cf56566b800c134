//! Native gang scheduling with the real kube-scheduler on kwok nodes (its own control plane, so
//! that no other test takes capacity): a gang that fits is bound whole, one that does not fit has
//! no pod bound at all, and it binds whole once capacity frees up.

mod support;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::scheduling::v1alpha2::{PodGroup, Workload};
use kube::api::{Api, DeleteParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use support::jobs::{HOLD, create_job, pod_meta, pods_of, runtime, setup};
use support::{DEADLINE, eventually};
use trainjob_operator::api::TrainJob;

/// CPUs of one worker: a kwok node has 32, so each worker needs a node of its own.
const WORKER_CPUS: &str = "30";

/// The job's workers with the node each is bound to (None while unbound).
async fn workers(c: &Client, ns: &str, job: &str) -> Vec<(String, Option<String>)> {
    pods_of(c, ns, job)
        .await
        .into_iter()
        .filter(|p| p.name_any().contains("-node-") && p.metadata.deletion_timestamp.is_none())
        .map(|p| (p.name_any(), p.spec.and_then(|s| s.node_name)))
        .collect()
}

/// Waits until the job has `count` workers and every one is bound.
async fn all_bound(c: &Client, ns: &str, job: &str, count: usize) {
    eventually(
        &format!("all {count} workers of {job} bound"),
        DEADLINE,
        || async {
            let w = workers(c, ns, job).await;
            if w.len() == count && w.iter().all(|(_, node)| node.is_some()) {
                Ok(())
            } else {
                Err(format!("{w:?}"))
            }
        },
    )
    .await
}

#[tokio::test]
async fn a_gang_binds_whole_or_not_at_all() {
    let (ns, c) = setup("gang").await;
    let ns = ns.name.as_str();
    runtime(&c, ns, "mpi-openmpi", "gang", |spec| {
        spec["podGroupPolicy"] = json!({"workload": {}});
        // The launcher stays Running, so the first job keeps its nodes until it is deleted.
        pod_meta(spec, "launcher")["annotations"][HOLD] = json!("true");
    })
    .await;
    let trainer = |nodes: i32| json!({"trainer": {"numNodes": nodes, "resourcesPerNode": {"requests": {"cpu": WORKER_CPUS}}}});

    // Fits: three of the four nodes, bound together, through the job's own Workload and PodGroup.
    create_job(&c, ns, "first", "gang", trainer(3)).await;
    all_bound(&c, ns, "first", 3).await;
    let group = Api::<PodGroup>::namespaced(c.clone(), ns)
        .get("first")
        .await
        .expect("PodGroup");
    assert_eq!(
        group.spec.scheduling_policy.gang.map(|g| g.min_count),
        Some(3),
        "minCount is every worker"
    );
    let owner = group.metadata.owner_references.unwrap_or_default();
    assert_eq!(owner.first().map(|o| o.kind.as_str()), Some("TrainJob"));
    Api::<Workload>::namespaced(c.clone(), ns)
        .get("first")
        .await
        .expect("Workload");
    let pods: Api<Pod> = Api::namespaced(c.clone(), ns);
    let pod = pods.get("first-node-0-0").await.expect("worker");
    let group_name = pod
        .spec
        .and_then(|s| s.scheduling_group)
        .and_then(|g| g.pod_group_name);
    assert_eq!(group_name.as_deref(), Some("first"));

    // Does not fit: two workers, one free node. Not one of them is bound.
    create_job(&c, ns, "second", "gang", trainer(2)).await;
    let unschedulable = eventually("the second gang to be found unschedulable", DEADLINE, || async {
        let pods = pods_of(&c, ns, "second").await;
        let reasons: Vec<_> = pods
            .iter()
            .filter_map(|p| {
                let conditions = p.status.as_ref()?.conditions.as_ref()?;
                let scheduled = conditions.iter().find(|c| c.type_ == "PodScheduled")?;
                (scheduled.status == "False").then(|| scheduled.reason.clone().unwrap_or_default())
            })
            .collect();
        if reasons.len() == 2 {
            Ok(reasons)
        } else {
            Err(format!("{reasons:?}"))
        }
    })
    .await;
    assert_eq!(unschedulable, ["Unschedulable", "Unschedulable"]);
    let second = workers(&c, ns, "second").await;
    assert!(
        second.iter().all(|(_, node)| node.is_none()),
        "no partial gang: {second:?}"
    );

    // Capacity frees up: the whole second gang binds.
    Api::<TrainJob>::namespaced(c.clone(), ns)
        .delete("first", &DeleteParams::foreground())
        .await
        .expect("delete the first job");
    all_bound(&c, ns, "second", 2).await;
}
