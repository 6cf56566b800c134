//! trainjob-operator: runs Kubeflow Trainer v2.3 compatible MPI `TrainJob`s on Kubernetes.
//!
//! Functional core (`resolve`, `hostfile`, `ssh`, `env`, `pods`, `status`) and imperative shell
//! (`controller`, `server`).

pub mod api;
pub mod controller;
pub mod crdgen;
pub mod env;
#[cfg(test)]
mod fixtures;
pub mod hostfile;
pub mod metrics;
pub mod names;
pub mod pods;
pub mod resolve;
pub mod server;
pub mod ssh;
pub mod status;
