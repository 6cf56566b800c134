//! Child processes of the bed: spawned with their output in a log file, killed with the parent.

use std::fmt;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;

use super::BedError;

/// A component of the control plane.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Component {
    Etcd,
    ApiServer,
    ControllerManager,
    Scheduler,
    Kwok,
    /// The real node's container runtime.
    Containerd,
    /// The real node's cluster DNS.
    CoreDns,
    /// The real node.
    Kubelet,
    /// The real node's NetworkPolicy enforcer.
    KubeRouter,
    /// Kueue's manager (job queueing), for the Kueue contract test.
    Kueue,
    /// The real node's resource metrics (`metrics.k8s.io`).
    MetricsServer,
    /// The real node's S3 server (versitygw).
    S3,
}

/// Every binary the bed needs (kubectl is used for installs).
pub(super) const ALL: [&str; 6] = [
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kwok",
    "kubectl",
];

impl Component {
    pub(super) fn binary(self) -> &'static str {
        match self {
            Component::Etcd => "etcd",
            Component::ApiServer => "kube-apiserver",
            Component::ControllerManager => "kube-controller-manager",
            Component::Scheduler => "kube-scheduler",
            Component::Kwok => "kwok",
            Component::Containerd => "containerd",
            Component::CoreDns => "coredns",
            Component::Kubelet => "kubelet",
            Component::KubeRouter => "kube-router",
            Component::Kueue => "kueue",
            Component::MetricsServer => "metrics-server",
            Component::S3 => "versitygw",
        }
    }
}

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.binary())
    }
}

pub(super) struct Process {
    pub(super) component: Component,
    child: Mutex<Child>,
    log: PathBuf,
    /// How it was started, for [`Process::restart`]; `None` when a hook prepared the command.
    command: Option<(PathBuf, Vec<String>)>,
}

/// Runs `command` to completion with `stdin` as its input; returns its stdout, or an error
/// naming `what` with its stderr.
pub(crate) fn run(command: &mut Command, stdin: &str, what: &str) -> Result<String, BedError> {
    use std::io::Write;
    let io = |source| BedError::Io {
        what: format!("running {what}"),
        source,
    };
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io)?;
    if let Some(mut input) = child.stdin.take() {
        input.write_all(stdin.as_bytes()).map_err(io)?;
    }
    let out = child.wait_with_output().map_err(io)?;
    if !out.status.success() {
        return Err(BedError::Command(format!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Makes the kernel kill the child when the thread that spawns it exits, so nothing a test
/// starts outlives a test binary that panics, is killed, or never drops what it started.
pub fn die_with_parent(command: &mut Command) {
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

impl Process {
    pub(super) fn spawn(
        component: Component,
        binary: &Path,
        args: &[&str],
        log: &Path,
    ) -> Result<Process, BedError> {
        let mut process = Self::spawn_with(component, binary, args, log, |_| Ok(()))?;
        process.command = Some((binary.to_path_buf(), args.iter().map(|a| a.to_string()).collect()));
        Ok(process)
    }

    /// Kills the process and starts it again the same way, its output appended to the same log.
    /// The new process dies with the calling thread (see [`die_with_parent`]).
    pub(super) fn restart(&self) -> Result<(), BedError> {
        let component = self.component;
        let Some((binary, args)) = &self.command else {
            return Err(BedError::Command(format!(
                "{component} was started with a hook and cannot be restarted"
            )));
        };
        let io = |what: &str, source| BedError::Io {
            what: format!("{what} for {component}"),
            source,
        };
        let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        let _ = child.kill();
        let _ = child.wait();
        let out = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.log)
            .map_err(|e| io("opening the log file", e))?;
        let err = out.try_clone().map_err(|e| io("opening the log file", e))?;
        let mut command = Command::new(binary);
        command.args(args).stdin(Stdio::null()).stdout(out).stderr(err);
        die_with_parent(&mut command);
        *child = command
            .spawn()
            .map_err(|e| io(&format!("restarting {}", binary.display()), e))?;
        Ok(())
    }

    /// Like [`Process::spawn`], with `prepare` adjusting the command first (for example a
    /// `pre_exec` hook).
    pub(super) fn spawn_with(
        component: Component,
        binary: &Path,
        args: &[&str],
        log: &Path,
        prepare: impl FnOnce(&mut Command) -> Result<(), BedError>,
    ) -> Result<Process, BedError> {
        let io = |what: &str, source| BedError::Io {
            what: format!("{what} for {component}"),
            source,
        };
        let out = File::create(log).map_err(|e| io("creating the log file", e))?;
        let err = out.try_clone().map_err(|e| io("opening the log file", e))?;
        let mut command = Command::new(binary);
        command.args(args).stdin(Stdio::null()).stdout(out).stderr(err);
        die_with_parent(&mut command);
        prepare(&mut command)?;
        let child = command
            .spawn()
            .map_err(|e| io(&format!("starting {}", binary.display()), e))?;
        Ok(Process {
            component,
            child: Mutex::new(child),
            log: log.to_path_buf(),
            command: None,
        })
    }

    /// Its process id (of the running process, after a restart the new one).
    pub(super) fn pid(&self) -> u32 {
        self.child.lock().unwrap_or_else(|e| e.into_inner()).id()
    }

    /// `Some(status)` when the process has exited.
    pub(super) fn exited(&self) -> Option<String> {
        let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        child.try_wait().ok().flatten().map(|s| s.to_string())
    }

    /// The last `lines` lines of the log (reads at most the last 64 KiB).
    pub(super) fn tail(&self, lines: usize) -> String {
        let Ok(mut file) = File::open(&self.log) else {
            return String::new();
        };
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = file.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
        let mut text = String::new();
        let _ = file.read_to_string(&mut text);
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let child = self.child.get_mut().unwrap_or_else(|e| e.into_inner());
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// CPU time (user + system) process `pid` has used so far, in seconds; `None` when it is gone.
pub(crate) fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start after the last ')'; utime
    // and stime are fields 14 and 15 of stat, 12 and 13 after the name and state.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
    // SAFETY: sysconf only reads a system constant.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some((ticks(11)? + ticks(12)?) / per_second)
}
