//! The exactly-once commit protocol's decisions (docs/architecture.md, "Exactly once"):
//! how a checkpoint is named in the offsets it commits, and, on start, whether a
//! checkpoint left pending by a crash was committed.
//!
//! Each checkpoint carries a token unique to it. The offsets sent to the Kafka transaction
//! carry `sluice:<id>:<token>` as their metadata, so after a crash the committed offsets
//! say exactly which checkpoint's transaction committed last, even when two checkpoints
//! have the same offsets (nothing was read between them, but windows fired).

use crate::state::format::{self, CheckpointRecord};
use crate::state::{Column, StateError, StateStore};

/// The prefix of the offset metadata the worker commits.
pub const METADATA_PREFIX: &str = "sluice:";

/// The metadata committed with the offsets of checkpoint `record`.
pub fn offset_metadata(record: &CheckpointRecord) -> String {
    format!("{METADATA_PREFIX}{}:{}", record.id, record.token)
}

/// The checkpoint id and token of committed offset metadata, when the worker wrote it.
pub fn parse_offset_metadata(metadata: &str) -> Option<(u64, &str)> {
    let rest = metadata.strip_prefix(METADATA_PREFIX)?;
    let (id, token) = rest.split_once(':')?;
    Some((id.parse().ok()?, token))
}

/// A token for a new checkpoint: unique across processes and restarts (the process id,
/// the wall clock and a counter are enough; nothing depends on its form).
pub fn new_token(counter: u64) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos());
    format!("{:x}-{nanos:x}-{counter:x}", std::process::id())
}

/// What to do with a pending checkpoint, given the metadata of the offsets committed for
/// the worker's partitions (`None` where a partition has no committed offset).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PendingOutcome {
    /// Its transaction committed: mark it complete and restore it.
    Committed,
    /// Its transaction did not commit: delete it.
    Aborted,
}

/// Decides whether the pending checkpoint `record` committed. A transaction commits the
/// offsets of all its partitions at once, so one partition carrying its token is proof.
pub fn pending_outcome(record: &CheckpointRecord, committed: &[Option<String>]) -> PendingOutcome {
    let proof = committed
        .iter()
        .flatten()
        .filter_map(|metadata| parse_offset_metadata(metadata))
        .any(|(id, token)| id == record.id && token == record.token);
    if proof {
        PendingOutcome::Committed
    } else {
        PendingOutcome::Aborted
    }
}

/// Reads the checkpoint record of the store's current content.
pub fn read_record(store: &dyn StateStore) -> Result<Option<CheckpointRecord>, StateError> {
    store
        .get(Column::Meta, format::META_CHECKPOINT)?
        .map(|bytes| {
            serde_json::from_slice(&bytes).map_err(|error| StateError {
                action: "read a checkpoint record",
                message: error.to_string(),
            })
        })
        .transpose()
}

/// Settles the checkpoints a crash left pending: each is restored just long enough to
/// read its record, then completed when `committed` (the metadata of the offsets
/// committed for the worker's partitions, read after initialising its transactions)
/// proves its transaction committed, and deleted otherwise. Returns the outcomes.
pub fn settle_pending(
    store: &mut dyn StateStore,
    committed: &[Option<String>],
) -> Result<Vec<(u64, PendingOutcome)>, StateError> {
    let mut outcomes = Vec::new();
    let pending: Vec<u64> = store
        .checkpoints()?
        .into_iter()
        .filter(|checkpoint| !checkpoint.complete)
        .map(|checkpoint| checkpoint.id)
        .collect();
    // Newest first: at most one can have committed (a checkpoint is created only after
    // the previous one completed); any older one left over is stale.
    let mut settled = false;
    for id in pending.into_iter().rev() {
        let outcome = if settled {
            PendingOutcome::Aborted
        } else {
            store.restore_checkpoint(id)?;
            match read_record(store)? {
                Some(record) => pending_outcome(&record, committed),
                None => PendingOutcome::Aborted,
            }
        };
        match outcome {
            PendingOutcome::Committed => {
                store.complete_checkpoint(id)?;
                settled = true;
            }
            PendingOutcome::Aborted => store.discard_checkpoint(id)?,
        }
        outcomes.push((id, outcome));
    }
    Ok(outcomes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{MemoryStore, StateBatch};

    fn record(id: u64, token: &str) -> CheckpointRecord {
        CheckpointRecord {
            id,
            token: token.into(),
            ..CheckpointRecord::default()
        }
    }

    #[test]
    fn a_pending_checkpoint_committed_only_when_its_token_was_committed() {
        let pending = record(7, "abc");
        let committed_by = |record: &CheckpointRecord| Some(offset_metadata(record));
        let cases = [
            (
                "its token on one partition",
                vec![committed_by(&pending), None],
                PendingOutcome::Committed,
            ),
            (
                "the previous checkpoint's token",
                vec![committed_by(&record(6, "xyz"))],
                PendingOutcome::Aborted,
            ),
            (
                "the same id from another run",
                vec![committed_by(&record(7, "other"))],
                PendingOutcome::Aborted,
            ),
            (
                "nothing committed yet",
                vec![None, None],
                PendingOutcome::Aborted,
            ),
            (
                "metadata of another program",
                vec![Some("offsets by someone".into())],
                PendingOutcome::Aborted,
            ),
        ];
        for (name, committed, expected) in cases {
            assert_eq!(pending_outcome(&pending, &committed), expected, "{name}");
        }
        assert_eq!(parse_offset_metadata("sluice:12:t-1"), Some((12, "t-1")));
        assert_eq!(parse_offset_metadata("sluice:x:t"), None);
    }

    #[test]
    fn settling_completes_the_committed_checkpoint_and_deletes_the_rest() {
        let mut store = MemoryStore::default();
        let write_record = |store: &mut MemoryStore, record: &CheckpointRecord| {
            let mut batch = StateBatch::default();
            batch.put(
                Column::Meta,
                format::META_CHECKPOINT.to_vec(),
                serde_json::to_vec(record).unwrap(),
            );
            store.write(batch).unwrap();
        };
        for (id, complete) in [(1, true), (2, false), (3, false)] {
            write_record(&mut store, &record(id, &format!("t{id}")));
            store.create_checkpoint(id).unwrap();
            if complete {
                store.complete_checkpoint(id).unwrap();
            }
        }
        // The transaction of 3 never committed; that of 2 did.
        let committed = [Some(offset_metadata(&record(2, "t2")))];
        let outcomes = settle_pending(&mut store, &committed).unwrap();
        assert_eq!(
            outcomes,
            vec![(3, PendingOutcome::Aborted), (2, PendingOutcome::Committed)]
        );
        let held: Vec<(u64, bool)> = store
            .checkpoints()
            .unwrap()
            .into_iter()
            .map(|checkpoint| (checkpoint.id, checkpoint.complete))
            .collect();
        assert_eq!(held, vec![(2, true)]);
    }
}
