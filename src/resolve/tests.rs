use k8s_openapi::api::core::v1::Container;
use serde_json::json;

use super::*;
use crate::api::MPIImplementation;
use crate::fixtures::{job, plan, shipped_runtime};
use crate::plan::{Cluster, Plan, Role};

/// [`super::resolve`] of a runtime labelled `label`, in a default cluster.
fn resolve(job: &TrainJob, label: &str, spec: &TrainingRuntimeSpec) -> Result<Plan, ResolveError> {
    super::resolve(job, &Runtime::new(label, spec.clone()), &Cluster::default())
}

fn node_container(plan: &Plan, role: Role) -> Container {
    let job = plan.job(role).expect("job with role");
    job.template
        .spec
        .as_ref()
        .expect("spec")
        .containers
        .iter()
        .find(|c| c.name == NODE)
        .expect("node")
        .clone()
}

fn env_value(c: &Container, name: &str) -> Option<String> {
    c.env
        .as_ref()?
        .iter()
        .find(|e| e.name == name)
        .and_then(|e| e.value.clone())
}

#[test]
fn four_node_openmpi_job_has_four_workers_and_one_launcher() {
    let p = plan(&job(json!({"trainer": {"numNodes": 4}})), "mpi-openmpi");
    let shape: Vec<_> = p
        .jobs
        .iter()
        .map(|j| (j.name.as_str(), j.role, j.replicas, j.parallelism))
        .collect();
    assert_eq!(
        shape,
        [("node", Role::Node, 1, 4), ("launcher", Role::Launcher, 1, 1)]
    );
    assert_eq!(
        (p.implementation, p.slots, p.num_nodes),
        (MPIImplementation::OpenMPI, 1, 4)
    );
    assert_eq!(p.subdomain, "pi");
    assert!(p.publish_not_ready);
    assert_eq!(p.ssh_mount_path, "/home/mpiuser/.ssh");
    let hosts: Vec<_> = p.hosts().collect();
    assert_eq!(
        hosts,
        [("node", 0, 0), ("node", 0, 1), ("node", 0, 2), ("node", 0, 3)]
    );
    assert_eq!(p.total_pods(), 5);
    assert_eq!(
        p.job(Role::Launcher).expect("launcher").depends_on[0].name,
        "node"
    );
}

#[test]
fn num_nodes_defaults_to_the_runtime() {
    assert_eq!(plan(&job(json!({})), "mpi-openmpi").num_nodes, 2);
}

#[test]
fn launcher_as_node_counts_the_launcher_among_the_nodes() {
    let mut runtime = shipped_runtime("mpi-openmpi");
    runtime
        .ml_policy
        .as_mut()
        .and_then(|p| p.mpi.as_mut())
        .expect("mpi")
        .run_launcher_as_node = Some(true);
    let resolve_n =
        |n: i32| resolve(&job(json!({"trainer": {"numNodes": n}})), "rt", &runtime).expect("resolves");

    // numNodes 1 is exactly one pod: the launcher (upstream makes two, kubeflow/trainer#3954).
    let one = resolve_n(1);
    assert_eq!(one.total_pods(), 1);
    assert_eq!(one.hosts().collect::<Vec<_>>(), [("launcher", 0, 0)]);

    let three = resolve_n(3);
    assert_eq!(three.total_pods(), 3);
    assert_eq!(
        three.hosts().collect::<Vec<_>>(),
        [("launcher", 0, 0), ("node", 0, 0), ("node", 0, 1)]
    );
}

#[test]
fn trainer_overrides_reach_every_node_but_command_only_the_launcher() {
    let p = plan(
        &job(json!({"trainer": {
            "image": "example/train:v2",
            "command": ["mpirun", "python", "train.py"],
            "args": ["--epochs", "3"],
            "env": [{"name": "EPOCHS", "value": "3"}],
            "resourcesPerNode": {"limits": {"nvidia.com/gpu": "4", "memory": "8Gi"}},
        }})),
        "mpi-openmpi",
    );
    let (worker, launcher) = (node_container(&p, Role::Node), node_container(&p, Role::Launcher));
    assert_eq!(worker.image.as_deref(), Some("example/train:v2"));
    assert_eq!(launcher.image.as_deref(), Some("example/train:v2"));
    assert_eq!(
        launcher.command,
        Some(vec!["mpirun".into(), "python".into(), "train.py".into()])
    );
    assert_eq!(launcher.args, Some(vec!["--epochs".into(), "3".into()]));
    assert_eq!(
        worker.command.as_ref().map(|c| c[0].as_str()),
        Some("/usr/sbin/sshd"),
        "workers keep sshd"
    );
    assert_eq!(env_value(&worker, "EPOCHS").as_deref(), Some("3"));
    assert_eq!(env_value(&launcher, "EPOCHS").as_deref(), Some("3"));
    let limits = |c: &Container| {
        c.resources
            .as_ref()
            .and_then(|r| r.limits.clone())
            .unwrap_or_default()
    };
    assert_eq!(
        limits(&worker).get("nvidia.com/gpu").map(|q| q.0.as_str()),
        Some("4")
    );
    assert!(
        limits(&launcher).is_empty(),
        "a launcher that runs no ranks needs no GPUs"
    );
    // The GPU count sets the slots when the runtime leaves them at 1.
    assert_eq!(p.slots, 4);
}

#[test]
fn explicit_slots_win_over_gpus_and_runtime() {
    let p = plan(
        &job(
            json!({"trainer": {"numProcPerNode": 2, "resourcesPerNode": {"limits": {"nvidia.com/gpu": "8"}}}}),
        ),
        "mpi-openmpi",
    );
    assert_eq!(p.slots, 2);
}

#[test]
fn reserved_env_is_refused_with_the_names() {
    let err = resolve(
        &job(json!({"trainer": {"env": [{"name": "OMPI_MCA_orte_default_hostfile", "value": "/x"}, {"name": "OK", "value": "1"}]}})),
        "rt",
        &shipped_runtime("mpi-openmpi"),
    )
    .expect_err("reserved");
    assert_eq!(
        err,
        ResolveError::ReservedEnv {
            names: vec!["OMPI_MCA_orte_default_hostfile".into()]
        }
    );
    assert!(err.to_string().contains("spec.trainer.env"));
    assert_eq!(err.reason(), "InvalidSpec");
}

#[test]
fn runtime_patches_apply_in_order_to_the_named_job() {
    let patch = |manager: &str, zone: &str| {
        json!({"manager": manager, "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [{
            "name": "node",
            "template": {"spec": {"template": {
                "metadata": {"labels": {"team": manager}, "annotations": {"note": "x"}},
                "spec": {
                    "nodeSelector": {"zone": zone},
                    "tolerations": [{"key": "gpu", "operator": "Exists"}],
                    "schedulingGates": [{"name": "example.com/gate"}],
                    "containers": [{"name": "node", "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}]}],
                    "volumes": [{"name": "scratch", "emptyDir": {}}]
                }
            }}}
        }]}}}})
    };
    let p = plan(
        &job(json!({"runtimePatches": [patch("kueue.x-k8s.io/manager", "a"), patch("example.com/b", "b")]})),
        "mpi-openmpi",
    );
    let node = p.job(Role::Node).expect("node");
    let spec = node.template.spec.as_ref().expect("spec");
    assert_eq!(
        spec.node_selector
            .as_ref()
            .and_then(|s| s.get("zone"))
            .map(String::as_str),
        Some("b"),
        "later patch wins"
    );
    assert_eq!(spec.tolerations.as_ref().map(Vec::len), Some(1));
    assert_eq!(
        spec.scheduling_gates.as_ref().map(Vec::len),
        Some(1),
        "gates upsert by name"
    );
    assert_eq!(spec.volumes.as_ref().map(Vec::len), Some(1));
    let labels = node
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    assert_eq!(labels.get("team").map(String::as_str), Some("example.com/b"));
    let launcher = p
        .job(Role::Launcher)
        .expect("launcher")
        .template
        .spec
        .as_ref()
        .expect("spec");
    assert!(
        launcher.node_selector.is_none(),
        "patches touch only the named job"
    );
}

#[test]
fn patches_naming_unknown_jobs_or_containers_are_refused() {
    let unknown_job = json!([{"manager": "example.com/a", "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [{"name": "workers"}]}}}}]);
    let err = resolve(
        &job(json!({"runtimePatches": unknown_job})),
        "ClusterTrainingRuntime/mpi-openmpi",
        &shipped_runtime("mpi-openmpi"),
    )
    .expect_err("unknown job");
    assert!(
        err.to_string()
            .contains("replicated job \"workers\" does not exist"),
        "{err}"
    );

    let env_on_node = json!([{"manager": "example.com/a", "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [{
        "name": "node", "template": {"spec": {"template": {"spec": {"containers": [{"name": "node", "env": [{"name": "A", "value": "1"}]}]}}}}
    }]}}}}]);
    let err = resolve(
        &job(json!({"runtimePatches": env_on_node})),
        "rt",
        &shipped_runtime("mpi-openmpi"),
    )
    .expect_err("env");
    assert!(
        matches!(err, ResolveError::PatchEnvOnStepContainer { .. }),
        "{err}"
    );

    let unknown_container = json!([{"manager": "example.com/a", "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [{
        "name": "node", "template": {"spec": {"template": {"spec": {"containers": [{"name": "sidecar"}]}}}}
    }]}}}}]);
    let err = resolve(
        &job(json!({"runtimePatches": unknown_container})),
        "rt",
        &shipped_runtime("mpi-openmpi"),
    )
    .expect_err("container");
    assert!(err.to_string().contains("no container \"sidecar\""), "{err}");
}

#[test]
fn runtimes_that_cannot_run_mpi_are_explained() {
    let mut not_mpi = shipped_runtime("mpi-openmpi");
    not_mpi.ml_policy = None;
    let err = resolve(&job(json!({})), "ClusterTrainingRuntime/torch", &not_mpi).expect_err("not mpi");
    assert_eq!(err.reason(), "TrainingRuntimeNotSupported");
    assert!(
        err.to_string()
            .contains("ClusterTrainingRuntime/torch has no spec.mlPolicy.mpi"),
        "{err}"
    );

    let mut no_launcher = shipped_runtime("mpi-openmpi");
    no_launcher
        .template
        .spec
        .as_mut()
        .expect("spec")
        .replicated_jobs
        .retain(|j| j.name != LAUNCHER);
    let err = resolve(&job(json!({})), "rt", &no_launcher).expect_err("no launcher");
    assert!(matches!(err, ResolveError::NoLauncher { .. }), "{err}");

    let mut bare_node = shipped_runtime("mpi-openmpi");
    let jobs = &mut bare_node.template.spec.as_mut().expect("spec").replicated_jobs;
    jobs[0]
        .template
        .spec
        .as_mut()
        .expect("job spec")
        .template
        .spec
        .as_mut()
        .expect("pod")
        .containers[0]
        .name = "worker".into();
    let err = resolve(&job(json!({})), "rt", &bare_node).expect_err("no node container");
    assert!(
        err.to_string().contains("has no container named \"node\""),
        "{err}"
    );
}

#[test]
fn intel_and_mpich_runtimes_resolve_with_their_implementation() {
    assert_eq!(
        plan(&job(json!({"runtimeRef": {"name": "mpi-intel"}})), "mpi-intel").implementation,
        MPIImplementation::Intel
    );
    assert_eq!(
        plan(&job(json!({"runtimeRef": {"name": "mpi-mpich"}})), "mpi-mpich").implementation,
        MPIImplementation::Mpich
    );
}

#[test]
fn initializer_settings_reach_the_initializer_container() {
    let mut runtime = shipped_runtime("mpi-openmpi");
    let init: crate::api::ReplicatedJob = serde_json::from_value(json!({
        "name": "dataset-initializer",
        "template": {
            "metadata": {"labels": {"trainer.kubeflow.org/trainjob-ancestor-step": "dataset-initializer"}},
            "spec": {"template": {"spec": {"containers": [{"name": "dataset-initializer", "image": "init"}]}}}
        }
    }))
    .expect("rjob");
    runtime
        .template
        .spec
        .as_mut()
        .expect("spec")
        .replicated_jobs
        .insert(0, init);
    let j = job(
        json!({"initializer": {"dataset": {"storageUri": "hf://org/data", "env": [{"name": "SPLIT", "value": "train"}], "secretRef": {"name": "hf"}}}}),
    );
    let p = resolve(&j, "rt", &runtime).expect("resolves");
    let init = &p.jobs[0];
    assert_eq!((init.role, init.pods()), (Role::Other, 1));
    let c = &init.template.spec.as_ref().expect("spec").containers[0];
    assert_eq!(env_value(c, "STORAGE_URI").as_deref(), Some("hf://org/data"));
    assert_eq!(env_value(c, "SPLIT").as_deref(), Some("train"));
    assert_eq!(
        c.env_from
            .as_ref()
            .and_then(|e| e[0].secret_ref.as_ref())
            .map(|s| s.name.as_str()),
        Some("hf")
    );
}

fn with_policies(runtime: &str, policies: serde_json::Value) -> TrainingRuntimeSpec {
    let mut spec = shipped_runtime(runtime);
    let template = spec.template.spec.as_mut().expect("spec");
    template.volume_claim_policies = serde_json::from_value(policies).expect("policies");
    spec
}

fn volumes(plan: &Plan, rjob: &str) -> Vec<(String, String)> {
    let pod = plan.job_named(rjob).and_then(|j| j.template.spec.as_ref());
    pod.and_then(|p| p.volumes.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|v| {
            Some((
                v.name.clone(),
                v.persistent_volume_claim.as_ref()?.claim_name.clone(),
            ))
        })
        .collect()
}

#[test]
fn a_claim_template_becomes_one_claim_per_job_mounted_where_the_runtime_mounts_it() {
    let runtime = shipped_runtime("mpi-openmpi-initializers");
    let p = resolve(&job(json!({})), "rt", &runtime).expect("resolves");
    assert_eq!(p.claims.len(), 1);
    assert_eq!(
        (p.claims[0].name.as_str(), p.claims[0].retain),
        ("initializer-pi", false)
    );
    for rjob in ["dataset-initializer", "model-initializer", "node", "launcher"] {
        assert_eq!(
            volumes(&p, rjob),
            [("initializer".to_string(), "initializer-pi".to_string())],
            "{rjob}"
        );
    }
    // The initializers run first, the workers after both finished.
    let node = p.job_named("node").expect("node");
    let deps: Vec<_> = node.depends_on.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(deps, ["dataset-initializer", "model-initializer"]);
}

#[test]
fn a_claim_only_goes_to_pods_that_mount_it_and_retain_keeps_it_from_the_job() {
    let mut spec = with_policies(
        "mpi-openmpi",
        json!([{"templates": [{"metadata": {"name": "scratch"}, "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}],
                "retentionPolicy": {"whenDeleted": "Retain"}}]),
    );
    let launcher = spec.template.spec.as_mut().expect("spec").replicated_jobs[1]
        .template
        .spec
        .as_mut()
        .and_then(|j| j.template.spec.as_mut())
        .expect("pod");
    launcher.containers[0].volume_mounts = Some(vec![
        serde_json::from_value(json!({"name": "scratch", "mountPath": "/scratch"})).expect("mount"),
    ]);
    let p = resolve(&job(json!({})), "rt", &spec).expect("resolves");
    assert_eq!(
        volumes(&p, "launcher"),
        [("scratch".to_string(), "scratch-pi".to_string())]
    );
    assert!(volumes(&p, "node").is_empty());
    assert!(p.claims[0].retain);
}

#[test]
fn claim_templates_that_cannot_work_are_refused_naming_the_field_and_the_fix() {
    let claim = |extra: serde_json::Value| {
        let mut t = json!({"metadata": {"name": "initializer"}, "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}});
        merge(&mut t, extra);
        t
    };
    let cases = [
        (
            json!([{"templates": [claim(json!({"metadata": {"name": "unused"}}))]}]),
            "no container of any replicated job mounts a volume named \"unused\"",
        ),
        (
            json!([{"templates": [claim(json!({"metadata": {"namespace": "other"}}))]}]),
            "must not set metadata.namespace",
        ),
        (
            json!([{"templates": [claim(json!({"metadata": {"name": "Big_Name"}}))]}]),
            "must be a DNS label",
        ),
        (
            json!([{"templates": [claim(json!({"spec": {"resources": {"requests": {"storage": null}}}}))]}]),
            "needs spec.resources.requests.storage",
        ),
        (
            json!([{"templates": [claim(json!({"spec": {"resources": {"requests": {"storage": "0"}}}}))]}]),
            "is not a positive quantity",
        ),
        (
            json!([{"templates": [claim(json!({"spec": {"accessModes": []}}))]}]),
            "needs spec.accessModes",
        ),
        (
            json!([{"templates": [claim(json!({}))]}, {"templates": [claim(json!({}))]}]),
            "an earlier template names already",
        ),
        (
            json!([{"templates": [claim(json!({}))], "retentionPolicy": {"whenDeleted": "Forever"}}]),
            "volumeClaimPolicies[0].retentionPolicy.whenDeleted: must be Delete or Retain",
        ),
    ];
    for (policies, expected) in cases {
        // The shipped runtime's own policy is replaced: its mounts stay.
        let spec = with_policies("mpi-openmpi-initializers", policies);
        let err = resolve(&job(json!({})), "rt", &spec).expect_err(expected);
        assert!(err.to_string().contains(expected), "{err}");
        assert_eq!(err.reason(), crate::reasons::INVALID_RUNTIME);
    }
    // A pod template that brings its own volume of the template's name.
    let mut spec = shipped_runtime("mpi-openmpi-initializers");
    let rjob = &mut spec.template.spec.as_mut().expect("spec").replicated_jobs[2];
    let pod = rjob
        .template
        .spec
        .as_mut()
        .and_then(|j| j.template.spec.as_mut())
        .expect("pod");
    pod.volumes = Some(vec![
        serde_json::from_value(json!({"name": "initializer", "emptyDir": {}})).expect("volume"),
    ]);
    let err = resolve(&job(json!({})), "rt", &spec).expect_err("refused");
    assert!(
        err.to_string()
            .contains("replicated job \"node\" defines a volume of that name itself"),
        "{err}"
    );
}

fn merge(base: &mut serde_json::Value, extra: serde_json::Value) {
    match (base, extra) {
        (serde_json::Value::Object(b), serde_json::Value::Object(e)) => {
            for (k, v) in e {
                match b.get_mut(&k) {
                    _ if v.is_null() => {
                        b.remove(&k);
                    }
                    Some(slot) if v.is_object() => merge(slot, v),
                    _ => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, e) => *b = e,
    }
}
