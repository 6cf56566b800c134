//! Events on TrainJobs, written through core/v1 with both the old fields (`firstTimestamp`,
//! `lastTimestamp`, `count`, `source`) and the new ones (`eventTime`, `reportingController`).
//!
//! kube's own recorder writes `events.k8s.io/v1`, where the API server refuses the old fields, so
//! the core/v1 view of its Events has no `firstTimestamp`, and readers that need it skip them.
//! The Kubeflow SDK's `get_job_events` is one (upstream's controller-runtime recorder writes
//! core/v1 with every old field), so a drop-in user would see the kubelet's Events of their pods
//! and none of the job's.

use std::collections::HashMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio::sync::Mutex;

/// How long a repeat of the same Event counts towards the first one's series (as client-go).
const SERIES_WINDOW: Duration = Duration::from_secs(6 * 60);

/// What is recorded: a reason, a note and whether it is a warning.
pub struct Note<'a> {
    pub warning: bool,
    pub reason: &'a str,
    /// At most 1 KiB (the API server's limit); cut by the caller.
    pub note: &'a str,
}

/// Publishes Events as `controller` (`instance`: this replica); a repeat of an Event within
/// minutes counts up the first one, as client-go's recorder does.
pub struct Recorder {
    client: Client,
    controller: String,
    instance: String,
    /// The Events published within the series window, by (uid, reason, note).
    recent: Mutex<HashMap<(String, String, String), Recent>>,
}

#[derive(Clone)]
struct Recent {
    name: String,
    count: i32,
    last: Timestamp,
}

impl Recorder {
    pub fn new(client: Client, controller: &str, instance: &str) -> Recorder {
        Recorder {
            client,
            controller: controller.into(),
            instance: instance.into(),
            recent: Mutex::default(),
        }
    }

    /// Records `note` on `regarding`: a new Event, or one more of the same Event.
    pub async fn publish(&self, note: &Note<'_>, regarding: &ObjectReference) -> Result<(), kube::Error> {
        let now = Timestamp::now();
        let namespace = regarding.namespace.clone().unwrap_or_else(|| "default".into());
        let key = (
            regarding.uid.clone().unwrap_or_default(),
            note.reason.to_string(),
            note.note.to_string(),
        );
        let mut recent = self.recent.lock().await;
        recent.retain(|_, r| now.duration_since(r.last).unsigned_abs() < SERIES_WINDOW);
        let events = Api::<Event>::namespaced(self.client.clone(), &namespace);
        if let Some(seen) = recent.get_mut(&key) {
            seen.count += 1;
            seen.last = now;
            let patch = json!({"count": seen.count, "lastTimestamp": Time(now)});
            let seen = seen.clone();
            drop(recent);
            events
                .patch(&seen.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            return Ok(());
        }
        let name = format!(
            "{}.{:x}",
            regarding.name.as_deref().unwrap_or(&self.controller),
            now.as_nanosecond()
        );
        let event = Event {
            metadata: ObjectMeta {
                name: Some(name),
                namespace: Some(namespace),
                ..ObjectMeta::default()
            },
            involved_object: regarding.clone(),
            action: Some("Reconcile".into()),
            reason: Some(note.reason.into()),
            message: Some(note.note.into()),
            type_: Some(if note.warning { "Warning" } else { "Normal" }.into()),
            event_time: Some(MicroTime(now)),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            count: Some(1),
            source: Some(EventSource {
                component: Some(self.controller.clone()),
                host: None,
            }),
            reporting_component: Some(self.controller.clone()),
            reporting_instance: Some(self.instance.clone()),
            ..Event::default()
        };
        drop(recent);
        let created = events.create(&PostParams::default(), &event).await?;
        self.recent.lock().await.insert(
            key,
            Recent {
                name: created.name_any(),
                count: 1,
                last: now,
            },
        );
        Ok(())
    }
}
