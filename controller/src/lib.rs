//! The Sluice controller as a library: `main.rs` only parses the command line and calls in.
//!
//! - [`cli`]: the commands (`crd`, `validate`, `doctor`).
//! - [`context`]: what every reconcile is handed: the client, the metrics, the settings.
//! - [`error`]: the controller's errors; each has a kind that labels metrics and events.
//! - [`metrics`]: the controller's Prometheus metrics.
//!
//! The reconciler (`reconcile.rs`: dereference → validate → build → apply → orphans →
//! status), the pure builders of every child object (`build/`), the change
//! classification, the upgrade state machine (`lifecycle/`) and the autoscaler
//! (`autoscaler/`) are planned (docs/architecture.md, "Roadmap").

pub mod cli;
pub mod context;
pub mod error;
pub mod metrics;

pub use context::Context;
pub use error::{Error, ErrorKind};
