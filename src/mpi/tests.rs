//! Every implementation passes its own hostfile, environment and diagnosis cases, and one that
//! brings none fails here.

use super::*;

/// What one implementation must do, in its own words.
pub struct Cases {
    /// `(host, slots, line)`: the hostfile line for `host` with `slots` slots.
    pub hostfile: &'static [(&'static str, i32, &'static str)],
    /// Variables (and values) a launcher with 4 slots gets.
    pub env: &'static [(&'static str, &'static str)],
    /// A launcher log of this implementation, and the cause it must be diagnosed as.
    pub diagnosis: &'static [(&'static str, Cause)],
    /// Launcher logs of this implementation where the program itself failed: no cause.
    pub program_failures: &'static [&'static str],
}

const USER: Launcher = Launcher {
    slots: 2,
    may_be_root: false,
    runs_ranks: false,
};

fn get<'a>(env: &'a [EnvVar], name: &str) -> Option<&'a str> {
    env.iter()
        .find(|e| e.name == name)
        .and_then(|e| e.value.as_deref())
}

#[test]
fn every_api_value_has_an_implementation_and_every_implementation_its_cases() {
    let schema = serde_json::to_value(schemars::schema_for!(MPIImplementation)).expect("schema");
    let values =
        schema["enum"].as_array().map_or(0, Vec::len) + schema["oneOf"].as_array().map_or(0, Vec::len);
    assert_eq!(
        values,
        MPIImplementation::ALL.len(),
        "MPIImplementation::ALL lists every API value: {schema}"
    );
    for mpi in all() {
        let name = mpi.name();
        assert_eq!(of(mpi.api()).name(), name);
        let cases = mpi.cases();
        assert!(!cases.hostfile.is_empty(), "{name}: no hostfile cases");
        assert!(!cases.env.is_empty(), "{name}: no environment cases");
        assert!(!cases.diagnosis.is_empty(), "{name}: no diagnosis cases");
        for (host, slots, line) in cases.hostfile {
            assert_eq!(mpi.host_line(host, *slots), *line, "{name}");
        }
        let env = launcher_env(mpi, Launcher { slots: 4, ..USER }, &[]);
        for (var, value) in cases.env {
            assert_eq!(get(&env, var), Some(*value), "{name}: {var}");
        }
        for (log, cause) in cases.diagnosis {
            let found = diagnose(mpi, log);
            assert_eq!(found.as_ref().map(|f| f.cause), Some(*cause), "{name}: {log}");
            let line = found.map(|f| f.line).unwrap_or_default();
            assert!(
                log.lines().any(|l| l.trim() == line),
                "{name}: quotes a line of the log: {line}"
            );
        }
        for cause in [Cause::Daemon, Cause::Connection] {
            assert!(
                cases.diagnosis.iter().any(|(_, c)| *c == cause),
                "{name}: no {cause:?} case"
            );
        }
        assert!(!cases.program_failures.is_empty(), "{name}: no program failure");
        for log in cases.program_failures {
            assert_eq!(diagnose(mpi, log), None, "{name}: the program failed: {log}");
        }
    }
}

#[test]
fn every_variable_set_is_reserved_or_a_default() {
    for mpi in all() {
        let root = Launcher {
            may_be_root: true,
            ..USER
        };
        let own = [var("EPOCHS", "3")];
        for e in launcher_env(mpi, root, &own) {
            let default = mpi
                .root_defaults()
                .iter()
                .chain(NO_GPUS)
                .any(|(n, _)| *n == e.name);
            let forwarded = e.name == openmpi::ENV_LIST;
            assert!(
                is_reserved(&e.name) || default || forwarded,
                "{}: {} must be reserved",
                mpi.name(),
                e.name
            );
        }
    }
    assert!(is_reserved("HYDRA_LAUNCH_EXTRA_ARGS"));
    assert!(is_reserved(ROLE_ENV));
    assert!(!is_reserved("EPOCHS"));
}

#[test]
fn every_implementation_gets_the_same_ssh_options() {
    for mpi in all() {
        let env = launcher_env(mpi, USER, &[]);
        let with_args: Vec<&str> = env
            .iter()
            .filter_map(|e| e.value.as_deref())
            .filter(|v| v.contains("StrictHostKeyChecking=no"))
            .collect();
        assert!(!with_args.is_empty(), "{}: no ssh options", mpi.name());
        for value in with_args {
            assert_eq!(value, SSH_ARGS, "{}", mpi.name());
        }
    }
}

#[test]
fn open_mpi_as_root_is_allowed_unless_the_job_says_otherwise() {
    let open_mpi = of(MPIImplementation::OpenMPI);
    let root = Launcher {
        may_be_root: true,
        ..USER
    };
    let env = launcher_env(open_mpi, root, &[]);
    assert_eq!(get(&env, "OMPI_ALLOW_RUN_AS_ROOT"), Some("1"));
    assert_eq!(get(&env, "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"), Some("1"));
    let own = [var("OMPI_ALLOW_RUN_AS_ROOT", "0")];
    let env = launcher_env(open_mpi, root, &own);
    assert_eq!(
        get(&env, "OMPI_ALLOW_RUN_AS_ROOT"),
        None,
        "the job's own value stays"
    );
    assert_eq!(
        get(&launcher_env(open_mpi, USER, &[]), "OMPI_ALLOW_RUN_AS_ROOT"),
        None
    );
    let intel = launcher_env(of(MPIImplementation::Intel), root, &[]);
    assert_eq!(get(&intel, "OMPI_ALLOW_RUN_AS_ROOT"), None);
}

#[test]
fn a_launcher_without_ranks_gets_no_gpus_unless_asked() {
    let mpich = of(MPIImplementation::Mpich);
    assert_eq!(
        get(&launcher_env(mpich, USER, &[]), "NVIDIA_VISIBLE_DEVICES"),
        Some("")
    );
    let ranks = Launcher {
        runs_ranks: true,
        ..USER
    };
    assert_eq!(
        get(&launcher_env(mpich, ranks, &[]), "NVIDIA_VISIBLE_DEVICES"),
        None
    );
    let own = [var("NVIDIA_VISIBLE_DEVICES", "all")];
    assert_eq!(
        get(&launcher_env(mpich, USER, &own), "NVIDIA_VISIBLE_DEVICES"),
        None
    );
}

#[test]
fn open_mpi_forwards_the_jobs_variables_to_every_rank_and_hydra_needs_no_list() {
    let own = [
        var("EPOCHS", "3"),
        var("OMPI_MCA_btl", "tcp,self"),
        var(openmpi::ENV_LIST, "LD_LIBRARY_PATH;EPOCHS"),
        var("DATA", "/data"),
    ];
    let env = launcher_env(of(MPIImplementation::OpenMPI), USER, &own);
    assert_eq!(get(&env, openmpi::ENV_LIST), Some("LD_LIBRARY_PATH;EPOCHS;DATA"));
    let none = launcher_env(of(MPIImplementation::OpenMPI), USER, &[]);
    assert_eq!(get(&none, openmpi::ENV_LIST), None);
    let mpich = launcher_env(of(MPIImplementation::Mpich), USER, &own);
    assert_eq!(
        get(&mpich, openmpi::ENV_LIST),
        None,
        "Hydra forwards the environment itself"
    );
}

#[test]
fn a_rejected_key_wins_over_the_connection_it_closed_and_programs_are_not_blamed() {
    let open_mpi = of(MPIImplementation::OpenMPI);
    let log =
        "Connection closed by 10.244.0.5 port 2222\nmpiuser@pi-node-0-0: Permission denied (publickey).\n";
    assert_eq!(diagnose(open_mpi, log).map(|f| f.cause), Some(Cause::Key));
    for mpi in all() {
        assert_eq!(
            diagnose(mpi, "Traceback (most recent call last):\nValueError: bad input\n"),
            None
        );
        assert_eq!(diagnose(mpi, ""), None);
    }
}

#[test]
fn hydra_lines_are_not_read_into_an_open_mpi_log() {
    let line = "[proxy:0:0@pi-node-0-0] HYDU_sock_connect (lib/utils/sock.c:110): unable to get host address for pi-launcher-0-0 (1)";
    assert_eq!(diagnose(of(MPIImplementation::OpenMPI), line), None);
    assert_eq!(
        diagnose(of(MPIImplementation::Mpich), line).map(|f| f.cause),
        Some(Cause::Dns)
    );
}

#[test]
fn long_lines_are_cut() {
    let line = format!(
        "ssh: Could not resolve hostname {}: Name or service not known",
        "x".repeat(1000)
    );
    let found = diagnose(of(MPIImplementation::OpenMPI), &line).expect("found");
    assert!(
        found.line.chars().count() <= MAX_QUOTE + 1,
        "{}",
        found.line.len()
    );
    assert!(found.line.ends_with('…'));
}

#[test]
fn a_silent_worker_ends_its_ssh_session_within_a_minute_and_ssh_says_so() {
    // ORTE and PRRTE split the options at single spaces.
    let words: Vec<&str> = SSH_ARGS.split(' ').collect();
    assert!(words.iter().all(|w| !w.is_empty()), "{SSH_ARGS}");
    let option = |name: &str| {
        words
            .chunks(2)
            .find_map(|pair| match pair {
                ["-o", setting] => setting.strip_prefix(name)?.strip_prefix('='),
                _ => None,
            })
            .unwrap_or_else(|| panic!("{name} in {SSH_ARGS}"))
    };
    let interval: u32 = option("ServerAliveInterval").parse().expect("seconds");
    let count: u32 = option("ServerAliveCountMax").parse().expect("a count");
    // ssh gives up when the (count + 1)th question in a row goes unanswered.
    assert!(
        interval >= 5 && count >= 2,
        "a loaded node's sshd must have time to answer"
    );
    assert!(interval * (count + 1) <= 90, "{interval} s x {count}");
    // Later than kube-controller-manager's default --node-monitor-grace-period (50 s): a dead
    // node is reported as lost before mpirun gives up on it.
    assert!(interval * count > 50, "{interval} s x {count}");
    // The "Timeout, server HOST not responding." line is logged at INFO.
    assert_eq!(option("LogLevel"), "INFO");
}

#[test]
fn a_connection_that_broke_is_neither_a_failed_login_nor_a_daemon_that_never_started() {
    let open_mpi = of(MPIImplementation::OpenMPI);
    let cause = |mpi: &dyn Implementation, log: &str| diagnose(mpi, log).map(|f| f.cause);
    for (log, expected) in [
        // ssh's words for a session that broke, though they repeat a connect error's.
        (
            "Read from remote host pi-node-0-1.pi: Connection reset by peer",
            Cause::Connection,
        ),
        (
            "Connection to pi-node-0-1.pi closed by remote host.",
            Cause::Connection,
        ),
        // ... and those of a login that failed.
        ("Connection reset by 10.244.0.5 port 2222", Cause::Ssh),
        (
            "kex_exchange_identification: Connection closed by remote host",
            Cause::Ssh,
        ),
        (
            "ssh: connect to host pi-node-0-1.pi port 2222: Connection timed out",
            Cause::Ssh,
        ),
        // A rank's link that timed out is Open MPI's line, not ssh's "Connection timed out".
        (
            "[pi-node-0-0][[41386,1],0][btl_tcp_frag.c:241:mca_btl_tcp_frag_recv] mca_btl_tcp_frag_recv: readv failed: Connection timed out (110)",
            Cause::Connection,
        ),
        // A connection that never opened comes first: the rest follows from it.
        (
            "ssh: connect to host pi-node-0-2.pi port 2222: Connection refused\nTimeout, server pi-node-0-1.pi not responding.",
            Cause::Ssh,
        ),
        (
            "mpiuser@pi-node-0-1: Permission denied (publickey).\nTimeout, server pi-node-0-1.pi not responding.",
            Cause::Key,
        ),
        // A daemon that never started breaks no connection; one whose session broke is
        // reported as one that never started.
        (
            "bash: line 1: orted: command not found\nORTE was unable to reliably start one or more daemons.",
            Cause::Daemon,
        ),
        (
            "Timeout, server pi-node-0-1.pi not responding.\nORTE was unable to reliably start one or more daemons.",
            Cause::Connection,
        ),
    ] {
        assert_eq!(cause(open_mpi, log), Some(expected), "{log}");
    }
    // Open MPI's errno form is its own: another implementation's ssh line stays ssh's.
    let mpich = of(MPIImplementation::Mpich);
    assert_eq!(
        cause(
            mpich,
            "ssh: connect to host pi-node-0-1.pi port 2222: No route to host"
        ),
        Some(Cause::Ssh)
    );
}

#[test]
fn a_broken_connection_names_its_host() {
    for (line, host) in [
        ("Timeout, server pi-node-0-1.pi not responding.", "pi-node-0-1.pi"),
        (
            "Connection to pi-node-0-1.pi closed by remote host.",
            "pi-node-0-1.pi",
        ),
        (
            "Read from remote host pi-node-0-1.pi: Connection timed out",
            "pi-node-0-1.pi",
        ),
        (
            "Remote daemon: [[41386,0],1] on node pi-node-0-1.pi",
            "pi-node-0-1.pi",
        ),
        ("  target node:  pi-node-0-1.pi", "pi-node-0-1.pi"),
        ("Connection to 10.244.2.3 port 2222 timed out", "10.244.2.3"),
        (
            "[pi-node-0-0][[1,1],0][btl_tcp_frag.c:238:mca_btl_tcp_frag_recv] peer: pi-node-0-1 mca_btl_tcp_frag_recv: readv failed: Connection timed out (110)",
            "pi-node-0-1",
        ),
    ] {
        assert_eq!(peer(line), Some(host), "{line}");
    }
    for line in [
        "PRTE has lost communication with a remote daemon.",
        "HNP daemon   : [[41386,0],0] on node pi-launcher-0-0",
        "client_loop: send disconnect: Broken pipe",
        "Timeout, server  not responding.",
    ] {
        assert_eq!(peer(line), None, "{line}");
    }
}
