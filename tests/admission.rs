//! Admission through the real API server: the shipped webhook configurations (`config/webhook`)
//! registered by URL for the operator under test, `kubectl apply` of each bad manifest refused
//! with its message and nothing created, defaults applied, runtime patches guarded the way
//! Kueue relies on, runtimes checked, one audit line per admitted change, and the certificate
//! published, renewed, or read from files as cert-manager writes them.

use trainjob_testbed::support;

use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use support::jobs::{PI_PODS, running, runtime, setup, wait_pods};
use support::{
    DEADLINE, Identity, WEBHOOK_CONFIGURATION, admitting_operator, bed, client, eventually, http_get, logs,
};
use trainjob_operator::api::TrainJob;
use trainjob_operator::webhook::{self, certs};

/// A fresh namespace with the admitting operator running.
async fn admitted(prefix: &str) -> (support::TestNs, kube::Client) {
    logs::capture();
    admitting_operator();
    setup(prefix).await
}

fn manifest(ns: &str, name: &str, spec: Value) -> String {
    let mut spec = spec;
    if spec.get("runtimeRef").is_none() {
        spec["runtimeRef"] = json!({"name": "mpi-openmpi"});
    }
    json!({
        "apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob",
        "metadata": {"name": name, "namespace": ns}, "spec": spec,
    })
    .to_string()
}

/// `kubectl apply -f -` as admin; stdout, or stderr as the error.
fn apply(yaml: &str) -> Result<String, String> {
    bed()
        .kubectl_as(Identity::Admin, &["apply", "-f", "-"], yaml)
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn kubectl_apply_of_each_bad_job_is_refused_with_its_message_and_nothing_is_created() {
    let (ns, c) = admitted("refused").await;
    let ns = &ns.name;
    let long = "a".repeat(55);
    let cases = [
        (
            "missing-cluster-runtime",
            json!({"runtimeRef": {"name": "nope"}}),
            "ClusterTrainingRuntime \"nope\" not found: create it, or point spec.runtimeRef at an existing one".to_string(),
        ),
        (
            "missing-runtime",
            json!({"runtimeRef": {"name": "elsewhere", "kind": "TrainingRuntime"}}),
            format!("TrainingRuntime \"elsewhere\" not found in namespace {ns}"),
        ),
        (
            long.as_str(),
            json!({"trainer": {"numNodes": 2}}),
            format!("metadata.name \"{long}\" is too long for runtime ClusterTrainingRuntime/mpi-openmpi"),
        ),
        (
            "huge",
            json!({"trainer": {"numNodes": 5000}}),
            "the job needs 5001 pods (spec.trainer.numNodes 5000 plus the launcher and other steps), but this operator allows at most 4096".into(),
        ),
        (
            "slots",
            json!({"trainer": {"numProcPerNode": 2000}}),
            "the job runs 2000 MPI processes per node".into(),
        ),
        (
            "image",
            json!({"trainer": {"image": "Team/Trainer:v1"}}),
            "spec.trainer.image: image \"Team/Trainer:v1\" is not a valid image reference: repository names must be lower case".into(),
        ),
        (
            "over-limit",
            json!({"trainer": {"resourcesPerNode": {"requests": {"cpu": "4"}, "limits": {"cpu": "2"}}}}),
            "spec.trainer.resourcesPerNode: requests.cpu 4 is more than limits.cpu 2; lower the request or raise the limit".into(),
        ),
        (
            "reserved",
            json!({"trainer": {"env": [{"name": "OMPI_MCA_orte_default_hostfile", "value": "/x"}]}}),
            "spec.trainer.env sets [\"OMPI_MCA_orte_default_hostfile\"], which the operator sets for MPI".into(),
        ),
        (
            "manager",
            json!({"runtimePatches": [{"manager": "kueue"}]}),
            "spec.runtimePatches[0].manager \"kueue\" must be a domain-prefixed path".into(),
        ),
        (
            "scheme",
            json!({"runtimeRef": {"name": "mpi-openmpi-initializers"}, "initializer": {
                "dataset": {"storageUri": "ftp://files/digits"}, "model": {"storageUri": "s3://models/init"}}}),
            "spec.initializer.dataset.storageUri \"ftp://files/digits\": scheme \"ftp\" is not one the initializers read; use s3://BUCKET/PREFIX or hf://ORG/NAME".into(),
        ),
        (
            "no-step",
            json!({"initializer": {"dataset": {"storageUri": "s3://data/digits"}}}),
            "spec.initializer.dataset is set, but runtime ClusterTrainingRuntime/mpi-openmpi has no replicated job labelled trainer.kubeflow.org/trainjob-ancestor-step=dataset-initializer to run it".into(),
        ),
        (
            "nothing-to-fetch",
            json!({"runtimeRef": {"name": "mpi-openmpi-initializers"}}),
            "runtime ClusterTrainingRuntime/mpi-openmpi-initializers runs a dataset initializer, which needs to know what to fetch: set spec.initializer.dataset.storageUri".into(),
        ),
    ];
    for (name, spec, message) in &cases {
        let err = apply(&manifest(ns, name, spec.clone())).expect_err(name);
        assert!(
            err.contains("admission webhook \"vtrainjob.trainer.kubeflow.org\" denied the request")
                && err.contains(message.as_str()),
            "{name}: {err}"
        );
    }
    let jobs: Api<TrainJob> = Api::namespaced(c.clone(), ns);
    assert!(
        jobs.list(&ListParams::default())
            .await
            .expect("list")
            .items
            .is_empty(),
        "nothing half-created"
    );

    // The same job, fixed, is admitted.
    apply(&manifest(ns, "fixed", json!({"trainer": {"numNodes": 2}}))).expect("a valid job is admitted");
}

#[tokio::test]
async fn defaults_are_applied_and_kept_for_unchanged_patches() {
    let (ns, c) = admitted("defaults").await;
    let jobs: Api<TrainJob> = Api::namespaced(c.clone(), &ns.name);
    let patch = json!({"manager": "example.com/tool", "trainingRuntimeSpec": {"template": {"metadata": {"labels": {"team": "a"}}}}});
    apply(&manifest(
        &ns.name,
        "stamped",
        json!({"suspend": true, "runtimePatches": [patch]}),
    ))
    .expect("admitted");
    let job = jobs.get("stamped").await.expect("get");
    let time = job.spec.runtime_patches[0]
        .time
        .clone()
        .expect("the webhook stamped the patch");
    // CRD defaults and the webhook's: runtimeRef kind and group, managedBy.
    assert_eq!(
        job.spec.runtime_ref.kind.as_deref(),
        Some("ClusterTrainingRuntime")
    );
    assert_eq!(
        job.spec.managed_by.as_deref(),
        Some("trainer.kubeflow.org/trainjob-controller")
    );

    // Re-applying the same manifest (no time in it) keeps the stamp; a changed entry gets a new one.
    apply(&manifest(
        &ns.name,
        "stamped",
        json!({"suspend": true, "runtimePatches": [patch]}),
    ))
    .expect("re-applied");
    let again = jobs.get("stamped").await.expect("get");
    assert_eq!(again.spec.runtime_patches[0].time.as_ref(), Some(&time));
    let mut changed = patch.clone();
    changed["trainingRuntimeSpec"]["template"]["metadata"]["labels"]["team"] = json!("b");
    let mut job = again;
    job.spec.runtime_patches = vec![serde_json::from_value(changed).expect("patch")];
    job.metadata.managed_fields = None;
    // A stamp is second-granular: make sure a new one can differ from the first.
    eventually("a new second", Duration::from_secs(3), || async {
        let now = trainjob_operator::lifecycle::now();
        if now.0.as_second() > time.0.as_second() {
            Ok(())
        } else {
            Err("same second".into())
        }
    })
    .await;
    let replaced = jobs
        .replace("stamped", &PostParams::default(), &job)
        .await
        .expect("replace");
    let new_time = replaced.spec.runtime_patches[0].time.clone().expect("stamped");
    assert!(new_time.0 > time.0, "{new_time:?} after {time:?}");
}

#[tokio::test]
async fn runtime_patches_change_only_while_suspended_with_no_active_pods() {
    logs::capture();
    admitting_operator();
    let (ns, c, jobs) = running("patches", |_| {}, json!({"trainer": {"numNodes": 2}})).await;
    let patch = |zone: &str| {
        json!({"spec": {"runtimePatches": [{"manager": "kueue.x-k8s.io/manager", "trainingRuntimeSpec": {"template": {"spec": {
            "replicatedJobs": [{"name": "node", "template": {"spec": {"template": {"spec": {"nodeSelector": {"zone": zone}}}}}}]}}}}]}})
    };
    let merge = PatchParams::default();
    let err = jobs
        .patch("pi", &merge, &Patch::Merge(patch("a")))
        .await
        .expect_err("a running job's patches are frozen");
    assert!(
        err.to_string()
            .contains("spec.runtimePatches can change only while the TrainJob is suspended"),
        "{err}"
    );

    // Kueue's Stop: suspend, wait until jobsStatus shows nothing active, then change the patch.
    jobs.patch("pi", &merge, &Patch::Merge(json!({"spec": {"suspend": true}})))
        .await
        .expect("suspend");
    eventually("no active pods in jobsStatus", DEADLINE, || async {
        let job = jobs.get("pi").await.map_err(|e| e.to_string())?;
        let status = job.status.unwrap_or_default();
        let active: i32 = status.jobs_status.iter().map(|j| j.active).sum();
        if !status.jobs_status.is_empty() && active == 0 {
            Ok(())
        } else {
            Err(format!("{:?}", status.jobs_status))
        }
    })
    .await;
    // Kueue's admission: the patch and the resume in one update.
    let mut admit = patch("b");
    admit["spec"]["suspend"] = json!(false);
    jobs.patch("pi", &merge, &Patch::Merge(admit))
        .await
        .expect("allowed while suspended");
    // No node has zone b, so the workers stay Pending and the launcher waits for them.
    let workers = wait_pods(&c, &ns.name, "pi", &PI_PODS[1..]).await;
    for worker in &workers {
        let selector = worker
            .spec
            .as_ref()
            .and_then(|s| s.node_selector.clone())
            .unwrap_or_default();
        assert_eq!(
            selector.get("zone").map(String::as_str),
            Some("b"),
            "resumed pods carry the new patch"
        );
    }
}

#[tokio::test]
async fn runtimes_are_checked_and_deprecated_ones_warn() {
    let (ns, c) = admitted("runtimes").await;
    let ns = &ns.name;
    let shipped = |name: &str, edit: &dyn Fn(&mut Value)| -> String {
        let path = trainjob_testbed::repo_root().join("config/runtimes/mpi-openmpi.yaml");
        let mut rt: Value =
            serde_saphyr::from_str(&std::fs::read_to_string(path).expect("runtime")).expect("yaml");
        rt["kind"] = json!("TrainingRuntime");
        rt["metadata"] = json!({"name": name, "namespace": ns});
        edit(&mut rt);
        rt.to_string()
    };
    let err = apply(&shipped("no-policy", &|rt| {
        rt["spec"]["mlPolicy"] = json!({"numNodes": 1})
    }))
    .expect_err("no policy");
    assert!(
        err.contains("vtrainingruntime.trainer.kubeflow.org")
            && err.contains("spec.mlPolicy: set exactly one ML policy"),
        "{err}"
    );
    let err = apply(&shipped("scaled", &|rt| {
        let jobs = rt["spec"]["template"]["spec"]["replicatedJobs"]
            .as_array_mut()
            .expect("jobs");
        for j in jobs.iter_mut().filter(|j| j["name"] == "launcher") {
            j["replicas"] = json!(2);
        }
    }))
    .expect_err("replicas");
    assert!(err.contains("replicas must be 1 on a replicated job labelled trainer.kubeflow.org/trainjob-ancestor-step=trainer"), "{err}");
    let err = apply(&shipped("bad-image", &|rt| {
        let jobs = rt["spec"]["template"]["spec"]["replicatedJobs"]
            .as_array_mut()
            .expect("jobs");
        for j in jobs.iter_mut().filter(|j| j["name"] == "node") {
            j["template"]["spec"]["template"]["spec"]["containers"][0]["image"] = json!("mpi:");
        }
    }))
    .expect_err("image");
    assert!(
        err.contains(
            "replicated job \"node\", container \"node\": image \"mpi:\" is not a valid image reference"
        ),
        "{err}"
    );
    let err = apply(&shipped("unmounted-claim", &|rt| {
        rt["spec"]["template"]["spec"]["volumeClaimPolicies"] = json!([{"templates": [{"metadata": {"name": "scratch"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]}]);
    }))
    .expect_err("claim");
    assert!(
        err.contains("spec.template.spec.volumeClaimPolicies[0].templates[0] (\"scratch\"): no container of any replicated job mounts a volume named \"scratch\""),
        "{err}"
    );

    // Runtime defaults come from the CRD schema, applied by the API server before admission.
    let bare = json!({"apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainingRuntime",
    "metadata": {"name": "bare", "namespace": ns},
    "spec": {"mlPolicy": {"mpi": {}}, "template": {"spec": {"replicatedJobs": [
        {"name": "launcher", "template": {"spec": {"template": {"spec": {"containers": [{"name": "node", "image": "mpi:1"}]}}}}},
        {"name": "node", "template": {"spec": {"template": {"spec": {"containers": [{"name": "node", "image": "mpi:1"}]}}}}},
    ]}}}});
    apply(&bare.to_string()).expect("a bare MPI runtime is admitted");
    let stored = Api::<trainjob_operator::api::TrainingRuntime>::namespaced(c.clone(), ns)
        .get("bare")
        .await
        .expect("get");
    let mpi = stored.spec.ml_policy.and_then(|p| p.mpi).expect("mpi");
    assert_eq!(mpi.num_proc_per_node, Some(1));
    assert_eq!(mpi.ssh_auth_mount_path.as_deref(), Some("/root/.ssh"));
    assert_eq!(mpi.run_launcher_as_node, Some(false));
    assert_eq!(
        serde_json::to_value(mpi.mpi_implementation).expect("json"),
        json!("OpenMPI")
    );

    // A deprecated runtime is admitted with a warning, and so is every job on it.
    let out = bed()
        .kubectl_as(
            Identity::Admin,
            &["apply", "-f", "-"],
            &shipped("old", &|rt| {
                rt["metadata"]["labels"] = json!({"trainer.kubeflow.org/support": "deprecated"})
            }),
        )
        .expect("admitted");
    assert!(
        out.contains("trainingruntime.trainer.kubeflow.org/old created"),
        "{out}"
    );
    let jobs: Api<TrainJob> = Api::namespaced(c.clone(), ns);
    let job: TrainJob = serde_json::from_str(&manifest(
        ns,
        "on-old",
        json!({"runtimeRef": {"name": "old", "kind": "TrainingRuntime"}, "suspend": true}),
    ))
    .expect("job");
    // kube's client surfaces warnings only in its logs; a raw request shows the header.
    let request = Api::<TrainJob>::namespaced(c.clone(), ns)
        .resource_url()
        .to_string();
    let body = serde_json::to_vec(&job).expect("body");
    let req = http::Request::post(request)
        .header("content-type", "application/json")
        .body(body)
        .expect("request");
    let response = c.send(req.map(kube::client::Body::from)).await.expect("create");
    let warning = response
        .headers()
        .get("warning")
        .and_then(|w| w.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(response.status().is_success(), "{:?}", response.status());
    assert!(
        warning.contains(
            "TrainingRuntime/old is deprecated (trainer.kubeflow.org/support=deprecated) and may be removed"
        ),
        "{warning:?}"
    );
    jobs.get("on-old").await.expect("the job exists");
}

#[tokio::test]
async fn every_admitted_trainjob_change_leaves_one_audit_line_without_the_spec() {
    let (ns, c) = admitted("audit").await;
    let jobs: Api<TrainJob> = Api::namespaced(c.clone(), &ns.name);
    let secret_env = "s3cr3t-value-not-for-logs";
    let spec = json!({"suspend": true, "trainer": {"env": [{"name": "TOKEN", "value": secret_env}]}});
    apply(&manifest(&ns.name, "audited", spec)).expect("create");
    // The operator's first status write first: an update that races it is retried by the API
    // server, which calls admission again (one more audit line for one change).
    eventually("the operator to take the job on", DEADLINE, || async {
        let job = jobs.get("audited").await.map_err(|e| e.to_string())?;
        match job.status.map(|s| s.conditions.len()) {
            Some(n) if n > 0 => Ok(()),
            _ => Err("no status yet".to_string()),
        }
    })
    .await;
    jobs.patch(
        "audited",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"x": "y"}}})),
    )
    .await
    .expect("update");
    jobs.delete("audited", &DeleteParams::default())
        .await
        .expect("delete");
    let audit = || -> Vec<Value> {
        logs::lines()
            .into_iter()
            .filter(|l| {
                l["target"] == "trainjob_operator::audit" && l["fields"]["namespace"] == ns.name.as_str()
            })
            .collect()
    };
    let lines = eventually("three audit lines", DEADLINE, || async {
        let lines = audit();
        if lines.len() >= 3 {
            Ok(lines)
        } else {
            Err(format!("{lines:?}"))
        }
    })
    .await;
    let ops: Vec<&str> = lines
        .iter()
        .filter_map(|l| l["fields"]["operation"].as_str())
        .collect();
    assert_eq!(ops, ["CREATE", "UPDATE", "DELETE"], "{lines:?}");
    for line in &lines {
        let f = &line["fields"];
        assert_eq!(f["message"], "TrainJob admitted");
        assert_eq!(f["user"], Identity::Admin.user());
        assert!(
            f["groups"]
                .as_str()
                .unwrap_or_default()
                .contains("system:masters"),
            "{f}"
        );
        assert_eq!(f["name"], "audited");
        assert_eq!(f["dry_run"], false);
    }
    let all = logs::lines().iter().map(Value::to_string).collect::<String>();
    assert!(!all.contains(secret_env), "no spec values in the operator's logs");
}

#[tokio::test]
async fn the_self_managed_ca_is_published_in_every_webhook_and_readiness_waits_for_it() {
    let (_ns, c) = admitted("certs").await;
    let secret = Api::<Secret>::namespaced(c.clone(), "trainjob-system")
        .get("trainjob-operator-webhook-certs")
        .await
        .expect("the certificate Secret");
    assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"));
    let ca = secret
        .data
        .as_ref()
        .and_then(|d| d.get("ca.crt"))
        .expect("ca.crt")
        .0
        .clone();
    let mutating = Api::<MutatingWebhookConfiguration>::all(c.clone())
        .get(WEBHOOK_CONFIGURATION)
        .await
        .expect("mutating");
    let validating = Api::<ValidatingWebhookConfiguration>::all(c.clone())
        .get(WEBHOOK_CONFIGURATION)
        .await
        .expect("validating");
    let bundles: Vec<Option<Vec<u8>>> = mutating
        .webhooks
        .iter()
        .flatten()
        .map(|w| w.client_config.ca_bundle.clone().map(|b| b.0))
        .chain(
            validating
                .webhooks
                .iter()
                .flatten()
                .map(|w| w.client_config.ca_bundle.clone().map(|b| b.0)),
        )
        .collect();
    assert_eq!(bundles.len(), 5);
    assert!(
        bundles.iter().all(|b| b.as_ref() == Some(&ca)),
        "every webhook trusts the Secret's CA"
    );
    let ready = http_get(&format!("{}/readyz", admitting_operator().http), "*/*").await;
    assert_eq!(ready.as_deref(), Ok("ok"));
}

/// Most pods per job of the second webhook servers: lower than the shared operator's, so a job
/// of 5 pods is refused by the copy alone and its refusal proves the API server reached it.
const COPY_MAX_PODS: u32 = 3;

/// A second webhook server, registered as a copy of the shipped configurations for one
/// namespace only, so the shared operator's admission is untouched. It runs as admin: its
/// certificate Secret is not the one the shipped Role grants.
async fn second_webhook(ns: &str, name: &str, source: certs::Source, ca: Option<String>) -> u16 {
    let port = support::free_port();
    let copy = trainjob_testbed::WebhookCopy {
        name: Some(name.into()),
        namespace: Some(ns.into()),
        ca,
    };
    bed()
        .register_webhook_copy(port, &copy)
        .await
        .expect("register the copy");
    let admin = client(Identity::Admin).await;
    let settings = webhook::Settings {
        addr: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        certs: source,
        limits: trainjob_operator::validate::Limits {
            max_pods_per_job: COPY_MAX_PODS,
        },
        fips: false,
        progress: None,
    };
    let ready = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let metrics = std::sync::Arc::new(trainjob_operator::metrics::Metrics::new());
    let runtimes = trainjob_operator::runtimes::Cache::start(&admin);
    tokio::spawn(webhook::serve(
        admin,
        settings,
        metrics,
        runtimes,
        ready,
        std::future::pending(),
    ));
    port
}

/// Waits until a dry-run job of 5 pods in `ns` is refused by the copy `name`.
async fn refused_by(c: &kube::Client, ns: &str, name: &str) {
    let jobs: Api<TrainJob> = Api::namespaced(c.clone(), ns);
    let probe: TrainJob =
        serde_json::from_str(&manifest(ns, "probe", json!({"trainer": {"numNodes": 4}}))).expect("probe");
    let dry_run = PostParams {
        dry_run: true,
        ..Default::default()
    };
    eventually(&format!("the copy {name} to refuse a job"), DEADLINE, || async {
        match jobs.create(&dry_run, &probe).await {
            Err(kube::Error::Api(e))
                if e.message.contains(&format!("{name}.vtrainjob"))
                    && e.message
                        .contains(&format!("allows at most {COPY_MAX_PODS} per job")) =>
            {
                Ok(())
            }
            other => Err(format!("{other:?}")),
        }
    })
    .await;
}

#[tokio::test]
async fn a_short_lived_certificate_is_renewed_and_admission_keeps_working() {
    let (ns, c) = admitted("renewal").await;
    let name = "renewal";
    // 9 s certificates, checked every second, renewed with 3 s left: a renewal every ~6 s.
    let source = certs::Source::SelfManaged(certs::SelfManaged {
        namespace: ns.name.clone(),
        secret: "renewal-certs".into(),
        hosts: vec!["127.0.0.1".into()],
        validity: Duration::from_secs(9),
        configuration: name.into(),
    });
    second_webhook(&ns.name, name, source, None).await;
    let validating = Api::<ValidatingWebhookConfiguration>::all(c.clone());
    let bundle = || async {
        validating
            .get(name)
            .await
            .ok()
            .and_then(|v| v.webhooks?.first()?.client_config.ca_bundle.clone())
            .map(|b| b.0)
    };
    let mut seen = Vec::new();
    for round in 0..3 {
        let current = eventually(&format!("renewal {round}"), Duration::from_secs(40), || async {
            match bundle().await {
                Some(b) if !seen.contains(&b) => Ok(b),
                other => Err(format!("{} bytes", other.map_or(0, |b| b.len()))),
            }
        })
        .await;
        seen.push(current);
        refused_by(&c, &ns.name, name).await;
    }
}

#[tokio::test]
async fn certificates_from_files_are_served_and_reloaded_when_they_change() {
    let (ns, c) = admitted("files").await;
    let name = "files";
    let dir = tempfile_dir(name);
    let hosts = vec!["127.0.0.1".to_string()];
    let write = |bundle: &certs::Bundle| {
        std::fs::write(dir.join("tls.crt"), &bundle.cert).expect("tls.crt");
        std::fs::write(dir.join("tls.key"), &bundle.key).expect("tls.key");
    };
    let (first, _) = certs::generate(&hosts, Duration::from_secs(3600), None).expect("first");
    write(&first);
    let port = second_webhook(
        &ns.name,
        name,
        certs::Source::Files(dir.clone()),
        Some(first.ca.clone()),
    )
    .await;
    refused_by(&c, &ns.name, name).await;

    // cert-manager renews: new files, then the CA injector sets the new CA (old one kept).
    let (second, _) = certs::generate(&hosts, Duration::from_secs(3600), Some(&first.ca)).expect("second");
    write(&second);
    let copy = trainjob_testbed::WebhookCopy {
        name: Some(name.into()),
        namespace: Some(ns.name.clone()),
        ca: Some(
            second
                .ca
                .split_inclusive("-----END CERTIFICATE-----\n")
                .next()
                .unwrap_or_default()
                .to_string(),
        ),
    };
    // Only the new CA is trusted now, so a refusal proves the new certificate is served.
    bed()
        .register_webhook_copy(port, &copy)
        .await
        .expect("re-register with the new CA");
    refused_by(&c, &ns.name, name).await;
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempfile_dir(name: &str) -> std::path::PathBuf {
    let dir = bed().dir().join(format!("certs-{name}"));
    std::fs::create_dir_all(&dir).expect("cert dir");
    dir
}

#[tokio::test]
async fn a_job_on_a_runtime_created_in_the_same_apply_is_admitted() {
    let (ns, c) = admitted("same-apply").await;
    runtime(&c, &ns.name, "mpi-openmpi", "fresh", |_| {}).await;
    apply(&manifest(
        &ns.name,
        "right-after",
        json!({"runtimeRef": {"name": "fresh", "kind": "TrainingRuntime"}, "suspend": true}),
    ))
    .expect("a runtime created just before is found (admission reads it, not a cache)");
}
