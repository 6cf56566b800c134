//! The real node: containerd, a CNI bridge, CoreDNS and a kubelet registered with the bed's API
//! server, so pods really run (MPI over SSH, DNS, file modes), metrics-server for their CPU
//! and memory (see `metrics`), an S3 server for their data and results (see `s3`), and the
//! default StorageClass [`STORAGE_CLASS`], whose volumes kube-controller-manager's hostpath
//! provisioner makes. `hack/node.sh` sets the host up and puts it back; the daemons are
//! children of this process and die with it.
//!
//! The node is the machine's hostname, labelled and tainted `trainjob.test/real-node`, so only
//! pods that ask for it land there. One real node per machine: kubelet's ports are fixed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Once;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::Api;

use super::process::{Component, Process, run};
use super::s3::S3;
use super::{Bed, BedError, Identity, repo_root};

/// The host's address on the node's pod bridge (`hack/node.sh`): pods reach processes on the
/// host there.
pub const HOST_ADDRESS: &str = "10.244.0.1";

/// Label and taint key of the real node.
pub const REAL_NODE: &str = "trainjob.test/real-node";

/// The default StorageClass of a bed with a real node: kube-controller-manager's hostpath
/// provisioner (`kubernetes.io/host-path`) makes each volume a directory
/// `/tmp/hostpath_pv/<uuid>` of the host (root's, mode 0750: hostPath volumes get no `fsGroup`
/// ownership), bound at once (`Immediate`), deleted with its claim (`Delete`). Single-node only,
/// as upstream says, which the real node is.
pub const STORAGE_CLASS: &str = "standard";

/// Names the shipped runtimes give the bed's images, so that they run on the real node as
/// written: `mpi-openmpi-initializers`'s initializer image (pulled only if not present).
const ALIASES: [(&str, &str); 1] = [(
    "trainjob.local/initializer:bed",
    "docker.io/library/trainjob-initializer:latest",
)];

/// A running real node. Dropping it stops the daemons and restores the host.
pub struct RealNode {
    name: String,
    dir: PathBuf,
    procs: Vec<Process>,
    s3: S3,
}

/// What `hack/node.sh build` reports.
pub(super) struct Parts {
    pub(super) kubelet: PathBuf,
    pub(super) coredns: PathBuf,
    pub(super) kube_router: PathBuf,
    metrics_server: PathBuf,
    versitygw: PathBuf,
    /// Each image's name (`openmpi4`, `pause`, ...) and archive.
    pub(super) images: Vec<(String, PathBuf)>,
}

pub(super) fn script(args: &[&str], envs: &[(&str, &Path)]) -> Result<String, BedError> {
    let path = repo_root().join("hack/node.sh");
    let mut command = Command::new("bash");
    command.arg(&path).args(args);
    for (k, v) in envs {
        command.env(k, v);
    }
    run(&mut command, "", &format!("hack/node.sh {}", args.join(" ")))
}

pub(super) fn build() -> Result<Parts, BedError> {
    let out = script(&["build"], &[])?;
    let mut parts = Parts {
        kubelet: PathBuf::new(),
        coredns: PathBuf::new(),
        kube_router: PathBuf::new(),
        metrics_server: PathBuf::new(),
        versitygw: PathBuf::new(),
        images: Vec::new(),
    };
    for line in out.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["kubelet", path] => parts.kubelet = PathBuf::from(path),
            ["coredns", path] => parts.coredns = PathBuf::from(path),
            ["kube-router", path] => parts.kube_router = PathBuf::from(path),
            ["metrics-server", path] => parts.metrics_server = PathBuf::from(path),
            ["versitygw", path] => parts.versitygw = PathBuf::from(path),
            ["image", name, path] => parts.images.push((name.to_string(), PathBuf::from(path))),
            _ => {}
        }
    }
    if !parts.kubelet.is_file()
        || !parts.coredns.is_file()
        || !parts.kube_router.is_file()
        || !parts.metrics_server.is_file()
        || !parts.versitygw.is_file()
        || parts.images.is_empty()
    {
        return Err(BedError::Command(format!(
            "hack/node.sh build printed no kubelet, CoreDNS, kube-router, metrics-server, versitygw or images:\n{out}"
        )));
    }
    Ok(parts)
}

/// Images imported at every start instead of kept in [`node_root`]: the operator's changes with
/// every build.
const FRESH: &str = "operator";

/// The cached containerd root holding the bed's images but [`FRESH`] (`hack/node.sh
/// node-root`): each real node's containerd starts from a hard-linked copy of it instead of
/// importing them again (27-45 s a start).
pub(super) fn node_root(parts: &Parts) -> Result<PathBuf, BedError> {
    let archives: Vec<String> = parts
        .images
        .iter()
        .filter(|(name, _)| name != FRESH)
        .map(|(_, path)| path.display().to_string())
        .collect();
    let mut args = vec!["node-root"];
    args.extend(archives.iter().map(String::as_str));
    let out = script(&args, &[])?;
    out.lines()
        .find_map(|l| l.strip_prefix("node-root "))
        .map(PathBuf::from)
        .ok_or_else(|| BedError::Command(format!("hack/node.sh node-root printed no root:\n{out}")))
}

/// Whether this process started a real node, whose host changes `clean_host` undoes.
static STARTED: AtomicBool = AtomicBool::new(false);
/// Whether this process started the multi-node tier (`multinode`).
static STARTED_NODES: AtomicBool = AtomicBool::new(false);

/// Stops the real nodes this process started and puts the host back (idempotent: `hack/node.sh
/// cleanup` does nothing once the host is clean). Run before a bed's directory is removed, whose
/// mounts and running kubelet would otherwise keep it.
pub(crate) fn clean_host() {
    if STARTED.load(Ordering::SeqCst) {
        let _ = script(&["cleanup"], &[]);
    }
    if STARTED_NODES.load(Ordering::SeqCst) {
        let _ = script(&["cleanup-nodes"], &[]);
    }
}

/// Puts the host back when the process exits, for beds that live in a static and are never
/// dropped; `multi` for the multi-node tier.
pub(super) fn cleanup_at_exit(multi: bool) {
    static ONCE: Once = Once::new();
    extern "C" fn cleanup() {
        clean_host();
    }
    let flag = if multi { &STARTED_NODES } else { &STARTED };
    flag.store(true, Ordering::SeqCst);
    ONCE.call_once(|| {
        // SAFETY: registers a plain `extern "C"` function with no captured state.
        unsafe { libc::atexit(cleanup) };
    });
}

impl RealNode {
    /// Builds what is missing, sets the host up and starts the node; returns once it is Ready.
    pub(super) async fn start(bed: &Bed, timeout: Duration) -> Result<RealNode, BedError> {
        let parts = build()?;
        let dir = bed.dir().join("node");
        let kubeconfig = bed.kubeconfig_path(Identity::Admin);
        cleanup_at_exit(false);
        let api_port = bed.server().rsplit(':').next().unwrap_or_default().to_string();
        let root = node_root(&parts)?;
        script(
            &["prepare", &dir.to_string_lossy()],
            &[
                ("KUBECONFIG", &kubeconfig),
                ("API_PORT", Path::new(&api_port)),
                ("NODE_ROOT", &root),
            ],
        )?;
        // First, on the bridge's address that `prepare` just made: it is up long before the node.
        let s3 = super::s3::start(&parts.versitygw, &dir)?;
        let mut node = RealNode {
            name: hostname()?,
            dir: dir.clone(),
            procs: Vec::new(),
            s3: s3.s3.clone(),
        };
        let path = |name: &str| dir.join(name).to_string_lossy().into_owned();
        node.spawn(
            Component::Containerd,
            Path::new("containerd"),
            &["--config", &path("containerd.toml")],
        )?;
        let socket = dir.join("containerd.sock");
        node.wait("containerd's socket", timeout, || socket.exists())
            .await?;
        for (_, image) in parts.images.iter().filter(|(name, _)| name == FRESH) {
            node.import_image(image)?;
        }
        for (image, alias) in ALIASES {
            node.tag_image(image, alias)?;
        }
        node.spawn(Component::CoreDns, &parts.coredns, &["-conf", &path("Corefile")])?;
        node.spawn(
            Component::Kubelet,
            &parts.kubelet,
            &[
                &format!("--config={}", path("kubelet.yaml")),
                &format!("--kubeconfig={}", kubeconfig.display()),
                &format!("--root-dir={}", path("kubelet")),
                &format!("--cert-dir={}", path("kubelet/pki")),
                &format!("--node-labels={REAL_NODE}=true"),
            ],
        )?;
        // Started now, so that it comes up while the node does; it finds the node on its first
        // scrape after the node registers.
        let metrics = super::metrics::start(bed, &parts.metrics_server, &dir).await?;
        let nodes: Api<Node> = Api::all(bed.client(Identity::Admin).await?);
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let ready = nodes.get_opt(&node.name).await.ok().flatten().is_some_and(|n| {
                n.status
                    .and_then(|s| s.conditions)
                    .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            });
            if ready {
                node.enforce_network_policies(&parts.kube_router, &kubeconfig, timeout)
                    .await?;
                super::metrics::wait_available(bed, &metrics, timeout).await?;
                node.procs.push(metrics.process);
                super::s3::wait_ready(&s3, timeout).await?;
                node.procs.push(s3.process);
                storage_class(bed).await?;
                return Ok(node);
            }
            node.check_alive()?;
            if tokio::time::Instant::now() >= deadline {
                return Err(BedError::Timeout {
                    what: format!("the real node {} to become Ready", node.name),
                    seconds: timeout.as_secs(),
                    logs: node.log_tails(30),
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Starts kube-router as the node's NetworkPolicy enforcer (its firewall only: the bridge
    /// CNI routes, and there is no service proxy) once the Node exists, and waits until its
    /// iptables chains are in place.
    async fn enforce_network_policies(
        &mut self,
        binary: &Path,
        kubeconfig: &Path,
        timeout: Duration,
    ) -> Result<(), BedError> {
        // Under the node's directory, so `hack/node.sh cleanup` finds the process by it.
        let own = self.dir.join("kube-router.kubeconfig");
        std::fs::copy(kubeconfig, &own).map_err(|source| BedError::Io {
            what: "copying the kubeconfig for kube-router".into(),
            source,
        })?;
        let name = self.name.clone();
        self.procs.push(Process::spawn_with(
            Component::KubeRouter,
            binary,
            &[
                &format!("--kubeconfig={}", own.display()),
                &format!("--hostname-override={name}"),
                "--run-firewall=true",
                "--run-router=false",
                "--run-service-proxy=false",
                "--run-loadbalancer=false",
                "--enable-cni=false",
                "--service-cluster-ip-range=10.96.0.0/16",
                "--metrics-port=0",
                "--health-port=0",
                "--iptables-sync-period=1m",
            ],
            &self.dir.join("kube-router.log"),
            |command| {
                command.env("NODE_NAME", &name);
                Ok(())
            },
        )?);
        self.wait("kube-router's firewall chains", timeout, || {
            Command::new("iptables")
                .args(["-S", "KUBE-ROUTER-FORWARD"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .await
    }

    /// Gives the imported `image` a second name, `alias`.
    fn tag_image(&self, image: &str, alias: &str) -> Result<(), BedError> {
        let mut command = Command::new("ctr");
        command
            .arg("-a")
            .arg(self.dir.join("containerd.sock"))
            .args(["-n", "k8s.io", "images", "tag", "--force", image, alias]);
        run(&mut command, "", &format!("ctr images tag {image} {alias}")).map(|_| ())
    }

    /// Imports an image archive (as `hack/images.sh` makes them) into the node's containerd.
    pub fn import_image(&self, archive: &Path) -> Result<(), BedError> {
        let mut command = Command::new("ctr");
        command
            .arg("-a")
            .arg(self.dir.join("containerd.sock"))
            .args(["-n", "k8s.io", "images", "import"])
            .arg(archive);
        let what = format!("ctr images import {}", archive.display());
        match run(&mut command, "", &what) {
            Ok(_) => Ok(()),
            // containerd's own view says why it dropped the connection.
            Err(e) => Err(BedError::Command(format!("{e}\n{}", self.log_tails(40)))),
        }
    }

    /// The bed's S3 server: its endpoint (reachable from the node's pods and the host), root
    /// credentials, and a client for tests.
    pub fn s3(&self) -> &S3 {
        &self.s3
    }

    /// The node's name (the machine's hostname).
    pub fn name(&self) -> &str {
        &self.name
    }

    fn spawn(&mut self, component: Component, binary: &Path, args: &[&str]) -> Result<(), BedError> {
        let log = self.dir.join(format!("{component}.log"));
        self.procs.push(Process::spawn(component, binary, args, &log)?);
        Ok(())
    }

    fn check_alive(&self) -> Result<(), BedError> {
        for p in &self.procs {
            if let Some(status) = p.exited() {
                return Err(BedError::Exited {
                    component: p.component,
                    status,
                    tail: p.tail(30),
                });
            }
        }
        Ok(())
    }

    async fn wait(&self, what: &str, timeout: Duration, ready: impl Fn() -> bool) -> Result<(), BedError> {
        let deadline = tokio::time::Instant::now() + timeout;
        while !ready() {
            self.check_alive()?;
            if tokio::time::Instant::now() >= deadline {
                return Err(BedError::Timeout {
                    what: what.into(),
                    seconds: timeout.as_secs(),
                    logs: self.log_tails(30),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// The last `lines` lines of each daemon's log.
    pub fn log_tails(&self, lines: usize) -> String {
        self.procs
            .iter()
            .map(|p| format!("--- {} ---\n{}\n", p.component, p.tail(lines)))
            .collect()
    }
}

impl Drop for RealNode {
    fn drop(&mut self) {
        // kubelet first, so it restarts nothing while the rest goes.
        while let Some(p) = self.procs.pop() {
            drop(p);
        }
        if let Err(e) = script(&["cleanup"], &[]) {
            eprintln!("restoring the host after the real node: {e}");
        }
    }
}

/// Creates [`STORAGE_CLASS`], the cluster's default.
async fn storage_class(bed: &Bed) -> Result<(), BedError> {
    use k8s_openapi::api::storage::v1::StorageClass;
    use kube::api::{Patch, PatchParams};
    let class: StorageClass = serde_json::from_value(serde_json::json!({
        "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
        "metadata": {"name": STORAGE_CLASS,
                     "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
        "provisioner": "kubernetes.io/host-path",
        "reclaimPolicy": "Delete",
        "volumeBindingMode": "Immediate",
    }))
    .map_err(|e| BedError::Command(format!("the StorageClass {STORAGE_CLASS}: {e}")))?;
    Api::<StorageClass>::all(bed.client(Identity::Admin).await?)
        .patch(
            STORAGE_CLASS,
            &PatchParams::apply("trainjob-testbed").force(),
            &Patch::Apply(&class),
        )
        .await
        .map_err(|source| BedError::Kube {
            what: format!("creating the StorageClass {STORAGE_CLASS}"),
            source,
        })?;
    Ok(())
}

fn hostname() -> Result<String, BedError> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").map_err(|source| BedError::Io {
        what: "reading the hostname".into(),
        source,
    })?;
    Ok(name.trim().to_lowercase())
}
