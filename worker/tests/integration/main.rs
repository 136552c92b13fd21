//! The worker's integration tests, one test binary: each module was its own binary once,
//! and every change to the worker compiled and linked all ten again (bench/README.md,
//! "What CI spends compiling"). `cargo test --release --workspace --test integration <module>::`
//! runs one module.

mod common;

mod bounded_state;
mod cache_sizes;
mod checkpoints;
mod dead_letters;
mod examples;
mod idle_partitions;
mod in_process;
mod numeric;
mod properties;
mod savepoints;
