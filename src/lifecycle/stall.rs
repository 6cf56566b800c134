//! Why a job's pods do not get going, in one line a user can act on: what the kubelet (image,
//! configuration, a crash loop) and the scheduler (no room, a volume claim) report on the pods
//! of the current attempt, and what each means for the job.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ContainerStatus, PersistentVolumeClaim, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::conditions::{is_true, set_condition};
use super::pod_state::PodState;
use crate::plan::{Plan, Role};
use crate::reasons::{self, condition::STALLED};

/// What holds a pod up, worst first: a job's stall is told by its worst kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Kind {
    /// `InvalidImageName`: no retry can help.
    InvalidImage,
    /// `CreateContainerConfigError` / `CreateContainerError`: a Secret, ConfigMap or key the
    /// container needs is missing.
    Config,
    /// `ErrImagePull` / `ImagePullBackOff`.
    ImagePull,
    /// A container restarting over and over (`CrashLoopBackOff`). The job's pods never restart
    /// their containers, so this is a sidecar (an init container that runs alongside).
    CrashLoop,
    /// The scheduler waits for a volume claim that is missing or not bound.
    Volume,
    /// The scheduler finds no node for the pod.
    Unschedulable,
}

/// What a stall means for the job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Policy {
    /// Fail now: waiting cannot help.
    Fail,
    /// Wait, and fail once the job has been stalled this way for `--stall-timeout`.
    FailAfterTimeout,
    /// Wait as long as it takes (capacity and volumes can come; `activeDeadlineSeconds` bounds it).
    Wait,
}

impl Kind {
    /// The condition (and failure) reason.
    pub fn reason(self) -> &'static str {
        match self {
            Kind::InvalidImage => reasons::INVALID_IMAGE_NAME,
            Kind::Config => reasons::CONTAINER_CONFIG_ERROR,
            Kind::ImagePull => reasons::IMAGE_PULL_BACK_OFF,
            Kind::CrashLoop => reasons::CRASH_LOOP_BACK_OFF,
            Kind::Volume => reasons::VOLUME_CLAIM_NOT_BOUND,
            Kind::Unschedulable => reasons::UNSCHEDULABLE,
        }
    }

    /// What the kind means for the job (documented in the user guide's "Stalled jobs").
    pub fn policy(self) -> Policy {
        match self {
            Kind::InvalidImage => Policy::Fail,
            Kind::Config | Kind::ImagePull | Kind::CrashLoop => Policy::FailAfterTimeout,
            Kind::Volume | Kind::Unschedulable => Policy::Wait,
        }
    }
}

/// A job's stall: its worst kind and the line that tells it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Stall {
    pub kind: Kind,
    pub message: String,
}

/// The job's stall, if a pod of the current attempt is held up. A native gang's scheduling is
/// told by its own condition (`GangScheduled`), so `Unschedulable` is left to it.
/// `claims`: the claims the pods wait for, as read (`None`: there is no such claim).
pub(super) fn find(
    plan: &Plan,
    mine: &[&PodState],
    claims: &BTreeMap<String, Option<PersistentVolumeClaim>>,
    now: &Time,
) -> Option<Stall> {
    let mut held: Vec<(Kind, &str, String)> = mine
        .iter()
        .filter(|o| o.active())
        .filter_map(|o| {
            let (kind, detail) = pod(o, claims, now)?;
            let gang_tells = kind == Kind::Unschedulable && plan.native_gang().is_some();
            (!gang_tells).then(|| (kind, o.name, format!("{} {}: {detail}", role(plan, o), o.name)))
        })
        .collect();
    held.sort();
    let (kind, _, first) = held.first()?.clone();
    let alike = held.iter().filter(|(k, ..)| *k == kind).count();
    let more = match alike {
        1 => String::new(),
        n => format!(" ({} more pod{} alike)", n - 1, if n == 2 { "" } else { "s" }),
    };
    Some(Stall {
        kind,
        message: format!("{first}{more}; {}", advice(kind)),
    })
}

/// What a stall means for the job now.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Verdict {
    /// The job fails: reason and message.
    pub fail: Option<(&'static str, String)>,
    /// Look again then, when the timeout will have passed.
    pub recheck: Option<Duration>,
}

/// Keeps `Stalled` current on `conditions` for `stall` (a new reason is a new stall, so its
/// time counts from then), clears it once the job recovered, and says whether the job fails:
/// at once, or once it has been stalled for `timeout` (zero: never) by a kind that fails then.
pub(super) fn watch(
    conditions: &mut Vec<Condition>,
    stall: Option<Stall>,
    timeout: Duration,
    now: &Time,
) -> Verdict {
    let Some(Stall { kind, message }) = stall else {
        if is_true(conditions, STALLED) {
            let message = "nothing holds the job's pods up any more";
            set_condition(conditions, STALLED, false, reasons::RECOVERED, message, now);
        }
        return Verdict::default();
    };
    let reason = kind.reason();
    if kind.policy() == Policy::Fail {
        return Verdict {
            fail: Some((reason, message)),
            recheck: None,
        };
    }
    conditions.retain(|c| !(c.type_ == STALLED && c.reason != reason));
    set_condition(conditions, STALLED, true, reason, &message, now);
    if kind.policy() == Policy::Wait || timeout.is_zero() {
        return Verdict::default();
    }
    let since = conditions
        .iter()
        .find(|c| c.type_ == STALLED)
        .map_or(now.0, |c| c.last_transition_time.0);
    let waited = now.0.duration_since(since).unsigned_abs();
    match timeout.checked_sub(waited).filter(|left| !left.is_zero()) {
        Some(left) => Verdict {
            fail: None,
            recheck: Some(left.max(Duration::from_secs(1))),
        },
        None => Verdict {
            fail: Some((
                reason,
                format!(
                    "{message}; the job was stalled for {}s (--stall-timeout)",
                    timeout.as_secs()
                ),
            )),
            recheck: None,
        },
    }
}

/// What to change, per kind.
fn advice(kind: Kind) -> &'static str {
    match kind {
        Kind::InvalidImage => "fix the image reference (spec.trainer.image, or the runtime's)",
        Kind::Config => {
            "create the missing Secret, ConfigMap or key in the job's namespace, or fix the reference (spec.trainer.env, spec.initializer.dataset or .model secretRef, or the runtime)"
        }
        Kind::ImagePull => {
            "check the image name and tag (spec.trainer.image, or the runtime's), that the nodes can reach its registry, and the pull secrets (imagePullSecrets)"
        }
        Kind::CrashLoop => "fix what makes it exit, in the runtime or the image",
        Kind::Volume => "create the PersistentVolumeClaim, or check that its StorageClass can provision it",
        Kind::Unschedulable => {
            "free or add capacity, or ask for less or for what the nodes have (spec.trainer.resourcesPerNode, the runtime's nodeSelector and tolerations)"
        }
    }
}

/// "worker pod", "launcher pod", or the step's name for any other pod.
fn role(plan: &Plan, o: &PodState) -> String {
    match plan.job_named(o.rjob).map(|j| j.role) {
        Some(Role::Launcher) => "launcher pod".into(),
        Some(Role::Node) => "worker pod".into(),
        _ => format!("{} pod", o.rjob),
    }
}

/// What holds one pod up, and the detail to tell.
fn pod(
    o: &PodState,
    claims: &BTreeMap<String, Option<PersistentVolumeClaim>>,
    now: &Time,
) -> Option<(Kind, String)> {
    let status = o.pod.status.as_ref()?;
    let containers = status
        .init_container_statuses
        .iter()
        .chain(status.container_statuses.iter())
        .flatten();
    containers
        .filter_map(|c| container(o.name, c, now))
        .min_by_key(|(kind, _)| *kind)
        .or_else(|| scheduling(o.pod, claims))
}

/// How long a container that exited with an error must run again before it no longer counts as
/// crash looping: between two back-offs it runs a moment, which is no recovery.
const CRASH_LOOP_SETTLED: i64 = 60;

fn container(pod: &str, c: &ContainerStatus, now: &Time) -> Option<(Kind, String)> {
    let state = c.state.as_ref()?;
    let waiting = state.waiting.as_ref();
    let message = waiting
        .and_then(|w| w.message.as_deref())
        .map(clean)
        .unwrap_or_default();
    let name = &c.name;
    let kind = match waiting.and_then(|w| w.reason.as_deref()) {
        Some("InvalidImageName") => Kind::InvalidImage,
        Some("ErrImagePull" | "ImagePullBackOff") => Kind::ImagePull,
        Some("CreateContainerConfigError" | "CreateContainerError") => Kind::Config,
        Some("CrashLoopBackOff") => Kind::CrashLoop,
        _ => {
            // Restarted after an error, and not yet running for long (or exited again).
            let failed_before = c
                .last_state
                .as_ref()
                .and_then(|s| s.terminated.as_ref())
                .is_some_and(|t| t.exit_code != 0);
            let settled = state
                .running
                .as_ref()
                .and_then(|r| r.started_at.as_ref())
                .is_some_and(|t| now.0.duration_since(t.0).as_secs() >= CRASH_LOOP_SETTLED);
            let running_or_exited = state.running.is_some() || state.terminated.is_some();
            match c.restart_count > 0 && failed_before && running_or_exited && !settled {
                true => Kind::CrashLoop,
                false => return None,
            }
        }
    };
    let detail = match kind {
        Kind::InvalidImage => format!(
            "container {name} has an invalid image name \"{}\": {message}",
            c.image
        ),
        Kind::ImagePull => format!(
            "container {name} cannot pull image \"{}\": {}",
            c.image,
            pull_error(&message)
        ),
        Kind::Config => format!("container {name} cannot be created: {message}"),
        _ => {
            let last = c.last_state.as_ref().and_then(|s| s.terminated.as_ref());
            let exit = last.map_or("its exit code is not known".into(), |t| {
                format!(
                    "exited with code {} ({})",
                    t.exit_code,
                    t.reason.as_deref().unwrap_or("Error")
                )
            });
            format!(
                "container {name} keeps crashing: {exit}, restarted {} times (its log: `kubectl logs {pod} -c {name} --previous`)",
                c.restart_count
            )
        }
    };
    Some((kind, detail.trim_end_matches([':', ' ']).to_string()))
}

/// The kubelet's pull error without its back-off wrapper, so that `ErrImagePull` and the
/// `ImagePullBackOff` between two tries read the same (and the condition does not flap).
fn pull_error(message: &str) -> &str {
    let message = match message.strip_prefix("Back-off pulling image ") {
        Some(rest) => rest.split_once(": ").map_or("", |(_, error)| error),
        None => message,
    };
    message.strip_prefix("ErrImagePull: ").unwrap_or(message)
}

/// The scheduler's message for a pod it cannot place.
fn unschedulable(pod: &Pod) -> Option<&str> {
    let conditions = pod.status.as_ref()?.conditions.as_ref()?;
    let c = conditions.iter().find(|c| {
        c.type_ == "PodScheduled" && c.status == "False" && c.reason.as_deref() == Some("Unschedulable")
    })?;
    Some(c.message.as_deref().unwrap_or_default())
}

/// The volume claims `pod` waits for: those it mounts, when the scheduler holds it for a claim.
pub fn claims_awaited(pod: &Pod) -> Vec<String> {
    let waits = unschedulable(pod).is_some_and(|m| m.to_ascii_lowercase().contains("persistentvolumeclaim"));
    let volumes = pod.spec.iter().flat_map(|s| s.volumes.iter().flatten());
    volumes
        .filter(|_| waits)
        .filter_map(|v| Some(v.persistent_volume_claim.as_ref()?.claim_name.clone()))
        .collect()
}

/// The scheduler's reason for a pod it cannot place: a volume claim (with its StorageClass and
/// phase), else no room.
fn scheduling(pod: &Pod, claims: &BTreeMap<String, Option<PersistentVolumeClaim>>) -> Option<(Kind, String)> {
    let message = clean(unschedulable(pod)?);
    let awaited = claims_awaited(pod);
    if !awaited.is_empty() {
        let told: Vec<String> = awaited
            .iter()
            .map(|name| {
                let state = match claims.get(name) {
                    Some(None) => "not found".to_string(),
                    Some(Some(claim)) => {
                        let class = claim.spec.as_ref().and_then(|s| s.storage_class_name.as_deref());
                        let phase = claim.status.as_ref().and_then(|s| s.phase.as_deref());
                        format!(
                            "{}, {}",
                            class.map_or("no StorageClass".into(), |c| format!("StorageClass \"{c}\"")),
                            phase.unwrap_or("Pending")
                        )
                    }
                    None => return format!("\"{name}\""),
                };
                format!("\"{name}\" ({state})")
            })
            .collect();
        return Some((
            Kind::Volume,
            format!("waits for its volume claim {}: {message}", told.join(", ")),
        ));
    }
    Some((Kind::Unschedulable, format!("cannot be scheduled: {message}")))
}

/// Longest message quoted from the kubelet or the scheduler.
const QUOTE_LIMIT: usize = 300;

/// A message from the kubelet or the scheduler fit to quote: one line, cut to a length, and
/// never with key material in it (a container's command line can end up in one).
pub(super) fn clean(message: &str) -> String {
    if message.contains("PRIVATE KEY") {
        return "(the message quotes key material and is not shown)".into();
    }
    let line = message.split_whitespace().collect::<Vec<_>>().join(" ");
    match line.char_indices().nth(QUOTE_LIMIT) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line,
    }
}
