//! Data in, results out, for real (issue 28): the real node's S3 server (versitygw, a host
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
use support::{DEADLINE, TestNs, client, eventually, real_bed};
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

/// A gzip file (RFC 1952) of `data` in stored (uncompressed) deflate blocks: what numpy's
/// `loadtxt` reads as `digits.csv.gz`, with no compression library in the tests.
fn gzip_stored(data: &[u8]) -> Vec<u8> {
    let mut table = [0u32; 256];
    for (i, entry) in table.iter_mut().enumerate() {
        let mut c = i as u32;
        for _ in 0..8 {
            c = if c & 1 == 1 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
        *entry = c;
    }
    let crc = !data.iter().fold(!0u32, |c, b| {
        table[((c ^ u32::from(*b)) & 0xff) as usize] ^ (c >> 8)
    });
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    let mut chunks = data.chunks(0xffff).peekable();
    if chunks.peek().is_none() {
        out.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
    }
    while let Some(chunk) = chunks.next() {
        out.push(u8::from(chunks.peek().is_none()));
        let len = chunk.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(chunk);
    }
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

/// A learnable data set in the digits format (64 pixel columns 0..16, the label last): each
/// class lights its own pixels, with some deterministic noise.
fn digits_csv(rows: usize) -> String {
    let mut csv = String::new();
    for row in 0..rows {
        let label = row % 10;
        let pixels: Vec<String> = (0..64)
            .map(|p| {
                let lit = p % 10 == label;
                let noise = (row * 31 + p * 17) % 5;
                (if lit { 12 + noise % 5 } else { noise }).to_string()
            })
            .collect();
        csv.push_str(&format!("{},{label}\n", pixels.join(",")));
    }
    csv
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
