//! The store interface keyed state lives behind, and an in-memory implementation for
//! tests. The RocksDB implementation is in [`super::rocksdb`].

use std::collections::BTreeMap;
use std::ops::Bound;

/// A family of keys: window state, or timers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Column {
    /// Window state, by key group, key and window.
    Windows,
    /// Timers, by time.
    Timers,
}

impl Column {
    /// The RocksDB column family.
    pub fn name(self) -> &'static str {
        match self {
            Self::Windows => "windows",
            Self::Timers => "timers",
        }
    }
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

    /// Applies a batch atomically.
    fn write(&mut self, batch: StateBatch) -> Result<(), StateError>;

    /// Number of entries in `column` (a full scan: for tests and diagnostics).
    fn count(&self, column: Column) -> Result<u64, StateError>;
}

/// Keyed state in ordered maps, for tests.
#[derive(Debug, Default)]
pub struct MemoryStore {
    columns: BTreeMap<Column, BTreeMap<Vec<u8>, Vec<u8>>>,
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
