//! Which watch caches have completed their first list. A reconcile must not decide from a
//! half-filled cache (it would recreate pods that exist), and `/readyz` says ready only once
//! every cache has listed.
//!
//! kube's `Store::wait_until_ready` is not used for this: its one-shot channel keeps a single
//! waker, so of several tasks waiting at once only the last one polled is woken. Reconciles
//! waiting beside the readiness signal then slept until their 30 s timeout happened to poll
//! them again.

use std::collections::BTreeSet;
use std::sync::Arc;

use kube::runtime::watcher::Event;
use tokio::sync::watch;

/// See the module documentation.
pub struct Listed {
    pending: watch::Sender<BTreeSet<&'static str>>,
}

impl Listed {
    /// Waits for the caches `names`.
    pub fn new(names: impl IntoIterator<Item = &'static str>) -> Arc<Listed> {
        Arc::new(Listed {
            pending: watch::Sender::new(names.into_iter().collect()),
        })
    }

    /// Notes that the cache `name` has listed everything once.
    pub fn done(&self, name: &str) {
        self.pending.send_if_modified(|pending| pending.remove(name));
    }

    /// A watch stream inspector that calls [`Listed::done`] for `name` at the end of each list.
    /// Place it after the stream's reflector, so the store is complete when it fires.
    pub fn on_list<K>(self: &Arc<Self>, name: &'static str) -> impl Fn(&Event<K>) + use<K> {
        let listed = self.clone();
        move |event| {
            if matches!(event, Event::InitDone) {
                listed.done(name);
            }
        }
    }

    /// Resolves once every cache has listed; any number of tasks may wait at once.
    pub async fn all(&self) {
        let mut pending = self.pending.subscribe();
        // The sender lives as long as `self`, so this only ends once nothing is pending.
        let _ = pending.wait_for(BTreeSet::is_empty).await;
    }

    /// The caches still listing.
    pub fn pending(&self) -> Vec<&'static str> {
        self.pending.borrow().iter().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn every_concurrent_waiter_wakes_once_all_caches_listed() {
        let listed = Listed::new(["pods", "services"]);
        let waiters: Vec<_> = (0..8)
            .map(|_| {
                let listed = listed.clone();
                tokio::spawn(async move { listed.all().await })
            })
            .collect();
        tokio::task::yield_now().await;
        let on_list = listed.on_list::<()>("pods");
        on_list(&Event::Init);
        on_list(&Event::InitApply(()));
        assert_eq!(
            listed.pending(),
            ["pods", "services"],
            "a partial list is not done"
        );
        on_list(&Event::InitDone);
        assert_eq!(listed.pending(), ["services"]);
        assert!(waiters.iter().all(|w| !w.is_finished()));
        listed.done("services");
        for waiter in waiters {
            // A bound, not a timing assertion: a lost wakeup would hang forever.
            tokio::time::timeout(Duration::from_secs(10), waiter)
                .await
                .expect("every waiter is woken")
                .expect("waiter");
        }
    }
}
