//! Restoring a savepoint into one worker's state directory, at any parallelism: the
//! window state of exactly the key groups the worker owns, from every part that held
//! some of them, and the offsets of exactly its partitions. Everything is fetched and
//! checked (sizes, SHA-256, job, compatibility) before the worker's state is touched; a
//! savepoint that fails a check is refused with the file and the problem.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use anyhow::Context as _;

use super::format::{
    FileEntry, JobIdentity, MANIFEST, Manifest, SAVEPOINT_FORMAT_VERSION, StateDescription,
    compatibility,
};
use super::location::{Directory, Url};
use super::take::{hex, sha256_hex};
use crate::state::format::{self, CheckpointRecord, META_CHECKPOINT};
use crate::state::rocksdb::RocksDbStore;
use crate::state::{Column, StateBatch, StateStore};
use sha2::{Digest as _, Sha256};

/// The file in a state directory naming the savepoint it was restored from (and the
/// restore epoch, if any): a worker restarted with the same `--restore-from` and
/// `--restore-epoch` keeps its newer state.
pub const RESTORED_FROM: &str = "restored-from";

/// What [`RESTORED_FROM`] holds after a restore of `url` in `epoch`.
fn restored_from_text(url: &Url, epoch: Option<u64>) -> String {
    match epoch {
        None => url.to_string(),
        Some(epoch) => format!("{url} epoch {epoch}"),
    }
}

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

    /// Why the job named `identity` cannot take even the Kafka offsets of this
    /// savepoint (another job's: its offsets include that job's repartition topic).
    pub fn identity_problems(&self, identity: &JobIdentity) -> Vec<String> {
        if self.manifest.job == *identity {
            return Vec::new();
        }
        vec![format!(
            "the savepoint belongs to StreamJob {}/{}, not {}/{}",
            self.manifest.job.namespace, self.manifest.job.name, identity.namespace, identity.name
        )]
    }

    /// Why `job` (named `identity`) cannot restore this savepoint; empty when it can.
    /// `drop_unmapped`: aggregates that no longer map are dropped, not a problem.
    pub fn problems(
        &self,
        identity: &JobIdentity,
        job: &StateDescription,
        drop_unmapped: bool,
    ) -> Vec<String> {
        let mut problems = self.identity_problems(identity);
        problems.extend(
            compatibility(
                self.manifest.format_version,
                &self.manifest.state,
                job,
                drop_unmapped,
            )
            .into_iter()
            .map(|reason| reason.to_string()),
        );
        problems
    }

    /// Fetches and checks every file of every part, without restoring anything: what
    /// `savepoint check` does. Files on this machine's file system are read in place.
    pub fn verify(&self) -> anyhow::Result<()> {
        let fetches = self
            .manifest
            .parts
            .iter()
            .flat_map(|part| {
                part.files.iter().map(|file| Fetch {
                    ordinal: part.ordinal,
                    file,
                    into: None,
                })
            })
            .collect();
        self.fetch(fetches)
    }

    /// Fetches the files of the parts `ordinals` into `<staging>/part-<ordinal>/live`
    /// (each a RocksDB directory), checking each file's size and SHA-256 as it is read.
    fn fetch_parts(&self, ordinals: &[u32], staging: &Path) -> anyhow::Result<()> {
        let mut fetches = Vec::new();
        for ordinal in ordinals {
            let part = self
                .manifest
                .parts
                .iter()
                .find(|part| part.ordinal == *ordinal)
                .with_context(|| format!("failed to find part {ordinal} in {}", self.url))?;
            let live = part_directory(staging, *ordinal).join("live");
            std::fs::create_dir_all(&live)
                .with_context(|| format!("failed to create {}", live.display()))?;
            for file in &part.files {
                self.check_name(*ordinal, file)?;
                fetches.push(Fetch {
                    ordinal: *ordinal,
                    file,
                    into: Some(live.join(&file.name)),
                });
            }
        }
        self.fetch(fetches)
    }

    fn check_name(&self, ordinal: u32, file: &FileEntry) -> anyhow::Result<()> {
        anyhow::ensure!(
            !file.name.is_empty()
                && !file.name.contains('/')
                && !file.name.starts_with('.')
                && file.name != "restored-from",
            "failed to restore {}: part {ordinal} lists a file named {:?}, which is not a RocksDB file name",
            self.url,
            file.name
        );
        Ok(())
    }

    /// Fetches and checks `fetches` on a few threads (files are independent; reading,
    /// hashing and writing them one at a time left the disk, the network and a core
    /// idle in turn). The first problem found stops the others and is returned.
    fn fetch(&self, fetches: Vec<Fetch<'_>>) -> anyhow::Result<()> {
        let wanted = match self.job_directory.url() {
            // Reading and hashing: one thread per core.
            Url::File(_) => std::thread::available_parallelism().map_or(2, usize::from),
            // Mostly waiting on the network.
            Url::S3 { .. } => 8,
        };
        let threads = wanted.clamp(1, fetches.len().max(1));
        let next = AtomicUsize::new(0);
        let stop = AtomicBool::new(false);
        let url = self.job_directory.url();
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads)
                .map(|_| {
                    scope.spawn(|| -> anyhow::Result<()> {
                        // A directory per thread: each has its own runtime and client.
                        let directory = Directory::open(url)?;
                        while !stop.load(Ordering::Relaxed) {
                            let Some(fetch) = fetches.get(next.fetch_add(1, Ordering::Relaxed))
                            else {
                                break;
                            };
                            if let Err(error) = self.fetch_file(&directory, fetch) {
                                stop.store(true, Ordering::Relaxed);
                                return Err(error);
                            }
                        }
                        Ok(())
                    })
                })
                .collect();
            let mut outcome = Ok(());
            for handle in handles {
                let result = handle
                    .join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a savepoint fetch thread panicked")));
                if outcome.is_ok() {
                    outcome = result;
                }
            }
            outcome
        })
    }

    /// Fetches one file and checks it. On this machine's file system (`file://`), a
    /// table file is hard-linked into place when the state directory is on the same file
    /// system (table files are immutable; the savepoint's copy is never written in place)
    /// and checked by reading the link, so what is checked is what is used; otherwise it
    /// is copied and checked in the same read. From an object store it is downloaded,
    /// checked in memory, then written.
    fn fetch_file(&self, directory: &Directory, fetch: &Fetch<'_>) -> anyhow::Result<()> {
        let Fetch {
            ordinal,
            file,
            into,
        } = fetch;
        let missing = || {
            format!(
                "failed to restore {}: file {} of part {ordinal} ({}/{}) is missing; the savepoint was deleted in part and cannot be restored",
                self.url,
                file.name,
                self.job_directory.url(),
                file.object
            )
        };
        self.check_name(*ordinal, file)?;
        let (size, sha256) = if let Some(source) = directory.local_path(&file.object) {
            match std::fs::metadata(&source) {
                Ok(metadata) if metadata.is_file() => {
                    // A file of the wrong size is refused before it is read.
                    self.check(*ordinal, file, metadata.len(), &file.sha256)?;
                }
                Ok(_) => anyhow::bail!(missing()),
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                    anyhow::bail!(missing())
                }
                Err(error) => {
                    return Err(error)
                        .with_context(|| format!("failed to read {}", source.display()));
                }
            }
            match into {
                // Only table files: RocksDB never changes one, while it may rewrite or
                // truncate its small files (a write-ahead log) when it opens them.
                Some(into)
                    if file.name.ends_with(".sst") && std::fs::hard_link(&source, into).is_ok() =>
                {
                    let hashed = hash_file(into, None)?;
                    // Durable before the state directory says it is restored.
                    std::fs::File::open(into)
                        .and_then(|linked| linked.sync_all())
                        .with_context(|| format!("failed to sync {}", into.display()))?;
                    hashed
                }
                Some(into) => hash_file(&source, Some(into))?,
                None => hash_file(&source, None)?,
            }
        } else {
            let bytes = directory.get(&file.object)?.with_context(missing)?;
            let size = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
            self.check(*ordinal, file, size, &file.sha256)?;
            let sha256 = sha256_hex(&bytes);
            self.check(*ordinal, file, size, &sha256)?;
            if let Some(into) = into {
                std::fs::File::create(into)
                    .and_then(|mut output| {
                        std::io::Write::write_all(&mut output, &bytes)?;
                        output.sync_all()
                    })
                    .with_context(|| format!("failed to write {}", into.display()))?;
            }
            (size, sha256)
        };
        self.check(*ordinal, file, size, &sha256)
    }

    /// Refuses `file` of part `ordinal` unless it has the size and SHA-256 its part lists.
    fn check(&self, ordinal: u32, file: &FileEntry, size: u64, sha256: &str) -> anyhow::Result<()> {
        anyhow::ensure!(
            size == file.size,
            "failed to restore {}: file {} of part {ordinal} ({}/{}) has {size} bytes, the manifest says {}; the savepoint is corrupt",
            self.url,
            file.name,
            self.job_directory.url(),
            file.object,
            file.size
        );
        anyhow::ensure!(
            sha256 == file.sha256,
            "failed to restore {}: file {} of part {ordinal} ({}/{}) has SHA-256 {sha256}, the manifest says {}; the savepoint is corrupt",
            self.url,
            file.name,
            self.job_directory.url(),
            file.object,
            file.sha256
        );
        Ok(())
    }
}

/// One file to fetch: the part listing it, and where it goes (`None`: only checked).
struct Fetch<'a> {
    ordinal: u32,
    file: &'a FileEntry,
    into: Option<PathBuf>,
}

/// The restored store's fired-through watermark, and the key-group ranges that fired
/// further, from what each part contributing windows (`parts`) fired through and the
/// restored operator watermark: every window ending by the lowest of them has fired,
/// those of a range whose part fired further by that part's.
fn fired_through_after_restore(
    mut parts: Vec<format::FiredThroughRange>,
    watermark: crate::time::Millis,
) -> (crate::time::Millis, Vec<format::FiredThroughRange>) {
    let fired_through = parts
        .iter()
        .map(|range| range.fired_through)
        .chain([watermark])
        .min()
        .unwrap_or(watermark);
    parts.retain(|range| range.fired_through > fired_through);
    (fired_through, parts)
}

/// Where part `ordinal` is fetched to below `staging`.
fn part_directory(staging: &Path, ordinal: u32) -> PathBuf {
    staging.join(format!("part-{ordinal}"))
}

/// Reads `path` once, returning its size and SHA-256, and writes what it reads to `copy`
/// if given (synced, as RocksDB's files must be before the database is opened on them).
fn hash_file(path: &Path, copy: Option<&Path>) -> anyhow::Result<(u64, String)> {
    use std::io::{Read as _, Write as _};
    let mut input =
        std::fs::File::open(path).with_context(|| format!("failed to read {}", path.display()))?;
    let mut output = match copy {
        Some(copy) => Some(
            std::fs::File::create(copy)
                .with_context(|| format!("failed to write {}", copy.display()))?,
        ),
        None => None,
    };
    let mut hasher = Sha256::new();
    let mut buffer = vec![0; 1 << 20];
    let mut size = 0u64;
    loop {
        let read = input
            .read(&mut buffer)
            .with_context(|| format!("failed to read {}", path.display()))?;
        if read == 0 {
            break;
        }
        let chunk = &buffer[..read];
        hasher.update(chunk);
        if let (Some(output), Some(copy)) = (&mut output, copy) {
            output
                .write_all(chunk)
                .with_context(|| format!("failed to write {}", copy.display()))?;
        }
        size += u64::try_from(read).unwrap_or(u64::MAX);
    }
    if let (Some(output), Some(copy)) = (output, copy) {
        output
            .sync_all()
            .with_context(|| format!("failed to write {}", copy.display()))?;
    }
    Ok((size, hex(&hasher.finalize())))
}

/// What a worker restores: its key groups and its partitions.
#[derive(Clone, Debug)]
pub struct Owned {
    /// Its key groups, `[first, end)`.
    pub key_groups: (u32, u32),
    /// Its source partitions, by topic name and partition.
    pub partitions: BTreeSet<(String, i32)>,
}

/// Whether the state directory was already restored from `url` in `epoch` (by an earlier
/// start of this worker, which has made progress since). A restore of the same savepoint
/// in another epoch (a rollback: the volume may hold what another spec's worker made of
/// it) is a new restore.
pub fn already_restored(state_dir: &Path, url: &Url, epoch: Option<u64>) -> bool {
    std::fs::read_to_string(state_dir.join(RESTORED_FROM))
        .is_ok_and(|text| text.trim() == restored_from_text(url, epoch))
}

/// What a restore takes from a savepoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Take {
    /// The windows, the Kafka offsets and the watermark: the job goes on where it was.
    Everything,
    /// As `Everything`, but the accumulators of aggregates the job no longer has (or has
    /// with another function) are dropped rather than refused
    /// (`spec.allowNonRestoredState`).
    WhatMaps,
    /// The Kafka offsets and the watermark alone: the windows start empty, and the
    /// savepoint's state need not fit the job (`upgradeMode: Stateless`).
    OffsetsOnly,
}

/// Replaces the state in `state_dir` by what worker `owned` takes from `savepoint`, as a
/// complete checkpoint the worker then starts from. `job_state` describes the job that
/// will run on it; `epoch` is recorded with the savepoint's location
/// ([`already_restored`]). Returns the checkpoint record.
pub fn restore(
    savepoint: &Savepoint,
    identity: &JobIdentity,
    job_state: &StateDescription,
    owned: &Owned,
    state_dir: &Path,
    take: Take,
    epoch: Option<u64>,
) -> anyhow::Result<CheckpointRecord> {
    let problems = match take {
        Take::Everything => savepoint.problems(identity, job_state, false),
        Take::WhatMaps => savepoint.problems(identity, job_state, true),
        Take::OffsetsOnly => savepoint.identity_problems(identity),
    };
    anyhow::ensure!(
        problems.is_empty(),
        "failed to restore {}: {}",
        savepoint.url,
        problems.join("; ")
    );
    let manifest = &savepoint.manifest;
    let (first, end) = owned.key_groups;
    let with_state: Vec<_> = if take != Take::OffsetsOnly && manifest.state.window.is_some() {
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
    let ordinals: Vec<u32> = with_state.iter().map(|(ordinal, _)| *ordinal).collect();
    if let Err(error) = savepoint.fetch_parts(&ordinals, &staging) {
        std::fs::remove_dir_all(&staging).ok();
        return Err(error);
    }

    std::fs::remove_file(state_dir.join(RESTORED_FROM)).ok();
    for old in ["live", "checkpoints"] {
        let path = state_dir.join(old);
        if path.exists() {
            std::fs::remove_dir_all(&path)
                .with_context(|| format!("failed to clear {}", path.display()))?;
        }
    }
    // The part holding most of the worker's key groups becomes its database as it is
    // (its files moved, not read), cut down to the key groups it holds that the worker
    // owns; the others' entries of those key groups are added as new table files.
    // A part taken whole (the worker owns exactly its key groups: the same parallelism)
    // keeps its timers, which its checkpoint marked complete; otherwise the timers are
    // dropped, with that mark, and rebuilt from the windows when the worker starts.
    // Nothing else of the parts is kept: the meta entries (format, key groups,
    // aggregates) are the same in every part and checked against the job, and migrated,
    // at that start. Each part's windows fired up to its own watermark (its
    // `fired-through`), recorded by key-group range for that start.
    let mut fired = Vec::new();
    let fired_range = |store: &RocksDbStore, first: u32, end: u32| {
        store
            .get(Column::Meta, format::META_FIRED_THROUGH)
            .map(|entry| format::FiredThroughRange {
                first,
                end,
                fired_through: format::fired_through_of(entry.as_deref()),
            })
    };
    let base = with_state
        .iter()
        .max_by_key(|(ordinal, range)| (range.end - range.first, std::cmp::Reverse(*ordinal)))
        .copied();
    // The checkpoint of the part taken whole, if one is.
    let whole_part = match with_state.as_slice() {
        [(ordinal, range)] => manifest
            .parts
            .iter()
            .find(|part| part.ordinal == *ordinal && part.key_groups == *range)
            .map(|part| part.checkpoint.id),
        _ => None,
    };
    // The allowed lateness of the timers kept, when the part's are complete.
    let mut kept_timers = None;
    let mut target = match base {
        Some((ordinal, range)) => {
            let from = part_directory(&staging, ordinal).join("live");
            let live = state_dir.join("live");
            std::fs::rename(&from, &live).with_context(|| {
                format!("failed to move {} to {}", from.display(), live.display())
            })?;
            let mut target = RocksDbStore::open(state_dir)?;
            fired.push(fired_range(&target, range.first, range.end)?);
            target.retain_range(
                Column::Windows,
                &format::key_group_start(range.first),
                &format::key_group_start(range.end),
            )?;
            if let Some(part_checkpoint) = whole_part {
                kept_timers = target
                    .get(Column::Meta, format::META_TIMERS_COMPLETE)?
                    .as_deref()
                    .and_then(format::timers_complete_of)
                    .filter(|(_, marked)| *marked == part_checkpoint)
                    .map(|(lateness, _)| lateness);
            }
            if kept_timers.is_none() {
                target.retain_range(Column::Timers, &[], &[])?;
            }
            target
        }
        None => RocksDbStore::open(state_dir)?,
    };
    for (ordinal, range) in &with_state {
        if Some((*ordinal, *range)) == base {
            continue;
        }
        let source = RocksDbStore::open(&part_directory(&staging, *ordinal))?;
        fired.push(fired_range(&source, range.first, range.end)?);
        target.ingest_range_from(
            &source,
            Column::Windows,
            &format::key_group_start(range.first),
            &format::key_group_start(range.end),
            &staging.join(format!("ingest-{ordinal}")),
        )?;
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
    let (fired_through, fired) = fired_through_after_restore(fired, record.watermark);
    batch.put(
        Column::Meta,
        format::META_FIRED_THROUGH.to_vec(),
        format::time_bytes(fired_through).to_vec(),
    );
    if fired.is_empty() {
        batch.delete(Column::Meta, format::META_FIRED_THROUGH_RANGES.to_vec());
    } else {
        batch.put(
            Column::Meta,
            format::META_FIRED_THROUGH_RANGES.to_vec(),
            serde_json::to_vec(&fired).context("failed to encode the fired-through ranges")?,
        );
    }
    match kept_timers {
        // Complete in the checkpoint written here.
        Some(lateness) => batch.put(
            Column::Meta,
            format::META_TIMERS_COMPLETE.to_vec(),
            format::timers_complete_value(lateness, id),
        ),
        None => batch.delete(Column::Meta, format::META_TIMERS_COMPLETE.to_vec()),
    }
    target.write(batch)?;
    target.create_checkpoint(id)?;
    target.complete_checkpoint(id)?;
    drop(target);
    std::fs::remove_dir_all(&staging).ok();
    let marker = state_dir.join(RESTORED_FROM);
    std::fs::write(&marker, restored_from_text(&savepoint.url, epoch))
        .and_then(|()| std::fs::File::open(&marker).and_then(|file| file.sync_all()))
        .with_context(|| format!("failed to write {}", marker.display()))?;
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::Millis;

    fn range(first: u32, end: u32, fired_through: Millis) -> format::FiredThroughRange {
        format::FiredThroughRange {
            first,
            end,
            fired_through,
        }
    }

    #[test]
    fn windows_count_as_fired_by_the_lowest_watermark_and_by_their_parts() {
        let cases = [
            (
                "parts that fired equally need no ranges",
                vec![range(0, 8, 50), range(8, 16, 50)],
                60,
                (50, vec![]),
            ),
            (
                "a part that fired further keeps its watermark for its key groups",
                vec![range(0, 8, 50), range(8, 16, 70)],
                60,
                (50, vec![range(8, 16, 70)]),
            ),
            (
                "a restored watermark below every part's brings all down to it",
                vec![range(0, 8, 50), range(8, 16, 70)],
                40,
                (40, vec![range(0, 8, 50), range(8, 16, 70)]),
            ),
            (
                "a part of a store that records none (format 1): its flags alone",
                vec![range(0, 8, Millis::MIN), range(8, 16, 70)],
                60,
                (Millis::MIN, vec![range(8, 16, 70)]),
            ),
            (
                "no window restored (offsets only)",
                vec![],
                60,
                (60, vec![]),
            ),
        ];
        for (name, parts, watermark, expected) in cases {
            assert_eq!(
                fired_through_after_restore(parts, watermark),
                expected,
                "{name}"
            );
        }
    }
}
