//! Keyed state in RocksDB, on the state directory (the pod's PersistentVolume; a
//! temporary directory in local mode).
//!
//! Writes skip RocksDB's write-ahead log: durability comes from checkpoints (the cache
//! and timers are written in one batch, then the store is flushed), not from each write.

use std::path::Path;

use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, DB, Direction, IteratorMode, Options,
    ReadOptions, SliceTransform, WriteBatch, WriteOptions,
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

/// The block cache shared by the column families (data, index and filter blocks).
const BLOCK_CACHE_BYTES: usize = 32 << 20;

/// The part of a window key naming its key (key group, length, key): the prefix that
/// bloom filters index, so looking up a key with no state skips most of the store.
fn window_key_prefix(key: &[u8]) -> &[u8] {
    match key.get(2..6).and_then(|length| length.try_into().ok()) {
        Some(length) => {
            let end = 6 + usize::try_from(u32::from_be_bytes(length)).unwrap_or(usize::MAX);
            key.get(..end).unwrap_or(key)
        }
        None => key,
    }
}

fn has_window_key_prefix(key: &[u8]) -> bool {
    key.get(2..6)
        .and_then(|length| length.try_into().ok())
        .is_some_and(|length| {
            key.len() >= 6 + usize::try_from(u32::from_be_bytes(length)).unwrap_or(usize::MAX)
        })
}

impl RocksDbStore {
    /// Opens (or creates) the store in `directory`.
    pub fn open(directory: &Path) -> Result<Self, StateError> {
        let mut options = Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        // Memory is bounded: memtables 2 column families x 2 buffers x 32 MiB at most,
        // plus the block cache, which also holds index and filter blocks.
        options.set_write_buffer_size(32 << 20);
        options.set_max_write_buffer_number(2);
        options.set_compression_type(rocksdb::DBCompressionType::Lz4);
        let cache = Cache::new_lru_cache(BLOCK_CACHE_BYTES);
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&cache);
        table.set_cache_index_and_filter_blocks(true);
        table.set_pin_l0_filter_and_index_blocks_in_cache(true);
        let mut timers = options.clone();
        timers.set_block_based_table_factory(&table);
        let mut windows = options.clone();
        table.set_bloom_filter(10.0, false);
        table.set_whole_key_filtering(false);
        windows.set_block_based_table_factory(&table);
        windows.set_prefix_extractor(SliceTransform::create(
            "sluice.window-key-prefix",
            window_key_prefix,
            Some(has_window_key_prefix),
        ));
        windows.set_memtable_prefix_bloom_ratio(0.1);
        let columns = [
            ColumnFamilyDescriptor::new(Column::Windows.name(), windows),
            ColumnFamilyDescriptor::new(Column::Timers.name(), timers),
        ];
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
        read_options.set_prefix_same_as_start(column == Column::Windows);
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

    fn write(&mut self, mut batch: StateBatch) -> Result<(), StateError> {
        // In key order, memtable inserts reuse their position in the skip list (a stable
        // sort keeps the order of operations on the same key).
        batch
            .operations
            .sort_by(|left, right| (left.0, &left.1).cmp(&(right.0, &right.1)));
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
        use crate::state::layout;
        use crate::time::window::WindowRange;
        let directory = tempfile::tempdir().unwrap();
        let mut store = RocksDbStore::open(directory.path()).unwrap();
        let window_key = |group, key: &[u8], start| {
            let mut out = Vec::new();
            layout::window_key(
                group,
                key,
                WindowRange {
                    start,
                    end: start + 10,
                },
                &mut out,
            );
            out
        };
        let mut batch = StateBatch::default();
        for (group, key, start) in [
            (1, &b"a"[..], 0),
            (1, b"a", 10),
            (1, b"ab", 0),
            (2, b"a", 0),
            (1, b"b", 0),
        ] {
            batch.put(
                Column::Windows,
                window_key(group, key, start),
                b"v".to_vec(),
            );
        }
        batch.put(Column::Timers, b"t1".to_vec(), Vec::new());
        batch.put(Column::Timers, b"t2".to_vec(), Vec::new());
        batch.put(Column::Timers, b"t3".to_vec(), Vec::new());
        store.write(batch).unwrap();
        // Through the memtable, then through SST files with their bloom filters.
        for flushed in [false, true] {
            if flushed {
                store.flush().unwrap();
            }
            let mut prefix = Vec::new();
            layout::key_prefix(1, b"a", &mut prefix);
            let found: Vec<Vec<u8>> = store
                .scan_prefix(Column::Windows, &prefix)
                .unwrap()
                .into_iter()
                .map(|(key, _)| key)
                .collect();
            assert_eq!(found, vec![window_key(1, b"a", 0), window_key(1, b"a", 10)]);
            layout::key_prefix(1, b"zz", &mut prefix);
            assert!(
                store
                    .scan_prefix(Column::Windows, &prefix)
                    .unwrap()
                    .is_empty()
            );
        }
        assert_eq!(
            window_key_prefix(&window_key(1, b"ab", 0)),
            &window_key(1, b"ab", 0)[..8]
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
        deletes.delete(Column::Windows, window_key(1, b"ab", 0));
        store.write(deletes).unwrap();
        assert_eq!(store.count(Column::Windows).unwrap(), 4);
        assert_eq!(prefix_successor(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_successor(b"\xff"), None);
    }
}
