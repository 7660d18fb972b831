//! lavic-catalog: the precomputed image tokens of every catalog item, so that a recommendation
//! request never runs the vision tower. Each item's first image gives 5 vectors: the CLS token of
//! each of its 5 AnyRes views (LaViC's distilled encoding, `LAVIC_REFERENCE.md` section 4),
//! stored in f16 before the projector by default and projected at request time.
//!
//! Read top-down: [`mod@format`] (bytes on disk) -> `segment` (immutable, memory-mapped base) and
//! `delta` (append-only log of upserts/deletes) -> [`Catalog`] (open, lookup, tokens; updates in
//! `update`) -> `build` ([`build()`], [`merge`], [`compact`]) and [`verify()`]/[`info`] -> [`cli`].
//! The file format is described in `FORMAT.md`.
//!
//! A fleet shares one catalog through [`redis`]: a [`RedisStore`] namespace per encoder
//! fingerprint, one key per item with the same f16 features, and a per-replica cache kept right
//! by invalidations. [`CatalogBackend`] is the one interface a server uses for either store;
//! upserts are planned and encoded the same way for both (`plan`).
//!
//! Concurrency: reads ([`Catalog::tokens`], [`Catalog::get`]) take no catalog-wide lock (the base
//! is immutable and mapped; the overlay is a sharded `DashMap`). Writers ([`Catalog::upsert`],
//! [`Catalog::delete`]) are serialised by a mutex inside the catalog and, across processes, by
//! an `flock` on the folder's `.lock` file, which builds and merges take too.

#![warn(missing_docs)]

mod backend;
mod build;
mod catalog;
pub mod cli;
mod delta;
mod encode;
mod error;
pub mod format;
mod fsutil;
mod ingest;
mod mapped;
mod plan;
pub mod redis;
pub mod rules;
mod segment;
mod stored;
mod synthetic;
mod update;
mod verify;

pub use backend::CatalogBackend;
pub use build::{build, compact, merge, BuildOptions, BuildReport, MergeReport};
pub use catalog::{Catalog, CatalogItem, ItemInfo};
pub use encode::ProgressMode;
pub use error::{Error, Result};
pub use format::{feature_bytes, StoreForm};
pub use ingest::{read_items, InputFormat, InputItem, Shard};
pub use rules::{MAX_METADATA_BYTES, MAX_TITLE_BYTES};
pub use redis::{Consistency, RedisConfig, RedisCredentials, RedisStore};
pub use stored::StoredItem;
pub use synthetic::{synthetic_id, write_synthetic};
pub use update::{NewItem, UpsertReport};
pub use verify::{info, verify, CatalogInfo, VerifyReport};
