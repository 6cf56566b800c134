//! Helpers of the real-node tests: jobs placed on the real node, waited for to the end, and the
//! report of their pods when they do not get there.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, ListParams, LogParams, PostParams};
use serde_json::{Value, json};
use trainjob_operator::api::TrainJob;

use crate::REAL_NODE;

/// Deadline for one MPI job on the shared 2-core node, pods started from local images.
pub const RUN_DEADLINE: Duration = Duration::from_secs(300);

/// The pod spec fields that put a pod on the real node, the way Kueue would: `runtimePatches`.
pub fn real_node_patches() -> Value {
    let pod = json!({"spec": {
        "nodeSelector": {REAL_NODE: "true"},
        "tolerations": [{"key": REAL_NODE, "operator": "Exists", "effect": "NoSchedule"}],
    }});
    let patch = |rjob: &str| json!({"name": rjob, "template": {"spec": {"template": pod}}});
    json!([{"manager": "trainjob.test/real-node", "trainingRuntimeSpec": {"template": {"spec": {
        "replicatedJobs": [patch("node"), patch("launcher")],
    }}}}])
}

/// Creates TrainJob `name` on `runtime_ref` with `trainer`, placed on the real node.
pub async fn create(c: &Client, ns: &str, name: &str, runtime_ref: Value, trainer: Value) {
    let job: TrainJob = serde_json::from_value(json!({
        "apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"runtimeRef": runtime_ref, "trainer": trainer, "runtimePatches": real_node_patches()},
    }))
    .expect("job");
    Api::<TrainJob>::namespaced(c.clone(), ns)
        .create(&PostParams::default(), &job)
        .await
        .expect("create job");
}

/// The launcher's log, as `kubectl logs` (and the Kubeflow SDK) read it.
pub async fn launcher_log(c: &Client, ns: &str, job: &str) -> String {
    let params = LogParams {
        container: Some("node".into()),
        ..Default::default()
    };
    Api::<Pod>::namespaced(c.clone(), ns)
        .logs(&format!("{job}-launcher-0-0"), &params)
        .await
        .unwrap_or_else(|e| format!("(no launcher log: {e})"))
}

/// Waits until the job is Complete or Failed; returns (type, reason, message). A job that never
/// finishes fails the test with its pods' phases and every pod's log tail, which say why.
pub async fn finished(c: &Client, ns: &str, job: &str) -> (String, String, String) {
    let jobs: Api<TrainJob> = Api::namespaced(c.clone(), ns);
    let deadline = tokio::time::Instant::now() + RUN_DEADLINE;
    loop {
        if let Ok(j) = jobs.get(job).await {
            let status = j.status.unwrap_or_default();
            let end = status
                .conditions
                .iter()
                .find(|c| ["Complete", "Failed"].contains(&c.type_.as_str()) && c.status == "True");
            if let Some(c) = end {
                return (c.type_.clone(), c.reason.clone(), c.message.clone());
            }
        }
        if tokio::time::Instant::now() >= deadline {
            panic!(
                "{job} did not finish within {RUN_DEADLINE:?}:\n{}",
                pod_report(c, ns, job).await
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Each pod of the job with its phase and the tail of its log.
pub async fn pod_report(c: &Client, ns: &str, job: &str) -> String {
    let pods: Api<Pod> = Api::namespaced(c.clone(), ns);
    let lp = ListParams::default().labels(&format!("trainer.kubeflow.org/trainjob-name={job}"));
    let mut report = String::new();
    for pod in pods.list(&lp).await.map(|l| l.items).unwrap_or_default() {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let phase = pod.status.and_then(|s| s.phase).unwrap_or_default();
        let params = LogParams {
            container: Some("node".into()),
            tail_lines: Some(30),
            ..Default::default()
        };
        let log = pods.logs(&name, &params).await.unwrap_or_else(|e| e.to_string());
        report.push_str(&format!("--- {name} ({phase})\n{log}\n"));
    }
    report
}

/// Runs `pod` to its end; returns its phase.
pub async fn phase_at_end(c: &Client, pod: &Pod) -> String {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(c.clone(), &ns);
    pods.create(&PostParams::default(), pod)
        .await
        .expect("create probe");
    crate::support::eventually(&format!("probe {name} to finish"), RUN_DEADLINE, || async {
        let p = pods.get(&name).await.map_err(|e| e.to_string())?;
        match p.status.and_then(|s| s.phase).as_deref() {
            Some(phase @ ("Succeeded" | "Failed")) => Ok(phase.to_string()),
            other => Err(format!("{other:?}")),
        }
    })
    .await
}
