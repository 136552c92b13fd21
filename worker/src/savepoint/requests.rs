//! The savepoints a worker was asked for, shared by the admin API (which requests and
//! reports) and the worker's loop (which takes them). One at a time: a request while one
//! is pending or in progress gets that one's id. Each savepoint's state is also written
//! to the state directory, so one a crash interrupted is reported failed after restart.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// Where a savepoint is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state")]
pub enum SavepointState {
    /// Asked for; the worker takes it at its next loop turn.
    Pending,
    /// Snapshot taken, files being written.
    InProgress,
    /// This worker's part is written.
    Completed {
        /// The savepoint's location.
        location: String,
        /// The bytes of this worker's part.
        bytes: u64,
        /// Whether the manifest is written (every worker's part is there).
        manifest: bool,
    },
    /// It failed and is never used.
    Failed {
        /// Why.
        reason: String,
    },
}

/// What `GET /v1/savepoints/{id}` answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavepointStatus {
    /// The id.
    pub id: String,
    /// Whether the worker stops consuming once it is taken.
    pub stop: bool,
    /// Its state.
    #[serde(flatten)]
    pub state: SavepointState,
}

/// Why a request is refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// No location to write to.
    #[error("savepoints need a location: set spec.savepoints.location (or --savepoint-location)")]
    NoLocation,
    /// A savepoint that does not stop the worker, in a job whose workers exchange events.
    #[error(
        "this job's workers exchange events through its repartition topic (partitioning: Any), so a consistent savepoint needs every worker stopped at its cut: request it with {{\"stop\": true}} on every worker, then POST /v1/resume to each once all parts are written"
    )]
    NeedsStop,
    /// A malformed id.
    #[error(
        "savepoint id {0:?} is not 1 to 63 lowercase letters, digits and '-', starting with a letter or digit"
    )]
    BadId(String),
}

#[derive(Debug, Default)]
struct Table {
    entries: BTreeMap<String, SavepointStatus>,
    /// The one pending or in progress.
    active: Option<String>,
    /// Pending, not yet taken by the loop.
    requested: Option<String>,
}

/// The savepoints of one worker.
#[derive(Debug)]
pub struct Savepoints {
    table: Mutex<Table>,
    location_configured: bool,
    requires_stop: bool,
    records: Option<PathBuf>,
}

fn valid_id(id: &str) -> bool {
    (1..=63).contains(&id.len())
        && id
            .bytes()
            .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'-')
        && !id.starts_with('-')
}

impl Savepoints {
    /// A worker's table; `records` is the directory where states are kept across
    /// restarts (`None`: memory only). Savepoints a crash left pending or in progress
    /// there are reported failed.
    pub fn new(location_configured: bool, records: Option<PathBuf>) -> Self {
        Self::with_rules(location_configured, false, records)
    }

    /// As [`Self::new`], for a job whose savepoints must stop the worker
    /// (`requires_stop`: its workers exchange events).
    pub fn with_rules(
        location_configured: bool,
        requires_stop: bool,
        records: Option<PathBuf>,
    ) -> Self {
        let mut table = Table::default();
        if let Some(directory) = &records {
            for status in read_records(directory) {
                let status = match status.state {
                    SavepointState::Pending | SavepointState::InProgress => SavepointStatus {
                        state: SavepointState::Failed {
                            reason: "the worker restarted before its part was written".into(),
                        },
                        ..status
                    },
                    _ => status,
                };
                write_record(directory, &status);
                table.entries.insert(status.id.clone(), status);
            }
        }
        Self {
            table: Mutex::new(table),
            location_configured,
            requires_stop,
            records,
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Asks for a savepoint (`id` `None`: one is made from the clock). Returns the id of
    /// the savepoint that will be taken: the one already active, if any.
    pub fn request(&self, id: Option<String>, stop: bool) -> Result<String, RequestError> {
        if !self.location_configured {
            return Err(RequestError::NoLocation);
        }
        if self.requires_stop && !stop {
            return Err(RequestError::NeedsStop);
        }
        if let Some(id) = &id
            && !valid_id(id)
        {
            return Err(RequestError::BadId(id.clone()));
        }
        let mut table = self.table();
        if let Some(active) = &table.active {
            return Ok(active.clone());
        }
        let id =
            id.unwrap_or_else(|| format!("sp-{}", chrono::Utc::now().format("%Y%m%d-%H%M%S-%3f")));
        let status = SavepointStatus {
            id: id.clone(),
            stop,
            state: SavepointState::Pending,
        };
        if let Some(directory) = &self.records {
            write_record(directory, &status);
        }
        table.entries.insert(id.clone(), status);
        table.active = Some(id.clone());
        table.requested = Some(id.clone());
        Ok(id)
    }

    /// The savepoint to take now, if one was asked for, and whether to stop after it.
    pub fn take_request(&self) -> Option<(String, bool)> {
        let mut table = self.table();
        let id = table.requested.take()?;
        let stop = table.entries.get(&id).is_some_and(|status| status.stop);
        Some((id, stop))
    }

    /// Records the new state of savepoint `id`; a finished one is no longer active.
    pub fn set(&self, id: &str, state: SavepointState) {
        let mut table = self.table();
        let finished = matches!(
            state,
            SavepointState::Completed { .. } | SavepointState::Failed { .. }
        );
        if let Some(status) = table.entries.get_mut(id) {
            status.state = state;
            if let Some(directory) = &self.records {
                write_record(directory, status);
            }
        }
        if finished && table.active.as_deref() == Some(id) {
            table.active = None;
        }
    }

    /// Whether a savepoint is pending or being taken.
    pub fn busy(&self) -> bool {
        self.table().active.is_some()
    }

    /// The status of savepoint `id`.
    pub fn status(&self, id: &str) -> Option<SavepointStatus> {
        self.table().entries.get(id).cloned()
    }

    /// Every savepoint this worker knows of.
    pub fn all(&self) -> Vec<SavepointStatus> {
        self.table().entries.values().cloned().collect()
    }
}

fn record_path(directory: &Path, id: &str) -> PathBuf {
    directory.join(format!("{id}.json"))
}

fn write_record(directory: &Path, status: &SavepointStatus) {
    let written = std::fs::create_dir_all(directory).and_then(|()| {
        std::fs::write(
            record_path(directory, &status.id),
            serde_json::to_vec(status).unwrap_or_default(),
        )
    });
    if let Err(error) = written {
        tracing::warn!(%error, savepoint = status.id, "failed to record the savepoint's state");
    }
}

fn read_records(directory: &Path) -> Vec<SavepointStatus> {
    let Ok(entries) = std::fs::read_dir(directory) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|entry| entry.path().extension().is_some_and(|ext| ext == "json"))
        .filter_map(|entry| serde_json::from_slice(&std::fs::read(entry.path()).ok()?).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_savepoint_at_a_time() {
        let savepoints = Savepoints::new(true, None);
        let first = savepoints.request(Some("a".into()), false).unwrap();
        assert_eq!(savepoints.request(Some("b".into()), true).unwrap(), "a");
        assert_eq!(savepoints.take_request(), Some((first.clone(), false)));
        assert_eq!(savepoints.take_request(), None);
        savepoints.set(&first, SavepointState::InProgress);
        assert_eq!(savepoints.request(None, false).unwrap(), "a");
        savepoints.set(&first, SavepointState::Failed { reason: "x".into() });
        let second = savepoints.request(Some("b".into()), true).unwrap();
        assert_eq!(second, "b");
        assert_eq!(savepoints.take_request(), Some(("b".into(), true)));
    }

    #[test]
    fn a_job_whose_workers_exchange_events_needs_stop() {
        let savepoints = Savepoints::with_rules(true, true, None);
        assert_eq!(
            savepoints.request(None, false),
            Err(RequestError::NeedsStop)
        );
        assert!(savepoints.request(None, true).is_ok());
    }

    #[test]
    fn refuses_without_a_location_or_with_a_bad_id() {
        assert_eq!(
            Savepoints::new(false, None).request(None, false),
            Err(RequestError::NoLocation)
        );
        let savepoints = Savepoints::new(true, None);
        for bad in ["", "UPPER", "a/b", "-a", &"x".repeat(64)] {
            assert!(
                matches!(
                    savepoints.request(Some(bad.into()), false),
                    Err(RequestError::BadId(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn one_interrupted_by_a_crash_is_reported_failed() {
        let directory = tempfile::tempdir().unwrap();
        let before = Savepoints::new(true, Some(directory.path().into()));
        before.request(Some("a".into()), false).unwrap();
        before.set("a", SavepointState::InProgress);
        drop(before);
        let after = Savepoints::new(true, Some(directory.path().into()));
        assert!(matches!(
            after.status("a").unwrap().state,
            SavepointState::Failed { .. }
        ));
        assert_eq!(after.request(Some("b".into()), false).unwrap(), "b");
    }
}
