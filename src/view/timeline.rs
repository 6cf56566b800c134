//! The timeline: the milestones of a job with their times, from the job's own timestamps and
//! conditions, its pods' conditions and container states, and the Events the operator wrote
//! (which outlive the pods: a complete job's workers are gone, its `LauncherCreated` Event says
//! when they were all ready).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde::Serialize;

use super::EventRow;
use super::pods::{PodRow, RUNNING};
use crate::api::{LAUNCHER, NODE, TrainJob};
use crate::reasons::{condition, event};

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, schemars::JsonSchema)]
pub enum Moment {
    /// The TrainJob was created.
    Created,
    /// It was suspended.
    Suspended,
    /// Every worker of the current attempt is on a node.
    Scheduled,
    /// Every worker of the current attempt runs and is ready.
    WorkersReady,
    /// The launcher's `mpirun` started.
    LauncherStarted,
    /// The whole gang restarted.
    Restarted,
    /// It completed.
    Complete,
    /// It failed.
    Failed,
}

/// A milestone and when it happened.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Milestone {
    /// What happened.
    pub what: Moment,
    /// When.
    pub at: Time,
    /// More, in words, where there is more to say.
    pub detail: Option<String>,
}

/// The milestones of `job`, oldest first.
pub fn milestones(job: &TrainJob, pods: &[PodRow], events: &[EventRow]) -> Vec<Milestone> {
    let mut out = Vec::new();
    let mut add = |what, at: Option<Time>, detail: Option<String>| {
        if let Some(at) = at {
            out.push(Milestone { what, at, detail });
        }
    };
    add(Moment::Created, job.metadata.creation_timestamp.clone(), None);
    let status = job.status.clone().unwrap_or_default();
    let attempt = status.restarts.unwrap_or(0);
    let condition_since = |type_: &str| {
        status
            .conditions
            .iter()
            .find(|c| c.type_ == type_ && c.status == "True")
            .map(|c| (c.last_transition_time.clone(), c.reason.clone()))
    };
    if let Some((at, _)) = condition_since(condition::SUSPENDED) {
        add(Moment::Suspended, Some(at), None);
    }
    let workers: Vec<&PodRow> = pods
        .iter()
        .filter(|p| p.attempt == Some(attempt) && p.role == NODE)
        .collect();
    let all = |test: &dyn Fn(&PodRow) -> bool| !workers.is_empty() && workers.iter().all(|p| test(p));
    let latest = |times: Vec<Option<&Time>>| -> Option<Time> {
        let times: Option<Vec<&Time>> = times.into_iter().collect();
        times?.into_iter().max_by_key(|t| t.0).cloned()
    };
    if all(&|p| p.node.is_some()) {
        add(
            Moment::Scheduled,
            latest(workers.iter().map(|p| p.scheduled.as_ref()).collect()),
            None,
        );
    }
    // Once they are gone (a complete job's workers), the launcher's Event says when.
    let launcher_created = events
        .iter()
        .filter(|e| e.reason == event::LAUNCHER_CREATED)
        .filter_map(|e| e.at.clone())
        .max_by_key(|t| t.0);
    let ready = match all(&|p| p.ready && p.state == RUNNING) {
        true => latest(workers.iter().map(|p| p.ready_since.as_ref()).collect()),
        false => None,
    };
    add(Moment::WorkersReady, ready.or(launcher_created), None);
    let launcher = pods
        .iter()
        .find(|p| p.attempt == Some(attempt) && p.role == LAUNCHER);
    add(
        Moment::LauncherStarted,
        launcher.and_then(|p| p.started.clone()),
        None,
    );
    for restart in events.iter().filter(|e| e.reason == event::RESTARTING) {
        add(
            Moment::Restarted,
            restart.at.clone(),
            Some(restart.message.clone()),
        );
    }
    if let Some((at, _)) = condition_since(condition::COMPLETE) {
        add(Moment::Complete, Some(at), None);
    }
    if let Some((at, reason)) = condition_since(condition::FAILED) {
        add(Moment::Failed, Some(at), Some(reason));
    }
    out.sort_by_key(|m| (m.at.0, m.what));
    out
}
