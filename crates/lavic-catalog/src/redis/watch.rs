//! The store's two background tasks. The subscriber keeps a pub/sub connection on the
//! namespace's invalidation channel: once subscribed it reads the epoch, empties the cache and
//! stands it there, then applies every message in order; it pings the connection at the health
//! interval and, when the connection is lost, marks the cache as not live and reconnects with
//! exponential backoff (50 ms doubling to 5 s, with jitter). The health task checks the store at
//! the same interval (the item count, which also re-triggers the connection manager's reconnect)
//! and keeps the outage record that readiness reads; it recreates the namespace metadata if
//! Redis lost it.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;

use crate::redis::core::Core;
use crate::redis::new_instance;
use crate::redis::scripts::parse_message;

/// Exponential backoff with jitter.
pub(crate) struct Backoff {
    next: Duration,
    min: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff { next: min, min, max }
    }

    /// The delay before the next attempt (each one doubles, up to the maximum; +-25% jitter).
    pub fn delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|t| t.subsec_nanos()).unwrap_or(0);
        let jitter = 0.75 + (nanos % 1000) as f64 / 2000.0;
        d.mul_f64(jitter)
    }

    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

/// Runs the subscriber until the store's runtime shuts down.
pub(crate) async fn subscriber(core: Arc<Core>) {
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
    loop {
        match subscribe_once(&core, &mut backoff).await {
            Ok(()) => {}
            Err(why) => tracing::warn!(store = %core.conn.store, reason = %why, "catalog invalidation subscription lost; reconnecting"),
        }
        core.cache().set_lost();
        tokio::time::sleep(backoff.delay()).await;
    }
}

async fn subscribe_once(core: &Core, backoff: &mut Backoff) -> Result<(), String> {
    let timeout = core.conn.timeout;
    let mut ps = tokio::time::timeout(timeout, core.conn.client.get_async_pubsub())
        .await
        .map_err(|_| format!("no pub/sub connection within {timeout:?}"))?
        .map_err(|e| e.to_string())?;
    tokio::time::timeout(timeout, ps.subscribe(&core.keys.channel)).await.map_err(|_| "SUBSCRIBE timed out".to_string())?.map_err(|e| e.to_string())?;
    // Subscribed first, position read second: every write after this epoch will be announced.
    let (epoch, instance) = core.position_now().await.map_err(|e| e.to_string())?;
    core.cache().resync(epoch, instance, true);
    core.conn.counters.resyncs.fetch_add(1, Ordering::Relaxed);
    backoff.reset();
    tracing::debug!(store = %core.conn.store, epoch, "catalog invalidations subscribed");
    let (mut sink, mut stream) = ps.split();
    let mut tick = tokio::time::interval(core.health_interval);
    tick.tick().await;
    loop {
        tokio::select! {
            msg = stream.next() => {
                let Some(msg) = msg else { return Err("the pub/sub connection closed".into()) };
                match parse_message(msg.get_payload_bytes()) {
                    Some((epoch, ids)) => {
                        core.cache().invalidate(epoch, &ids);
                        core.conn.counters.invalidations.fetch_add(1, Ordering::Relaxed);
                    }
                    None => {
                        // Not ours to understand: be safe and forget everything.
                        let (epoch, instance) = core.position_now().await.map_err(|e| e.to_string())?;
                        core.cache().resync(epoch, instance, true);
                        tracing::warn!(store = %core.conn.store, "malformed invalidation message; cache emptied");
                    }
                }
            }
            _ = tick.tick() => {
                // Subscribed, PING answers ["pong", ""] (RESP2): accept any reply.
                match tokio::time::timeout(timeout, sink.ping::<redis::Value>()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return Err(format!("ping failed: {e}")),
                    Err(_) => return Err(format!("no answer to a ping within {timeout:?}")),
                }
            }
        }
    }
}

/// Runs the health check until the store's runtime shuts down.
pub(crate) async fn health(core: Arc<Core>) {
    let mut tick = tokio::time::interval(core.health_interval);
    loop {
        tick.tick().await;
        match core.count_now().await {
            Ok(_) => {}
            Err(e) => {
                core.conn.mark_down(e.to_string());
                continue;
            }
        }
        // A Redis that lost its data (restarted without persistence) lost the metadata too.
        match core.position_now().await {
            Ok((_, None)) => match core.ensure_meta(&new_instance()).await {
                Ok(_) => {
                    tracing::warn!(store = %core.conn.store, namespace = %core.keys.base, "namespace metadata was missing (Redis lost its data?); recreated");
                    if let Ok((epoch, instance)) = core.position_now().await {
                        let mut c = core.cache();
                        let live = c.position().live;
                        c.resync(epoch, instance, live);
                    }
                }
                Err(e) => core.conn.mark_down(e.to_string()),
            },
            Ok(_) => {}
            Err(e) => core.conn.mark_down(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_maximum_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(800));
        let d: Vec<Duration> = (0..6).map(|_| b.delay()).collect();
        for (got, base) in d.iter().zip([100u64, 200, 400, 800, 800, 800]) {
            let base = Duration::from_millis(base);
            assert!(*got >= base.mul_f64(0.74) && *got <= base.mul_f64(1.26), "{got:?} vs {base:?}");
        }
        b.reset();
        assert!(b.delay() <= Duration::from_millis(126));
    }
}
