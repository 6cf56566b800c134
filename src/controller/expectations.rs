//! Pods this operator created that its pod watch has not shown yet, by job uid (the Kubernetes
//! controllers' "expectations"). A reconcile that runs before the watch catches up would
//! otherwise create them again: a 409 each, and a second PodsCreated Event.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;

/// How long a created pod may stay unseen before it is presumed gone (deleted before the watch
/// showed it) and may be created again.
const PATIENCE: Duration = Duration::from_secs(30);

/// See the module documentation.
#[derive(Default)]
pub struct Expectations {
    jobs: Mutex<HashMap<String, (Instant, HashSet<String>)>>,
}

impl Expectations {
    /// Notes pods just created for the job with `uid`.
    pub fn created(&self, uid: &str, names: impl IntoIterator<Item = String>) {
        let mut jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        let entry = jobs
            .entry(uid.to_string())
            .or_insert_with(|| (Instant::now(), HashSet::new()));
        entry.0 = Instant::now();
        entry.1.extend(names);
    }

    /// Forgets the pods the watch now shows (`seen`) and returns those still awaited.
    pub fn awaited(&self, uid: &str, seen: &[std::sync::Arc<Pod>]) -> HashSet<String> {
        let mut jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        let Some((since, names)) = jobs.get_mut(uid) else {
            return HashSet::new();
        };
        for pod in seen {
            if let Some(name) = &pod.metadata.name {
                names.remove(name);
            }
        }
        if names.is_empty() || since.elapsed() > PATIENCE {
            jobs.remove(uid);
            return HashSet::new();
        }
        names.clone()
    }

    /// Forgets a job that finished or is gone.
    pub fn forget(&self, uid: &str) {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner()).remove(uid);
    }

    /// Keeps only the jobs whose uid `live` accepts.
    pub fn retain(&self, live: impl Fn(&str) -> bool) {
        self.jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|uid, _| live(uid));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str) -> std::sync::Arc<Pod> {
        let mut pod = Pod::default();
        pod.metadata.name = Some(name.into());
        std::sync::Arc::new(pod)
    }

    #[test]
    fn created_pods_are_awaited_until_the_watch_shows_them() {
        let e = Expectations::default();
        e.created("u", ["a".to_string(), "b".to_string()]);
        assert_eq!(e.awaited("u", &[pod("a")]), HashSet::from(["b".to_string()]));
        assert_eq!(e.awaited("other", &[]), HashSet::new());
        assert_eq!(e.awaited("u", &[pod("b")]), HashSet::new());
        assert!(
            e.jobs.lock().expect("lock").is_empty(),
            "a satisfied job is forgotten"
        );
        e.created("u", ["c".to_string()]);
        e.forget("u");
        assert_eq!(e.awaited("u", &[]), HashSet::new());
    }
}
