//! Two replicas with leader election, as `config/manager` runs them (`--leader-elect`, client-go's
//! default timing): one leads, the other stands by; a dead leader is replaced once its lease runs
//! out, a stopping one hands the Lease over at once, and one whose Lease is taken stops
//! reconciling. Never do two replicas lead at once, and a job carries on across every handover
//! with the same pods and the same SSH key.
//!
//! One test: every phase needs the one Lease the shipped RBAC lets the operator write.

use trainjob_testbed::support;

use std::sync::atomic::Ordering;
use std::time::Instant;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::ResourceExt;
use kube::api::{Api, PostParams};
use serde_json::json;
use support::jobs::{pods_of, wait_condition, wait_first_pod};
use support::leaders::{Overlap, wait_leads};
use support::{DEADLINE, Identity, Operator, TestNs, bed, client, eventually, http_get};
use trainjob_operator::api::TrainJob;
use trainjob_operator::leader::Timing;

async fn lease(c: &kube::Client) -> Lease {
    Api::<Lease>::namespaced(c.clone(), "trainjob-system")
        .get("trainjob-operator")
        .await
        .expect("the leader Lease")
}

async fn create_job(jobs: &Api<TrainJob>, name: &str, ns: &str) {
    let job: TrainJob = serde_json::from_value(json!({
        "apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"runtimeRef": {"name": "mpi-openmpi"}, "trainer": {"numNodes": 8}},
    }))
    .expect("job");
    jobs.create(&PostParams::default(), &job).await.expect("job");
}

#[tokio::test]
async fn replicas_hand_over_the_lease_and_never_lead_together() {
    bed().apply_kustomization("config/runtimes").expect("runtimes");
    let ns = TestNs::new("ha").await;
    let c = client(Identity::Admin).await;
    let jobs: Api<TrainJob> = Api::namespaced(c.clone(), &ns.name);
    let overlap = Overlap::watch();
    let timing = Timing::default();

    // One of two leads; the other stands by, ready (it serves admission) but not reconciling.
    let a = Operator::start_elected("replica-a", timing.clone());
    let b = Operator::start_elected("replica-b", timing.clone());
    overlap.add("replica-a", &a);
    overlap.add("replica-b", &b);
    let a_leads = eventually("one replica to lead", DEADLINE, || async {
        match (support::leaders::leads(&a), support::leaders::leads(&b)) {
            (true, false) => Ok(true),
            (false, true) => Ok(false),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let ((leader, leader_name), (standby, standby_name)) = if a_leads {
        ((a, "replica-a"), (b, "replica-b"))
    } else {
        ((b, "replica-b"), (a, "replica-a"))
    };
    let ready = http_get(&format!("{}/readyz", standby.http), "*/*").await;
    assert!(
        ready.as_deref().is_ok_and(|r| r.contains("ok: standby")),
        "{ready:?}"
    );
    let held = lease(&c).await.spec.expect("spec");
    assert!(
        held.holder_identity
            .as_deref()
            .is_some_and(|h| h.starts_with(&format!("{leader_name}_"))),
        "{held:?}"
    );

    // The leader dies mid-job: the standby takes over once the lease runs out, and finishes the
    // job with the pods and the key the dead leader made.
    create_job(&jobs, "pi", &ns.name).await;
    wait_first_pod(&c, &ns.name, "pi").await;
    overlap.remove(leader_name);
    let died = Instant::now();
    leader.kill();
    let secrets: Api<Secret> = Api::namespaced(c.clone(), &ns.name);
    let key = secrets
        .get("pi-mpi-ssh-auth")
        .await
        .expect("the Secret comes before any pod");
    let before: Vec<(String, String)> = pods_of(&c, &ns.name, "pi")
        .await
        .iter()
        .map(|p| (p.name_any(), p.uid().unwrap_or_default()))
        .collect();
    wait_leads(
        "the standby to lead after the leader died",
        &standby,
        timing.lease + DEADLINE,
    )
    .await;
    let crash_handover = died.elapsed();
    wait_condition(&jobs, "pi", "Complete").await;
    let after = pods_of(&c, &ns.name, "pi").await;
    // Workers of a Complete job are being removed, so a worker may be gone; none may have been
    // replaced by a pod of the same name.
    for (name, uid) in &before {
        let now = after.iter().find(|p| &p.name_any() == name).and_then(|p| p.uid());
        assert!(now.is_none_or(|now| &now == uid), "{name} was recreated");
    }
    let again = secrets.get("pi-mpi-ssh-auth").await;
    // A finished job's Secret is deleted; while it lives it is the one the first leader made.
    if let Ok(again) = again {
        assert_eq!(
            (again.uid(), again.data),
            (key.uid(), key.data),
            "the SSH key changed"
        );
    }
    let taken = lease(&c).await.spec.expect("spec");
    assert!(
        taken
            .holder_identity
            .as_deref()
            .is_some_and(|h| h.starts_with(&format!("{standby_name}_"))),
        "{taken:?}"
    );
    assert!(
        taken.lease_transitions > held.lease_transitions,
        "{held:?} → {taken:?}"
    );

    // A stopping leader releases the Lease before it exits, and a new standby takes it at once
    // rather than after the lease duration.
    let c_replica = Operator::start_elected("replica-c", timing.clone());
    overlap.add("replica-c", &c_replica);
    let stopping = Instant::now();
    standby.stop();
    let released = lease(&c).await.spec.expect("spec");
    assert_eq!(
        released.holder_identity, None,
        "released on a graceful stop: {released:?}"
    );
    overlap.remove(standby_name);
    wait_leads("the new replica to lead", &c_replica, DEADLINE).await;
    let graceful_handover = stopping.elapsed();
    create_job(&jobs, "pi2", &ns.name).await;
    wait_condition(&jobs, "pi2", "Complete").await;

    // Someone else takes the Lease (as a replica cut off from the API server would find on its
    // return): the leader stops reconciling at its next renewal instead of leading beside it.
    let leases: Api<Lease> = Api::namespaced(c.clone(), "trainjob-system");
    let mut usurped = leases.get("trainjob-operator").await.expect("lease");
    let spec = usurped.spec.get_or_insert_default();
    spec.holder_identity = Some("intruder".into());
    spec.renew_time = Some(MicroTime(k8s_openapi::jiff::Timestamp::now()));
    spec.lease_duration_seconds = Some(3600);
    leases
        .replace("trainjob-operator", &PostParams::default(), &usurped)
        .await
        .expect("take the Lease");
    eventually("the leader to stop leading", DEADLINE, || async {
        if support::leaders::leads(&c_replica) {
            Err("still leading".to_string())
        } else {
            Ok(())
        }
    })
    .await;
    overlap.stop.store(true, Ordering::Relaxed);
    assert_eq!(
        overlap.most.load(Ordering::Relaxed),
        1,
        "two replicas led at the same time"
    );
    eprintln!(
        "handover after the leader died: {} ms (lease {:?}); after a graceful stop: {} ms",
        crash_handover.as_millis(),
        timing.lease,
        graceful_handover.as_millis()
    );
    drop(c_replica);
}
