//! trainjob-operator: runs Kubeflow Trainer v2.3 compatible MPI `TrainJob`s on Kubernetes.
//!
//! Functional core: `resolve` turns a job and its runtime into a [`plan::Plan`], `validate`
//! checks it, `lifecycle` decides what to do from what was [`observed::Observed`], `desired`
//! builds every object the decision needs, `mpi` holds what differs between MPI
//! implementations, and `view` turns a job into what a person wants to see. Imperative shell:
//! `controller` (the reconcile pipeline and its watches), `webhook`, `leader`, `server`
//! (metrics and health) and `logging`. See docs/development/architecture.md.

/// The operator's version: `TRAINJOB_BUILD_VERSION` when it was built, else the crate's. Reported
/// by `version`, the start-up log and `trainjob_build_info`; nothing the operator writes depends
/// on it, so a new build adopts an old one's objects as they are.
pub const VERSION: &str = match option_env!("TRAINJOB_BUILD_VERSION") {
    Some(version) => version,
    None => env!("CARGO_PKG_VERSION"),
};

pub mod api;
pub mod bucket;
pub mod cli;
pub mod controller;
pub mod crdgen;
pub mod dashboard;
pub mod desired;
pub mod flags;
// Shared by the unit tests of the pure modules.
#[cfg(test)]
mod fixtures;
pub mod image;
pub mod leader;
pub mod lifecycle;
pub mod listed;
pub mod logging;
pub mod merge;
pub mod metrics;
pub mod mpi;
pub mod names;
pub mod nodes;
pub mod observed;
pub mod plan;
pub mod progress;
pub mod quota;
pub mod reasons;
pub mod resolve;
pub mod runtime;
pub mod runtimes;
pub mod server;
pub mod shutdown;
pub mod ssh;
pub mod validate;
pub mod view;
pub mod webhook;
