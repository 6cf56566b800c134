//! Gang scheduling. Native: with the real kube-scheduler on kwok nodes (its own control plane, so
//! that no other test takes capacity), a gang that fits is bound whole, one that does not fit has
//! no pod bound at all, and it binds whole once capacity frees up. Coscheduling and Volcano: the
//! PodGroup is accepted by the scheduler's own CRD, with the values its scheduler reads.

use trainjob_testbed::support;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::scheduling::v1::PriorityClass;
use k8s_openapi::api::scheduling::v1alpha2::{PodGroup, Workload};
use kube::api::{Api, DeleteParams, DynamicObject, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use support::jobs::{
    HOLD, create_job, install_gang_crd, pod_meta, pod_spec, pods_of, runtime, setup, wait_condition,
};
use support::{DEADLINE, Identity, client, eventually};
use trainjob_operator::api::TrainJob;
use trainjob_operator::desired::gang::{
    COSCHEDULING_LABEL, Plugin, VOLCANO_GROUP_ANNOTATION, VOLCANO_QUEUE_ANNOTATION, VOLCANO_SCHEDULER,
};

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

/// Waits until the job's `count` workers exist and returns them.
async fn created_workers(c: &Client, ns: &str, job: &str, count: usize) -> Vec<Pod> {
    eventually(&format!("{count} workers of {job}"), DEADLINE, || async {
        let pods: Vec<Pod> = pods_of(c, ns, job)
            .await
            .into_iter()
            .filter(|p| p.name_any().contains("-node-"))
            .collect();
        if pods.len() == count {
            Ok(pods)
        } else {
            Err(format!("{}", pods.len()))
        }
    })
    .await
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
    // The job says so, in the scheduler's words.
    let jobs: Api<TrainJob> = Api::namespaced(c.clone(), ns);
    let waiting = gang_condition(&jobs, "second", "False", "Insufficient cpu").await;
    assert!(
        waiting.starts_with(
            "waiting for 2 node pods to be scheduled together, 0 scheduled: 0/4 nodes are available"
        ),
        "{waiting}"
    );
    // kube-scheduler's verdict on the PodGroup as a whole joins it.
    gang_condition(&jobs, "second", "False", "(PodGroup: Unschedulable)").await;

    // Capacity frees up: the whole second gang binds.
    jobs.delete("first", &DeleteParams::foreground())
        .await
        .expect("delete the first job");
    all_bound(&c, ns, "second", 2).await;
    // The first job's gang objects went with it.
    eventually(
        "the first job's Workload and PodGroup to be gone",
        DEADLINE,
        || async {
            let group = Api::<PodGroup>::namespaced(c.clone(), ns).get_opt("first").await;
            let workload = Api::<Workload>::namespaced(c.clone(), ns).get_opt("first").await;
            match (group, workload) {
                (Ok(None), Ok(None)) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    let scheduled = gang_condition(&jobs, "second", "True", "").await;
    assert_eq!(scheduled, "all 2 worker pods are scheduled");
}

/// Waits for the job's `GangScheduled` condition with `status` and a message containing `text`.
async fn gang_condition(jobs: &Api<TrainJob>, job: &str, status: &str, text: &str) -> String {
    eventually(&format!("GangScheduled={status} on {job}"), DEADLINE, || async {
        let j = jobs.get(job).await.map_err(|e| e.to_string())?;
        let conditions = j.status.map(|s| s.conditions).unwrap_or_default();
        conditions
            .iter()
            .find(|c| c.type_ == "GangScheduled" && c.status == status && c.message.contains(text))
            .map(|c| c.message.clone())
            .ok_or_else(|| format!("{conditions:?}"))
    })
    .await
}

#[tokio::test]
async fn a_gang_that_cannot_fit_fails_after_the_runtimes_timeout() {
    let (ns, c) = setup("timeout").await;
    let ns = ns.name.as_str();
    runtime(&c, ns, "mpi-openmpi", "impatient", |spec| {
        spec["podGroupPolicy"] = json!({"workload": {"scheduleTimeoutSeconds": 2}});
    })
    .await;
    // Five workers of 30 CPUs never fit on four 32-CPU nodes.
    let trainer = json!({"trainer": {"numNodes": 5, "resourcesPerNode": {"requests": {"cpu": WORKER_CPUS}}}});
    let jobs = create_job(&c, ns, "huge", "impatient", trainer).await;
    let (_, failed) = wait_condition(&jobs, "huge", "Failed").await;
    assert_eq!(failed.reason, "GangSchedulingTimeout");
    assert!(
        failed.message.starts_with(
            "the workers were not scheduled within 2s (podGroupPolicy.workload.scheduleTimeoutSeconds): waiting for 5 node pods to be scheduled together, 0 scheduled"
        ),
        "{}",
        failed.message
    );
    assert!(
        workers(&c, ns, "huge")
            .await
            .iter()
            .all(|(_, node)| node.is_none())
    );
}

#[tokio::test]
async fn coscheduling_pod_groups_are_accepted_by_the_scheduler_plugins_crd() {
    let (ns, c) = setup("cosched").await;
    let ns = ns.name.as_str();
    install_gang_crd(&client(Identity::Admin).await, Plugin::Coscheduling).await;
    runtime(&c, ns, "mpi-openmpi", "cosched", |spec| {
        spec["podGroupPolicy"] = json!({"coscheduling": {"scheduleTimeoutSeconds": 90}});
    })
    .await;
    // Small requests: the gang tests beside this one need 30 of each node's 32 CPUs.
    let requests = json!({"cpu": "100m", "memory": "64Mi"});
    let trainer = json!({"trainer": {"numNodes": 3, "resourcesPerNode": {"requests": requests}}});
    let jobs = create_job(&c, ns, "pi", "cosched", trainer).await;

    let groups: Api<DynamicObject> = Api::namespaced_with(c.clone(), ns, &Plugin::Coscheduling.api());
    let group = eventually("the coscheduling PodGroup", DEADLINE, || async {
        groups.get("pi").await.map_err(|e| e.to_string())
    })
    .await;
    assert_eq!(
        group.data["spec"],
        json!({"minMember": 3, "minResources": {"cpu": "300m", "memory": "201326592"}, "scheduleTimeoutSeconds": 90}),
        "every worker, their requests together, the runtime's timeout"
    );
    let owner = group.metadata.owner_references.unwrap_or_default();
    assert_eq!(
        owner.first().map(|o| (o.kind.as_str(), o.name.as_str())),
        Some(("TrainJob", "pi"))
    );
    // The PodGroup comes before the first worker, so the workers may not all exist yet.
    let pods = created_workers(&c, ns, "pi", 3).await;
    let labelled: Vec<_> = pods
        .iter()
        .filter(|p| p.labels().get(COSCHEDULING_LABEL).map(String::as_str) == Some("pi"))
        .map(|p| p.name_any())
        .collect();
    assert_eq!(labelled, ["pi-node-0-0", "pi-node-0-1", "pi-node-0-2"]);
    // No coscheduling scheduler runs here: the default scheduler places the pods and the job
    // completes, which shows the PodGroup changed nothing else.
    let (_, complete) = wait_condition(&jobs, "pi", "Complete").await;
    assert_eq!(complete.reason, "AllJobsCompleted");
}

#[tokio::test]
async fn volcano_pod_groups_are_accepted_by_volcanos_crd() {
    let (ns, c) = setup("volcano").await;
    let ns = ns.name.as_str();
    install_gang_crd(&client(Identity::Admin).await, Plugin::Volcano).await;
    // The pods' priority class reaches the pods (the API server resolves it) and the PodGroup.
    let class = format!("{ns}-training");
    let priority: PriorityClass =
        serde_json::from_value(json!({"metadata": {"name": class}, "value": 1000})).expect("PriorityClass");
    Api::<PriorityClass>::all(c.clone())
        .create(&PostParams::default(), &priority)
        .await
        .expect("create PriorityClass");
    runtime(&c, ns, "mpi-openmpi", "volcano", |spec| {
        spec["podGroupPolicy"] =
            json!({"volcano": {"networkTopology": {"mode": "hard", "highestTierAllowed": 2}}});
        spec["template"]["metadata"] = json!({"annotations": {VOLCANO_QUEUE_ANNOTATION: "research"}});
        for rjob in ["node", "launcher"] {
            pod_spec(spec, rjob)["priorityClassName"] = json!(class);
        }
    })
    .await;
    let requests = json!({"cpu": "100m", "memory": "64Mi"});
    let trainer = json!({"trainer": {"numNodes": 2, "resourcesPerNode": {"requests": requests}}});
    create_job(&c, ns, "pi", "volcano", trainer).await;

    let groups: Api<DynamicObject> = Api::namespaced_with(c.clone(), ns, &Plugin::Volcano.api());
    let group = eventually("the Volcano PodGroup", DEADLINE, || async {
        groups.get("pi").await.map_err(|e| e.to_string())
    })
    .await;
    assert_eq!(
        group.data["spec"],
        json!({
            "minMember": 2, "minResources": {"cpu": "200m", "memory": "134217728"}, "queue": "research",
            "priorityClassName": class, "networkTopology": {"mode": "hard", "highestTierAllowed": 2},
        }),
        "every worker, their requests together, the runtime's queue, priority class and topology"
    );
    let owner = group.metadata.owner_references.unwrap_or_default();
    assert_eq!(
        owner.first().map(|o| (o.kind.as_str(), o.name.as_str())),
        Some(("TrainJob", "pi"))
    );
    for pod in &created_workers(&c, ns, "pi", 2).await {
        assert_eq!(
            pod.annotations()
                .get(VOLCANO_GROUP_ANNOTATION)
                .map(String::as_str),
            Some("pi"),
            "{}",
            pod.name_any()
        );
        // Left to Volcano, which does not run here: no other scheduler binds them.
        let spec = pod.spec.as_ref().expect("spec");
        assert_eq!(spec.scheduler_name.as_deref(), Some(VOLCANO_SCHEDULER));
        assert_eq!(spec.priority_class_name.as_deref(), Some(class.as_str()));
        assert_eq!(
            spec.priority,
            Some(1000),
            "resolved by the API server's Priority admission"
        );
        assert_eq!(spec.node_name, None);
    }
}

#[tokio::test]
async fn a_launcher_that_runs_ranks_is_bound_with_its_workers_or_not_at_all() {
    let (ns, c) = setup("launcher-gang").await;
    let ns = ns.name.as_str();
    runtime(&c, ns, "mpi-openmpi", "ranks", |spec| {
        spec["mlPolicy"]["mpi"]["runLauncherAsNode"] = json!(true);
        spec["podGroupPolicy"] = json!({"workload": {}});
        pod_meta(spec, "launcher")["annotations"][HOLD] = json!("true");
    })
    .await;
    // Every MPI host, the launcher included, takes all 8 GPUs of a node; little CPU, so the CPU
    // gangs of the tests beside this one still fit next to them.
    let trainer = |nodes: i32| {
        let gpus = json!({"cpu": "100m", "nvidia.com/gpu": "8"});
        json!({"trainer": {"numNodes": nodes, "resourcesPerNode": {"requests": gpus, "limits": gpus}}})
    };
    let jobs: Api<TrainJob> = Api::namespaced(c.clone(), ns);
    let bound = |job: &'static str| {
        let c = c.clone();
        async move {
            pods_of(&c, ns, job)
                .await
                .into_iter()
                .map(|p| (p.name_any(), p.spec.and_then(|s| s.node_name)))
                .collect::<Vec<_>>()
        }
    };

    // Five hosts on four nodes: not one pod is bound, the launcher neither, and the job says so.
    create_job(&c, ns, "big", "ranks", trainer(5)).await;
    let waiting = gang_condition(&jobs, "big", "False", "Insufficient nvidia.com/gpu").await;
    assert!(
        waiting.starts_with(
            "waiting for 4 node pods and 1 launcher pod to be scheduled together, 0 scheduled (node 0, launcher 0): "
        ),
        "{waiting}"
    );
    let big = bound("big").await;
    assert_eq!(big.len(), 5, "the launcher is created with the workers: {big:?}");
    assert!(
        big.iter().all(|(_, node)| node.is_none()),
        "no partial gang: {big:?}"
    );
    jobs.delete("big", &DeleteParams::foreground())
        .await
        .expect("delete");

    // Four hosts: all bound together, the launcher on a node of its own.
    create_job(&c, ns, "fits", "ranks", trainer(4)).await;
    gang_condition(
        &jobs,
        "fits",
        "True",
        "all 3 node pods and 1 launcher pod are scheduled",
    )
    .await;
    let fits = bound("fits").await;
    assert_eq!(fits.len(), 4, "{fits:?}");
    assert!(fits.iter().all(|(_, node)| node.is_some()), "{fits:?}");
}
