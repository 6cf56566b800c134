//! Data in, results out, for real (a module of `realnode_training`, sharing its real node): the real node's S3 server (versitygw, a host
//! process on the node's bridge), a volume that the bed's default StorageClass provisions
//! (kube-controller-manager's hostpath provisioner), and `s3sync` in real pods: the initializer
//! image downloads a data set from S3 into the claim as root, the training image reads it as uid
//! 1000, trains on it with `/home/mpiuser/train --data`, saves the model with `--save` and
//! uploads it with `s3sync put`; the test reads the model back from S3. Deleting the claim
//! deletes its volume and the host directory. Then what a user gets wrong: refused credentials
//! and a missing bucket fail the pod with a last log line that names the bucket and says what to
//! check, and the secret key is nowhere in the log.
//!
//! No operator runs here: the pods are plain pods on the real node, so that the bed's parts are
//! proven apart from the operator that will use them.

use trainjob_testbed::support;

use std::time::Duration;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod, Secret};
use kube::Client;
use kube::api::{Api, DeleteParams, LogParams, PostParams};
use serde_json::json;
use support::data::{digits_csv, gzip_stored};
use support::{DEADLINE, TestNs, client, eventually, real_bed};
use trainjob_operator::api::TrainJob;
use trainjob_testbed::s3::S3;
use trainjob_testbed::{Identity, REAL_NODE, STORAGE_CLASS};

/// A pod on the shared 2-core node, its image imported already: started, run and ended.
const POD_DEADLINE: Duration = Duration::from_secs(180);

const INITIALIZER: &str = "trainjob.local/initializer:bed";
const OPENMPI4: &str = "trainjob.local/openmpi4:bed";

/// Where every pod mounts the claim: the data set's directory is the volume's root, as Kubeflow's
/// dataset initializer fills it. The hostpath provisioner makes that root root's, mode 0750, and a
/// hostPath volume gets no `fsGroup`; `s3sync get` (as root) opens the directory it downloads into
/// to 0755, so the trainer, uid 1000, can read it. A directory below the root would stay closed.
const DATASET: &str = "/workspace/dataset";

/// The bed's S3 server (the bed has a real node, so it has one).
fn s3() -> &'static S3 {
    real_bed().s3().expect("a bed with a real node has an S3 server")
}

/// A Secret `name` holding S3 credentials under the Kubeflow initializers' names, for `envFrom`.
async fn credentials(c: &Client, ns: &str, name: &str, access_key: &str, secret_key: &str) {
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ns},
        "stringData": {"ACCESS_KEY_ID": access_key, "SECRET_ACCESS_KEY": secret_key},
    }))
    .expect("secret");
    Api::<Secret>::namespaced(c.clone(), ns)
        .create(&PostParams::default(), &secret)
        .await
        .expect("create the credentials Secret");
}

/// A pod on the real node running `command` in `image` as `uid`, never restarted, with the
/// claim `data` at [`DATASET`], the bed's S3 endpoint in `ENDPOINT` and the Secret `secret` as
/// its environment.
async fn run_pod(c: &Client, ns: &str, name: &str, image: &str, uid: i64, secret: &str, command: &[&str]) {
    run_pod_at(c, ns, name, (image, uid), (&s3().endpoint, secret), command).await
}

/// [`run_pod`] with the S3 server at `endpoint`.
async fn run_pod_at(
    c: &Client,
    ns: &str,
    name: &str,
    (image, uid): (&str, i64),
    (endpoint, secret): (&str, &str),
    command: &[&str],
) {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "restartPolicy": "Never",
            "nodeSelector": {REAL_NODE: "true"},
            "tolerations": [{"key": REAL_NODE, "operator": "Exists", "effect": "NoSchedule"}],
            "securityContext": {"runAsUser": uid, "runAsGroup": uid},
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}],
            "containers": [{
                "name": "main", "image": image, "imagePullPolicy": "Never", "command": command,
                "env": [{"name": "ENDPOINT", "value": endpoint}],
                "envFrom": [{"secretRef": {"name": secret}}],
                "volumeMounts": [{"name": "data", "mountPath": DATASET}],
                "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}},
            }],
        },
    }))
    .expect("pod");
    Api::<Pod>::namespaced(c.clone(), ns)
        .create(&PostParams::default(), &pod)
        .await
        .expect("create pod");
}

/// Waits until pod `name` ends; its phase, the container's exit code and termination message,
/// and its log.
async fn ended(c: &Client, ns: &str, name: &str) -> (String, i32, String, String) {
    let pods: Api<Pod> = Api::namespaced(c.clone(), ns);
    let (phase, code, message) = eventually(&format!("pod {name} to end"), POD_DEADLINE, || async {
        let pod = pods.get(name).await.map_err(|e| e.to_string())?;
        let status = pod.status.unwrap_or_default();
        let phase = status.phase.clone().unwrap_or_default();
        if phase != "Succeeded" && phase != "Failed" {
            return Err(format!("phase {phase:?}, conditions {:?}", status.conditions));
        }
        let terminated = status
            .container_statuses
            .unwrap_or_default()
            .into_iter()
            .find_map(|s| s.state.and_then(|s| s.terminated))
            .ok_or("no terminated container yet")?;
        Ok((
            phase,
            terminated.exit_code,
            terminated.message.unwrap_or_default(),
        ))
    })
    .await;
    let log = pods
        .logs(name, &LogParams::default())
        .await
        .unwrap_or_else(|e| format!("(no log: {e})"));
    (phase, code, message, log)
}

/// A claim `data` of the default class (none named: the DefaultStorageClass admission plugin
/// fills it in), waited for until it is Bound; the name of its PersistentVolume.
async fn claim(c: &Client, ns: &str) -> String {
    let pvc: PersistentVolumeClaim = serde_json::from_value(json!({
        "metadata": {"name": "data", "namespace": ns},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    }))
    .expect("pvc");
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(c.clone(), ns);
    let created = claims
        .create(&PostParams::default(), &pvc)
        .await
        .expect("create the claim");
    assert_eq!(
        created.spec.and_then(|s| s.storage_class_name).as_deref(),
        Some(STORAGE_CLASS),
        "the claim gets the default StorageClass"
    );
    eventually("the claim to bind", DEADLINE, || async {
        let pvc = claims.get("data").await.map_err(|e| e.to_string())?;
        let status = pvc.status.clone().unwrap_or_default();
        match (status.phase.as_deref(), pvc.spec.and_then(|s| s.volume_name)) {
            (Some("Bound"), Some(volume)) => Ok(volume),
            (phase, _) => Err(format!("phase {phase:?}")),
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn data_in_through_a_provisioned_volume_and_results_out() {
    // First: the bed of this binary starts with a real node (and so an S3 server).
    let s3 = s3();
    let c = client(Identity::Admin).await;
    let ns = TestNs::new("s3-data").await;
    let ns = ns.name.as_str();
    let bucket = ns.to_string();
    s3.create_bucket(&bucket).await.expect("create the bucket");
    let readme = format!("the digits, for {ns}\n");
    let data = gzip_stored(digits_csv(400).as_bytes());
    s3.put_object(&bucket, "datasets/digits/digits.csv.gz", data.clone())
        .await
        .expect("put the data set");
    s3.put_object(&bucket, "datasets/digits/docs/README", readme.clone())
        .await
        .expect("put the readme");
    // Outside the prefix: must not be downloaded.
    s3.put_object(&bucket, "datasets/digits2/other", "other")
        .await
        .expect("put another object");
    assert_eq!(
        s3.list(&bucket, "datasets/digits/").await.expect("list"),
        ["datasets/digits/digits.csv.gz", "datasets/digits/docs/README"]
    );
    credentials(&c, ns, "s3-credentials", &s3.access_key, &s3.secret_key).await;

    let volume = claim(&c, ns).await;
    let pv = Api::<PersistentVolume>::all(c.clone())
        .get(&volume)
        .await
        .expect("the claim's volume");
    let host_dir = std::path::PathBuf::from(
        pv.spec
            .and_then(|s| s.host_path)
            .map(|h| h.path)
            .expect("a hostPath volume"),
    );
    assert!(
        host_dir.starts_with("/tmp/hostpath_pv") && host_dir.is_dir(),
        "the provisioner made {}",
        host_dir.display()
    );

    // In: the initializer, as root, downloads the prefix into the claim.
    let dataset = DATASET;
    let uri = format!("s3://{bucket}/datasets/digits");
    run_pod(
        &c,
        ns,
        "download",
        INITIALIZER,
        0,
        "s3-credentials",
        &["s3sync", "get", &uri, dataset],
    )
    .await;
    let (phase, code, _, log) = ended(&c, ns, "download").await;
    assert!(
        !log.contains(&s3.secret_key),
        "the initializer's log shows the secret key"
    );
    assert_eq!((phase.as_str(), code), ("Succeeded", 0), "download:\n{log}");
    let summary = log.lines().last().unwrap_or_default();
    assert!(
        summary.starts_with(&format!(
            "s3sync: downloaded 2 objects ({} bytes) from {uri} into {dataset} in ",
            data.len() + readme.len()
        )),
        "download:\n{log}"
    );
    assert_eq!(
        std::fs::read(host_dir.join("digits.csv.gz")).expect("the data set on the host"),
        data
    );
    assert!(!host_dir.join("other").exists());
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&host_dir)
        .expect("the volume")
        .permissions()
        .mode();
    assert_eq!(
        mode & 0o777,
        0o755,
        "s3sync opened the volume's root to other users"
    );

    // The trainer, as uid 1000, reads it from the claim, trains on it, and uploads the model.
    let script = format!(
        "set -e; id -u; cat {dataset}/docs/README; \
         /home/mpiuser/train --epochs 3 --target 0.5 --data {dataset} --save /tmp/out/model.npz; \
         s3sync put /tmp/out s3://{bucket}/models/run-1"
    );
    run_pod(
        &c,
        ns,
        "train",
        OPENMPI4,
        1000,
        "s3-credentials",
        &["sh", "-c", &script],
    )
    .await;
    let (phase, code, _, log) = ended(&c, ns, "train").await;
    assert!(
        !log.contains(&s3.secret_key),
        "the trainer's log shows the secret key"
    );
    assert_eq!((phase.as_str(), code), ("Succeeded", 0), "train:\n{log}");
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.first(), Some(&"1000"), "train:\n{log}");
    assert!(log.contains(&readme), "train:\n{log}");
    assert!(
        lines.contains(&format!("data file {dataset}/digits.csv.gz").as_str()),
        "train:\n{log}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("final accuracy ") && l.ends_with(" reached")),
        "train:\n{log}"
    );
    let saved = lines
        .iter()
        .find_map(|l| l.strip_prefix("saved /tmp/out/model.npz sha256 "))
        .unwrap_or_else(|| panic!("no saved line:\n{log}"));
    assert!(
        lines
            .last()
            .is_some_and(|l| l.starts_with("s3sync: uploaded 1 files (")
                && l.contains(&format!(" from /tmp/out to s3://{bucket}/models/run-1 in "))),
        "train:\n{log}"
    );
    let model = s3
        .get_object(&bucket, "models/run-1/model.npz")
        .await
        .expect("get the model")
        .expect("the uploaded model");
    assert!(model.starts_with(b"PK"), "an .npz is a zip archive");
    assert_eq!(saved.len(), 64, "a sha256 of the weights: {saved}");
    assert_eq!(
        s3.get_object(&bucket, "models/run-1/missing").await.expect("get"),
        None
    );

    // Deleting the claim deletes its volume and the host directory.
    let pods: Api<Pod> = Api::namespaced(c.clone(), ns);
    for pod in ["download", "train"] {
        pods.delete(pod, &DeleteParams::default())
            .await
            .expect("delete pod");
    }
    eventually("the pods to go", POD_DEADLINE, || async {
        let left = pods.list(&Default::default()).await.map_err(|e| e.to_string())?;
        if left.items.is_empty() {
            Ok(())
        } else {
            Err(format!("{} pods", left.items.len()))
        }
    })
    .await;
    Api::<PersistentVolumeClaim>::namespaced(c.clone(), ns)
        .delete("data", &DeleteParams::default())
        .await
        .expect("delete the claim");
    let volumes: Api<PersistentVolume> = Api::all(c.clone());
    eventually("the volume and its directory to go", DEADLINE, || async {
        let pv = volumes.get_opt(&volume).await.map_err(|e| e.to_string())?;
        match (pv, host_dir.exists()) {
            (None, false) => Ok(()),
            (pv, exists) => Err(format!(
                "PV {:?}, directory exists {exists}",
                pv.and_then(|p| p.status).and_then(|s| s.phase)
            )),
        }
    })
    .await;
}

/// What a failed download tells its user: (exit code, last log line), after checking that
/// neither key is anywhere in its log and that the termination message is that line.
async fn failed_download(
    c: &Client,
    ns: &str,
    pod: &str,
    (endpoint, secret): (&str, &str),
    uri: &str,
    keys: &[&str],
) -> (i32, String) {
    run_pod_at(
        c,
        ns,
        pod,
        (INITIALIZER, 0),
        (endpoint, secret),
        &["s3sync", "get", uri, DATASET],
    )
    .await;
    let (phase, code, message, log) = ended(c, ns, pod).await;
    for key in keys {
        assert!(!log.contains(key), "{pod}'s log shows a key");
        assert!(!message.contains(key), "{pod}'s termination message shows a key");
    }
    assert_eq!(phase, "Failed", "{pod}:\n{log}");
    let last = log.lines().last().unwrap_or_default().to_string();
    assert_eq!(
        message.trim_end(),
        last,
        "{pod}: the termination message is the last line"
    );
    (code, last)
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_credentials_and_a_missing_bucket_say_what_to_fix() {
    let s3 = s3();
    let c = client(Identity::Admin).await;
    let ns = TestNs::new("s3-fail").await;
    let ns = ns.name.as_str();
    let bucket = ns.to_string();
    s3.create_bucket(&bucket).await.expect("create the bucket");
    s3.put_object(&bucket, "data/x", "x").await.expect("put");
    // Wrong secrets of the right shape: the server refuses the signature, or the key id.
    let wrong_secret: String = s3.secret_key.chars().rev().collect();
    let wrong_key: String = s3.access_key.chars().rev().collect();
    credentials(&c, ns, "wrong-secret", &s3.access_key, &wrong_secret).await;
    credentials(&c, ns, "wrong-key", &wrong_key, &s3.secret_key).await;
    credentials(&c, ns, "right", &s3.access_key, &s3.secret_key).await;
    claim(&c, ns).await;
    let keys = [
        s3.secret_key.as_str(),
        wrong_secret.as_str(),
        s3.access_key.as_str(),
        wrong_key.as_str(),
    ];
    let uri = format!("s3://{bucket}/data");
    let endpoint = &s3.endpoint;
    let refused = |code: &str| {
        format!(
            "s3sync: the S3 server at {endpoint} refused the credentials for bucket \"{bucket}\" ({code}): check ACCESS_KEY_ID and SECRET_ACCESS_KEY in the credentials Secret"
        )
    };
    assert_eq!(
        failed_download(&c, ns, "wrong-secret", (endpoint, "wrong-secret"), &uri, &keys).await,
        (4, refused("SignatureDoesNotMatch"))
    );
    assert_eq!(
        failed_download(&c, ns, "wrong-key", (endpoint, "wrong-key"), &uri, &keys).await,
        (4, refused("InvalidAccessKeyId"))
    );
    assert_eq!(
        failed_download(
            &c,
            ns,
            "no-bucket",
            (endpoint, "right"),
            "s3://no-such-bucket/data",
            &keys
        )
        .await,
        (
            3,
            format!(
                "s3sync: bucket \"no-such-bucket\" does not exist at {endpoint}: create it or fix the storageUri"
            )
        )
    );
    assert_eq!(
        failed_download(
            &c,
            ns,
            "empty-prefix",
            (endpoint, "right"),
            &format!("s3://{bucket}/nothing"),
            &keys
        )
        .await,
        (
            5,
            format!(
                "s3sync: no objects under s3://{bucket}/nothing at {endpoint}: upload the data there or fix the storageUri"
            )
        )
    );
    assert_eq!(
        failed_download(&c, ns, "not-s3", (endpoint, "right"), "gs://bucket/data", &keys).await,
        (
            2,
            "s3sync: storageUri must be s3://BUCKET/PREFIX, got 'gs://bucket/data'".to_string()
        )
    );
    // Nothing listens on port 1 of the host's bridge address: refused at once.
    let closed = format!("http://{}:1", trainjob_testbed::s3::HOST_ADDRESS);
    let (code, last) = failed_download(&c, ns, "unreachable", (&closed, "right"), &uri, &keys).await;
    assert_eq!(code, 6, "{last}");
    assert!(
        last.starts_with(&format!("s3sync: cannot reach the S3 server at {closed} ("))
            && last.ends_with(
                "check ENDPOINT (or AWS_ENDPOINT_URL) and that the server is up and reachable from the pod"
            ),
        "{last}"
    );
}

/// The job's credentials Secret: the bed's S3 endpoint and the keys, as the example wants them.
async fn s3_secret(c: &Client, ns: &str, name: &str, secret_key: &str) {
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ns},
        "stringData": {"ENDPOINT": s3().endpoint, "ACCESS_KEY_ID": s3().access_key, "SECRET_ACCESS_KEY": secret_key},
    }))
    .expect("secret");
    Api::<Secret>::namespaced(c.clone(), ns)
        .create(&PostParams::default(), &secret)
        .await
        .expect("create the credentials Secret");
}

/// Every pod log, Event and TrainJob status of `ns`, for checking that no key is in any.
async fn everything_said(c: &Client, ns: &str) -> String {
    let mut said = String::new();
    let pods = Api::<Pod>::namespaced(c.clone(), ns)
        .list(&Default::default())
        .await
        .expect("pods");
    for pod in pods.items {
        let name = pod.metadata.name.clone().unwrap_or_default();
        for container in pod.spec.iter().flat_map(|s| &s.containers) {
            let params = LogParams {
                container: Some(container.name.clone()),
                ..Default::default()
            };
            let log = Api::<Pod>::namespaced(c.clone(), ns).logs(&name, &params).await;
            said.push_str(&log.unwrap_or_default());
        }
        said.push_str(&serde_json::to_string(&pod.status).unwrap_or_default());
    }
    let events = Api::<k8s_openapi::api::core::v1::Event>::namespaced(c.clone(), ns)
        .list(&Default::default())
        .await
        .expect("events");
    said.push_str(&serde_json::to_string(&events.items).unwrap_or_default());
    let jobs = Api::<TrainJob>::namespaced(c.clone(), ns)
        .list(&Default::default())
        .await
        .expect("jobs");
    for job in jobs.items {
        said.push_str(&serde_json::to_string(&job.status).unwrap_or_default());
    }
    said
}

/// When each pod of `job` started and ended, in seconds after the job's creation.
async fn timeline(c: &Client, ns: &str, job: &str) -> String {
    let created = Api::<TrainJob>::namespaced(c.clone(), ns)
        .get(job)
        .await
        .expect("job")
        .metadata
        .creation_timestamp
        .expect("created")
        .0;
    let after =
        |t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time| t.0.duration_since(created).as_secs_f64();
    let mut lines = Vec::new();
    for pod in support::jobs::pods_of(c, ns, job).await {
        let state = pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref()?.first()?.state.clone());
        let (start, end) = match state.as_ref().and_then(|s| s.terminated.as_ref()) {
            Some(t) => (
                t.started_at.as_ref().map(after),
                t.finished_at.as_ref().map(after),
            ),
            None => (
                state
                    .as_ref()
                    .and_then(|s| s.running.as_ref()?.started_at.as_ref())
                    .map(after),
                None,
            ),
        };
        lines.push(format!(
            "{}: created +{:.0}s, started +{:.0}s, ended {}",
            pod.metadata.name.clone().unwrap_or_default(),
            pod.metadata
                .creation_timestamp
                .as_ref()
                .map(after)
                .unwrap_or_default(),
            start.unwrap_or_default(),
            end.map_or("running".into(), |e| format!("+{e:.0}s")),
        ));
    }
    lines.sort();
    lines.join("\n")
}

/// `examples/s3-digits.yaml` as a user runs it, on the shipped `mpi-openmpi-initializers`: its
/// claim provisioned and bound, the data set and the initial model downloaded into it by the
/// initializers before any MPI pod, four ranks training from them, and the model uploaded by
/// the launcher; the claim and its volume go with the job.
#[tokio::test(flavor = "multi_thread")]
async fn the_s3_example_initializes_from_s3_trains_and_writes_its_model_to_s3() {
    let s3 = s3();
    support::admitting_operator();
    let c = client(Identity::Admin).await;
    let ns = TestNs::new("s3-example").await;
    let ns = ns.name.as_str();
    // The example's bucket: this is the only test that uses it.
    let bucket = "training-data";
    let (data, model) = support::data::seed_digits(s3, bucket).await;
    s3_secret(&c, ns, "s3-credentials", &s3.secret_key).await;
    let example = std::fs::read_to_string(trainjob_testbed::repo_root().join("examples/s3-digits.yaml"))
        .expect("example");
    real_bed()
        .kubectl_as(
            Identity::Admin,
            &["apply", "--server-side", "-n", ns, "-f", "-"],
            &example,
        )
        .expect("kubectl apply of the example");

    // The claim: made for the job, provisioned by the default StorageClass, bound.
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(c.clone(), ns);
    let volume = eventually("the job's claim to bind", DEADLINE, || async {
        let pvc = claims
            .get("initializer-s3-digits")
            .await
            .map_err(|e| e.to_string())?;
        let bound = pvc.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound");
        let spec = pvc.spec.clone().unwrap_or_default();
        match (bound, spec.volume_name) {
            (true, Some(volume)) => Ok((volume, spec.storage_class_name, pvc.metadata.owner_references)),
            _ => Err(format!("{:?}", pvc.status)),
        }
    })
    .await;
    let (volume, class, owners) = volume;
    assert_eq!(class.as_deref(), Some(STORAGE_CLASS));
    assert_eq!(
        owners
            .unwrap_or_default()
            .iter()
            .map(|o| o.name.as_str())
            .collect::<Vec<_>>(),
        ["s3-digits"]
    );
    let host_dir = Api::<PersistentVolume>::all(c.clone())
        .get(&volume)
        .await
        .expect("the claim's volume")
        .spec
        .and_then(|s| s.host_path)
        .map(|h| std::path::PathBuf::from(h.path))
        .expect("a hostPath volume");

    let (kind, reason, message) = support::realnode::finished(&c, ns, "s3-digits").await;
    let launcher = support::realnode::launcher_log(&c, ns, "s3-digits").await;
    let report = support::realnode::pod_report(&c, ns, "s3-digits").await;
    assert_eq!(
        (kind.as_str(), reason.as_str()),
        ("Complete", "AllJobsCompleted"),
        "{message}\n{report}"
    );
    println!("timeline of s3-digits:\n{}", timeline(&c, ns, "s3-digits").await);

    // The initializers fetched what the job named, into the claim.
    let pods: Api<Pod> = Api::namespaced(c.clone(), ns);
    for (pod, container, uri, dir, bytes) in [
        (
            "s3-digits-dataset-initializer-0-0",
            "dataset-initializer",
            "s3://training-data/digits",
            "/workspace/dataset",
            data.len(),
        ),
        (
            "s3-digits-model-initializer-0-0",
            "model-initializer",
            "s3://training-data/init",
            "/workspace/model",
            model.len(),
        ),
    ] {
        let params = LogParams {
            container: Some(container.into()),
            ..Default::default()
        };
        let log = pods.logs(pod, &params).await.expect("initializer log");
        assert!(
            log.trim_end().ends_with("s")
                && log.contains(&format!(
                    "s3sync: downloaded 1 objects ({bytes} bytes) from {uri} into {dir} in "
                )),
            "{pod}:\n{log}"
        );
    }
    // Four ranks trained from the downloaded weights on the downloaded data, and the launcher
    // uploaded the model.
    let lines: Vec<&str> = launcher.lines().collect();
    assert!(
        lines.contains(&"data file /workspace/dataset/digits.csv.gz"),
        "{launcher}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("init from /workspace/model/init.npz sha256 ")),
        "{launcher}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("final accuracy ") && l.ends_with(" reached")),
        "{launcher}"
    );
    assert_eq!(
        lines.iter().filter(|l| l.contains(" model sha256 ")).count(),
        4,
        "four ranks:\n{launcher}"
    );
    assert!(
        lines
            .last()
            .is_some_and(|l| l.starts_with("s3sync: uploaded 1 files (")
                && l.contains(" from /workspace/output to s3://training-data/models/s3-digits in ")),
        "{launcher}"
    );
    let uploaded = s3
        .get_object(bucket, "models/s3-digits/model.npz")
        .await
        .expect("get the model")
        .expect("the uploaded model");
    assert!(uploaded.starts_with(b"PK") && uploaded != model, "a trained .npz");
    assert!(
        !everything_said(&c, ns).await.contains(&s3.secret_key),
        "the secret key was shown"
    );

    // Deleting the job deletes its claim, the claim's volume and the directory on the host.
    Api::<TrainJob>::namespaced(c.clone(), ns)
        .delete("s3-digits", &DeleteParams::foreground())
        .await
        .expect("delete the job");
    let volumes: Api<PersistentVolume> = Api::all(c.clone());
    eventually(
        "the claim, its volume and its directory to go with the job",
        POD_DEADLINE,
        || async {
            let claim = claims
                .get_opt("initializer-s3-digits")
                .await
                .map_err(|e| e.to_string())?;
            let pv = volumes.get_opt(&volume).await.map_err(|e| e.to_string())?;
            match (claim, pv, host_dir.exists()) {
                (None, None, false) => Ok(()),
                (claim, pv, dir) => Err(format!(
                    "claim {}, volume {}, directory {dir}",
                    claim.is_some(),
                    pv.is_some()
                )),
            }
        },
    )
    .await;
}

/// The pod placement of every step of `mpi-openmpi-initializers` on the real node.
fn on_the_real_node() -> serde_json::Value {
    let pod = json!({"spec": {
        "nodeSelector": {REAL_NODE: "true"},
        "tolerations": [{"key": REAL_NODE, "operator": "Exists", "effect": "NoSchedule"}],
    }});
    let steps = ["dataset-initializer", "model-initializer", "node", "launcher"]
        .map(|rjob| json!({"name": rjob, "template": {"spec": {"template": pod}}}));
    json!([{"manager": "trainjob.test/real-node", "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": steps}}}}])
}

/// A job on `mpi-openmpi-initializers` whose dataset comes from `dataset` with Secret `secret`,
/// its model from the bucket of the test with the right keys.
async fn data_job(c: &Client, ns: &str, name: &str, dataset: &str, secret: &str, bucket: &str) {
    let job: TrainJob = serde_json::from_value(json!({
        "apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "runtimeRef": {"name": "mpi-openmpi-initializers"},
            "initializer": {
                "dataset": {"storageUri": dataset, "secretRef": {"name": secret}},
                "model": {"storageUri": format!("s3://{bucket}/init"), "secretRef": {"name": "right"}},
            },
            "trainer": {"image": OPENMPI4},
            "runtimePatches": on_the_real_node(),
        },
    }))
    .expect("job");
    Api::<TrainJob>::namespaced(c.clone(), ns)
        .create(&PostParams::default(), &job)
        .await
        .expect("create the job");
}

/// What users get wrong, through the operator: refused keys and a missing bucket fail the job
/// at its initializer, naming the bucket and the Secret, with no MPI pod started and no key in
/// any status, Event or log; a Secret that does not exist is the job's `Stalled` reason.
#[tokio::test(flavor = "multi_thread")]
async fn a_job_whose_download_fails_says_which_bucket_and_secret_and_starts_no_mpi_pod() {
    let s3 = s3();
    support::admitting_operator();
    let c = client(Identity::Admin).await;
    let ns = TestNs::new("s3-jobfail").await;
    let ns = ns.name.as_str();
    let bucket = ns.to_string();
    s3.create_bucket(&bucket).await.expect("create the bucket");
    s3.put_object(&bucket, "data/digits.csv.gz", "x")
        .await
        .expect("put");
    s3.put_object(&bucket, "init/init.npz", "x").await.expect("put");
    let wrong: String = s3.secret_key.chars().rev().collect();
    s3_secret(&c, ns, "right", &s3.secret_key).await;
    s3_secret(&c, ns, "wrong", &wrong).await;
    let missing = format!("missing-{ns}");
    let data = format!("s3://{bucket}/data");
    data_job(&c, ns, "refused", &data, "wrong", &bucket).await;
    data_job(
        &c,
        ns,
        "nobucket",
        &format!("s3://{missing}/data"),
        "right",
        &bucket,
    )
    .await;
    data_job(&c, ns, "nosecret", &data, "not-there", &bucket).await;

    let jobs: Api<TrainJob> = Api::namespaced(c.clone(), ns);
    let (_, _, refused) = support::realnode::finished(&c, ns, "refused").await;
    assert!(
        refused.starts_with(&format!("the dataset initializer failed reading {data}, so training did not start: pod refused-dataset-initializer-0-0 failed: container dataset-initializer exited with code 4 (Error); its last log line: \"s3sync: the S3 server at {} refused the credentials for bucket \\\"{bucket}\\\" (SignatureDoesNotMatch)", s3.endpoint))
            && refused.ends_with("; its credentials come from Secret wrong (spec.initializer.dataset.secretRef)"),
        "{refused}"
    );
    let (_, _, nobucket) = support::realnode::finished(&c, ns, "nobucket").await;
    assert!(
        nobucket.contains(&format!("exited with code 3 (Error); its last log line: \"s3sync: bucket \\\"{missing}\\\" does not exist at {}", s3.endpoint))
            && nobucket.ends_with("; its credentials come from Secret right (spec.initializer.dataset.secretRef)"),
        "{nobucket}"
    );
    let stalled = support::jobs::wait_stalled(
        &jobs,
        "nosecret",
        ("True", "CreateContainerConfigError", "not-there"),
        POD_DEADLINE,
    )
    .await;
    assert!(
        stalled.message.contains("nosecret-dataset-initializer-0-0"),
        "{}",
        stalled.message
    );
    for job in ["refused", "nobucket", "nosecret"] {
        let started = support::jobs::names(&support::jobs::pods_of(&c, ns, job).await);
        assert!(
            started.iter().all(|p| p.contains("initializer")),
            "{job}: no MPI pod: {started:?}"
        );
    }
    let said = everything_said(&c, ns).await;
    assert!(
        !said.contains(&s3.secret_key) && !said.contains(&wrong),
        "a secret key was shown"
    );
}
