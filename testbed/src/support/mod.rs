//! Shared set-up for the integration tests and benches: one control plane per test binary, one
//! namespace per test, the operator under test, and polling with a deadline instead of sleeps.

pub mod browser;
pub mod data;
pub mod jobs;
pub mod leaders;
pub mod logs;
pub mod process;
pub mod progress;
pub mod realnode;
pub mod sse;

use std::future::Future;
use std::sync::OnceLock;
use std::time::Duration;

pub use crate::Identity;
use crate::{Audit, Bed, BedConfig};

static BED: OnceLock<Result<Bed, String>> = OnceLock::new();

/// The control plane of this test binary, started on first use.
///
/// It is started from a dedicated thread that lives as long as the process: the components are
/// killed when the thread that spawned them exits, and each `#[tokio::test]` runs (and ends) on a
/// thread of its own.
pub fn bed() -> &'static Bed {
    bed_with(BedConfig::default)
}

/// The control plane of the benchmarks: `nodes` kwok nodes of `pods` pods each, with the shipped
/// runtimes installed. Its audit log counts the operator's requests but holds no bodies, and
/// there is no key scan (neither would be timed).
pub fn bench_bed(nodes: u32, pods: u32) -> &'static Bed {
    let bed = started(Audit::Requests, move || BedConfig {
        nodes: roomy_nodes(nodes, pods),
        ..BedConfig::default()
    });
    bed.apply_kustomization("config/runtimes").expect("runtimes");
    bed
}

/// The control plane of this test binary with room for thousands of pods: 8 kwok nodes of 1000.
pub fn big_bed() -> &'static Bed {
    bed_with(|| BedConfig {
        nodes: roomy_nodes(8, 1000),
        ..BedConfig::default()
    })
}

/// `count` kwok nodes of `pods` pods each, with CPU and memory to match.
pub fn roomy_nodes(count: u32, pods: u32) -> Vec<crate::FakeNode> {
    (0..count)
        .map(|i| crate::FakeNode {
            pods,
            memory: "4Ti".into(),
            ..crate::FakeNode::new(format!("kwok-node-{i}"), 4000, 0)
        })
        .collect()
}

/// The control plane of this test binary with a real node next to the kwok nodes.
pub fn real_bed() -> &'static Bed {
    bed_with(|| BedConfig {
        real_node: true,
        ..BedConfig::default()
    })
}

/// The control plane of this test binary with `count` real nodes of the multi-node tier
/// (`multinode`), and the fake nodes as always.
pub fn multi_node_bed(count: usize) -> &'static Bed {
    bed_with(move || BedConfig {
        real_nodes: count,
        ..BedConfig::default()
    })
}

/// The control plane of this test binary with Kueue (TrainJob integration) running next to it.
pub fn kueue_bed() -> &'static Bed {
    bed_with(|| BedConfig {
        kueue: true,
        ..BedConfig::default()
    })
}

/// The control plane of this test binary; the first caller's `config` decides how it starts.
/// Every test bed records the operator's requests in its audit log (`tests/privileges.rs` and
/// the key scan read it), and the operator's log lines are captured for the key scan.
fn bed_with(config: impl FnOnce() -> BedConfig + Send + 'static) -> &'static Bed {
    started(Audit::Bodies, config)
}

/// The bed, started on first use with `audit`; with bodies audited, also the captured logs and
/// the key scan.
fn started(audit: Audit, config: impl FnOnce() -> BedConfig + Send + 'static) -> &'static Bed {
    let audited = audit == Audit::Bodies;
    let result = BED.get_or_init(|| {
        if audited {
            logs::capture();
        }
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("testbed".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
                let bed = match runtime {
                    Ok(rt) => rt
                        .block_on(Bed::start(BedConfig { audit, ..config() }))
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(format!("building a runtime: {e}")),
                };
                let _ = tx.send(bed);
                loop {
                    std::thread::park();
                }
            })
            .expect("spawning the testbed thread");
        let bed = rx
            .recv()
            .unwrap_or_else(|e| Err(format!("testbed thread died: {e}")));
        if let Ok(bed) = &bed {
            crate::remove_dir_at_exit(bed.dir().to_path_buf());
            // Registered after the removal, so it runs before it (exit handlers run in reverse).
            if audited {
                logs::scan_keys_at_exit(bed.audit_log());
            }
        }
        bed
    });
    match result {
        Ok(bed) => bed,
        Err(e) => panic!("the test control plane did not start: {e}"),
    }
}

/// A namespace for one test, plus a log dump when the test fails.
pub struct TestNs {
    pub name: String,
}

impl TestNs {
    /// Creates a fresh namespace named after the test.
    pub async fn new(prefix: &str) -> TestNs {
        let name = bed()
            .namespace(prefix)
            .await
            .expect("creating the test namespace");
        TestNs { name }
    }
}

impl Drop for TestNs {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let operator = logs::raw();
            let tail = &operator[operator.len().saturating_sub(60)..];
            eprintln!(
                "test in namespace {} failed; control-plane log tails:\n{}\n==> operator (in this process) <==\n{}",
                self.name,
                bed().log_tails(25),
                tail.join("\n")
            );
        }
    }
}

/// A client for `identity`, built for the calling test's runtime.
pub async fn client(identity: Identity) -> kube::Client {
    bed().client(identity).await.expect("building a client")
}

/// Polls `check` every 50 ms until it returns `Some`, failing the test after `timeout` with
/// `what` and the last observation.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match check().await {
            Ok(value) => return value,
            Err(last) if tokio::time::Instant::now() >= deadline => {
                panic!("timed out after {timeout:?} waiting for {what}; last seen: {last}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Default deadline for state the control plane reaches on its own.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// The test operator's `--stall-timeout` (5 min by default), so that tests see a stalled job
/// fail, and still have time to make one recover.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(45);

/// The operator under test: the real controller and HTTP server, running as the operator's
/// service account (bound only to `config/rbac`), on a thread and runtime of its own.
pub struct Operator {
    /// Who this operator is: its `holderIdentity` when it campaigns for the Lease
    /// (`leader::identity` of its instance name), and, in the audit log, the `userAgent` of every
    /// request it makes ([`leaders::user_agent`]).
    pub identity: String,
    /// Metrics the controller updates.
    pub metrics: std::sync::Arc<trainjob_operator::metrics::Metrics>,
    /// What the controller remembers of each job.
    pub memory: std::sync::Arc<trainjob_operator::controller::Memory>,
    /// Base URL of the HTTP server (`/metrics`, `/healthz`, `/readyz`).
    pub http: String,
    /// Port of the status server (on every address), for an operator that serves admission.
    pub status_port: Option<u16>,
    stop: Option<tokio::sync::watch::Sender<bool>>,
    kill: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Name of the shipped webhook configurations (`config/webhook`).
pub const WEBHOOK_CONFIGURATION: &str = "trainjob-operator";

impl Operator {
    /// Starts a fresh operator; dropping it stops it gracefully.
    pub fn start() -> Operator {
        Self::launch(false, None)
    }

    /// Starts a fresh operator that also serves admission, with the shipped webhook
    /// configurations registered for it; returns once the API server calls it.
    pub fn start_admitting() -> Operator {
        Self::launch(true, None)
    }

    /// Starts a fresh replica named `instance` that reconciles only while it holds the leader
    /// Lease `trainjob-system/trainjob-operator`, as `--leader-elect` runs it.
    pub fn start_elected(instance: &str, timing: trainjob_operator::leader::Timing) -> Operator {
        Self::launch(false, Some((instance.to_string(), timing)))
    }

    fn launch(admission: bool, election: Option<(String, trainjob_operator::leader::Timing)>) -> Operator {
        use trainjob_operator::{controller, leader, metrics::Metrics, server, webhook};
        let bed = bed();
        let metrics = std::sync::Arc::new(Metrics::new());
        let memory = std::sync::Arc::new(controller::Memory::new(metrics.clone()));
        let mem = memory.clone();
        let port = free_port();
        let webhook_port = admission.then(free_port);
        let status_port = admission.then(free_port);
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let (kill, kill_rx) = tokio::sync::oneshot::channel::<()>();
        let (admitting_tx, admitting_rx) = std::sync::mpsc::channel::<()>();
        let m = metrics.clone();
        // As config/default runs it.
        let instance = election
            .as_ref()
            .map_or_else(|| "test-operator".to_string(), |(name, _)| name.clone());
        let identity = leader::identity(&instance);
        let me = identity.clone();
        let thread = std::thread::Builder::new()
            .name("operator".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("runtime");
                let operator = async move {
                    let client = bed
                        .client_as(Identity::Operator, Some(&leaders::user_agent(&me)))
                        .await
                        .expect("operator client");
                    let stopped = move || {
                        let mut rx = stop_rx.clone();
                        async move {
                            let _ = rx.wait_for(|s| *s).await;
                        }
                    };
                    let ready = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
                    let webhook_ready =
                        webhook_port.map(|_| std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false)));
                    let leading = election
                        .as_ref()
                        .map(|_| std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false)));
                    let health = server::Health {
                        metrics: m.clone(),
                        ready: ready.clone(),
                        webhook: webhook_ready.clone(),
                        leading: leading.clone(),
                    };
                    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
                    let http = tokio::spawn(server::serve(addr, health, stopped()));
                    let runtimes = trainjob_operator::runtimes::Cache::start(&client);
                    let (trust, trusted) = tokio::sync::watch::channel(None);
                    // As config/default serves it: pods reach it through the webhook Service
                    // (a real node's pods: see `expose_status_server`).
                    let reporting = status_port.map(|port| trainjob_operator::progress::Reporting {
                        url: trainjob_operator::progress::base_url(
                            "trainjob-operator-webhook",
                            "trainjob-system",
                            port,
                        ),
                        trust: trusted,
                    });
                    if let (Some(webhook_port), Some(webhook_ready)) = (webhook_port, webhook_ready) {
                        bed.register_operator_webhooks(webhook_port)
                            .await
                            .expect("registering the webhooks");
                        let settings = webhook::Settings {
                            addr: std::net::SocketAddr::from(([127, 0, 0, 1], webhook_port)),
                            // As config/default installs it, plus the loopback address the bed
                            // registers the webhooks at.
                            certs: webhook::certs::Source::SelfManaged(
                                webhook::certs::SelfManaged::for_service(
                                    "trainjob-operator-webhook",
                                    "trainjob-system",
                                    trainjob_operator::plan::DEFAULT_CLUSTER_DOMAIN,
                                    vec!["127.0.0.1".into()],
                                    Duration::from_secs(90 * 24 * 3600),
                                    WEBHOOK_CONFIGURATION,
                                ),
                            ),
                            limits: Default::default(),
                            fips: false,
                            progress: status_port.map(|port| trainjob_operator::progress::Serving {
                                addr: std::net::SocketAddr::from(([0, 0, 0, 0], port)),
                                trust: std::sync::Arc::new(trust),
                            }),
                        };
                        tokio::spawn(webhook::serve(
                            client.clone(),
                            settings,
                            m.clone(),
                            runtimes.clone(),
                            webhook_ready,
                            stopped(),
                        ));
                        tokio::spawn(async move {
                            wait_for_admission().await;
                            let _ = admitting_tx.send(());
                        });
                    }
                    let settings = controller::Settings {
                        instance,
                        cluster: trainjob_operator::plan::Cluster {
                            network_policies: true,
                            stall_timeout: STALL_TIMEOUT,
                            ..Default::default()
                        },
                        progress: reporting,
                        ..Default::default()
                    };
                    let reconcile = controller::run(
                        client.clone(),
                        settings,
                        runtimes,
                        m.clone(),
                        mem,
                        ready,
                        stopped(),
                    );
                    match (election, leading) {
                        (Some((_, timing)), Some(leading)) => {
                            let elector = leader::Elector::new(
                                client,
                                leader::Settings {
                                    namespace: "trainjob-system".into(),
                                    name: "trainjob-operator".into(),
                                    identity: me,
                                    timing,
                                },
                            );
                            // A lost Lease ends this replica, as it ends the process.
                            if leader::lead(elector, leading, m, stopped(), reconcile)
                                .await
                                .is_err()
                            {
                                return;
                            }
                        }
                        _ => {
                            m.leader.set(1);
                            reconcile.await;
                        }
                    }
                    let _ = http.await;
                };
                // A kill drops the operator mid-flight, like a crashed process: in-progress
                // reconciles stop wherever they are.
                rt.block_on(async move {
                    tokio::select! {
                        _ = operator => {}
                        _ = kill_rx => {}
                    }
                });
                rt.shutdown_background();
            })
            .expect("operator thread");
        if admission {
            admitting_rx
                .recv_timeout(Duration::from_secs(60))
                .expect("the API server to call the operator's webhooks within 60 s");
        }
        Operator {
            identity,
            metrics,
            memory,
            http: format!("http://127.0.0.1:{port}"),
            status_port,
            stop: Some(stop),
            kill: Some(kill),
            thread: Some(thread),
        }
    }

    /// Stops the operator gracefully (SIGTERM) and waits until it has shut down.
    pub fn stop(mut self) {
        self.shutdown();
    }

    /// Kills the operator at once, abandoning whatever it was doing (a crash).
    pub fn kill(mut self) {
        if let Some(kill) = self.kill.take() {
            let _ = kill.send(());
        }
        self.shutdown();
    }

    /// Whether the operator has ended on its own, as a replica that lost its Lease does (the
    /// process exits, and Kubernetes starts it again).
    pub fn exited(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| t.is_finished())
    }

    fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The operator shared by every test of a binary (started on first use, never stopped).
pub fn operator() -> &'static Operator {
    shared_operator(false)
}

/// The operator shared by every test of a binary, serving admission as `config/webhook`
/// registers it. The first caller of this or [`operator`] decides.
pub fn admitting_operator() -> &'static Operator {
    shared_operator(true)
}

fn shared_operator(admission: bool) -> &'static Operator {
    static OPERATOR: OnceLock<Operator> = OnceLock::new();
    OPERATOR.get_or_init(|| {
        bed()
            .apply_kustomization("config/runtimes")
            .expect("installing runtimes");
        if admission {
            Operator::start_admitting()
        } else {
            Operator::start()
        }
    })
}

/// A TCP port nobody listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// The API server picks up webhook configurations (and their caBundle) asynchronously: until a
/// dry-run TrainJob on a missing runtime is refused by the operator's webhook, a test's first
/// request could pass unchecked.
/// Waits until the API server calls the operator's validating webhook.
pub async fn wait_for_admission() {
    let admin = client(Identity::Admin).await;
    let jobs: kube::Api<trainjob_operator::api::TrainJob> = kube::Api::namespaced(admin, "default");
    let probe: trainjob_operator::api::TrainJob = serde_json::from_value(serde_json::json!({
        "apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob",
        "metadata": {"name": "admission-probe"},
        "spec": {"runtimeRef": {"name": "admission-probe-missing"}},
    }))
    .expect("probe");
    let dry_run = kube::api::PostParams {
        dry_run: true,
        ..Default::default()
    };
    eventually(
        "the API server to call the operator's webhook",
        Duration::from_secs(60),
        || async {
            match jobs.create(&dry_run, &probe).await {
                Err(kube::Error::Api(e)) if e.message.contains("vtrainjob.trainer.kubeflow.org") => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await
}

/// A plain HTTP GET over a TCP socket (the operator's endpoints speak HTTP/1.1 without TLS).
pub async fn http_get(url: &str, accept: &str) -> Result<String, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").ok_or("http only")?;
    let (host, path) = rest
        .split_once('/')
        .map(|(h, p)| (h, format!("/{p}")))
        .unwrap_or((rest, "/".into()));
    let mut stream = tokio::net::TcpStream::connect(host)
        .await
        .map_err(|e| e.to_string())?;
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: {accept}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .map_err(|e| e.to_string())?;
    let (head, body) = response.split_once("\r\n\r\n").ok_or("no body")?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(head.lines().next().unwrap_or_default().to_string());
    }
    Ok(body.to_string())
}
