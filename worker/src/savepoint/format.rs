//! What a savepoint holds, as written at its location (docs/savepoints.md):
//!
//! ```text
//! <location>/<namespace>/<name>/             the job's savepoints
//!     shared/<sha256>.sst                     table files, by content, shared by savepoints
//!     <id>/part-<ordinal>.json                one worker's part (written after its files)
//!     <id>/part-<ordinal>/<file>              its small RocksDB files (MANIFEST, OPTIONS…)
//!     <id>/manifest.json                      written last: without it, no savepoint
//! ```
//!
//! Every file is listed with its size and SHA-256. The state description says what the
//! state means (key, window, aggregates, key groups), so a new pipeline can be checked
//! against it without reading any state ([`compatibility`]).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sluice_crds::CheckedJob;
use sluice_crds::pipeline::{AggregateFunction, WindowKind};

use crate::state::format::{CheckpointRecord, FORMAT_VERSION, StoredAggregate};

/// The savepoint format this worker writes and the newest it reads.
pub const SAVEPOINT_FORMAT_VERSION: u32 = 1;

/// The name of the manifest of a savepoint.
pub const MANIFEST: &str = "manifest.json";

/// The directory of content-addressed table files, beside the job's savepoints.
pub const SHARED: &str = "shared";

/// Which job a savepoint belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobIdentity {
    /// The StreamJob's namespace.
    pub namespace: String,
    /// The StreamJob's name.
    pub name: String,
}

/// A window as far as its state is concerned (allowed lateness is not: changing it keeps
/// every window's state meaningful).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all_fields = "camelCase")]
pub enum WindowDescription {
    /// Fixed windows.
    Tumbling {
        /// Length, in milliseconds.
        size_millis: u64,
    },
    /// Overlapping windows.
    Sliding {
        /// Length, in milliseconds.
        size_millis: u64,
        /// Distance between starts, in milliseconds.
        slide_millis: u64,
    },
    /// Sessions.
    Session {
        /// Inactivity that closes a session, in milliseconds.
        gap_millis: u64,
    },
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl From<WindowKind> for WindowDescription {
    fn from(kind: WindowKind) -> Self {
        match kind {
            WindowKind::Tumbling { size } => Self::Tumbling {
                size_millis: millis(size),
            },
            WindowKind::Sliding { size, slide } => Self::Sliding {
                size_millis: millis(size),
                slide_millis: millis(slide),
            },
            WindowKind::Session { gap } => Self::Session {
                gap_millis: millis(gap),
            },
        }
    }
}

/// What the state of a job means: what must not change for a new pipeline to reuse it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StateDescription {
    /// The state format version of the RocksDB files.
    pub state_format_version: u32,
    /// The number of key groups (`spec.maxParallelism`).
    pub key_groups: u32,
    /// The `keyBy` expression, as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<WindowDescription>,
    /// The aggregates, in stored order.
    #[serde(default)]
    pub aggregates: Vec<StoredAggregate>,
}

impl StateDescription {
    /// The description of `job`'s state.
    pub fn of(job: &CheckedJob) -> Self {
        let windowed = job.pipeline.windowed();
        Self {
            state_format_version: FORMAT_VERSION,
            key_groups: u32::from(job.key_groups.get()),
            key: job
                .pipeline
                .key_by()
                .map(|expression| expression.source.clone()),
            window: windowed.map(|windowed| windowed.window.kind.into()),
            aggregates: windowed
                .map(|windowed| {
                    windowed
                        .aggregates
                        .iter()
                        .map(|output| StoredAggregate {
                            name: output.name.clone(),
                            function: output.function,
                        })
                        .collect()
                })
                .unwrap_or_default(),
        }
    }
}

/// One file of a part.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FileEntry {
    /// Its name in the RocksDB directory.
    pub name: String,
    /// Where it is, relative to the job's savepoint directory.
    pub object: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its SHA-256, 64 lowercase hex digits.
    pub sha256: String,
}

/// A contiguous range of key groups, `[first, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyGroupRange {
    /// The first.
    pub first: u32,
    /// One past the last.
    pub end: u32,
}

impl KeyGroupRange {
    /// The overlap with `[first, end)`, if any.
    pub fn intersect(self, first: u32, end: u32) -> Option<Self> {
        let first = self.first.max(first);
        let end = self.end.min(end);
        (first < end).then_some(Self { first, end })
    }
}

/// One worker's part: its state files and its checkpoint record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Part {
    /// The savepoint format.
    pub format_version: u32,
    /// The savepoint it belongs to.
    pub savepoint: String,
    /// The job.
    pub job: JobIdentity,
    /// The hash of the spec the worker ran (`status.deployed.specHash`), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec_hash: Option<String>,
    /// What the state means.
    pub state: StateDescription,
    /// The worker's ordinal.
    pub ordinal: u32,
    /// The job's parallelism when it was taken.
    pub parallelism: u32,
    /// The key groups whose state the files hold.
    pub key_groups: KeyGroupRange,
    /// Offsets, clocks and watermark at the transaction boundary it was taken at.
    pub checkpoint: CheckpointRecord,
    /// The RocksDB files.
    pub files: Vec<FileEntry>,
    /// When it was taken (RFC 3339).
    pub taken_at: String,
}

impl Part {
    /// Its name in the savepoint directory.
    pub fn file_name(ordinal: u32) -> String {
        format!("part-{ordinal}.json")
    }

    /// The bytes of its files.
    pub fn size(&self) -> u64 {
        self.files.iter().map(|file| file.size).sum()
    }
}

/// A complete savepoint: every part, written once all parts were.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// The savepoint format.
    pub format_version: u32,
    /// The savepoint's id.
    pub id: String,
    /// The job.
    pub job: JobIdentity,
    /// The hash of the spec the workers ran, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec_hash: Option<String>,
    /// What the state means.
    pub state: StateDescription,
    /// The job's parallelism when it was taken (the number of parts).
    pub parallelism: u32,
    /// The parts, by ordinal.
    pub parts: Vec<Part>,
    /// When the last part was written (RFC 3339).
    pub completed_at: String,
}

impl Manifest {
    /// The manifest of `parts` if they make a whole savepoint: one part per ordinal of the
    /// same parallelism, of one job and one state description.
    pub fn assemble(mut parts: Vec<Part>, completed_at: String) -> Option<Self> {
        parts.sort_by_key(|part| part.ordinal);
        let first = parts.first()?.clone();
        let whole = u32::try_from(parts.len()).ok()? == first.parallelism
            && parts.iter().enumerate().all(|(index, part)| {
                u32::try_from(index).ok() == Some(part.ordinal)
                    && part.parallelism == first.parallelism
                    && part.job == first.job
                    && part.state == first.state
                    && part.savepoint == first.savepoint
            });
        whole.then(|| Self {
            format_version: SAVEPOINT_FORMAT_VERSION,
            id: first.savepoint.clone(),
            job: first.job.clone(),
            spec_hash: first.spec_hash.clone(),
            state: first.state.clone(),
            parallelism: first.parallelism,
            parts,
            completed_at,
        })
    }

    /// The bytes of all its files (shared ones counted in each savepoint that uses them).
    pub fn size(&self) -> u64 {
        self.parts.iter().map(Part::size).sum()
    }

    /// Every object it references, relative to the job's savepoint directory.
    pub fn objects(&self) -> impl Iterator<Item = &str> {
        self.parts
            .iter()
            .flat_map(|part| part.files.iter().map(|file| file.object.as_str()))
    }
}

/// Why a pipeline cannot restore a savepoint's state.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Incompatibility {
    /// Written by a newer worker.
    #[error(
        "the savepoint is in format version {found}, newer than this worker's {supported}: use a worker at least as new as the one that took it"
    )]
    NewerFormat {
        /// The savepoint's.
        found: u32,
        /// This worker's.
        supported: u32,
    },
    /// Another `maxParallelism`.
    #[error(
        "the savepoint has {saved} key groups and the job has maxParallelism {job}: maxParallelism cannot change for a job with state; set spec.maxParallelism back to {saved}"
    )]
    KeyGroups {
        /// The savepoint's.
        saved: u32,
        /// The job's.
        job: u32,
    },
    /// The key expression changed: state is keyed by the old key.
    #[error(
        "the keyBy expression changed from {saved:?} to {job:?}: state is kept per key, so it cannot be reused; keep the old key, or start without state (upgradeMode: Stateless)"
    )]
    KeyChanged {
        /// The savepoint's.
        saved: Option<String>,
        /// The job's.
        job: Option<String>,
    },
    /// The window kind or size changed: open windows would not line up.
    #[error(
        "the window changed from {saved} to {job}: open windows cannot be carried over; keep the old window, or start without state (upgradeMode: Stateless)"
    )]
    WindowChanged {
        /// The savepoint's.
        saved: String,
        /// The job's.
        job: String,
    },
    /// An aggregate with state is gone.
    #[error(
        "aggregate {name:?} ({function:?}) has state in the savepoint and is gone from the job: put it back, or set spec.allowNonRestoredState: true to drop its state"
    )]
    AggregateRemoved {
        /// Its name.
        name: String,
        /// Its function.
        function: AggregateFunction,
    },
    /// An aggregate kept its name and changed its function.
    #[error(
        "aggregate {name:?} was {saved:?} and is now {job:?}: its state cannot be reused; give the new aggregate another name, or set spec.allowNonRestoredState: true to start it empty"
    )]
    AggregateChanged {
        /// Its name.
        name: String,
        /// The savepoint's function.
        saved: AggregateFunction,
        /// The job's function.
        job: AggregateFunction,
    },
}

fn describe_window(window: Option<WindowDescription>) -> String {
    match window {
        None => "no window".into(),
        Some(WindowDescription::Tumbling { size_millis }) => {
            format!("tumbling {}", humantime_millis(size_millis))
        }
        Some(WindowDescription::Sliding {
            size_millis,
            slide_millis,
        }) => format!(
            "sliding {} every {}",
            humantime_millis(size_millis),
            humantime_millis(slide_millis)
        ),
        Some(WindowDescription::Session { gap_millis }) => {
            format!("session with gap {}", humantime_millis(gap_millis))
        }
    }
}

fn humantime_millis(millis: u64) -> String {
    humantime::format_duration(Duration::from_millis(millis)).to_string()
}

/// Whether a job whose state is described by `job` can restore state described by
/// `saved` (taken in savepoint format `format_version`): every reason it cannot, empty
/// when it can. Stateless changes (filters, maps before the key, sinks, allowed lateness,
/// added aggregates) are compatible; a savepoint with no window state fits any job with
/// the same key groups. `drop_unmapped` (`spec.allowNonRestoredState`): an aggregate
/// removed, or with another function, is dropped, not a reason.
pub fn compatibility(
    format_version: u32,
    saved: &StateDescription,
    job: &StateDescription,
    drop_unmapped: bool,
) -> Vec<Incompatibility> {
    let mut reasons = Vec::new();
    if format_version > SAVEPOINT_FORMAT_VERSION {
        reasons.push(Incompatibility::NewerFormat {
            found: format_version,
            supported: SAVEPOINT_FORMAT_VERSION,
        });
    }
    if saved.state_format_version > FORMAT_VERSION {
        reasons.push(Incompatibility::NewerFormat {
            found: saved.state_format_version,
            supported: FORMAT_VERSION,
        });
    }
    if saved.key_groups != job.key_groups {
        reasons.push(Incompatibility::KeyGroups {
            saved: saved.key_groups,
            job: job.key_groups,
        });
    }
    if saved.window.is_none() {
        // No window state: only offsets, which any pipeline can continue from.
        return reasons;
    }
    if saved.key != job.key {
        reasons.push(Incompatibility::KeyChanged {
            saved: saved.key.clone(),
            job: job.key.clone(),
        });
    }
    if saved.window != job.window {
        reasons.push(Incompatibility::WindowChanged {
            saved: describe_window(saved.window),
            job: describe_window(job.window),
        });
    }
    for old in &saved.aggregates {
        match job.aggregates.iter().find(|new| new.name == old.name) {
            _ if drop_unmapped => {}
            None => reasons.push(Incompatibility::AggregateRemoved {
                name: old.name.clone(),
                function: old.function,
            }),
            Some(new) if new.function != old.function => {
                reasons.push(Incompatibility::AggregateChanged {
                    name: old.name.clone(),
                    saved: old.function,
                    job: new.function,
                });
            }
            Some(_) => {}
        }
    }
    reasons
}

#[cfg(test)]
mod tests {
    use super::*;
    use AggregateFunction::{Avg, Count, Sum};

    fn aggregate(name: &str, function: AggregateFunction) -> StoredAggregate {
        StoredAggregate {
            name: name.into(),
            function,
        }
    }

    fn base() -> StateDescription {
        StateDescription {
            state_format_version: FORMAT_VERSION,
            key_groups: 128,
            key: Some("event.user".into()),
            window: Some(WindowDescription::Tumbling {
                size_millis: 60_000,
            }),
            aggregates: vec![aggregate("views", Count), aggregate("total", Sum)],
        }
    }

    #[test]
    fn compatibility_over_a_table_of_pipeline_changes() {
        struct Case {
            name: &'static str,
            change: fn(&mut StateDescription),
            compatible: bool,
        }
        let cases = [
            Case {
                name: "nothing changed (filters, maps, sinks do not appear here)",
                change: |_| {},
                compatible: true,
            },
            Case {
                name: "an aggregate added",
                change: |job| job.aggregates.push(aggregate("mean", Avg)),
                compatible: true,
            },
            Case {
                name: "aggregates reordered",
                change: |job| job.aggregates.reverse(),
                compatible: true,
            },
            Case {
                name: "an aggregate removed",
                change: |job| {
                    job.aggregates.pop();
                },
                compatible: false,
            },
            Case {
                name: "an aggregate's function changed",
                change: |job| job.aggregates[1].function = Avg,
                compatible: false,
            },
            Case {
                name: "key expression changed",
                change: |job| job.key = Some("event.page".into()),
                compatible: false,
            },
            Case {
                name: "window size changed",
                change: |job| {
                    job.window = Some(WindowDescription::Tumbling {
                        size_millis: 30_000,
                    });
                },
                compatible: false,
            },
            Case {
                name: "window kind changed",
                change: |job| {
                    job.window = Some(WindowDescription::Sliding {
                        size_millis: 60_000,
                        slide_millis: 10_000,
                    });
                },
                compatible: false,
            },
            Case {
                name: "window removed",
                change: |job| {
                    job.window = None;
                    job.aggregates.clear();
                },
                compatible: false,
            },
            Case {
                name: "maxParallelism changed",
                change: |job| job.key_groups = 256,
                compatible: false,
            },
        ];
        for case in cases {
            let mut job = base();
            (case.change)(&mut job);
            let reasons = compatibility(SAVEPOINT_FORMAT_VERSION, &base(), &job, false);
            assert_eq!(
                reasons.is_empty(),
                case.compatible,
                "{}: {reasons:?}",
                case.name
            );
        }
    }

    #[test]
    fn allowing_non_restored_state_drops_aggregates_but_not_the_key_or_window() {
        let mut removed = base();
        removed.aggregates.pop();
        let mut changed = base();
        changed.aggregates[0].function = Sum;
        let mut rekeyed = base();
        rekeyed.key = Some("event.page".into());
        let cases = [
            ("an aggregate removed", removed, true),
            ("a function changed", changed, true),
            ("the key changed", rekeyed, false),
        ];
        for (name, job, compatible) in cases {
            assert!(
                !compatibility(SAVEPOINT_FORMAT_VERSION, &base(), &job, false).is_empty(),
                "{name}: refused without the opt-in"
            );
            let reasons = compatibility(SAVEPOINT_FORMAT_VERSION, &base(), &job, true);
            assert_eq!(reasons.is_empty(), compatible, "{name}: {reasons:?}");
        }
    }

    #[test]
    fn a_savepoint_without_window_state_fits_a_new_window() {
        let mut saved = base();
        saved.key = None;
        saved.window = None;
        saved.aggregates.clear();
        assert!(compatibility(SAVEPOINT_FORMAT_VERSION, &saved, &base(), false).is_empty());
    }

    #[test]
    fn a_newer_format_is_refused_with_what_to_do() {
        let reasons = compatibility(SAVEPOINT_FORMAT_VERSION + 1, &base(), &base(), false);
        assert_eq!(reasons.len(), 1);
        assert!(reasons[0].to_string().contains("at least as new"));
    }

    #[test]
    fn messages_name_both_sides() {
        let mut job = base();
        job.window = Some(WindowDescription::Session { gap_millis: 5_000 });
        let reasons = compatibility(SAVEPOINT_FORMAT_VERSION, &base(), &job, false);
        assert_eq!(
            reasons[0].to_string(),
            "the window changed from tumbling 1m to session with gap 5s: open windows cannot be carried over; keep the old window, or start without state (upgradeMode: Stateless)"
        );
    }

    fn part(ordinal: u32, parallelism: u32) -> Part {
        Part {
            format_version: SAVEPOINT_FORMAT_VERSION,
            savepoint: "sp-1".into(),
            job: JobIdentity {
                namespace: "default".into(),
                name: "views".into(),
            },
            spec_hash: None,
            state: base(),
            ordinal,
            parallelism,
            key_groups: KeyGroupRange { first: 0, end: 1 },
            checkpoint: CheckpointRecord::default(),
            files: Vec::new(),
            taken_at: String::new(),
        }
    }

    #[test]
    fn a_manifest_needs_one_part_per_ordinal() {
        let at = || "2026-11-29T00:00:00Z".to_string();
        assert!(Manifest::assemble(vec![part(1, 2), part(0, 2)], at()).is_some());
        assert!(Manifest::assemble(vec![part(0, 2)], at()).is_none());
        assert!(Manifest::assemble(vec![part(0, 2), part(0, 2)], at()).is_none());
        assert!(Manifest::assemble(vec![part(0, 2), part(1, 3)], at()).is_none());
        assert!(Manifest::assemble(Vec::new(), at()).is_none());
        let mut other = part(1, 2);
        other.job.name = "other".into();
        assert!(Manifest::assemble(vec![part(0, 2), other], at()).is_none());
    }
}
