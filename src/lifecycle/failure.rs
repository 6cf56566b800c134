//! What broke an MPI world, in one line a user can act on: which pod, which container, the exit
//! code and reason, and what to do next.

use crate::api::NODE;
use crate::plan::{Plan, Role};

use super::pod_state::PodState;

/// The first pod of the current attempt that breaks the world: failed, deleted by someone else
/// (eviction, drain, node loss), or, once the launcher exists, missing altogether. A failed
/// launcher's log, when given, names SSH, DNS or key trouble.
pub(super) fn broken(
    job: &str,
    plan: &Plan,
    mine: &[&PodState],
    launcher_log: Option<&str>,
) -> Option<String> {
    mine.iter()
        .find(|o| o.failed())
        .or_else(|| mine.iter().find(|o| o.deleting && !o.succeeded()))
        .map(|o| {
            let cause = launcher_log
                .filter(|_| o.rjob == plan.launcher())
                .and_then(|log| super::diagnose::launcher_log(log, plan));
            describe(o, cause)
        })
        .or_else(|| missing_worker(job, plan, mine))
}

/// Once the launcher runs, every worker must exist: one that vanished (deleted, or its node lost
/// and the pod garbage-collected) has taken its ranks with it.
fn missing_worker(job: &str, plan: &Plan, mine: &[&PodState]) -> Option<String> {
    let launcher = plan.launcher();
    if !mine.iter().any(|o| o.rjob == launcher) {
        return None;
    }
    let node = plan.job(Role::Node)?;
    let at = node
        .indices()
        .find(|at| !mine.iter().any(|o| o.rjob == node.name && o.at == *at))?;
    let name = crate::names::pod(job, &node.name, at.job_index, at.index);
    Some(format!(
        "pod {name} disappeared while the job ran (deleted, evicted or its node was lost); MPI cannot continue without it"
    ))
}

/// One line saying which pod failed, how, and what to do about it (`cause`, when known).
fn describe(o: &PodState, cause: Option<String>) -> String {
    let status = o.pod.status.as_ref();
    if o.deleting && !o.failed() {
        return format!(
            "pod {} was deleted while the job ran (evicted, drained or its node was lost); MPI cannot continue without it",
            o.name
        );
    }
    if status.and_then(|s| s.reason.as_deref()) == Some("Evicted") {
        let why = status.and_then(|s| s.message.clone()).unwrap_or_default();
        return format!("pod {} was evicted: {why}", o.name)
            .trim_end_matches([':', ' '])
            .to_string();
    }
    let terminated = status.and_then(|s| s.container_statuses.as_ref()).and_then(|cs| {
        let mut cs: Vec<_> = cs
            .iter()
            .filter_map(|c| Some((c.name.as_str(), c.state.as_ref()?.terminated.as_ref()?)))
            .collect();
        // The training container first, then any container that failed.
        cs.sort_by_key(|(name, t)| (*name != NODE, t.exit_code == 0));
        cs.into_iter().next()
    });
    match terminated {
        Some((container, t)) => {
            let reason = t.reason.as_deref().unwrap_or("Error");
            let hint = match (cause, reason) {
                (Some(cause), _) => format!("; {cause}"),
                (None, "OOMKilled") => {
                    "; it ran out of memory: raise the memory limit (spec.trainer.resourcesPerNode)"
                        .to_string()
                }
                (None, _) => format!("; see `kubectl logs {} -c {container}`", o.name),
            };
            format!(
                "pod {} failed: container {container} exited with code {} ({reason}){hint}",
                o.name, t.exit_code
            )
        }
        None => {
            let why = status
                .and_then(|s| s.message.clone().or(s.reason.clone()))
                .unwrap_or_else(|| "no container status".into());
            format!("pod {} failed: {why}", o.name)
        }
    }
}
