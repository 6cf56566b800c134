//! Every condition type, condition reason and Event reason the operator writes, in one place, so
//! that users, alerts and tests can rely on a fixed vocabulary. Names follow Kubeflow Trainer
//! where it has one.

/// Condition types on `status.conditions` (as upstream).
pub mod condition {
    /// The job is suspended (True) or was resumed (False).
    pub const SUSPENDED: &str = "Suspended";
    /// The job finished successfully.
    pub const COMPLETE: &str = "Complete";
    /// The job failed; terminal.
    pub const FAILED: &str = "Failed";
    /// Our extension, for a native gang: every worker is scheduled (True) or not yet (False,
    /// with how far it got and the scheduler's reason).
    pub const GANG_SCHEDULED: &str = "GangScheduled";
    /// Our extension, in the kstatus sense: something keeps the job's pods from running (True,
    /// with the reason and what to change), or no longer does (False, `Recovered`). Absent on a
    /// job that was never held up.
    pub const STALLED: &str = "Stalled";
}

/// Reason of `Suspended=True`; also its Event.
pub const SUSPENDED: &str = "Suspended";
/// Reason of `Suspended=False`; also its Event.
pub const RESUMED: &str = "Resumed";
/// Reason of `Complete=True`.
pub const ALL_JOBS_COMPLETED: &str = "AllJobsCompleted";
/// `Failed`: a pod failed and no restarts were allowed.
pub const FAILED_JOBS: &str = "FailedJobs";
/// `Failed`: a pod failed after every allowed restart was used.
pub const REACHED_MAX_RESTARTS: &str = "ReachedMaxRestarts";
/// `Failed`: `activeDeadlineSeconds` passed.
pub const DEADLINE_EXCEEDED: &str = "DeadlineExceeded";
/// `Failed`: the referenced runtime does not exist (or is of an unsupported kind).
pub const RUNTIME_NOT_FOUND: &str = "RuntimeNotFound";
/// `Failed`: the runtime is not an MPI runtime.
pub const RUNTIME_NOT_SUPPORTED: &str = "TrainingRuntimeNotSupported";
/// `Failed`: the runtime lacks what MPI needs (launcher, node job, containers, dependencies).
pub const INVALID_RUNTIME: &str = "InvalidRuntime";
/// `Failed`: the TrainJob's own fields are wrong (reserved env, bad runtime patches).
pub const INVALID_SPEC: &str = "InvalidSpec";
/// `Failed`: the job needs more pods than the operator allows per job.
pub const TOO_MANY_PODS: &str = "TooManyPods";
/// `Failed`: a pod name (and so its hostname) would exceed 63 characters.
pub const NAME_TOO_LONG: &str = "NameTooLong";
/// `Failed`: an object the job needs exists but belongs to someone else.
pub const OBJECT_CONFLICT: &str = "ObjectConflict";
/// `Failed`: the API server refused an object the job needs as invalid.
pub const OBJECT_REJECTED: &str = "ObjectRejected";
/// `Failed`: the runtime asks for native gang scheduling, which the cluster does not serve.
pub const GANG_UNAVAILABLE: &str = "GangSchedulingUnavailable";
/// `GangScheduled=True`; also its Event.
pub const GANG_SCHEDULED: &str = "GangScheduled";
/// `GangScheduled=False`; also its Event.
pub const WAITING_FOR_GANG: &str = "WaitingForGang";
/// `Failed`: the gang was not scheduled within the runtime's `scheduleTimeoutSeconds`.
pub const GANG_SCHEDULING_TIMEOUT: &str = "GangSchedulingTimeout";
/// `Failed`: the whole job does not fit in the namespace's ResourceQuotas; no pod was created.
pub const QUOTA_EXCEEDED: &str = "QuotaExceeded";
/// `Failed`: the job's SSH Secret was deleted while its pods ran: they hold a key no new pod
/// could be given, so the operator does not make another.
pub const SECRET_DELETED: &str = "SSHSecretDeleted";
/// `Failed`: the job's frozen runtime (`<job>-runtime-snapshot`) was edited into something unreadable.
pub const SNAPSHOT_UNREADABLE: &str = "RuntimeSnapshotUnreadable";

/// `Stalled`, and `Failed` at once: a container's image reference is not a valid name.
pub const INVALID_IMAGE_NAME: &str = "InvalidImageName";
/// `Stalled`, and `Failed` after `--stall-timeout`: an image cannot be pulled.
pub const IMAGE_PULL_BACK_OFF: &str = "ImagePullBackOff";
/// `Stalled`, and `Failed` after `--stall-timeout`: a container cannot be created (a missing
/// Secret, ConfigMap or key).
pub const CONTAINER_CONFIG_ERROR: &str = "CreateContainerConfigError";
/// `Stalled`, and `Failed` after `--stall-timeout`: a container (a sidecar) keeps crashing.
pub const CRASH_LOOP_BACK_OFF: &str = "CrashLoopBackOff";
/// `Stalled`: the scheduler finds no node for a pod (no native gang).
pub const UNSCHEDULABLE: &str = "Unschedulable";
/// `Stalled`: a pod waits for a PersistentVolumeClaim that is missing or not bound.
pub const VOLUME_CLAIM_NOT_BOUND: &str = "VolumeClaimNotBound";
/// `Stalled=False`: what held the job up is gone; also its Event.
pub const RECOVERED: &str = "Recovered";

/// Reasons of Events that are not condition reasons.
pub mod event {
    /// The runtime was frozen into the job's snapshot.
    pub const RUNTIME_FROZEN: &str = "RuntimeFrozen";
    /// Pods other than the launcher were created.
    pub const PODS_CREATED: &str = "PodsCreated";
    /// The launcher was created (with or after the workers).
    pub const LAUNCHER_CREATED: &str = "LauncherCreated";
    /// A pod failed and the whole gang restarts.
    pub const RESTARTING: &str = "Restarting";
    /// The job completed.
    pub const COMPLETED: &str = "Completed";
    /// Pods carry the job's labels but are not its own; they are ignored.
    pub const FOREIGN_PODS: &str = "ForeignPods";
}
