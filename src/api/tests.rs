//! The API's contract without a server: upstream manifests round-trip with defaults applied, and
//! every CEL rule rejects a bad object with its message while accepting the good one.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::*;

fn fixture(name: &str) -> String {
    let path = format!("{}/tests/fixtures/upstream/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

/// Parses `yaml` as `K` and returns the original and the re-serialised JSON.
fn round_trip<K: DeserializeOwned + Serialize>(yaml: &str) -> (Value, Value, K) {
    let original: Value = serde_saphyr::from_str(yaml).expect("fixture is YAML");
    let typed: K = serde_json::from_value(original.clone()).expect("fixture parses as the kind");
    let back = serde_json::to_value(&typed).expect("serialises");
    (original, back, typed)
}

/// Every value in `sub` appears unchanged in `sup`, at the same path; returns the first mismatch.
fn missing(sub: &Value, sup: &Value, path: &str) -> Option<String> {
    match (sub, sup) {
        (Value::Object(a), Value::Object(b)) => a.iter().find_map(|(k, v)| match b.get(k) {
            Some(w) => missing(v, w, &format!("{path}.{k}")),
            None => Some(format!("{path}.{k} was dropped")),
        }),
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => a
            .iter()
            .zip(b)
            .enumerate()
            .find_map(|(i, (v, w))| missing(v, w, &format!("{path}[{i}]"))),
        (Value::Number(a), Value::Number(b)) if a.as_f64() == b.as_f64() => None,
        // Quantities are strings on the wire; YAML may spell them as numbers (`nvidia.com/gpu: 8`).
        (Value::Number(a), Value::String(b)) if a.to_string() == *b => None,
        (a, b) if a == b => None,
        (a, b) => Some(format!("{path}: {a} became {b}")),
    }
}

fn assert_lossless(original: &Value, back: &Value) {
    if let Some(problem) = missing(original, back, "") {
        panic!("round trip lost data: {problem}");
    }
}

fn mpi_policy(spec: &TrainingRuntimeSpec) -> &MPIMLPolicySource {
    spec.ml_policy
        .as_ref()
        .and_then(|p| p.mpi.as_ref())
        .expect("mpi policy")
}

#[test]
fn upstream_runtime_round_trips_with_defaults() {
    let (original, back, rt) = round_trip::<ClusterTrainingRuntime>(&fixture("deepspeed-distributed.yaml"));
    assert_lossless(&original, &back);
    let mpi = mpi_policy(&rt.spec);
    assert_eq!(mpi.mpi_implementation, Some(MPIImplementation::OpenMPI));
    assert_eq!(mpi.run_launcher_as_node, Some(true));
    let jobs = &rt
        .spec
        .template
        .spec
        .as_ref()
        .expect("template spec")
        .replicated_jobs;
    assert_eq!(
        jobs.iter().map(|j| j.name.as_str()).collect::<Vec<_>>(),
        [NODE, LAUNCHER]
    );
    // Defaults the API server would apply are applied on parse too.
    assert_eq!(jobs[0].replicas, Some(1));
    assert_eq!(jobs[0].group_name.as_deref(), Some("default"));
    assert_eq!(
        jobs[1].depends_on,
        [DependsOn {
            name: NODE.into(),
            status: DependsOnStatus::Ready
        }]
    );
}

#[test]
fn intel_runtime_round_trips_with_defaults() {
    let (original, back, rt) = round_trip::<TrainingRuntime>(&fixture("intel-runtime.yaml"));
    assert_lossless(&original, &back);
    let mpi = mpi_policy(&rt.spec);
    assert_eq!(mpi.mpi_implementation, Some(MPIImplementation::Intel));
    assert_eq!(mpi.ssh_auth_mount_path.as_deref(), Some("/root/.ssh"));
    assert_eq!(mpi.run_launcher_as_node, Some(false));
    assert_eq!(back["spec"]["mlPolicy"]["mpi"]["mpiImplementation"], "Intel");
    let failure = rt
        .spec
        .template
        .spec
        .as_ref()
        .and_then(|s| s.failure_policy.as_ref());
    assert_eq!(
        failure.and_then(|f| f.restart_strategy),
        Some(RestartStrategy::Recreate)
    );
}

#[test]
fn sdk_trainjob_round_trips_with_defaults() {
    let (original, back, job) = round_trip::<TrainJob>(&fixture("trainjob-sdk.yaml"));
    assert_lossless(&original, &back);
    assert_eq!(
        job.spec.runtime_ref.kind.as_deref(),
        Some("ClusterTrainingRuntime")
    );
    assert_eq!(job.spec.runtime_ref.api_group.as_deref(), Some(GROUP));
    assert_eq!(job.spec.suspend, Some(false));
    assert_eq!(job.spec.managed_by.as_deref(), Some(MANAGED_BY_TRAINER));
    assert_eq!(job.spec.trainer.as_ref().and_then(|t| t.num_nodes), Some(2));
}

#[test]
fn kueue_trainjob_with_runtime_patches_round_trips() {
    let (original, back, job) = round_trip::<TrainJob>(&fixture("trainjob-kueue.yaml"));
    assert_lossless(&original, &back);
    let managers: Vec<_> = job
        .spec
        .runtime_patches
        .iter()
        .map(|p| p.manager.as_str())
        .collect();
    assert_eq!(
        managers,
        ["trainer.kubeflow.org/kubeflow-sdk", "kueue.x-k8s.io/manager"]
    );
    let status = job.status.as_ref().expect("status");
    assert_eq!(status.jobs_status[0].suspended, 1);
    assert!(job.validate_cel().is_ok());
}

// === CEL rules ===

fn job(spec: Value) -> TrainJob {
    serde_json::from_value(json!({
        "apiVersion": "trainer.kubeflow.org/v1alpha1",
        "kind": "TrainJob",
        "metadata": {"name": "pi", "namespace": "default"},
        "spec": spec,
    }))
    .expect("test job parses")
}

fn runtime(spec: Value) -> TrainingRuntime {
    serde_json::from_value(json!({
        "apiVersion": "trainer.kubeflow.org/v1alpha1",
        "kind": "TrainingRuntime",
        "metadata": {"name": "rt", "namespace": "default"},
        "spec": spec,
    }))
    .expect("test runtime parses")
}

/// The messages of every failed rule, as `path: message`.
fn errors(result: Result<(), kube::core::cel::ValidationErrors>) -> Vec<String> {
    match result {
        Ok(()) => vec![],
        Err(errs) => errs.into_vec().iter().map(ToString::to_string).collect(),
    }
}

fn assert_rejected(result: Result<(), kube::core::cel::ValidationErrors>, message: &str) {
    let errs = errors(result);
    assert!(
        errs.iter().any(|e| e.contains(message)),
        "expected {message:?}, got {errs:?}"
    );
}

fn base_job() -> Value {
    json!({"runtimeRef": {"name": "mpi-openmpi"}, "trainer": {"numNodes": 2, "numProcPerNode": 1}})
}

#[test]
fn good_job_passes_every_rule() {
    assert_eq!(errors(job(base_job()).validate_cel()), Vec::<String>::new());
}

#[test]
fn job_name_must_be_an_rfc1035_label() {
    let mut bad = job(base_job());
    bad.metadata.name = Some("1-starts-with-digit".into());
    assert_rejected(
        bad.validate_cel(),
        "metadata.name must match RFC 1035 DNS label format",
    );
    bad.metadata.name = Some("a".repeat(64));
    assert_rejected(
        bad.validate_cel(),
        "metadata.name must be no more than 63 characters",
    );
}

#[test]
fn num_nodes_and_procs_must_be_positive() {
    let mut spec = base_job();
    spec["trainer"]["numNodes"] = json!(0);
    assert_rejected(job(spec).validate_cel(), "numNodes must be at least 1");
    let mut spec = base_job();
    spec["trainer"]["numProcPerNode"] = json!(0);
    assert_rejected(job(spec).validate_cel(), "numProcPerNode must be at least 1");
}

#[test]
fn managed_by_must_be_a_known_controller() {
    let mut spec = base_job();
    spec["managedBy"] = json!("example.com/other");
    assert_rejected(
        job(spec).validate_cel(),
        "ManagedBy must be trainer.kubeflow.org/trainjob-controller or kueue.x-k8s.io/multikueue",
    );
    let mut spec = base_job();
    spec["managedBy"] = json!(MANAGED_BY_MULTIKUEUE);
    assert!(job(spec).validate_cel().is_ok());
}

#[test]
fn storage_uri_needs_a_scheme() {
    let mut spec = base_job();
    spec["initializer"] = json!({"dataset": {"storageUri": "no-scheme"}});
    assert_rejected(job(spec).validate_cel(), "storageUri must be a URI with a scheme");
    let mut spec = base_job();
    spec["initializer"] = json!({"model": {"storageUri": "hf://org/model"}});
    assert!(job(spec).validate_cel().is_ok());
}

#[test]
fn immutable_fields_cannot_change() {
    let old = {
        let mut spec = base_job();
        spec["activeDeadlineSeconds"] = json!(60);
        spec["initializer"] = json!({"model": {"storageUri": "hf://org/a"}});
        spec["runtimePatches"] = json!([{"manager": "example.com/a"}]);
        job(spec)
    };
    assert!(old.validate_cel_update(&old).is_ok());
    let changes = [
        ("/runtimeRef/name", json!("other")),
        ("/trainer/numNodes", json!(3)),
        ("/initializer/model/storageUri", json!("hf://org/b")),
        ("/activeDeadlineSeconds", json!(61)),
        ("/managedBy", json!(MANAGED_BY_MULTIKUEUE)),
        ("/runtimePatches/0/manager", json!("example.com/b")),
    ];
    for (pointer, value) in changes {
        let mut spec = serde_json::to_value(&old.spec).expect("spec serialises");
        *spec.pointer_mut(pointer).expect("pointer exists") = value;
        let errs = errors(job(spec).validate_cel_update(&old));
        assert!(
            errs.iter().any(|e| e.contains("field is immutable")),
            "changing {pointer} must be refused, got {errs:?}"
        );
    }
    // Suspending is how Kueue works: it must stay mutable.
    let mut spec = serde_json::to_value(&old.spec).expect("spec serialises");
    spec["suspend"] = json!(true);
    assert!(job(spec).validate_cel_update(&old).is_ok());
}

#[test]
fn trainer_status_needs_last_updated_time() {
    let mut bad = job(base_job());
    bad.status = Some(TrainJobStatus {
        trainer_status: Some(TrainerStatus {
            progress_percentage: Some(50),
            ..Default::default()
        }),
        ..Default::default()
    });
    assert_rejected(
        bad.validate_cel(),
        "lastUpdatedTime is required when trainerStatus is present",
    );
}

fn base_runtime() -> Value {
    json!({
        "mlPolicy": {"numNodes": 2, "mpi": {"numProcPerNode": 1}},
        "template": {"spec": {"replicatedJobs": [
            {"name": "node", "template": {"spec": {"template": {"spec": {"containers": [{"name": "node"}]}}}}},
            {"name": "launcher", "dependsOn": [{"name": "node", "status": "Ready"}],
             "template": {"spec": {"template": {"spec": {"containers": [{"name": "node"}]}}}}}
        ]}}
    })
}

#[test]
fn good_runtime_passes_every_rule() {
    assert_eq!(
        errors(runtime(base_runtime()).validate_cel()),
        Vec::<String>::new()
    );
}

#[test]
fn only_one_ml_policy() {
    let mut spec = base_runtime();
    spec["mlPolicy"]["torch"] = json!({});
    assert_rejected(
        runtime(spec).validate_cel(),
        "Only one of the policy can be configured",
    );
}

#[test]
fn runtime_numbers_must_be_positive() {
    let mut spec = base_runtime();
    spec["mlPolicy"]["mpi"]["numProcPerNode"] = json!(0);
    assert_rejected(
        runtime(spec).validate_cel(),
        "NumProcPerNode in mpiPolicy must be >= 1",
    );
    let mut spec = base_runtime();
    spec["mlPolicy"]["numNodes"] = json!(0);
    assert_rejected(runtime(spec).validate_cel(), "numNodes must be at least 1");
}

#[test]
fn ssh_mount_path_must_be_absolute() {
    let mut spec = base_runtime();
    spec["mlPolicy"]["mpi"]["sshAuthMountPath"] = json!("home/.ssh");
    assert_rejected(
        runtime(spec).validate_cel(),
        "sshAuthMountPath must be an absolute path",
    );
}

#[test]
fn startup_policy_excludes_depends_on() {
    let mut spec = base_runtime();
    spec["template"]["spec"]["startupPolicy"] = json!({"startupPolicyOrder": "InOrder"});
    assert_rejected(
        runtime(spec).validate_cel(),
        "StartupPolicy and DependsOn APIs are mutually exclusive",
    );
    let mut spec = base_runtime();
    spec["template"]["spec"]["startupPolicy"] = json!({"startupPolicyOrder": "AnyOrder"});
    assert!(runtime(spec).validate_cel().is_ok());
}

#[test]
fn only_one_gang_plugin() {
    let mut spec = base_runtime();
    spec["podGroupPolicy"] = json!({"coscheduling": {}, "volcano": {}});
    assert_rejected(
        runtime(spec).validate_cel(),
        "Only one of coscheduling and volcano can be configured",
    );
    let mut spec = base_runtime();
    spec["podGroupPolicy"] = json!({"workload": {}, "volcano": {}});
    assert_rejected(
        runtime(spec).validate_cel(),
        "Only one of coscheduling, volcano and workload can be configured",
    );
    let mut spec = base_runtime();
    spec["podGroupPolicy"] = json!({"workload": {"scheduleTimeoutSeconds": 120}});
    assert!(runtime(spec).validate_cel().is_ok());
}

#[test]
fn jobset_policies_are_immutable() {
    let mut with_network = base_runtime();
    with_network["template"]["spec"]["network"] = json!({"publishNotReadyAddresses": true});
    let old = runtime(with_network.clone());
    with_network["template"]["spec"]["network"] = json!({"publishNotReadyAddresses": false});
    assert_rejected(
        runtime(with_network).validate_cel_update(&old),
        "Value is immutable",
    );
}

// === generated CRDs ===

#[test]
fn crds_have_the_upstream_shape() {
    let crds = crds();
    let names: Vec<_> = crds
        .iter()
        .map(|c| c.metadata.name.clone().unwrap_or_default())
        .collect();
    assert_eq!(
        names,
        [
            "trainjobs.trainer.kubeflow.org",
            "trainingruntimes.trainer.kubeflow.org",
            "clustertrainingruntimes.trainer.kubeflow.org"
        ]
    );
    assert_eq!(crds[2].spec.scope, "Cluster");
    let json = serde_json::to_string(&crds).expect("CRDs serialise");
    assert!(
        !json.contains("\"nullable\""),
        "upstream schemas are not nullable"
    );
    let job = serde_json::to_value(&crds[0]).expect("CRD serialises");
    let version = &job["spec"]["versions"][0];
    let columns: Vec<_> = version["additionalPrinterColumns"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| c["name"].clone())
        .collect();
    assert_eq!(
        columns,
        ["State", "Runtime", "Nodes", "Progress %", "Seconds Left", "Age"]
    );
    assert_eq!(job["spec"]["names"]["shortNames"], json!(["tj"]));
    assert!(version["subresources"]["status"].is_object());
    let conditions =
        &version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]["conditions"];
    assert_eq!(conditions["x-kubernetes-list-type"], "map");
    assert_eq!(conditions["x-kubernetes-list-map-keys"], json!(["type"]));
}

#[test]
fn checked_in_crds_match_the_code() {
    let dir = format!("{}/crds", env!("CARGO_MANIFEST_DIR"));
    for crd in crds() {
        let name = crate::crdgen::file_name(&crd);
        let want = crate::crdgen::to_yaml(&crd).expect("CRD renders");
        let have = std::fs::read_to_string(format!("{dir}/{name}")).unwrap_or_default();
        assert!(
            have == want,
            "crds/{name} is stale or missing: run `make crds` and commit the result"
        );
    }
}
