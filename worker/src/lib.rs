//! The Sluice worker: runs a StreamJob's pipeline. This crate is the engine (shared by
//! Kafka mode and local mode) and local mode.
//!
//! - [`pipeline`]: compiling the pipeline once (CEL and the native fast path) and the
//!   operators: filter, map, keyBy, the window operator and the aggregates.
//! - [`time`]: event time, watermarks, window assignment and session merging.
//! - [`state`]: keyed state in RocksDB by key group, behind a store interface, with a
//!   bounded hot-state cache and timers.
//! - [`io`]: sources and sinks (files in local mode), dead-letter and late outputs.
//! - [`engine`]: drives records through all of it.
//! - [`local`]: `sluice-worker local`.
//! - [`run`]: `sluice-worker run`, Kafka mode, exactly once; [`admin`] its admin API.
//! - [`savepoint`]: savepoints: taking, restoring at any parallelism, checking.
//!
//! How it works, with the formats: `docs/worker.md`.

pub mod admin;
pub mod cli;
pub mod commit;
pub mod cpu;
pub mod dead_letter;
pub mod engine;
pub mod exchange;
pub mod io;
pub mod local;
pub mod metrics;
pub mod ownership;
pub mod pipeline;
pub mod run;
pub mod savepoint;
pub mod state;
pub mod time;

#[cfg(test)]
pub(crate) mod testing {
    /// A small valid manifest whose first step is `filter: <source>`.
    pub fn manifest_with_filter(source: &str) -> String {
        format!(
            r#"
apiVersion: sluice.dev/v1alpha1
kind: StreamJob
metadata:
  name: test
spec:
  kafka:
    bootstrapServers: kafka:9092
  source:
    topics: [in]
    eventTime:
      field: ts
  pipeline:
    - filter: {source:?}
  sink:
    topic: out
"#
        )
    }
}
