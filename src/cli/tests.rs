//! Golden output of `list` and `describe` for a running, a failed and a waiting job, from views
//! built the way the plugin builds them, at a fixed time.

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use serde_json::{Value, json};

use super::*;
use crate::api::TrainJob;
use crate::desired::pods;
use crate::fixtures::{job, plan};
use crate::view::{Sources, view};

const NOW: &str = "2026-11-25T10:05:00Z";

fn now() -> Timestamp {
    NOW.parse().expect("time")
}

fn with_status(mut j: TrainJob, status: Value) -> TrainJob {
    j.status = Some(serde_json::from_value(status).expect("status"));
    j
}

/// Pod `name` of `j` as the operator builds it, with `status`, on `node`.
fn pod(j: &TrainJob, name: &str, node: Option<&str>, status: Value) -> Pod {
    let all = pods::of_jobs(j, &plan(j, "mpi-openmpi"), 0, |_| true);
    let mut pod = all
        .into_iter()
        .find(|p| p.metadata.name.as_deref() == Some(name))
        .expect("a pod of the job");
    pod.spec.get_or_insert_default().node_name = node.map(String::from);
    pod.status = Some(serde_json::from_value(status).expect("status"));
    pod
}

fn running(since: &str) -> Value {
    json!({"phase": "Running",
        "conditions": [{"type": "PodScheduled", "status": "True", "lastTransitionTime": since},
                       {"type": "Ready", "status": "True", "lastTransitionTime": since}],
        "containerStatuses": [{"name": "node", "image": "x", "imageID": "", "ready": true, "restartCount": 0,
            "state": {"running": {"startedAt": since}}}]})
}

fn named(mut j: TrainJob, name: &str, created: &str) -> TrainJob {
    j.metadata.name = Some(name.into());
    j.metadata.creation_timestamp = Some(Time(created.parse().expect("time")));
    j
}

/// A running job reporting progress, a failed one, and one waiting for room.
fn views() -> Vec<(crate::view::JobView, Option<Time>)> {
    let run = with_status(
        job(json!({"trainer": {"numNodes": 2}})),
        json!({"trainerStatus": {"progressPercentage": 40, "estimatedRemainingSeconds": 90,
            "metrics": [{"name": "loss", "value": "0.25"}], "lastUpdatedTime": "2026-11-25T10:04:50Z"}}),
    );
    let run_pods = [
        pod(
            &run,
            "pi-node-0-0",
            Some("kwok-0"),
            running("2026-11-25T10:00:10Z"),
        ),
        pod(
            &run,
            "pi-node-0-1",
            Some("kwok-1"),
            running("2026-11-25T10:00:12Z"),
        ),
        pod(
            &run,
            "pi-launcher-0-0",
            Some("kwok-0"),
            running("2026-11-25T10:00:20Z"),
        ),
    ];
    let failed = named(
        with_status(
            job(json!({"trainer": {"numNodes": 2}})),
            json!({"conditions": [{"type": "Failed", "status": "True", "reason": "FailedJobs",
                "message": "pod pi-node-0-1 failed: container node exited with code 137 (OOMKilled)",
                "lastTransitionTime": "2026-11-25T10:03:00Z"}]}),
        ),
        "oom",
        "2026-11-25T09:50:00Z",
    );
    let waiting = named(
        with_status(
            job(json!({"trainer": {"numNodes": 2}})),
            json!({"conditions": [{"type": "Stalled", "status": "True", "reason": "Unschedulable",
                "message": "worker pod pi-node-0-0 cannot be scheduled: 0/4 nodes are available",
                "lastTransitionTime": "2026-11-25T09:58:00Z"}]}),
        ),
        "big",
        "2026-11-23T08:00:00Z",
    );
    let created = |j: &TrainJob| j.metadata.creation_timestamp.clone();
    vec![
        (
            view(
                &run,
                Sources {
                    pods: &run_pods,
                    ..Sources::default()
                },
            ),
            created(&run),
        ),
        (view(&failed, Sources::default()), created(&failed)),
        (view(&waiting, Sources::default()), created(&waiting)),
    ]
}

#[test]
fn ages_read_as_kubectl_prints_them() {
    let at = |s: &str| Time(s.parse().expect("time"));
    let cases = [
        ("2026-11-25T10:04:18Z", "42s"),
        ("2026-11-25T09:59:50Z", "5m10s"),
        ("2026-11-25T09:55:00Z", "10m"),
        ("2026-11-25T05:05:00Z", "5h"),
        ("2026-11-25T04:35:00Z", "5h30m"),
        ("2026-11-24T00:05:00Z", "34h"),
        ("2026-11-21T06:05:00Z", "4d4h"),
        ("2026-08-27T10:05:00Z", "90d"),
    ];
    for (then, want) in cases {
        assert_eq!(age(Some(&at(then)), now()), want, "{then}");
    }
    assert_eq!(age(None, now()), "<unknown>");
}

/// Compares `actual` with `src/cli/golden/<name>`; `UPDATE_GOLDEN=1` writes it instead (then
/// read the diff before committing it).
fn golden(name: &str, actual: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src/cli/golden")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).expect("writing the golden file");
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        want == actual,
        "{name} differs from {} (UPDATE_GOLDEN=1 rewrites it):\n--- want\n{want}--- got\n{actual}",
        path.display()
    );
}

#[test]
fn list_golden() {
    let views = views();
    golden("list.txt", &list(&views, ListOptions::default(), now()));
    let wide = ListOptions {
        namespaces: true,
        wide: true,
    };
    golden("list-wide.txt", &list(&views, wide, now()));
}

#[test]
fn describe_golden() {
    let views = views();
    for ((view, _), name) in views.iter().zip(["running", "failed", "waiting"]) {
        golden(&format!("describe-{name}.txt"), &describe(view, now()));
    }
}

#[test]
fn logs_are_merged_in_time_order_with_each_pods_role_and_index() {
    let logs = [
        (
            "[launcher-0]".to_string(),
            "2026-11-25T10:00:03.000000001Z rank 0 of 2\n2026-11-25T10:00:05.000000000Z pi is 3.14\n".to_string(),
        ),
        (
            "[node-1]".to_string(),
            "2026-11-25T10:00:01.000000000Z Server listening on 2222\n2026-11-25T10:00:03.000000001Z same instant\n"
                .to_string(),
        ),
    ];
    assert_eq!(
        merge_logs(&logs, false),
        "[node-1] Server listening on 2222\n[launcher-0] rank 0 of 2\n[node-1] same instant\n[launcher-0] pi is 3.14\n"
    );
    assert!(merge_logs(&logs, true).starts_with("2026-11-25T10:00:01.000000000Z [node-1] Server listening"));
    let j = job(json!({"trainer": {"numNodes": 2}}));
    let worker = pod(&j, "pi-node-0-1", None, json!({}));
    assert_eq!(log_prefix(&worker, false), "[node-1]");
}

#[test]
fn a_restarted_gangs_lines_name_their_attempt() {
    let j = job(json!({"trainer": {"numNodes": 2}}));
    let mut worker = pod(&j, "pi-node-0-1", None, json!({}));
    worker
        .labels_mut()
        .insert(crate::names::RESTART_ATTEMPT_LABEL.into(), "2".into());
    assert_eq!(log_prefix(&worker, false), "[node-1 attempt 2]");
    worker.spec.get_or_insert_default().node_name = Some("gpu-7".into());
    assert_eq!(log_prefix(&worker, true), "[node-1 attempt 2 on gpu-7]");
    assert_eq!(log_prefix(&worker, false), "[node-1 attempt 2]");
}

#[test]
fn a_followed_pod_prints_each_line_once_across_reopened_streams() {
    let mut printed = Printed::default();
    let a = "2026-11-25T10:00:01.000000000Z first";
    let b = "2026-11-25T10:00:01.500000000Z second";
    assert!(printed.fresh("uid-1", a));
    assert!(printed.fresh("uid-1", b));
    // A stream reopened from the start of that second delivers both again.
    assert!(!printed.fresh("uid-1", a));
    assert!(!printed.fresh("uid-1", b));
    // Another pod (a new gang's pod of the same name has a new uid) starts afresh.
    assert!(printed.fresh("uid-2", a));
    assert_eq!(printed.newest("uid-1"), Some("2026-11-25T10:00:01.500000000Z"));
    assert_eq!(log_line("[node-1]", b, false), "[node-1] second");
    assert_eq!(
        log_line("[node-1]", b, true),
        "2026-11-25T10:00:01.500000000Z [node-1] second"
    );
}

#[test]
fn phases_are_painted_in_place_for_a_terminal() {
    let table = "NAME   PHASE      AGE\nok     Complete   1m\nbad    Failed     2m\nwip    Running    3m\n";
    let painted = paint_phases(table);
    assert_eq!(
        painted,
        "NAME   PHASE      AGE\nok     \x1b[32mComplete\x1b[0m   1m\nbad    \x1b[31mFailed\x1b[0m     2m\nwip    Running    3m\n"
    );
    // Without the codes it is the same table.
    assert_eq!(
        painted
            .replace("\x1b[32m", "")
            .replace("\x1b[31m", "")
            .replace("\x1b[0m", ""),
        table
    );
}
