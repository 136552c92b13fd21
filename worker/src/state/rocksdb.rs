//! Keyed state in RocksDB, on the state directory (the pod's PersistentVolume; a
//! temporary directory in local mode).
//!
//! Writes skip RocksDB's write-ahead log: durability comes from checkpoints (the cache
//! and timers are written in one batch, then the store is flushed), not from each write.

use std::path::Path;

use rocksdb::{
    ColumnFamilyDescriptor, DB, Direction, IteratorMode, Options, ReadOptions, WriteBatch,
    WriteOptions,
};

use super::store::{Column, Entries, StateBatch, StateError, StateStore};

/// A RocksDB database with one column family per [`Column`].
pub struct RocksDbStore {
    db: DB,
    write_options: WriteOptions,
}

fn failed(action: &'static str) -> impl Fn(rocksdb::Error) -> StateError {
    move |error| StateError {
        action,
        message: error.to_string(),
    }
}

impl RocksDbStore {
    /// Opens (or creates) the store in `directory`.
    pub fn open(directory: &Path) -> Result<Self, StateError> {
        let mut options = Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        // Memtables bound the store's memory: 2 columns x 2 buffers x 32 MiB at most.
        options.set_write_buffer_size(32 << 20);
        options.set_max_write_buffer_number(2);
        options.set_compression_type(rocksdb::DBCompressionType::Lz4);
        let columns = [Column::Windows, Column::Timers]
            .map(|column| ColumnFamilyDescriptor::new(column.name(), options.clone()));
        let db = DB::open_cf_descriptors(&options, directory, columns)
            .map_err(failed("open the database"))?;
        let mut write_options = WriteOptions::default();
        write_options.disable_wal(true);
        Ok(Self { db, write_options })
    }

    fn column(&self, column: Column) -> Result<&rocksdb::ColumnFamily, StateError> {
        self.db.cf_handle(column.name()).ok_or_else(|| StateError {
            action: "find a column family",
            message: format!("no column family {}", column.name()),
        })
    }

    /// Flushes the memtables to disk (at a checkpoint).
    pub fn flush(&self) -> Result<(), StateError> {
        for column in [Column::Windows, Column::Timers] {
            self.db
                .flush_cf(self.column(column)?)
                .map_err(failed("flush"))?;
        }
        Ok(())
    }
}

impl StateStore for RocksDbStore {
    fn scan_prefix(&self, column: Column, prefix: &[u8]) -> Result<Entries, StateError> {
        let handle = self.column(column)?;
        let mut read_options = ReadOptions::default();
        read_options.set_iterate_lower_bound(prefix.to_vec());
        if let Some(upper) = prefix_successor(prefix) {
            read_options.set_iterate_upper_bound(upper);
        }
        let mut entries = Vec::new();
        for item in self.db.iterator_cf_opt(
            handle,
            read_options,
            IteratorMode::From(prefix, Direction::Forward),
        ) {
            let (key, value) = item.map_err(failed("scan state"))?;
            if !key.starts_with(prefix) {
                break;
            }
            entries.push((key.into_vec(), value.into_vec()));
        }
        Ok(entries)
    }

    fn scan_keys(
        &self,
        column: Column,
        from: &[u8],
        to: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Vec<u8>>, StateError> {
        let handle = self.column(column)?;
        let mut read_options = ReadOptions::default();
        read_options.set_iterate_lower_bound(from.to_vec());
        if let Some(to) = to {
            read_options.set_iterate_upper_bound(to.to_vec());
        }
        let mut keys = Vec::new();
        for item in self
            .db
            .iterator_cf_opt(
                handle,
                read_options,
                IteratorMode::From(from, Direction::Forward),
            )
            .take(limit)
        {
            let (key, _) = item.map_err(failed("scan timers"))?;
            keys.push(key.into_vec());
        }
        Ok(keys)
    }

    fn write(&mut self, batch: StateBatch) -> Result<(), StateError> {
        let mut write_batch = WriteBatch::default();
        let windows = self.column(Column::Windows)?;
        let timers = self.column(Column::Timers)?;
        for (column, key, value) in &batch.operations {
            let handle = match column {
                Column::Windows => windows,
                Column::Timers => timers,
            };
            match value {
                Some(value) => write_batch.put_cf(handle, key, value),
                None => write_batch.delete_cf(handle, key),
            }
        }
        self.db
            .write_opt(write_batch, &self.write_options)
            .map_err(failed("write a batch"))
    }

    fn count(&self, column: Column) -> Result<u64, StateError> {
        let handle = self.column(column)?;
        let mut count = 0;
        for item in self.db.iterator_cf(handle, IteratorMode::Start) {
            item.map_err(failed("count entries"))?;
            count += 1;
        }
        Ok(count)
    }
}

/// The least key greater than every key starting with `prefix`, if any.
fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut upper = prefix.to_vec();
    while let Some(last) = upper.pop() {
        if last < u8::MAX {
            upper.push(last + 1);
            return Some(upper);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scans_prefixes_and_ranges_and_counts() {
        let directory = tempfile::tempdir().unwrap();
        let mut store = RocksDbStore::open(directory.path()).unwrap();
        let mut batch = StateBatch::default();
        for key in [&b"a1"[..], b"a2", b"b1", b"a\xff"] {
            batch.put(Column::Windows, key.to_vec(), b"v".to_vec());
        }
        batch.put(Column::Timers, b"t1".to_vec(), Vec::new());
        batch.put(Column::Timers, b"t2".to_vec(), Vec::new());
        batch.put(Column::Timers, b"t3".to_vec(), Vec::new());
        store.write(batch).unwrap();
        let found: Vec<Vec<u8>> = store
            .scan_prefix(Column::Windows, b"a")
            .unwrap()
            .into_iter()
            .map(|(key, _)| key)
            .collect();
        assert_eq!(
            found,
            vec![b"a1".to_vec(), b"a2".to_vec(), b"a\xff".to_vec()]
        );
        assert_eq!(
            store
                .scan_keys(Column::Timers, b"t2", Some(b"t3"), 10)
                .unwrap(),
            vec![b"t2".to_vec()]
        );
        assert_eq!(
            store
                .scan_keys(Column::Timers, b"t", None, 2)
                .unwrap()
                .len(),
            2
        );
        let mut deletes = StateBatch::default();
        deletes.delete(Column::Windows, b"a2".to_vec());
        store.write(deletes).unwrap();
        assert_eq!(store.count(Column::Windows).unwrap(), 3);
        store.flush().unwrap();
        assert_eq!(prefix_successor(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_successor(b"\xff"), None);
    }
}
