#![warn(missing_docs)]
//! lavic-server: the LaViC recommendation service over gRPC (tonic) and the `lavic` binary.
//!
//! A request carries a shopper's dialogue and 2..N candidate items (catalog ids or inline items
//! with an image); the model picks the one that fits best and says whether its own answer was a
//! candidate (`valid`). Layout, read top-down:
//!
//! - [`config`]: defaults -> TOML -> `LAVIC_*` env -> flags, validated at start;
//! - [`error`]: the one error enum and its one mapping to gRPC status codes;
//! - [`validation`]: every rule a message must pass, for every RPC (each refusal names the
//!   field); [`decode`]: a validated request's inline images decoded, once admitted;
//! - [`queue`]: admission (semaphore) and the bounded queue to the model workers;
//! - [`engine`] + [`store`]: model, catalog and the work on one batch ([`demo`]: the embedded
//!   demos served without a model folder); [`worker`]: the threads
//!   and their batch forming;
//! - [`core`] + [`service`]: thin handlers over the shared core and its one call wrapper;
//! - [`server`]: the tower stack, health, reflection, start-up, warm-up and drain;
//! - [`readiness`]: health follows the catalog store (NOT_SERVING after a long outage);
//! - [`metrics`] + [`store_metrics`]: Prometheus on a separate port; [`client`]: the CLI's gRPC client commands.
//! - [`log_limit`]: repeated request-error log lines are rate limited (and counted).

pub mod client;
pub mod codec;
pub mod config;
pub mod conn;
pub mod core;
pub mod decode;
pub mod demo;
pub mod engine;
pub mod error;
pub mod log_limit;
pub mod metrics;
pub mod queue;
pub mod readiness;
pub mod server;
pub mod service;
pub mod store;
pub mod store_metrics;
pub mod validation;
pub mod worker;

pub use config::{Config, ServeArgs};
pub use error::{Error, Result};
pub use queue::Gate;
pub use server::{serve, shutdown_signal, Hooks, Listeners, CATALOG_SERVICE, RECOMMENDER_SERVICE};

/// Code generated from `proto/lavic/v1/*.proto` (package `lavic.v1`): messages, the
/// `recommender_client` / `catalog_client` clients and the server traits.
pub mod proto {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("lavic.v1");

    /// Encoded descriptor set of the lavic protos (served by reflection).
    pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/lavic_v1_descriptor.bin"));
}
