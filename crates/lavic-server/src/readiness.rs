//! Readiness follows the catalog store: while a shared store (Redis) is unreachable the server
//! keeps answering what it can (requests whose items are all cached; others get UNAVAILABLE
//! naming the store), and once the outage has lasted longer than `catalog_outage_secs` the
//! Recommender and Catalog health services turn NOT_SERVING, so that a load balancer sends
//! traffic to replicas that can still serve. They turn SERVING again when the store answers.
//! The watch also keeps the store gauges (`lavic_catalog_store_up`, `..._outage_seconds`,
//! `lavic_catalog_items`) current.
//!
//! For a catalog folder the watch checks every second that the folder still holds the catalog
//! that was opened ([`crate::store::Store::check_folder`]): a catalog rebuilt in place is
//! reopened and served at once (logged); one that cannot be reopened (a file cut short, a
//! fingerprint that no longer matches) turns the services NOT_SERVING with an error log line
//! naming what changed, until it can be reopened.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use crate::core::Core;
use crate::engine::Engine;
use crate::store::FolderCheck;

/// How often the watch looks at the store's health.
const INTERVAL: Duration = Duration::from_secs(1);

/// Whether the services should report SERVING after an outage of `outage` (None: none) with the
/// limit `limit`: only an outage longer than the limit turns them NOT_SERVING.
pub fn store_allows_serving(outage: Option<Duration>, limit: Duration) -> bool {
    outage.is_none_or(|d| d <= limit)
}

/// Starts the watch of the catalog: a shared store's outages, or a folder's changes on disk.
/// The caller aborts the task before draining, which sets NOT_SERVING for good.
pub fn spawn_store_watch(core: Arc<Core>, engine: Arc<Engine>, health: HealthReporter, limit: Duration) -> Option<JoinHandle<()>> {
    if !engine.store.backend().is_shared() {
        return Some(spawn_folder_watch(core, engine, health));
    }
    Some(tokio::spawn(async move {
        let mut serving = true;
        let mut tick = tokio::time::interval(INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let outage = engine.store.outage_for();
            let m = &core.metrics.store;
            m.up.set(outage.is_none() as i64);
            m.outage_seconds.set(outage.map_or(0, |d| d.as_secs() as i64));
            if let Some(stats) = engine.store.backend().stats() {
                m.cache_bytes.set(stats.cache_bytes as i64);
                m.cache_entries.set(stats.cache_entries as i64);
            }
            engine.store.count();
            let want = store_allows_serving(outage, limit);
            if want == serving || !core.accepting() {
                continue;
            }
            serving = want;
            if want {
                tracing::info!(store = %engine.store.describe(), "catalog store reachable again: SERVING");
                crate::server::set_services(&health, ServingStatus::Serving).await;
            } else {
                tracing::error!(
                    store = %engine.store.describe(),
                    outage_secs = outage.map_or(0, |d| d.as_secs()),
                    limit_secs = limit.as_secs(),
                    "catalog store unreachable for longer than catalog_outage_secs: NOT_SERVING (cached items are still answered)"
                );
                crate::server::set_services(&health, ServingStatus::NotServing).await;
            }
        }
    }))
}

/// The watch of a catalog folder: reopens a catalog changed on disk, NOT_SERVING while that fails.
fn spawn_folder_watch(core: Arc<Core>, engine: Arc<Engine>, health: HealthReporter) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut serving = true;
        let mut tick = tokio::time::interval(INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let e = engine.clone();
            let Ok(check) = tokio::task::spawn_blocking(move || e.store.check_folder(&e.model.encoder)).await else { continue };
            let catalog = engine.store.describe();
            match check {
                FolderCheck::Unchanged => {}
                FolderCheck::Reloaded(what) => {
                    tracing::warn!(catalog, changed = %what, items = engine.store.len(), "catalog changed on disk: reopened, serving the new catalog");
                    if !serving && core.accepting() {
                        serving = true;
                        crate::server::set_services(&health, ServingStatus::Serving).await;
                    }
                }
                FolderCheck::Broken(why) if serving && core.accepting() => {
                    tracing::error!(catalog, reason = %why, "catalog changed on disk and cannot be reopened: NOT_SERVING until it can");
                    serving = false;
                    crate::server::set_services(&health, ServingStatus::NotServing).await;
                }
                FolderCheck::Broken(_) => {}
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_serving_only_past_the_limit() {
        let limit = Duration::from_secs(10);
        assert!(store_allows_serving(None, limit));
        assert!(store_allows_serving(Some(Duration::from_secs(3)), limit));
        assert!(store_allows_serving(Some(limit), limit));
        assert!(!store_allows_serving(Some(Duration::from_secs(11)), limit));
    }
}
