//! Two replicas with leader election, as `config/manager` runs them (`--leader-elect`, client-go's
//! default timing): one leads, the other stands by; a dead leader is replaced once its lease runs
//! out, a stopping one hands the Lease over at once, and one whose Lease is taken stops
//! reconciling. Never do two replicas lead at once (by the Lease's history and the replicas'
//! writes in the API server's audit log, `support::leaders`), and a job carries on across every
//! handover with the same pods and the same SSH key.
//!
//! One test: every phase needs the one Lease the shipped RBAC lets the operator write.

use trainjob_testbed::support;

use std::time::Instant;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::ResourceExt;
use kube::api::{Api, PostParams};
use serde_json::json;
use support::jobs::{pods_of, wait_condition, wait_first_pod};
use support::leaders::{Leadership, wait_leads};
use support::{DEADLINE, Identity, Operator, TestNs, bed, client, eventually, http_get};
use trainjob_operator::api::TrainJob;
use trainjob_operator::leader::Timing;

async fn lease(c: &kube::Client) -> Lease {
    Api::<Lease>::namespaced(c.clone(), "trainjob-system")
        .get("trainjob-operator")
        .await
        .expect("the leader Lease")
}

async fn holder(c: &kube::Client) -> Option<String> {
    lease(c).await.spec.and_then(|s| s.holder_identity)
}

/// The Lease's history and the replicas' writes so far, once the audit log shows `holder`
/// taking the Lease (the log may trail the response by a moment).
async fn history_until_taken_by(holder: &str) -> Leadership {
    eventually(
        &format!("the audit log to show {holder} taking the Lease"),
        DEADLINE,
        || async {
            let audit = std::fs::read_to_string(bed().audit_log()).map_err(|e| e.to_string())?;
            let history = Leadership::read(&audit);
            if history
                .versions
                .iter()
                .any(|v| v.holder.as_deref() == Some(holder))
            {
                Ok(history)
            } else {
                Err(history.summary())
            }
        },
    )
    .await
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
    let timing = Timing::default();

    // One of two leads; the other stands by, ready (it serves admission) but not reconciling.
    let a = Operator::start_elected("replica-a", timing.clone());
    let b = Operator::start_elected("replica-b", timing.clone());
    let a_leads = eventually("one replica to lead", DEADLINE, || async {
        match (support::leaders::leads(&a), support::leaders::leads(&b)) {
            (true, false) => Ok(true),
            (false, true) => Ok(false),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let (leader, standby) = if a_leads { (a, b) } else { (b, a) };
    // Its HTTP server may still be starting (connection refused) when the other one leads.
    eventually(
        "the standby to say it is ready as a standby",
        DEADLINE,
        || async {
            let ready = http_get(&format!("{}/readyz", standby.http), "*/*").await;
            match ready {
                Ok(r) if r.contains("ok: standby") => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    let held = lease(&c).await.spec.expect("spec");
    assert_eq!(held.holder_identity.as_ref(), Some(&leader.identity), "{held:?}");

    // The leader dies mid-job: the standby takes over once the lease runs out, and finishes the
    // job with the pods and the key the dead leader made.
    create_job(&jobs, "pi", &ns.name).await;
    wait_first_pod(&c, &ns.name, "pi").await;
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
    assert_eq!(
        taken.holder_identity.as_ref(),
        Some(&standby.identity),
        "{taken:?}"
    );
    assert!(
        taken.lease_transitions > held.lease_transitions,
        "{held:?} → {taken:?}"
    );

    // A stopping leader releases the Lease before it exits, and a new standby takes it at once
    // rather than after the lease duration. replica-c campaigns all along, so by the time the
    // stopped replica is gone the Lease may be free or already replica-c's; never the stopped
    // replica's.
    let c_replica = Operator::start_elected("replica-c", timing.clone());
    let stopping = Instant::now();
    let stopped = standby.identity.clone();
    standby.stop();
    let now = holder(&c).await;
    assert!(
        now.is_none() || now.as_ref() == Some(&c_replica.identity),
        "the stopped replica {stopped} still holds the Lease: {now:?}"
    );
    eventually("replica-c to take the Lease", DEADLINE, || async {
        let now = holder(&c).await;
        if now.as_ref() == Some(&c_replica.identity) {
            Ok(())
        } else {
            Err(format!("{now:?}"))
        }
    })
    .await;
    let graceful_handover = stopping.elapsed();
    // What happened in between, from the Lease's history: the stopped replica's last write
    // released it, and replica-c took it from that release, not from an expired lease.
    let history = history_until_taken_by(&c_replica.identity).await;
    let took = history
        .versions
        .iter()
        .position(|v| v.holder.as_ref() == Some(&c_replica.identity))
        .expect("replica-c's taking the Lease");
    let before = &history.versions[took.saturating_sub(1)];
    assert_eq!(
        (before.writer.as_str(), before.holder.as_deref()),
        (stopped.as_str(), None),
        "replica-c took the Lease from {before:?}, not from the stopped replica's release"
    );
    // And so far, one leader at a time: the dead leader, the standby, replica-c, each writing
    // only while it held the Lease.
    let two = history.violations();
    assert!(two.is_empty(), "{}:\n{}", history.summary(), two.join("\n"));
    assert!(history.tenures().len() >= 3, "{}", history.summary());
    wait_leads("the new replica to lead", &c_replica, DEADLINE).await;
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
    // It gives up as a process does, by exiting (Kubernetes would start it again).
    eventually("the leader to give up and exit", DEADLINE, || async {
        if c_replica.exited() {
            Ok(())
        } else {
            Err(format!("leading: {}", support::leaders::leads(&c_replica)))
        }
    })
    .await;
    eprintln!(
        "handover after the leader died: {} ms (lease {:?}); after a graceful stop: {} ms; {}",
        crash_handover.as_millis(),
        timing.lease,
        graceful_handover.as_millis(),
        history.summary()
    );
    drop(c_replica);
}
