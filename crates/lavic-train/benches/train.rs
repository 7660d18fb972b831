//! Placeholder until the training benchmark lands (see docs/TRAINING.md).
fn main() {}
