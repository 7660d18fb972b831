//! The Redis store against a real `redis-server` (Debian's package; each test starts its own on a
//! free loopback port with a temporary folder, AOF on, and stops it): one binary, one module per
//! behaviour.

#[path = "../common/mod.rs"]
mod common;

mod atomicity;
mod backend;
mod corruption;
mod durability;
mod outage;
mod push;
mod support;
mod visibility;
