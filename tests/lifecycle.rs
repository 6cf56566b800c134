//! A job's life beyond the happy path, against the real control plane: failures, restarts,
//! suspension, deadlines, deletion, runtime edits, and jobs left to another controller. Every
//! outcome is a condition and an Event whose message names the pod, the cause and the fix.

use trainjob_testbed::support;

use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use support::jobs::{
    EXIT, HOLD, PI_PODS, annotate, create_job, pod_meta, pods_of, running, runtime, setup, wait_condition,
    wait_event, wait_pods,
};
use support::{DEADLINE, Identity, TestNs, client, eventually, operator};
use trainjob_operator::api::TrainingRuntime;

#[tokio::test]
async fn launcher_failure_fails_the_job_with_the_exit_code() {
    let (ns, c) = setup("lfail").await;
    runtime(&c, &ns.name, "mpi-openmpi", "failing", |spec| {
        pod_meta(spec, "launcher")["annotations"][EXIT] = json!("3");
    })
    .await;
    let jobs = create_job(&c, &ns.name, "pi", "failing", json!({})).await;
    let (_, failed) = wait_condition(&jobs, "pi", "Failed").await;
    assert_eq!(failed.reason, "FailedJobs");
    assert!(
        failed
            .message
            .contains("pod pi-launcher-0-0 failed: container node exited with code 3"),
        "{}",
        failed.message
    );
    // Running workers are stopped; the failed launcher stays for its logs.
    wait_pods(&c, &ns.name, "pi", &["pi-launcher-0-0"]).await;
    secret_gone(&c, &ns.name, "pi").await;
}

/// Waits until the job's SSH Secret is gone: a key lives no longer than its job.
async fn secret_gone(c: &kube::Client, ns: &str, job: &str) {
    let secrets: Api<Secret> = Api::namespaced(c.clone(), ns);
    let name = format!("{job}-mpi-ssh-auth");
    eventually(&format!("Secret {name} to be deleted"), DEADLINE, || async {
        match secrets.get_opt(&name).await {
            Ok(None) => Ok(()),
            other => Err(format!("{:?}", other.map(|s| s.map(|s| s.metadata.uid)))),
        }
    })
    .await;
}

#[tokio::test]
async fn a_complete_job_keeps_its_launcher_but_not_its_key() {
    let (ns, c) = setup("keyhygiene").await;
    runtime(&c, &ns.name, "mpi-openmpi", "openmpi", |_| {}).await;
    let jobs = create_job(&c, &ns.name, "pi", "openmpi", json!({})).await;
    wait_condition(&jobs, "pi", "Complete").await;
    secret_gone(&c, &ns.name, "pi").await;
    wait_pods(&c, &ns.name, "pi", &["pi-launcher-0-0"]).await;
}

#[tokio::test]
async fn worker_failure_restarts_the_gang_once_then_succeeds() {
    let (ns, c, jobs) = running(
        "restart",
        |rt| rt["template"]["spec"]["failurePolicy"] = json!({"maxRestarts": 1}),
        json!({}),
    )
    .await;
    let first = pods_of(&c, &ns.name, "pi").await;
    let first_uids: Vec<_> = first.iter().map(|p| p.uid()).collect();
    annotate(&c, &ns.name, "pi-node-0-1", EXIT, Some("1")).await;

    // Same names, new pods, attempt 1.
    let second = eventually("the gang to be recreated", DEADLINE, || async {
        let pods = wait_pods(&c, &ns.name, "pi", &PI_PODS).await;
        let fresh = pods.iter().all(|p| {
            !first_uids.contains(&p.uid())
                && p.labels()
                    .get("trainer.kubeflow.org/restart-attempt")
                    .map(String::as_str)
                    == Some("1")
        });
        if fresh {
            Ok(pods)
        } else {
            Err(format!(
                "{:?}",
                pods.iter()
                    .map(|p| (
                        p.name_any(),
                        p.labels().get("trainer.kubeflow.org/restart-attempt").cloned()
                    ))
                    .collect::<Vec<_>>()
            ))
        }
    })
    .await;
    assert_eq!(second.len(), 3);
    assert_eq!(
        jobs.get("pi").await.expect("job").status.and_then(|s| s.restarts),
        Some(1)
    );
    annotate(&c, &ns.name, "pi-launcher-0-0", HOLD, None).await;
    let (job, _) = wait_condition(&jobs, "pi", "Complete").await;
    assert!(
        job.status
            .as_ref()
            .is_some_and(|s| !s.conditions.iter().any(|c| c.type_ == "Failed"))
    );
    wait_event(&c, &ns.name, "pi", "Restarting", |r, n| {
        r == "Restarting" && n.contains("pod pi-node-0-1 failed")
    })
    .await;
}

#[tokio::test]
async fn worker_failure_without_restarts_fails_naming_the_worker() {
    let (ns, c, jobs) = running("wfail", |_| {}, json!({})).await;
    annotate(
        &c,
        &ns.name,
        "pi-node-0-0",
        "kwok.trainjob.test/reason",
        Some("OOMKilled"),
    )
    .await;
    annotate(&c, &ns.name, "pi-node-0-0", EXIT, Some("137")).await;
    let (_, failed) = wait_condition(&jobs, "pi", "Failed").await;
    assert_eq!(failed.reason, "FailedJobs");
    assert!(
        failed
            .message
            .contains("pod pi-node-0-0 failed: container node exited with code 137 (OOMKilled)"),
        "{}",
        failed.message
    );
    assert!(
        failed.message.contains("raise the memory limit"),
        "{}",
        failed.message
    );
}

#[tokio::test]
async fn suspend_and_resume_mid_run() {
    let (ns, c, jobs) = running("suspend", |_| {}, json!({})).await;
    let secret_uid = Api::<Secret>::namespaced(c.clone(), &ns.name)
        .get("pi-mpi-ssh-auth")
        .await
        .expect("secret")
        .uid();

    jobs.patch(
        "pi",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"suspend": true}})),
    )
    .await
    .expect("suspend");
    let (_, suspended) = wait_condition(&jobs, "pi", "Suspended").await;
    assert_eq!(suspended.reason, "Suspended");
    wait_pods(&c, &ns.name, "pi", &[]).await;
    eventually("jobsStatus to show no active Jobs", DEADLINE, || async {
        let job = jobs.get("pi").await.map_err(|e| e.to_string())?;
        let js = job.status.map(|s| s.jobs_status).unwrap_or_default();
        if !js.is_empty() && js.iter().all(|j| j.active == 0 && j.suspended == 1) {
            Ok(())
        } else {
            Err(format!("{js:?}"))
        }
    })
    .await;

    jobs.patch(
        "pi",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"suspend": false}})),
    )
    .await
    .expect("resume");
    wait_pods(&c, &ns.name, "pi", &PI_PODS).await;
    let job = jobs.get("pi").await.expect("job");
    let cond = job
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Suspended"))
        .expect("Suspended");
    assert_eq!((cond.status.as_str(), cond.reason.as_str()), ("False", "Resumed"));
    let again = Api::<Secret>::namespaced(c.clone(), &ns.name)
        .get("pi-mpi-ssh-auth")
        .await
        .expect("secret");
    assert_eq!(again.uid(), secret_uid, "the SSH key survives suspension");
}

#[tokio::test]
async fn missing_runtime_and_reserved_env_fail_with_actionable_messages() {
    let (ns, c) = setup("invalid").await;
    let jobs = create_job(&c, &ns.name, "ghost", "does-not-exist", json!({})).await;
    let (_, failed) = wait_condition(&jobs, "ghost", "Failed").await;
    assert_eq!(failed.reason, "RuntimeNotFound");
    assert!(
        failed.message.contains(&format!(
            "TrainingRuntime \"does-not-exist\" not found in namespace {}",
            ns.name
        )),
        "{}",
        failed.message
    );

    runtime(&c, &ns.name, "mpi-openmpi", "openmpi", |_| {}).await;
    create_job(
        &c,
        &ns.name,
        "reserved",
        "openmpi",
        json!({"trainer": {"env": [{"name": "OMPI_MCA_orte_default_hostfile", "value": "/tmp/h"}]}}),
    )
    .await;
    let (_, failed) = wait_condition(&jobs, "reserved", "Failed").await;
    assert_eq!(failed.reason, "InvalidSpec");
    assert!(
        failed
            .message
            .contains("spec.trainer.env sets [\"OMPI_MCA_orte_default_hostfile\"]"),
        "{}",
        failed.message
    );
    assert!(pods_of(&c, &ns.name, "reserved").await.is_empty());
}

#[tokio::test]
async fn active_deadline_fails_a_running_job() {
    let (ns, c, jobs) = running("deadline", |_| {}, json!({"activeDeadlineSeconds": 2})).await;
    let (_, failed) = wait_condition(&jobs, "pi", "Failed").await;
    assert_eq!(failed.reason, "DeadlineExceeded");
    assert!(
        failed
            .message
            .contains("of the allowed 2s (spec.activeDeadlineSeconds)"),
        "{}",
        failed.message
    );
    wait_pods(&c, &ns.name, "pi", &[]).await;
}

#[tokio::test]
async fn deleting_the_job_removes_every_child() {
    deleting_removes_every_child("delete", &DeleteParams::foreground()).await;
}

/// Without a finalizer the operator never reconciles the deleted job: the watch's delete event
/// alone must stop the active gauge counting it.
#[tokio::test]
async fn deleting_the_job_in_the_background_removes_every_child() {
    deleting_removes_every_child("bgdelete", &DeleteParams::background()).await;
}

async fn deleting_removes_every_child(prefix: &str, how: &DeleteParams) {
    let op = operator();
    let (ns, c, jobs) = running(prefix, |_| {}, json!({})).await;
    let uid = jobs.get("pi").await.expect("the job").uid().unwrap_or_default();
    eventually("the running job to be counted as active", DEADLINE, || async {
        op.memory
            .counts_active(&uid)
            .then_some(())
            .ok_or_else(|| "not counted".to_string())
    })
    .await;
    jobs.delete("pi", how).await.expect("delete");
    eventually("the deleted job to leave the active gauge", DEADLINE, || async {
        (!op.memory.counts_active(&uid))
            .then_some(())
            .ok_or_else(|| "still counted".to_string())
    })
    .await;
    eventually("every child to be garbage-collected", DEADLINE, || async {
        let pods = pods_of(&c, &ns.name, "pi").await.len();
        let secrets = Api::<Secret>::namespaced(c.clone(), &ns.name)
            .list(&Default::default())
            .await
            .map_err(|e| e.to_string())?
            .items
            .len();
        let cms = Api::<ConfigMap>::namespaced(c.clone(), &ns.name)
            .list(&Default::default())
            .await
            .map_err(|e| e.to_string())?;
        let cms = cms
            .items
            .iter()
            .filter(|c| c.name_any().starts_with("pi-"))
            .count();
        let svcs = Api::<Service>::namespaced(c.clone(), &ns.name)
            .list(&Default::default())
            .await
            .map_err(|e| e.to_string())?
            .items
            .len();
        if (pods, secrets, cms, svcs) == (0, 0, 0, 0) {
            Ok(())
        } else {
            Err(format!(
                "pods {pods}, secrets {secrets}, configmaps {cms}, services {svcs}"
            ))
        }
    })
    .await;
}

#[tokio::test]
async fn runtime_edits_do_not_reach_running_jobs() {
    let (ns, c) = setup("frozen").await;
    runtime(&c, &ns.name, "mpi-openmpi", "evolving", |spec| {
        spec["template"]["spec"]["failurePolicy"] = json!({"maxRestarts": 1});
        pod_meta(spec, "launcher")["annotations"][HOLD] = json!("true");
    })
    .await;
    create_job(&c, &ns.name, "before", "evolving", json!({})).await;
    let before = wait_pods(
        &c,
        &ns.name,
        "before",
        &["before-launcher-0-0", "before-node-0-0", "before-node-0-1"],
    )
    .await;
    let image = |p: &Pod| {
        p.spec
            .as_ref()
            .map(|s| s.containers[0].image.clone().unwrap_or_default())
            .unwrap_or_default()
    };
    assert_eq!(image(&before[1]), "mpioperator/mpi-pi:openmpi");

    let rts: Api<TrainingRuntime> = Api::namespaced(c.clone(), &ns.name);
    let mut rt = rts.get("evolving").await.expect("runtime");
    let spec = rt.spec.template.spec.as_mut().expect("spec");
    for rjob in &mut spec.replicated_jobs {
        if let Some(pod) = rjob.template.spec.as_mut().and_then(|s| s.template.spec.as_mut()) {
            pod.containers[0].image = Some("example/new:v2".into());
        }
    }
    rts.replace("evolving", &PostParams::default(), &rt)
        .await
        .expect("edit runtime");

    create_job(&c, &ns.name, "after", "evolving", json!({})).await;
    let after = wait_pods(
        &c,
        &ns.name,
        "after",
        &["after-launcher-0-0", "after-node-0-0", "after-node-0-1"],
    )
    .await;
    assert_eq!(
        image(&after[1]),
        "example/new:v2",
        "new jobs use the edited runtime"
    );

    // The running job keeps its frozen runtime, even with the runtime deleted and a lost worker
    // making it recreate every pod.
    rts.delete("evolving", &DeleteParams::default())
        .await
        .expect("delete runtime");
    Api::<Pod>::namespaced(c.clone(), &ns.name)
        .delete("before-node-0-0", &DeleteParams::default())
        .await
        .expect("delete");
    let recreated = eventually("the job to restart on its frozen runtime", DEADLINE, || async {
        let pods = wait_pods(
            &c,
            &ns.name,
            "before",
            &["before-launcher-0-0", "before-node-0-0", "before-node-0-1"],
        )
        .await;
        let attempt = |p: &Pod| {
            p.labels()
                .get("trainer.kubeflow.org/restart-attempt")
                .cloned()
                .unwrap_or_default()
        };
        if pods.iter().all(|p| attempt(p) == "1") {
            Ok(pods)
        } else {
            Err(format!("{:?}", pods.iter().map(attempt).collect::<Vec<_>>()))
        }
    })
    .await;
    assert!(
        recreated.iter().all(|p| image(p) == "mpioperator/mpi-pi:openmpi"),
        "frozen image after restart"
    );
    wait_event(&c, &ns.name, "before", "Restarting", |r, n| {
        r == "Restarting"
            && (n.contains("pod before-node-0-0 was deleted while the job ran")
                || n.contains("pod before-node-0-0 disappeared"))
    })
    .await;
}

#[tokio::test]
async fn jobs_managed_elsewhere_are_left_alone() {
    let op = operator();
    let ns = TestNs::new("foreign").await;
    let c = client(Identity::Admin).await;
    runtime(&c, &ns.name, "mpi-openmpi", "openmpi", |_| {}).await;
    let jobs = create_job(
        &c,
        &ns.name,
        "remote",
        "openmpi",
        json!({"managedBy": "kueue.x-k8s.io/multikueue"}),
    )
    .await;
    // A job created after it in the same namespace completing proves the operator has looked.
    create_job(&c, &ns.name, "local", "openmpi", json!({})).await;
    wait_condition(&jobs, "local", "Complete").await;
    assert!(pods_of(&c, &ns.name, "remote").await.is_empty());
    assert!(
        jobs.get("remote").await.expect("job").status.is_none(),
        "no status written"
    );
    let created = op.metrics.encode();
    assert!(
        created.contains(&format!(
            "trainjob_jobs_created_total{{namespace=\"{}\",runtime=\"openmpi\"}} 1",
            ns.name
        )),
        "{created}"
    );
}
