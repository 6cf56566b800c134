use serde_json::json;

use super::*;

fn job(status: Option<serde_json::Value>) -> TrainJob {
    let mut value = json!({
        "apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob",
        "metadata": {"name": "pi", "namespace": "ns", "uid": "u1"},
        "spec": {"runtimeRef": {"name": "mpi"}},
    });
    if let Some(status) = status {
        value["status"] = status;
    }
    serde_json::from_value(value).expect("job")
}

fn memory() -> (Memory, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new());
    (Memory::new(metrics.clone()), metrics)
}

fn pod(name: &str) -> Arc<Pod> {
    let mut pod = Pod::default();
    pod.metadata.name = Some(name.into());
    Arc::new(pod)
}

/// `trainjob_jobs_active{phase}` as exported.
fn active(metrics: &Metrics, phase: &str) -> String {
    let prefix = format!("trainjob_jobs_active{{phase=\"{phase}\"}} ");
    metrics
        .encode()
        .lines()
        .find_map(|l| l.strip_prefix(&prefix).map(str::to_string))
        .unwrap_or_default()
}

#[test]
fn a_new_job_counts_from_first_sight_its_pod_counts_wait_and_its_secret_is_remembered() {
    let (memory, _) = memory();
    let new = job(None);
    assert_eq!(
        memory.status_wait(&new),
        StatusHold::default(),
        "unknown job: write at once"
    );
    memory.saw(&new);
    let first = memory.first_seen(&new).expect("first seen");
    memory.saw(&new);
    assert_eq!(memory.first_seen(&new), Some(first), "the first sight stays");
    assert!(
        memory
            .status_wait(&new)
            .counts
            .is_some_and(|d| d <= STATUS_INTERVAL)
    );
    memory.status_written(&new);
    assert!(memory.status_wait(&new).milestone.is_some());
    assert!(!memory.secret_known(&new));
    memory.secret_exists(&new, "s1");
    assert!(memory.secret_known(&new));
    assert_eq!(memory.secret_uid(&new).as_deref(), Some("s1"));
    assert_eq!(
        memory.unreported(&new, ["x".to_string(), "y".to_string()]),
        ["x", "y"]
    );
    assert_eq!(
        memory.unreported(&new, ["y".to_string(), "z".to_string()]),
        ["z"],
        "each foreign pod is reported once"
    );
    memory.retain(|uid| uid == "u1");
    assert_eq!(memory.len(), 1, "a live job is kept");
    memory.retain(|_| false);
    assert_eq!(memory.len(), 0, "a job gone while the watch was away is dropped");
    memory.saw(&new);
    memory.secret_exists(&new, "s1");
    assert_eq!(
        (memory.len(), memory.first_seen(&new)),
        (0, None),
        "and stays gone"
    );
}

#[test]
fn created_pods_are_awaited_until_the_watch_shows_them() {
    let (memory, _) = memory();
    let j = job(None);
    memory.created(&j, ["a".to_string(), "b".to_string()]);
    assert_eq!(memory.awaited(&j, &[pod("a")]), BTreeSet::from(["b".to_string()]));
    assert_eq!(memory.awaited(&job(None), &[pod("b")]), BTreeSet::new());
    memory.created(&j, ["c".to_string()]);
    memory.settle(&j);
    assert_eq!(
        memory.awaited(&j, &[]),
        BTreeSet::new(),
        "a finished job awaits nothing"
    );
}

#[test]
fn deleted_pods_look_deleting_until_the_watch_shows_them_so() {
    let (memory, _) = memory();
    let j = job(None);
    let with_uid = |name: &str, deleting: bool| {
        let mut pod = (*pod(name)).clone();
        pod.metadata.uid = Some(format!("uid-{name}"));
        if deleting {
            pod.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
        }
        Arc::new(pod)
    };
    let deleting = |pods: &[Arc<Pod>]| -> Vec<bool> {
        pods.iter()
            .map(|p| p.metadata.deletion_timestamp.is_some())
            .collect()
    };
    let before = lifecycle::now();
    memory.deleted(&j, ["uid-a".to_string(), "uid-b".to_string()]);
    memory.settle(&j);
    let seen = memory.deleting(
        &j,
        vec![with_uid("a", false), with_uid("b", false), with_uid("c", false)],
    );
    assert_eq!(
        deleting(&seen),
        [true, true, false],
        "deleted, not shown yet; even once finished"
    );
    let since = seen[0].metadata.deletion_timestamp.clone().expect("deleting");
    let second = |t: &Time| t.0.as_second();
    assert!(
        second(&before) <= second(&since) && since.0 <= lifecycle::now().0,
        "deleting since the delete, not since this look: a resumed job tells its suspension's pods by it"
    );
    assert_eq!(
        since.0.subsec_nanosecond(),
        0,
        "in whole seconds, as the API server keeps the resume's time: a suspension's pods deleted \
         earlier in the second the job resumed are still the suspension's"
    );
    let seen = memory.deleting(&j, vec![with_uid("a", true), with_uid("c", false)]);
    assert_eq!(deleting(&seen), [true, false], "a shown deleting, b gone");
    let seen = memory.deleting(&j, vec![with_uid("a", false)]);
    assert_eq!(
        deleting(&seen),
        [false],
        "forgotten once shown: a pod of that uid is as the watch says"
    );
}

#[test]
fn a_copy_from_before_the_finishing_write_is_outdated_and_the_finished_one_is_not() {
    let (memory, _) = memory();
    let running = job(Some(json!({"jobsStatus": []})));
    assert!(!memory.outdated(&running));
    memory.secret_exists(&running, "s2");
    memory.finished(&running);
    memory.retire_key(&running);
    memory.settle(&running);
    assert!(memory.outdated(&running), "the cache has not caught up yet");
    assert!(memory.key_retired(&running), "settling keeps the retired key");
    assert!(!memory.secret_known(&running), "and drops the rest");
    let complete = job(Some(json!({"conditions": [{"type": "Complete", "status": "True",
        "reason": "JobsCompleted", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}]})));
    assert!(!memory.outdated(&complete));
    memory.forget(&running);
    assert!(!memory.outdated(&running), "forgotten with the job");
}

#[test]
fn a_job_without_status_waits_no_longer_than_the_interval_after_its_creation() {
    let (memory, _) = memory();
    let mut new = job(None);
    new.metadata.creation_timestamp = Some(lifecycle::now());
    memory.saw(&new);
    let hold = memory.status_wait(&new);
    assert!(
        hold.milestone.is_some() && hold.counts.is_some(),
        "just created: its counts wait"
    );
    let created = |ago: i64| {
        Some(Time(
            lifecycle::now().0 - k8s_openapi::jiff::SignedDuration::from_secs(ago),
        ))
    };
    new.metadata.creation_timestamp = created(10);
    let hold = memory.status_wait(&new);
    assert!(
        hold.milestone.is_none() && hold.counts.is_some(),
        "a new leader seeing it for the first time 10 s after its creation: its milestones at once: {hold:?}"
    );
    new.metadata.creation_timestamp = created(70);
    assert_eq!(
        memory.status_wait(&new),
        StatusHold::default(),
        "a new leader seeing it for the first time 70 s after its creation: all at once"
    );
}

#[test]
fn counts_between_milestones_wait_longer_while_many_jobs_counts_wait() {
    let (memory, _) = memory();
    let with_uid = |uid: String| {
        let mut j = job(None);
        j.metadata.uid = Some(uid);
        j
    };
    let jobs: Vec<TrainJob> = (0..800).map(|i| with_uid(format!("u{i}"))).collect();
    for j in &jobs {
        memory.saw(j);
        memory.status_written(j);
    }
    let wait = |memory: &Memory| memory.status_wait(&jobs[0]);
    let quiet = wait(&memory);
    assert!(quiet.counts.is_some_and(|d| d <= STATUS_INTERVAL), "{quiet:?}");
    // Each of n jobs waiting writes once in n / rate seconds: the rate, all together.
    let spread = |n: u32| Duration::from_secs(u64::from(n / COUNT_WRITES_PER_SECOND));
    let about = |d: Option<Duration>, want: Duration| {
        d.is_some_and(|d| d <= want && d + Duration::from_secs(1) > want)
    };
    let n = 20 * COUNT_WRITES_PER_SECOND;
    for j in &jobs[..n as usize] {
        memory.status_holding(j, true);
    }
    let busy = wait(&memory);
    assert!(
        about(busy.counts, spread(n)),
        "{n} jobs waiting at {COUNT_WRITES_PER_SECOND}/s: {busy:?}"
    );
    assert!(busy.milestone.is_some_and(|d| d <= STATUS_INTERVAL), "{busy:?}");
    let mut older = jobs[0].clone();
    let created = lifecycle::now().0 - k8s_openapi::jiff::SignedDuration::from_secs(10);
    older.metadata.creation_timestamp = Some(Time(created));
    let hold = memory.status_wait(&older);
    assert!(
        hold.milestone.is_none() && hold.counts.is_some(),
        "a job without status, 10 s old: its milestone at once, its counts within the longer wait: {hold:?}"
    );
    for j in &jobs {
        memory.status_holding(j, true);
    }
    assert!(spread(800) > MAX_COUNTS_INTERVAL);
    let most = wait(&memory).counts;
    assert!(
        about(most, MAX_COUNTS_INTERVAL),
        "800 jobs waiting: the longest wait: {most:?}"
    );
    // Jobs that wrote, finished or went no longer count.
    for j in jobs[..150].iter().chain(&jobs[350..780]) {
        memory.status_holding(j, false);
    }
    for j in &jobs[150..300] {
        memory.settle(j);
    }
    for j in &jobs[300..350] {
        memory.forget(j);
    }
    memory.retain(|uid| uid != "u799");
    assert_eq!(memory.lock().holding.len(), 19);
    assert!(spread(19) < STATUS_INTERVAL);
    assert!(wait(&memory).counts.is_some_and(|d| d <= STATUS_INTERVAL));
    memory.status_holding(&with_uid("unknown".into()), true);
    assert_eq!(
        memory.lock().holding.len(),
        19,
        "a job not remembered is not counted"
    );
}

#[test]
fn a_job_an_earlier_run_reconciled_is_not_timed_from_now() {
    let (memory, _) = memory();
    let old = job(Some(json!({"jobsStatus": []})));
    memory.saw(&old);
    assert_eq!((memory.first_seen(&old), memory.len()), (None, 0));
    assert_eq!(memory.status_wait(&old), StatusHold::default());
}

#[test]
fn the_active_gauge_follows_phases_and_a_gone_job_is_never_counted_again() {
    let (memory, metrics) = memory();
    let a = job(None);
    let mut b = job(None);
    b.metadata.uid = Some("u2".into());
    memory.set_phase(&a, Some(Phase::Starting));
    memory.set_phase(&b, Some(Phase::Starting));
    memory.set_phase(&a, Some(Phase::Running));
    assert_eq!(
        (active(&metrics, "running"), active(&metrics, "starting")),
        ("1".into(), "1".into())
    );
    memory.set_phase(&b, Some(Phase::Complete));
    memory.settle(&b);
    assert_eq!(active(&metrics, "starting"), "0", "a finished job is not active");
    assert!(memory.counts_active("u1") && !memory.counts_active("u2"));
    memory.forget(&a);
    assert_eq!(active(&metrics, "running"), "0");
    // A reconcile that began before the deletion ends after it.
    memory.set_phase(&a, Some(Phase::Running));
    assert_eq!(
        active(&metrics, "running"),
        "0",
        "a gone job is not counted again"
    );
    assert!(!memory.counts_active("u1"));
    // Dropped after a re-list that no longer holds it: likewise.
    memory.set_phase(&b, Some(Phase::Running));
    memory.retain(|_| false);
    memory.set_phase(&b, Some(Phase::Running));
    assert_eq!(active(&metrics, "running"), "0");
}

#[test]
fn a_refused_create_is_remembered_until_one_succeeds() {
    let (memory, _) = memory();
    let j = job(None);
    assert!(!memory.create_failed(&j));
    memory.create_result(&j, false);
    assert!(memory.create_failed(&j));
    memory.create_result(&j, true);
    assert!(!memory.create_failed(&j));
}
