//! Where records come from and where results, dead letters and late events go.
//!
//! Sources hand the engine [`SourceRecord`]s (bytes with a partition and a position);
//! sinks take [`OutputRecord`]s (results) and [`Rejected`] records (dead letters and late
//! events, with their original bytes). Local mode has file implementations
//! ([`file`]); the Kafka ones follow the same traits.

pub mod file;
pub mod kafka;
pub mod memory;

use crate::dead_letter::DeadLetterReason;
use crate::time::watermark::PartitionId;

/// Where a record came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Position {
    /// A line of a local input (1-based).
    Line(u64),
    /// A Kafka record.
    Kafka {
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// Offset.
        offset: i64,
    },
}

impl Position {
    /// The record's offset in its partition: a Kafka offset, or the line's index from 0.
    pub fn offset(&self) -> i64 {
        match self {
            Self::Line(line) => i64::try_from(*line).unwrap_or(i64::MAX).saturating_sub(1),
            Self::Kafka { offset, .. } => *offset,
        }
    }
}

/// One record read from a source.
#[derive(Clone, Copy, Debug)]
pub struct SourceRecord<'a> {
    /// The source partition, for watermarks.
    pub partition: PartitionId,
    /// Where it came from.
    pub position: &'a Position,
    /// Its bytes (a JSON object, hopefully).
    pub payload: &'a [u8],
}

/// A source of records, read one at a time (the record borrows the source's buffer).
pub trait Source {
    /// The next record, or `None` at the end of a bounded input.
    fn next_record(&mut self) -> anyhow::Result<Option<SourceRecord<'_>>>;
}

/// A result for the sink topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputRecord {
    /// The record key (the sink key expression's value, or the window key), as bytes.
    pub key: Option<Vec<u8>>,
    /// The record value, a JSON object.
    pub value: Vec<u8>,
}

/// Why a record was set aside.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RejectReason {
    /// A dead letter.
    DeadLetter(DeadLetterReason),
    /// Later than its windows' allowed lateness.
    Late,
}

impl RejectReason {
    /// The kebab-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::DeadLetter(reason) => reason.as_str(),
            Self::Late => crate::dead_letter::LATE_REASON,
        }
    }
}

/// A dead letter or a late event: the original bytes, untouched, and why.
#[derive(Clone, Copy, Debug)]
pub struct Rejected<'a> {
    /// Why.
    pub reason: RejectReason,
    /// What exactly, for people.
    pub detail: &'a str,
    /// Where the record came from (`None` for a window result that failed after the
    /// window, whose bytes are the result's).
    pub position: Option<&'a Position>,
    /// The original bytes.
    pub original: &'a [u8],
}

/// Where the engine's outputs go.
pub trait Sink {
    /// A result.
    fn result(&mut self, record: OutputRecord) -> anyhow::Result<()>;
    /// A dead letter.
    fn dead_letter(&mut self, rejected: Rejected<'_>) -> anyhow::Result<()>;
    /// A late event.
    fn late(&mut self, rejected: Rejected<'_>) -> anyhow::Result<()>;
    /// Makes everything written so far durable (at a checkpoint and at the end).
    fn flush(&mut self) -> anyhow::Result<()>;
}
