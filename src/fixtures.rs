//! Test fixtures shared by the unit tests of the pure modules.

use k8s_openapi::api::core::v1::Pod;
use serde_json::json;

use crate::api::{ClusterTrainingRuntime, TrainJob, TrainingRuntimeSpec};
use crate::plan::Plan;
use crate::resolve::resolve;

/// A shipped runtime from `config/runtimes` (`mpi-openmpi`, `mpi-intel`, `mpi-mpich`).
pub fn shipped_runtime(name: &str) -> TrainingRuntimeSpec {
    let path = format!("{}/config/runtimes/{name}.yaml", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    let rt: ClusterTrainingRuntime =
        serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("parsing {path}: {e}"));
    rt.spec.0
}

/// A TrainJob `pi` in namespace `ns` with the given spec (runtimeRef defaults to mpi-openmpi).
pub fn job(spec: serde_json::Value) -> TrainJob {
    let mut spec = spec;
    if spec.get("runtimeRef").is_none() {
        spec["runtimeRef"] = json!({"name": "mpi-openmpi"});
    }
    serde_json::from_value(json!({
        "apiVersion": "trainer.kubeflow.org/v1alpha1",
        "kind": "TrainJob",
        "metadata": {"name": "pi", "namespace": "ns", "uid": "uid-1", "creationTimestamp": "2026-11-25T10:00:00Z"},
        "spec": spec,
    }))
    .expect("fixture job parses")
}

/// The plan of `job` on the shipped runtime `runtime`.
pub fn plan(job: &TrainJob, runtime: &str) -> Plan {
    resolve(
        job,
        &format!("ClusterTrainingRuntime/{runtime}"),
        &shipped_runtime(runtime),
    )
    .expect("plan resolves")
}

/// A pod as the API server would return it, in `phase`, optionally Ready.
pub fn observed_pod(pod: &Pod, phase: &str, ready: bool) -> Pod {
    let mut pod = pod.clone();
    pod.status = Some(
        serde_json::from_value(json!({
            "phase": phase,
            "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
        }))
        .expect("status"),
    );
    pod
}
