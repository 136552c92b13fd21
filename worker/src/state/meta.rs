//! What a store says it holds (`meta`: format version, key groups, aggregates), checked
//! against the job that opens it. A decision ([`compare`], pure, tested as a table) and
//! its effect ([`open`]): a fresh store is stamped; a store of a newer format or another
//! number of key groups is refused; aggregates are matched by name, so adding one is a
//! migration that rewrites each window's accumulators in the new order, and removing one
//! or changing its function is refused, unless the job allows dropping state that no
//! longer maps (`spec.allowNonRestoredState`): then the migration leaves it out. State is
//! never read by position.

use sluice_crds::pipeline::AggregateFunction;

use super::format::{
    self, FORMAT_VERSION, META_AGGREGATES, META_FORMAT_VERSION, META_KEY_GROUPS, StateMeta,
    StoredAggregate,
};
use super::store::{Column, StateBatch, StateError, StateStore};
use crate::pipeline::aggregate::Accumulator;

/// Why a job cannot use the state in a store.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IncompatibleState {
    /// Written by a newer worker.
    #[error(
        "the state was written in format version {found}, newer than this worker's {supported}: run a worker image at least as new as the one that wrote it"
    )]
    NewerFormat {
        /// The store's version.
        found: u32,
        /// This worker's version.
        supported: u32,
    },
    /// Another number of key groups.
    #[error(
        "the state has {stored} key groups but the job has maxParallelism {job}: maxParallelism cannot change for a job with state; set it back to {stored}"
    )]
    KeyGroups {
        /// The store's.
        stored: u32,
        /// The job's.
        job: u32,
    },
    /// An aggregate with state is gone from the job.
    #[error(
        "the state holds aggregate {name:?} ({function:?}), which the job no longer has: put it back, or set spec.allowNonRestoredState: true to drop its state"
    )]
    AggregateRemoved {
        /// Its name.
        name: String,
        /// Its function.
        function: AggregateFunction,
    },
    /// An aggregate keeps its name but not its function.
    #[error(
        "aggregate {name:?} was {stored:?} and is now {job:?}: its state cannot be reused; give the new aggregate another name, or set spec.allowNonRestoredState: true to start it empty"
    )]
    AggregateChanged {
        /// Its name.
        name: String,
        /// The function in the state.
        stored: AggregateFunction,
        /// The function in the job.
        job: AggregateFunction,
    },
    /// The entries cannot be read.
    #[error("the state's meta entries are malformed: {0}")]
    Malformed(String),
}

/// What opening a store means for its window values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MetaDecision {
    /// A store with no state yet: stamp it with the job's description.
    Stamp,
    /// The store holds exactly the job's aggregates in the job's order.
    Unchanged,
    /// Each window's accumulators must be rewritten: for each of the job's aggregates, in
    /// order, the position of its accumulator in the store (`None`: a new aggregate,
    /// which starts empty in windows already open).
    Migrate(Vec<Option<usize>>),
}

/// Decides whether the state described by `stored` can serve `job`, and how.
/// `drop_unmapped`: the accumulators of an aggregate the job no longer has, or has with
/// another function, are dropped rather than refused.
pub fn compare(
    stored: Option<&StateMeta>,
    job: &StateMeta,
    drop_unmapped: bool,
) -> Result<MetaDecision, IncompatibleState> {
    let Some(stored) = stored else {
        return Ok(MetaDecision::Stamp);
    };
    if stored.format_version > FORMAT_VERSION {
        return Err(IncompatibleState::NewerFormat {
            found: stored.format_version,
            supported: FORMAT_VERSION,
        });
    }
    if stored.key_groups != job.key_groups {
        return Err(IncompatibleState::KeyGroups {
            stored: stored.key_groups,
            job: job.key_groups,
        });
    }
    for old in &stored.aggregates {
        match job.aggregates.iter().find(|new| new.name == old.name) {
            _ if drop_unmapped => {}
            None => {
                return Err(IncompatibleState::AggregateRemoved {
                    name: old.name.clone(),
                    function: old.function,
                });
            }
            Some(new) if new.function != old.function => {
                return Err(IncompatibleState::AggregateChanged {
                    name: old.name.clone(),
                    stored: old.function,
                    job: new.function,
                });
            }
            Some(_) => {}
        }
    }
    if stored.aggregates == job.aggregates {
        return Ok(MetaDecision::Unchanged);
    }
    Ok(MetaDecision::Migrate(
        job.aggregates
            .iter()
            .map(|new| {
                stored
                    .aggregates
                    .iter()
                    .position(|old| old.name == new.name && old.function == new.function)
            })
            .collect(),
    ))
}

/// Reads the description of the state in `store`.
pub fn read(store: &dyn StateStore) -> Result<Option<StateMeta>, StateError> {
    let version = store.get(Column::Meta, META_FORMAT_VERSION)?;
    let key_groups = store.get(Column::Meta, META_KEY_GROUPS)?;
    let aggregates = store.get(Column::Meta, META_AGGREGATES)?;
    StateMeta::decode(
        version.as_deref(),
        key_groups.as_deref(),
        aggregates.as_deref(),
    )
    .map_err(|message| StateError {
        action: "read the state's meta entries",
        message,
    })
}

/// Failure to open a store for a job.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StateError),
    /// The state does not fit the job.
    #[error("failed to use the state for this job: {0}")]
    Incompatible(#[from] IncompatibleState),
}

/// Checks `store` against the job described by `job` and makes it the job's: stamps a
/// fresh store, migrates window values when aggregates were added or reordered, refuses
/// what cannot be reused. Returns the decision taken.
pub fn open(
    store: &mut dyn StateStore,
    job: &StateMeta,
    drop_unmapped: bool,
) -> Result<MetaDecision, OpenError> {
    let stored = read(store)?;
    let decision = compare(stored.as_ref(), job, drop_unmapped)?;
    match &decision {
        // An older version is read by its rules, then stamped with this one: what this
        // worker writes from now on follows this version's (an older worker refuses it).
        MetaDecision::Unchanged
            if stored
                .as_ref()
                .is_some_and(|stored| stored.format_version < job.format_version) =>
        {
            write(store, job)?;
        }
        MetaDecision::Unchanged => {}
        MetaDecision::Stamp => write(store, job)?,
        MetaDecision::Migrate(positions) => {
            migrate(store, positions, &job.aggregates)?;
            write(store, job)?;
        }
    }
    Ok(decision)
}

fn write(store: &mut dyn StateStore, meta: &StateMeta) -> Result<(), StateError> {
    let mut batch = StateBatch::default();
    for (key, value) in meta.entries() {
        batch.put(Column::Meta, key.to_vec(), value);
    }
    store.write(batch)
}

/// Rewrites every window value so its accumulators follow `aggregates`.
fn migrate(
    store: &mut dyn StateStore,
    positions: &[Option<usize>],
    aggregates: &[StoredAggregate],
) -> Result<(), StateError> {
    const PAGE: usize = 65_536;
    let mut from = Vec::new();
    loop {
        let entries = store.scan_range(Column::Windows, &from, None, PAGE)?;
        let mut batch = StateBatch::default();
        let mut value = Vec::new();
        for (key, bytes) in &entries {
            let (flag, old) = format::decode_window_value(bytes).ok_or_else(|| StateError {
                action: "migrate window state",
                message: format!("malformed window value of {} bytes", bytes.len()),
            })?;
            let accumulators: Vec<Accumulator> = positions
                .iter()
                .zip(aggregates)
                .map(|(position, aggregate)| {
                    position
                        .and_then(|position| old.get(position).cloned())
                        .unwrap_or_else(|| Accumulator::new(aggregate.function))
                })
                .collect();
            format::window_value(flag, &accumulators, &mut value);
            batch.put(Column::Windows, key.clone(), value.clone());
        }
        store.write(batch)?;
        match entries.last() {
            Some((last, _)) if entries.len() == PAGE => {
                from.clone_from(last);
                from.push(0);
            }
            _ => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use AggregateFunction::{Avg, Count, Max, Sum};

    fn meta(key_groups: u32, aggregates: &[(&str, AggregateFunction)]) -> StateMeta {
        StateMeta {
            format_version: FORMAT_VERSION,
            key_groups,
            aggregates: aggregates
                .iter()
                .map(|(name, function)| StoredAggregate {
                    name: (*name).to_string(),
                    function: *function,
                })
                .collect(),
        }
    }

    #[test]
    fn decides_by_name_never_by_position() {
        let stored = meta(16, &[("avgLatency", Avg), ("views", Count)]);
        let newer = StateMeta {
            format_version: FORMAT_VERSION + 1,
            ..stored.clone()
        };
        struct Case {
            name: &'static str,
            stored: Option<StateMeta>,
            job: StateMeta,
            expected: Result<MetaDecision, IncompatibleState>,
        }
        let cases = [
            Case {
                name: "a fresh store is stamped",
                stored: None,
                job: stored.clone(),
                expected: Ok(MetaDecision::Stamp),
            },
            Case {
                name: "the same aggregates change nothing",
                stored: Some(stored.clone()),
                job: stored.clone(),
                expected: Ok(MetaDecision::Unchanged),
            },
            Case {
                name: "an aggregate added before the others shifts nothing: each is found by name",
                stored: Some(stored.clone()),
                job: meta(16, &[("avgLatency", Avg), ("bytes", Sum), ("views", Count)]),
                expected: Ok(MetaDecision::Migrate(vec![Some(0), None, Some(1)])),
            },
            Case {
                name: "a removed aggregate is refused",
                stored: Some(stored.clone()),
                job: meta(16, &[("views", Count)]),
                expected: Err(IncompatibleState::AggregateRemoved {
                    name: "avgLatency".into(),
                    function: Avg,
                }),
            },
            Case {
                name: "a renamed aggregate is a removal",
                stored: Some(stored.clone()),
                job: meta(16, &[("avgLatencyMs", Avg), ("views", Count)]),
                expected: Err(IncompatibleState::AggregateRemoved {
                    name: "avgLatency".into(),
                    function: Avg,
                }),
            },
            Case {
                name: "a changed function is refused",
                stored: Some(stored.clone()),
                job: meta(16, &[("avgLatency", Max), ("views", Count)]),
                expected: Err(IncompatibleState::AggregateChanged {
                    name: "avgLatency".into(),
                    stored: Avg,
                    job: Max,
                }),
            },
            Case {
                name: "other key groups are refused",
                stored: Some(stored.clone()),
                job: meta(32, &[("avgLatency", Avg), ("views", Count)]),
                expected: Err(IncompatibleState::KeyGroups {
                    stored: 16,
                    job: 32,
                }),
            },
            Case {
                name: "a newer format is refused",
                stored: Some(newer),
                job: stored.clone(),
                expected: Err(IncompatibleState::NewerFormat {
                    found: FORMAT_VERSION + 1,
                    supported: FORMAT_VERSION,
                }),
            },
        ];
        for case in cases {
            assert_eq!(
                compare(case.stored.as_ref(), &case.job, false),
                case.expected,
                "{}",
                case.name
            );
        }
    }

    #[test]
    fn state_that_no_longer_maps_is_dropped_only_when_allowed() {
        let stored = meta(16, &[("avgLatency", Avg), ("views", Count)]);
        let cases = [
            (
                "a removed aggregate is left out",
                meta(16, &[("views", Count)]),
                Ok(MetaDecision::Migrate(vec![Some(1)])),
            ),
            (
                "a changed function starts empty",
                meta(16, &[("avgLatency", Max), ("views", Count)]),
                Ok(MetaDecision::Migrate(vec![None, Some(1)])),
            ),
            (
                "a rename keeps nothing of the old name",
                meta(16, &[("views", Count), ("avgLatencyMs", Avg)]),
                Ok(MetaDecision::Migrate(vec![Some(1), None])),
            ),
            (
                "the same aggregates change nothing",
                stored.clone(),
                Ok(MetaDecision::Unchanged),
            ),
            (
                "other key groups are still refused",
                meta(32, &[("views", Count)]),
                Err(IncompatibleState::KeyGroups {
                    stored: 16,
                    job: 32,
                }),
            ),
        ];
        for (name, job, expected) in cases {
            assert_eq!(compare(Some(&stored), &job, true), expected, "{name}");
        }
    }

    #[test]
    fn a_store_of_an_older_version_is_stamped_with_this_one() {
        let job = meta(16, &[("views", Count)]);
        let older = StateMeta {
            format_version: FORMAT_VERSION - 1,
            ..job.clone()
        };
        let mut store = crate::state::MemoryStore::default();
        write(&mut store, &older).unwrap();
        assert_eq!(
            open(&mut store, &job, false).unwrap(),
            MetaDecision::Unchanged
        );
        // An older worker refuses what this one writes from now on.
        assert_eq!(read(&store).unwrap(), Some(job.clone()));
        assert_eq!(
            open(&mut store, &job, false).unwrap(),
            MetaDecision::Unchanged
        );
    }
}
