//! Outputs collected in memory, for tests (local mode's promise: a pipeline can be
//! tested with no broker, as with Kafka Streams' TopologyTestDriver).

use serde_json::Value;

use super::{OutputRecord, Position, Rejected, Sink};

/// A set-aside record as collected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CollectedRejected {
    /// The reason's name.
    pub reason: String,
    /// The detail.
    pub detail: String,
    /// Where it came from.
    pub position: Option<Position>,
    /// The original bytes.
    pub original: Vec<u8>,
}

/// Collects every output.
#[derive(Clone, Debug, Default)]
pub struct MemorySink {
    /// Results, in order.
    pub results: Vec<OutputRecord>,
    /// Dead letters, in order.
    pub dead_letters: Vec<CollectedRejected>,
    /// Late events, in order.
    pub late: Vec<CollectedRejected>,
}

impl MemorySink {
    /// The results as JSON values.
    pub fn result_values(&self) -> Vec<Value> {
        self.results
            .iter()
            .map(|record| serde_json::from_slice(&record.value).expect("results are JSON"))
            .collect()
    }
}

fn collect(rejected: Rejected<'_>) -> CollectedRejected {
    CollectedRejected {
        reason: rejected.reason.as_str().to_string(),
        detail: rejected.detail.to_string(),
        position: rejected.position.cloned(),
        original: rejected.original.to_vec(),
    }
}

impl Sink for MemorySink {
    fn result(&mut self, record: OutputRecord) -> anyhow::Result<()> {
        self.results.push(record);
        Ok(())
    }

    fn dead_letter(&mut self, rejected: Rejected<'_>) -> anyhow::Result<()> {
        self.dead_letters.push(collect(rejected));
        Ok(())
    }

    fn late(&mut self, rejected: Rejected<'_>) -> anyhow::Result<()> {
        self.late.push(collect(rejected));
        Ok(())
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        Ok(())
    }
}
