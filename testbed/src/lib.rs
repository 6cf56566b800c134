//! A real, local Kubernetes control plane for the integration tests and `make run`: etcd,
//! kube-apiserver, kube-controller-manager, kube-scheduler and kwok with fake nodes, built from the
//! Go modules pinned in `hack/controlplane` (see `hack/controlplane.sh`).
//!
//! Everything listens on free loopback ports and lives in a temporary directory. Child processes
//! die with the process that started them (`PR_SET_PDEATHSIG`), so a panicking or killed test never
//! leaves a control plane behind.
//!
//! The one home of test support: `support` (one bed per test binary, the operator under test,
//! jobs, logs, polling with a deadline) for the integration tests and benches, and `bench` (the
//! benchmark report) for `make bench` and `make soak`.

mod admission;
pub use admission::WebhookCopy;
pub mod bench;
pub mod delay;
pub mod keyscan;
mod kueue;
mod metrics;
pub mod multinode;
mod node;
mod process;
pub mod s3;
pub mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, Once};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Node, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{Api, PostParams};
use kube::config::{AuthInfo, Cluster, Context, Kubeconfig, NamedAuthInfo, NamedCluster, NamedContext};
use kube::{Client, Config};

pub use multinode::RealNodes;
pub use node::{REAL_NODE, RealNode, STORAGE_CLASS};
use process::Process;
pub use process::{Component, die_with_parent};

/// What went wrong while starting or using the bed.
#[derive(Debug, thiserror::Error)]
pub enum BedError {
    #[error(
        "control-plane binaries not found in {0}: run `hack/controlplane.sh` (or `make bed`) to build them"
    )]
    MissingBinaries(PathBuf),
    #[error("running {what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{component} exited during start-up ({status}); last log lines:\n{tail}")]
    Exited {
        component: Component,
        status: String,
        tail: String,
    },
    #[error("timed out after {seconds}s waiting for {what}; component logs:\n{logs}")]
    Timeout {
        what: String,
        seconds: u64,
        logs: String,
    },
    #[error("generating the service-account signing key: {0}")]
    Key(#[from] rcgen::Error),
    #[error("building a client for {identity:?}: {source}")]
    Client {
        identity: Identity,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("Kubernetes API call during set-up ({what}): {source}")]
    Kube {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("{0}")]
    Command(String),
}

/// Who talks to the API server. Each identity authenticates with its own bearer token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Identity {
    /// `system:masters`: sets the bed up and plays the cluster admin.
    Admin,
    /// The operator's service account, bound only to the ClusterRole shipped in `config/rbac`.
    Operator,
    /// A platform user with no permissions beyond those a test grants.
    TenantA,
    /// A second platform user.
    TenantB,
    /// kwok, the fake nodes' kubelets: as powerful as the admin, under a name of its own so that
    /// the bed can hold it to what a kubelet does (see [`KWOK_GUARD`]).
    Kwok,
}

impl Identity {
    const ALL: [Identity; 5] = [
        Identity::Admin,
        Identity::Operator,
        Identity::TenantA,
        Identity::TenantB,
        Identity::Kwok,
    ];

    /// The user name the API server sees.
    pub fn user(self) -> &'static str {
        match self {
            Identity::Admin => "admin",
            Identity::Operator => "system:serviceaccount:trainjob-system:trainjob-operator",
            Identity::TenantA => "tenant-a",
            Identity::TenantB => "tenant-b",
            Identity::Kwok => "kwok",
        }
    }

    fn groups(self) -> &'static str {
        match self {
            Identity::Admin | Identity::Kwok => "system:masters",
            Identity::Operator => "system:serviceaccounts,system:serviceaccounts:trainjob-system",
            Identity::TenantA | Identity::TenantB => "tenants",
        }
    }

    /// The static token the bed's API server knows this identity by.
    pub fn token(self) -> String {
        format!("{}-token", self.name())
    }

    /// Short name, used for kubeconfig contexts and file names.
    pub fn name(self) -> &'static str {
        match self {
            Identity::Admin => "admin",
            Identity::Operator => "operator",
            Identity::TenantA => "tenant-a",
            Identity::TenantB => "tenant-b",
            Identity::Kwok => "kwok",
        }
    }
}

/// The ValidatingAdmissionPolicy (and its binding) that holds kwok to what a kubelet does: it
/// deletes only a pod that is being deleted. kwok (v0.8) deletes a terminating pod by name,
/// without the uid precondition a kubelet sends, and now and then repeats such a delete after the
/// pod is gone; when a controller has created the pod's successor under the same name by then (a
/// gang restart, a resume), the successor would go instead, which no real node does. The API
/// server refuses that delete; kwok retries it, and it goes through once the pod of that name is
/// terminating.
pub const KWOK_GUARD: &str = "testbed-kwok-deletes-only-terminating-pods";

/// The ValidatingAdmissionPolicy that refuses kwok the renewals of a silenced node's Lease.
pub const KWOK_SILENCE: &str = "testbed-kwok-silence";

/// The label that silences a node's Lease ([`Bed::silence_node`]).
const SILENCED: &str = "testbed.trainjob.test/silenced";

/// A fake node that kwok keeps Ready.
#[derive(Clone, Debug)]
pub struct FakeNode {
    /// Node name.
    pub name: String,
    /// Allocatable CPU, e.g. `"32"`.
    pub cpu: String,
    /// Allocatable memory, e.g. `"256Gi"`.
    pub memory: String,
    /// Allocatable `nvidia.com/gpu`; 0 leaves the resource out.
    pub gpus: u32,
    /// Extra labels, for tests that steer pods with node selectors.
    pub labels: BTreeMap<String, String>,
    /// How many pods the node takes (a kubelet's default is 110).
    pub pods: u32,
    /// Taints (`spec.taints`), for tests that keep other pods off a node.
    pub taints: Vec<serde_json::Value>,
}

impl FakeNode {
    /// A node with `cpu` cores, 256 GiB memory and `gpus` GPUs.
    pub fn new(name: impl Into<String>, cpu: u32, gpus: u32) -> Self {
        FakeNode {
            name: name.into(),
            cpu: cpu.to_string(),
            memory: "256Gi".into(),
            gpus,
            labels: BTreeMap::new(),
            pods: 110,
            taints: Vec::new(),
        }
    }
}

/// What the API server's audit log records of the operator's identity's requests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Audit {
    /// Nothing.
    #[default]
    Off,
    /// Every request; the bodies of creates, updates and patches. Also every user's pod
    /// and Secret creates, deletes and evictions, without bodies.
    Bodies,
    /// Every request of the operator's identity, and every TrainJob create, without bodies: what
    /// a benchmark counts.
    Requests,
}

/// Start-up options.
#[derive(Clone, Debug)]
pub struct BedConfig {
    /// Directory holding the binaries; default: what `hack/controlplane.sh --dir` prints.
    pub bin_dir: Option<PathBuf>,
    /// Directory for data, certificates, kubeconfigs and logs; default: a fresh temp dir that is
    /// removed when the bed is dropped.
    pub work_dir: Option<PathBuf>,
    /// Fake nodes to create once the control plane is up.
    pub nodes: Vec<FakeNode>,
    /// How long each start-up phase may take.
    pub timeout: Duration,
    /// Also start a real node (containerd, CNI, CoreDNS, kubelet; see `hack/node.sh`).
    pub real_node: bool,
    /// Also start this many real nodes, each in its own network namespace (the multi-node tier:
    /// see `multinode`); 0 for none.
    pub real_nodes: usize,
    /// Also start Kueue with its TrainJob integration (see `hack/kueue.sh`); installs the shipped
    /// runtimes, which its webhook reads.
    pub kueue: bool,
    /// What of the operator's requests the API server's audit log ([`Bed::audit_log`]) records.
    pub audit: Audit,
}

impl Default for BedConfig {
    fn default() -> Self {
        BedConfig {
            bin_dir: None,
            work_dir: None,
            nodes: (0..4)
                .map(|i| FakeNode::new(format!("kwok-node-{i}"), 32, 8))
                .collect(),
            timeout: Duration::from_secs(120),
            real_node: false,
            real_nodes: 0,
            kueue: false,
            audit: Audit::Off,
        }
    }
}

/// A running control plane. Dropping it stops every component.
pub struct Bed {
    // Declared first so they go first: their kubelets still talk to the API server.
    node: Option<RealNode>,
    nodes: Option<RealNodes>,
    server: String,
    ca_pem: Vec<u8>,
    dir: PathBuf,
    bin_dir: PathBuf,
    procs: Vec<Process>,
    _temp: Option<tempfile::TempDir>,
}

/// The API group of the operator's CRDs. Kept here rather than imported from `trainjob-operator`
/// so that the test bed does not depend on the crate it tests; must match `trainjob_operator::api::GROUP`.
const CRD_GROUP: &str = "trainer.kubeflow.org";

/// The repository root (where the workspace's `Cargo.toml` is), for `config/`, `crds/` and `hack/`.
/// This crate lives in `testbed/`, one level below it.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the testbed crate lives in a directory of the repository")
        .to_path_buf()
}

/// Removes `dir` (recursively) when the process exits, for a bed kept in a `static`: statics are
/// never dropped, so its temporary directory would otherwise be left behind.
pub fn remove_dir_at_exit(dir: PathBuf) {
    static DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
    static REGISTER: Once = Once::new();
    extern "C" fn cleanup() {
        // A real node in the directory holds mounts and files open until it is stopped; exit
        // handlers run in reverse order, and the node's was registered first.
        node::clean_host();
        let dirs = std::mem::take(&mut *DIRS.lock().unwrap_or_else(|e| e.into_inner()));
        for dir in dirs {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
    DIRS.lock().unwrap_or_else(|e| e.into_inner()).push(dir);
    REGISTER.call_once(|| {
        // SAFETY: registers a plain `extern "C"` function with no captured state.
        unsafe { libc::atexit(cleanup) };
    });
}

/// Where `hack/controlplane.sh` puts the binaries for the pinned versions.
pub fn default_bin_dir() -> Result<PathBuf, BedError> {
    if let Some(dir) = std::env::var_os("TRAINJOB_BED_BIN") {
        return Ok(dir.into());
    }
    let script = repo_root().join("hack/controlplane.sh");
    let out = std::process::Command::new("bash")
        .arg(&script)
        .arg("--dir")
        .output()
        .map_err(|source| BedError::Io {
            what: format!("{} --dir", script.display()),
            source,
        })?;
    if !out.status.success() {
        return Err(BedError::Command(format!(
            "{} --dir failed: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

impl Bed {
    /// Starts etcd, the API server, controller manager, scheduler and kwok, waits until each is
    /// ready, installs the CRDs and `config/rbac`, and creates the fake nodes.
    pub async fn start(config: BedConfig) -> Result<Bed, BedError> {
        let started = std::time::Instant::now();
        let bin_dir = match config.bin_dir.clone() {
            Some(dir) => dir,
            None => default_bin_dir()?,
        };
        if !process::ALL.iter().all(|b| bin_dir.join(b).is_file()) {
            return Err(BedError::MissingBinaries(bin_dir));
        }
        let (dir, temp) = match &config.work_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir)
                    .map_err(|source| io(format!("creating {}", dir.display()), source))?;
                (dir.clone(), None)
            }
            None => {
                let temp = tempfile::Builder::new()
                    .prefix("trainjob-bed-")
                    .tempdir()
                    .map_err(|source| io("creating a temp dir".into(), source))?;
                (temp.path().to_path_buf(), Some(temp))
            }
        };
        let mut bed = Bed {
            node: None,
            nodes: None,
            server: String::new(),
            ca_pem: Vec::new(),
            dir,
            bin_dir,
            procs: Vec::new(),
            _temp: temp,
        };
        bed.boot(&config).await?;
        if config.kueue {
            bed.start_kueue(config.timeout).await?;
        }
        if config.real_node {
            bed.node = Some(RealNode::start(&bed, config.timeout).await?);
        }
        if config.real_nodes > 0 {
            bed.nodes = Some(RealNodes::start(&bed, config.real_nodes, config.timeout).await?);
        }
        tracing::info!(elapsed_ms = started.elapsed().as_millis() as u64, server = %bed.server, "test bed ready");
        Ok(bed)
    }

    async fn boot(&mut self, config: &BedConfig) -> Result<(), BedError> {
        let deadline = config.timeout;
        let etcd_port = free_port()?;
        let etcd_peer = free_port()?;
        let api_port = free_port()?;
        self.server = format!("https://127.0.0.1:{api_port}");
        self.write_auth_files(config.real_node)?;

        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let peer_url = format!("http://127.0.0.1:{etcd_peer}");
        self.spawn(
            Component::Etcd,
            &[
                &format!("--data-dir={}", self.path("etcd").display()),
                &format!("--listen-client-urls={etcd_url}"),
                &format!("--advertise-client-urls={etcd_url}"),
                &format!("--listen-peer-urls={peer_url}"),
                &format!("--initial-advertise-peer-urls={peer_url}"),
                &format!("--initial-cluster=default={peer_url}"),
                "--unsafe-no-fsync=true",
                "--quota-backend-bytes=4294967296",
            ],
        )?;

        let gates = "--feature-gates=GenericWorkload=true,GangScheduling=true";
        let mut audit = Vec::new();
        let user = Identity::Operator.user();
        let rules = match config.audit {
            Audit::Off => None,
            // The bodies of its writes (for the key scan, see `keyscan`), the metadata (verb,
            // resource, response code) of the rest.
            // Also who (any user) created, deleted or evicted which pod or Secret, and when: the chaos
            // suite tells kwok's deletes from everyone else's. And every write of a Lease in the
            // operator's namespace, by anyone, with its body: who held the leader Lease when
            // (`support::leaders`).
            Audit::Bodies => Some(format!(
                "  - level: Request\n    users: [\"{user}\"]\n    verbs: [create, update, patch]\n  - level: Request\n    verbs: [create, update, patch, delete]\n    namespaces: [trainjob-system]\n    resources: [{{group: coordination.k8s.io, resources: [leases]}}]\n  - level: Metadata\n    users: [\"{user}\"]\n  - level: Metadata\n    verbs: [create, delete, deletecollection]\n    resources: [{{group: \"\", resources: [pods, pods/eviction, secrets]}}]\n"
            )),
            // Also every TrainJob create, whoever sends it: where a job's time goes starts there.
            Audit::Requests => Some(format!(
                "  - level: Metadata\n    users: [\"{user}\"]\n  - level: Metadata\n    verbs: [create]\n    resources: [{{group: trainer.kubeflow.org, resources: [trainjobs]}}]\n"
            )),
        };
        if let Some(rules) = rules {
            let policy = format!(
                "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n{rules}  - level: None\n"
            );
            std::fs::write(self.path("audit-policy.yaml"), policy)
                .map_err(|source| io("writing the audit policy".into(), source))?;
            audit.push(format!(
                "--audit-policy-file={}",
                self.path("audit-policy.yaml").display()
            ));
            audit.push(format!("--audit-log-path={}", self.audit_log().display()));
            audit.push("--audit-log-format=json".into());
            // Blocking: a test reads the log right after the request it looks for. Counting
            // requests needs no such promise, and batching keeps the log off the timed path.
            let mode = if config.audit == Audit::Requests {
                "batch"
            } else {
                "blocking"
            };
            audit.push(format!("--audit-log-mode={mode}"));
            // Never rotated: its size limit of 0 means 100 MB, past which the log starts a new
            // file, and a reader's offset into the old one (the bench's, after a burst of 1000
            // jobs) or the key scan of the whole log would miss what came after.
            audit.push("--audit-log-maxsize=1000000".into());
        }
        // Pods on a real node reach the API server as in-cluster clients do, through the
        // `kubernetes` Service (hack/node.sh forwards it to the bridge), with projected
        // service-account tokens. Without a real node, loopback only and no token admission:
        // pods are then admitted at once in a fresh namespace, before its `default` account.
        let real = config.real_node || config.real_nodes > 0;
        let (bind, admission) = if real {
            ("--bind-address=0.0.0.0", "--disable-admission-plugins=")
        } else {
            (
                "--bind-address=127.0.0.1",
                "--disable-admission-plugins=ServiceAccount",
            )
        };
        // The real node's metrics-server is an aggregated API server, which the API server
        // calls with a front-proxy client certificate; kwok-only beds need none.
        let front_proxy = if config.real_node {
            metrics::front_proxy(&self.path("pki"))?
        } else {
            Vec::new()
        };
        self.spawn(
            Component::ApiServer,
            &[
                &format!("--etcd-servers={etcd_url}"),
                &format!("--secure-port={api_port}"),
                bind,
                "--advertise-address=127.0.0.1",
                &format!("--cert-dir={}", self.path("pki").display()),
                &format!("--token-auth-file={}", self.path("tokens.csv").display()),
                "--authorization-mode=RBAC",
                "--service-cluster-ip-range=10.96.0.0/16",
                &format!("--service-account-issuer=https://127.0.0.1:{api_port}"),
                &format!("--service-account-key-file={}", self.path("sa.pub").display()),
                &format!(
                    "--service-account-signing-key-file={}",
                    self.path("sa.key").display()
                ),
                admission,
                "--endpoint-reconciler-type=none",
                // Webhooks behind a Service are called at the Service's endpoints: there is no
                // kube-proxy to route a cluster IP.
                "--enable-aggregator-routing=true",
                "--allow-privileged=true",
                "--enable-priority-and-fairness=false",
                // The multi-node tier's node names resolve nowhere; their addresses do (logs, exec).
                "--kubelet-preferred-address-types=InternalIP,Hostname",
                "--runtime-config=scheduling.k8s.io/v1alpha2=true",
                gates,
            ]
            .into_iter()
            .chain(audit.iter().map(String::as_str))
            .chain(front_proxy.iter().map(String::as_str))
            .collect::<Vec<_>>(),
        )?;
        self.wait_for_file(
            "the API server's serving certificate",
            "pki/apiserver.crt",
            deadline,
        )
        .await?;
        self.ca_pem = std::fs::read(self.path("pki/apiserver.crt"))
            .map_err(|source| io("reading the API server certificate".into(), source))?;
        for identity in Identity::ALL {
            let path = self.kubeconfig_path(identity);
            let yaml = serde_saphyr::to_string(&self.kubeconfig(identity))
                .map_err(|e| BedError::Command(format!("rendering a kubeconfig: {e}")))?;
            std::fs::write(&path, yaml)
                .map_err(|source| io(format!("writing {}", path.display()), source))?;
        }
        let admin = self.client(Identity::Admin).await?;
        self.wait_until("the API server to become ready", deadline, || {
            let admin = admin.clone();
            async move { admin.apiserver_version().await.is_ok() && readyz(&admin).await }
        })
        .await?;

        // CRDs first: the garbage collector and quota controllers only discover resource types
        // at start and then every 30 s, and would ignore TrainJob owners until then.
        self.apply_kustomization("crds")?;
        let crds: Api<CustomResourceDefinition> = Api::all(admin.clone());
        self.wait_until("the CRDs to be Established", deadline, || {
            let crds = crds.clone();
            async move {
                let Ok(list) = crds.list(&Default::default()).await else {
                    return false;
                };
                let established = list
                    .items
                    .iter()
                    .filter(|crd| crd.spec.group == CRD_GROUP && crd_established(crd));
                established.count() == 3
            }
        })
        .await?;
        self.apply_kustomization("config/rbac")?;

        let admin_kubeconfig = self.kubeconfig_path(Identity::Admin);
        let kc = format!("--kubeconfig={}", admin_kubeconfig.display());
        // The real node's StorageClass (`node::STORAGE_CLASS`) provisions host directories; a
        // kwok-only bed has no class and no node to mount them, so it provisions nothing.
        let provisioner = if config.real_node {
            "--enable-hostpath-provisioner=true"
        } else {
            "--enable-hostpath-provisioner=false"
        };
        self.spawn(
            Component::ControllerManager,
            &[
                provisioner,
                &kc,
                "--leader-elect=false",
                "--secure-port=0",
                "--controllers=*,-nodeipam,-service-lb-controller,-cloud-node-lifecycle",
                "--use-service-account-credentials=false",
                // The defaults (20/30) are sized for shared production API servers; a burst of
                // thousands of pods would wait on the garbage collector and job controllers.
                "--kube-api-qps=500",
                "--kube-api-burst=1000",
                &format!(
                    "--service-account-private-key-file={}",
                    self.path("sa.key").display()
                ),
                &format!("--root-ca-file={}", self.path("pki/apiserver.crt").display()),
                gates,
            ],
        )?;
        self.spawn(
            Component::Scheduler,
            // QPS 50 (the default) binds a burst of thousands of pods in minutes.
            &[
                &kc,
                "--leader-elect=false",
                "--secure-port=0",
                "--kube-api-qps=1000",
                "--kube-api-burst=2000",
                gates,
            ],
        )?;
        // kube-controller-manager's service-account controller creating `default` proves it runs.
        let sas: Api<ServiceAccount> = Api::namespaced(admin.clone(), "default");
        self.wait_until(
            "kube-controller-manager (the default service account)",
            deadline,
            || {
                let sas = sas.clone();
                async move { sas.get_opt("default").await.ok().flatten().is_some() }
            },
        )
        .await?;
        // Before kwok starts (and after the default service account, which a pod may need).
        self.guard_kwok(&admin, deadline).await?;
        let stages = repo_root().join("hack/kwok/stages.yaml");
        let kwok_kc = format!("--kubeconfig={}", self.kubeconfig_path(Identity::Kwok).display());
        self.spawn(
            Component::Kwok,
            &[
                &kwok_kc,
                &format!("--config={}", stages.display()),
                "--manage-all-nodes=false",
                "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
                "--cidr=10.244.0.0/16",
                "--node-ip=10.0.0.1",
                "--node-lease-duration-seconds=40",
            ],
        )?;

        for node in &config.nodes {
            self.add_node(node).await?;
        }
        let nodes: Api<Node> = Api::all(admin.clone());
        let names: Vec<String> = config.nodes.iter().map(|n| n.name.clone()).collect();
        self.wait_until("kwok to mark the fake nodes Ready", deadline, || {
            let (nodes, names) = (nodes.clone(), names.clone());
            async move {
                let Ok(list) = nodes.list(&Default::default()).await else {
                    return false;
                };
                names.iter().all(|name| {
                    list.items
                        .iter()
                        .any(|n| n.metadata.name.as_ref() == Some(name) && node_ready(n))
                })
            }
        })
        .await
    }

    /// Installs [`KWOK_GUARD`] and waits until the API server enforces it: kwok's dry-run delete
    /// of a pod that is not being deleted is refused.
    async fn guard_kwok(&self, admin: &Client, deadline: Duration) -> Result<(), BedError> {
        use k8s_openapi::api::admissionregistration::v1::{
            ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
        };
        use k8s_openapi::api::core::v1::Pod;
        let kube = |what: &str| {
            let what = what.to_string();
            move |source| BedError::Kube { what, source }
        };
        let policy: ValidatingAdmissionPolicy = serde_json::from_value(serde_json::json!({
            "metadata": {"name": KWOK_GUARD},
            "spec": {
                "failurePolicy": "Fail",
                "matchConstraints": {"resourceRules": [{"apiGroups": [""], "apiVersions": ["v1"],
                    "operations": ["DELETE"], "resources": ["pods"]}]},
                "matchConditions": [{"name": "kwok",
                    "expression": format!("request.userInfo.username == '{}'", Identity::Kwok.user())}],
                "validations": [{"expression": "has(oldObject.metadata.deletionTimestamp)",
                    "message": "kwok may only delete a pod that is being deleted, as a kubelet does (it deletes with the pod's uid as a precondition)",
                    "reason": "Forbidden"}],
            },
        }))
        .map_err(|e| BedError::Command(format!("the kwok guard: {e}")))?;
        let binding: ValidatingAdmissionPolicyBinding = serde_json::from_value(serde_json::json!({
            "metadata": {"name": KWOK_GUARD},
            "spec": {"policyName": KWOK_GUARD, "validationActions": ["Deny"]},
        }))
        .map_err(|e| BedError::Command(format!("the kwok guard's binding: {e}")))?;
        Api::<ValidatingAdmissionPolicy>::all(admin.clone())
            .create(&PostParams::default(), &policy)
            .await
            .map_err(kube("creating the kwok guard"))?;
        Api::<ValidatingAdmissionPolicyBinding>::all(admin.clone())
            .create(&PostParams::default(), &binding)
            .await
            .map_err(kube("creating the kwok guard's binding"))?;
        // A pod never scheduled (gated), deleted by the admin once the guard holds.
        let probe: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "testbed-kwok-guard-probe"},
            "spec": {"schedulingGates": [{"name": "testbed/probe"}],
                     "containers": [{"name": "probe", "image": "testbed.local/probe"}]},
        }))
        .map_err(|e| BedError::Command(format!("the kwok guard's probe: {e}")))?;
        let pods: Api<Pod> = Api::namespaced(admin.clone(), "default");
        pods.create(&PostParams::default(), &probe)
            .await
            .map_err(kube("creating the kwok guard's probe pod"))?;
        let as_kwok: Api<Pod> = Api::namespaced(self.client(Identity::Kwok).await?, "default");
        let dry_run = kube::api::DeleteParams {
            dry_run: true,
            ..Default::default()
        };
        self.wait_until("the API server to enforce the kwok guard", deadline, || {
            let (as_kwok, dry_run) = (as_kwok.clone(), dry_run.clone());
            async move {
                matches!(
                    as_kwok.delete("testbed-kwok-guard-probe", &dry_run).await,
                    Err(kube::Error::Api(e)) if e.code == 403 && e.message.contains(KWOK_GUARD)
                )
            }
        })
        .await?;
        pods.delete("testbed-kwok-guard-probe", &Default::default())
            .await
            .map_err(kube("deleting the kwok guard's probe pod"))?;
        // kwok renews a node's Lease for as long as it runs, managed or not: a node is silenced
        // (`silence_node`) by refusing kwok the renewals of a Lease labelled so.
        let silence: ValidatingAdmissionPolicy = serde_json::from_value(serde_json::json!({
            "metadata": {"name": KWOK_SILENCE},
            "spec": {
                "failurePolicy": "Fail",
                "matchConstraints": {"resourceRules": [{"apiGroups": ["coordination.k8s.io"], "apiVersions": ["v1"],
                    "operations": ["UPDATE"], "resources": ["leases"]}]},
                "matchConditions": [{"name": "kwok",
                    "expression": format!("request.userInfo.username == '{}'", Identity::Kwok.user())}],
                "validations": [{"expression": format!("!has(oldObject.metadata.labels) || !('{SILENCED}' in oldObject.metadata.labels)"),
                    "message": "this node is silenced: its kubelet is gone", "reason": "Forbidden"}],
            },
        }))
        .map_err(|e| BedError::Command(format!("the kwok silence: {e}")))?;
        let binding: ValidatingAdmissionPolicyBinding = serde_json::from_value(serde_json::json!({
            "metadata": {"name": KWOK_SILENCE},
            "spec": {"policyName": KWOK_SILENCE, "validationActions": ["Deny"]},
        }))
        .map_err(|e| BedError::Command(format!("the kwok silence's binding: {e}")))?;
        Api::<ValidatingAdmissionPolicy>::all(admin.clone())
            .create(&PostParams::default(), &silence)
            .await
            .map_err(kube("creating the kwok silence"))?;
        Api::<ValidatingAdmissionPolicyBinding>::all(admin.clone())
            .create(&PostParams::default(), &binding)
            .await
            .map_err(kube("creating the kwok silence's binding"))?;
        Ok(())
    }

    /// Makes fake node `name` go silent, as a node whose kubelet died: kwok stops managing it
    /// and may no longer renew its Lease, so kube-controller-manager's node lifecycle controller
    /// marks it `NodeStatusUnknown` once `--node-monitor-grace-period` (50 s) passed, taints it
    /// unreachable and marks its pods not ready.
    pub async fn silence_node(&self, name: &str) -> Result<(), BedError> {
        use k8s_openapi::api::coordination::v1::Lease;
        let admin = self.client(Identity::Admin).await?;
        let patch = |value: serde_json::Value| kube::api::Patch::Merge(value);
        let params = kube::api::PatchParams::default();
        Api::<Lease>::namespaced(admin.clone(), "kube-node-lease")
            .patch(
                name,
                &params,
                &patch(serde_json::json!({"metadata": {"labels": {SILENCED: "true"}}})),
            )
            .await
            .map_err(|source| BedError::Kube {
                what: format!("silencing the Lease of node {name}"),
                source,
            })?;
        let unmanaged = serde_json::json!({"metadata": {"annotations": {"kwok.x-k8s.io/node": null}}});
        Api::<Node>::all(admin)
            .patch(name, &params, &patch(unmanaged))
            .await
            .map_err(|source| BedError::Kube {
                what: format!("taking node {name} from kwok"),
                source,
            })?;
        Ok(())
    }

    /// Creates a fake node (cluster-scoped, shared by all tests of the binary).
    pub async fn add_node(&self, node: &FakeNode) -> Result<(), BedError> {
        let mut capacity = BTreeMap::from([
            ("cpu".to_string(), Quantity(node.cpu.clone())),
            ("memory".to_string(), Quantity(node.memory.clone())),
            ("pods".to_string(), Quantity(node.pods.to_string())),
        ]);
        if node.gpus > 0 {
            capacity.insert("nvidia.com/gpu".into(), Quantity(node.gpus.to_string()));
        }
        let mut labels = node.labels.clone();
        labels.insert("kubernetes.io/hostname".into(), node.name.clone());
        labels.insert("type".into(), "kwok".into());
        let object: Node = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": node.name,
                "labels": labels,
                "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
            },
            "spec": {"taints": node.taints},
            "status": {"allocatable": capacity, "capacity": capacity},
        }))
        .map_err(|e| BedError::Command(format!("building node {}: {e}", node.name)))?;
        let nodes: Api<Node> = Api::all(self.client(Identity::Admin).await?);
        match nodes.create(&PostParams::default(), &object).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
            Err(source) => Err(BedError::Kube {
                what: format!("creating node {}", node.name),
                source,
            }),
        }
    }

    /// A client authenticated as `identity`. Build one per tokio runtime (per test).
    pub async fn client(&self, identity: Identity) -> Result<Client, BedError> {
        self.client_as(identity, None).await
    }

    /// A client authenticated as `identity` that sends `user_agent` with every request (the
    /// audit log's `userAgent`), to tell apart clients of one identity.
    pub async fn client_as(&self, identity: Identity, user_agent: Option<&str>) -> Result<Client, BedError> {
        let client_error =
            |e: Box<dyn std::error::Error + Send + Sync>| BedError::Client { identity, source: e };
        let options = kube::config::KubeConfigOptions::default();
        let mut config = Config::from_custom_kubeconfig(self.kubeconfig(identity), &options)
            .await
            .map_err(|e| client_error(Box::new(e)))?;
        if let Some(agent) = user_agent {
            let value = http::HeaderValue::from_str(agent).map_err(|e| client_error(Box::new(e)))?;
            config.headers.push((http::header::USER_AGENT, value));
        }
        Client::try_from(config).map_err(|e| client_error(Box::new(e)))
    }

    /// The real node, when the bed was started with one.
    pub fn real_node(&self) -> Option<&RealNode> {
        self.node.as_ref()
    }

    /// The multi-node tier, when the bed was started with it.
    pub fn real_nodes(&self) -> Option<&RealNodes> {
        self.nodes.as_ref()
    }

    /// The S3 server of the real node, when the bed was started with one.
    pub fn s3(&self) -> Option<&s3::S3> {
        self.node.as_ref().map(RealNode::s3)
    }

    /// A kubeconfig for `identity`.
    pub fn kubeconfig(&self, identity: Identity) -> Kubeconfig {
        let name = identity.name().to_string();
        Kubeconfig {
            clusters: vec![NamedCluster {
                name: "testbed".into(),
                cluster: Some(Cluster {
                    server: Some(self.server.clone()),
                    certificate_authority_data: Some(base64(&self.ca_pem)),
                    ..Default::default()
                }),
                other: Default::default(),
            }],
            auth_infos: vec![NamedAuthInfo {
                name: name.clone(),
                auth_info: Some(AuthInfo {
                    token: Some(identity.token().into()),
                    ..Default::default()
                }),
                other: Default::default(),
            }],
            contexts: vec![NamedContext {
                name: name.clone(),
                context: Some(Context {
                    cluster: "testbed".into(),
                    user: Some(name.clone()),
                    ..Default::default()
                }),
                other: Default::default(),
            }],
            current_context: Some(name),
            ..Default::default()
        }
    }

    /// Path of the kubeconfig file written for `identity`.
    pub fn kubeconfig_path(&self, identity: Identity) -> PathBuf {
        self.path(&format!("{}.kubeconfig", identity.name()))
    }

    /// URL of the API server.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The API server's audit log (with [`BedConfig::audit`]).
    pub fn audit_log(&self) -> PathBuf {
        self.path("audit.log")
    }

    /// The bed's working directory (data, logs, kubeconfigs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Applies the kustomization at `dir` (relative to the repository) server-side as admin, the
    /// way the README tells users to install: the CRDs are too large for client-side apply.
    pub fn apply_kustomization(&self, dir: &str) -> Result<String, BedError> {
        let path = path_str(&repo_root().join(dir));
        self.kubectl(&["apply", "--server-side", "--force-conflicts", "-k", &path])
    }

    /// Runs the pinned kubectl as admin and returns its stdout.
    pub fn kubectl(&self, args: &[&str]) -> Result<String, BedError> {
        self.kubectl_as(Identity::Admin, args, "")
    }

    /// Runs the pinned kubectl as `identity` with `stdin` as input (for `-f -`); returns stdout,
    /// or the command and its stderr as the error.
    pub fn kubectl_as(&self, identity: Identity, args: &[&str], stdin: &str) -> Result<String, BedError> {
        let mut command = std::process::Command::new(self.bin_dir.join("kubectl"));
        command
            .arg(format!(
                "--kubeconfig={}",
                self.kubeconfig_path(identity).display()
            ))
            .args(args);
        process::run(&mut command, stdin, &format!("kubectl {}", args.join(" ")))
    }

    /// Creates a namespace for one test and returns its name (`<prefix>-<random>`).
    pub async fn namespace(&self, prefix: &str) -> Result<String, BedError> {
        let name = format!("{prefix}-{:08x}", rand_u32());
        let api: Api<Namespace> = Api::all(self.client(Identity::Admin).await?);
        let ns: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": name}}))
            .map_err(|e| BedError::Command(e.to_string()))?;
        api.create(&PostParams::default(), &ns)
            .await
            .map_err(|source| BedError::Kube {
                what: format!("creating namespace {name}"),
                source,
            })?;
        Ok(name)
    }

    /// The last `lines` lines of every component's log, for failure reports.
    pub fn log_tails(&self, lines: usize) -> String {
        self.procs
            .iter()
            .map(|p| format!("==> {} <==\n{}\n", p.component, p.tail(lines)))
            .collect()
    }

    /// CPU time (user + system) `component` has used so far, in seconds; `None` when it does
    /// not run in this bed. For benchmarks: the API server's share of a scenario's cost.
    pub fn cpu_seconds(&self, component: Component) -> Option<f64> {
        let process = self.procs.iter().find(|p| p.component == component)?;
        process::cpu_seconds(process.pid())
    }

    /// Kills `component` (etcd or a control-plane component) and starts it again, as a crash and
    /// a restart by its supervisor would; returns once the API server answers `/readyz` again.
    /// The new process lives as long as the calling thread.
    pub async fn restart(&self, component: Component) -> Result<(), BedError> {
        let process = self
            .procs
            .iter()
            .find(|p| p.component == component)
            .ok_or_else(|| BedError::Command(format!("{component} is not running in this bed")))?;
        process.restart()?;
        let client = self.client(Identity::Admin).await?;
        self.wait_until(
            &format!("the API server to be ready after restarting {component}"),
            Duration::from_secs(120),
            || readyz(&client),
        )
        .await
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn spawn(&mut self, component: Component, args: &[&str]) -> Result<(), BedError> {
        let log = self.path(&format!("{}.log", component));
        let process = Process::spawn(component, &self.bin_dir.join(component.binary()), args, &log)?;
        self.procs.push(process);
        Ok(())
    }

    /// The static tokens and the service-account key; with a real node, also metrics-server's
    /// token (see `metrics`).
    fn write_auth_files(&self, real_node: bool) -> Result<(), BedError> {
        std::fs::create_dir_all(self.path("pki")).map_err(|source| io("creating pki dir".into(), source))?;
        let mut tokens: String = Identity::ALL
            .iter()
            .enumerate()
            .map(|(uid, id)| format!("{},{},{},\"{}\"\n", id.token(), id.user(), uid + 1, id.groups()))
            .collect();
        if real_node {
            tokens.push_str(&metrics::token_line());
        }
        let key = rcgen::KeyPair::generate()?;
        for (name, content) in [
            ("tokens.csv", tokens),
            ("sa.key", key.serialize_pem()),
            ("sa.pub", key.public_key_pem()),
        ] {
            std::fs::write(self.path(name), content)
                .map_err(|source| io(format!("writing {name}"), source))?;
        }
        Ok(())
    }

    async fn wait_for_file(&self, what: &str, name: &str, timeout: Duration) -> Result<(), BedError> {
        let path = self.path(name);
        self.wait_until(what, timeout, || {
            let path = path.clone();
            async move { path.is_file() }
        })
        .await
    }

    /// Polls `ready` every 100 ms until it holds, a component dies, or `timeout` passes.
    async fn wait_until<F, Fut>(&self, what: &str, timeout: Duration, mut ready: F) -> Result<(), BedError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            for p in &self.procs {
                if let Some(status) = p.exited() {
                    return Err(BedError::Exited {
                        component: p.component,
                        status,
                        tail: p.tail(30),
                    });
                }
            }
            if ready().await {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(BedError::Timeout {
                    what: what.to_string(),
                    seconds: timeout.as_secs(),
                    logs: self.log_tails(20),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn readyz(client: &Client) -> bool {
    let Ok(req) = http::Request::get("/readyz").body(Vec::new()) else {
        return false;
    };
    client
        .request_text(req)
        .await
        .map(|body| body.trim() == "ok")
        .unwrap_or(false)
}

fn crd_established(crd: &CustomResourceDefinition) -> bool {
    crd.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Established" && c.status == "True"))
}

fn node_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn io(what: String, source: std::io::Error) -> BedError {
    BedError::Io { what, source }
}

fn path_str(path: &Path) -> String {
    path.display().to_string()
}

fn free_port() -> Result<u16, BedError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|source| io("finding a free port".into(), source))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|source| io("finding a free port".into(), source))
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded per process from the OS; good enough for unique namespace names.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.finish() as u32
}

fn base64(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_root_is_the_workspace_root() {
        let root = repo_root();
        for needed in [
            "Cargo.toml",
            "crds/kustomization.yaml",
            "config/rbac",
            "hack/controlplane.sh",
        ] {
            assert!(root.join(needed).exists(), "{} has no {needed}", root.display());
        }
    }
}
