use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, PodDNSConfig, PodSecurityContext, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde_json::json;

use super::*;
use crate::fixtures::{job, plan};
use crate::plan::{PodIndex, Role};

fn build(role: Role, at: PodIndex) -> Pod {
    let j = job(json!({"trainer": {"numNodes": 4}}));
    let p = plan(&j, "mpi-openmpi");
    let rjob = p.job(role).expect("job").clone();
    pod(&j, &p, &rjob, at, 0)
}

fn node(pod: &Pod) -> &Container {
    pod.spec
        .as_ref()
        .expect("spec")
        .containers
        .iter()
        .find(|c| c.name == NODE)
        .expect("node container")
}

fn label<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    pod.metadata.labels.as_ref()?.get(key).map(String::as_str)
}

#[test]
fn worker_pod_has_stable_dns_identity_and_labels() {
    let pod = build(
        Role::Node,
        PodIndex {
            job_index: 0,
            index: 2,
        },
    );
    assert_eq!(pod.metadata.name.as_deref(), Some("pi-node-0-2"));
    assert_eq!(pod.metadata.namespace.as_deref(), Some("ns"));
    let spec = pod.spec.as_ref().expect("spec");
    assert_eq!(spec.hostname.as_deref(), Some("pi-node-0-2"));
    assert_eq!(spec.subdomain.as_deref(), Some("pi"));
    assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
    assert_eq!(spec.automount_service_account_token, Some(false));
    for (key, value) in [
        ("trainer.kubeflow.org/trainjob-name", "pi"),
        ("trainer.kubeflow.org/replicated-job", "node"),
        ("trainer.kubeflow.org/job-role", "node"),
        ("trainer.kubeflow.org/restart-attempt", "0"),
        ("jobset.sigs.k8s.io/jobset-name", "pi"),
        ("jobset.sigs.k8s.io/replicatedjob-name", "node"),
        ("jobset.sigs.k8s.io/job-index", "0"),
        ("batch.kubernetes.io/job-completion-index", "2"),
        ("app.kubernetes.io/managed-by", "trainjob-operator"),
    ] {
        assert_eq!(label(&pod, key), Some(value), "{key}");
    }
    assert_eq!(
        pod.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("sidecar.istio.io/inject"))
            .map(String::as_str),
        Some("false")
    );
    let owner = &pod.metadata.owner_references.as_ref().expect("owner")[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str(), owner.controller),
        ("TrainJob", "pi", Some(true))
    );
}

#[test]
fn worker_gets_ssh_keys_but_no_hostfile() {
    let pod = build(
        Role::Node,
        PodIndex {
            job_index: 0,
            index: 0,
        },
    );
    let spec = pod.spec.as_ref().expect("spec");
    let volumes = spec.volumes.as_ref().expect("volumes");
    assert_eq!(
        volumes.iter().map(|v| v.name.as_str()).collect::<Vec<_>>(),
        [SSH_VOLUME]
    );
    let secret = volumes[0].secret.as_ref().expect("secret volume");
    assert_eq!(secret.secret_name.as_deref(), Some("pi-mpi-ssh-auth"));
    assert_eq!(secret.default_mode, Some(0o400));
    let items = secret.items.as_ref().expect("items");
    let paths: Vec<_> = items.iter().map(|i| (i.key.as_str(), i.path.as_str())).collect();
    assert_eq!(
        paths,
        [
            ("ssh-privatekey", "id_rsa"),
            ("ssh-publickey", "id_rsa.pub"),
            ("ssh-publickey", "authorized_keys")
        ]
    );
    // The shipped runtime runs as uid 1000: group-readable through fsGroup, never world-readable.
    assert!(items.iter().all(|i| i.mode == Some(0o640)));
    assert_eq!(
        spec.security_context.as_ref().and_then(|s| s.fs_group),
        Some(1000)
    );
    let c = node(&pod);
    let mounts: Vec<_> = c
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| (m.name.as_str(), m.mount_path.as_str()))
        .collect();
    assert_eq!(mounts, [(SSH_VOLUME, "/home/mpiuser/.ssh")]);
    let env: Vec<_> = c
        .env
        .iter()
        .flatten()
        .map(|e| (e.name.as_str(), e.value.as_deref()))
        .collect();
    assert_eq!(env, [("K_MPI_JOB_ROLE", Some("worker"))]);
}

/// The worker pod of the shipped Open MPI runtime after `edit` of its pod spec.
fn worker_with(edit: impl Fn(&mut k8s_openapi::api::core::v1::PodSpec)) -> Pod {
    let j = job(json!({}));
    let mut p = plan(&j, "mpi-openmpi");
    let rjob = &mut p.jobs[0];
    edit(rjob.template.spec.as_mut().expect("spec"));
    let rjob = rjob.clone();
    pod(
        &j,
        &p,
        &rjob,
        PodIndex {
            job_index: 0,
            index: 0,
        },
        0,
    )
}

#[test]
fn root_and_unnamed_users_get_a_private_copy_made_by_an_init_container() {
    for user in [Some(0), None] {
        let pod = worker_with(|spec| {
            spec.security_context = Some(PodSecurityContext {
                fs_group: Some(2000),
                ..Default::default()
            });
            spec.containers[0].security_context = Some(k8s_openapi::api::core::v1::SecurityContext {
                run_as_user: user,
                run_as_non_root: user.map(|_| false),
                ..Default::default()
            });
            spec.containers[0].resources = Some(ResourceRequirements {
                limits: Some(BTreeMap::from([
                    ("cpu".into(), Quantity("2".into())),
                    ("nvidia.com/gpu".into(), Quantity("8".into())),
                ])),
                ..Default::default()
            });
        });
        let spec = pod.spec.as_ref().expect("spec");
        let volumes = spec.volumes.as_ref().expect("volumes");
        let secret = volumes
            .iter()
            .find(|v| v.name == SSH_VOLUME)
            .and_then(|v| v.secret.as_ref())
            .expect("secret volume");
        // Readable by whoever the user turns out to be, but mounted only in the init container.
        assert!(secret.items.iter().flatten().all(|i| i.mode == Some(0o444)));
        let copy = volumes
            .iter()
            .find(|v| v.name == SSH_COPY_VOLUME)
            .and_then(|v| v.empty_dir.as_ref())
            .expect("in-memory copy");
        assert_eq!(copy.medium.as_deref(), Some("Memory"));
        let init = &spec.init_containers.as_ref().expect("init containers")[0];
        assert_eq!(init.name, SSH_INIT);
        assert_eq!(
            init.image,
            node(&pod).image,
            "the image the user runs, with its shell"
        );
        assert_eq!(
            init.security_context,
            node(&pod).security_context,
            "as the same user"
        );
        let limits = init
            .resources
            .as_ref()
            .and_then(|r| r.limits.clone())
            .expect("limits");
        assert_eq!(
            limits.keys().collect::<Vec<_>>(),
            ["cpu"],
            "CPU and memory only, no GPUs"
        );
        let script = init.command.as_ref().expect("command").join(" ");
        assert!(
            script.contains("umask 077") && script.contains("chmod 0700"),
            "{script}"
        );
        let mounts: Vec<_> = node(&pod)
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| (m.name.as_str(), m.mount_path.as_str(), m.read_only))
            .collect();
        assert_eq!(mounts, [(SSH_COPY_VOLUME, "/home/mpiuser/.ssh", Some(true))]);
        // The runtime's fsGroup is the user's business: left alone.
        let ctx = spec.security_context.as_ref().expect("context");
        assert_eq!(
            (ctx.fs_group, ctx.fs_group_change_policy.as_deref()),
            (Some(2000), None)
        );
    }
}

#[test]
fn an_injected_fs_group_does_not_rechown_volumes_on_every_start() {
    let pod = worker_with(|spec| spec.security_context = None);
    let ctx = pod
        .spec
        .as_ref()
        .and_then(|s| s.security_context.clone())
        .expect("context");
    assert_eq!(ctx.fs_group, Some(1000), "the container's runAsGroup");
    assert_eq!(ctx.fs_group_change_policy.as_deref(), Some("OnRootMismatch"));
    assert!(
        pod.spec
            .as_ref()
            .and_then(|s| s.init_containers.as_ref())
            .is_none()
    );
}

#[test]
fn mpi_pods_search_the_service_domain_so_bare_hostnames_resolve() {
    let worker = worker_with(|spec| {
        spec.dns_config = Some(PodDNSConfig {
            searches: Some(vec!["corp.example".into()]),
            ..Default::default()
        });
    });
    let spec = worker.spec.as_ref().expect("spec");
    let searches = spec.dns_config.as_ref().and_then(|d| d.searches.clone());
    assert_eq!(
        searches.expect("searches"),
        ["corp.example", "pi.ns.svc.cluster.local"]
    );
    assert_eq!(spec.dns_policy, None);

    let j = job(json!({}));
    let mut p = plan(&j, "mpi-openmpi");
    p.cluster.domain = "corp.internal".into();
    let launcher = p.job(Role::Launcher).expect("launcher").clone();
    let built = pod(
        &j,
        &p,
        &launcher,
        PodIndex {
            job_index: 0,
            index: 0,
        },
        0,
    );
    let searches = built.spec.and_then(|s| s.dns_config).and_then(|d| d.searches);
    assert_eq!(searches.expect("searches"), ["pi.ns.svc.corp.internal"]);
}

#[test]
fn host_network_pods_keep_cluster_dns() {
    let pod = worker_with(|spec| spec.host_network = Some(true));
    assert_eq!(
        pod.spec.and_then(|s| s.dns_policy).as_deref(),
        Some("ClusterFirstWithHostNet")
    );
    let pod = worker_with(|spec| {
        spec.host_network = Some(true);
        spec.dns_policy = Some("Default".into());
    });
    assert_eq!(pod.spec.and_then(|s| s.dns_policy).as_deref(), Some("Default"));
}

#[test]
fn launcher_gets_hostfile_and_mpi_environment() {
    let pod = build(
        Role::Launcher,
        PodIndex {
            job_index: 0,
            index: 0,
        },
    );
    assert_eq!(pod.metadata.name.as_deref(), Some("pi-launcher-0-0"));
    assert_eq!(label(&pod, "trainer.kubeflow.org/job-role"), Some("launcher"));
    assert_eq!(
        label(&pod, "trainer.kubeflow.org/trainjob-ancestor-step"),
        Some("trainer")
    );
    let spec = pod.spec.as_ref().expect("spec");
    let hostfile = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == HOSTFILE_VOLUME)
        .expect("hostfile volume");
    assert_eq!(
        hostfile.config_map.as_ref().map(|c| c.name.as_str()),
        Some("pi-mpi-hostfile")
    );
    let c = node(&pod);
    let mounts: Vec<_> = c
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| (m.name.as_str(), m.mount_path.as_str()))
        .collect();
    assert_eq!(
        mounts,
        [(SSH_VOLUME, "/home/mpiuser/.ssh"), (HOSTFILE_VOLUME, "/etc/mpi")]
    );
    let env = c.env.as_ref().expect("env");
    let get = |n: &str| env.iter().find(|e| e.name == n).and_then(|e| e.value.as_deref());
    assert_eq!(get("OMPI_MCA_orte_default_hostfile"), Some("/etc/mpi/hostfile"));
    assert_eq!(get("OMPI_MCA_orte_set_default_slots"), Some("1"));
    assert_eq!(get("PRTE_MCA_prte_default_hostfile"), Some("/etc/mpi/hostfile"));
    assert_eq!(get("K_MPI_JOB_ROLE"), Some("launcher"));
    // uid 1000 named by the runtime: no root permission needed; no ranks, so no GPUs.
    assert_eq!(get("OMPI_ALLOW_RUN_AS_ROOT"), None);
    assert_eq!(get("NVIDIA_VISIBLE_DEVICES"), Some(""));
}

#[test]
fn service_is_headless_and_publishes_unready_pods() {
    let j = job(json!({}));
    let svc = service(&j, &plan(&j, "mpi-openmpi"));
    assert_eq!(svc.metadata.name.as_deref(), Some("pi"));
    let spec = svc.spec.expect("spec");
    assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
    assert_eq!(spec.publish_not_ready_addresses, Some(true));
    assert_eq!(
        spec.selector
            .and_then(|s| s.get("trainer.kubeflow.org/trainjob-name").cloned())
            .as_deref(),
        Some("pi")
    );
}

#[test]
fn with_a_native_gang_only_workers_name_the_pod_group() {
    let j = job(json!({"trainer": {"numNodes": 3}}));
    let mut p = plan(&j, "mpi-openmpi");
    p.gang = Some(crate::api::PodGroupPolicy {
        workload: Some(Default::default()),
        ..Default::default()
    });
    let at = PodIndex {
        job_index: 0,
        index: 0,
    };
    let group = |role: Role| {
        let rjob = p.job(role).expect("job").clone();
        pod(&j, &p, &rjob, at, 0)
            .spec
            .and_then(|s| s.scheduling_group)
            .and_then(|g| g.pod_group_name)
    };
    assert_eq!(group(Role::Node).as_deref(), Some("pi"));
    assert_eq!(group(Role::Launcher), None, "created after the workers are Ready");
    let launcher = pod(&j, &p, p.job(Role::Launcher).expect("launcher"), at, 0);
    let inits = launcher.spec.and_then(|s| s.init_containers).unwrap_or_default();
    assert!(
        inits.iter().all(|c| c.name != WORKERS_INIT),
        "its workers are Ready already"
    );
}

#[test]
fn a_launcher_that_runs_ranks_is_in_the_gang_and_waits_for_the_workers_sshd() {
    let j = job(json!({"trainer": {"numNodes": 3}}));
    let p = crate::fixtures::plan_with(&j, "mpi-openmpi", crate::fixtures::launcher_in_native_gang);
    let at = PodIndex {
        job_index: 0,
        index: 0,
    };
    let launcher = pod(&j, &p, p.job(Role::Launcher).expect("launcher"), at, 0);
    let spec = launcher.spec.expect("spec");
    let group = spec.scheduling_group.and_then(|g| g.pod_group_name);
    assert_eq!(group.as_deref(), Some("pi"));
    let main = spec.containers.iter().find(|c| c.name == NODE).expect("node");
    let inits = spec.init_containers.unwrap_or_default();
    let wait = inits
        .iter()
        .find(|c| c.name == WORKERS_INIT)
        .expect("wait for the workers");
    // The same image, user and SSH files as mpirun, so that the check is the real thing.
    assert_eq!(wait.image, main.image);
    assert_eq!(wait.security_context, main.security_context);
    let mounts = |c: &Container| {
        c.volume_mounts
            .iter()
            .flatten()
            .filter(|m| m.mount_path == p.ssh_mount_path)
            .map(|m| m.name.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(mounts(wait), mounts(main));
    let script = wait.command.as_ref().expect("command").join(" ");
    assert!(
        script.contains("for host in pi-node-0-0 pi-node-0-1; do"),
        "{script}"
    );
    assert!(script.contains("ssh -o BatchMode=yes"), "{script}");
    assert!(script.contains("\"$host\" true"), "{script}");
    assert!(
        script.contains("+ 600 ))"),
        "a gang may still be starting: {script}"
    );
    assert!(
        script.contains("*'Permission denied'*|*'Host key verification failed'*) break"),
        "sshd answered: mpirun says what is wrong: {script}"
    );
    assert_eq!(
        inits.last().map(|c| c.name.as_str()),
        Some(WORKERS_INIT),
        "after the key copy, so that ssh finds the keys"
    );
}

#[test]
fn behind_a_network_policy_the_launcher_waits_until_ssh_reaches_every_worker() {
    let j = job(json!({"trainer": {"numNodes": 2}}));
    let mut p = plan(&j, "mpi-openmpi");
    let at = PodIndex {
        job_index: 0,
        index: 0,
    };
    let waits = |p: &Plan| {
        let launcher = pod(&j, p, p.job(Role::Launcher).expect("launcher"), at, 0);
        let inits = launcher.spec.and_then(|s| s.init_containers).unwrap_or_default();
        inits
            .iter()
            .find(|c| c.name == WORKERS_INIT)
            .map(|c| c.command.clone().unwrap_or_default().join(" "))
    };
    assert_eq!(
        waits(&p),
        None,
        "no policy: the Ready workers are reachable at once"
    );
    p.cluster.network_policies = true;
    let script = waits(&p).expect("waits behind the policy");
    assert!(
        script.contains("for host in pi-node-0-0 pi-node-0-1; do"),
        "{script}"
    );
    assert!(
        script.contains("+ 60 ))"),
        "a short wait: the workers are Ready already: {script}"
    );
}

#[test]
fn hydra_launchers_wait_until_their_own_name_resolves() {
    let launcher_of = |runtime: &str| {
        let j = job(json!({"runtimeRef": {"name": runtime}, "trainer": {"numNodes": 2}}));
        let p = plan(&j, runtime);
        let rjob = p.job(Role::Launcher).expect("launcher").clone();
        pod(
            &j,
            &p,
            &rjob,
            PodIndex {
                job_index: 0,
                index: 0,
            },
            0,
        )
    };
    for runtime in ["mpi-intel", "mpi-mpich"] {
        let pod = launcher_of(runtime);
        let inits = pod.spec.and_then(|s| s.init_containers).unwrap_or_default();
        let wait = inits.iter().find(|c| c.name == DNS_INIT).expect("DNS wait");
        let script = wait.command.as_ref().expect("command").join(" ");
        assert!(
            script.contains("getent hosts pi-launcher-0-0.pi.ns.svc.cluster.local. "),
            "{script}"
        );
    }
    let open_mpi = launcher_of("mpi-openmpi");
    assert!(
        open_mpi.spec.and_then(|s| s.init_containers).is_none(),
        "Open MPI connects back by IP"
    );
}
