//! The job view: what a person wants to see of one TrainJob, from the job, its pods, its Events,
//! its frozen runtime and the launcher's log tail: the phase, a table of its pods, a timeline
//! of milestones, the diagnosis with its fix, and progress when the training reports it. Pure,
//! but for its two reads as the caller: `fetch` (what the view needs) and `logs` (a job's logs,
//! read and followed).
//! The kubectl plugin and the dashboard render it; it reads status the way the lifecycle writes
//! it (`lifecycle::phase_of`, the conditions, `lifecycle::diagnose`), so a reason added there
//! shows everywhere at once.

pub mod fetch;
pub mod logs;
mod pods;
#[cfg(test)]
mod tests;
mod timeline;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde::Serialize;

use crate::api::TrainJob;
use crate::lifecycle::{self, Phase};
use crate::plan::{Cluster, Plan};
use crate::reasons::condition;
use crate::resolve::{Runtime, resolve};
pub use pods::PodRow;
pub use timeline::{Milestone, Moment};

/// What [`view`] reads.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sources<'a> {
    /// The job's frozen runtime (`<job>-runtime-snapshot`), when it could be read: it names the
    /// runtime the job really runs on, how many MPI hosts it wants, and which MPI reads the log.
    pub runtime: Option<&'a Runtime>,
    /// The job's pods (those it controls).
    pub pods: &'a [Pod],
    /// Events about the job.
    pub events: &'a [Event],
    /// The tail of the current attempt's launcher log, when it failed.
    pub launcher_log: Option<&'a str>,
}

/// One TrainJob as a person wants to see it.
#[derive(Clone, Debug, PartialEq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobView {
    /// Namespace of the job.
    pub namespace: String,
    /// Name of the job.
    pub name: String,
    /// The runtime it runs on: the frozen one's `Kind/name`, else the one it references.
    pub runtime: String,
    /// Where it stands.
    pub phase: Phase,
    /// MPI hosts running and ready, of those wanted.
    pub nodes: Nodes,
    /// Whole-gang restarts so far.
    pub restarts: i32,
    /// The conditions, as the operator wrote them.
    pub conditions: Vec<ConditionRow>,
    /// Every pod, the current attempt's first: launcher, then workers by index.
    pub pods: Vec<PodRow>,
    /// What happened when, oldest first.
    pub timeline: Vec<Milestone>,
    /// Why the job failed or waits, and what to change.
    pub diagnosis: Option<Diagnosis>,
    /// How far training got, when it reports it (`status.trainerStatus`).
    pub progress: Option<Progress>,
    /// Events about the job, oldest first.
    pub events: Vec<EventRow>,
}

/// MPI hosts running and ready, of those wanted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct Nodes {
    /// Running and ready, in the current attempt.
    pub ready: i32,
    /// Wanted: `numNodes` as resolved against the runtime.
    pub wanted: i32,
}

/// A condition on the job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConditionRow {
    /// Its type (`Complete`, `Failed`, `Suspended`, `GangScheduled`).
    pub type_: String,
    /// `True` or `False`.
    pub status: String,
    /// Why, in one CamelCase word.
    pub reason: String,
    /// Why, in words: for a failure, what to change.
    pub message: String,
    /// Since when.
    pub since: Time,
}

/// Why the job failed or waits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Diagnosis {
    /// The condition reason.
    pub reason: String,
    /// What happened and what to change.
    pub message: String,
    /// Whether the job failed (`true`) or still waits.
    pub failed: bool,
}

/// How far training got, as the training code reported it.
#[derive(Clone, Debug, PartialEq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    /// Percent done.
    pub percent: Option<i32>,
    /// Estimated seconds left.
    pub remaining_seconds: Option<i32>,
    /// The latest metrics, by name.
    pub metrics: Vec<(String, String)>,
    /// When it was reported.
    pub updated: Option<Time>,
}

/// An Event about the job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventRow {
    /// When it last happened.
    pub at: Option<Time>,
    /// `Normal` or `Warning`.
    pub type_: String,
    /// Its reason.
    pub reason: String,
    /// What it says.
    pub message: String,
    /// How many times it happened.
    pub count: i32,
}

/// The view of `job`, from `sources`.
pub fn view(job: &TrainJob, sources: Sources) -> JobView {
    let status = job.status.clone().unwrap_or_default();
    let attempt = status.restarts.unwrap_or(0);
    let plan = sources
        .runtime
        .and_then(|rt| resolve(job, rt, &Cluster::default()).ok());
    let pods = pods::rows(sources.pods, attempt);
    let runs_ranks = plan.as_ref().is_some_and(|p| p.launcher_as_node);
    let ready = pods
        .iter()
        .filter(|p| p.attempt == Some(attempt) && p.ready && p.state == pods::RUNNING)
        .filter(|p| p.role == crate::api::NODE || (runs_ranks && p.role == crate::api::LAUNCHER))
        .count();
    let wanted = plan.as_ref().map(|p| p.num_nodes).unwrap_or_else(|| {
        let trainer = job.spec.trainer.as_ref().and_then(|t| t.num_nodes);
        trainer.unwrap_or_else(|| pods.iter().filter(|p| p.role == crate::api::NODE).count() as i32)
    });
    let events = events(sources.events);
    JobView {
        namespace: job.metadata.namespace.clone().unwrap_or_default(),
        name: job.metadata.name.clone().unwrap_or_default(),
        runtime: match sources.runtime {
            Some(rt) => rt.label.clone(),
            None => {
                let r = &job.spec.runtime_ref;
                format!(
                    "{}/{}",
                    r.kind.as_deref().unwrap_or("ClusterTrainingRuntime"),
                    r.name
                )
            }
        },
        phase: lifecycle::phase_of(job, sources.pods),
        nodes: Nodes {
            ready: i32::try_from(ready).unwrap_or(i32::MAX),
            wanted,
        },
        restarts: attempt,
        conditions: status
            .conditions
            .iter()
            .map(|c| ConditionRow {
                type_: c.type_.clone(),
                status: c.status.clone(),
                reason: c.reason.clone(),
                message: c.message.clone(),
                since: c.last_transition_time.clone(),
            })
            .collect(),
        timeline: timeline::milestones(job, &pods, &events),
        diagnosis: diagnosis(job, plan.as_ref(), sources.launcher_log),
        progress: status.trainer_status.as_ref().map(|t| Progress {
            percent: t.progress_percentage,
            remaining_seconds: t.estimated_remaining_seconds,
            metrics: t
                .metrics
                .iter()
                .map(|m| (m.name.clone(), m.value.clone()))
                .collect(),
            updated: t.last_updated_time.clone(),
        }),
        pods,
        events,
    }
}

/// Why the job failed, else why it waits: the conditions the lifecycle wrote, which say what to
/// change. A failed launcher's log, read by the job's MPI, adds its cause when the failure
/// message does not name one yet (a view built before the operator read the log).
fn diagnosis(job: &TrainJob, plan: Option<&Plan>, log: Option<&str>) -> Option<Diagnosis> {
    let conditions = job
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let found =
        |type_: &str, status: &str| conditions.iter().find(|c| c.type_ == type_ && c.status == status);
    if let Some(c) = found(condition::FAILED, "True") {
        let cause = plan
            .zip(log)
            .and_then(|(plan, log)| lifecycle::diagnose(log, plan))
            .filter(|cause| !c.message.contains(cause.as_str()));
        return Some(Diagnosis {
            reason: c.reason.clone(),
            message: match cause {
                Some(cause) => format!("{}; {cause}", c.message),
                None => c.message.clone(),
            },
            failed: true,
        });
    }
    if found(condition::COMPLETE, "True").is_some() {
        return None;
    }
    let waiting = found(condition::STALLED, "True")
        .or_else(|| found(condition::GANG_SCHEDULED, "False"))
        .or_else(|| found(condition::SUSPENDED, "True"))?;
    Some(Diagnosis {
        reason: waiting.reason.clone(),
        message: waiting.message.clone(),
        failed: false,
    })
}

/// The Events, oldest first, with when each last happened.
fn events(events: &[Event]) -> Vec<EventRow> {
    let mut rows: Vec<EventRow> = events
        .iter()
        .map(|e| {
            let last = e
                .series
                .as_ref()
                .map(|s| Time(s.last_observed_time.0))
                .or_else(|| e.event_time.as_ref().map(|t| Time(t.0)))
                .or_else(|| e.deprecated_last_timestamp.clone());
            EventRow {
                at: last,
                type_: e.type_.clone().unwrap_or_else(|| "Normal".into()),
                reason: e.reason.clone().unwrap_or_default(),
                message: e.note.clone().unwrap_or_default(),
                count: e
                    .series
                    .as_ref()
                    .map(|s| s.count)
                    .or(e.deprecated_count)
                    .unwrap_or(1),
            }
        })
        .collect();
    rows.sort_by(|a, b| a.at.as_ref().map(|t| t.0).cmp(&b.at.as_ref().map(|t| t.0)));
    rows
}
