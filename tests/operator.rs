//! The operator end to end against the real control plane: it runs as its own service account,
//! kube-scheduler places the pods on kwok nodes, kwok runs and finishes them.

use trainjob_testbed::support;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use support::jobs::{
    EXIT, HOLD, annotate, create_job, pod_meta, pods_of, runtime, setup, ungate, wait_condition, wait_event,
    wait_pods,
};
use support::{DEADLINE, Identity, TestNs, client, eventually, http_get, operator};
use trainjob_operator::api::TrainJob;

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
    for reason in ["PodsCreated", "LauncherCreated", "Completed"] {
        assert!(
            events.iter().any(|(r, _)| r == reason),
            "missing Event {reason}: {events:?}"
        );
    }
    // The frozen runtime is named with the first pods: one Event rather than two.
    assert!(
        events
            .iter()
            .any(|(r, note)| r == "PodsCreated"
                && note.starts_with("using TrainingRuntime/openmpi; later edits")),
        "{events:?}"
    );
    assert_eq!(events.len(), 3, "one Event per step: {events:?}");
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
        "one-launcher-0-0 slots=1\n"
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
        "three-launcher-0-0 slots=1\nthree-node-0-0.three slots=1\nthree-node-0-1.three slots=1\n"
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

#[tokio::test]
async fn each_job_gets_a_network_policy_admitting_only_its_own_pods() {
    let (ns, c) = setup("netpol").await;
    runtime(&c, &ns.name, "mpi-openmpi", "rt", |_| {}).await;
    let jobs = create_job(&c, &ns.name, "pi", "rt", json!({"trainer": {"numNodes": 2}})).await;
    wait_condition(&jobs, "pi", "Complete").await;
    let policy = Api::<k8s_openapi::api::networking::v1::NetworkPolicy>::namespaced(c.clone(), &ns.name)
        .get("pi")
        .await
        .expect("the job's NetworkPolicy");
    let job = jobs.get("pi").await.expect("job");
    let owner = &policy.metadata.owner_references.as_deref().unwrap_or_default()[0];
    assert_eq!(Some(&owner.uid), job.metadata.uid.as_ref());
    let selector = json!({"matchLabels": {"trainer.kubeflow.org/trainjob-name": "pi"}});
    assert_eq!(
        serde_json::to_value(policy.spec).expect("spec"),
        json!({"podSelector": selector, "policyTypes": ["Ingress"], "ingress": [{"from": [{"podSelector": selector}]}]})
    );
}
