//! The `trainer.kubeflow.org/v1alpha1` API, field for field compatible with Kubeflow Trainer v2.3.
//!
//! Schemas, defaults and CEL rules live on the types so that `crds/` is generated from them and the
//! API server enforces exactly what the Rust code assumes.

mod jobset;
mod patch;
mod runtime;
mod trainjob;

pub use jobset::*;
pub use patch::*;
pub use runtime::*;
pub use trainjob::*;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};

/// API group of every kind in this module.
pub const GROUP: &str = "trainer.kubeflow.org";
/// The only served (and stored) version.
pub const VERSION: &str = "v1alpha1";

/// `spec.managedBy` value of jobs this operator reconciles (upstream's reserved value).
pub const MANAGED_BY_TRAINER: &str = "trainer.kubeflow.org/trainjob-controller";
/// `spec.managedBy` value MultiKueue sets; such jobs are reconciled elsewhere.
pub const MANAGED_BY_MULTIKUEUE: &str = "kueue.x-k8s.io/multikueue";

/// Label on a replicated job telling which TrainJob step it implements.
pub const ANCESTOR_LABEL: &str = "trainer.kubeflow.org/trainjob-ancestor-step";
/// Ancestor value of the replicated job that receives `spec.trainer` overrides.
pub const ANCESTOR_TRAINER: &str = "trainer";
/// The variable an initializer step reads its `storageUri` from (upstream's name).
pub const STORAGE_URI_ENV: &str = "STORAGE_URI";
/// Ancestor value of the dataset initializer job.
pub const ANCESTOR_DATASET_INITIALIZER: &str = "dataset-initializer";
/// Ancestor value of the model initializer job.
pub const ANCESTOR_MODEL_INITIALIZER: &str = "model-initializer";
/// Label that marks a runtime as deprecated (Trainer's `trainer.kubeflow.org/support`).
pub const SUPPORT_LABEL: &str = "trainer.kubeflow.org/support";
/// Value of [`SUPPORT_LABEL`] on a deprecated runtime.
pub const DEPRECATED: &str = "deprecated";
/// Runtime label the Kubeflow SDK lists runtimes by.
pub const FRAMEWORK_LABEL: &str = "trainer.kubeflow.org/framework";

/// Replicated job (and container) name of MPI workers running sshd.
pub const NODE: &str = "node";
/// Replicated job name of the MPI launcher running `mpirun`.
pub const LAUNCHER: &str = "launcher";

/// All CRDs of this API, in install order, normalised to the shape upstream's controller-gen emits.
pub fn crds() -> Vec<CustomResourceDefinition> {
    use kube::CustomResourceExt;
    let mut crds = vec![
        TrainJob::crd(),
        TrainingRuntime::crd(),
        ClusterTrainingRuntime::crd(),
    ];
    for crd in &mut crds {
        for version in &mut crd.spec.versions {
            if let Some(schema) = version
                .schema
                .as_mut()
                .and_then(|s| s.open_api_v3_schema.as_mut())
            {
                drop_nullable(schema);
            }
        }
    }
    crds
}

/// schemars marks every `Option` field `nullable`. Upstream schemas are not nullable, and with
/// `nullable` an explicit `null` would bypass the field's default, so drop the flag everywhere.
fn drop_nullable(schema: &mut JSONSchemaProps) {
    schema.nullable = None;
    let children = schema
        .properties
        .iter_mut()
        .flat_map(|p| p.values_mut())
        .chain(schema.items.as_mut().and_then(|items| match items {
            JSONSchemaPropsOrArray::Schema(s) => Some(s.as_mut()),
            JSONSchemaPropsOrArray::Schemas(_) => None,
        }))
        .chain(schema.additional_properties.as_mut().and_then(|a| match a {
            JSONSchemaPropsOrBool::Schema(s) => Some(s.as_mut()),
            JSONSchemaPropsOrBool::Bool(_) => None,
        }));
    for child in children {
        drop_nullable(child);
    }
}

#[cfg(test)]
mod tests;
