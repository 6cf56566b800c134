//! The runtime snapshot: the runtime a job runs on, frozen at its first reconcile in the
//! ConfigMap `<job>-runtime-snapshot` (upstream v2.3's name), so later edits or deletion of the
//! runtime never change the job.

use k8s_openapi::api::core::v1::ConfigMap;

use crate::api::TrainJob;
use crate::names;
use crate::resolve::Runtime;

/// Key of the runtime's spec (JSON).
const SPEC: &str = "runtime";
/// Key of the runtime's `Kind/name`.
const NAME: &str = "name";

/// The snapshot of `runtime` for `job`. Never empty: that would freeze nothing.
pub fn configmap(job: &TrainJob, runtime: &Runtime) -> Result<ConfigMap, serde_json::Error> {
    let name = names::runtime_snapshot(job.metadata.name.as_deref().unwrap_or_default());
    Ok(ConfigMap {
        metadata: names::child_meta(job, &name),
        data: Some(
            [
                (SPEC.to_string(), serde_json::to_string(&runtime.spec)?),
                (NAME.to_string(), runtime.label.clone()),
            ]
            .into(),
        ),
        ..Default::default()
    })
}

/// The runtime frozen in `snapshot`, or why it cannot be read (someone edited it by hand).
pub fn read(snapshot: &ConfigMap) -> Result<Runtime, String> {
    let data = snapshot.data.as_ref();
    let (Some(spec), Some(label)) = (data.and_then(|d| d.get(SPEC)), data.and_then(|d| d.get(NAME))) else {
        return Err(format!("keys {SPEC} and {NAME} are required"));
    };
    let spec = serde_json::from_str(spec).map_err(|e| e.to_string())?;
    Ok(Runtime::new(label.clone(), spec))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::fixtures::{job, shipped_runtime};

    #[test]
    fn a_frozen_runtime_reads_back_as_it_was_and_an_edited_one_says_why_not() {
        let runtime = Runtime::new(
            "ClusterTrainingRuntime/mpi-openmpi",
            shipped_runtime("mpi-openmpi"),
        );
        let cm = configmap(&job(json!({})), &runtime).expect("encodes");
        assert_eq!(cm.metadata.name.as_deref(), Some("pi-runtime-snapshot"));
        assert_eq!(read(&cm), Ok(runtime));
        let mut edited = cm.clone();
        edited.data.get_or_insert_default().remove(NAME);
        assert_eq!(read(&edited), Err("keys runtime and name are required".into()));
        edited = cm;
        edited
            .data
            .get_or_insert_default()
            .insert(SPEC.into(), "{".into());
        assert!(read(&edited).is_err_and(|e| e.contains("EOF")));
    }
}
