//! Restoring a savepoint into one worker's state directory, at any parallelism: the
//! window state of exactly the key groups the worker owns, from every part that held
//! some of them, and the offsets of exactly its partitions. Everything is fetched and
//! checked (sizes, SHA-256, job, compatibility) before the worker's state is touched; a
//! savepoint that fails a check is refused with the file and the problem.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

use super::format::{
    JobIdentity, MANIFEST, Manifest, SAVEPOINT_FORMAT_VERSION, StateDescription, compatibility,
};
use super::location::{Directory, Url};
use super::take::sha256_hex;
use crate::state::format::{self, CheckpointRecord, META_CHECKPOINT};
use crate::state::rocksdb::RocksDbStore;
use crate::state::{Column, StateBatch, StateStore};

/// The file in a state directory naming the savepoint it was restored from: a worker
/// restarted with the same `--restore-from` keeps its newer state.
pub const RESTORED_FROM: &str = "restored-from";

/// A savepoint read from its location: the job's directory and the manifest.
pub struct Savepoint {
    /// The savepoint's location.
    pub url: Url,
    /// Its id (the last segment of the location).
    pub id: String,
    /// The job's savepoint directory (where shared files are).
    pub job_directory: Directory,
    /// The manifest.
    pub manifest: Manifest,
}

impl Savepoint {
    /// Reads the savepoint at `url`: refused when it has no manifest (an incomplete
    /// savepoint) or one this worker cannot read.
    pub fn open(url: &Url) -> anyhow::Result<Self> {
        let (job_url, id) = url.split_last().with_context(|| {
            format!("failed to use {url} as a savepoint: it names no savepoint directory")
        })?;
        let job_directory = Directory::open(&job_url)?;
        let object = format!("{id}/{MANIFEST}");
        let bytes = job_directory.get(&object)?.with_context(|| {
            format!(
                "failed to restore {url}: it has no {MANIFEST}, so it is not a complete savepoint (a savepoint whose workers did not all finish is never used)"
            )
        })?;
        let manifest: Manifest = serde_json::from_slice(&bytes).with_context(|| {
            format!("failed to restore {url}: its {MANIFEST} is malformed or truncated")
        })?;
        anyhow::ensure!(
            manifest.format_version <= SAVEPOINT_FORMAT_VERSION,
            "failed to restore {url}: it is in savepoint format {}, newer than this worker's {SAVEPOINT_FORMAT_VERSION}; use a worker at least as new as the one that took it",
            manifest.format_version
        );
        anyhow::ensure!(
            manifest.id == id,
            "failed to restore {url}: its {MANIFEST} is for savepoint {:?}, not {id:?} (was it copied from elsewhere?)",
            manifest.id
        );
        Ok(Self {
            url: url.clone(),
            id,
            job_directory,
            manifest,
        })
    }

    /// Why `job` (named `identity`) cannot restore this savepoint; empty when it can.
    pub fn problems(&self, identity: &JobIdentity, job: &StateDescription) -> Vec<String> {
        let mut problems = Vec::new();
        if self.manifest.job != *identity {
            problems.push(format!(
                "the savepoint belongs to StreamJob {}/{}, not {}/{}",
                self.manifest.job.namespace,
                self.manifest.job.name,
                identity.namespace,
                identity.name
            ));
        }
        problems.extend(
            compatibility(self.manifest.format_version, &self.manifest.state, job)
                .into_iter()
                .map(|reason| reason.to_string()),
        );
        problems
    }

    /// Fetches and checks every file of every part, without restoring anything: what
    /// `savepoint check` and a restore do first.
    pub fn verify(&self) -> anyhow::Result<()> {
        let staging = tempfile::tempdir().context("failed to create a temporary directory")?;
        for part in &self.manifest.parts {
            self.fetch_part(part.ordinal, &staging.path().join("part"))?;
            std::fs::remove_dir_all(staging.path().join("part")).ok();
        }
        Ok(())
    }

    /// Downloads the files of part `ordinal` into `into/live` (a RocksDB directory),
    /// checking each file's size and checksum.
    fn fetch_part(&self, ordinal: u32, into: &Path) -> anyhow::Result<()> {
        let part = self
            .manifest
            .parts
            .iter()
            .find(|part| part.ordinal == ordinal)
            .with_context(|| format!("failed to find part {ordinal} in {}", self.url))?;
        let live = into.join("live");
        std::fs::create_dir_all(&live)
            .with_context(|| format!("failed to create {}", live.display()))?;
        for file in &part.files {
            anyhow::ensure!(
                !file.name.contains('/') && !file.name.starts_with('.'),
                "failed to restore {}: part {ordinal} lists a file named {:?}, which is not a RocksDB file name",
                self.url,
                file.name
            );
            let bytes = self.job_directory.get(&file.object)?.with_context(|| {
                format!(
                    "failed to restore {}: file {} of part {ordinal} ({}/{}) is missing; the savepoint was deleted in part and cannot be restored",
                    self.url,
                    file.name,
                    self.job_directory.url(),
                    file.object
                )
            })?;
            let size = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
            anyhow::ensure!(
                size == file.size,
                "failed to restore {}: file {} of part {ordinal} ({}/{}) has {size} bytes, the manifest says {}; the savepoint is corrupt",
                self.url,
                file.name,
                self.job_directory.url(),
                file.object,
                file.size
            );
            let sha256 = sha256_hex(&bytes);
            anyhow::ensure!(
                sha256 == file.sha256,
                "failed to restore {}: file {} of part {ordinal} ({}/{}) has SHA-256 {sha256}, the manifest says {}; the savepoint is corrupt",
                self.url,
                file.name,
                self.job_directory.url(),
                file.object,
                file.sha256
            );
            let path = live.join(&file.name);
            std::fs::write(&path, &bytes)
                .with_context(|| format!("failed to write {}", path.display()))?;
        }
        Ok(())
    }
}

/// What a worker restores: its key groups and its partitions.
#[derive(Clone, Debug)]
pub struct Owned {
    /// Its key groups, `[first, end)`.
    pub key_groups: (u32, u32),
    /// Its source partitions, by topic name and partition.
    pub partitions: BTreeSet<(String, i32)>,
}

/// Whether the state directory was already restored from `url` (by an earlier start of
/// this worker, which has made progress since).
pub fn already_restored(state_dir: &Path, url: &Url) -> bool {
    std::fs::read_to_string(state_dir.join(RESTORED_FROM))
        .is_ok_and(|text| text.trim() == url.to_string())
}

/// Replaces the state in `state_dir` by what worker `owned` takes from `savepoint`, as a
/// complete checkpoint the worker then starts from. `job_state` describes the job that
/// will run on it. Returns the checkpoint record.
pub fn restore(
    savepoint: &Savepoint,
    identity: &JobIdentity,
    job_state: &StateDescription,
    owned: &Owned,
    state_dir: &Path,
) -> anyhow::Result<CheckpointRecord> {
    let problems = savepoint.problems(identity, job_state);
    anyhow::ensure!(
        problems.is_empty(),
        "failed to restore {}: {}",
        savepoint.url,
        problems.join("; ")
    );
    let manifest = &savepoint.manifest;
    let (first, end) = owned.key_groups;
    let with_state: Vec<_> = if manifest.state.window.is_some() {
        manifest
            .parts
            .iter()
            .filter_map(|part| {
                part.key_groups
                    .intersect(first, end)
                    .map(|range| (part.ordinal, range))
            })
            .collect()
    } else {
        Vec::new()
    };
    // Everything is fetched and checked before the state directory changes.
    let staging = state_dir.join("restore");
    if staging.exists() {
        std::fs::remove_dir_all(&staging)
            .with_context(|| format!("failed to clear {}", staging.display()))?;
    }
    let part_directory = |ordinal: u32| -> PathBuf { staging.join(format!("part-{ordinal}")) };
    for (ordinal, _) in &with_state {
        savepoint.fetch_part(*ordinal, &part_directory(*ordinal))?;
    }

    std::fs::remove_file(state_dir.join(RESTORED_FROM)).ok();
    for old in ["live", "checkpoints"] {
        let path = state_dir.join(old);
        if path.exists() {
            std::fs::remove_dir_all(&path)
                .with_context(|| format!("failed to clear {}", path.display()))?;
        }
    }
    let mut target = RocksDbStore::open(state_dir)?;
    const PAGE: usize = 16_384;
    for (index, (ordinal, range)) in with_state.iter().enumerate() {
        let source = RocksDbStore::open(&part_directory(*ordinal))?;
        if index == 0 {
            // The meta entries (format, key groups, aggregates) are the same in every
            // part; the worker's start checks them against the job and migrates.
            let mut batch = StateBatch::default();
            for key in [
                format::META_FORMAT_VERSION,
                format::META_KEY_GROUPS,
                format::META_AGGREGATES,
            ] {
                if let Some(value) = source.get(Column::Meta, key)? {
                    batch.put(Column::Meta, key.to_vec(), value);
                }
            }
            target.write(batch)?;
        }
        let upper = format::key_group_start(range.end);
        let mut from = format::key_group_start(range.first);
        loop {
            let entries = source.scan_range(Column::Windows, &from, Some(&upper), PAGE)?;
            let Some((last, _)) = entries.last() else {
                break;
            };
            from = last.clone();
            from.push(0);
            let full = entries.len() == PAGE;
            let mut batch = StateBatch::default();
            for (key, value) in entries {
                batch.put(Column::Windows, key, value);
            }
            target.write(batch)?;
            if !full {
                break;
            }
        }
    }

    let id = manifest
        .parts
        .iter()
        .map(|part| part.checkpoint.id)
        .max()
        .unwrap_or(0)
        + 1;
    let record = CheckpointRecord {
        id,
        token: crate::commit::new_token(id),
        // The slowest part's: never fires a window before every part would have.
        watermark: manifest
            .parts
            .iter()
            .map(|part| part.checkpoint.watermark)
            .min()
            .unwrap_or(crate::time::Millis::MIN),
        partitions: manifest
            .parts
            .iter()
            .flat_map(|part| &part.checkpoint.partitions)
            .filter(|partition| {
                owned
                    .partitions
                    .contains(&(partition.topic.clone(), partition.partition))
            })
            .cloned()
            .collect(),
        channels: manifest
            .parts
            .iter()
            .flat_map(|part| &part.checkpoint.channels)
            .filter(|channel| {
                u32::try_from(channel.partition).is_ok_and(|group| group >= first && group < end)
            })
            .cloned()
            .collect(),
        restored_from: Some(savepoint.url.to_string()),
    };
    let mut batch = StateBatch::default();
    batch.put(
        Column::Meta,
        META_CHECKPOINT.to_vec(),
        serde_json::to_vec(&record).context("failed to encode the checkpoint record")?,
    );
    target.write(batch)?;
    target.create_checkpoint(id)?;
    target.complete_checkpoint(id)?;
    drop(target);
    std::fs::remove_dir_all(&staging).ok();
    let marker = state_dir.join(RESTORED_FROM);
    std::fs::write(&marker, savepoint.url.to_string())
        .and_then(|()| std::fs::File::open(&marker).and_then(|file| file.sync_all()))
        .with_context(|| format!("failed to write {}", marker.display()))?;
    Ok(record)
}
