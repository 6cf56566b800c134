//! Initializer steps: they run before the MPI pods, a failing one fails the job naming what it
//! was fetching, its last log line and its Secret, and a gang restart keeps the ones that
//! finished.

use serde_json::json;

use super::*;

const RUNTIME: &str = "mpi-openmpi-initializers";

fn data_job() -> TrainJob {
    job(json!({
        "runtimeRef": {"name": RUNTIME},
        "initializer": {
            "dataset": {"storageUri": "s3://training/digits", "secretRef": {"name": "s3-creds"}},
            "model": {"storageUri": "s3://training/init"},
        },
    }))
}

fn set_termination_message(pods: &mut [Pod], message: Option<String>) {
    let pod = pods
        .iter_mut()
        .find(|p| p.metadata.name.as_deref() == Some("pi-dataset-initializer-0-0"));
    let statuses = pod.and_then(|p| p.status.as_mut()?.container_statuses.as_mut());
    let state = statuses.and_then(|s| s[0].state.as_mut()?.terminated.as_mut());
    state.expect("terminated").message = message;
}

fn pod_names(pods: &[Pod]) -> Vec<&str> {
    pods.iter().filter_map(|p| p.metadata.name.as_deref()).collect()
}

#[test]
fn a_failed_initializer_fails_the_job_with_its_uri_last_log_line_and_secret_and_no_mpi_pod() {
    let j = data_job();
    let p = plan(&j, RUNTIME);
    let d = decide(&j, &p, &[], &at(T0));
    let mut pods = created(&j, &p, &d);
    assert_eq!(
        pod_names(&pods),
        ["pi-dataset-initializer-0-0", "pi-model-initializer-0-0"]
    );
    let j = with_status(j, &d);
    terminate_container(
        &mut pods,
        "pi-model-initializer-0-0",
        "model-initializer",
        0,
        "Completed",
    );
    terminate_container(
        &mut pods,
        "pi-dataset-initializer-0-0",
        "dataset-initializer",
        3,
        "Error",
    );
    let log = "s3sync: reading s3://training/digits\n\ns3sync: the S3 server at http://s3:7070 refused the credentials for bucket \"training\" (InvalidAccessKeyId): check ACCESS_KEY_ID and SECRET_ACCESS_KEY in the credentials Secret\n\n";
    let observed = Observed {
        failed_log: Some(("pi-dataset-initializer-0-0".into(), log.into())),
        ..seeing(&pods)
    };
    let d = decide_observed(&j, &p, &observed, &at(T0));
    let failed = condition(&d, condition::FAILED).expect("Failed");
    assert_eq!(failed.reason, "FailedJobs");
    assert_eq!(
        failed.message,
        "the dataset initializer failed reading s3://training/digits, so training did not start: pod pi-dataset-initializer-0-0 failed: container dataset-initializer exited with code 3 (Error); its last log line: \"s3sync: the S3 server at http://s3:7070 refused the credentials for bucket \\\"training\\\" (InvalidAccessKeyId): check ACCESS_KEY_ID and SECRET_ACCESS_KEY in the credentials Secret\"; its credentials come from Secret s3-creds (spec.initializer.dataset.secretRef)"
    );
    assert!(d.create.is_empty(), "no MPI pod: {:?}", d.create);

    // Without its log (not readable), its termination message says the same.
    let said =
        "s3sync: bucket \"training\" does not exist at http://s3:7070: create it or fix the storageUri";
    set_termination_message(&mut pods, Some(format!("{said}\n")));
    let d = decide(&j, &p, &pods, &at(T0));
    let failed = condition(&d, condition::FAILED).expect("Failed");
    assert!(
        failed
            .message
            .contains(&format!("(Error); its last log line: {said:?}; its credentials")),
        "{}",
        failed.message
    );
    set_termination_message(&mut pods, None);

    // With neither, the message still names the step, the pod and the Secret.
    let d = decide(&j, &p, &pods, &at(T0));
    let failed = condition(&d, condition::FAILED).expect("Failed");
    assert!(
        failed.message.ends_with("exited with code 3 (Error); its credentials come from Secret s3-creds (spec.initializer.dataset.secretRef)"),
        "{}",
        failed.message
    );
}

#[test]
fn the_workers_wait_for_both_initializers_and_a_gang_restart_keeps_the_finished_ones() {
    let j = data_job();
    let mut p = plan(&j, RUNTIME);
    p.max_restarts = 1;
    let d = decide(&j, &p, &[], &at(T0));
    let mut pods = created(&j, &p, &d);
    let j = with_status(j, &d);
    terminate_container(
        &mut pods,
        "pi-dataset-initializer-0-0",
        "dataset-initializer",
        0,
        "Completed",
    );
    let d = decide(&j, &p, &pods, &at(T0));
    assert!(d.create.is_empty(), "the model initializer still runs");
    terminate_container(
        &mut pods,
        "pi-model-initializer-0-0",
        "model-initializer",
        0,
        "Completed",
    );
    let d = decide(&j, &p, &pods, &at(T0));
    let workers = created(&j, &p, &d);
    assert_eq!(pod_names(&workers), ["pi-node-0-0", "pi-node-0-1"]);
    pods.extend(workers.iter().map(|w| observed_pod(w, "Running", true)));
    let j = with_status(j, &d);
    let d = decide(&j, &p, &pods, &at(T0));
    pods.extend(created(&j, &p, &d));
    assert!(pod_names(&pods).contains(&"pi-launcher-0-0"));
    let j = with_status(j, &d);

    // A worker fails: the MPI pods go, the finished initializers stay.
    terminate(&mut pods, "pi-node-0-1", 1, "Error");
    let d = decide(&j, &p, &pods, &at(T0));
    assert_eq!(d.status.restarts, Some(1));
    assert_eq!(d.delete, ["pi-launcher-0-0", "pi-node-0-0", "pi-node-0-1"]);
    let j = with_status(j, &d);
    pods.retain(|p| {
        p.metadata
            .name
            .as_deref()
            .is_some_and(|n| n.contains("initializer"))
    });

    // Attempt 1 starts with the workers: the initializers' data is on the volume already.
    let d = decide(&j, &p, &pods, &at(T0));
    let fresh = created(&j, &p, &d);
    assert_eq!(pod_names(&fresh), ["pi-node-0-0", "pi-node-0-1"]);
    assert!(d.delete.is_empty(), "{:?}", d.delete);
    let succeeded: Vec<_> = d
        .status
        .jobs_status
        .iter()
        .map(|s| (s.name.as_str(), s.succeeded))
        .collect();
    assert_eq!(
        succeeded,
        [
            ("dataset-initializer", 1),
            ("model-initializer", 1),
            ("node", 0),
            ("launcher", 0)
        ]
    );
}
