use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use serde_json::json;

use super::*;
use crate::api::TrainJob;
use crate::desired::pods;
use crate::fixtures::{job, observed_pod, plan};
use crate::plan::Plan;
use crate::reasons::condition;

/// What a reconcile observes when `pods` are the job's pods and its Secret exists.
fn seeing(pods: &[Pod]) -> Observed {
    Observed {
        pods: pods.iter().cloned().map(Arc::new).collect(),
        secret: true,
        ..Observed::default()
    }
}

/// [`super::decide`] from what `observed` says.
fn decide_observed(job: &TrainJob, plan: &Plan, observed: &Observed, now: &Time) -> Decision {
    super::decide(job, plan, observed, now).expect("a decision")
}

/// [`super::decide`] from the job's pods alone.
fn decide(job: &TrainJob, plan: &Plan, pods: &[Pod], now: &Time) -> Decision {
    decide_observed(job, plan, &seeing(pods), now)
}

fn at(s: &str) -> Time {
    Time(s.parse().expect("timestamp"))
}

const T0: &str = "2026-11-25T10:00:05Z";

/// The pods a decision asks for, as the API server would return them right after creation.
fn created(job: &TrainJob, plan: &Plan, d: &Decision) -> Vec<Pod> {
    let attempt = d.status.restarts.unwrap_or(0);
    d.create
        .iter()
        .map(|(i, idx)| {
            observed_pod(
                &pods::pod(job, plan, &plan.jobs[*i], *idx, attempt),
                "Pending",
                false,
            )
        })
        .collect()
}

fn names(d: &Decision) -> Vec<String> {
    let mut v: Vec<_> = d
        .create
        .iter()
        .map(|(i, idx)| format!("{i}/{}-{}", idx.job_index, idx.index))
        .collect();
    v.sort();
    v
}

/// The Events of decision `d` taken on `j` (the job as it was before it).
fn notes(j: &TrainJob, p: &Plan, d: &Decision) -> Vec<Note> {
    events("pi", p, j.status.as_ref(), d)
}

fn with_status(mut job: TrainJob, d: &Decision) -> TrainJob {
    job.status = Some(d.status.clone());
    job
}

fn set_phase(pods: &mut [Pod], name: &str, phase: &str, ready: bool) {
    let pod = pods
        .iter_mut()
        .find(|p| p.metadata.name.as_deref() == Some(name))
        .expect("pod exists");
    *pod = observed_pod(pod, phase, ready);
}

fn terminate(pods: &mut [Pod], name: &str, exit_code: i32, reason: &str) {
    terminate_container(pods, name, "node", exit_code, reason);
}

/// Pod `name` ends with its container `container` exited with `exit_code` for `reason`.
fn terminate_container(pods: &mut [Pod], name: &str, container: &str, exit_code: i32, reason: &str) {
    let pod = pods
        .iter_mut()
        .find(|p| p.metadata.name.as_deref() == Some(name))
        .expect("pod exists");
    let phase = if exit_code == 0 { "Succeeded" } else { "Failed" };
    pod.status = Some(
        serde_json::from_value(json!({
            "phase": phase,
            "containerStatuses": [{"name": container, "image": "x", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": exit_code, "reason": reason}}}],
        }))
        .expect("status"),
    );
}

fn condition<'a>(d: &'a Decision, type_: &str) -> Option<&'a Condition> {
    d.status.conditions.iter().find(|c| c.type_ == type_)
}

/// Runs a 4-node job until its workers are Ready and the launcher exists.
fn started(spec: serde_json::Value) -> (TrainJob, Plan, Vec<Pod>) {
    let j = job(spec);
    let p = plan(&j, "mpi-openmpi");
    let d = decide(&j, &p, &[], &at(T0));
    let mut pods: Vec<Pod> = created(&j, &p, &d)
        .iter()
        .map(|pod| observed_pod(pod, "Running", true))
        .collect();
    let j = with_status(j, &d);
    let d = decide(&j, &p, &pods, &at(T0));
    assert_eq!(d.create.len(), 1, "the launcher");
    pods.extend(created(&j, &p, &d));
    set_phase(&mut pods, "pi-launcher-0-0", "Running", true);
    (with_status(j, &d), p, pods)
}

mod failures;
mod gang;
mod initializers;
mod observed;
mod stalls;

#[test]
fn workers_first_then_the_launcher_once_all_are_ready() {
    let j = job(json!({"trainer": {"numNodes": 4}}));
    let p = plan(&j, "mpi-openmpi");
    let d = decide(&j, &p, &[], &at(T0));
    assert_eq!(
        names(&d),
        ["0/0-0", "0/0-1", "0/0-2", "0/0-3"],
        "only the four workers"
    );
    assert_eq!(notes(&j, &p, &d)[0].reason, "PodsCreated");
    assert_eq!(d.phase, Some(Phase::Starting));
    let mut pods = created(&j, &p, &d);
    let j = with_status(j, &d);

    // Three of four ready: the launcher waits (no ssh race with a worker whose sshd is not up).
    for name in ["pi-node-0-0", "pi-node-0-1", "pi-node-0-2"] {
        set_phase(&mut pods, name, "Running", true);
    }
    set_phase(&mut pods, "pi-node-0-3", "Running", false);
    let d = decide(&j, &p, &pods, &at(T0));
    assert!(
        d.create.is_empty(),
        "launcher must wait for every worker: {:?}",
        names(&d)
    );
    let node = &d.status.jobs_status[0];
    assert_eq!(
        (node.active, node.ready),
        (1, 0),
        "one Job of 4 pods, not all ready"
    );

    set_phase(&mut pods, "pi-node-0-3", "Running", true);
    let d = decide(&j, &p, &pods, &at(T0));
    assert_eq!(names(&d), ["1/0-0"]);
    assert_eq!(notes(&j, &p, &d)[0].reason, "LauncherCreated");
    assert!(
        notes(&j, &p, &d)[0].message.contains("every worker is ready"),
        "{}",
        notes(&j, &p, &d)[0].message
    );
    assert_eq!(d.status.jobs_status[0].ready, 1);
}

#[test]
fn counts_are_a_milestone_when_every_pod_turns_ready_and_when_none_is_active_any_more() {
    let j = job(json!({"trainer": {"numNodes": 4}}));
    let p = plan(&j, "mpi-openmpi");
    let d = decide(&j, &p, &[], &at(T0));
    let mut pods = created(&j, &p, &d);
    let j = with_status(j, &d);
    let d = decide(&j, &p, &pods, &at(T0));
    assert!(!d.milestone, "pods coming into being wait like any count");
    let j = with_status(j, &d);
    for name in ["pi-node-0-0", "pi-node-0-1", "pi-node-0-2", "pi-node-0-3"] {
        set_phase(&mut pods, name, "Running", true);
    }
    let d = decide(&j, &p, &pods, &at(T0));
    assert!(!d.milestone, "the workers alone are not every pod");
    let j = with_status(j, &d);
    pods.extend(created(&j, &p, &d));
    set_phase(&mut pods, "pi-launcher-0-0", "Running", true);
    let d = decide(&j, &p, &pods, &at(T0));
    assert!(d.milestone, "every pod ready: Kueue's PodsReady");
    let j = with_status(j, &d);
    assert!(
        !decide(&j, &p, &pods, &at(T0)).milestone,
        "no change, no milestone"
    );
    set_phase(&mut pods, "pi-node-0-3", "Running", false);
    let d = decide(&j, &p, &pods, &at(T0));
    assert!(d.milestone, "no longer every pod ready");

    let counts = |active: i32| {
        vec![crate::api::JobStatus {
            name: "node".into(),
            active,
            ..Default::default()
        }]
    };
    assert!(
        jobs_status::milestone(&p, &counts(1), &counts(0)),
        "none active any more: Kueue waits for it after suspending"
    );
    assert!(!jobs_status::milestone(&p, &counts(0), &counts(1)));
}

#[test]
fn a_wide_jobs_pods_are_counted_in_its_event_not_listed() {
    let narrow = job(json!({"trainer": {"numNodes": 4}}));
    let p = plan(&narrow, "mpi-openmpi");
    let d = decide(&narrow, &p, &[], &at(T0));
    assert_eq!(
        notes(&narrow, &p, &d)[0].message,
        "creating pi-node-0-0, pi-node-0-1, pi-node-0-2, pi-node-0-3"
    );
    let wide = job(json!({"trainer": {"numNodes": 512}}));
    let p = plan(&wide, "mpi-openmpi");
    let d = decide(&wide, &p, &[], &at(T0));
    let message = &notes(&wide, &p, &d)[0].message;
    assert_eq!(message, "creating 512 pods, pi-node-0-0 … pi-node-0-511");
    assert!(message.len() < 1024, "an Event's note holds at most 1 kB");
}

#[test]
fn launcher_success_completes_the_job_and_removes_workers() {
    let (j, p, mut pods) = started(json!({"trainer": {"numNodes": 4}}));
    let d = decide(&j, &p, &pods, &at(T0));
    assert_eq!(d.phase, Some(Phase::Running));
    assert!(d.create.is_empty() && d.delete.is_empty());

    terminate(&mut pods, "pi-launcher-0-0", 0, "Completed");
    let d = decide(&j, &p, &pods, &at(T0));
    let complete = condition(&d, condition::COMPLETE).expect("Complete");
    assert_eq!(
        (complete.status.as_str(), complete.reason.as_str()),
        ("True", "AllJobsCompleted")
    );
    assert_eq!(
        d.delete,
        ["pi-node-0-0", "pi-node-0-1", "pi-node-0-2", "pi-node-0-3"],
        "launcher stays for logs"
    );
    let launcher = &d.status.jobs_status[1];
    assert_eq!(
        (launcher.name.as_str(), launcher.succeeded, launcher.active),
        ("launcher", 1, 0)
    );
    assert_eq!(d.phase, Some(Phase::Complete));

    // Once complete, nothing is recreated and the status stays put.
    let j = with_status(j, &d);
    pods.retain(|p| p.metadata.name.as_deref() == Some("pi-launcher-0-0"));
    let again = decide(&j, &p, &pods, &at("2026-11-25T11:00:00Z"));
    assert!(again.create.is_empty() && again.delete.is_empty());
    assert_eq!(
        again.status.conditions, d.status.conditions,
        "no churn on an unchanged state"
    );
}

#[test]
fn suspend_deletes_pods_and_resume_recreates_them() {
    let (j, p, pods) = started(json!({"trainer": {"numNodes": 4}}));
    let mut suspended = j.clone();
    suspended.spec.suspend = Some(true);
    let d = decide(&suspended, &p, &pods, &at(T0));
    let cond = condition(&d, condition::SUSPENDED).expect("Suspended");
    assert_eq!(
        (cond.status.as_str(), cond.reason.as_str(), cond.message.as_str()),
        ("True", "Suspended", "TrainJob is suspended")
    );
    assert_eq!(d.delete.len(), 5);
    assert!(d.create.is_empty());
    assert!(
        d.status
            .jobs_status
            .iter()
            .all(|s| s.suspended == 1 && s.active == 0),
        "{:?}",
        d.status.jobs_status
    );
    assert_eq!(d.phase, Some(Phase::Suspended));

    let mut resumed = with_status(suspended, &d);
    resumed.spec.suspend = Some(false);
    let later = at("2026-11-25T10:30:00Z");
    let d = decide(&resumed, &p, &[], &later);
    let cond = condition(&d, condition::SUSPENDED).expect("Suspended");
    assert_eq!((cond.status.as_str(), cond.reason.as_str()), ("False", "Resumed"));
    assert_eq!(cond.last_transition_time, later);
    assert_eq!(names(&d), ["0/0-0", "0/0-1", "0/0-2", "0/0-3"]);
}

#[test]
fn a_quick_resume_waits_for_the_suspended_pods_instead_of_failing() {
    let (j, p, pods) = started(json!({"trainer": {"numNodes": 2}}));
    let mut suspended = j.clone();
    suspended.spec.suspend = Some(true);
    let d = decide(&suspended, &p, &pods, &at(T0));
    // Resumed while the deleted pods still terminate, killed: Failed, deleted at T0 with the
    // default 30 s grace period, so their deletion timestamp lies after the resume.
    let dying: Vec<Pod> = pods
        .iter()
        .map(|pod| {
            let mut pod = observed_pod(pod, "Failed", false);
            pod.metadata.deletion_timestamp = Some(at("2026-11-25T10:00:35Z"));
            pod.metadata.deletion_grace_period_seconds = Some(30);
            pod
        })
        .collect();
    let mut resumed = with_status(suspended, &d);
    resumed.spec.suspend = Some(false);
    let d = decide(&resumed, &p, &dying, &at("2026-11-25T10:00:06Z"));
    assert!(
        condition(&d, condition::FAILED).is_none(),
        "{:?}",
        d.status.conditions
    );
    assert!(d.create.is_empty(), "the names are still taken");
    // Once they are gone, the run starts again.
    let resumed = with_status(resumed, &d);
    let d = decide(&resumed, &p, &[], &at("2026-11-25T10:00:08Z"));
    assert!(condition(&d, condition::FAILED).is_none());
    assert_eq!(names(&d), ["0/0-0", "0/0-1"]);
}

#[test]
fn a_job_created_suspended_creates_nothing() {
    let j = job(json!({"suspend": true}));
    let d = decide(&j, &plan(&j, "mpi-openmpi"), &[], &at(T0));
    assert!(d.create.is_empty() && d.delete.is_empty());
    assert_eq!(
        condition(&d, condition::SUSPENDED).map(|c| c.status.as_str()),
        Some("True")
    );
}

#[test]
fn unchanged_state_rewrites_nothing() {
    let (j, p, pods) = started(json!({}));
    let first = decide(&j, &p, &pods, &at(T0));
    let j = with_status(j, &first);
    let second = decide(&j, &p, &pods, &at("2026-11-25T12:00:00Z"));
    assert_eq!(
        Some(&second.status),
        j.status.as_ref(),
        "same observation, same status"
    );
    assert!(notes(&j, &p, &second).is_empty());
}

#[test]
fn a_missing_worker_before_the_launcher_is_simply_created() {
    let j = job(json!({"trainer": {"numNodes": 2}}));
    let p = plan(&j, "mpi-openmpi");
    let d = decide(&j, &p, &[], &at(T0));
    let mut pods = created(&j, &p, &d);
    pods.remove(0);
    let j = with_status(j, &d);
    let d = decide(&j, &p, &pods, &at(T0));
    assert_eq!(names(&d), ["0/0-0"]);
    assert!(condition(&d, condition::FAILED).is_none());
}

#[test]
fn a_launcher_without_depends_on_starts_with_the_workers() {
    let j = job(json!({"trainer": {"numNodes": 2}}));
    let mut p = plan(&j, "mpi-openmpi");
    p.jobs[1].depends_on.clear();
    let d = decide(&j, &p, &[], &at(T0));
    assert_eq!(names(&d), ["0/0-0", "0/0-1", "1/0-0"]);
    assert_eq!(notes(&j, &p, &d)[0].reason, "LauncherCreated");
}

#[test]
fn a_finished_launcher_is_counted_succeeded_not_ready() {
    let (j, p, mut pods) = started(json!({"trainer": {"numNodes": 2}}));
    let d = decide(&j, &p, &pods, &at(T0));
    let launcher = &d.status.jobs_status[1];
    assert_eq!((launcher.active, launcher.ready), (1, 1), "running and ready");
    terminate(&mut pods, "pi-launcher-0-0", 0, "Completed");
    let d = decide(&j, &p, &pods, &at(T0));
    let launcher = &d.status.jobs_status[1];
    assert_eq!(
        (launcher.active, launcher.ready, launcher.succeeded),
        (0, 0, 1),
        "a finished pod is not ready"
    );
}

#[test]
fn job_indices_come_from_labels_not_names() {
    let (j, p, mut pods) = started(json!({"trainer": {"numNodes": 2}}));
    // A pod name that would fool a substring match; its labels say node index 1.
    for pod in &mut pods {
        if pod.metadata.name.as_deref() == Some("pi-node-0-1") {
            pod.metadata.name = Some("renamed".into());
        }
    }
    let d = decide(&j, &p, &pods, &at(T0));
    assert!(d.create.is_empty(), "index 1 exists: {:?}", names(&d));
    assert_eq!(d.status.jobs_status[0].ready, 1);
}
