//! The pod table: one row per pod, with what a person asks first of a pod that is not running:
//! where it is, whether it is ready, how often it restarted, and why it is not further along,
//! in the kubelet's or the scheduler's own words.

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde::Serialize;

use crate::api::{LAUNCHER, NODE};
use crate::names::{COMPLETION_INDEX_LABEL, JOB_ROLE_LABEL, RESTART_ATTEMPT_LABEL};

/// The state of a running pod.
pub const RUNNING: &str = "Running";

/// Longest reason quoted in a row.
const MAX_REASON: usize = 200;

/// One pod of the job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodRow {
    /// The pod's name.
    pub name: String,
    /// `launcher`, `node`, or another step's name.
    pub role: String,
    /// Its index within its role.
    pub index: Option<i32>,
    /// The whole-gang restart it belongs to (0 for the first run).
    pub attempt: Option<i32>,
    /// The node it runs on, once scheduled.
    pub node: Option<String>,
    /// `Pending`, `Running`, `Succeeded`, `Failed` or `Terminating`.
    pub state: String,
    /// Every container is ready.
    pub ready: bool,
    /// Container restarts, summed.
    pub restarts: i32,
    /// Why it is not further along (or how it ended), in the kubelet's or scheduler's words.
    pub reason: Option<String>,
    /// When it was bound to its node.
    pub scheduled: Option<Time>,
    /// Since when it is ready, while it is.
    pub ready_since: Option<Time>,
    /// When its main container started.
    pub started: Option<Time>,
}

/// The rows of `pods`: the current `attempt`'s first, then launcher, workers by index, others.
pub fn rows(pods: &[Pod], attempt: i32) -> Vec<PodRow> {
    let mut rows: Vec<PodRow> = pods.iter().map(row).collect();
    let order = |r: &PodRow| match r.role.as_str() {
        LAUNCHER => 0,
        NODE => 1,
        _ => 2,
    };
    rows.sort_by_key(|r| {
        (
            r.attempt != Some(attempt),
            std::cmp::Reverse(r.attempt),
            order(r),
            r.index,
            r.name.clone(),
        )
    });
    rows
}

fn row(pod: &Pod) -> PodRow {
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    let number = |key: &str| labels.get(key).and_then(|v| v.parse().ok());
    let status = pod.status.as_ref();
    let containers: &[ContainerStatus] = status
        .and_then(|s| s.container_statuses.as_deref())
        .unwrap_or_default();
    let phase = status
        .and_then(|s| s.phase.clone())
        .unwrap_or_else(|| "Pending".into());
    let state = match pod.metadata.deletion_timestamp {
        Some(_) if !matches!(phase.as_str(), "Succeeded" | "Failed") => "Terminating".to_string(),
        _ => phase,
    };
    let main = containers.iter().find(|c| c.name == NODE).or(containers.first());
    let started = main.and_then(|c| {
        let state = c.state.as_ref()?;
        let running = state.running.as_ref().and_then(|r| r.started_at.clone());
        running.or_else(|| state.terminated.as_ref().and_then(|t| t.started_at.clone()))
    });
    let since = |type_: &str| {
        let conditions = status.and_then(|s| s.conditions.as_ref())?;
        let c = conditions
            .iter()
            .find(|c| c.type_ == type_ && c.status == "True")?;
        c.last_transition_time.clone()
    };
    PodRow {
        name: pod.metadata.name.clone().unwrap_or_default(),
        role: labels.get(JOB_ROLE_LABEL).cloned().unwrap_or_default(),
        index: number(COMPLETION_INDEX_LABEL),
        attempt: number(RESTART_ATTEMPT_LABEL),
        node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
        ready: status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True")),
        scheduled: since("PodScheduled"),
        ready_since: since("Ready"),
        restarts: containers.iter().map(|c| c.restart_count).sum(),
        reason: reason(pod, containers).map(|r| cut(&r)),
        started,
        state,
    }
}

/// Why the pod is not further along, or how it ended: a container that waits (the init
/// containers first: they run first) or ended badly, the pod's own reason (eviction), or the
/// scheduler's verdict.
fn reason(pod: &Pod, containers: &[ContainerStatus]) -> Option<String> {
    let status = pod.status.as_ref()?;
    let init = status.init_container_statuses.as_deref().unwrap_or_default();
    let waiting = init.iter().chain(containers).find_map(|c| {
        let w = c.state.as_ref()?.waiting.as_ref()?;
        let reason = w
            .reason
            .as_deref()
            .filter(|r| *r != "PodInitializing" && *r != "ContainerCreating")?;
        Some(match w.message.as_deref() {
            Some(message) if !message.is_empty() => format!("{}: {reason}: {message}", c.name),
            _ => format!("{}: {reason}", c.name),
        })
    });
    let ended = || {
        init.iter().chain(containers).find_map(|c| {
            let t = c
                .state
                .as_ref()?
                .terminated
                .as_ref()
                .filter(|t| t.exit_code != 0)?;
            let reason = t.reason.as_deref().unwrap_or("Error");
            Some(format!("{}: {reason}, exit code {}", c.name, t.exit_code))
        })
    };
    let own = || {
        let reason = status.reason.as_deref()?;
        Some(match status.message.as_deref() {
            Some(message) if !message.is_empty() => format!("{reason}: {message}"),
            _ => reason.to_string(),
        })
    };
    let unscheduled = || {
        let c = status
            .conditions
            .as_ref()?
            .iter()
            .find(|c| c.type_ == "PodScheduled" && c.status == "False")?;
        let reason = c.reason.as_deref().unwrap_or("Unschedulable");
        Some(match c.message.as_deref() {
            Some(message) if !message.is_empty() => format!("{reason}: {message}"),
            _ => reason.to_string(),
        })
    };
    waiting.or_else(ended).or_else(own).or_else(unscheduled)
}

/// `text` without control characters, cut to [`MAX_REASON`] characters.
fn cut(text: &str) -> String {
    let clean: String = text.chars().filter(|c| !c.is_control()).collect();
    match clean.char_indices().nth(MAX_REASON) {
        Some((at, _)) => format!("{}…", &clean[..at]),
        None => clean,
    }
}
