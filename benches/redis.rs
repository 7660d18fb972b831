//! Redis catalog store benchmarks (criterion), against a real `redis-server` started on
//! loopback (no AOF): per-request lookup of the stored items of 10 and 20 candidates from a
//! synthetic catalog of 100,000 items at LLaVA-NeXT-7B's CLS width (1024 values per view, 10 KiB
//! of f16 features per item), from the mmap catalog, from Redis cold (no cache), and from Redis
//! with every item cached (strict: one round trip for the epoch; eventual: none); and Redis
//! memory per item (`INFO memory`, `used_memory` before and after `push`), printed to stderr.
//!
//! Run: `cargo bench -p lavic-catalog --bench redis -- --warm-up-time 1 --measurement-time 3`.
//! Set `LAVIC_BENCH_ITEMS` to change the catalog size.

use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use lavic_catalog::redis::testing::{RedisServer, ServerOptions};
use lavic_catalog::redis::{push, PushOptions};
use lavic_catalog::{synthetic_id, write_synthetic, Catalog, Consistency, RedisConfig, RedisStore, StoreForm};

const FP: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const WIDTH: usize = 1024;

fn used_memory(server: &RedisServer) -> u64 {
    let info: String = redis::cmd("INFO").arg("memory").query(&mut server.connection()).unwrap();
    info.lines().find_map(|l| l.strip_prefix("used_memory:")).and_then(|v| v.trim().parse().ok()).expect("used_memory in INFO")
}

fn lookups(c: &mut Criterion) {
    let n: usize = std::env::var("LAVIC_BENCH_ITEMS").ok().and_then(|s| s.parse().ok()).unwrap_or(100_000);
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("cat");
    let t = Instant::now();
    write_synthetic(&dir, n, WIDTH, StoreForm::Cls, FP).unwrap();
    eprintln!("wrote a {n}-item mmap catalog (width {WIDTH}) in {:.1} s", t.elapsed().as_secs_f64());
    let cat = Catalog::open(&dir).unwrap();

    let server = RedisServer::start_with(ServerOptions { aof: false, ..Default::default() });
    let url = server.url();
    let before = used_memory(&server);
    let t = Instant::now();
    let r = push(&dir, &RedisConfig::new(&url), &PushOptions::default()).unwrap();
    let after = used_memory(&server);
    eprintln!(
        "pushed {} items in {:.1} s; Redis used_memory {} -> {} bytes: {:.0} bytes per item ({} bytes of features)",
        r.added,
        t.elapsed().as_secs_f64(),
        before,
        after,
        (after - before) as f64 / n as f64,
        5 * WIDTH * 2
    );

    let open = |consistency: Consistency, cache_bytes: usize| {
        let mut cfg = RedisConfig::new(&url);
        cfg.consistency = consistency;
        cfg.cache_bytes = cache_bytes;
        let s = RedisStore::open(&cfg, lavic_catalog::redis::Layout { fingerprint: FP.into(), form: StoreForm::Cls, width: WIDTH, vision_width: WIDTH }, None).unwrap();
        let end = Instant::now() + std::time::Duration::from_secs(5);
        while !s.invalidations_live() && Instant::now() < end {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        s
    };
    let cold = open(Consistency::Strict, 0);
    let strict = open(Consistency::Strict, 1 << 30);
    let eventual = open(Consistency::Eventual, 1 << 30);

    let mut state = 0x2545_F491u64;
    let mut next_id = move || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        synthetic_id((state >> 33) as usize % n)
    };
    let mut g = c.benchmark_group(format!("catalog_lookup_{n}_items_width_{WIDTH}"));
    for k in [10usize, 20] {
        let batches: Vec<Vec<String>> = (0..256).map(|_| (0..k).map(|_| next_id()).collect()).collect();
        let refs: Vec<Vec<&str>> = batches.iter().map(|b| b.iter().map(String::as_str).collect()).collect();
        for b in &refs {
            strict.stored(b).unwrap();
            eventual.stored(b).unwrap();
        }
        g.throughput(Throughput::Elements(k as u64));
        let mut i = 0;
        g.bench_function(format!("mmap_{k}"), |b| {
            b.iter(|| {
                i = (i + 1) % refs.len();
                cat.stored(&refs[i]).unwrap()
            })
        });
        for (name, s) in [("redis_cold", &cold), ("redis_cached_strict", &strict), ("redis_cached_eventual", &eventual)] {
            g.bench_function(format!("{name}_{k}"), |b| {
                b.iter(|| {
                    i = (i + 1) % refs.len();
                    let got = s.stored(&refs[i]).unwrap();
                    assert!(got.iter().all(Option::is_some));
                    got
                })
            });
        }
        let st = strict.stats();
        eprintln!("strict store after the {k}-candidate runs: {st:?}");
    }
    g.finish();
}

criterion_group!(benches, lookups);
criterion_main!(benches);
