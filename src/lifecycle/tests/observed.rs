//! What the reconcile observed besides the job's own pods: a Secret that is gone, pods created
//! but not shown by the watch yet, pods that hold the job's names but are not its own.

use serde_json::json;

use super::*;

fn foreign(name: &str, owner: Option<&str>) -> Arc<Pod> {
    let owners = owner.map(|uid| {
        json!([{"apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob", "name": "pi",
            "uid": uid, "controller": true}])
    });
    Arc::new(
        serde_json::from_value(json!({"metadata": {"name": name, "ownerReferences": owners}})).expect("pod"),
    )
}

#[test]
fn a_running_job_whose_secret_is_gone_fails_and_a_finishing_one_does_not() {
    let (j, p, mut pods) = started(json!({"trainer": {"numNodes": 2}}));
    let keyless = Observed {
        secret: false,
        ..seeing(&pods)
    };
    let err = super::super::decide(&j, &p, &keyless, &at(T0)).expect_err("key lost");
    assert_eq!(err.permanent(), Some("SSHSecretDeleted"));
    assert_eq!(
        err.to_string(),
        "the SSH Secret pi-mpi-ssh-auth was deleted while the job's pods ran; they hold the only copy of its key, so new pods could not reach them: re-create the TrainJob"
    );
    // The launcher exited 0: the job completes; it may well be this operator's own half-done
    // finish that deleted the key.
    terminate(&mut pods, "pi-launcher-0-0", 0, "Completed");
    set_phase(&mut pods, "pi-launcher-0-0", "Succeeded", false);
    let keyless = Observed {
        secret: false,
        ..seeing(&pods)
    };
    let d = decide_observed(&j, &p, &keyless, &at(T0));
    assert!(condition(&d, condition::COMPLETE).is_some());
    // A new job has no pods yet: it gets its first key.
    let fresh = job(json!({}));
    let d = decide_observed(&fresh, &p, &Observed::default(), &at(T0));
    assert_eq!(d.create.len(), 2);
}

#[test]
fn pods_created_earlier_and_not_shown_yet_are_not_created_again() {
    let j = job(json!({"trainer": {"numNodes": 3}}));
    let p = plan(&j, "mpi-openmpi");
    let awaited = Observed {
        awaited: ["pi-node-0-0".to_string(), "pi-node-0-2".to_string()].into(),
        ..Observed::default()
    };
    let d = decide_observed(&j, &p, &awaited, &at(T0));
    assert_eq!(names(&d), ["0/0-1"], "only the one not created yet");
}

#[test]
fn a_pod_name_held_by_someone_else_fails_the_job_and_by_an_earlier_job_waits() {
    let j = job(json!({"trainer": {"numNodes": 2}}));
    let p = plan(&j, "mpi-openmpi");
    let theirs = Observed {
        foreign: vec![foreign("pi-node-0-1", None)],
        ..Observed::default()
    };
    let err = super::super::decide(&j, &p, &theirs, &at(T0)).expect_err("conflict");
    assert_eq!(
        (err.permanent(), err.label()),
        (Some("ObjectConflict"), "object_conflict")
    );
    assert!(
        err.to_string()
            .starts_with("Pod pi-node-0-1 already exists and belongs to no TrainJob (it has no owner)"),
        "{err}"
    );
    let leftover = Observed {
        foreign: vec![foreign("pi-node-0-1", Some("uid-of-an-earlier-pi"))],
        ..Observed::default()
    };
    let err = super::super::decide(&j, &p, &leftover, &at(T0)).expect_err("leftover");
    assert_eq!((err.permanent(), err.label()), (None, "leftover_object"));
    let elsewhere = Observed {
        foreign: vec![foreign("pi-node-0-7", None)],
        ..Observed::default()
    };
    assert_eq!(
        decide_observed(&j, &p, &elsewhere, &at(T0)).create.len(),
        2,
        "a name the job does not need"
    );
}

#[test]
fn a_job_stopped_by_a_permanent_error_fails_and_its_running_pods_go() {
    let (j, _, mut pods) = started(json!({"trainer": {"numNodes": 2}}));
    terminate(&mut pods, "pi-node-0-0", 1, "Error");
    let pods: Vec<Arc<Pod>> = pods.into_iter().map(Arc::new).collect();
    let d = stop(&j, &pods, "ObjectRejected", "the API server rejected it", &at(T0));
    let failed = condition(&d, condition::FAILED).expect("Failed");
    assert_eq!(
        (failed.reason.as_str(), failed.message.as_str()),
        ("ObjectRejected", "the API server rejected it")
    );
    assert_eq!(
        d.delete,
        ["pi-launcher-0-0", "pi-node-0-1"],
        "the failed pod stays for its logs"
    );
    assert_eq!(d.phase, Some(Phase::Failed));
    let finished = with_status(j, &d);
    let again = stop(
        &finished,
        &pods,
        "Other",
        "another error",
        &at("2026-11-25T11:00:00Z"),
    );
    assert_eq!(again.status, d.status, "a finished job keeps its status");
}
