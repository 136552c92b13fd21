//! Event time: reading it from events, watermarks, and the windows events fall into.
//!
//! Every time here is a count of milliseconds since the Unix epoch (UTC), an `i64`.
//! Nothing in this module reads a clock: processing time, where needed (idle
//! partitions), is handed in by the caller, so every decision is deterministic.

pub mod event_time;
pub mod watermark;
pub mod window;

/// Milliseconds since the Unix epoch, UTC.
pub type Millis = i64;

/// Milliseconds of a `std::time::Duration`, saturating.
pub fn duration_millis(duration: std::time::Duration) -> Millis {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}
