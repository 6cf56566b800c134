//! Watching which replicas lead, for the tests that run several.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use trainjob_operator::metrics::Metrics;

use super::Operator;

/// Whether `op` says it leads.
pub fn leads(op: &Operator) -> bool {
    op.metrics.leader.get() == 1
}

/// Waits until `op` leads.
pub async fn wait_leads(what: &str, op: &Operator, within: Duration) {
    super::eventually(what, within, || async {
        if leads(op) {
            Ok(())
        } else {
            Err("still standing by".to_string())
        }
    })
    .await
}

/// Each live replica's name and metrics.
type Replicas = Arc<Mutex<Vec<(String, Arc<Metrics>)>>>;

/// Counts, every few milliseconds, how many live replicas say they lead; keeps the most seen.
pub struct Overlap {
    replicas: Replicas,
    /// The most replicas seen leading at once.
    pub most: Arc<AtomicUsize>,
    /// Set to stop watching.
    pub stop: Arc<AtomicBool>,
}

impl Overlap {
    pub fn watch() -> Overlap {
        let overlap = Overlap {
            replicas: Arc::default(),
            most: Arc::default(),
            stop: Arc::default(),
        };
        let (replicas, most, stop) = (
            overlap.replicas.clone(),
            overlap.most.clone(),
            overlap.stop.clone(),
        );
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let leading = replicas
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .iter()
                    .filter(|(_, m)| m.leader.get() == 1)
                    .count();
                most.fetch_max(leading, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        overlap
    }

    pub fn add(&self, name: &str, op: &Operator) {
        self.replicas
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((name.into(), op.metrics.clone()));
    }

    /// A killed replica's gauge stays where the crash left it: stop counting it first.
    pub fn remove(&self, name: &str) {
        self.replicas
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(n, _)| n != name);
    }
}
