//! The release operator as its own process, as `config/default` runs it, and what it costs:
//! resident memory and CPU time from `/proc`, counters from its `/metrics`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{Bed, Identity};

/// A running operator process; dropping it stops it.
pub struct OperatorProcess {
    child: Child,
    /// Base URL of `/metrics` and `/readyz`.
    pub http: String,
}

/// The release binary `make test` and `make bench` build: `$TRAINJOB_OPERATOR_BINARY`, else
/// `target/release`.
pub fn binary() -> PathBuf {
    std::env::var_os("TRAINJOB_OPERATOR_BINARY")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::repo_root().join("target/release/trainjob-operator"))
}

/// The dashboard's release binary, built beside the operator's.
pub fn dashboard_binary() -> PathBuf {
    binary().with_file_name("trainjob-dashboard")
}

impl OperatorProcess {
    /// Starts the operator under its own identity with `args` on top of the defaults (give
    /// `--disable-webhook` or the webhook's address), and waits until it is ready.
    pub async fn start(bed: &Bed, port: u16, args: &[String], log: PathBuf) -> OperatorProcess {
        let mut all = vec!["run".to_string(), format!("--http-addr=127.0.0.1:{port}")];
        all.extend_from_slice(args);
        Self::spawn(binary(), bed, Identity::Operator, &all, port, "/readyz", log).await
    }

    /// Starts the dashboard's release binary (`trainjob-dashboard`) on `port`, as it
    /// runs in a cluster: the bed's API server as its cluster (its kubeconfig's own credentials
    /// are dropped), each request acting as the token it brings. Waits until it serves.
    pub async fn dashboard(bed: &Bed, port: u16, log: PathBuf) -> OperatorProcess {
        let args = [format!("--addr=127.0.0.1:{port}")];
        Self::spawn(
            dashboard_binary(),
            bed,
            Identity::Admin,
            &args,
            port,
            "/healthz",
            log,
        )
        .await
    }

    async fn spawn(
        binary: PathBuf,
        bed: &Bed,
        identity: Identity,
        args: &[String],
        port: u16,
        ready: &str,
        log: PathBuf,
    ) -> OperatorProcess {
        assert!(
            binary.is_file(),
            "{} is missing: `make test` and `make bench` build it (cargo build --release)",
            binary.display()
        );
        let log_path = log.clone();
        let log = std::fs::File::create(&log).expect("operator log file");
        let child = Command::new(&binary)
            .args(args)
            .arg("--log-format=json")
            .env("KUBECONFIG", bed.kubeconfig_path(identity))
            // BENCH_OPERATOR_LOG: the operator's RUST_LOG, e.g. to see its watches.
            .env(
                "RUST_LOG",
                std::env::var("BENCH_OPERATOR_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::from(log.try_clone().expect("log file")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("starting the operator");
        let operator = OperatorProcess {
            child,
            http: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while super::http_get(&format!("{}{ready}", operator.http), "text/plain")
            .await
            .is_err()
        {
            if Instant::now() > deadline {
                // Its reconciles wait for the caches themselves: time the scenario anyway, and
                // leave the reason to its log.
                println!(
                    "  ({} was not ready after 60 s; see {})",
                    binary.display(),
                    log_path.display()
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        operator
    }

    fn proc_file(&self, name: &str) -> String {
        std::fs::read_to_string(format!("/proc/{}/{name}", self.child.id())).unwrap_or_default()
    }

    fn status_kib(&self, field: &str) -> f64 {
        self.proc_file("status")
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    }

    /// Resident memory now, MiB.
    pub fn rss_mib(&self) -> f64 {
        self.status_kib("VmRSS:") / 1024.0
    }

    /// Peak resident memory since start, MiB.
    pub fn peak_rss_mib(&self) -> f64 {
        self.status_kib("VmHWM:") / 1024.0
    }

    /// CPU time (user + system) since start, seconds.
    pub fn cpu_s(&self) -> f64 {
        crate::process::cpu_seconds(self.child.id()).unwrap_or(0.0)
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics(&self) -> String {
        super::http_get(&format!("{}/metrics", self.http), "text/plain")
            .await
            .unwrap_or_default()
    }

    /// Stops it with SIGTERM, as the kubelet would, and waits.
    pub fn stop(mut self) {
        self.terminate();
    }

    fn terminate(&mut self) {
        // SAFETY: signals a child this process started and has not reaped yet.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.terminate();
        }
    }
}

/// Sum of a metric's samples (every label set), from Prometheus text.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
