//! Stalls: what the kubelet and the scheduler report on pods that do not get going reaches the
//! job as `Stalled` with the pod, the container, the cause and the fix; the policy per kind
//! (fail now, fail after `--stall-timeout`, wait); recovery clears it; unchanged rewrites nothing.

use std::time::Duration;

use serde_json::{Value, json};

use super::*;

/// The job's workers as created, `Pending`, each with `status` merged in.
fn pending_workers(status: Value) -> (TrainJob, Plan, Vec<Pod>) {
    let j = job(json!({"trainer": {"numNodes": 2}}));
    let p = plan(&j, "mpi-openmpi");
    let d = decide(&j, &p, &[], &at(T0));
    let pods = created(&j, &p, &d)
        .into_iter()
        .map(|mut pod| {
            let mut merged = serde_json::to_value(&pod.status).expect("status");
            merge(&mut merged, &status);
            pod.status = Some(serde_json::from_value(merged).expect("status"));
            pod
        })
        .collect();
    (with_status(j, &d), p, pods)
}

fn merge(into: &mut Value, from: &Value) {
    match (into, from) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (a, b) => *a = b.clone(),
    }
}

fn waiting(reason: &str, message: &str) -> Value {
    json!({"containerStatuses": [{"name": "node", "image": "registry.example/mpi:typo", "imageID": "",
        "ready": false, "restartCount": 0, "state": {"waiting": {"reason": reason, "message": message}}}]})
}

fn stalled(d: &Decision) -> (String, String, String) {
    let c = condition(d, condition::STALLED).expect("Stalled");
    (c.status.clone(), c.reason.clone(), c.message.clone())
}

const PULL: &str = "failed to pull and unpack image \"registry.example/mpi:typo\": not found";

#[test]
fn an_image_that_cannot_be_pulled_stalls_the_job_then_fails_it_after_the_timeout() {
    let (j, p, pods) = pending_workers(waiting("ErrImagePull", PULL));
    let d = decide(&j, &p, &pods, &at(T0));
    let (status, reason, message) = stalled(&d);
    assert_eq!((status.as_str(), reason.as_str()), ("True", "ImagePullBackOff"));
    assert_eq!(
        message,
        format!(
            "worker pod pi-node-0-0: container node cannot pull image \"registry.example/mpi:typo\": {PULL} (1 more pod alike); check the image name and tag (spec.trainer.image, or the runtime's), that the nodes can reach its registry, and the pull secrets (imagePullSecrets)"
        )
    );
    assert_eq!(
        d.requeue_after,
        Some(Duration::from_secs(300)),
        "woken when the timeout passes"
    );
    let events = notes(&j, &p, &d);
    assert!(
        events.iter().any(|n| n.severity == Severity::Warning
            && n.reason == "ImagePullBackOff"
            && n.message == message),
        "{events:?}"
    );

    // Back-off between two tries reads the same: no new write, no new Event.
    let j = with_status(j, &d);
    let (_, _, backoff) = pending_workers(waiting(
        "ImagePullBackOff",
        &format!("Back-off pulling image \"registry.example/mpi:typo\": ErrImagePull: {PULL}"),
    ));
    let again = decide(&j, &p, &backoff, &at("2026-11-25T10:01:05Z"));
    assert_eq!(again.status, d.status, "nothing to write");
    assert!(notes(&j, &p, &again).is_empty());
    assert_eq!(again.requeue_after, Some(Duration::from_secs(240)));

    let late = decide(&j, &p, &pods, &at("2026-11-25T10:05:05Z"));
    let failed = condition(&late, condition::FAILED).expect("Failed");
    assert_eq!(failed.reason, "ImagePullBackOff");
    assert!(
        failed
            .message
            .ends_with("; the job was stalled for 300s (--stall-timeout)"),
        "{}",
        failed.message
    );
    assert_eq!(late.delete.len(), 2, "its pods go");
}

#[test]
fn an_invalid_image_name_fails_at_once_naming_the_launcher() {
    let (j, p, mut pods) = started(json!({"trainer": {"numNodes": 2}}));
    let launcher = pods
        .iter_mut()
        .find(|p| p.metadata.name.as_deref() == Some("pi-launcher-0-0"))
        .expect("launcher");
    let mut status = serde_json::to_value(&launcher.status).expect("status");
    merge(&mut status, &json!({"phase": "Pending"}));
    merge(
        &mut status,
        &waiting(
            "InvalidImageName",
            "Failed to apply default image tag \"Bad:Image:x\": invalid reference format",
        ),
    );
    launcher.status = Some(serde_json::from_value(status).expect("status"));
    let d = decide(&j, &p, &pods, &at(T0));
    let failed = condition(&d, condition::FAILED).expect("Failed");
    assert_eq!(failed.reason, "InvalidImageName");
    assert!(
        failed.message.starts_with(
            "launcher pod pi-launcher-0-0: container node has an invalid image name \"registry.example/mpi:typo\": Failed to apply default image tag"
        ),
        "{}",
        failed.message
    );
    assert!(
        condition(&d, condition::STALLED).is_none(),
        "failing at once is not a stall"
    );
}

#[test]
fn a_missing_secret_key_names_itself_and_recovery_clears_the_condition() {
    let message = "couldn't find key token in Secret ns/creds";
    let (j, p, pods) = pending_workers(waiting("CreateContainerConfigError", message));
    let d = decide(&j, &p, &pods, &at(T0));
    let (_, reason, text) = stalled(&d);
    assert_eq!(reason, "CreateContainerConfigError");
    assert!(
        text.starts_with(&format!("worker pod pi-node-0-0: container node cannot be created: {message} (1 more pod alike); create the missing Secret")),
        "{text}"
    );
    // The Secret appears: the workers run, the condition turns False and says so once.
    let j = with_status(j, &d);
    let running: Vec<Pod> = pods.iter().map(|p| observed_pod(p, "Running", true)).collect();
    let d = decide(&j, &p, &running, &at("2026-11-25T10:02:00Z"));
    let (status, reason, _) = stalled(&d);
    assert_eq!((status.as_str(), reason.as_str()), ("False", "Recovered"));
    assert_eq!(d.create.len(), 1, "the launcher comes");
    let events = notes(&j, &p, &d);
    assert!(
        events
            .iter()
            .any(|n| n.reason == "Recovered" && n.severity == Severity::Normal),
        "{events:?}"
    );
    assert_eq!(d.requeue_after, None, "no timeout to wait for");
}

#[test]
fn a_crash_looping_sidecar_tells_its_exit_code_and_restarts() {
    let (j, p, pods) = pending_workers(
        json!({"initContainerStatuses": [{"name": "proxy", "image": "proxy", "imageID": "",
        "ready": false, "restartCount": 4, "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 1m20s restarting failed container=proxy"}},
        "lastState": {"terminated": {"exitCode": 2, "reason": "Error"}}}]}),
    );
    let d = decide(&j, &p, &pods, &at(T0));
    let (_, reason, text) = stalled(&d);
    assert_eq!(reason, "CrashLoopBackOff");
    assert!(
        text.starts_with("worker pod pi-node-0-0: container proxy keeps crashing: exited with code 2 (Error), restarted 4 times (its log: `kubectl logs pi-node-0-0 -c proxy --previous`)"),
        "{text}"
    );
}

#[test]
fn unschedulable_pods_wait_with_the_schedulers_words_and_a_claim_is_named() {
    let scheduled_false = |message: &str| json!({"conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message}]});
    let gpus = "0/4 nodes are available: 4 Insufficient nvidia.com/gpu. preemption: 0/4 nodes are available: 4 No preemption victims found for incoming pod.";
    let (j, p, pods) = pending_workers(scheduled_false(gpus));
    let d = decide(&j, &p, &pods, &at(T0));
    let (_, reason, text) = stalled(&d);
    assert_eq!(reason, "Unschedulable");
    assert!(
        text.starts_with(&format!(
            "worker pod pi-node-0-0: cannot be scheduled: {gpus} (1 more pod alike); free or add capacity"
        )),
        "{text}"
    );
    // It waits: a day later it still only says so.
    let d = decide(&with_status(j, &d), &p, &pods, &at("2026-11-26T10:00:05Z"));
    assert!(condition(&d, condition::FAILED).is_none());
    assert_eq!(d.requeue_after, None);

    let (j, p, mut pods) = pending_workers(scheduled_false(
        "0/4 nodes are available: pod has unbound immediate PersistentVolumeClaims. preemption: not eligible.",
    ));
    let spec = pods[0].spec.as_mut().expect("spec");
    spec.volumes = Some(vec![
        serde_json::from_value(json!({"name": "data", "persistentVolumeClaim": {"claimName": "imagenet"}}))
            .expect("volume"),
    ]);
    assert_eq!(crate::lifecycle::claims_awaited(&pods[0]), ["imagenet"]);
    assert!(
        crate::lifecycle::claims_awaited(&pods[1]).is_empty(),
        "mounts none"
    );
    let claim = serde_json::from_value(json!({"metadata": {"name": "imagenet"},
        "spec": {"storageClassName": "fast"}, "status": {"phase": "Pending"}}))
    .expect("claim");
    let observed = Observed {
        claims: [("imagenet".to_string(), Some(claim))].into(),
        ..seeing(&pods)
    };
    let d = decide_observed(&j, &p, &observed, &at(T0));
    let (_, reason, text) = stalled(&d);
    assert_eq!(reason, "VolumeClaimNotBound", "worse than room: told first");
    assert!(
        text.starts_with("worker pod pi-node-0-0: waits for its volume claim \"imagenet\" (StorageClass \"fast\", Pending): 0/4 nodes"),
        "{text}"
    );
    let missing = Observed {
        claims: [("imagenet".to_string(), None)].into(),
        ..seeing(&pods)
    };
    let text = stalled(&decide_observed(&j, &p, &missing, &at(T0))).2;
    assert!(text.contains("volume claim \"imagenet\" (not found): "), "{text}");
}

#[test]
fn a_native_gang_tells_its_own_scheduling() {
    let j = job(json!({"trainer": {"numNodes": 2}}));
    let p = crate::fixtures::plan_with(&j, "mpi-openmpi", crate::fixtures::launcher_in_native_gang);
    let d = decide(&j, &p, &[], &at(T0));
    let mut pods = created(&j, &p, &d);
    for pod in &mut pods {
        let mut status = serde_json::to_value(&pod.status).expect("status");
        merge(
            &mut status,
            &json!({"conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/4 nodes are available"}]}),
        );
        pod.status = Some(serde_json::from_value(status).expect("status"));
    }
    let d = decide(&with_status(j, &d), &p, &pods, &at(T0));
    assert!(condition(&d, condition::STALLED).is_none());
    assert_eq!(
        condition(&d, condition::GANG_SCHEDULED).map(|c| c.status.as_str()),
        Some("False")
    );
}

#[test]
fn quoted_messages_are_one_line_cut_and_never_key_material() {
    let long = format!("line one\n\tline two {}", "x".repeat(400));
    let cleaned = crate::lifecycle::stall::clean(&long);
    assert!(cleaned.starts_with("line one line two x"));
    assert_eq!(cleaned.chars().count(), 301, "300 characters and an ellipsis");
    assert!(!crate::lifecycle::stall::clean("-----BEGIN OPENSSH PRIVATE KEY----- abc").contains("abc"));
}

#[test]
fn a_zero_timeout_waits_for_ever() {
    let (j, mut p, pods) = pending_workers(waiting("ErrImagePull", PULL));
    p.cluster.stall_timeout = Duration::ZERO;
    let d = decide(&j, &p, &pods, &at(T0));
    let d = decide(&with_status(j, &d), &p, &pods, &at("2026-11-26T10:00:05Z"));
    assert!(condition(&d, condition::FAILED).is_none());
    assert_eq!(stalled(&d).1, "ImagePullBackOff");
}

/// Between two back-offs a crash-looping sidecar runs a moment: that is no recovery, and the
/// stall (and its timeout) goes on. Once it has run a minute, it has recovered.
#[test]
fn a_sidecar_running_a_moment_between_crashes_still_crash_loops() {
    let running_since = |started: &str| {
        json!({"initContainerStatuses": [{"name": "proxy", "image": "proxy", "imageID": "",
            "ready": true, "restartCount": 3, "state": {"running": {"startedAt": started}},
            "lastState": {"terminated": {"exitCode": 2, "reason": "Error"}}}]})
    };
    let (j, p, pods) = pending_workers(running_since("2026-11-25T10:00:00Z"));
    let d = decide(&j, &p, &pods, &at(T0));
    assert_eq!(stalled(&d).1, "CrashLoopBackOff");
    let d = decide(&with_status(j, &d), &p, &pods, &at("2026-11-25T10:01:05Z"));
    assert_eq!(
        (stalled(&d).0.as_str(), stalled(&d).1.as_str()),
        ("False", "Recovered")
    );
}
