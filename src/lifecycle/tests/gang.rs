//! The gang watchdog: how far a native gang got and why, in the scheduler's words; a timeout.

use serde_json::json;

use super::*;
use crate::api::{PodGroupPolicy, WorkloadPodGroupPolicySource};

fn gang_plan(j: &TrainJob, timeout: Option<i32>) -> Plan {
    let mut p = plan(j, "mpi-openmpi");
    p.gang = Some(PodGroupPolicy {
        workload: Some(WorkloadPodGroupPolicySource {
            schedule_timeout_seconds: timeout,
        }),
        ..Default::default()
    });
    p
}

/// Marks `name` as not scheduled, with the scheduler's `message`.
fn unschedulable(pods: &mut [Pod], name: &str, message: &str) {
    let pod = pods
        .iter_mut()
        .find(|p| p.metadata.name.as_deref() == Some(name))
        .expect("pod");
    let status = pod.status.get_or_insert_default();
    status.conditions = Some(vec![
        serde_json::from_value(json!({"type": "PodScheduled", "status": "False",
            "reason": "Unschedulable", "message": message}))
        .expect("condition"),
    ]);
}

fn bind(pods: &mut [Pod]) {
    for pod in pods {
        pod.spec.get_or_insert_default().node_name = Some("node-1".into());
    }
}

#[test]
fn a_waiting_gang_says_how_far_it_got_in_the_schedulers_words() {
    let j = job(json!({"trainer": {"numNodes": 2}}));
    let p = gang_plan(&j, None);
    let d = decide(&j, &p, &[], &at(T0));
    let mut pods = created(&j, &p, &d);
    let j = with_status(j, &d);
    unschedulable(
        &mut pods,
        "pi-node-0-0",
        "pod group is unschedulable, waiting for minCount pods",
    );
    unschedulable(
        &mut pods,
        "pi-node-0-1",
        "0/4 nodes are available: 4 Insufficient cpu.",
    );

    let d = decide(&j, &p, &pods, &at(T0));
    let waiting = condition(&d, "GangScheduled").expect("GangScheduled");
    assert_eq!(
        (waiting.status.as_str(), waiting.reason.as_str()),
        ("False", "WaitingForGang")
    );
    assert_eq!(
        waiting.message,
        "waiting for 2 node pods to be scheduled together, 0 scheduled: 0/4 nodes are available: 4 Insufficient cpu."
    );
    assert!(notes(&j, &p, &d).iter().any(|n| n.reason == "WaitingForGang"));
    assert_eq!(
        d.requeue_after,
        Some(Duration::from_secs(15)),
        "no timeout: it waits as long as it takes, reading the PodGroup again now and then"
    );

    // kube-scheduler's verdict on the PodGroup joins the message.
    let rejected: Condition = serde_json::from_value(json!({"type": "PodGroupScheduled", "status": "False",
        "reason": "Unschedulable", "message": "pod group is unschedulable",
        "lastTransitionTime": "2026-11-25T10:00:00Z"}))
    .expect("condition");
    let seen = Observed {
        gang: Some(rejected.clone()),
        ..seeing(&pods)
    };
    let d2 = decide_observed(&j, &p, &seen, &at(T0));
    let message = &condition(&d2, "GangScheduled").expect("GangScheduled").message;
    assert!(
        message.ends_with("4 Insufficient cpu. (PodGroup: Unschedulable)"),
        "{message}"
    );
    let error = Condition {
        reason: "SchedulerError".into(),
        message: "etcdserver: request timed out".into(),
        ..rejected
    };
    let seen = Observed {
        gang: Some(error),
        ..seeing(&pods)
    };
    let d2 = decide_observed(&j, &p, &seen, &at(T0));
    let message = &condition(&d2, "GangScheduled").expect("GangScheduled").message;
    assert!(
        message.ends_with("(PodGroup: SchedulerError: etcdserver: request timed out)"),
        "{message}"
    );

    let j = with_status(j, &d);
    bind(&mut pods);
    let d = decide(&j, &p, &pods, &at(T0));
    let scheduled = condition(&d, "GangScheduled").expect("GangScheduled");
    assert_eq!(
        (scheduled.status.as_str(), scheduled.reason.as_str()),
        ("True", "GangScheduled")
    );
    assert!(notes(&j, &p, &d).iter().any(|n| n.reason == "GangScheduled"));
}

#[test]
fn a_gang_not_scheduled_within_its_timeout_fails_with_the_reason() {
    let j = job(json!({"trainer": {"numNodes": 2}}));
    let p = gang_plan(&j, Some(60));
    let d = decide(&j, &p, &[], &at(T0));
    let mut pods = created(&j, &p, &d);
    let j = with_status(j, &d);
    unschedulable(
        &mut pods,
        "pi-node-0-1",
        "0/4 nodes are available: 4 Insufficient nvidia.com/gpu.",
    );
    let d = decide(&j, &p, &pods, &at(T0));
    assert_eq!(
        d.requeue_after,
        Some(Duration::from_secs(15)),
        "the PodGroup is read again"
    );
    let j = with_status(j, &d);
    let d = decide(&j, &p, &pods, &at("2026-11-25T10:00:55Z"));
    assert_eq!(d.requeue_after, Some(Duration::from_secs(10)), "at the timeout");

    let d = decide(&j, &p, &pods, &at("2026-11-25T10:01:05Z"));
    let failed = condition(&d, condition::FAILED).expect("Failed");
    assert_eq!(failed.reason, "GangSchedulingTimeout");
    assert_eq!(
        failed.message,
        "the workers were not scheduled within 60s (podGroupPolicy.workload.scheduleTimeoutSeconds): waiting for 2 node pods to be scheduled together, 0 scheduled: 0/4 nodes are available: 4 Insufficient nvidia.com/gpu."
    );
    assert_eq!(d.delete.len(), 2, "the waiting workers go");
}

#[test]
fn jobs_without_a_native_gang_get_no_gang_condition() {
    let j = job(json!({"trainer": {"numNodes": 2}}));
    let p = plan(&j, "mpi-openmpi");
    let d = decide(&j, &p, &[], &at(T0));
    let pods = created(&j, &p, &d);
    let d = decide(&with_status(j, &d), &p, &pods, &at(T0));
    assert!(condition(&d, "GangScheduled").is_none());
}

/// A native gang on a runtime whose launcher runs ranks.
fn launcher_gang_plan(j: &TrainJob) -> Plan {
    crate::fixtures::plan_with(j, "mpi-openmpi", crate::fixtures::launcher_in_native_gang)
}

#[test]
fn a_launcher_that_runs_ranks_joins_the_gang_and_comes_with_the_workers() {
    let j = job(json!({"trainer": {"numNodes": 3}}));
    let p = launcher_gang_plan(&j);
    assert_eq!(p.native_gang(), Some(3), "2 workers and the launcher");
    // Created at once, not after the workers are Ready: a gang forms only once its members exist.
    let d = decide(&j, &p, &[], &at(T0));
    let mut pods = created(&j, &p, &d);
    let names: Vec<_> = pods.iter().filter_map(|p| p.metadata.name.clone()).collect();
    assert_eq!(names, ["pi-node-0-0", "pi-node-0-1", "pi-launcher-0-0"]);
    let j = with_status(j, &d);
    unschedulable(
        &mut pods,
        "pi-launcher-0-0",
        "0/4 nodes are available: 4 Insufficient cpu.",
    );
    pods[0].spec.get_or_insert_default().node_name = Some("node-1".into());
    let d = decide(&j, &p, &pods, &at(T0));
    let waiting = condition(&d, "GangScheduled").expect("GangScheduled");
    assert_eq!(
        waiting.message,
        "waiting for 2 node pods and 1 launcher pod to be scheduled together, 1 scheduled (node 1, launcher 0): 0/4 nodes are available: 4 Insufficient cpu."
    );
    let j = with_status(j, &d);
    bind(&mut pods);
    let d = decide(&j, &p, &pods, &at(T0));
    let scheduled = condition(&d, "GangScheduled").expect("GangScheduled");
    assert_eq!(
        scheduled.message,
        "all 2 node pods and 1 launcher pod are scheduled"
    );
}

#[test]
fn a_launcher_that_runs_no_ranks_still_waits_for_ready_workers() {
    let j = job(json!({"trainer": {"numNodes": 2}}));
    let p = gang_plan(&j, None);
    assert_eq!(p.native_gang(), Some(2));
    let d = decide(&j, &p, &[], &at(T0));
    let names: Vec<_> = created(&j, &p, &d)
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    assert_eq!(names, ["pi-node-0-0", "pi-node-0-1"]);
}
