//! Helpers of the Redis tests: store settings for tests, synthetic items, polling.

use std::time::{Duration, Instant};

use lavic_catalog::redis::testing::RedisServer;
use lavic_catalog::redis::Layout;
use lavic_catalog::{RedisConfig, RedisStore, StoreForm, StoredItem};

/// A fingerprint for synthetic namespaces.
pub const FP: &str = "ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12";
/// Values per view of synthetic items.
pub const WIDTH: usize = 16;

/// Test settings: a TTL of an hour (so only invalidations can refresh the cache), short
/// timeouts and a fast health check.
pub fn config(server: &RedisServer) -> RedisConfig {
    let mut c = RedisConfig::new(server.url());
    c.cache_ttl = Duration::from_secs(3600);
    c.timeout = Duration::from_millis(1000);
    c.health_interval = Duration::from_millis(100);
    c
}

/// The synthetic layout (CLS, [`WIDTH`]).
pub fn layout() -> Layout {
    Layout { fingerprint: FP.into(), form: StoreForm::Cls, width: WIDTH, vision_width: WIDTH }
}

/// A store on `server` for the synthetic layout.
pub fn store(server: &RedisServer) -> RedisStore {
    RedisStore::open(&config(server), layout(), None).unwrap()
}

/// Synthetic item `id` whose features and title depend on `version`.
pub fn item(id: &str, version: u32) -> StoredItem {
    item_w(id, version, WIDTH)
}

/// Synthetic item of `width` values per view.
pub fn item_w(id: &str, version: u32, width: usize) -> StoredItem {
    let seed = id.bytes().fold(version as u64 * 7919, |h, b| h.wrapping_mul(31).wrapping_add(b as u64));
    let features = (0..5 * width)
        .flat_map(|i| half::f16::from_f32(((seed + i as u64) % 97) as f32 / 97.0 - 0.5).to_le_bytes())
        .collect();
    let mut sha = [0u8; 32];
    sha[..8].copy_from_slice(&seed.to_le_bytes());
    StoredItem {
        id: id.into(),
        title: format!("{id} v{version}"),
        metadata: format!("{{\"version\":{version}}}"),
        image_missing: false,
        image_sha256: sha,
        features,
    }
}

/// Polls `f` every 10 ms until it is true or `limit` passes; returns whether it became true.
pub fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    f()
}

/// Waits until the store's invalidation subscription is live (it starts in the background).
pub fn wait_live(s: &RedisStore) {
    assert!(wait_until(Duration::from_secs(5), || s.invalidations_live()), "invalidations never subscribed");
}

/// The key of item `id` in the synthetic namespace.
pub fn item_key(id: &str) -> String {
    format!("lavic:{{{FP}}}:item:{id}")
}
