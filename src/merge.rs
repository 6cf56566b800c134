//! Merging by key into pod specs, shared by `resolve` (overrides and patches) and `pods` (the MPI
//! environment): a later entry with the same key replaces the earlier one, as strategic merge
//! patches do for these lists.

use k8s_openapi::api::core::v1::{Container, EnvVar, ResourceRequirements};

/// Replaces the item with the same key, or appends it.
pub fn upsert_by<T, K: PartialEq + ?Sized>(items: &mut Vec<T>, item: T, key: impl Fn(&T) -> &K) {
    match items.iter_mut().find(|existing| key(existing) == key(&item)) {
        Some(existing) => *existing = item,
        None => items.push(item),
    }
}

/// Upserts `env` into the container's environment, by name.
pub fn upsert_env(container: &mut Container, env: &[EnvVar]) {
    if env.is_empty() {
        return;
    }
    let target = container.env.get_or_insert_default();
    for var in env {
        upsert_by(target, var.clone(), |v| v.name.as_str());
    }
}

/// Merges `from`'s limits and requests into `target`, resource by resource.
pub fn merge_resources(target: &mut ResourceRequirements, from: &ResourceRequirements) {
    for (into, src) in [
        (&mut target.limits, &from.limits),
        (&mut target.requests, &from.requests),
    ] {
        if let Some(src) = src {
            into.get_or_insert_default().extend(src.clone());
        }
    }
}
