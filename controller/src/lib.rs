//! The Sluice controller as a library: `main.rs` only parses the command line and calls in.
//!
//! - [`cli`]: the commands (`run`, `crd`, `validate`, `doctor`).
//! - [`run`](mod@run): the runtime: watches, controllers per namespace, leader election,
//!   shutdown.
//! - [`reconcile`]: one StreamJob, in phases: dereference → validate → build → apply →
//!   orphans → status.
//! - [`intake`]: a new job's first status, written ahead of the reconcile queue.
//! - [`build`]: the pure builders of every child object.
//! - [`cache`]: what the watches know of the children: which applies a reconcile can skip,
//!   which child changes trigger one.
//! - [`status`]: the pure status decision (phase, kstatus conditions, transitions).
//! - [`names`]: the names and labels of the children.
//! - [`spec_hash`](mod@spec_hash): which spec the workers run.
//! - [`context`]: what every reconcile is handed: client, recorder, metrics, backoff,
//!   settings.
//! - [`error`]: the controller's errors; each has a kind that labels metrics and events.
//! - [`backoff`]: per-job exponential backoff after failures.
//! - [`metrics`], [`http`], [`telemetry`]: metrics, health endpoints, logs.
//!
//! - [`lifecycle`]: how a change reaches the workers: classify, the upgrade state machine,
//!   the workers' admin API.
//! - [`autoscaler`]: parallelism from Kafka lag and the workers' busy time: sample,
//!   window, decide (docs/architecture.md, "The autoscaler").

pub mod autoscaler;
pub mod backoff;
pub mod build;
pub mod cache;
pub mod cli;
pub mod context;
pub mod error;
pub mod http;
pub mod intake;
pub mod lifecycle;
pub mod metrics;
pub mod names;
pub mod reconcile;
pub mod run;
pub mod spec_hash;
pub mod status;
pub mod telemetry;
pub mod webhook;

#[cfg(test)]
mod fixtures;

pub use context::Context;
pub use error::{Error, ErrorKind};
