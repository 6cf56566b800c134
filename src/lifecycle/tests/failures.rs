//! Failures: restart the whole gang within `maxRestarts`, else fail naming the pod, the
//! container, the exit code and what to do; lost pods and deadlines break the world too.

use std::time::Duration;

use serde_json::json;

use super::*;

#[test]
fn launcher_failure_fails_the_job_with_exit_code_and_hint() {
    let (j, p, mut pods) = started(json!({"trainer": {"numNodes": 4}}));
    terminate(&mut pods, "pi-launcher-0-0", 3, "Error");
    let d = decide(&j, &p, &pods, &at(T0));
    let failed = condition(&d, condition::FAILED).expect("Failed");
    assert_eq!(failed.reason, "FailedJobs");
    assert_eq!(
        failed.message,
        "pod pi-launcher-0-0 failed: container node exited with code 3 (Error); see `kubectl logs pi-launcher-0-0 -c node`"
    );
    assert_eq!(d.delete.len(), 4, "the running workers go");
    assert_eq!(d.status.jobs_status[1].failed, 1);
    assert!(
        notes(&j, &p, &d)
            .iter()
            .any(|n| n.severity == Severity::Warning && n.reason == "FailedJobs")
    );
}

#[test]
fn launcher_failure_names_the_cause_its_log_shows() {
    let (j, p, mut pods) = started(json!({"trainer": {"numNodes": 2}}));
    terminate(&mut pods, "pi-launcher-0-0", 255, "Error");
    let log = "ssh: Could not resolve hostname pi-node-0-1.pi: Name or service not known\n";
    let d = decide_observed(
        &j,
        &p,
        &Observed {
            failed_log: Some(("pi-launcher-0-0".into(), log.into())),
            ..seeing(&pods)
        },
        &at(T0),
    );
    let failed = condition(&d, condition::FAILED).expect("Failed");
    assert!(
        failed
            .message
            .starts_with("pod pi-launcher-0-0 failed: container node exited with code 255 (Error); a host name did not resolve (DNS): "),
        "{}",
        failed.message
    );
    // A worker's failure is not explained by the launcher's log.
    let (j, p, mut pods) = started(json!({"trainer": {"numNodes": 2}}));
    terminate(&mut pods, "pi-node-0-0", 1, "Error");
    let d = decide_observed(
        &j,
        &p,
        &Observed {
            failed_log: Some(("pi-launcher-0-0".into(), log.into())),
            ..seeing(&pods)
        },
        &at(T0),
    );
    let failed = condition(&d, condition::FAILED).expect("Failed");
    assert!(
        failed.message.ends_with("see `kubectl logs pi-node-0-0 -c node`"),
        "{}",
        failed.message
    );
}

/// A replica whose copy of the job predates a gang restart sees the next attempt's pods: it must
/// leave them alone (not delete them as an earlier attempt's) and write nothing.
#[test]
fn pods_of_a_later_attempt_than_the_status_wait_for_the_newer_status() {
    let j = job(json!({"trainer": {"numNodes": 2}}));
    let mut p = plan(&j, "mpi-openmpi");
    p.max_restarts = 1;
    let d = decide(&j, &p, &[], &at(T0));
    let stale = with_status(j.clone(), &d);
    let mut newer = d.status.clone();
    newer.restarts = Some(1);
    let fresh = with_status(
        j,
        &Decision {
            status: newer,
            ..Decision::default()
        },
    );
    let d = decide(&fresh, &p, &[], &at(T0));
    let pods: Vec<Pod> = created(&fresh, &p, &d)
        .iter()
        .map(|pod| observed_pod(pod, "Running", true))
        .collect();

    let d = decide(&stale, &p, &pods, &at(T0));
    assert!(d.delete.is_empty(), "{:?}", d.delete);
    assert!(d.create.is_empty());
    assert_eq!(Some(&d.status), stale.status.as_ref(), "nothing to write");
    assert!(d.requeue_after.is_some());
}

#[test]
fn worker_failure_restarts_the_whole_gang_within_max_restarts() {
    let j = job(json!({"trainer": {"numNodes": 2}}));
    let mut p = plan(&j, "mpi-openmpi");
    p.max_restarts = 1;
    let d = decide(&j, &p, &[], &at(T0));
    let mut pods = created(&j, &p, &d);
    let j = with_status(j, &d);
    terminate(&mut pods, "pi-node-0-1", 137, "OOMKilled");

    let d = decide(&j, &p, &pods, &at(T0));
    assert_eq!(d.status.restarts, Some(1));
    assert_eq!(d.delete, ["pi-node-0-0", "pi-node-0-1"]);
    assert!(
        d.create.is_empty(),
        "same names: wait until the old pods are gone"
    );
    assert_eq!(notes(&j, &p, &d)[0].reason, "Restarting");
    assert!(
        notes(&j, &p, &d)[0].message.contains("restart 1 of 1"),
        "{}",
        notes(&j, &p, &d)[0].message
    );
    assert!(condition(&d, condition::FAILED).is_none());

    // Old pods still terminating: counted neither as failures nor as active.
    let j = with_status(j, &d);
    for pod in &mut pods {
        pod.metadata.deletion_timestamp = Some(at(T0));
    }
    let d = decide(&j, &p, &pods, &at(T0));
    assert!(d.create.is_empty() && condition(&d, condition::FAILED).is_none());
    assert_eq!(d.status.jobs_status[0].active, 0);

    // Gone: recreated with the same names under attempt 1.
    let d = decide(&j, &p, &[], &at(T0));
    assert_eq!(names(&d), ["0/0-0", "0/0-1"]);
    let fresh = created(&j, &p, &d);
    assert_eq!(
        fresh[0]
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("trainer.kubeflow.org/restart-attempt"))
            .map(String::as_str),
        Some("1")
    );

    // A second failure exceeds maxRestarts 1.
    let mut pods = fresh;
    terminate(&mut pods, "pi-node-0-0", 1, "Error");
    let d = decide(&j, &p, &pods, &at(T0));
    let failed = condition(&d, condition::FAILED).expect("Failed");
    assert_eq!(failed.reason, "ReachedMaxRestarts");
    assert!(
        failed
            .message
            .starts_with("pod pi-node-0-0 failed: container node exited with code 1"),
        "{}",
        failed.message
    );
    assert!(
        failed.message.contains("all 1 allowed restarts are used"),
        "{}",
        failed.message
    );
}

#[test]
fn failure_messages_name_oom_and_eviction() {
    let (j, p, mut pods) =
        started(json!({"trainer": {"numNodes": 4, "resourcesPerNode": {"limits": {"memory": "64Mi"}}}}));
    terminate(&mut pods, "pi-node-0-2", 137, "OOMKilled");
    let d = decide(&j, &p, &pods, &at(T0));
    let msg = &condition(&d, condition::FAILED).expect("Failed").message;
    assert_eq!(
        msg,
        "pod pi-node-0-2 failed: container node exited with code 137 (OOMKilled); it ran out of memory at its limit of 64Mi: raise the memory limit (spec.trainer.resourcesPerNode, or the runtime's)"
    );
    // The launcher is no MPI host: its resources are the runtime's.
    let (j, p, mut pods) = started(json!({"trainer": {"numNodes": 2}}));
    terminate(&mut pods, "pi-launcher-0-0", 137, "OOMKilled");
    let d = decide(&j, &p, &pods, &at(T0));
    let msg = &condition(&d, condition::FAILED).expect("Failed").message;
    assert!(
        msg.ends_with("raise the memory limit (in the runtime's pod template, or with a runtimePatch)"),
        "{msg}"
    );

    let (j, p, mut pods) = started(json!({"trainer": {"numNodes": 4}}));
    let victim = pods
        .iter_mut()
        .find(|p| p.metadata.name.as_deref() == Some("pi-node-0-1"))
        .expect("pod");
    victim.status = Some(serde_json::from_value(json!({"phase": "Failed", "reason": "Evicted", "message": "The node was low on resource: memory."})).expect("status"));
    let d = decide(&j, &p, &pods, &at(T0));
    let msg = &condition(&d, condition::FAILED).expect("Failed").message;
    assert_eq!(
        msg,
        "pod pi-node-0-1 was evicted: The node was low on resource: memory."
    );
}

#[test]
fn a_worker_deleted_by_someone_else_breaks_the_world() {
    let (j, p, mut pods) = started(json!({"trainer": {"numNodes": 4}}));
    pods[0].metadata.deletion_timestamp = Some(at(T0));
    let d = decide(&j, &p, &pods, &at(T0));
    let msg = &condition(&d, condition::FAILED).expect("Failed").message;
    assert!(
        msg.contains("pod pi-node-0-0 was deleted while the job ran"),
        "{msg}"
    );
}

#[test]
fn active_deadline_fails_the_job_and_requeues_before_it() {
    let j = job(json!({"activeDeadlineSeconds": 60}));
    let p = plan(&j, "mpi-openmpi");
    let d = decide(&j, &p, &[], &at("2026-11-25T10:00:20Z"));
    assert_eq!(d.requeue_after, Some(Duration::from_secs(40)));
    let (j, p, pods) = started(json!({"activeDeadlineSeconds": 60}));
    let d = decide(&j, &p, &pods, &at("2026-11-25T10:01:01Z"));
    let failed = condition(&d, condition::FAILED).expect("Failed");
    assert_eq!(failed.reason, "DeadlineExceeded");
    assert!(
        failed
            .message
            .starts_with("TrainJob exceeded its active deadline"),
        "{}",
        failed.message
    );
    assert_eq!(d.delete.len(), 3, "every running pod is stopped");
}

#[test]
fn a_worker_that_vanished_after_the_launcher_started_breaks_the_world() {
    let (j, p, mut pods) = started(json!({"trainer": {"numNodes": 4}}));
    pods.retain(|p| p.metadata.name.as_deref() != Some("pi-node-0-2"));
    let d = decide(&j, &p, &pods, &at(T0));
    let msg = &condition(&d, condition::FAILED).expect("Failed").message;
    assert!(
        msg.contains("pod pi-node-0-2 disappeared while the job ran"),
        "{msg}"
    );
    assert!(d.create.is_empty(), "a lost rank is not silently replaced");
}

#[test]
fn a_failed_init_container_is_named() {
    let (j, p, mut pods) = started(json!({"trainer": {"numNodes": 2}}));
    let pod = pods
        .iter_mut()
        .find(|p| p.metadata.name.as_deref() == Some("pi-node-0-1"))
        .expect("pod");
    pod.status = Some(
        serde_json::from_value(json!({"phase": "Failed",
            "initContainerStatuses": [{"name": "fetch", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": 7, "reason": "Error"}}}],
            "containerStatuses": [{"name": "node", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"waiting": {"reason": "PodInitializing"}}}]}))
        .expect("status"),
    );
    let d = decide(&j, &p, &pods, &at(T0));
    assert_eq!(
        condition(&d, condition::FAILED).expect("Failed").message,
        "pod pi-node-0-1 failed: init container fetch exited with code 7 (Error); see `kubectl logs pi-node-0-1 -c fetch`"
    );
}

/// A node that stops being Ready takes its pods with it: the gang restarts at once (as for an
/// eviction) and the lost pod, even one already being deleted, is deleted again so that it goes.
#[test]
fn a_pod_on_a_lost_node_restarts_the_gang_naming_the_node() {
    let (j, mut p, mut pods) = started(json!({"trainer": {"numNodes": 2}}));
    p.max_restarts = 1;
    for pod in &mut pods {
        let node = if pod.metadata.name.as_deref() == Some("pi-node-0-1") {
            "n1"
        } else {
            "n0"
        };
        pod.spec.as_mut().expect("spec").node_name = Some(node.into());
    }
    let lost = pods
        .iter_mut()
        .find(|p| p.metadata.name.as_deref() == Some("pi-node-0-1"))
        .expect("pod");
    lost.metadata.deletion_timestamp = Some(at(T0));
    let why = "NodeStatusUnknown: Kubelet stopped posting node status.";
    let observed = Observed {
        lost_nodes: [("n1".to_string(), why.to_string())].into(),
        ..seeing(&pods)
    };
    let d = decide_observed(&j, &p, &observed, &at(T0));
    assert_eq!(
        d.restart.as_deref(),
        Some(format!("pod pi-node-0-1 lost its node n1 ({why}); MPI cannot continue without it; restarting all pods (restart 1 of 1)").as_str())
    );
    assert_eq!(d.delete, ["pi-launcher-0-0", "pi-node-0-0", "pi-node-0-1"]);

    // Without restarts left, the job fails naming the node.
    let observed = Observed {
        lost_nodes: [("n1".to_string(), why.to_string())].into(),
        ..seeing(&pods)
    };
    p.max_restarts = 0;
    let d = decide_observed(&j, &p, &observed, &at(T0));
    let failed = condition(&d, condition::FAILED).expect("Failed");
    assert_eq!(
        (
            failed.reason.as_str(),
            failed.message.contains("lost its node n1")
        ),
        ("FailedJobs", true)
    );
}

#[test]
fn a_pod_whose_phase_is_unknown_is_lost_with_its_node() {
    let (j, p, mut pods) = started(json!({"trainer": {"numNodes": 2}}));
    let pod = pods
        .iter_mut()
        .find(|p| p.metadata.name.as_deref() == Some("pi-node-0-0"))
        .expect("pod");
    pod.spec.as_mut().expect("spec").node_name = Some("n0".into());
    pod.status.as_mut().expect("status").phase = Some("Unknown".into());
    let d = decide(&j, &p, &pods, &at(T0));
    let failed = condition(&d, condition::FAILED).expect("Failed");
    assert_eq!(
        failed.message,
        "pod pi-node-0-0 lost its node n0 (the pod's phase is Unknown); MPI cannot continue without it"
    );
}
