//! The operator end to end against the real control plane: it runs as its own service account,
//! kube-scheduler places the pods on kwok nodes, kwok runs and finishes them.

mod support;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use support::jobs::{
    annotate, create_job, pod_meta, pods_of, runtime, setup, ungate, wait_condition, wait_event, wait_pods,
};
use support::{DEADLINE, Identity, TestNs, client, eventually, operator};
use trainjob_operator::api::{TrainJob, TrainingRuntime};

const HOLD: &str = "kwok.trainjob.test/hold";
const EXIT: &str = "kwok.trainjob.test/exit-code";
const GATE: &str = "trainjob.test/hold";

/// Launcher stays Running until released; workers stay unscheduled until ungated.
fn held(spec: &mut Value) {
    pod_meta(spec, "launcher")["annotations"][HOLD] = json!("true");
    let jobs = spec["template"]["spec"]["replicatedJobs"]
        .as_array_mut()
        .expect("replicatedJobs");
    let node = jobs.iter_mut().find(|j| j["name"] == "node").expect("node");
    node["template"]["spec"]["template"]["spec"]["schedulingGates"] = json!([{"name": GATE}]);
}

fn env_of(pod: &Pod) -> BTreeMap<String, String> {
    let c = pod
        .spec
        .as_ref()
        .and_then(|s| s.containers.iter().find(|c| c.name == "node"))
        .expect("node container");
    c.env
        .iter()
        .flatten()
        .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
        .collect()
}

/// The hostfile the operator wrote for `job`.
async fn hostfile_of(c: &Client, ns: &str, job: &str) -> String {
    let cm = Api::<ConfigMap>::namespaced(c.clone(), ns)
        .get(&format!("{job}-mpi-hostfile"))
        .await
        .expect("hostfile");
    cm.data.and_then(|mut d| d.remove("hostfile")).unwrap_or_default()
}

/// The pods of a running 2-node job `pi`.
const PI_PODS: [&str; 3] = ["pi-launcher-0-0", "pi-node-0-0", "pi-node-0-1"];

/// A namespace with a 2-node job `pi` whose pods all exist, on an OpenMPI runtime (changed by
/// `tweak`) whose launcher stays Running until the test releases it.
async fn running(
    prefix: &str,
    tweak: impl FnOnce(&mut Value),
    spec: Value,
) -> (TestNs, Client, Api<TrainJob>) {
    let (ns, c) = setup(prefix).await;
    runtime(&c, &ns.name, "mpi-openmpi", "held", |rt| {
        pod_meta(rt, "launcher")["annotations"][HOLD] = json!("true");
        tweak(rt);
    })
    .await;
    let jobs = create_job(&c, &ns.name, "pi", "held", spec).await;
    wait_pods(&c, &ns.name, "pi", &PI_PODS).await;
    (ns, c, jobs)
}

#[tokio::test]
async fn four_node_openmpi_job_runs_in_order_and_completes() {
    let (ns, c) = setup("openmpi").await;
    runtime(&c, &ns.name, "mpi-openmpi", "openmpi", held).await;
    let jobs = create_job(
        &c,
        &ns.name,
        "pi",
        "openmpi",
        json!({"trainer": {"numNodes": 4, "numProcPerNode": 2}}),
    )
    .await;

    // Workers exist but are not Ready (scheduling gate): the operator has seen them, no launcher.
    let workers = wait_pods(
        &c,
        &ns.name,
        "pi",
        &["pi-node-0-0", "pi-node-0-1", "pi-node-0-2", "pi-node-0-3"],
    )
    .await;
    eventually(
        "jobsStatus to show 1 active, unready node Job",
        DEADLINE,
        || async {
            let job = jobs.get("pi").await.map_err(|e| e.to_string())?;
            let node = job
                .status
                .as_ref()
                .and_then(|s| s.jobs_status.iter().find(|j| j.name == "node").cloned());
            match node {
                Some(n) if n.active == 1 && n.ready == 0 => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    assert!(
        pods_of(&c, &ns.name, "pi")
            .await
            .iter()
            .all(|p| !p.name_any().contains("launcher")),
        "no launcher before workers are Ready"
    );

    // Exactly one of each child, owned by the job.
    let secrets: Api<Secret> = Api::namespaced(c.clone(), &ns.name);
    let secret = secrets.get("pi-mpi-ssh-auth").await.expect("secret");
    assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/ssh-auth"));
    assert_eq!(secret.immutable, Some(true));
    assert_eq!(
        secrets
            .list(&Default::default())
            .await
            .expect("secrets")
            .items
            .len(),
        1
    );
    let cms: Api<ConfigMap> = Api::namespaced(c.clone(), &ns.name);
    let hostfile = cms.get("pi-mpi-hostfile").await.expect("hostfile");
    assert_eq!(
        hostfile
            .data
            .as_ref()
            .and_then(|d| d.get("hostfile"))
            .map(String::as_str),
        Some(
            "pi-node-0-0.pi slots=2\npi-node-0-1.pi slots=2\npi-node-0-2.pi slots=2\npi-node-0-3.pi slots=2\n"
        )
    );
    // The namespace also holds kube-root-ca.crt; ours are the hostfile and the frozen runtime.
    let mut cm_names: Vec<_> = cms
        .list(&Default::default())
        .await
        .expect("cms")
        .items
        .iter()
        .map(|c| c.name_any())
        .collect();
    cm_names.retain(|n| n.starts_with("pi-"));
    assert_eq!(cm_names, ["pi-mpi-hostfile", "pi-runtime-snapshot"]);
    let services = Api::<Service>::namespaced(c.clone(), &ns.name);
    assert_eq!(
        services
            .list(&Default::default())
            .await
            .expect("services")
            .items
            .len(),
        1
    );
    let svc = services.get("pi").await.expect("service");
    assert_eq!(
        svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()),
        Some("None")
    );
    for child in [
        secret.owner_references(),
        hostfile.owner_references(),
        svc.owner_references(),
    ] {
        assert_eq!(child[0].kind, "TrainJob");
    }

    // Worker pods field by field.
    let w = &workers[1];
    let spec = w.spec.as_ref().expect("spec");
    assert_eq!(
        (spec.hostname.as_deref(), spec.subdomain.as_deref()),
        (Some("pi-node-0-1"), Some("pi"))
    );
    let labels = w.labels();
    for (k, v) in [
        ("jobset.sigs.k8s.io/jobset-name", "pi"),
        ("jobset.sigs.k8s.io/replicatedjob-name", "node"),
        ("batch.kubernetes.io/job-completion-index", "1"),
        ("trainer.kubeflow.org/job-role", "node"),
    ] {
        assert_eq!(labels.get(k).map(String::as_str), Some(v), "{k}");
    }
    assert_eq!(
        w.annotations().get("sidecar.istio.io/inject").map(String::as_str),
        Some("false")
    );
    let ssh = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "mpi-ssh-auth")
        .and_then(|v| v.secret.clone())
        .expect("ssh volume");
    assert!(ssh.items.iter().flatten().all(|i| i.mode == Some(0o640)));
    assert_eq!(
        env_of(w).get("K_MPI_JOB_ROLE").map(String::as_str),
        Some("worker")
    );

    // Workers become Ready: the launcher follows, with the hostfile and MPI environment.
    ungate(&c, &ns.name, &workers).await;
    let all = wait_pods(
        &c,
        &ns.name,
        "pi",
        &[
            "pi-launcher-0-0",
            "pi-node-0-0",
            "pi-node-0-1",
            "pi-node-0-2",
            "pi-node-0-3",
        ],
    )
    .await;
    let launcher = &all[0];
    let env = env_of(launcher);
    assert_eq!(
        env.get("OMPI_MCA_orte_default_hostfile").map(String::as_str),
        Some("/etc/mpi/hostfile")
    );
    assert_eq!(
        env.get("OMPI_MCA_orte_set_default_slots").map(String::as_str),
        Some("2")
    );
    assert_eq!(
        env.get("PRTE_MCA_prte_default_hostfile").map(String::as_str),
        Some("/etc/mpi/hostfile")
    );
    let mounts: Vec<_> = launcher.spec.as_ref().expect("spec").containers[0]
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| m.mount_path.clone())
        .collect();
    assert_eq!(mounts, ["/home/mpiuser/.ssh", "/etc/mpi"]);

    // The launcher exits 0: Complete, workers deleted, launcher kept for logs.
    annotate(&c, &ns.name, "pi-launcher-0-0", HOLD, None).await;
    let (job, complete) = wait_condition(&jobs, "pi", "Complete").await;
    assert_eq!(complete.reason, "AllJobsCompleted");
    let status = job.status.expect("status");
    let launcher_status = status
        .jobs_status
        .iter()
        .find(|j| j.name == "launcher")
        .expect("launcher status");
    assert_eq!(
        (
            launcher_status.succeeded,
            launcher_status.failed,
            launcher_status.active
        ),
        (1, 0, 0)
    );
    assert_eq!(launcher_status.ready, 0, "a finished launcher is not ready");
    wait_pods(&c, &ns.name, "pi", &["pi-launcher-0-0"]).await;
    let events = wait_event(&c, &ns.name, "pi", "Completed", |r, _| r == "Completed").await;
    for reason in ["RuntimeFrozen", "PodsCreated", "LauncherCreated", "Completed"] {
        assert!(
            events.iter().any(|(r, _)| r == reason),
            "missing Event {reason}: {events:?}"
        );
    }
    assert!(
        events.iter().all(|(_, note)| !note.contains("PRIVATE KEY")),
        "no key material in Events"
    );
    assert!(
        !serde_json::to_string(&status)
            .expect("status json")
            .contains("PRIVATE KEY")
    );
}

#[tokio::test]
async fn intel_and_mpich_jobs_get_hydra_hostfiles_and_complete() {
    let (ns, c) = setup("hydra").await;
    for (shipped, env_key) in [
        ("mpi-intel", "I_MPI_HYDRA_HOST_FILE"),
        ("mpi-mpich", "HYDRA_HOST_FILE"),
    ] {
        runtime(&c, &ns.name, shipped, shipped, |_| {}).await;
        let jobs = create_job(
            &c,
            &ns.name,
            shipped,
            shipped,
            json!({"trainer": {"numNodes": 2, "numProcPerNode": 4}}),
        )
        .await;
        let (_, complete) = wait_condition(&jobs, shipped, "Complete").await;
        assert_eq!(complete.reason, "AllJobsCompleted");
        assert_eq!(
            hostfile_of(&c, &ns.name, shipped).await,
            format!("{shipped}-node-0-0.{shipped}:4\n{shipped}-node-0-1.{shipped}:4\n")
        );
        let launcher = wait_pods(&c, &ns.name, shipped, &[&format!("{shipped}-launcher-0-0")]).await;
        assert_eq!(
            env_of(&launcher[0]).get(env_key).map(String::as_str),
            Some("/etc/mpi/hostfile"),
            "{shipped}"
        );
    }
}

#[tokio::test]
async fn launcher_as_node_makes_exactly_num_nodes_pods() {
    let (ns, c) = setup("asnode").await;
    runtime(&c, &ns.name, "mpi-openmpi", "asnode", |spec| {
        spec["mlPolicy"]["mpi"]["runLauncherAsNode"] = json!(true);
        pod_meta(spec, "launcher")["annotations"][HOLD] = json!("true");
    })
    .await;
    create_job(&c, &ns.name, "one", "asnode", json!({"trainer": {"numNodes": 1}})).await;
    wait_pods(&c, &ns.name, "one", &["one-launcher-0-0"]).await;
    assert_eq!(
        hostfile_of(&c, &ns.name, "one").await,
        "one-launcher-0-0.one slots=1\n"
    );

    create_job(
        &c,
        &ns.name,
        "three",
        "asnode",
        json!({"trainer": {"numNodes": 3}}),
    )
    .await;
    wait_pods(
        &c,
        &ns.name,
        "three",
        &["three-launcher-0-0", "three-node-0-0", "three-node-0-1"],
    )
    .await;
    assert_eq!(
        hostfile_of(&c, &ns.name, "three").await,
        "three-node-0-0.three slots=1\nthree-node-0-1.three slots=1\nthree-launcher-0-0.three slots=1\n"
    );
}

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
async fn deleting_the_job_removes_every_child() {
    let (ns, c, jobs) = running("delete", |_| {}, json!({})).await;
    jobs.delete("pi", &DeleteParams::foreground())
        .await
        .expect("delete");
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

#[tokio::test]
async fn metrics_parse_and_count_outcomes() {
    let op = operator();
    let ns = TestNs::new("metrics").await;
    let c = client(Identity::Admin).await;
    runtime(&c, &ns.name, "mpi-openmpi", "ok", |_| {}).await;
    runtime(&c, &ns.name, "mpi-openmpi", "bad", |spec| {
        pod_meta(spec, "launcher")["annotations"][EXIT] = json!("2");
    })
    .await;
    let jobs = create_job(&c, &ns.name, "good", "ok", json!({})).await;
    create_job(&c, &ns.name, "broken", "bad", json!({})).await;
    wait_condition(&jobs, "good", "Complete").await;
    wait_condition(&jobs, "broken", "Failed").await;

    let n = &ns.name;
    let text = eventually("the counters to move", DEADLINE, || async {
        let text = http_get(&format!("{}/metrics", op.http), "application/openmetrics-text").await?;
        let want = [
            format!("trainjob_jobs_created_total{{namespace=\"{n}\",runtime=\"ok\"}} 1"),
            format!("trainjob_jobs_completed_total{{namespace=\"{n}\",runtime=\"ok\"}} 1"),
            format!(
                "trainjob_jobs_failed_total{{namespace=\"{n}\",runtime=\"bad\",reason=\"FailedJobs\"}} 1"
            ),
        ];
        match want.iter().find(|w| !text.contains(w.as_str())) {
            None => Ok(text),
            Some(missing) => Err(format!("missing {missing}")),
        }
    })
    .await;
    assert!(text.ends_with("# EOF\n"), "OpenMetrics ends with # EOF");
    assert!(
        text.contains("trainjob_reconcile_duration_seconds_count"),
        "{text}"
    );
    assert!(
        text.contains("trainjob_launcher_created_after_seconds_count"),
        "{text}"
    );

    // The classic text format passes promtool's linter, as Prometheus would scrape it.
    let classic = http_get(&format!("{}/metrics", op.http), "text/plain")
        .await
        .expect("classic metrics");
    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool is installed (.ci/run installs Debian's prometheus package)");
    use std::io::Write;
    promtool
        .stdin
        .take()
        .expect("stdin")
        .write_all(classic.as_bytes())
        .expect("write");
    let out = promtool.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    assert_eq!(
        http_get(&format!("{}/healthz", op.http), "*/*").await.as_deref(),
        Ok("ok")
    );
    assert_eq!(
        http_get(&format!("{}/readyz", op.http), "*/*").await.as_deref(),
        Ok("ok")
    );
}

/// A plain HTTP GET over a TCP socket (the operator's endpoints speak HTTP/1.1 without TLS).
async fn http_get(url: &str, accept: &str) -> Result<String, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").ok_or("http only")?;
    let (host, path) = rest
        .split_once('/')
        .map(|(h, p)| (h, format!("/{p}")))
        .unwrap_or((rest, "/".into()));
    let mut stream = tokio::net::TcpStream::connect(host)
        .await
        .map_err(|e| e.to_string())?;
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: {accept}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .map_err(|e| e.to_string())?;
    let (head, body) = response.split_once("\r\n\r\n").ok_or("no body")?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(head.lines().next().unwrap_or_default().to_string());
    }
    Ok(body.to_string())
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
async fn jobs_on_a_cluster_training_runtime_run() {
    let (ns, c) = setup("cluster").await;
    let jobs: Api<TrainJob> = Api::namespaced(c.clone(), &ns.name);
    // What the Kubeflow SDK sends: only the runtime name (kind defaults to ClusterTrainingRuntime).
    let job: TrainJob = serde_json::from_value(json!({
        "apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob",
        "metadata": {"name": "sdk", "namespace": ns.name},
        "spec": {"runtimeRef": {"name": "mpi-openmpi"}, "trainer": {"numNodes": 3}},
    }))
    .expect("job");
    jobs.create(&PostParams::default(), &job).await.expect("create");
    let (job, _) = wait_condition(&jobs, "sdk", "Complete").await;
    let status = job.status.expect("status");
    let node = status
        .jobs_status
        .iter()
        .find(|j| j.name == "node")
        .expect("node status");
    assert_eq!(node.failed, 0);
    let snapshot = Api::<ConfigMap>::namespaced(c.clone(), &ns.name)
        .get("sdk-runtime-snapshot")
        .await
        .expect("snapshot");
    assert_eq!(
        snapshot.data.unwrap_or_default().get("name").map(String::as_str),
        Some("ClusterTrainingRuntime/mpi-openmpi")
    );
}
