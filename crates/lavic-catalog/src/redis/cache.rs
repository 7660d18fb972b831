//! The per-replica item cache in front of Redis: least-recently-used, bounded in bytes, entries
//! verified once when fetched. It is kept right by invalidation messages, not by time: every
//! write batch increments the namespace's epoch and publishes `epoch + ids` in the same atomic
//! script, and the cache applies them in epoch order (a gap means messages were lost: it empties
//! itself). A fetched value is inserted only when the cache has applied exactly the epoch of the
//! snapshot it was read at, so a value that an invalidation already overtook is never cached.
//! A TTL bounds the life of an entry as a safety net only.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lru::LruCache;

use crate::stored::StoredItem;

struct Entry {
    item: Arc<StoredItem>,
    at: Instant,
    bytes: usize,
}

/// Where the cache stands against the namespace it caches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Position {
    /// Last epoch whose invalidation was applied (or at which the cache was resynchronised).
    pub epoch: u64,
    /// The namespace instance the entries came from (`None`: not synchronised).
    pub instance: Option<String>,
    /// Invalidation messages are being received (the subscription is live).
    pub live: bool,
}

/// The cache. Not thread-safe itself: the store keeps it behind one mutex, which also makes each
/// "check the epoch, then insert" atomic with respect to invalidations.
pub(crate) struct Cache {
    map: LruCache<String, Entry>,
    bytes: usize,
    cap: usize,
    ttl: Duration,
    pos: Position,
    /// A lookup saw the namespace at this epoch while the cache was behind it, since then.
    behind: Option<(u64, Instant)>,
    evictions: u64,
}

impl Cache {
    /// An empty cache of at most `cap` bytes (0 disables it) whose entries live at most `ttl`.
    pub fn new(cap: usize, ttl: Duration) -> Self {
        Cache {
            map: LruCache::unbounded(),
            bytes: 0,
            cap,
            ttl,
            pos: Position { epoch: 0, instance: None, live: false },
            behind: None,
            evictions: 0,
        }
    }

    /// The cached item `id`, if present and younger than the TTL (marks it recently used).
    pub fn get(&mut self, id: &str, now: Instant) -> Option<Arc<StoredItem>> {
        let expired = match self.map.get(id) {
            None => return None,
            Some(e) => now.duration_since(e.at) >= self.ttl,
        };
        if expired {
            self.remove(id);
            return None;
        }
        self.map.get(id).map(|e| e.item.clone())
    }

    /// Where the cache stands.
    pub fn position(&self) -> &Position {
        &self.pos
    }

    /// Inserts items read from a snapshot of the namespace at `epoch` of `instance`, if the
    /// cache is live and stands exactly there (else they may be older than what an applied
    /// invalidation removed, and are not cached). Returns whether they were inserted.
    pub fn insert_from_snapshot(&mut self, items: &[Arc<StoredItem>], epoch: u64, instance: &str, now: Instant) -> bool {
        if self.cap == 0 || !self.pos.live || self.pos.epoch != epoch || self.pos.instance.as_deref() != Some(instance) {
            return false;
        }
        for it in items {
            let bytes = it.heap_bytes() + 64;
            if bytes > self.cap {
                continue;
            }
            self.remove(&it.id);
            self.map.put(it.id.clone(), Entry { item: it.clone(), at: now, bytes });
            self.bytes += bytes;
        }
        while self.bytes > self.cap {
            match self.map.pop_lru() {
                Some((_, e)) => {
                    self.bytes -= e.bytes;
                    self.evictions += 1;
                }
                None => break,
            }
        }
        true
    }

    /// Applies the invalidation of write batch `epoch` (which touched `ids`). Messages arrive
    /// in epoch order; an old one is ignored, a gap (lost messages) empties the cache.
    pub fn invalidate(&mut self, epoch: u64, ids: &[String]) {
        if epoch <= self.pos.epoch {
            return;
        }
        if epoch == self.pos.epoch + 1 {
            for id in ids {
                self.remove(id);
            }
        } else {
            self.clear();
        }
        self.pos.epoch = epoch;
        if self.behind.is_some_and(|(e, _)| epoch >= e) {
            self.behind = None;
        }
    }

    /// Empties the cache and stands it at `epoch` of `instance` (after (re)subscribing: from
    /// then on, every later write's invalidation will arrive).
    pub fn resync(&mut self, epoch: u64, instance: Option<String>, live: bool) {
        self.clear();
        self.pos = Position { epoch, instance, live };
        self.behind = None;
    }

    /// Marks the subscription as lost: entries may go stale from now on, so they are served only
    /// when Redis cannot be reached, and nothing new is cached until [`Cache::resync`].
    pub fn set_lost(&mut self) {
        self.pos.live = false;
    }

    /// Notes that a lookup saw the namespace at `epoch`, beyond the cache. Returns true when the
    /// cache has been behind for longer than `patience` (invalidations were lost or are stuck):
    /// it is then emptied and stood at `epoch`.
    pub fn note_behind(&mut self, epoch: u64, now: Instant, patience: Duration) -> bool {
        if epoch <= self.pos.epoch {
            return false;
        }
        match self.behind {
            None => {
                self.behind = Some((epoch, now));
                false
            }
            Some((_, since)) if now.duration_since(since) >= patience => {
                self.clear();
                self.pos.epoch = epoch;
                self.behind = None;
                true
            }
            Some(_) => false,
        }
    }

    /// Drops every entry (the position is kept).
    pub fn clear(&mut self) {
        self.map.clear();
        self.bytes = 0;
    }

    /// Bytes held (ids, titles, metadata, features and per-entry overhead).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Entries evicted to stay under the byte bound.
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    fn remove(&mut self, id: &str) {
        if let Some(e) = self.map.pop(id) {
            self.bytes -= e.bytes;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(id: &str, n: usize) -> Arc<StoredItem> {
        Arc::new(StoredItem {
            id: id.into(),
            title: format!("T{id}"),
            metadata: "{}".into(),
            image_missing: false,
            image_sha256: [1; 32],
            features: vec![0; n],
        })
    }

    fn live(cap: usize) -> Cache {
        let mut c = Cache::new(cap, Duration::from_secs(3600));
        c.resync(5, Some("i1".into()), true);
        c
    }

    #[test]
    fn bounded_in_bytes_evicting_the_least_recently_used() {
        let now = Instant::now();
        let one = item("a", 1000).heap_bytes() + 64;
        let mut c = live(3 * one);
        assert!(c.insert_from_snapshot(&[item("a", 1000), item("b", 1000), item("c", 1000)], 5, "i1", now));
        assert_eq!((c.len(), c.bytes()), (3, 3 * one));
        assert!(c.get("a", now).is_some()); // a is now the most recently used
        c.insert_from_snapshot(&[item("d", 1000)], 5, "i1", now);
        assert_eq!((c.len(), c.evictions()), (3, 1));
        assert!(c.get("b", now).is_none(), "b was the least recently used");
        assert!(c.get("a", now).is_some() && c.get("d", now).is_some());
        assert!(c.bytes() <= 3 * one);
        // An item larger than the whole cache is not cached; replacing an entry keeps the count.
        c.insert_from_snapshot(&[item("huge", 10 * one)], 5, "i1", now);
        assert!(c.get("huge", now).is_none());
        c.insert_from_snapshot(&[item("a", 1000)], 5, "i1", now);
        assert_eq!(c.bytes(), 3 * one);
        assert!(!Cache::new(0, Duration::from_secs(1)).insert_from_snapshot(&[item("a", 1)], 0, "i1", now), "cap 0 disables");
    }

    #[test]
    fn invalidations_apply_in_epoch_order_and_a_gap_empties_the_cache() {
        let now = Instant::now();
        let mut c = live(1 << 20);
        c.insert_from_snapshot(&[item("a", 10), item("b", 10), item("c", 10)], 5, "i1", now);
        c.invalidate(6, &["a".into()]);
        assert!(c.get("a", now).is_none() && c.get("b", now).is_some());
        c.invalidate(6, &["b".into()]); // a replay of an applied epoch: ignored
        assert!(c.get("b", now).is_some());
        c.invalidate(8, &["zzz".into()]); // epoch 7 was lost
        assert_eq!(c.len(), 0);
        assert_eq!(c.position().epoch, 8);
    }

    #[test]
    fn a_value_read_before_an_applied_invalidation_is_not_cached() {
        let now = Instant::now();
        let mut c = live(1 << 20);
        // A lookup read "a" at epoch 5; meanwhile the invalidation of epoch 6 (a write of "a")
        // was applied. Caching the epoch-5 value would serve it stale until the TTL.
        c.invalidate(6, &["a".into()]);
        assert!(!c.insert_from_snapshot(&[item("a", 10)], 5, "i1", now));
        assert!(c.get("a", now).is_none());
        // Read at the cache's epoch: cached. From another instance (Redis lost its data): not.
        assert!(c.insert_from_snapshot(&[item("a", 10)], 6, "i1", now));
        assert!(!c.insert_from_snapshot(&[item("b", 10)], 6, "i2", now));
        // Without a live subscription nothing is cached.
        c.set_lost();
        assert!(!c.insert_from_snapshot(&[item("b", 10)], 6, "i1", now));
        assert!(c.get("a", now).is_some(), "entries stay, for outages");
    }

    #[test]
    fn ttl_is_a_safety_net() {
        let now = Instant::now();
        let mut c = Cache::new(1 << 20, Duration::from_millis(100));
        c.resync(0, Some("i".into()), true);
        c.insert_from_snapshot(&[item("a", 10)], 0, "i", now);
        assert!(c.get("a", now + Duration::from_millis(50)).is_some());
        assert!(c.get("a", now + Duration::from_millis(100)).is_none());
        assert_eq!((c.len(), c.bytes()), (0, 0));
    }

    #[test]
    fn a_cache_left_behind_too_long_resynchronises() {
        let now = Instant::now();
        let mut c = live(1 << 20);
        c.insert_from_snapshot(&[item("a", 10)], 5, "i1", now);
        let patience = Duration::from_secs(1);
        assert!(!c.note_behind(7, now, patience));
        c.invalidate(6, &[]);
        assert!(!c.note_behind(7, now + Duration::from_millis(500), patience));
        assert!(c.note_behind(7, now + Duration::from_millis(1200), patience));
        assert_eq!((c.len(), c.position().epoch), (0, 7));
        // Catching up clears the mark.
        assert!(!c.note_behind(9, now, patience));
        c.invalidate(8, &[]);
        c.invalidate(9, &[]);
        assert!(!c.note_behind(10, now + Duration::from_secs(5), patience), "a new lag starts a new wait");
    }
}
