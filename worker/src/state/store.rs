//! The store interface keyed state lives behind, and an in-memory implementation for
//! tests. The RocksDB implementation is in [`super::rocksdb`].

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::PathBuf;
use std::sync::mpsc::{self, SyncSender};
use std::thread::JoinHandle;

/// A family of keys (see `state::format`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Column {
    /// Window state, by key group, key and window.
    Windows,
    /// Timers, by time.
    Timers,
    /// What the state is: format version, key groups, aggregates, the checkpoint record.
    Meta,
}

impl Column {
    /// Every column.
    pub const ALL: [Column; 3] = [Column::Windows, Column::Timers, Column::Meta];

    /// The RocksDB column family.
    pub fn name(self) -> &'static str {
        match self {
            Self::Windows => "windows",
            Self::Timers => "timers",
            Self::Meta => "meta",
        }
    }
}

/// A checkpoint a store holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct StoredCheckpoint {
    /// Its number.
    pub id: u64,
    /// Whether it was marked complete (its Kafka transaction committed).
    pub complete: bool,
}

/// A failure of the store (fatal for the worker: state must not be lost silently).
#[derive(Debug, thiserror::Error)]
#[error("failed to {action} in the state store: {message}")]
pub struct StateError {
    /// What was attempted.
    pub action: &'static str,
    /// The store's message.
    pub message: String,
}

/// Keys and values found by a scan, in key order.
pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// Writes applied atomically.
#[derive(Debug, Default)]
pub struct StateBatch {
    /// Puts (`Some`) and deletes (`None`), in order.
    pub operations: Vec<(Column, Vec<u8>, Option<Vec<u8>>)>,
}

impl StateBatch {
    /// Adds a put.
    pub fn put(&mut self, column: Column, key: Vec<u8>, value: Vec<u8>) {
        self.operations.push((column, key, Some(value)));
    }

    /// Adds a delete.
    pub fn delete(&mut self, column: Column, key: Vec<u8>) {
        self.operations.push((column, key, None));
    }

    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.operations.is_empty()
    }

    /// Number of operations.
    pub fn len(&self) -> usize {
        self.operations.len()
    }
}

/// Where keyed state lives: ordered keys and values in columns.
pub trait StateStore {
    /// Every entry of `column` whose key starts with `prefix`, in key order.
    fn scan_prefix(&self, column: Column, prefix: &[u8]) -> Result<Entries, StateError>;

    /// Up to `limit` keys of `column` in `[from, to)` (`to` `None`: unbounded), in order.
    fn scan_keys(
        &self,
        column: Column,
        from: &[u8],
        to: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Vec<u8>>, StateError>;

    /// Calls `visit` with every key of `column`, in order: a pass over a whole column
    /// without a copy of each key (a worker's start counting its windows).
    fn visit_keys(
        &self,
        column: Column,
        visit: &mut dyn FnMut(&[u8]) -> Result<(), StateError>,
    ) -> Result<(), StateError> {
        const PAGE: usize = 65_536;
        let mut from = Vec::new();
        loop {
            let keys = self.scan_keys(column, &from, None, PAGE)?;
            for key in &keys {
                visit(key)?;
            }
            match keys.last() {
                Some(last) if keys.len() == PAGE => {
                    from.clone_from(last);
                    from.push(0);
                }
                _ => return Ok(()),
            }
        }
    }

    /// Up to `limit` entries of `column` with keys in `[from, to)` (`to` `None`:
    /// unbounded), in order.
    fn scan_range(
        &self,
        column: Column,
        from: &[u8],
        to: Option<&[u8]>,
        limit: usize,
    ) -> Result<Entries, StateError>;

    /// The value of one key.
    fn get(&self, column: Column, key: &[u8]) -> Result<Option<Vec<u8>>, StateError>;

    /// The values of `keys`, which are in ascending order (repeats allowed), one per key.
    /// A store reads them in one forward pass (a range scan that skips what lies between),
    /// so keys close together cost a step each rather than a seek each.
    fn get_sorted(
        &self,
        column: Column,
        keys: &[Vec<u8>],
    ) -> Result<Vec<Option<Vec<u8>>>, StateError> {
        keys.iter().map(|key| self.get(column, key)).collect()
    }

    /// Applies a batch atomically.
    fn write(&mut self, batch: StateBatch) -> Result<(), StateError>;

    /// Deletes every entry of `column` with a key in `[from, to)`.
    fn delete_range(&mut self, column: Column, from: &[u8], to: &[u8]) -> Result<(), StateError>;

    /// Deletes every entry of `column`.
    fn clear(&mut self, column: Column) -> Result<(), StateError> {
        self.delete_range(column, &[], &[0xff; 32])
    }

    /// Starts adding keys with empty values to `column` in bulk (a worker's start
    /// rebuilding its timers): [`BulkLoad::add`] hands over runs of keys, which are sorted
    /// (and, by a store with table files, written as one each) on a thread of their own
    /// while the caller goes on; [`Self::finish_bulk_load`] puts them in the store.
    fn bulk_load(&self, column: Column) -> Result<BulkLoad, StateError> {
        BulkLoad::new(column, Box::new(|keys| Ok(LoadedRun::Keys(keys))))
    }

    /// Ends a bulk load: its keys are in the store, newer than anything written before.
    fn finish_bulk_load(&mut self, load: BulkLoad) -> Result<(), StateError> {
        let (column, runs) = load.finish()?;
        let mut batch = StateBatch::default();
        for run in runs {
            match run {
                LoadedRun::Keys(keys) => {
                    for key in keys {
                        batch.put(column, key, Vec::new());
                    }
                }
                LoadedRun::TableFile(path) => {
                    return Err(StateError {
                        action: "finish a bulk load",
                        message: format!(
                            "this store cannot ingest the table file {}",
                            path.display()
                        ),
                    });
                }
            }
        }
        self.write(batch)
    }

    /// Number of entries in `column` (a full scan: for tests and diagnostics).
    fn count(&self, column: Column) -> Result<u64, StateError>;

    /// About how many bytes the state takes on disk.
    fn size_bytes(&self) -> u64;

    /// Makes a restorable copy of everything written so far, numbered `id`, not yet
    /// complete.
    fn create_checkpoint(&mut self, id: u64) -> Result<(), StateError>;

    /// Marks checkpoint `id` complete and discards every older one: from now on a
    /// restore returns to it.
    fn complete_checkpoint(&mut self, id: u64) -> Result<(), StateError>;

    /// Discards checkpoint `id` (one whose transaction did not commit).
    fn discard_checkpoint(&mut self, id: u64) -> Result<(), StateError>;

    /// The checkpoints held, oldest first.
    fn checkpoints(&self) -> Result<Vec<StoredCheckpoint>, StateError>;

    /// Replaces everything in the store by the content of checkpoint `id`.
    fn restore_checkpoint(&mut self, id: u64) -> Result<(), StateError>;
}

/// A sorted run of keys of a [`BulkLoad`], as the store's writer left it.
#[derive(Debug)]
pub enum LoadedRun {
    /// In memory: keys in order, without repeats.
    Keys(Vec<Vec<u8>>),
    /// A table file, to be ingested.
    TableFile(PathBuf),
}

/// What writes one sorted run (keys in order, without repeats) of a [`BulkLoad`].
pub type RunWriter = Box<dyn FnMut(Vec<Vec<u8>>) -> Result<LoadedRun, StateError> + Send>;

/// Keys being added to one column in bulk ([`StateStore::bulk_load`]). Each run handed
/// over is sorted and written on the load's own thread while the caller prepares the
/// next; [`Self::add`] waits while that thread is busy, so at most two runs are in memory.
pub struct BulkLoad {
    column: Column,
    runs: Option<SyncSender<Vec<Vec<u8>>>>,
    writer: Option<JoinHandle<Result<Vec<LoadedRun>, StateError>>>,
}

impl BulkLoad {
    /// A load into `column` whose runs `write_run` writes.
    pub fn new(column: Column, mut write_run: RunWriter) -> Result<Self, StateError> {
        let (runs, received) = mpsc::sync_channel::<Vec<Vec<u8>>>(0);
        let writer = std::thread::Builder::new()
            .name("sluice-bulk-load".into())
            .spawn(move || {
                let mut loaded = Vec::new();
                for mut keys in received {
                    keys.sort_unstable();
                    keys.dedup();
                    if !keys.is_empty() {
                        loaded.push(write_run(keys)?);
                    }
                }
                Ok(loaded)
            })
            .map_err(|error| StateError {
                action: "start a bulk load",
                message: error.to_string(),
            })?;
        Ok(Self {
            column,
            runs: Some(runs),
            writer: Some(writer),
        })
    }

    /// Hands over a run of keys, in any order (repeats allowed).
    pub fn add(&mut self, keys: Vec<Vec<u8>>) -> Result<(), StateError> {
        if keys.is_empty() {
            return Ok(());
        }
        let sent = self
            .runs
            .as_ref()
            .is_some_and(|runs| runs.send(keys).is_ok());
        if sent {
            return Ok(());
        }
        // The thread stopped: its error says why.
        self.join().and_then(|_| {
            Err(StateError {
                action: "add to a bulk load",
                message: "its writer stopped".into(),
            })
        })
    }

    fn join(&mut self) -> Result<Vec<LoadedRun>, StateError> {
        self.runs = None;
        match self.writer.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(StateError {
                action: "write a bulk load",
                message: "its thread panicked".into(),
            }),
            None => Err(StateError {
                action: "write a bulk load",
                message: "it was finished already".into(),
            }),
        }
    }

    /// The column and the runs written, in the order they were handed over, once the
    /// last is written.
    pub fn finish(mut self) -> Result<(Column, Vec<LoadedRun>), StateError> {
        let runs = self.join()?;
        Ok((self.column, runs))
    }
}

/// The least key greater than every key starting with `prefix`, if any.
pub fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut upper = prefix.to_vec();
    while let Some(last) = upper.pop() {
        if last < u8::MAX {
            upper.push(last + 1);
            return Some(upper);
        }
    }
    None
}

type Columns = BTreeMap<Column, BTreeMap<Vec<u8>, Vec<u8>>>;

/// Keyed state in ordered maps, for tests. Checkpoints are copies.
#[derive(Debug, Default)]
pub struct MemoryStore {
    columns: Columns,
    checkpoints: BTreeMap<u64, (Columns, bool)>,
}

impl StateStore for MemoryStore {
    fn scan_prefix(&self, column: Column, prefix: &[u8]) -> Result<Entries, StateError> {
        let Some(entries) = self.columns.get(&column) else {
            return Ok(Vec::new());
        };
        Ok(entries
            .range::<[u8], _>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(|(key, _)| key.starts_with(prefix))
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect())
    }

    fn scan_keys(
        &self,
        column: Column,
        from: &[u8],
        to: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Vec<u8>>, StateError> {
        let Some(entries) = self.columns.get(&column) else {
            return Ok(Vec::new());
        };
        let upper = to.map_or(Bound::Unbounded, Bound::Excluded);
        Ok(entries
            .range::<[u8], _>((Bound::Included(from), upper))
            .take(limit)
            .map(|(key, _)| key.clone())
            .collect())
    }

    fn scan_range(
        &self,
        column: Column,
        from: &[u8],
        to: Option<&[u8]>,
        limit: usize,
    ) -> Result<Entries, StateError> {
        let Some(entries) = self.columns.get(&column) else {
            return Ok(Vec::new());
        };
        let upper = to.map_or(Bound::Unbounded, Bound::Excluded);
        Ok(entries
            .range::<[u8], _>((Bound::Included(from), upper))
            .take(limit)
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect())
    }

    fn get(&self, column: Column, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        Ok(self
            .columns
            .get(&column)
            .and_then(|entries| entries.get(key))
            .cloned())
    }

    fn delete_range(&mut self, column: Column, from: &[u8], to: &[u8]) -> Result<(), StateError> {
        if let Some(entries) = self.columns.get_mut(&column) {
            let doomed: Vec<Vec<u8>> = entries
                .range::<[u8], _>((Bound::Included(from), Bound::Excluded(to)))
                .map(|(key, _)| key.clone())
                .collect();
            for key in doomed {
                entries.remove(&key);
            }
        }
        Ok(())
    }

    fn size_bytes(&self) -> u64 {
        self.columns
            .values()
            .flat_map(|entries| entries.iter())
            .map(|(key, value)| (key.len() + value.len()) as u64)
            .sum()
    }

    fn create_checkpoint(&mut self, id: u64) -> Result<(), StateError> {
        self.checkpoints.insert(id, (self.columns.clone(), false));
        Ok(())
    }

    fn complete_checkpoint(&mut self, id: u64) -> Result<(), StateError> {
        let Some((_, complete)) = self.checkpoints.get_mut(&id) else {
            return Err(StateError {
                action: "complete a checkpoint",
                message: format!("there is no checkpoint {id}"),
            });
        };
        *complete = true;
        self.checkpoints.retain(|held, _| *held >= id);
        Ok(())
    }

    fn discard_checkpoint(&mut self, id: u64) -> Result<(), StateError> {
        self.checkpoints.remove(&id);
        Ok(())
    }

    fn checkpoints(&self) -> Result<Vec<StoredCheckpoint>, StateError> {
        Ok(self
            .checkpoints
            .iter()
            .map(|(id, (_, complete))| StoredCheckpoint {
                id: *id,
                complete: *complete,
            })
            .collect())
    }

    fn restore_checkpoint(&mut self, id: u64) -> Result<(), StateError> {
        let (columns, _) = self.checkpoints.get(&id).ok_or_else(|| StateError {
            action: "restore a checkpoint",
            message: format!("there is no checkpoint {id}"),
        })?;
        self.columns = columns.clone();
        Ok(())
    }

    fn write(&mut self, batch: StateBatch) -> Result<(), StateError> {
        for (column, key, value) in batch.operations {
            let entries = self.columns.entry(column).or_default();
            match value {
                Some(value) => {
                    entries.insert(key, value);
                }
                None => {
                    entries.remove(&key);
                }
            }
        }
        Ok(())
    }

    fn count(&self, column: Column) -> Result<u64, StateError> {
        Ok(self
            .columns
            .get(&column)
            .map_or(0, |entries| entries.len() as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bulk_load_puts_its_keys_once_each_in_order() {
        let mut store = MemoryStore::default();
        let mut batch = StateBatch::default();
        batch.put(Column::Timers, b"b".to_vec(), b"old".to_vec());
        store.write(batch).unwrap();
        let mut load = store.bulk_load(Column::Timers).unwrap();
        load.add(vec![b"c".to_vec(), b"b".to_vec(), b"c".to_vec()])
            .unwrap();
        load.add(vec![b"a".to_vec()]).unwrap();
        store.finish_bulk_load(load).unwrap();
        assert_eq!(
            store.scan_range(Column::Timers, b"", None, 10).unwrap(),
            vec![
                (b"a".to_vec(), Vec::new()),
                (b"b".to_vec(), Vec::new()),
                (b"c".to_vec(), Vec::new()),
            ]
        );
    }

    #[test]
    fn a_writer_that_fails_fails_the_load_with_its_error() {
        let failing: RunWriter = Box::new(|_| {
            Err(StateError {
                action: "write a table file to ingest",
                message: "no space left on device".into(),
            })
        });
        let mut load = BulkLoad::new(Column::Timers, failing).unwrap();
        // The first run is taken, and fails; a later add or the finish says so.
        load.add(vec![b"a".to_vec()]).unwrap();
        let error = match load.add(vec![b"b".to_vec()]) {
            Err(error) => error,
            Ok(()) => load.finish().unwrap_err(),
        };
        assert_eq!(
            error.to_string(),
            "failed to write a table file to ingest in the state store: no space left on device"
        );
    }
}
