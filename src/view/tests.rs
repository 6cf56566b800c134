//! The job view of jobs at every stage, built from pods as the operator makes them and statuses
//! as the kubelet and scheduler write them.

use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};

use super::*;
use crate::desired::pods;
use crate::fixtures::{job, plan, shipped_runtime};

fn runtime() -> Runtime {
    Runtime::new(
        "ClusterTrainingRuntime/mpi-openmpi",
        shipped_runtime("mpi-openmpi"),
    )
}

/// Pod `name` of `j` (2 workers and a launcher on mpi-openmpi) with `status`.
fn pod(j: &TrainJob, name: &str, status: Value) -> Pod {
    let p = plan(j, "mpi-openmpi");
    let all = pods::of_jobs(
        j,
        &p,
        j.status.as_ref().and_then(|s| s.restarts).unwrap_or(0),
        |_| true,
    );
    let mut pod = all
        .into_iter()
        .find(|p| p.metadata.name.as_deref() == Some(name))
        .expect("a pod of the job");
    pod.status = Some(serde_json::from_value(status).expect("status"));
    pod
}

fn running(node: &str, since: &str) -> Value {
    json!({"phase": "Running",
        "conditions": [{"type": "PodScheduled", "status": "True", "lastTransitionTime": since},
                       {"type": "Ready", "status": "True", "lastTransitionTime": since}],
        "containerStatuses": [{"name": "node", "image": "x", "imageID": "", "ready": true, "restartCount": 0,
            "state": {"running": {"startedAt": since}}}],
        "hostIP": node})
}

fn bound(mut pod: Pod, node: &str) -> Pod {
    pod.spec.get_or_insert_default().node_name = Some(node.into());
    pod
}

fn with_status(mut j: TrainJob, status: Value) -> TrainJob {
    j.status = Some(serde_json::from_value(status).expect("status"));
    j
}

fn event(reason: &str, note: &str, at: &str) -> Event {
    serde_json::from_value(
        json!({"metadata": {"name": format!("pi.{reason}")}, "reason": reason, "note": note,
        "type": "Normal", "eventTime": at, "reportingController": "trainjob-operator",
        "reportingInstance": "x", "action": "Reconcile"}),
    )
    .expect("event")
}

#[test]
fn a_running_job_shows_its_pods_hosts_and_milestones() {
    let j = with_status(
        job(json!({"trainer": {"numNodes": 2}})),
        json!({"jobsStatus": []}),
    );
    let pods = [
        bound(
            pod(&j, "pi-node-0-1", running("10.0.0.2", "2026-11-25T10:00:20Z")),
            "kwok-1",
        ),
        bound(
            pod(&j, "pi-node-0-0", running("10.0.0.1", "2026-11-25T10:00:10Z")),
            "kwok-0",
        ),
        bound(
            pod(&j, "pi-launcher-0-0", running("10.0.0.1", "2026-11-25T10:00:30Z")),
            "kwok-0",
        ),
    ];
    let events = [event(
        "LauncherCreated",
        "every worker is ready; creating pi-launcher-0-0",
        "2026-11-25T10:00:21Z",
    )];
    let rt = runtime();
    let v = view(
        &j,
        Sources {
            runtime: Some(&rt),
            pods: &pods,
            events: &events,
            launcher_log: None,
        },
    );
    assert_eq!(
        (v.phase, v.nodes),
        (Phase::Running, Nodes { ready: 2, wanted: 2 })
    );
    assert_eq!(v.runtime, "ClusterTrainingRuntime/mpi-openmpi");
    let table: Vec<(&str, &str, Option<i32>, Option<&str>)> = v
        .pods
        .iter()
        .map(|p| (p.name.as_str(), p.role.as_str(), p.index, p.node.as_deref()))
        .collect();
    assert_eq!(
        table,
        [
            ("pi-launcher-0-0", "launcher", Some(0), Some("kwok-0")),
            ("pi-node-0-0", "node", Some(0), Some("kwok-0")),
            ("pi-node-0-1", "node", Some(1), Some("kwok-1")),
        ]
    );
    let timeline: Vec<(Moment, String)> = v.timeline.iter().map(|m| (m.what, m.at.0.to_string())).collect();
    assert_eq!(
        timeline,
        [
            (Moment::Created, "2026-11-25T10:00:00Z".to_string()),
            (Moment::Scheduled, "2026-11-25T10:00:20Z".to_string()),
            (Moment::WorkersReady, "2026-11-25T10:00:20Z".to_string()),
            (Moment::LauncherStarted, "2026-11-25T10:00:30Z".to_string()),
        ]
    );
    assert_eq!(v.diagnosis, None);
    assert_eq!(v.events.len(), 1);
}

#[test]
fn a_pod_that_cannot_start_says_why_in_the_kubelets_words() {
    let j = job(json!({"trainer": {"numNodes": 2}}));
    let pulling = json!({"phase": "Pending", "containerStatuses": [{"name": "node", "image": "x", "imageID": "",
        "ready": false, "restartCount": 0, "state": {"waiting": {"reason": "ImagePullBackOff",
        "message": "Back-off pulling image \"mpi:tpyo\""}}}]});
    let unschedulable = json!({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
        "reason": "Unschedulable", "message": "0/4 nodes are available: 4 Insufficient nvidia.com/gpu."}]});
    let crashing = json!({"phase": "Running", "containerStatuses": [{"name": "node", "image": "x", "imageID": "",
        "ready": false, "restartCount": 3, "state": {"waiting": {"reason": "CrashLoopBackOff"}},
        "lastState": {"terminated": {"exitCode": 1}}}]});
    let pods = [
        bound(pod(&j, "pi-node-0-0", pulling), "kwok-0"),
        pod(&j, "pi-node-0-1", unschedulable),
    ];
    let v = view(
        &j,
        Sources {
            pods: &pods,
            ..Sources::default()
        },
    );
    let reasons: Vec<Option<&str>> = v.pods.iter().map(|p| p.reason.as_deref()).collect();
    assert_eq!(
        reasons,
        [
            Some("node: ImagePullBackOff: Back-off pulling image \"mpi:tpyo\""),
            Some("Unschedulable: 0/4 nodes are available: 4 Insufficient nvidia.com/gpu."),
        ]
    );
    assert_eq!(
        (v.phase, v.nodes),
        (Phase::Starting, Nodes { ready: 0, wanted: 2 })
    );
    assert!(
        v.timeline.iter().all(|m| m.what == Moment::Created),
        "not scheduled yet"
    );
    let crash = view(
        &j,
        Sources {
            pods: &[pod(&j, "pi-node-0-0", crashing)],
            ..Sources::default()
        },
    );
    assert_eq!(
        (crash.pods[0].restarts, crash.pods[0].reason.as_deref()),
        (3, Some("node: CrashLoopBackOff"))
    );
}

#[test]
fn a_failed_job_gives_the_diagnosis_and_the_launcher_log_adds_its_cause() {
    let j = with_status(
        job(json!({"trainer": {"numNodes": 2}})),
        json!({"conditions": [{"type": "Failed", "status": "True", "reason": "FailedJobs",
            "message": "pod pi-launcher-0-0 failed: container node exited with code 1 (Error); see `kubectl logs pi-launcher-0-0 -c node`",
            "lastTransitionTime": "2026-11-25T10:01:00Z"}]}),
    );
    let oom = json!({"phase": "Failed", "containerStatuses": [{"name": "node", "image": "x", "imageID": "",
        "ready": false, "restartCount": 0, "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}]});
    let pods = [pod(&j, "pi-node-0-0", oom)];
    let rt = runtime();
    let log = "ssh: Could not resolve hostname pi-node-0-1.pi: Name or service not known";
    let v = view(
        &j,
        Sources {
            runtime: Some(&rt),
            pods: &pods,
            launcher_log: Some(log),
            ..Sources::default()
        },
    );
    assert_eq!(v.phase, Phase::Failed);
    let d = v.diagnosis.expect("diagnosis");
    assert_eq!((d.reason.as_str(), d.failed), ("FailedJobs", true));
    assert!(d.message.contains("exited with code 1"), "{}", d.message);
    assert!(
        d.message.contains("a host name did not resolve (DNS)"),
        "{}",
        d.message
    );
    assert_eq!(
        v.pods[0].reason.as_deref(),
        Some("node: OOMKilled, exit code 137")
    );
    assert_eq!(
        v.timeline.last().map(|m| (m.what, m.detail.clone())),
        Some((Moment::Failed, Some("FailedJobs".into())))
    );
    // Once the operator's own message names the cause, it is not said twice.
    let told = with_status(
        j.clone(),
        json!({"conditions": [{"type": "Failed", "status": "True",
        "reason": "FailedJobs", "message": d.message, "lastTransitionTime": "2026-11-25T10:01:00Z"}]}),
    );
    let again = view(
        &told,
        Sources {
            runtime: Some(&rt),
            launcher_log: Some(log),
            ..Sources::default()
        },
    );
    assert_eq!(again.diagnosis.map(|d| d.message), Some(d.message));
}

#[test]
fn a_waiting_gang_a_suspended_job_and_progress_are_shown() {
    let waiting = with_status(
        job(json!({})),
        json!({"conditions": [{"type": "GangScheduled", "status": "False", "reason": "WaitingForGang",
            "message": "waiting for 2 node pods to be scheduled together, 0 scheduled: 0/4 nodes are available",
            "lastTransitionTime": "2026-11-25T10:00:05Z"}]}),
    );
    let d = view(&waiting, Sources::default()).diagnosis.expect("diagnosis");
    assert_eq!((d.reason.as_str(), d.failed), ("WaitingForGang", false));
    let stalled = with_status(
        job(json!({})),
        json!({"conditions": [{"type": "Stalled", "status": "True", "reason": "ImagePullBackOff",
            "message": "worker pod pi-node-0-0: container node cannot pull image", "lastTransitionTime": "2026-11-25T10:00:05Z"}]}),
    );
    let d = view(&stalled, Sources::default()).diagnosis.expect("diagnosis");
    assert_eq!((d.reason.as_str(), d.failed), ("ImagePullBackOff", false));
    let suspended = with_status(
        job(json!({"suspend": true})),
        json!({"conditions": [{"type": "Suspended", "status": "True", "reason": "Suspended",
            "message": "TrainJob is suspended", "lastTransitionTime": "2026-11-25T10:00:05Z"}]}),
    );
    let v = view(&suspended, Sources::default());
    assert_eq!(
        (v.phase, v.diagnosis.map(|d| d.reason)),
        (Phase::Suspended, Some("Suspended".into()))
    );
    assert!(v.timeline.iter().any(|m| m.what == Moment::Suspended));
    let reporting = with_status(
        job(json!({})),
        json!({"trainerStatus": {"progressPercentage": 40, "estimatedRemainingSeconds": 90,
            "metrics": [{"name": "loss", "value": "0.25"}], "lastUpdatedTime": "2026-11-25T10:02:00Z"}}),
    );
    let progress = view(&reporting, Sources::default()).progress.expect("progress");
    assert_eq!(
        (progress.percent, progress.remaining_seconds, progress.metrics),
        (Some(40), Some(90), vec![("loss".to_string(), "0.25".to_string())])
    );
}

#[test]
fn a_complete_jobs_workers_are_gone_and_its_events_keep_the_milestones() {
    let j = with_status(
        job(json!({"trainer": {"numNodes": 2}})),
        json!({"restarts": 1, "conditions": [{"type": "Complete", "status": "True", "reason": "AllJobsCompleted",
            "message": "TrainJob completed successfully", "lastTransitionTime": "2026-11-25T10:05:00Z"}]}),
    );
    let done = json!({"phase": "Succeeded", "containerStatuses": [{"name": "node", "image": "x", "imageID": "",
        "ready": false, "restartCount": 0, "state": {"terminated": {"exitCode": 0, "reason": "Completed",
        "startedAt": "2026-11-25T10:03:00Z"}}}]});
    let pods = [pod(&j, "pi-launcher-0-0", done)];
    let events = [
        event(
            "Restarting",
            "pod pi-node-0-0 failed; restarting all pods (restart 1 of 1)",
            "2026-11-25T10:01:00Z",
        ),
        event(
            "LauncherCreated",
            "every worker is ready; creating pi-launcher-0-0",
            "2026-11-25T10:02:50Z",
        ),
    ];
    let v = view(
        &j,
        Sources {
            pods: &pods,
            events: &events,
            ..Sources::default()
        },
    );
    let moments: Vec<Moment> = v.timeline.iter().map(|m| m.what).collect();
    assert_eq!(
        moments,
        [
            Moment::Created,
            Moment::Restarted,
            Moment::WorkersReady,
            Moment::LauncherStarted,
            Moment::Complete
        ]
    );
    assert_eq!(
        (v.phase, v.restarts, v.pods[0].reason.clone()),
        (Phase::Complete, 1, None)
    );
    let json = serde_json::to_value(&v).expect("serialises");
    assert_eq!(json["pods"][0]["state"], "Succeeded");
    assert_eq!(json["timeline"][1]["what"], "Restarted");
}
