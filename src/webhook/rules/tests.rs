use serde_json::json;

use super::*;
use crate::fixtures::{job, runtime_pod, shipped_runtime};

fn fetched(name: &str) -> Runtime {
    Runtime {
        label: format!("ClusterTrainingRuntime/{name}"),
        spec: shipped_runtime(name),
        deprecated: false,
    }
}

fn kueue_patch(time: Option<&str>, zone: &str) -> serde_json::Value {
    let mut p = json!({"manager": "kueue.x-k8s.io/manager", "trainingRuntimeSpec": {"template": {"spec": {
        "replicatedJobs": [{"name": "node", "template": {"spec": {"template": {"spec": {"nodeSelector": {"zone": zone}}}}}}]}}}});
    if let Some(t) = time {
        p["time"] = json!(t);
    }
    p
}

fn with_status(mut j: TrainJob, active: i32) -> TrainJob {
    j.status = serde_json::from_value(json!({"jobsStatus": [
        {"name": "launcher", "active": 0, "ready": 0, "succeeded": 0, "failed": 0, "suspended": 0},
        {"name": "node", "active": active, "ready": 0, "succeeded": 0, "failed": 0, "suspended": 0}]}))
    .expect("status");
    j
}

#[test]
fn a_valid_job_is_admitted_and_a_deprecated_runtime_only_warns() {
    let j = job(json!({"trainer": {"numNodes": 2}}));
    assert_eq!(
        trainjob(&j, None, Some(&fetched("mpi-openmpi")), &Limits::default()),
        Ok(vec![])
    );
    let mut old = fetched("mpi-openmpi");
    old.deprecated = true;
    assert_eq!(
        trainjob(&j, None, Some(&old), &Limits::default()),
        Ok(vec![
            "ClusterTrainingRuntime/mpi-openmpi is deprecated (trainer.kubeflow.org/support=deprecated) and may be removed: move to a supported runtime".into()
        ])
    );
}

#[test]
fn job_refusals_are_the_reconcilers_messages() {
    let rt = fetched("mpi-openmpi");
    let reserved =
        job(json!({"trainer": {"env": [{"name": "OMPI_MCA_orte_default_hostfile", "value": "x"}]}}));
    let err = trainjob(&reserved, None, Some(&rt), &Limits::default()).expect_err("reserved");
    assert!(
        err.starts_with("spec.trainer.env sets [\"OMPI_MCA_orte_default_hostfile\"]"),
        "{err}"
    );
    let big = job(json!({"trainer": {"numNodes": 5000}}));
    let err = trainjob(&big, None, Some(&rt), &Limits::default()).expect_err("too big");
    assert!(err.starts_with("the job needs 5001 pods"), "{err}");
    let bad_manager = job(json!({"runtimePatches": [{"manager": "kueue"}]}));
    let err = trainjob(&bad_manager, None, Some(&rt), &Limits::default()).expect_err("manager");
    assert_eq!(
        err,
        "spec.runtimePatches[0].manager \"kueue\" must be a domain-prefixed path such as kueue.x-k8s.io/manager or example.com/my-tool"
    );
}

#[test]
fn kueues_admission_flow_may_change_patches_but_a_running_job_may_not() {
    let rt = fetched("mpi-openmpi");
    let limits = Limits::default();
    let queued = job(json!({"suspend": true, "trainer": {"numNodes": 2}}));
    // Kueue admits: it writes its patch and unsuspends in one update.
    let admitted = job(
        json!({"suspend": false, "trainer": {"numNodes": 2}, "runtimePatches": [kueue_patch(None, "a")]}),
    );
    assert!(needs_runtime(&admitted, Some(&queued)));
    assert_eq!(trainjob(&admitted, Some(&queued), Some(&rt), &limits), Ok(vec![]));
    // While it runs, nobody may change the patch.
    let running = with_status(admitted.clone(), 2);
    let moved = job(
        json!({"suspend": false, "trainer": {"numNodes": 2}, "runtimePatches": [kueue_patch(None, "b")]}),
    );
    let err = trainjob(&moved, Some(&running), Some(&rt), &limits).expect_err("running");
    assert!(
        err.starts_with("spec.runtimePatches can change only while the TrainJob is suspended"),
        "{err}"
    );
    // Kueue's Stop: suspend first (patches unchanged), then clear the patch once nothing runs.
    let stopping =
        job(json!({"suspend": true, "trainer": {"numNodes": 2}, "runtimePatches": [kueue_patch(None, "a")]}));
    assert!(!needs_runtime(&stopping, Some(&running)));
    assert_eq!(trainjob(&stopping, Some(&running), None, &limits), Ok(vec![]));
    let draining = with_status(stopping.clone(), 1);
    let err = trainjob(&queued, Some(&draining), Some(&rt), &limits).expect_err("pods still active");
    assert_eq!(
        err,
        "spec.runtimePatches cannot change while the TrainJob still has active pods (1 pod in \"node\"): wait until status.jobsStatus shows none active, then retry"
    );
    let stopped = with_status(stopping, 0);
    assert_eq!(trainjob(&queued, Some(&stopped), Some(&rt), &limits), Ok(vec![]));
}

#[test]
fn patch_times_are_stamped_when_new_or_changed_and_kept_otherwise() {
    let now = Time(k8s_openapi::jiff::Timestamp::from_second(1_800_000_000).expect("time"));
    let stamped = "2026-01-01T00:00:00Z";
    let created = job(json!({"runtimePatches": [kueue_patch(None, "a")]}));
    let ops = stamp_patch_times(&created, None, &now);
    assert_eq!(
        ops,
        vec![json!({"op": "add", "path": "/spec/runtimePatches/0/time", "value": "2027-01-15T08:00:00Z"})]
    );
    let old = job(json!({"runtimePatches": [kueue_patch(Some(stamped), "a")]}));
    // An apply without the time keeps the old one; a changed entry gets now.
    let same = job(json!({"runtimePatches": [kueue_patch(None, "a")]}));
    assert_eq!(
        stamp_patch_times(&same, Some(&old), &now),
        vec![json!({"op": "add", "path": "/spec/runtimePatches/0/time", "value": stamped})]
    );
    assert_eq!(
        stamp_patch_times(&old, Some(&old), &now),
        Vec::<serde_json::Value>::new()
    );
    let changed = job(json!({"runtimePatches": [kueue_patch(Some(stamped), "b")]}));
    assert_eq!(
        stamp_patch_times(&changed, Some(&old), &now),
        vec![json!({"op": "add", "path": "/spec/runtimePatches/0/time", "value": "2027-01-15T08:00:00Z"})]
    );
}

#[test]
fn runtimes_need_exactly_one_policy_and_the_mpi_shape() {
    let labels = BTreeMap::new();
    let limits = Limits::default();
    let good = shipped_runtime("mpi-openmpi");
    assert_eq!(
        runtime("ClusterTrainingRuntime/x", &good, &labels, &limits),
        Ok(vec![])
    );

    let mut none = good.clone();
    none.ml_policy = None;
    assert_eq!(
        runtime("ClusterTrainingRuntime/x", &none, &labels, &limits),
        Err(
            "spec.mlPolicy: set exactly one ML policy; this operator runs MPI jobs, so set spec.mlPolicy.mpi"
                .into()
        )
    );

    let mut torch = good.clone();
    let policy = torch.ml_policy.as_mut().expect("policy");
    policy.mpi = None;
    policy.torch = Some(Default::default());
    let warnings = runtime("TrainingRuntime/t", &torch, &labels, &limits).expect("admitted with a warning");
    assert!(
        warnings[0].contains("this operator runs only MPI"),
        "{warnings:?}"
    );

    let mut two = good.clone();
    two.ml_policy.as_mut().expect("policy").jax = Some(Default::default());
    assert_eq!(
        runtime("TrainingRuntime/t", &two, &labels, &limits),
        Err("spec.mlPolicy: set exactly one ML policy, not mpi and jax".into())
    );

    let mut scaled = good.clone();
    let jobs = &mut scaled.template.spec.as_mut().expect("spec").replicated_jobs;
    let launcher = jobs.iter().position(|j| j.name == "launcher").expect("launcher");
    jobs[launcher]
        .template
        .metadata
        .get_or_insert_default()
        .labels
        .get_or_insert_default()
        .insert(ANCESTOR_LABEL.into(), ANCESTOR_TRAINER.into());
    jobs[launcher].replicas = Some(2);
    let err = runtime("TrainingRuntime/t", &scaled, &labels, &limits).expect_err("replicas");
    assert!(
        err.ends_with("(\"launcher\"): replicas must be 1 on a replicated job labelled trainer.kubeflow.org/trainjob-ancestor-step=trainer; scale with spec.trainer.numNodes instead"),
        "{err}"
    );

    let mut no_node = good.clone();
    runtime_pod(&mut no_node, "launcher").containers[0].name = "main".into();
    let err = runtime("ClusterTrainingRuntime/x", &no_node, &labels, &limits).expect_err("container");
    assert!(
        err.ends_with("(\"launcher\"): a replicated job labelled trainer.kubeflow.org/trainjob-ancestor-step=trainer needs a container named \"node\""),
        "{err}"
    );
    // Without the label, the MPI shape check says the same in the reconciler's words.
    let pod_labels = no_node.template.spec.as_mut().expect("spec").replicated_jobs[launcher]
        .template
        .metadata
        .as_mut();
    pod_labels
        .and_then(|m| m.labels.as_mut())
        .map(|l| l.remove(ANCESTOR_LABEL));
    let err = runtime("ClusterTrainingRuntime/x", &no_node, &labels, &limits).expect_err("container");
    assert_eq!(
        err,
        "runtime ClusterTrainingRuntime/x: replicated job \"launcher\" has no container named \"node\"; MPI needs it to mount the SSH keys and hostfile"
    );

    let deprecated = BTreeMap::from([(
        "trainer.kubeflow.org/support".to_string(),
        "deprecated".to_string(),
    )]);
    assert_eq!(
        runtime("ClusterTrainingRuntime/x", &good, &deprecated, &limits)
            .expect("admitted")
            .len(),
        1
    );
}

#[test]
fn managers_must_be_domain_prefixed_paths() {
    for ok in [
        "kueue.x-k8s.io/manager",
        "trainer.kubeflow.org/kubeflow-sdk",
        "example.com/a/b",
    ] {
        assert!(domain_prefixed(ok), "{ok}");
    }
    for bad in [
        "kueue",
        "/x",
        "example.com/",
        "Example.com/x",
        "localhost/x",
        "a..b/x",
        "example.com//x",
    ] {
        assert!(!domain_prefixed(bad), "{bad}");
    }
}
