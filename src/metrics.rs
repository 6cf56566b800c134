//! Prometheus metrics, served as OpenMetrics text on `/metrics`. Every family is in the metrics
//! reference (docs/admin-guide.md), and tests/docs.rs fails when one is missing there.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

use crate::lifecycle::Phase;

/// Labels of per-job counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobLabels {
    /// Namespace of the TrainJob.
    pub namespace: String,
    /// Referenced runtime name.
    pub runtime: String,
}

/// Labels of the failure and stall counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// Namespace of the TrainJob.
    pub namespace: String,
    /// Referenced runtime name.
    pub runtime: String,
    /// The `Failed` (or `Stalled`) condition reason: one of the fixed set in `reasons`.
    pub reason: String,
}

/// Labels of the active-jobs gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    /// Phase name.
    pub phase: String,
}

/// Labels of the reconcile error counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// Error kind.
    pub error: String,
}

/// Labels of the admission counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AdmissionLabels {
    /// Kind of the object (TrainJob, TrainingRuntime, ClusterTrainingRuntime).
    pub kind: String,
    /// CREATE, UPDATE or DELETE.
    pub operation: String,
    /// `true` or `false`.
    pub allowed: String,
}

/// Labels of the progress report counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `accepted`, or why a report was refused: `unauthenticated`, `forbidden`, `rate_limited`,
    /// `too_large`, `malformed`, `invalid`, `not_found`, `error`.
    pub result: String,
}

/// Every metric the operator exports.
pub struct Metrics {
    registry: Registry,
    /// TrainJobs taken on (runtime resolved and frozen).
    pub jobs_created: Family<JobLabels, Counter>,
    /// TrainJobs that completed.
    pub jobs_completed: Family<JobLabels, Counter>,
    /// TrainJobs that failed.
    pub jobs_failed: Family<ReasonLabels, Counter>,
    /// Times TrainJobs became stalled, by reason.
    pub jobs_stalled: Family<ReasonLabels, Counter>,
    active: Family<PhaseLabels, Gauge>,
    /// Reconcile durations.
    pub reconcile_duration: Histogram,
    /// Reconcile errors by kind.
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    /// Seconds from creation until every worker pod was created.
    pub time_to_pods_created: Histogram,
    /// Seconds from creation until the launcher was created.
    pub time_to_launcher_created: Histogram,
    /// Seconds from creation until `Complete`.
    pub time_to_complete: Histogram,
    /// Seconds a native gang waited until every worker was scheduled.
    pub time_to_gang_scheduled: Histogram,
    /// Admission reviews answered, by kind, operation and verdict.
    pub admission_reviews: Family<AdmissionLabels, Counter>,
    /// Progress reports the status server answered, by result.
    pub progress_reports: Family<ResultLabels, Counter>,
    /// 1 while this process reconciles (it leads, or runs without leader election), else 0.
    pub leader: Gauge,
    /// Times this process became the leader.
    pub leader_transitions: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every metric under the `trainjob` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("trainjob");
        let jobs_created = Family::default();
        let jobs_completed = Family::default();
        let jobs_failed = Family::default();
        let active = Family::default();
        let jobs_stalled = Family::default();
        let reconcile_errors = Family::default();
        let reconcile_duration = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        let seconds = || Histogram::new(exponential_buckets(0.5, 2.0, 14));
        let (time_to_pods_created, time_to_launcher_created, time_to_complete, time_to_gang_scheduled) =
            (seconds(), seconds(), seconds(), seconds());
        registry.register(
            "jobs_created",
            "TrainJobs the operator took on",
            jobs_created.clone(),
        );
        registry.register(
            "jobs_completed",
            "TrainJobs that completed",
            jobs_completed.clone(),
        );
        registry.register(
            "jobs_failed",
            "TrainJobs that failed, by reason",
            jobs_failed.clone(),
        );
        registry.register(
            "jobs_stalled",
            "Times TrainJobs became stalled (their pods held up), by reason",
            jobs_stalled.clone(),
        );
        registry.register(
            "jobs_active",
            "TrainJobs not yet finished, by phase",
            active.clone(),
        );
        registry.register_with_unit(
            "reconcile_duration",
            "Time spent in one reconcile",
            Unit::Seconds,
            reconcile_duration.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Reconciles that failed, by error",
            reconcile_errors.clone(),
        );
        registry.register_with_unit(
            "pods_created_after",
            "Time from TrainJob creation until all worker pods were created",
            Unit::Seconds,
            time_to_pods_created.clone(),
        );
        registry.register_with_unit(
            "launcher_created_after",
            "Time from TrainJob creation until the launcher pod was created",
            Unit::Seconds,
            time_to_launcher_created.clone(),
        );
        registry.register_with_unit(
            "gang_scheduled_after",
            "Time a native gang waited until every worker was scheduled",
            Unit::Seconds,
            time_to_gang_scheduled.clone(),
        );
        registry.register_with_unit(
            "completed_after",
            "Time from TrainJob creation until it completed",
            Unit::Seconds,
            time_to_complete.clone(),
        );
        let admission_reviews = Family::default();
        registry.register(
            "admission_reviews",
            "Admission reviews the webhook answered, by kind, operation and whether it allowed them",
            admission_reviews.clone(),
        );
        let progress_reports = Family::default();
        registry.register(
            "progress_reports",
            "Progress reports the status server answered, by result (accepted, or why it refused one)",
            progress_reports.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica reconciles (it holds the leader Lease, or leader election is off)",
            leader.clone(),
        );
        let leader_transitions = Counter::default();
        registry.register(
            "leader_transitions",
            "Times this replica became the leader",
            leader_transitions.clone(),
        );
        registry.register(
            "build",
            "The operator's version",
            Info::new(vec![("version".to_string(), crate::VERSION.to_string())]),
        );
        Metrics {
            registry,
            admission_reviews,
            progress_reports,
            leader,
            leader_transitions,
            jobs_created,
            jobs_completed,
            jobs_failed,
            jobs_stalled,
            active,
            reconcile_duration,
            reconcile_errors,
            time_to_pods_created,
            time_to_launcher_created,
            time_to_complete,
            time_to_gang_scheduled,
        }
    }

    /// Moves a job from `old` to `new` in the active gauge (`None`: not counted). The
    /// controller's per-job memory holds each job's phase and calls this on every change.
    pub fn phase_changed(&self, old: Option<Phase>, new: Option<Phase>) {
        if old == new {
            return;
        }
        let gauge = |phase: Phase| {
            self.active.get_or_create(&PhaseLabels {
                phase: phase.as_str().into(),
            })
        };
        if let Some(old) = old {
            gauge(old).dec();
        }
        if let Some(new) = new {
            gauge(new).inc();
        }
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Encoding into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// The Prometheus text format 0.0.4, for scrapers that do not ask for OpenMetrics.
    pub fn encode_prometheus(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_active_gauge_moves_jobs_between_phases() {
        let m = Metrics::new();
        m.phase_changed(None, Some(Phase::Starting));
        m.phase_changed(None, Some(Phase::Starting));
        m.phase_changed(Some(Phase::Starting), Some(Phase::Running));
        m.phase_changed(Some(Phase::Starting), None);
        let text = m.encode();
        assert!(
            text.contains("trainjob_jobs_active{phase=\"running\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("trainjob_jobs_active{phase=\"starting\"} 0"),
            "{text}"
        );
    }

    #[test]
    fn counters_are_exposed_with_total_suffix_and_labels() {
        let m = Metrics::new();
        let labels = JobLabels {
            namespace: "ns".into(),
            runtime: "mpi-openmpi".into(),
        };
        m.jobs_created.get_or_create(&labels).inc();
        m.jobs_failed
            .get_or_create(&ReasonLabels {
                namespace: "ns".into(),
                runtime: "mpi-openmpi".into(),
                reason: "FailedJobs".into(),
            })
            .inc();
        let text = m.encode();
        assert!(
            text.contains("trainjob_jobs_created_total{namespace=\"ns\",runtime=\"mpi-openmpi\"} 1"),
            "{text}"
        );
        assert!(text.contains("reason=\"FailedJobs\"} 1"), "{text}");
        assert!(
            text.contains("# TYPE trainjob_reconcile_duration_seconds histogram"),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "trainjob_build_info{{version=\"{}\"}} 1",
                crate::VERSION
            )),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
    }
}
