//! Savepoints (docs/savepoints.md): consistent snapshots of a job's state and offsets,
//! written to a volume or an object store, restorable at any parallelism.
//!
//! - [`format`]: what a savepoint holds and when a pipeline can restore it.
//! - [`location`]: `file://` and `s3://` locations.
//! - [`take`]: a worker's part from a local snapshot, and the manifest.
//! - [`restore`]: a worker's key groups and partitions from any savepoint of its job.
//! - [`manage`]: listing and deleting, with shared files reference-counted.
//! - [`requests`]: the savepoints asked of a worker through its admin API.

pub mod format;
pub mod location;
pub mod manage;
pub mod requests;
pub mod restore;
pub mod take;

use std::path::PathBuf;
use std::sync::Arc;

pub use format::{JobIdentity, Manifest, Part, StateDescription};
pub use location::{Directory, Url};
pub use requests::{SavepointState, SavepointStatus, Savepoints};

/// The location of a job's savepoints below the configured location.
pub fn job_url(location: &Url, job: &JobIdentity) -> Url {
    location.join(&job.namespace).join(&job.name)
}

/// Writes `part` from the snapshot directory `snapshot` into the job's savepoints at
/// `job_url` on a thread of its own, reporting to `savepoints`, and removes the snapshot.
pub fn spawn_upload(savepoints: Arc<Savepoints>, job_url: Url, part: Part, snapshot: PathBuf) {
    let id = part.savepoint.clone();
    let spawned = std::thread::Builder::new().name("savepoint".into()).spawn({
        let savepoints = savepoints.clone();
        let id = id.clone();
        move || {
            let started = std::time::Instant::now();
            let outcome = Directory::open(&job_url)
                .and_then(|directory| take::write_part(&directory, part, &snapshot));
            std::fs::remove_dir_all(&snapshot).ok();
            let state = match outcome {
                Ok(written) => {
                    tracing::info!(
                        savepoint = id,
                        bytes = written.part.size(),
                        uploaded_bytes = written.uploaded_bytes,
                        manifest = written.manifest.is_some(),
                        seconds = started.elapsed().as_secs_f64(),
                        "wrote this worker's part of the savepoint"
                    );
                    SavepointState::Completed {
                        location: job_url.join(&id).to_string(),
                        bytes: written.part.size(),
                        manifest: written.manifest.is_some(),
                    }
                }
                Err(error) => {
                    tracing::error!(
                        savepoint = id,
                        error = format!("{error:#}"),
                        "the savepoint failed"
                    );
                    SavepointState::Failed {
                        reason: format!("{error:#}"),
                    }
                }
            };
            savepoints.set(&id, state);
        }
    });
    if let Err(error) = spawned {
        savepoints.set(
            &id,
            SavepointState::Failed {
                reason: format!("failed to start the upload thread: {error}"),
            },
        );
    }
}
