//! Keyed state in RocksDB, on the state directory (the pod's PersistentVolume; a
//! temporary directory in local mode).
//!
//! The directory holds the live database (`live/`) and checkpoints (`checkpoints/`):
//! RocksDB checkpoints, hard links to the live database's immutable files plus copies of
//! its small mutable ones, as Flink does. A checkpoint is created as `<id>.pending` and
//! renamed `<id>` when complete (its Kafka transaction committed); a restore rebuilds
//! `live/` from a checkpoint the same way. Writes skip RocksDB's write-ahead log: the
//! live database is never trusted after a crash, only a checkpoint is, and a checkpoint
//! flushes the memtables first.

use std::fs;
use std::path::{Path, PathBuf};

use rocksdb::checkpoint::Checkpoint;
use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, DB, Direction, IngestExternalFileOptions,
    IteratorMode, Options, ReadOptions, SliceTransform, SstFileWriter, WriteBatch, WriteOptions,
};

use super::store::{
    BulkLoad, Column, Entries, LoadedRun, StateBatch, StateError, StateStore, StoredCheckpoint,
    prefix_successor,
};

/// A RocksDB database with one column family per [`Column`], and its checkpoints.
pub struct RocksDbStore {
    directory: PathBuf,
    db: Option<DB>,
    write_options: WriteOptions,
}

fn failed(action: &'static str) -> impl Fn(rocksdb::Error) -> StateError {
    move |error| StateError {
        action,
        message: error.to_string(),
    }
}

fn failed_io(action: &'static str, path: &Path) -> impl Fn(std::io::Error) -> StateError {
    let path = path.display().to_string();
    move |error| StateError {
        action,
        message: format!("{path}: {error}"),
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

/// The database's options and each column family's, as every store of this worker opens
/// them (a table file written for a column family outside the database, to be ingested,
/// takes the same: compression, prefix extractor and filters).
fn database_options() -> (Options, [(Column, Options); 3]) {
    let mut options = Options::default();
    options.create_if_missing(true);
    options.create_missing_column_families(true);
    // Memory is bounded: memtables 3 column families x 2 buffers x 32 MiB at most, plus
    // the block cache, which also holds index and filter blocks.
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
    let mut meta = Options::default();
    meta.set_block_based_table_factory(&table);
    let mut windows = options.clone();
    table.set_bloom_filter(10.0, false);
    table.set_whole_key_filtering(false);
    // The windows' filters and indexes stay with their table files rather than in the
    // block cache: every load of an evicted key consults a filter, and a full filter of
    // a large file (a megabyte) read back into the cache for each one cost more than the
    // rest of the run (bench/README.md, "Many keys"). They take about 2 bytes per stored
    // window.
    table.set_cache_index_and_filter_blocks(false);
    windows.set_block_based_table_factory(&table);
    windows.set_prefix_extractor(SliceTransform::create(
        "sluice.window-key-prefix",
        window_key_prefix,
        Some(has_window_key_prefix),
    ));
    windows.set_memtable_prefix_bloom_ratio(0.1);
    (
        options,
        [
            (Column::Windows, windows),
            (Column::Timers, timers),
            (Column::Meta, meta),
        ],
    )
}

/// The options of one column family (for a table file written to be ingested into it).
fn column_options(column: Column) -> Result<Options, StateError> {
    let (_, columns) = database_options();
    columns
        .into_iter()
        .find_map(|(candidate, options)| (candidate == column).then_some(options))
        .ok_or_else(|| StateError {
            action: "ingest table files",
            message: format!("no options for column family {}", column.name()),
        })
}

fn open_database(directory: &Path) -> Result<DB, StateError> {
    let (options, columns) = database_options();
    let columns = columns
        .into_iter()
        .map(|(column, options)| ColumnFamilyDescriptor::new(column.name(), options));
    DB::open_cf_descriptors(&options, directory, columns).map_err(failed("open the database"))
}

/// The directory name of a checkpoint: zero-padded, so names sort like numbers.
fn checkpoint_name(id: u64, complete: bool) -> String {
    if complete {
        format!("{id:020}")
    } else {
        format!("{id:020}.pending")
    }
}

/// Copies a RocksDB directory: hard links for table files (never modified once written),
/// copies for the rest (the manifest is appended to by an open database).
fn clone_database(from: &Path, to: &Path) -> Result<(), StateError> {
    fs::create_dir_all(to).map_err(failed_io("create a directory", to))?;
    for entry in fs::read_dir(from).map_err(failed_io("list a checkpoint", from))? {
        let entry = entry.map_err(failed_io("list a checkpoint", from))?;
        let source = entry.path();
        let target = to.join(entry.file_name());
        if source
            .extension()
            .is_some_and(|extension| extension == "sst")
        {
            fs::hard_link(&source, &target).map_err(failed_io("link a table file", &source))?;
        } else {
            fs::copy(&source, &target).map_err(failed_io("copy a database file", &source))?;
        }
    }
    Ok(())
}

/// Links the files of complete checkpoint `id` of the store in `state_dir` into `to` (a
/// new directory): a snapshot that stays valid after the checkpoint is discarded, at the
/// cost of hard links (what a savepoint uploads from).
pub fn link_checkpoint(state_dir: &Path, id: u64, to: &Path) -> Result<(), StateError> {
    let from = state_dir
        .join("checkpoints")
        .join(checkpoint_name(id, true));
    clone_database(&from, to)
}

/// Makes a rename in `directory` durable.
fn sync_directory(directory: &Path) -> Result<(), StateError> {
    fs::File::open(directory)
        .and_then(|handle| handle.sync_all())
        .map_err(failed_io("sync a directory", directory))
}

impl RocksDbStore {
    /// Opens (or creates) the store in `directory`: its live database, as the last
    /// process left it. A worker restoring a checkpoint replaces it
    /// ([`StateStore::restore_checkpoint`]).
    pub fn open(directory: &Path) -> Result<Self, StateError> {
        let live = directory.join("live");
        fs::create_dir_all(directory.join("checkpoints"))
            .map_err(failed_io("create the state directory", directory))?;
        let db = open_database(&live)?;
        let mut write_options = WriteOptions::default();
        write_options.disable_wal(true);
        Ok(Self {
            directory: directory.to_path_buf(),
            db: Some(db),
            write_options,
        })
    }

    fn db(&self) -> Result<&DB, StateError> {
        self.db.as_ref().ok_or_else(|| StateError {
            action: "use the database",
            message: "it was closed by a failed restore".into(),
        })
    }

    fn column(&self, column: Column) -> Result<&rocksdb::ColumnFamily, StateError> {
        self.db()?
            .cf_handle(column.name())
            .ok_or_else(|| StateError {
                action: "find a column family",
                message: format!("no column family {}", column.name()),
            })
    }

    fn checkpoints_directory(&self) -> PathBuf {
        self.directory.join("checkpoints")
    }

    /// The directory of a checkpoint.
    pub fn checkpoint_directory(&self, id: u64, complete: bool) -> PathBuf {
        self.checkpoints_directory()
            .join(checkpoint_name(id, complete))
    }

    /// Flushes the memtables to disk.
    pub fn flush(&self) -> Result<(), StateError> {
        for column in Column::ALL {
            self.db()?
                .flush_cf(self.column(column)?)
                .map_err(failed("flush"))?;
        }
        Ok(())
    }

    /// Keeps only the entries of `column` in `[from, to)`: table files wholly outside it
    /// are dropped, the rest of what is outside is hidden by two range deletions (which
    /// compactions reclaim later). `from` empty and `to` above every key keep everything;
    /// `from` equal to `to` keeps nothing. What a restore does to the database of the
    /// savepoint part it starts from, so that it holds exactly the key groups the worker
    /// owns, without reading them.
    pub fn retain_range(
        &mut self,
        column: Column,
        from: &[u8],
        to: &[u8],
    ) -> Result<(), StateError> {
        let handle = self.column(column)?;
        let db = self.db()?;
        let outside = [(&[][..], from), (to, &[0xff; 32][..])];
        let mut write_batch = WriteBatch::default();
        for (start, end) in outside {
            if start >= end {
                continue;
            }
            db.delete_file_in_range_cf(handle, start, end)
                .map_err(failed("drop table files"))?;
            write_batch.delete_range_cf(handle, start, end);
        }
        db.write_opt(write_batch, &self.write_options)
            .map_err(failed("delete a range"))
    }

    /// Copies the entries of `column` in `[from, to)` of `source` into this store by
    /// writing them as table files in `scratch` (a directory on the same file system) and
    /// ingesting those: each entry is read and written once, with no memtable and no
    /// compaction. The range must hold no live entry here. Returns the entries copied.
    pub fn ingest_range_from(
        &mut self,
        source: &RocksDbStore,
        column: Column,
        from: &[u8],
        to: &[u8],
        scratch: &Path,
    ) -> Result<u64, StateError> {
        /// Table files written at most this large (RocksDB's own are 64 MiB).
        const FILE_BYTES: u64 = 256 << 20;
        let options = column_options(column)?;
        fs::create_dir_all(scratch).map_err(failed_io("create a directory", scratch))?;
        let mut read_options = ReadOptions::default();
        read_options.set_total_order_seek(true);
        read_options.fill_cache(false);
        read_options.set_iterate_lower_bound(from.to_vec());
        read_options.set_iterate_upper_bound(to.to_vec());
        let mut iterator = source
            .db()?
            .raw_iterator_cf_opt(source.column(column)?, read_options);
        iterator.seek(from);
        let mut files = Vec::new();
        let mut entries = 0u64;
        while iterator.valid() {
            let path = scratch.join(format!("ingest-{}.sst", files.len()));
            let mut writer = SstFileWriter::create(&options);
            writer
                .open(&path)
                .map_err(failed("write a table file to ingest"))?;
            while let Some((key, value)) = iterator.item() {
                writer
                    .put(key, value)
                    .map_err(failed("write a table file to ingest"))?;
                entries += 1;
                iterator.next();
                if writer.file_size() >= FILE_BYTES {
                    break;
                }
            }
            writer
                .finish()
                .map_err(failed("write a table file to ingest"))?;
            files.push(path);
        }
        iterator.status().map_err(failed("read state"))?;
        if files.is_empty() {
            return Ok(0);
        }
        let mut ingest = IngestExternalFileOptions::default();
        ingest.set_move_files(true);
        self.db()?
            .ingest_external_file_cf_opts(self.column(column)?, &ingest, files)
            .map_err(failed("ingest table files"))?;
        Ok(entries)
    }

    fn iterate(
        &self,
        column: Column,
        from: &[u8],
        to: Option<&[u8]>,
        same_prefix: bool,
        limit: usize,
        mut visit: impl FnMut(Box<[u8]>, Box<[u8]>),
    ) -> Result<(), StateError> {
        let handle = self.column(column)?;
        let mut read_options = ReadOptions::default();
        read_options.set_prefix_same_as_start(same_prefix);
        // A scan across keys (rather than within one key's prefix) must not let the
        // windows' prefix bloom filters skip files that lack its first key's prefix.
        read_options.set_total_order_seek(!same_prefix);
        read_options.set_iterate_lower_bound(from.to_vec());
        if let Some(to) = to {
            read_options.set_iterate_upper_bound(to.to_vec());
        }
        for item in self
            .db()?
            .iterator_cf_opt(
                handle,
                read_options,
                IteratorMode::From(from, Direction::Forward),
            )
            .take(limit)
        {
            let (key, value) = item.map_err(failed("scan state"))?;
            visit(key, value);
        }
        Ok(())
    }
}

impl StateStore for RocksDbStore {
    fn scan_prefix(&self, column: Column, prefix: &[u8]) -> Result<Entries, StateError> {
        let upper = prefix_successor(prefix);
        let mut entries = Vec::new();
        self.iterate(
            column,
            prefix,
            upper.as_deref(),
            column == Column::Windows,
            usize::MAX,
            |key, value| {
                if key.starts_with(prefix) {
                    entries.push((key.into_vec(), value.into_vec()));
                }
            },
        )?;
        Ok(entries)
    }

    fn scan_keys(
        &self,
        column: Column,
        from: &[u8],
        to: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Vec<u8>>, StateError> {
        let mut keys = Vec::new();
        self.iterate(column, from, to, false, limit, |key, _| {
            keys.push(key.into_vec());
        })?;
        Ok(keys)
    }

    fn visit_keys(
        &self,
        column: Column,
        visit: &mut dyn FnMut(&[u8]) -> Result<(), StateError>,
    ) -> Result<(), StateError> {
        let mut read_options = ReadOptions::default();
        read_options.set_total_order_seek(true);
        // One pass over everything: keep the block cache for what is read again.
        read_options.fill_cache(false);
        let mut iterator = self
            .db()?
            .raw_iterator_cf_opt(self.column(column)?, read_options);
        iterator.seek_to_first();
        while let Some(key) = iterator.key() {
            visit(key)?;
            iterator.next();
        }
        iterator.status().map_err(failed("scan state"))
    }

    fn scan_range(
        &self,
        column: Column,
        from: &[u8],
        to: Option<&[u8]>,
        limit: usize,
    ) -> Result<Entries, StateError> {
        let mut entries = Vec::new();
        self.iterate(column, from, to, false, limit, |key, value| {
            entries.push((key.into_vec(), value.into_vec()));
        })?;
        Ok(entries)
    }

    fn get(&self, column: Column, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        self.db()?
            .get_cf(self.column(column)?, key)
            .map_err(failed("read state"))
    }

    fn get_sorted(
        &self,
        column: Column,
        keys: &[Vec<u8>],
    ) -> Result<Vec<Option<Vec<u8>>>, StateError> {
        /// Steps forward before a seek: a step is a few comparisons in a block already
        /// read, a seek searches every sorted run again.
        const STEPS_BEFORE_SEEK: usize = 16;
        let (Some(first), Some(last)) = (keys.first(), keys.last()) else {
            return Ok(Vec::new());
        };
        let mut read_options = ReadOptions::default();
        read_options.set_total_order_seek(true);
        read_options.set_iterate_lower_bound(first.clone());
        if let Some(upper) = prefix_successor(last) {
            read_options.set_iterate_upper_bound(upper);
        }
        // Read once, in order: no need to keep the blocks in the cache for later.
        read_options.fill_cache(keys.len() < 64);
        let mut iterator = self
            .db()?
            .raw_iterator_cf_opt(self.column(column)?, read_options);
        iterator.seek(first);
        let mut values = Vec::with_capacity(keys.len());
        for key in keys {
            let mut steps = 0;
            while iterator.key().is_some_and(|at| at < key.as_slice()) {
                if steps == STEPS_BEFORE_SEEK {
                    iterator.seek(key);
                    break;
                }
                iterator.next();
                steps += 1;
            }
            values.push(match iterator.item() {
                Some((at, value)) if at == key.as_slice() => Some(value.to_vec()),
                _ => None,
            });
        }
        iterator.status().map_err(failed("read state"))?;
        Ok(values)
    }

    fn write(&mut self, batch: StateBatch) -> Result<(), StateError> {
        // In key order, memtable inserts reuse their position in the skip list. Sorted
        // by position too, operations on the same key keep their order; sorting
        // positions moves 8 bytes an entry rather than the whole operation.
        let operations = &batch.operations;
        let mut order: Vec<usize> = (0..operations.len()).collect();
        order.sort_unstable_by(|left, right| {
            let (left_column, left_key, _) = &operations[*left];
            let (right_column, right_key, _) = &operations[*right];
            (left_column, left_key, left).cmp(&(right_column, right_key, right))
        });
        let mut write_batch = WriteBatch::default();
        for (column, key, value) in order.iter().map(|index| &operations[*index]) {
            let handle = self.column(*column)?;
            match value {
                Some(value) => write_batch.put_cf(handle, key, value),
                None => write_batch.delete_cf(handle, key),
            }
        }
        self.db()?
            .write_opt(write_batch, &self.write_options)
            .map_err(failed("write a batch"))
    }

    fn delete_range(&mut self, column: Column, from: &[u8], to: &[u8]) -> Result<(), StateError> {
        let handle = self.column(column)?;
        let mut write_batch = WriteBatch::default();
        write_batch.delete_range_cf(handle, from, to);
        self.db()?
            .write_opt(write_batch, &self.write_options)
            .map_err(failed("delete a range"))
    }

    fn clear(&mut self, column: Column) -> Result<(), StateError> {
        // The table files go at once (their keys are all in the range); the deletion
        // hides what the write buffers hold.
        let (from, to) = (&[][..], &[0xff; 32][..]);
        self.db()?
            .delete_file_in_range_cf(self.column(column)?, from, to)
            .map_err(failed("drop table files"))?;
        self.delete_range(column, from, to)
    }

    fn bulk_load(&self, column: Column) -> Result<BulkLoad, StateError> {
        let options = column_options(column)?;
        let scratch = self.directory.join("ingest");
        // Files a crash left behind in a load that never finished.
        if scratch.exists() {
            fs::remove_dir_all(&scratch).map_err(failed_io("remove a directory", &scratch))?;
        }
        fs::create_dir_all(&scratch).map_err(failed_io("create a directory", &scratch))?;
        let mut written = 0usize;
        BulkLoad::new(
            column,
            Box::new(move |keys| {
                let path = scratch.join(format!("{}-{written}.sst", column.name()));
                written += 1;
                let mut writer = SstFileWriter::create(&options);
                writer
                    .open(&path)
                    .map_err(failed("write a table file to ingest"))?;
                for key in &keys {
                    writer
                        .put(key, [])
                        .map_err(failed("write a table file to ingest"))?;
                }
                writer
                    .finish()
                    .map_err(failed("write a table file to ingest"))?;
                Ok(LoadedRun::TableFile(path))
            }),
        )
    }

    fn finish_bulk_load(&mut self, load: BulkLoad) -> Result<(), StateError> {
        let (column, runs) = load.finish()?;
        let handle = self.column(column)?;
        let mut ingest = IngestExternalFileOptions::default();
        ingest.set_move_files(true);
        // One file at a time, in order: their ranges overlap, and each is newer than the
        // one before.
        for run in runs {
            match run {
                LoadedRun::TableFile(path) => self
                    .db()?
                    .ingest_external_file_cf_opts(handle, &ingest, vec![path])
                    .map_err(failed("ingest table files"))?,
                LoadedRun::Keys(keys) => {
                    let mut write_batch = WriteBatch::default();
                    for key in keys {
                        write_batch.put_cf(handle, key, []);
                    }
                    self.db()?
                        .write_opt(write_batch, &self.write_options)
                        .map_err(failed("write a batch"))?;
                }
            }
        }
        Ok(())
    }

    fn count(&self, column: Column) -> Result<u64, StateError> {
        let handle = self.column(column)?;
        let mut count = 0;
        for item in self.db()?.iterator_cf(handle, IteratorMode::Start) {
            item.map_err(failed("count entries"))?;
            count += 1;
        }
        Ok(count)
    }

    fn size_bytes(&self) -> u64 {
        let Ok(db) = self.db() else { return 0 };
        Column::ALL
            .iter()
            .filter_map(|column| db.cf_handle(column.name()))
            .filter_map(|handle| {
                db.property_int_value_cf(handle, "rocksdb.live-sst-files-size")
                    .ok()
                    .flatten()
            })
            .sum()
    }

    fn create_checkpoint(&mut self, id: u64) -> Result<(), StateError> {
        let target = self.checkpoint_directory(id, false);
        if target.exists() {
            fs::remove_dir_all(&target).map_err(failed_io("remove a stale checkpoint", &target))?;
        }
        // RocksDB flushes the memtables itself (the write-ahead log is off, so every
        // column family with unflushed writes is flushed), then links the table files.
        Checkpoint::new(self.db()?)
            .and_then(|checkpoint| checkpoint.create_checkpoint(&target))
            .map_err(failed("create a checkpoint"))?;
        sync_directory(&self.checkpoints_directory())
    }

    fn complete_checkpoint(&mut self, id: u64) -> Result<(), StateError> {
        let pending = self.checkpoint_directory(id, false);
        let complete = self.checkpoint_directory(id, true);
        fs::rename(&pending, &complete).map_err(failed_io("complete a checkpoint", &pending))?;
        sync_directory(&self.checkpoints_directory())?;
        for older in self.checkpoints()?.into_iter().filter(|held| held.id < id) {
            self.discard_checkpoint(older.id)?;
        }
        Ok(())
    }

    fn discard_checkpoint(&mut self, id: u64) -> Result<(), StateError> {
        for complete in [false, true] {
            let directory = self.checkpoint_directory(id, complete);
            if directory.exists() {
                fs::remove_dir_all(&directory)
                    .map_err(failed_io("remove a checkpoint", &directory))?;
            }
        }
        Ok(())
    }

    fn checkpoints(&self) -> Result<Vec<StoredCheckpoint>, StateError> {
        let directory = self.checkpoints_directory();
        let mut held = Vec::new();
        for entry in fs::read_dir(&directory).map_err(failed_io("list checkpoints", &directory))? {
            let entry = entry.map_err(failed_io("list checkpoints", &directory))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let (number, complete) = match name.strip_suffix(".pending") {
                Some(number) => (number, false),
                None => (name.as_str(), true),
            };
            // Anything else (RocksDB's own temporary directory of an interrupted
            // checkpoint) is not a checkpoint.
            if let Ok(id) = number.parse::<u64>() {
                held.push(StoredCheckpoint { id, complete });
            }
        }
        held.sort();
        Ok(held)
    }

    fn restore_checkpoint(&mut self, id: u64) -> Result<(), StateError> {
        let complete = self
            .checkpoints()?
            .into_iter()
            .find(|held| held.id == id)
            .ok_or_else(|| StateError {
                action: "restore a checkpoint",
                message: format!("there is no checkpoint {id}"),
            })?
            .complete;
        let source = self.checkpoint_directory(id, complete);
        let live = self.directory.join("live");
        self.db = None;
        if live.exists() {
            fs::remove_dir_all(&live).map_err(failed_io("remove the live database", &live))?;
        }
        clone_database(&source, &live)?;
        self.db = Some(open_database(&live)?);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scans_prefixes_and_ranges_and_counts() {
        use crate::state::format;
        use crate::time::window::WindowRange;
        let directory = tempfile::tempdir().unwrap();
        let mut store = RocksDbStore::open(directory.path()).unwrap();
        let window_key = |group, key: &[u8], start| {
            let mut out = Vec::new();
            format::window_key(
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
            format::key_prefix(1, b"a", &mut prefix);
            let found: Vec<Vec<u8>> = store
                .scan_prefix(Column::Windows, &prefix)
                .unwrap()
                .into_iter()
                .map(|(key, _)| key)
                .collect();
            assert_eq!(found, vec![window_key(1, b"a", 0), window_key(1, b"a", 10)]);
            format::key_prefix(1, b"zz", &mut prefix);
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

    fn window_key(group: u16, key: &[u8], start: i64) -> Vec<u8> {
        use crate::time::window::WindowRange;
        let mut out = Vec::new();
        crate::state::format::window_key(
            group,
            key,
            WindowRange {
                start,
                end: start + 10,
            },
            &mut out,
        );
        out
    }

    /// Window keys of 3,000 keys over 4 groups, put through several table files (so a
    /// scan merges files that hold different keys' prefixes), in key order.
    fn store_with_windows_in_several_files(directory: &Path) -> (RocksDbStore, Vec<Vec<u8>>) {
        let mut store = RocksDbStore::open(directory).unwrap();
        let mut all = Vec::new();
        for file in 0..3 {
            let mut batch = StateBatch::default();
            for index in 0..1_000u32 {
                let key = format!("\"k{file}-{index}\"").into_bytes();
                let state_key = window_key(u16::try_from(index % 4).unwrap(), &key, 0);
                batch.put(Column::Windows, state_key.clone(), b"v".to_vec());
                all.push(state_key);
            }
            store.write(batch).unwrap();
            store.flush().unwrap();
        }
        all.sort();
        (store, all)
    }

    #[test]
    fn a_range_scan_from_inside_a_keys_prefix_sees_every_table_file() {
        // Scans that page through the windows (a restore rebuilding timers, an export)
        // start the next page just after a window key: the prefix bloom filters of the
        // files must not hide the keys of other prefixes.
        let directory = tempfile::tempdir().unwrap();
        let (store, all) = store_with_windows_in_several_files(directory.path());
        let mut from = all[100].clone();
        from.push(0);
        let found = store
            .scan_range(Column::Windows, &from, None, usize::MAX)
            .unwrap();
        let keys: Vec<Vec<u8>> = found.into_iter().map(|(key, _)| key).collect();
        assert_eq!(keys, all[101..].to_vec());
        let keys = store
            .scan_keys(Column::Windows, &from, None, usize::MAX)
            .unwrap();
        assert_eq!(keys, all[101..].to_vec());
    }

    #[test]
    fn get_sorted_reads_keys_present_and_absent_in_one_pass() {
        let directory = tempfile::tempdir().unwrap();
        let (store, all) = store_with_windows_in_several_files(directory.path());
        // Every third key, with absent keys between (other windows of present keys, keys
        // of no window) and a repeat.
        let mut wanted = Vec::new();
        let mut expected = Vec::new();
        for (index, key) in all.iter().enumerate().step_by(3) {
            wanted.push(key.clone());
            expected.push(Some(b"v".to_vec()));
            if index == 300 {
                wanted.push(key.clone());
                expected.push(Some(b"v".to_vec()));
            }
            let mut absent = key.clone();
            absent.push(0);
            wanted.push(absent);
            expected.push(None);
        }
        wanted.push(window_key(9, b"\"zz\"", 0));
        expected.push(None);
        let mut sorted = wanted.clone();
        sorted.sort();
        assert_eq!(sorted, wanted, "the test asks in order");
        assert_eq!(
            store.get_sorted(Column::Windows, &wanted).unwrap(),
            expected
        );
        // Far apart (seeks) and the memory store's answer agree.
        let sparse: Vec<Vec<u8>> = all.iter().step_by(97).cloned().collect();
        let mut memory = crate::state::MemoryStore::default();
        let mut batch = StateBatch::default();
        for key in &all {
            batch.put(Column::Windows, key.clone(), b"v".to_vec());
        }
        memory.write(batch).unwrap();
        assert_eq!(
            store.get_sorted(Column::Windows, &sparse).unwrap(),
            memory.get_sorted(Column::Windows, &sparse).unwrap()
        );
        assert!(store.get_sorted(Column::Windows, &[]).unwrap().is_empty());
    }

    #[test]
    fn a_range_is_kept_alone_and_another_stores_range_ingested_beside_it() {
        use crate::state::format::key_group_start;
        // Groups 0-3 here, of which 1 and 2 are kept; groups 3 and 0 of another store
        // (the same keys, other values) come in as table files.
        let here = tempfile::tempdir().unwrap();
        let (mut store, all) = store_with_windows_in_several_files(here.path());
        let mut batch = StateBatch::default();
        batch.put(Column::Timers, b"t".to_vec(), Vec::new());
        store.write(batch).unwrap();
        let there = tempfile::tempdir().unwrap();
        let mut other = RocksDbStore::open(there.path()).unwrap();
        let mut batch = StateBatch::default();
        for key in &all {
            batch.put(Column::Windows, key.clone(), b"other".to_vec());
        }
        other.write(batch).unwrap();
        other.flush().unwrap();

        store
            .retain_range(Column::Windows, &key_group_start(1), &key_group_start(3))
            .unwrap();
        store.retain_range(Column::Timers, &[], &[]).unwrap();
        assert_eq!(store.count(Column::Timers).unwrap(), 0);
        let group = |key: &[u8]| u32::from(u16::from_be_bytes([key[0], key[1]]));
        let kept: Vec<Vec<u8>> = all
            .iter()
            .filter(|key| (1..3).contains(&group(key)))
            .cloned()
            .collect();
        assert_eq!(
            store
                .scan_keys(Column::Windows, &[], None, usize::MAX)
                .unwrap(),
            kept
        );

        let scratch = here.path().join("scratch");
        let copied = store
            .ingest_range_from(
                &other,
                Column::Windows,
                &key_group_start(3),
                &key_group_start(4),
                &scratch,
            )
            .unwrap();
        assert_eq!(copied, 750);
        let none = store
            .ingest_range_from(
                &other,
                Column::Windows,
                &key_group_start(4),
                &key_group_start(9),
                &scratch,
            )
            .unwrap();
        assert_eq!(none, 0);
        store
            .ingest_range_from(
                &other,
                Column::Windows,
                &key_group_start(0),
                &key_group_start(1),
                &scratch,
            )
            .unwrap();
        let entries = store
            .scan_range(Column::Windows, &[], None, usize::MAX)
            .unwrap();
        assert_eq!(entries.len(), all.len());
        for (key, value) in &entries {
            let expected: &[u8] = if (1..3).contains(&group(key)) {
                b"v"
            } else {
                b"other"
            };
            assert_eq!(value.as_slice(), expected);
        }
        // Lookups by key prefix (bloom filters of the ingested files) find them, in the
        // store and in a checkpoint of it.
        store.create_checkpoint(1).unwrap();
        store.complete_checkpoint(1).unwrap();
        drop(store);
        let mut store = RocksDbStore::open(here.path()).unwrap();
        store.restore_checkpoint(1).unwrap();
        for key in all.iter().step_by(7) {
            let prefix = window_key_prefix(key);
            let found = store.scan_prefix(Column::Windows, prefix).unwrap();
            assert!(found.iter().any(|(at, _)| at == key), "{key:?}");
        }
        assert!(!scratch.join("ingest-0.sst").exists(), "files are moved in");
    }

    #[test]
    fn a_restore_returns_to_the_checkpoint_and_nothing_after_it() {
        let directory = tempfile::tempdir().unwrap();
        let mut store = RocksDbStore::open(directory.path()).unwrap();
        let put = |store: &mut RocksDbStore, key: &[u8]| {
            let mut batch = StateBatch::default();
            batch.put(Column::Windows, key.to_vec(), b"v".to_vec());
            store.write(batch).unwrap();
        };
        put(&mut store, b"before-1");
        store.create_checkpoint(1).unwrap();
        store.complete_checkpoint(1).unwrap();
        put(&mut store, b"between");
        store.create_checkpoint(2).unwrap();
        put(&mut store, b"after-2");
        assert_eq!(
            store.checkpoints().unwrap(),
            vec![
                StoredCheckpoint {
                    id: 1,
                    complete: true
                },
                StoredCheckpoint {
                    id: 2,
                    complete: false
                }
            ]
        );
        // Checkpoint 2 never committed: back to 1, twice (restoring must not change it).
        for _ in 0..2 {
            store.restore_checkpoint(1).unwrap();
            let keys = store.scan_keys(Column::Windows, b"", None, 10).unwrap();
            assert_eq!(keys, vec![b"before-1".to_vec()]);
            put(&mut store, b"written-after-restore");
        }
        // A new process finds the same checkpoints on the directory.
        drop(store);
        let mut store = RocksDbStore::open(directory.path()).unwrap();
        store.discard_checkpoint(2).unwrap();
        store.restore_checkpoint(1).unwrap();
        assert_eq!(store.count(Column::Windows).unwrap(), 1);
        store.create_checkpoint(3).unwrap();
        store.complete_checkpoint(3).unwrap();
        assert_eq!(
            store.checkpoints().unwrap(),
            vec![StoredCheckpoint {
                id: 3,
                complete: true
            }],
            "completing a checkpoint discards the older ones"
        );
    }

    #[test]
    fn keys_loaded_in_bulk_replace_a_cleared_column_and_survive_a_checkpoint() {
        let directory = tempfile::tempdir().unwrap();
        let mut store = RocksDbStore::open(directory.path()).unwrap();
        let keys = |store: &RocksDbStore| store.scan_keys(Column::Timers, b"", None, 100).unwrap();
        // Old entries in a table file and in the write buffer.
        let mut batch = StateBatch::default();
        batch.put(Column::Timers, b"old-flushed".to_vec(), Vec::new());
        batch.put(Column::Timers, b"b".to_vec(), Vec::new());
        store.write(batch).unwrap();
        store.flush().unwrap();
        let mut batch = StateBatch::default();
        batch.put(Column::Timers, b"old-buffered".to_vec(), Vec::new());
        store.write(batch).unwrap();
        store.clear(Column::Timers).unwrap();
        assert!(keys(&store).is_empty());
        // Out of order, with a repeat, in runs whose ranges overlap; "b" was deleted by the
        // clear and comes back newer than that deletion.
        // A file of a load a crash interrupted is not ingested, and goes.
        let scratch = directory.path().join("ingest");
        fs::create_dir_all(&scratch).unwrap();
        fs::write(scratch.join("timers-7.sst"), b"left by a crash").unwrap();
        let mut load = store.bulk_load(Column::Timers).unwrap();
        load.add(vec![b"d".to_vec(), b"b".to_vec(), b"d".to_vec()])
            .unwrap();
        load.add(Vec::new()).unwrap();
        load.add(vec![b"c".to_vec(), b"a".to_vec(), b"e".to_vec()])
            .unwrap();
        store.finish_bulk_load(load).unwrap();
        let expected: Vec<Vec<u8>> = [b"a", b"b", b"c", b"d", b"e"]
            .iter()
            .map(|key| key.to_vec())
            .collect();
        assert_eq!(keys(&store), expected);
        let left: Vec<_> = fs::read_dir(&scratch).unwrap().collect();
        assert!(left.is_empty(), "the table files are moved in: {left:?}");
        // A later delete hides a loaded key; a checkpoint holds what was loaded.
        let mut batch = StateBatch::default();
        batch.delete(Column::Timers, b"a".to_vec());
        store.write(batch).unwrap();
        store.create_checkpoint(1).unwrap();
        store.complete_checkpoint(1).unwrap();
        store.clear(Column::Timers).unwrap();
        store.restore_checkpoint(1).unwrap();
        assert_eq!(keys(&store), expected[1..].to_vec());
    }
}
