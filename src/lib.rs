//! trainjob-operator: runs Kubeflow Trainer v2.3 compatible MPI `TrainJob`s on Kubernetes.

pub mod api;
pub mod crdgen;
#[cfg(feature = "testbed")]
pub mod testbed;
