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
