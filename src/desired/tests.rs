//! What a decision is built into: children only where the caches show they are missing or have
//! drifted, a held status, the key's retirement, one collection delete where it can be.

use std::sync::Arc;

use serde_json::json;

use super::*;
use crate::fixtures::{job, observed_pod, plan};
use crate::lifecycle::decide;
use crate::observed::StatusHold;
use crate::ssh::KeyAlgorithm;

fn at(s: &str) -> Time {
    Time(s.parse().expect("timestamp"))
}

const T0: &str = "2026-11-25T10:00:05Z";

fn keys() -> KeyPair {
    KeyPair::generate(KeyAlgorithm::Ed25519, "test").expect("key")
}

#[test]
fn a_new_job_gets_every_child_before_its_workers_and_a_running_one_only_what_drifted() {
    let j = job(json!({"trainer": {"numNodes": 2}}));
    let mut p = plan(&j, "mpi-openmpi");
    p.cluster.network_policies = true;
    let new = Observed {
        fresh: true,
        ..Observed::default()
    };
    let d = decide(&j, &p, &new, &at(T0)).expect("decision");
    assert!(needs_key(&d, &new));
    let o = objects(&j, &p, &new, &d, Some(&keys())).expect("objects");
    assert_eq!(
        o.snapshot.and_then(|s| s.metadata.name).as_deref(),
        Some("pi-runtime-snapshot")
    );
    assert_eq!(
        o.secret.and_then(|s| s.metadata.name).as_deref(),
        Some("pi-mpi-ssh-auth")
    );
    assert!(
        matches!(
            (&o.hostfile, &o.service),
            (Some(Write::Create(_)), Some(Write::Create(_)))
        ),
        "none cached: created"
    );
    assert!(o.network_policy.is_some());
    let names: Vec<_> = o.pods.iter().filter_map(|p| p.metadata.name.as_deref()).collect();
    assert_eq!(names, ["pi-node-0-0", "pi-node-0-1"]);
    assert!(o.gang.is_none() && o.plugin_group.is_none(), "no gang policy");

    // The next pass: the children are cached as built, the workers exist.
    let workers: Vec<_> = o
        .pods
        .iter()
        .map(|p| Arc::new(observed_pod(p, "Pending", false)))
        .collect();
    let running = Observed {
        pods: workers,
        secret: true,
        hostfile: Some(Arc::new(hostfile::configmap(&j, &p))),
        service: Some(Arc::new(pods::service(&j, &p))),
        ..Observed::default()
    };
    let d = decide(&j, &p, &running, &at(T0)).expect("decision");
    assert!(!needs_key(&d, &running));
    let o = objects(&j, &p, &running, &d, None).expect("objects");
    assert!(o.snapshot.is_none() && o.secret.is_none() && o.network_policy.is_none());
    assert!(o.hostfile.is_none() && o.service.is_none(), "no drift");
    assert!(o.pods.is_empty());
    let mut drifted = running.clone();
    drifted.hostfile = Some(Arc::new(ConfigMap::default()));
    let o = objects(&j, &p, &drifted, &d, None).expect("objects");
    assert!(
        matches!(o.hostfile, Some(Write::Apply(_))),
        "a hostfile that drifted is applied again"
    );
}

fn status(value: serde_json::Value) -> TrainJobStatus {
    serde_json::from_value(value).expect("status")
}

#[test]
fn pod_counts_alone_wait_for_the_hold_and_conditions_never_do() {
    let mut j = job(json!({}));
    j.status = Some(status(
        json!({"jobsStatus": [{"name": "node", "active": 1, "ready": 0, "succeeded": 0, "failed": 0, "suspended": 0}]}),
    ));
    let held = Observed {
        status_hold: StatusHold {
            milestone: Some(Duration::from_secs(3)),
            counts: Some(Duration::from_secs(20)),
        },
        ..Observed::default()
    };
    let counts = Decision {
        status: status(
            json!({"jobsStatus": [{"name": "node", "active": 2, "ready": 0, "succeeded": 0, "failed": 0, "suspended": 0}]}),
        ),
        ..Decision::default()
    };
    let u = updates(&j, &held, &counts, false, &at(T0));
    assert_eq!((u.status, u.held), (None, Some(Duration::from_secs(20))));
    let milestone = Decision {
        milestone: true,
        ..counts.clone()
    };
    let u = updates(&j, &held, &milestone, false, &at(T0));
    assert_eq!(
        (u.status, u.held),
        (None, Some(Duration::from_secs(3))),
        "a milestone waits the least"
    );
    let u = updates(&j, &Observed::default(), &counts, false, &at(T0));
    assert_eq!(u.status.as_ref(), Some(&counts.status), "no hold: written now");
    let suspended = Decision {
        status: status(
            json!({"conditions": [{"type": "Suspended", "status": "True", "reason": "Suspended",
            "message": "", "lastTransitionTime": T0}]}),
        ),
        ..Decision::default()
    };
    let u = updates(&j, &held, &suspended, false, &at(T0));
    assert!(
        u.status.is_some() && u.held.is_none(),
        "a condition is never held"
    );
    let same = Decision {
        status: j.status.clone().unwrap_or_default(),
        ..Decision::default()
    };
    assert_eq!(updates(&j, &held, &same, false, &at(T0)).status, None);
}

#[test]
fn a_finished_jobs_key_is_deleted_unless_kept_retired_or_long_gone() {
    let j = job(json!({}));
    let complete = |when: &str| Decision {
        status: status(
            json!({"conditions": [{"type": "Complete", "status": "True", "reason": "AllJobsCompleted",
            "message": "", "lastTransitionTime": when}]}),
        ),
        ..Decision::default()
    };
    let now = at("2026-11-25T12:00:00Z");
    let key = |j: &TrainJob, o: &Observed, d: &Decision, keep: bool| updates(j, o, d, keep, &now).key;
    let fresh = Observed::default();
    assert_eq!(
        key(&j, &fresh, &complete("2026-11-25T11:59:00Z"), false),
        Key::Delete
    );
    assert_eq!(
        key(&j, &fresh, &complete("2026-11-25T11:59:00Z"), true),
        Key::Keep
    );
    let retired = Observed {
        key_retired: true,
        ..Observed::default()
    };
    assert_eq!(
        key(&j, &retired, &complete("2026-11-25T11:59:00Z"), false),
        Key::Keep
    );
    // Finished two hours ago, as a restarted operator finds it: its key went then.
    let mut old = j.clone();
    old.status = Some(complete("2026-11-25T10:00:00Z").status);
    assert_eq!(
        key(&old, &fresh, &complete("2026-11-25T10:00:00Z"), false),
        Key::Forget
    );
    // But the reconcile that finishes it deletes it, however old the condition says it is.
    assert_eq!(
        key(&j, &fresh, &complete("2026-11-25T10:00:00Z"), false),
        Key::Delete
    );
    assert_eq!(key(&j, &fresh, &Decision::default(), false), Key::Keep, "running");
}

fn worker(name: &str, attempt: &str, phase: &str) -> Arc<Pod> {
    Arc::new(
        serde_json::from_value(json!({
            "metadata": {"name": name, "uid": format!("uid-{name}"), "labels": {
                "trainer.kubeflow.org/job-role": "node", "trainer.kubeflow.org/restart-attempt": attempt}},
            "status": {"phase": phase},
        }))
        .expect("pod"),
    )
}

#[test]
fn exactly_the_live_workers_of_one_attempt_go_in_one_collection_delete() {
    let j = job(json!({}));
    let pods = vec![
        worker("pi-node-0-0", "0", "Running"),
        worker("pi-node-0-1", "0", "Running"),
    ];
    let observed = Observed {
        pods: pods.clone(),
        ..Observed::default()
    };
    let both = vec!["pi-node-0-0".to_string(), "pi-node-0-1".to_string()];
    assert_eq!(
        delete(&j, &observed, &both),
        Delete::Workers {
            labels: "trainer.kubeflow.org/trainjob-name=pi,trainer.kubeflow.org/job-role=node,trainer.kubeflow.org/restart-attempt=0".into(),
            fields: "status.phase!=Succeeded,status.phase!=Failed".into(),
        }
    );
    let one = vec!["pi-node-0-0".to_string()];
    assert_eq!(
        delete(&j, &observed, &one),
        Delete::Each(vec![PodDelete {
            name: "pi-node-0-0".into(),
            uid: Some("uid-pi-node-0-0".into()),
            force: false,
        }])
    );
    let foreign = Observed {
        foreign: vec![worker("pi-node-0-5", "0", "Running")],
        ..observed.clone()
    };
    assert!(
        matches!(delete(&j, &foreign, &both), Delete::Each(pods) if pods.len() == 2),
        "a pod with the job's labels that is not its own must not be selected"
    );
    let mixed = Observed {
        pods: vec![
            worker("pi-node-0-0", "0", "Running"),
            worker("pi-node-0-1", "1", "Running"),
        ],
        ..Observed::default()
    };
    assert!(
        matches!(delete(&j, &mixed, &both), Delete::Each(_)),
        "two attempts"
    );
}

#[test]
fn pods_on_a_lost_node_are_deleted_by_force_and_one_by_one() {
    let j = job(json!({}));
    let on = |name: &str, node: &str| {
        let mut pod = (*worker(name, "0", "Running")).clone();
        pod.spec = Some(serde_json::from_value(json!({"containers": [], "nodeName": node})).expect("spec"));
        Arc::new(pod)
    };
    let observed = Observed {
        pods: vec![on("pi-node-0-0", "n0"), on("pi-node-0-1", "n1")],
        lost_nodes: [("n1".to_string(), "NodeStatusUnknown".to_string())].into(),
        ..Observed::default()
    };
    let both = vec!["pi-node-0-0".to_string(), "pi-node-0-1".to_string()];
    let Delete::Each(pods) = delete(&j, &observed, &both) else {
        panic!("a collection delete cannot force");
    };
    let forced: Vec<(&str, bool)> = pods.iter().map(|p| (p.name.as_str(), p.force)).collect();
    assert_eq!(forced, [("pi-node-0-0", false), ("pi-node-0-1", true)]);
}

#[test]
fn a_job_with_initializers_gets_its_claim_and_its_initializers_first() {
    let j = job(json!({"runtimeRef": {"name": "mpi-openmpi-initializers"}}));
    let mut p = plan(&j, "mpi-openmpi-initializers");
    let new = Observed::default();
    let d = decide(&j, &p, &new, &at(T0)).expect("decision");
    let o = objects(&j, &p, &new, &d, Some(&keys())).expect("objects");
    let names: Vec<_> = o.pods.iter().filter_map(|p| p.metadata.name.as_deref()).collect();
    assert_eq!(names, ["pi-dataset-initializer-0-0", "pi-model-initializer-0-0"]);
    let [claim] = o.claims.as_slice() else {
        panic!("one claim: {:?}", o.claims)
    };
    assert_eq!(claim.metadata.name.as_deref(), Some("initializer-pi"));
    let labels = claim.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels.get(names::TRAINJOB_NAME_LABEL).map(String::as_str),
        Some("pi")
    );
    let owners = claim.metadata.owner_references.clone().unwrap_or_default();
    assert_eq!(owners.len(), 1, "deleted with the job");
    let storage = claim
        .spec
        .as_ref()
        .and_then(|s| s.resources.as_ref()?.requests.as_ref()?.get("storage").cloned());
    assert_eq!(storage.map(|q| q.0).as_deref(), Some("1Gi"));

    p.claims[0].retain = true;
    let o = objects(&j, &p, &new, &d, None).expect("objects");
    assert!(
        o.claims[0].metadata.owner_references.is_none(),
        "Retain: the claim outlives the job"
    );

    // Once pods exist, the claims are not made again.
    let pods = o
        .pods
        .iter()
        .map(|p| Arc::new(observed_pod(p, "Pending", false)))
        .collect();
    let later = Observed {
        pods,
        secret: true,
        ..Observed::default()
    };
    let d = decide(&j, &p, &later, &at(T0)).expect("decision");
    assert!(
        objects(&j, &p, &later, &d, None)
            .expect("objects")
            .claims
            .is_empty()
    );
}
