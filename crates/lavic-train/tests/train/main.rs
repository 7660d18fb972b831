//! lavic-train's integration tests: one binary (house style 15), one module per behaviour, all on
//! the tiny fixtures in `tests/fixtures` (CPU, f32).

mod common;

mod attributes;
mod bad_input;
mod checkpoint;
mod forward;
mod generate;
mod golden;
mod stage0;
mod state;
