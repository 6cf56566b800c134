//! Everything that differs between MPI implementations, behind one interface
//! ([`Implementation`]): the hostfile line, the launcher's environment, what the launcher must
//! wait for before `mpirun`, and the log lines that say why `mpirun` failed. One file per
//! implementation; [`of`] picks the one a runtime's `mpiImplementation` names. What all of them
//! share (the hostfile's place, the ssh options, the role variable, the transport's error lines)
//! lives here. docs/development/architecture.md has the recipe for adding one.

mod hydra;
mod intel;
mod mpich;
mod openmpi;
#[cfg(test)]
mod tests;
#[cfg(test)]
pub(crate) use openmpi::ORTE_NODE_DIED;

use k8s_openapi::api::core::v1::{Container, EnvVar};

use crate::api::MPIImplementation;

/// Where the hostfile ConfigMap is mounted in the launcher.
pub const HOSTFILE_DIR: &str = "/etc/mpi";
/// Path of the hostfile in the launcher.
pub const HOSTFILE_PATH: &str = "/etc/mpi/hostfile";
/// Role variable read by the MPI Operator base images' entrypoints (the Intel and MPICH images
/// wait for the hostfile's DNS names when it says `launcher`).
pub const ROLE_ENV: &str = "K_MPI_JOB_ROLE";

/// ssh options for every implementation. Pods come and go with new host keys and the key mount
/// is read-only, so host keys are neither checked nor recorded (the job's own key pair
/// authenticates the workers); connections are retried while a worker's DNS record settles.
///
/// `mpirun` holds an ssh session to every worker for the whole run, and a worker that stops
/// answering (a network partition drops packets: no reset, no ICMP) would hold it open forever.
/// `ServerAliveInterval=20` and `ServerAliveCountMax=3` end such a session 60 to 80 s after the
/// worker's last answer (ssh asks every 20 s of silence and gives up after the fourth question
/// goes unanswered): long enough for a loaded node's sshd to answer, short enough that the job
/// fails instead of hanging, and longer than Kubernetes takes to call a dead node lost
/// (`--node-monitor-grace-period`, 50 s by default), so that a node that went away is named as
/// such (the gang restarts) rather than as a broken connection. The same two bound the login
/// itself (OpenSSH uses them as the packet timeout until the session starts).
///
/// `LogLevel=INFO` (OpenSSH's default, set so that an image's `ssh_config` cannot lower it): ssh
/// names the worker that stopped answering ("Timeout, server HOST not responding.",
/// clientloop.c) only at INFO, as it does the connection errors it dies of during login (log.c's
/// `sshlogdie` logs at INFO whatever it is given). At ERROR the session ends without a word, and
/// what the MPI implementation makes of it misleads: Open MPI 4 reports the worker's daemon as one
/// it "was unable to reliably start", Open MPI 5 as one that "failed to report back after being
/// spawned", and MPICH's Hydra ignores the end of an ssh session once its proxy has connected.
/// The price is one "Warning: Permanently added ..." line per connection (also INFO).
pub const SSH_ARGS: &str = "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o ConnectionAttempts=10 \
-o ServerAliveInterval=20 -o ServerAliveCountMax=3 -o LogLevel=INFO";

/// Blank on a launcher that runs no ranks, unless the job sets them, so that it does not hold
/// the node's GPUs through the NVIDIA runtime (as MPI Operator does).
const NO_GPUS: &[(&str, &str)] = &[("NVIDIA_VISIBLE_DEVICES", ""), ("NVIDIA_DRIVER_CAPABILITIES", "")];

/// Why `mpirun` could not reach, start or keep a rank, in the order a log is searched for them: a
/// rejected key also closes the connection; a connection that never opened is [`Cause::Ssh`],
/// and one that broke later says nothing of the key, the names or the first connection; a broken
/// connection comes before the daemon, because an implementation tells of a daemon whose ssh
/// session ended mid-run as of one that never started ("ORTE was unable to reliably start one or
/// more daemons"), while a daemon that cannot start at all breaks no connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Cause {
    /// sshd turned the job's key down.
    Key,
    /// A host name did not resolve.
    Dns,
    /// No SSH session could be opened.
    Ssh,
    /// An established connection to a rank's host (mpirun's ssh session or daemon link to a
    /// worker, or a link between ranks) broke or timed out while the job ran.
    Connection,
    /// The session opened, but the implementation's remote daemon did not start.
    Daemon,
}

/// What differs between MPI implementations. Each lives in its own file; [`of`] picks one.
pub trait Implementation: Sync {
    /// The `spec.mlPolicy.mpi.mpiImplementation` value it serves.
    fn api(&self) -> MPIImplementation;

    /// Its name in messages.
    fn name(&self) -> &'static str;

    /// One hostfile line: `host` with `slots` slots.
    fn host_line(&self, host: &str, slots: i32) -> String;

    /// The launcher's variables that point `mpirun` at the hostfile, the slots and the ssh
    /// options. The operator owns them: every name is in [`Implementation::reserved`].
    fn variables(&self, slots: i32) -> Vec<(&'static str, String)>;

    /// Every name a TrainJob may not set: those of [`Implementation::variables`], and names
    /// that would silently fight them.
    fn reserved(&self) -> &'static [&'static str];

    /// Set on a launcher that may run as root, unless the job sets them.
    fn root_defaults(&self) -> &'static [(&'static str, &'static str)] {
        &[]
    }

    /// A variable that makes `mpirun` pass the launcher's environment (`existing`) on to every
    /// rank, for an implementation that does not do so by itself.
    fn forward(&self, _existing: &[EnvVar]) -> Option<(&'static str, String)> {
        None
    }

    /// Whether the workers call the launcher back by its name as soon as `mpirun` starts, so
    /// that the launcher must wait until its own DNS record exists.
    fn calls_back_by_name(&self) -> bool {
        false
    }

    /// The program `mpirun` starts on every worker over ssh, for messages.
    fn remote_daemon(&self) -> &'static str;

    /// The lines of this implementation's own output that name a [`Cause`], besides the ssh and
    /// resolver lines every implementation shows ([`TRANSPORT`]).
    fn log_patterns(&self) -> &'static [(Cause, &'static str)];

    /// Hostfile, environment and diagnosis cases this implementation must pass (`mpi::tests`).
    #[cfg(test)]
    fn cases(&self) -> tests::Cases;
}

/// The implementation a runtime names.
pub fn of(implementation: MPIImplementation) -> &'static dyn Implementation {
    match implementation {
        MPIImplementation::OpenMPI => &openmpi::OpenMpi,
        MPIImplementation::Intel => &intel::IntelMpi,
        MPIImplementation::Mpich => &mpich::Mpich,
    }
}

/// Every implementation, in the API's order.
pub fn all() -> impl Iterator<Item = &'static dyn Implementation> {
    MPIImplementation::ALL.into_iter().map(of)
}

/// Whether a TrainJob may not set variable `name`: some implementation's operator-owned name,
/// or the role variable. Reserved for all implementations alike, so a runtime's implementation
/// can change without a job's variables changing meaning.
pub fn is_reserved(name: &str) -> bool {
    name == ROLE_ENV || all().any(|mpi| mpi.reserved().contains(&name))
}

/// What decides the launcher's environment besides the implementation.
#[derive(Clone, Copy, Debug)]
pub struct Launcher {
    /// MPI slots per host.
    pub slots: i32,
    /// Whether the launcher's user may be root (not known to be another uid).
    pub may_be_root: bool,
    /// Whether the launcher runs ranks itself.
    pub runs_ranks: bool,
}

/// The variables for the launcher's `node` container, given what it sets already (`existing`).
/// Operator variables replace same-named ones (resolve refuses reserved names in the job);
/// defaults (root permission, GPU blanking) never override the job's own.
pub fn launcher_env(mpi: &dyn Implementation, launcher: Launcher, existing: &[EnvVar]) -> Vec<EnvVar> {
    let mut pairs = mpi.variables(launcher.slots);
    pairs.push((ROLE_ENV, "launcher".into()));
    pairs.extend(mpi.forward(existing));
    let has = |name: &str| existing.iter().any(|e| e.name == name);
    let mut defaults: Vec<(&str, &str)> = Vec::new();
    if launcher.may_be_root {
        defaults.extend(mpi.root_defaults());
    }
    if !launcher.runs_ranks {
        defaults.extend(NO_GPUS);
    }
    pairs
        .into_iter()
        .map(|(n, v)| var(n, &v))
        .chain(
            defaults
                .into_iter()
                .filter(|(n, _)| !has(n))
                .map(|(n, v)| var(n, v)),
        )
        .collect()
}

/// The variables for a worker's `node` container.
pub fn worker_env() -> Vec<EnvVar> {
    vec![var(ROLE_ENV, "worker")]
}

/// The container's environment so far.
pub fn env_of(container: &Container) -> &[EnvVar] {
    container.env.as_deref().unwrap_or_default()
}

fn var(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        value_from: None,
    }
}

/// Lines from OpenSSH and the C library's resolver, which every implementation's `mpirun`
/// passes on from the ssh it starts, in the order they claim a line (see [`diagnose`]). Key
/// problems first: a rejected key also ends the connection. The lines of a session that broke
/// (clientloop.c) come before the connect errors, whose words they may repeat ("Read from remote
/// host HOST: Connection reset by peer" is not "Connection reset by 10.0.0.5 port 2222").
const TRANSPORT: &[(Cause, &str)] = &[
    (Cause::Key, "Permission denied (publickey"),
    (Cause::Key, "are too open"),
    (Cause::Key, "bad permissions"),
    (Cause::Key, "Load key"),
    (Cause::Key, "Too many authentication failures"),
    (Cause::Dns, "Could not resolve hostname"),
    (Cause::Dns, "getaddrinfo"),
    (Cause::Dns, "Name or service not known"),
    (Cause::Dns, "Temporary failure in name resolution"),
    (Cause::Dns, "could not be resolved"),
    // ServerAliveCountMax keepalives went unanswered ("Timeout, server HOST not responding.").
    (Cause::Connection, "Timeout, server "),
    // The worker's end went away ("Connection to HOST closed by remote host.").
    (Cause::Connection, "closed by remote host."),
    // OpenSSH 9's word for the same keepalives, as MPICH's launcher printed it across a real
    // partition ("Connection to 10.244.2.3 port 2222 timed out").
    (Cause::Connection, "Connection to "),
    // A read of the session failed ("Read from remote host HOST: Connection timed out").
    (Cause::Connection, "Read from remote host "),
    // Ending a session whose connection is gone ("client_loop: send disconnect: Broken pipe").
    (Cause::Connection, "send disconnect: "),
    (Cause::Ssh, "Connection refused"),
    (Cause::Ssh, "kex_exchange_identification"),
    (Cause::Ssh, "Connection closed by"),
    (Cause::Ssh, "Connection reset by"),
    (Cause::Ssh, "Connection timed out"),
    (Cause::Ssh, "No route to host"),
    (Cause::Ssh, "ssh_exchange_identification"),
];

/// A cause found in a launcher's log, with the line that shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// What went wrong.
    pub cause: Cause,
    /// The line, cleaned and cut (see [`quote`]).
    pub line: String,
}

/// The first cause `log` shows, by [`Cause`] order, then by pattern; `None` when it shows none
/// (the program itself failed). Each line names at most one cause: that of the first pattern it
/// contains, the implementation's own before the transport's (they are the more specific: Open
/// MPI's "readv failed: Connection timed out (110)" is a rank's broken connection, not ssh's
/// "Connection timed out"). Only the one matching line is quoted: a key never matches these
/// patterns, so key material cannot reach a condition or an Event through here.
pub fn diagnose(mpi: &dyn Implementation, log: &str) -> Option<Finding> {
    let own = mpi.log_patterns();
    let claimed: Vec<(&str, (Cause, &str))> = log
        .lines()
        .filter_map(|l| {
            let pattern = own
                .iter()
                .chain(TRANSPORT)
                .find(|(_, needle)| l.contains(needle))?;
            Some((l, *pattern))
        })
        .collect();
    let mut patterns: Vec<(Cause, &str)> = TRANSPORT.iter().chain(own).copied().collect();
    // Stable: within a cause, the transport's lines come first, in their order.
    patterns.sort_by_key(|(cause, _)| *cause);
    patterns.iter().find_map(|pattern| {
        claimed.iter().find(|(_, p)| p == pattern).map(|(l, _)| Finding {
            cause: pattern.0,
            line: quote(l),
        })
    })
}

/// The host a [`Cause::Connection`] line names, as the line spells it, where the line says which:
/// ssh's "Timeout, server HOST not responding.", "Connection to HOST closed by remote host." and
/// "Read from remote host HOST: ...", Open MPI's "Remote daemon: NAME on node HOST", "target
/// node:  HOST" and its TCP links' "peer: HOST".
pub fn peer(line: &str) -> Option<&str> {
    // (what the line must say, the words right before the host, and right after it; none: the
    // host is a word)
    const SHAPES: &[(&str, &str, Option<&str>)] = &[
        ("Timeout, server ", "Timeout, server ", Some(" not responding")),
        (
            "closed by remote host",
            "Connection to ",
            Some(" closed by remote host"),
        ),
        ("Read from remote host ", "Read from remote host ", Some(": ")),
        ("Remote daemon:", " on node ", None),
        (" timed out", "Connection to ", Some(" port ")),
        ("target node:", "target node:", None),
        ("peer: ", "peer: ", None),
    ];
    SHAPES.iter().find_map(|(marker, before, after)| {
        if !line.contains(marker) {
            return None;
        }
        let rest = &line[line.find(before)? + before.len()..];
        let host = match after {
            Some(after) => &rest[..rest.find(after)?],
            None => rest.split_whitespace().next()?,
        };
        (!host.is_empty() && !host.contains(char::is_whitespace)).then_some(host)
    })
}

/// Longest quoted log line.
const MAX_QUOTE: usize = 240;

/// The line without surrounding space and control characters (ANSI colours included), cut to
/// [`MAX_QUOTE`] characters.
pub fn quote(line: &str) -> String {
    let clean: String = line.trim().chars().filter(|c| !c.is_control()).collect();
    match clean.char_indices().nth(MAX_QUOTE) {
        Some((cut, _)) => format!("{}…", &clean[..cut]),
        None => clean,
    }
}
