//! The multi-node tier: several real nodes on this one machine, each a kubelet, containerd and
//! kube-router in its own network and UTS namespace (`tjnode-N`, host name `tjnode-N`, address
//! `10.245.0.(10+N)`, pods on `10.244.N.0/24`) and its own cgroup, one CoreDNS on the host for
//! all. `hack/node.sh prepare-nodes` sets the host up and `cleanup-nodes` puts it back.
//!
//! The nodes share the kernel but nothing a pod or MPI would notice: ranks on two nodes talk
//! over a routed link between two namespaces, as over a wire. That link can be cut, made lossy or
//! slow, and a node can lose power ([`RealNodes::power_off`]): the faults users meet in a cluster.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc::{Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::Api;

use super::node;
use super::process::{Component, Process, run};
use super::{Bed, BedError, Identity};

/// The host's address on the nodes' bridge: the API server, CoreDNS.
pub const NODES_HOST: &str = "10.245.0.1";

/// One node of the tier.
struct NetnsNode {
    /// 1-based, as in its names.
    index: usize,
    name: String,
    dir: PathBuf,
    /// containerd, kubelet, kube-router: restarted the same way when the node boots again.
    procs: Vec<Process>,
}

impl NetnsNode {
    /// The last `lines` of each of its daemons' logs, under headers naming node and daemon.
    fn tails(&self, lines: usize) -> String {
        self.procs
            .iter()
            .map(|p| format!("--- {} {} ---\n{}\n", self.name, p.component, p.tail(lines)))
            .collect()
    }

    fn address(&self) -> String {
        format!("10.245.0.{}", 10 + self.index)
    }

    fn netns(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.name))
    }

    /// `iptables ARGS` in the node's network namespace.
    fn iptables(&self, args: &[&str]) -> Result<String, BedError> {
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net={}", self.netns().display()))
            .arg("iptables")
            .args(args);
        run(
            &mut command,
            "",
            &format!("iptables {} in {}", args.join(" "), self.name),
        )
    }
}

/// Running nodes of the multi-node tier. Dropping it stops them and restores the host.
pub struct RealNodes {
    nodes: Vec<Arc<Mutex<NetnsNode>>>,
    coredns: Arc<Process>,
    /// Runs the restarts of [`RealNodes::power_on`] on a thread that lives as long as the nodes:
    /// daemons die with the thread that starts them (`die_with_parent`), and a test's threads
    /// end with the test.
    spawner: Spawner,
    timeout: Duration,
}

impl RealNodes {
    /// Sets the host up, starts `count` nodes and CoreDNS; returns once every node is Ready and
    /// enforces NetworkPolicies.
    pub(super) async fn start(bed: &Bed, count: usize, timeout: Duration) -> Result<RealNodes, BedError> {
        let started = std::time::Instant::now();
        let parts = node::build()?;
        let dir = bed.dir().join("nodes");
        let kubeconfig = bed.kubeconfig_path(Identity::Admin);
        node::cleanup_at_exit(true);
        let api_port = bed.server().rsplit(':').next().unwrap_or_default().to_string();
        let root = node::node_root(&parts)?;
        node::script(
            &["prepare-nodes", &dir.to_string_lossy(), &count.to_string()],
            &[
                ("KUBECONFIG", &kubeconfig),
                ("API_PORT", Path::new(&api_port)),
                ("NODE_ROOT", &root),
            ],
        )?;
        let coredns = Process::spawn(
            Component::CoreDns,
            &parts.coredns,
            &["-conf", &dir.join("Corefile").to_string_lossy()],
            &dir.join("coredns.log"),
        )?;
        let mut nodes = Vec::new();
        for index in 1..=count {
            let name = format!("tjnode-{index}");
            let node_dir = dir.join(format!("node{index}"));
            // The API server's certificate names `kubernetes`, not the bridge's address.
            let mut config = bed.kubeconfig(Identity::Admin);
            for cluster in config.clusters.iter_mut().filter_map(|c| c.cluster.as_mut()) {
                cluster.server = Some(format!("https://{NODES_HOST}:{api_port}"));
                cluster.tls_server_name = Some("kubernetes".into());
            }
            let yaml = serde_saphyr::to_string(&config)
                .map_err(|e| BedError::Command(format!("rendering {name}'s kubeconfig: {e}")))?;
            std::fs::write(node_dir.join("kubeconfig"), yaml).map_err(|source| BedError::Io {
                what: format!("writing {name}'s kubeconfig"),
                source,
            })?;
            nodes.push(NetnsNode {
                index,
                name,
                dir: node_dir,
                procs: Vec::new(),
            });
        }
        for node in &mut nodes {
            let containerd = node_process(node, Component::Containerd, Path::new("containerd"), &{
                vec![
                    "--config".into(),
                    node.dir.join("containerd.toml").display().to_string(),
                ]
            })?;
            node.procs.push(containerd);
        }
        let deadline = tokio::time::Instant::now() + timeout;
        for node in &nodes {
            let socket = node.dir.join("containerd.sock");
            while !socket.exists() {
                check_alive(node)?;
                if tokio::time::Instant::now() >= deadline {
                    return Err(timeout_error(
                        &format!("{}'s containerd", node.name),
                        timeout,
                        &nodes,
                    ));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        for node in &mut nodes {
            let args = vec![
                format!("--config={}", node.dir.join("kubelet.yaml").display()),
                format!("--kubeconfig={}", node.dir.join("kubeconfig").display()),
                format!("--root-dir={}", node.dir.join("kubelet").display()),
                format!("--cert-dir={}", node.dir.join("kubelet/pki").display()),
                format!("--hostname-override={}", node.name),
                format!("--node-ip={}", node.address()),
                format!("--node-labels={}=true", node::REAL_NODE),
            ];
            let kubelet = node_process(node, Component::Kubelet, &parts.kubelet, &args)?;
            node.procs.push(kubelet);
        }
        let (spawner, jobs) = channel::<Job>();
        std::thread::spawn(move || {
            for job in jobs {
                job();
            }
        });
        let nodes = RealNodes {
            nodes: nodes.into_iter().map(|n| Arc::new(Mutex::new(n))).collect(),
            coredns: Arc::new(coredns),
            spawner: Mutex::new(Some(spawner)),
            timeout,
        };
        let names = nodes.names();
        nodes.wait_ready(bed, &names).await?;
        for node in &nodes.nodes {
            let mut node = lock(node);
            let router = kube_router(&node, &parts.kube_router)?;
            node.procs.push(router);
        }
        for node in &nodes.nodes {
            nodes.wait_firewall(node).await?;
        }
        tracing::info!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            count,
            "multi-node tier ready"
        );
        Ok(nodes)
    }

    /// The nodes' names, `tjnode-1` first.
    pub fn names(&self) -> Vec<String> {
        self.nodes.iter().map(|n| lock(n).name.clone()).collect()
    }

    /// The address of node `name` on the nodes' bridge (its InternalIP).
    pub fn address(&self, name: &str) -> Result<String, BedError> {
        self.with(name, |n| Ok(n.address()))
    }

    /// The pod subnet of node `name`.
    pub fn pod_subnet(&self, name: &str) -> Result<String, BedError> {
        self.with(name, |n| Ok(format!("10.244.{}.0/24", n.index)))
    }

    /// The network namespace of node `name` (for tools that enter it).
    pub fn netns(&self, name: &str) -> Result<PathBuf, BedError> {
        self.with(name, |n| Ok(n.netns()))
    }

    fn with<T>(
        &self,
        name: &str,
        f: impl FnOnce(&mut NetnsNode) -> Result<T, BedError>,
    ) -> Result<T, BedError> {
        let node = self.node(name)?;
        f(&mut lock(&node))
    }

    /// Node `name` loses power: every process of it (kubelet, containerd, kube-router, shims,
    /// containers) is killed at once (`cgroup.kill`) and its link goes down, so that its address
    /// and its pods' addresses stop answering, as a dead machine's. Kubernetes learns it as it
    /// would: the node's Lease stops, and after `--node-monitor-grace-period` the node is
    /// `Unknown`.
    pub fn power_off(&self, name: &str) -> Result<(), BedError> {
        self.with(name, |n| {
            node::script(&["power-off", &n.index.to_string()], &[])?;
            Ok(())
        })
    }

    /// Boots node `name` again after [`RealNodes::power_off`]: link up, its daemons started as
    /// before; returns once it is Ready and its firewall is in place.
    pub async fn power_on(&self, bed: &Bed, name: &str) -> Result<(), BedError> {
        let node = self.node(name)?;
        let booting = node.clone();
        let timeout = self.timeout;
        self.on_spawner(move || {
            let n = lock(&booting);
            let mut link = Command::new("ip");
            link.args(["link", "set", &format!("tjn-{}", n.index), "up"]);
            run(&mut link, "", "ip link set up")?;
            // containerd first, serving before the kubelet starts: a kubelet that finds no
            // runtime exits.
            let (containerd, rest) = n
                .procs
                .split_first()
                .ok_or_else(|| BedError::Command(format!("{} has no daemons", n.name)))?;
            containerd.restart()?;
            let socket = n.dir.join("containerd.sock");
            let deadline = std::time::Instant::now() + timeout;
            while std::os::unix::net::UnixStream::connect(&socket).is_err() {
                if std::time::Instant::now() >= deadline {
                    return Err(BedError::Command(format!(
                        "{}'s containerd does not serve again:\n{}",
                        n.name,
                        containerd.tail(30)
                    )));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            rest.iter().try_for_each(Process::restart)
        })?;
        self.wait_ready(bed, &[name.to_string()]).await?;
        self.wait_firewall(&node).await
    }

    /// Runs `job` on the spawner thread and waits for its result.
    fn on_spawner(
        &self,
        job: impl FnOnce() -> Result<(), BedError> + Send + 'static,
    ) -> Result<(), BedError> {
        let (done, result) = channel();
        let sent = lock_spawner(&self.spawner).as_ref().is_some_and(|s| {
            s.send(Box::new(move || {
                let _ = done.send(job());
            }))
            .is_ok()
        });
        if !sent {
            return Err(BedError::Command("the real nodes are stopping".into()));
        }
        result
            .recv()
            .map_err(|_| BedError::Command("the real nodes' spawner thread is gone".into()))?
    }

    fn node(&self, name: &str) -> Result<Arc<Mutex<NetnsNode>>, BedError> {
        self.nodes
            .iter()
            .find(|n| lock(n).name == name)
            .cloned()
            .ok_or_else(|| BedError::Command(format!("no real node {name} in the multi-node tier")))
    }

    /// Drops every packet between nodes `a` and `b` (their addresses and their pods' subnets),
    /// in both directions, until the returned guard is dropped. In `a`'s `raw` table, which runs
    /// before connection tracking (established connections break too) and which neither the
    /// kubelet nor kube-router touch.
    pub fn partition(&self, a: &str, b: &str) -> Result<Fault<'_>, BedError> {
        let (address, subnet) = (self.address(b)?, self.pod_subnet(b)?);
        let mut rules = Vec::new();
        for net in [format!("{address}/32"), subnet] {
            rules.push(vec!["-s".to_string(), net.clone(), "-j".into(), "DROP".into()]);
            rules.push(vec!["-d".to_string(), net, "-j".into(), "DROP".into()]);
        }
        self.fault(a, rules)
    }

    /// Drops each packet leaving or entering node `name` with `probability` (0..1).
    pub fn loss(&self, name: &str, probability: f64) -> Result<Fault<'_>, BedError> {
        let rule = |dir: &str| {
            vec![
                dir.to_string(),
                "eth0".into(),
                "-m".into(),
                "statistic".into(),
                "--mode".into(),
                "random".into(),
                "--probability".into(),
                format!("{probability}"),
                "-j".into(),
                "DROP".into(),
            ]
        };
        self.fault(name, vec![rule("-i"), rule("-o")])
    }

    /// Installs `rules` in node `name`'s chain `TJ-FAULT` of the `raw` table (hooked into
    /// PREROUTING and OUTPUT); the guard flushes them.
    fn fault(&self, name: &str, rules: Vec<Vec<String>>) -> Result<Fault<'_>, BedError> {
        self.with(name, |n| {
            if n.iptables(&["-t", "raw", "-S", "TJ-FAULT"]).is_err() {
                n.iptables(&["-t", "raw", "-N", "TJ-FAULT"])?;
                n.iptables(&["-t", "raw", "-I", "PREROUTING", "-j", "TJ-FAULT"])?;
                n.iptables(&["-t", "raw", "-I", "OUTPUT", "-j", "TJ-FAULT"])?;
            }
            for rule in &rules {
                let mut args = vec!["-t", "raw", "-A", "TJ-FAULT"];
                args.extend(rule.iter().map(String::as_str));
                n.iptables(&args)?;
            }
            Ok(())
        })?;
        Ok(Fault {
            nodes: self,
            node: name.to_string(),
        })
    }

    /// Cluster DNS goes down (CoreDNS killed: queries are refused at once, as when its pods
    /// crashed) until the guard is dropped, which starts it again and waits until it listens.
    pub fn dns_outage(&self) -> Result<DnsOutage<'_>, BedError> {
        signal(&self.coredns, libc::SIGKILL)?;
        let deadline = std::time::Instant::now() + self.timeout;
        while self.coredns.exited().is_none() {
            if std::time::Instant::now() >= deadline {
                return Err(BedError::Command("CoreDNS did not exit after SIGKILL".into()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(DnsOutage { nodes: self })
    }

    /// Resident memory (KiB) of each node's daemons (kubelet, containerd, kube-router), by node.
    pub fn daemon_memory_kib(&self) -> Vec<(String, u64)> {
        self.nodes
            .iter()
            .map(|n| {
                let n = lock(n);
                let kib = n.procs.iter().filter_map(|p| rss_kib(p.pid())).sum();
                (n.name.clone(), kib)
            })
            .collect()
    }

    async fn wait_ready(&self, bed: &Bed, names: &[String]) -> Result<(), BedError> {
        let api: Api<Node> = Api::all(bed.client(Identity::Admin).await?);
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            let mut pending = Vec::new();
            for name in names {
                let ready = api.get_opt(name).await.ok().flatten().is_some_and(|n| {
                    n.status
                        .and_then(|s| s.conditions)
                        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
                });
                if !ready {
                    pending.push(name.clone());
                }
            }
            if pending.is_empty() {
                return Ok(());
            }
            for node in &self.nodes {
                check_alive(&lock(node))?;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(BedError::Timeout {
                    what: format!("the real nodes {} to become Ready", pending.join(", ")),
                    seconds: self.timeout.as_secs(),
                    logs: self.log_tails(30),
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn wait_firewall(&self, node: &Mutex<NetnsNode>) -> Result<(), BedError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            let name = {
                let node = lock(node);
                if node.iptables(&["-S", "KUBE-ROUTER-FORWARD"]).is_ok() {
                    return Ok(());
                }
                check_alive(&node)?;
                node.name.clone()
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(BedError::Timeout {
                    what: format!("kube-router's firewall chains on {name}"),
                    seconds: self.timeout.as_secs(),
                    logs: self.log_tails(30),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The last `lines` lines of every daemon's log, node by node.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut out = format!("--- coredns ---\n{}\n", self.coredns.tail(lines));
        for node in &self.nodes {
            out.push_str(&lock(node).tails(lines));
        }
        out
    }
}

impl Drop for RealNodes {
    fn drop(&mut self) {
        lock_spawner(&self.spawner).take();
        for node in &self.nodes {
            let mut node = lock(node);
            // kubelet first, so it restarts nothing while the rest goes.
            while let Some(p) = node.procs.pop() {
                drop(p);
            }
        }
        if let Err(e) = node::script(&["cleanup-nodes"], &[]) {
            eprintln!("restoring the host after the real nodes: {e}");
        }
    }
}

/// An injected network fault; dropping it heals the network.
pub struct Fault<'a> {
    nodes: &'a RealNodes,
    node: String,
}

impl Drop for Fault<'_> {
    fn drop(&mut self) {
        let healed = self.nodes.with(&self.node, |n| {
            n.iptables(&["-t", "raw", "-F", "TJ-FAULT"]).map(|_| ())
        });
        if let Err(e) = healed {
            eprintln!("healing the network of {}: {e}", self.node);
        }
    }
}

/// A DNS outage; dropping it resumes CoreDNS.
pub struct DnsOutage<'a> {
    nodes: &'a RealNodes,
}

impl Drop for DnsOutage<'_> {
    fn drop(&mut self) {
        let coredns = self.nodes.coredns.clone();
        if let Err(e) = self.nodes.on_spawner(move || coredns.restart()) {
            eprintln!("starting CoreDNS again: {e}");
            return;
        }
        let address = match NODES_HOST.parse::<std::net::Ipv4Addr>() {
            Ok(host) => std::net::SocketAddr::from((host, 53)),
            Err(e) => {
                eprintln!("{NODES_HOST}: {e}");
                return;
            }
        };
        let deadline = std::time::Instant::now() + self.nodes.timeout;
        while std::net::TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_err() {
            if std::time::Instant::now() >= deadline {
                eprintln!("CoreDNS does not listen on {address} again");
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Work for the spawner thread.
type Job = Box<dyn FnOnce() + Send>;
type Spawner = Mutex<Option<Sender<Job>>>;

fn lock_spawner(spawner: &Spawner) -> std::sync::MutexGuard<'_, Option<Sender<Job>>> {
    spawner.lock().unwrap_or_else(|e| e.into_inner())
}

fn lock(node: &Mutex<NetnsNode>) -> std::sync::MutexGuard<'_, NetnsNode> {
    node.lock().unwrap_or_else(|e| e.into_inner())
}

fn signal(process: &Process, signal: libc::c_int) -> Result<(), BedError> {
    // SAFETY: kill(2) with the pid of a child this process owns and has not reaped.
    if unsafe { libc::kill(process.pid() as libc::pid_t, signal) } != 0 {
        return Err(BedError::Io {
            what: format!("signalling {}", process.component),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Starts `binary` as a daemon of `node`: in its cgroup (so that `cgroup.kill` takes it and
/// everything it starts), network namespace and UTS namespace. Joins only those two namespaces
/// (`nsenter`), not a mount namespace of its own: the kubelet's volume mounts must be visible to
/// the runc that containerd starts.
fn node_process(
    node: &NetnsNode,
    component: Component,
    binary: &Path,
    args: &[String],
) -> Result<Process, BedError> {
    let script = format!(
        "echo $$ > /sys/fs/cgroup/unified/{name}/cgroup.procs && export NODE_NAME={name} && exec nsenter --net={netns} --uts=/run/trainjob-testbed-nodes/uts-{index} -- \"$@\"",
        name = node.name,
        netns = node.netns().display(),
        index = node.index,
    );
    let binary = binary.display().to_string();
    let mut all: Vec<&str> = vec!["-c", &script, &node.name, &binary];
    all.extend(args.iter().map(String::as_str));
    Process::spawn(
        component,
        Path::new("/bin/sh"),
        &all,
        &node.dir.join(format!("{component}.log")),
    )
}

/// kube-router as node `node`'s NetworkPolicy enforcer, as on the single node (firewall only),
/// in the node's namespace: ingress rules act on the destination node, egress on the source.
fn kube_router(node: &NetnsNode, binary: &Path) -> Result<Process, BedError> {
    let args = vec![
        format!("--kubeconfig={}", node.dir.join("kubeconfig").display()),
        format!("--hostname-override={}", node.name),
        "--run-firewall=true".into(),
        "--run-router=false".into(),
        "--run-service-proxy=false".into(),
        "--run-loadbalancer=false".into(),
        "--enable-cni=false".into(),
        "--service-cluster-ip-range=10.96.0.0/16".into(),
        "--metrics-port=0".into(),
        "--health-port=0".into(),
        "--iptables-sync-period=1m".into(),
    ];
    node_process(node, Component::KubeRouter, binary, &args)
}

fn check_alive(node: &NetnsNode) -> Result<(), BedError> {
    for p in &node.procs {
        if let Some(status) = p.exited() {
            return Err(BedError::Exited {
                component: p.component,
                status,
                tail: format!("({}) {}", node.name, p.tail(30)),
            });
        }
    }
    Ok(())
}

fn timeout_error(what: &str, timeout: Duration, nodes: &[NetnsNode]) -> BedError {
    let logs = nodes.iter().map(|n| n.tails(30)).collect();
    BedError::Timeout {
        what: what.into(),
        seconds: timeout.as_secs(),
        logs,
    }
}
