//! The server's integration tests, as one test binary (it links once: fourteen binaries of the
//! whole server filled CI's disk). One module per behaviour; each test starts the real server
//! (or the `lavic` binary) on 127.0.0.1, with the fixture demo unless it says otherwise
//! (`demo_serve` starts the default world demo), and stops it. `common` holds the
//! shared helpers (also used by lavic-bench's ghz-report test).

mod common;

mod admission;
mod binary;
mod catalog_fingerprint;
mod catalog_on_disk;
mod catalog_service;
mod connections;
mod deadline;
mod default_dtype;
mod demo_serve;
mod demo_train;
mod demo_world;
mod decompression_bomb;
mod empty_token;
mod eval_baseline;
mod eval_metrics;
mod fleet;
mod health;
mod invalid_argument;
mod log_injection;
mod overload;
mod prompt_reference;
mod read_only_catalog;
mod recommend;
mod reflection;
mod sigterm;
mod smaller_defects;
mod status_codes;
mod tls;
mod train;
mod train_base;
mod unknown_ids;
