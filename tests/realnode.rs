//! MPI for real: the operator's Secret, hostfile, Service and environment drive a real `mpirun`
//! across real pods on a real kubelet node (containerd, CNI bridge, CoreDNS; `hack/node.sh`),
//! with images built from Debian and PyPI packages (`hack/images.sh`): Open MPI 4 and 5, MPICH
//! and Intel MPI, as the runtime's user and as root, with and without the launcher running ranks.
//! Then the failures a fake pod cannot show: no sshd, no DNS, a refused key. And the node's
//! `metrics.k8s.io` (metrics-server), read for a real pod by a namespace's viewer.

use trainjob_testbed::support;

use std::collections::BTreeMap;

use futures::future::join_all;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::Client;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};
use support::jobs::{pod_spec, runtime};
use support::realnode::{RUN_DEADLINE, create, finished, launcher_log};
use support::{TestNs, client, operator, real_bed};
use trainjob_testbed::REAL_NODE;

/// MPI slots per host in every job here.
const SLOTS: usize = 2;

/// An MPI implementation: its image (`hack/images/<name>`) and shipped runtime.
#[derive(Clone, Copy, Debug)]
struct Mpi {
    image: &'static str,
    runtime: &'static str,
    /// Hydra runtimes take the launch line as `args` (MPI Operator's layout); Open MPI as `command`.
    hydra: bool,
}

const OPENMPI4: Mpi = Mpi {
    image: "trainjob.local/openmpi4:bed",
    runtime: "mpi-openmpi",
    hydra: false,
};
const OPENMPI5: Mpi = Mpi {
    image: "trainjob.local/openmpi5:bed",
    runtime: "mpi-openmpi",
    hydra: false,
};
const MPICH: Mpi = Mpi {
    image: "trainjob.local/mpich:bed",
    runtime: "mpi-mpich",
    hydra: true,
};
const INTEL: Mpi = Mpi {
    image: "trainjob.local/intel:bed",
    runtime: "mpi-intel",
    hydra: true,
};

/// How a job's runtime differs from the shipped one.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
enum Variant {
    /// The shipped ClusterTrainingRuntime as written (uid 1000, fsGroup 1000).
    #[default]
    Shipped,
    /// Root in every container, keys in /root/.ssh, the runtime's fsGroup kept.
    Root,
    /// `runLauncherAsNode`, otherwise as shipped.
    LauncherAsNode,
    /// `runLauncherAsNode` in a native gang: the launcher is created with the workers, bound
    /// with them by kube-scheduler, and waits for their sshd itself.
    LauncherInGang,
    /// No user and no fsGroup in the spec: the image's `USER` (uid 1000) runs everything.
    ImageUser,
    /// uid 1000 as shipped, but no fsGroup: the operator sets one (OnRootMismatch).
    NoFsGroup,
}

/// One TrainJob of the matrix.
#[derive(Clone, Copy, Debug)]
struct Case {
    job: &'static str,
    mpi: Mpi,
    variant: Variant,
    nodes: usize,
}

impl Case {
    fn new(job: &'static str, mpi: Mpi, variant: Variant, nodes: usize) -> Case {
        Case {
            job,
            mpi,
            variant,
            nodes,
        }
    }
}

/// The `node` container of replicated job `rjob` in a runtime spec.
fn container<'a>(spec: &'a mut Value, rjob: &str) -> &'a mut Value {
    &mut pod_spec(spec, rjob)["containers"][0]
}

/// Sets what a container runs, in the field the runtime uses for it (`command` or `args`).
fn run(container: &mut Value, line: &[&str]) {
    let field = if container.get("command").is_some() {
        "command"
    } else {
        "args"
    };
    container[field] = json!(line);
}

/// Creates the job of `case` (and its runtime, unless shipped); `probe` goes into
/// `spec.trainer.env` and every rank prints it.
async fn submit(c: &Client, ns: &str, case: Case, probe: &str) {
    let runtime_ref = match case.variant {
        Variant::Shipped => json!({"name": case.mpi.runtime}),
        variant => {
            runtime(c, ns, case.mpi.runtime, case.job, |spec| match variant {
                Variant::Root => {
                    spec["mlPolicy"]["mpi"]["sshAuthMountPath"] = json!("/root/.ssh");
                    for rjob in ["node", "launcher"] {
                        container(spec, rjob)["securityContext"] = json!({"runAsUser": 0, "runAsGroup": 0});
                    }
                    run(container(spec, "node"), &["/usr/sbin/sshd", "-De"]);
                }
                Variant::ImageUser => {
                    for rjob in ["node", "launcher"] {
                        container(spec, rjob)["securityContext"] = json!({"runAsNonRoot": true});
                        pod_spec(spec, rjob)["securityContext"] = json!({});
                    }
                }
                Variant::NoFsGroup => {
                    for rjob in ["node", "launcher"] {
                        pod_spec(spec, rjob)["securityContext"] = json!({});
                    }
                }
                Variant::LauncherAsNode => spec["mlPolicy"]["mpi"]["runLauncherAsNode"] = json!(true),
                Variant::LauncherInGang => {
                    spec["mlPolicy"]["mpi"]["runLauncherAsNode"] = json!(true);
                    spec["podGroupPolicy"] = json!({"workload": {}});
                }
                Variant::Shipped => {}
            })
            .await;
            json!({"kind": "TrainingRuntime", "name": case.job})
        }
    };
    let ranks = (case.nodes * SLOTS).to_string();
    let line = ["mpirun", "-n", &ranks, "/home/mpiuser/pi", "PROBE"];
    let mut trainer = json!({"image": case.mpi.image, "numNodes": case.nodes, "numProcPerNode": SLOTS,
        "env": [{"name": "PROBE", "value": probe}]});
    trainer[if case.mpi.hydra { "args" } else { "command" }] = json!(line);
    create(c, ns, case.job, runtime_ref, trainer).await;
}

/// Runs `case` to completion and checks that every rank ran where the hostfile put it, saw the
/// job's env, and took part in the allreduce.
async fn check(c: &Client, ns: &str, case: Case) {
    let probe = format!("{}-probe", case.job);
    submit(c, ns, case, &probe).await;
    let (type_, reason, message) = finished(c, ns, case.job).await;
    let log = launcher_log(c, ns, case.job).await;
    assert_eq!(
        (type_.as_str(), reason.as_str()),
        ("Complete", "AllJobsCompleted"),
        "{case:?}: {message}\nlauncher log:\n{log}"
    );
    let hostfile = Api::<ConfigMap>::namespaced(c.clone(), ns)
        .get(&format!("{}-mpi-hostfile", case.job))
        .await
        .expect("hostfile")
        .data
        .and_then(|mut d| d.remove("hostfile"))
        .unwrap_or_default();
    let hosts: Vec<&str> = hostfile
        .lines()
        .filter_map(|l| l.split(['.', ' ', ':']).next())
        .collect();
    let launcher = format!("{}-launcher-0-0", case.job);
    let mut expected_hosts: Vec<String> = (0..case.nodes)
        .map(|i| format!("{}-node-0-{i}", case.job))
        .collect();
    if matches!(case.variant, Variant::LauncherAsNode | Variant::LauncherInGang) {
        // The launcher is one of the nodes, listed first: rank 0 runs on it.
        expected_hosts.pop();
        expected_hosts.insert(0, launcher.clone());
    }
    assert_eq!(hosts, expected_hosts, "{case:?}: {hostfile}");
    if case.variant == Variant::LauncherInGang {
        // In the gang with the workers, and it waited for their sshd before mpirun.
        let pod = Api::<Pod>::namespaced(c.clone(), ns)
            .get(&launcher)
            .await
            .expect("launcher pod");
        let group = pod.spec.as_ref().and_then(|s| s.scheduling_group.as_ref());
        assert_eq!(group.and_then(|g| g.pod_group_name.as_deref()), Some(case.job));
        let waited = pod
            .status
            .and_then(|s| s.init_container_statuses)
            .unwrap_or_default()
            .into_iter()
            .find(|s| s.name == trainjob_operator::desired::pods::WORKERS_INIT)
            .and_then(|s| s.state?.terminated)
            .map(|t| t.exit_code);
        assert_eq!(waited, Some(0), "{case:?}: the launcher's wait for the workers");
    }

    let ranks = case.nodes * SLOTS;
    let seen: BTreeMap<usize, (String, String)> = log
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("rank ")?;
            let (rank, rest) = rest.split_once(&format!(" of {ranks} on "))?;
            let (host, probe) = rest.trim().split_once(" PROBE=")?;
            Some((rank.parse().ok()?, (host.to_string(), probe.to_string())))
        })
        .collect();
    let expected: BTreeMap<usize, (String, String)> = (0..ranks)
        .map(|r| (r, (hosts[r / SLOTS].to_string(), probe.clone())))
        .collect();
    assert_eq!(
        seen, expected,
        "{case:?}: every rank on the host the hostfile gave it, with spec.trainer.env:\n{log}"
    );
    assert!(
        log.contains(&format!("pi is approximately 3.14159265 from {ranks} ranks")),
        "{case:?}: the allreduce over every rank:\n{log}"
    );
}

async fn matrix(prefix: &str, cases: &[Case]) {
    real_bed();
    operator();
    let ns = TestNs::new(prefix).await;
    let c = client(support::Identity::Admin).await;
    join_all(cases.iter().map(|case| check(&c, &ns.name, *case))).await;
}

#[tokio::test]
async fn open_mpi_4_as_user_as_root_as_the_image_user_without_fs_group_and_with_the_launcher_as_a_node() {
    matrix(
        "ompi4",
        &[
            Case::new("user", OPENMPI4, Variant::Shipped, 3),
            Case::new("root", OPENMPI4, Variant::Root, 3),
            Case::new("solo", OPENMPI4, Variant::LauncherAsNode, 1),
            Case::new("trio", OPENMPI4, Variant::LauncherAsNode, 3),
            Case::new("gang", OPENMPI4, Variant::LauncherInGang, 3),
            Case::new("image", OPENMPI4, Variant::ImageUser, 2),
            Case::new("nofsgroup", OPENMPI4, Variant::NoFsGroup, 2),
        ],
    )
    .await;
}

/// Open MPI 5 reads only PRRTE's variables: with the ORTE ones alone every rank would run on the
/// launcher (kubeflow/trainer#4028). Ranks on every worker prove the PRRTE ones work.
#[tokio::test]
async fn open_mpi_5_spreads_ranks_over_every_worker() {
    matrix(
        "ompi5",
        &[
            Case::new("user", OPENMPI5, Variant::Shipped, 3),
            Case::new("root", OPENMPI5, Variant::Root, 3),
        ],
    )
    .await;
}

#[tokio::test]
async fn mpich_as_user_as_root_and_with_the_launcher_as_a_node() {
    matrix(
        "mpich",
        &[
            Case::new("user", MPICH, Variant::Shipped, 3),
            Case::new("root", MPICH, Variant::Root, 3),
            Case::new("solo", MPICH, Variant::LauncherAsNode, 1),
            Case::new("trio", MPICH, Variant::LauncherAsNode, 3),
            Case::new("gang", MPICH, Variant::LauncherInGang, 3),
        ],
    )
    .await;
}

#[tokio::test]
async fn intel_mpi_as_user_and_as_root() {
    matrix(
        "impi",
        &[
            Case::new("user", INTEL, Variant::Shipped, 3),
            Case::new("root", INTEL, Variant::Root, 3),
        ],
    )
    .await;
}

/// A broken job on the Open MPI 4 runtime, `broken` applied to a copy of its spec.
async fn fail(c: &Client, ns: &str, job: &'static str, broken: impl FnOnce(&mut Value)) -> String {
    runtime(c, ns, "mpi-openmpi", job, broken).await;
    let trainer = json!({"image": OPENMPI4.image, "numNodes": 2,
        "command": ["mpirun", "-n", "2", "/home/mpiuser/pi"]});
    create(
        c,
        ns,
        job,
        json!({"kind": "TrainingRuntime", "name": job}),
        trainer,
    )
    .await;
    let (type_, reason, message) = finished(c, ns, job).await;
    let log = launcher_log(c, ns, job).await;
    assert_eq!(
        (type_.as_str(), reason.as_str()),
        ("Failed", "FailedJobs"),
        "{job}: {message}\n{log}"
    );
    assert!(
        message.starts_with(&format!(
            "pod {job}-launcher-0-0 failed: container node exited with code "
        )),
        "{message}"
    );
    message
}

#[tokio::test]
async fn ssh_dns_and_key_failures_are_named_on_the_job() {
    real_bed();
    operator();
    let ns = TestNs::new("broken").await;
    let c = client(support::Identity::Admin).await;
    let ns = ns.name.as_str();

    let no_sshd = fail(&c, ns, "nosshd", |spec| {
        let node = container(spec, "node");
        run(node, &["sleep", "3600"]);
        node["readinessProbe"] = json!({"exec": {"command": ["true"]}, "periodSeconds": 1});
    });
    let no_dns = fail(&c, ns, "nodns", |spec| {
        let launcher = pod_spec(spec, "launcher");
        launcher["dnsPolicy"] = json!("None");
        launcher["dnsConfig"] = json!({"nameservers": ["127.0.0.1"]});
    });
    let bad_key = fail(&c, ns, "badkey", |spec| {
        run(
            container(spec, "node"),
            &[
                "/usr/sbin/sshd",
                "-De",
                "-f",
                "/home/mpiuser/.sshd_config",
                "-o",
                "AuthorizedKeysFile=/dev/null",
            ],
        );
    });
    let (no_sshd, no_dns, bad_key) = tokio::join!(no_sshd, no_dns, bad_key);
    assert!(
        no_sshd.contains("could not open an SSH session to a worker")
            && no_sshd.contains("Connection refused"),
        "{no_sshd}"
    );
    assert!(
        no_dns.contains("a host name did not resolve (DNS)") && no_dns.contains("nodns-node-0-"),
        "{no_dns}"
    );
    assert!(
        bad_key.contains("SSH refused the job's key") && bad_key.contains("Permission denied (publickey"),
        "{bad_key}"
    );
}

/// Bytes of a memory quantity as metrics-server writes them (`123456Ki`; also `Mi`, `Gi`, SI
/// suffixes and plain bytes); `None` for anything else.
fn memory_bytes(quantity: &str) -> Option<u64> {
    let digits = quantity.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let factor: u64 = match &quantity[digits.len()..] {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        _ => return None,
    };
    digits.parse::<u64>().ok().map(|n| n * factor)
}

/// The `usage` of pod `pod` in `ns` as `metrics.k8s.io` serves it to `c`: the same request as
/// `kubectl top pod` (and the dashboard). Err says what was seen instead.
async fn pod_usage(c: &Client, ns: &str, pod: &str) -> Result<Value, String> {
    let request = http::Request::get(format!("/apis/metrics.k8s.io/v1beta1/namespaces/{ns}/pods"))
        .body(Vec::new())
        .map_err(|e| e.to_string())?;
    let list: Value = c.request(request).await.map_err(|e| e.to_string())?;
    let item = list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|item| item["metadata"]["name"] == pod)
        .ok_or_else(|| format!("no metrics for {pod} yet: {list}"))?;
    let container = item["containers"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == "hog"))
        .ok_or_else(|| format!("no container hog in {item}"))?;
    Ok(container["usage"].clone())
}

/// The real node serves `metrics.k8s.io` through the bed's metrics-server (what `kubectl top`
/// and the dashboard read): a real pod holding 64 MiB shows that much memory. Kubernetes' own
/// `view` role has no metrics (upstream metrics-server's manifests aggregate them into it; the
/// bed does not), so a namespace's viewer reads them once granted `metrics.k8s.io` pods there.
#[tokio::test]
async fn metrics_server_reports_the_cpu_and_memory_of_a_real_pod_to_a_namespace_viewer() {
    let bed = real_bed();
    let ns = TestNs::new("metrics").await;
    let ns = ns.name.as_str();
    let admin = client(support::Identity::Admin).await;
    // Touches one byte a page so that the 64 MiB are resident, then idles.
    let hog = "import time\nb = bytearray(64 << 20)\nb[::4096] = b'x' * len(range(0, len(b), 4096))\ntime.sleep(600)";
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "hog", "namespace": ns},
        "spec": {
            "restartPolicy": "Never",
            "nodeSelector": {REAL_NODE: "true"},
            "tolerations": [{"key": REAL_NODE, "operator": "Exists", "effect": "NoSchedule"}],
            "containers": [{"name": "hog", "image": OPENMPI4.image, "imagePullPolicy": "Never",
                "command": ["python3", "-c", hog]}],
        },
    }))
    .expect("hog pod");
    Api::<Pod>::namespaced(admin.clone(), ns)
        .create(&PostParams::default(), &pod)
        .await
        .expect("create the hog pod");

    let grant = |name: &str, role_kind: &str, role: &str| {
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": name, "namespace": ns},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": role},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "tenant-a"}]})
        .to_string()
    };
    bed.kubectl_as(
        support::Identity::Admin,
        &["apply", "-f", "-"],
        &grant("viewer", "ClusterRole", "view"),
    )
    .expect("bind view to tenant-a");
    let tenant = client(support::Identity::TenantA).await;
    let tenant_pods: Api<Pod> = Api::namespaced(tenant.clone(), ns);
    // Once tenant-a can list the pods, view is in force: what it cannot read is not in view.
    support::eventually("tenant-a to view the namespace", support::DEADLINE, || async {
        tenant_pods
            .list(&Default::default())
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    })
    .await;
    let refused = pod_usage(&tenant, ns, "hog").await;
    assert!(
        refused.as_ref().is_err_and(|e| e.contains("forbidden")),
        "view alone must not read metrics.k8s.io (Kubernetes' view role has no metrics): {refused:?}"
    );

    let reader = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": "metrics-reader", "namespace": ns},
        "rules": [{"apiGroups": ["metrics.k8s.io"], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]});
    bed.kubectl_as(
        support::Identity::Admin,
        &["apply", "-f", "-"],
        &reader.to_string(),
    )
    .expect("create the metrics-reader Role");
    bed.kubectl_as(
        support::Identity::Admin,
        &["apply", "-f", "-"],
        &grant("metrics-reader", "Role", "metrics-reader"),
    )
    .expect("bind metrics-reader to tenant-a");

    // Two scrapes (10 s apart) after the container starts: CPU is a rate.
    let usage = support::eventually("the hog pod's usage in metrics.k8s.io", RUN_DEADLINE, || async {
        let usage = pod_usage(&tenant, ns, "hog").await?;
        let memory = usage["memory"].as_str().and_then(memory_bytes);
        match memory {
            Some(bytes) if bytes >= 64 << 20 => Ok(usage),
            _ => Err(format!("usage {usage}")),
        }
    })
    .await;
    assert!(
        usage["cpu"].as_str().is_some_and(|cpu| !cpu.is_empty()),
        "a CPU figure: {usage}"
    );

    // The same through kubectl, as a person with the namespace's view (and metrics) reads it.
    let top = bed
        .kubectl_as(
            support::Identity::TenantA,
            &["top", "pod", "-n", ns, "--no-headers"],
            "",
        )
        .expect("kubectl top pod as tenant-a");
    assert!(
        top.lines()
            .any(|line| line.split_whitespace().next() == Some("hog")),
        "kubectl top pod lists the hog pod: {top}"
    );
    // The node is shared with the other tests of this binary: free its memory now.
    let now = kube::api::DeleteParams {
        grace_period_seconds: Some(0),
        ..Default::default()
    };
    Api::<Pod>::namespaced(admin, ns)
        .delete("hog", &now)
        .await
        .expect("delete the hog pod");
}
