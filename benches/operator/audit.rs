//! API writes counted from the API server's audit log: every create, update, patch and delete
//! the operator's identity sent into one namespace, by verb and resource.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Client;
use kube::api::{Api, PostParams};
use serde::Deserialize;

#[derive(Deserialize)]
struct Entry {
    stage: String,
    verb: String,
    user: User,
    #[serde(rename = "objectRef")]
    object: Option<ObjectRef>,
}

#[derive(Deserialize)]
struct User {
    username: String,
}

#[derive(Deserialize)]
struct ObjectRef {
    resource: Option<String>,
    subresource: Option<String>,
    namespace: Option<String>,
    name: Option<String>,
}

/// A position in the audit log, taken before a scenario.
pub struct Mark {
    path: PathBuf,
    offset: u64,
}

impl Mark {
    /// The log as far as it is written now.
    pub fn now(path: PathBuf) -> Mark {
        let offset = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        Mark { path, offset }
    }

    /// Writes by `user` into `ns` since the mark, by `verb resource[/subresource]`. First
    /// writes a marker object as `writer` (the same user) and reads until the log shows it, so
    /// every earlier write has been flushed.
    pub async fn writes_since(&self, writer: &Client, user: &str, ns: &str) -> BTreeMap<String, u64> {
        static MARKERS: AtomicU32 = AtomicU32::new(0);
        let marker = format!(
            "bench-audit-marker-{}-{}",
            std::process::id(),
            MARKERS.fetch_add(1, Ordering::Relaxed)
        );
        let cm = ConfigMap {
            metadata: kube::api::ObjectMeta {
                name: Some(marker.clone()),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<ConfigMap>::namespaced(writer.clone(), ns)
            .create(&PostParams::default(), &cm)
            .await
            .expect("creating the audit marker");
        let marker_name = marker;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (writes, marked) = self.read(user, ns, &marker_name);
            if marked {
                return writes;
            }
            assert!(
                Instant::now() < deadline,
                "the audit log never showed {marker_name}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn read(&self, user: &str, ns: &str, marker: &str) -> (BTreeMap<String, u64>, bool) {
        let mut writes = BTreeMap::new();
        let mut marked = false;
        let Ok(mut file) = std::fs::File::open(&self.path) else {
            return (writes, false);
        };
        if file.seek(SeekFrom::Start(self.offset)).is_err() {
            return (writes, false);
        }
        for line in BufReader::new(file).lines().map_while(Result::ok) {
            let Ok(entry) = serde_json::from_str::<Entry>(&line) else {
                continue;
            };
            let Some(object) = entry.object else { continue };
            if entry.stage != "ResponseComplete"
                || entry.user.username != user
                || object.namespace.as_deref() != Some(ns)
                || !matches!(
                    entry.verb.as_str(),
                    "create" | "update" | "patch" | "delete" | "deletecollection"
                )
            {
                continue;
            }
            if object.name.as_deref() == Some(marker) {
                marked = true;
                continue;
            }
            let resource = match object.subresource {
                Some(sub) => format!("{}/{sub}", object.resource.unwrap_or_default()),
                None => object.resource.unwrap_or_default(),
            };
            *writes.entry(format!("{} {resource}", entry.verb)).or_default() += 1;
        }
        (writes, marked)
    }
}
