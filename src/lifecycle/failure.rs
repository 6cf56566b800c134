//! What broke an MPI world, in one line a user can act on: which pod, which container, the exit
//! code and reason, and what to do next.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ContainerStateTerminated, ContainerStatus};

use crate::api::{ANCESTOR_DATASET_INITIALIZER, ANCESTOR_LABEL, ANCESTOR_MODEL_INITIALIZER, NODE, TrainJob};
use crate::plan::{Plan, Role};

use super::pod_state::PodState;

/// The first pod of the current attempt that breaks the world: failed, lost with its node
/// (`lost_nodes`: why each is), deleted by someone else (eviction, drain), or, once the launcher
/// exists, missing altogether. `log`: the tail of a failed pod's log, `(pod, text)`: a launcher's
/// names SSH, DNS, key or network trouble, an initializer's last line says what it could not fetch.
pub(super) fn broken(
    job: &TrainJob,
    plan: &Plan,
    mine: &[&PodState],
    log: Option<(&str, &str)>,
    lost_nodes: &BTreeMap<String, String>,
) -> Option<String> {
    let failed = mine.iter().find(|o| o.failed());
    let lost = mine.iter().find(|o| o.lost && !o.succeeded());
    if let (None, Some(o)) = (failed, lost) {
        let node = o.node().unwrap_or_default();
        let why = lost_nodes
            .get(node)
            .map_or("the pod's phase is Unknown", String::as_str);
        return Some(format!(
            "pod {} lost its node {node} ({why}); MPI cannot continue without it",
            o.name
        ));
    }
    failed
        .or_else(|| mine.iter().find(|o| o.deleting && !o.succeeded()))
        .map(|o| {
            let log = log.filter(|(pod, _)| *pod == o.name).map(|(_, text)| text);
            if let Some(failed) = initializer(job, o, log) {
                return failed;
            }
            let cause = log
                .filter(|_| o.rjob == plan.launcher())
                .and_then(|log| super::diagnose::launcher_log(log, plan));
            let host = plan.job_named(o.rjob).is_some_and(|j| plan.gang_member(j.role));
            let resources = if host {
                "spec.trainer.resourcesPerNode, or the runtime's"
            } else {
                "in the runtime's pod template, or with a runtimePatch"
            };
            describe(o, cause, resources)
        })
        .or_else(|| missing_worker(job.metadata.name.as_deref().unwrap_or_default(), plan, mine))
}

/// The failure of an initializer step, with what the job asked it to fetch, the last line of its
/// log and the Secret its credentials come from: what a user checks first.
fn initializer(job: &TrainJob, o: &PodState, log: Option<&str>) -> Option<String> {
    let step = o.pod.metadata.labels.as_ref()?.get(ANCESTOR_LABEL)?;
    // `dataset` or `model`: the field under spec.initializer, and the step's name in words.
    let field = [ANCESTOR_DATASET_INITIALIZER, ANCESTOR_MODEL_INITIALIZER]
        .contains(&step.as_str())
        .then(|| step.strip_suffix("-initializer"))??;
    let settings = job.spec.initializer.as_ref().and_then(|i| i.for_step(step));
    // Its log, else its termination message (what a container leaves in
    // /dev/termination-log, readable where its log is not).
    let told = || {
        let statuses = o.pod.status.as_ref()?.container_statuses.as_ref()?;
        let t = statuses
            .iter()
            .find_map(|c| c.state.as_ref()?.terminated.as_ref().filter(|t| t.exit_code != 0))?;
        t.message.as_deref().and_then(last_line)
    };
    let mut cause = log
        .and_then(last_line)
        .or_else(told)
        .map(|line| format!("its last log line: {line:?}"));
    if let Some(secret) = settings.and_then(|s| s.secret_ref.as_ref()) {
        let hint = format!(
            "its credentials come from Secret {} (spec.initializer.{field}.secretRef)",
            secret.name
        );
        cause = Some(cause.map_or(hint.clone(), |c| format!("{c}; {hint}")));
    }
    let uri = settings
        .and_then(|s| s.storage_uri.as_deref())
        .map_or(String::new(), |u| format!(" reading {u}"));
    Some(format!(
        "the {field} initializer failed{uri}, so training did not start: {}",
        describe(o, cause, "in the runtime's pod template, or with a runtimePatch")
    ))
}

/// The last line of `log` with something on it, at most 300 characters.
fn last_line(log: &str) -> Option<String> {
    let line = log.lines().map(str::trim).rfind(|l| !l.is_empty())?;
    Some(match line.char_indices().nth(300) {
        Some((at, _)) => format!("{}…", &line[..at]),
        None => line.to_string(),
    })
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
/// `resources`: where the pod's resources are set, for an out-of-memory kill.
fn describe(o: &PodState, cause: Option<String>, resources: &str) -> String {
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
    let mut exited: Vec<_> = terminated(status.and_then(|s| s.container_statuses.as_ref()), false)
        .chain(terminated(
            status.and_then(|s| s.init_container_statuses.as_ref()),
            true,
        ))
        .collect();
    // A container that failed first, the training container before others.
    exited.sort_by_key(|(name, _, t)| (t.exit_code == 0, *name != NODE));
    let Some((container, init, t)) = exited.into_iter().next() else {
        let why = status
            .and_then(|s| s.message.clone().or(s.reason.clone()))
            .unwrap_or_else(|| "no container status".into());
        return format!("pod {} failed: {why}", o.name);
    };
    let reason = t.reason.as_deref().unwrap_or("Error");
    let hint = match (cause, reason) {
        (Some(cause), _) => format!("; {cause}"),
        (None, "OOMKilled") => {
            let limit = memory_limit(o, container).map_or(String::new(), |l| format!(" at its limit of {l}"));
            format!("; it ran out of memory{limit}: raise the memory limit ({resources})")
        }
        (None, _) => format!("; see `kubectl logs {} -c {container}`", o.name),
    };
    let what = if init { "init container" } else { "container" };
    format!(
        "pod {} failed: {what} {container} exited with code {} ({reason}){hint}",
        o.name, t.exit_code
    )
}

/// The containers of `statuses` that exited: name, whether an init container, how.
fn terminated(
    statuses: Option<&Vec<ContainerStatus>>,
    init: bool,
) -> impl Iterator<Item = (&str, bool, &ContainerStateTerminated)> {
    statuses
        .into_iter()
        .flatten()
        .filter_map(move |c| Some((c.name.as_str(), init, c.state.as_ref()?.terminated.as_ref()?)))
}

/// The memory limit of `container` in the pod's spec, as written there (`64Mi`).
fn memory_limit(o: &PodState, container: &str) -> Option<String> {
    let spec = o.pod.spec.as_ref()?;
    let c = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .find(|c| c.name == container)?;
    Some(c.resources.as_ref()?.limits.as_ref()?.get("memory")?.0.clone())
}
