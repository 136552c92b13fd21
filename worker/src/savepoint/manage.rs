//! Listing and deleting a job's savepoints. Shared table files are reference-counted by
//! the savepoints that list them: deleting a savepoint deletes its own files and the
//! shared ones no other savepoint (complete, or with parts written) references.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Context as _;

use super::format::{MANIFEST, Manifest, Part, SHARED};
use super::location::Directory;

/// One savepoint of a job, as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    /// Its id.
    pub id: String,
    /// Its manifest; `None`: incomplete (parts without a manifest), never restorable.
    pub manifest: Option<Manifest>,
    /// The objects under its own directory, and the bytes they take.
    pub own_bytes: u64,
}

/// Every savepoint in the job's directory, oldest id first.
pub fn list(job_directory: &Directory) -> anyhow::Result<Vec<Listed>> {
    let mut savepoints: BTreeMap<String, Listed> = BTreeMap::new();
    for (object, size) in job_directory.list("")? {
        let Some((id, rest)) = object.split_once('/') else {
            continue;
        };
        if id == SHARED {
            continue;
        }
        let entry = savepoints.entry(id.to_string()).or_insert_with(|| Listed {
            id: id.to_string(),
            manifest: None,
            own_bytes: 0,
        });
        entry.own_bytes += size;
        if rest == MANIFEST {
            let bytes = job_directory.get(&object)?.unwrap_or_default();
            entry.manifest = serde_json::from_slice(&bytes).ok();
        }
    }
    Ok(savepoints.into_values().collect())
}

/// The shared objects that savepoint `id` references, from its manifest or, if it has
/// none, its parts.
fn references(job_directory: &Directory, id: &str) -> anyhow::Result<BTreeSet<String>> {
    let mut objects = BTreeSet::new();
    if let Some(bytes) = job_directory.get(&format!("{id}/{MANIFEST}"))?
        && let Ok(manifest) = serde_json::from_slice::<Manifest>(&bytes)
    {
        objects.extend(manifest.objects().map(str::to_string));
        return Ok(objects);
    }
    for (object, _) in job_directory.list(id)? {
        let is_part = object
            .rsplit('/')
            .next()
            .is_some_and(|name| name.starts_with("part-") && name.ends_with(".json"));
        if !is_part {
            continue;
        }
        if let Some(bytes) = job_directory.get(&object)?
            && let Ok(part) = serde_json::from_slice::<Part>(&bytes)
        {
            objects.extend(part.files.into_iter().map(|file| file.object));
        }
    }
    Ok(objects)
}

/// What a delete removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Deleted {
    /// Objects deleted.
    pub objects: usize,
    /// Shared files kept because another savepoint references them.
    pub kept_shared: usize,
}

/// Deletes savepoint `id`: its own objects, and the shared files no other savepoint
/// references. The manifest goes first, so a delete interrupted half-way leaves an
/// incomplete savepoint, never one that looks restorable and is not.
pub fn delete(job_directory: &Directory, id: &str) -> anyhow::Result<Deleted> {
    let listed = list(job_directory)?;
    anyhow::ensure!(
        listed.iter().any(|savepoint| savepoint.id == id),
        "failed to delete savepoint {id}: there is no such savepoint in {}",
        job_directory.url()
    );
    let mine = references(job_directory, id)?;
    let mut others = BTreeSet::new();
    for savepoint in listed.iter().filter(|savepoint| savepoint.id != id) {
        others.extend(references(job_directory, &savepoint.id)?);
    }
    let mut deleted = Deleted::default();
    job_directory
        .delete(&format!("{id}/{MANIFEST}"))
        .context("failed to delete the manifest first")?;
    for (object, _) in job_directory.list(id)? {
        job_directory.delete(&object)?;
        deleted.objects += 1;
    }
    for object in mine.iter().filter(|object| object.starts_with(SHARED)) {
        if others.contains(object) {
            deleted.kept_shared += 1;
        } else {
            job_directory.delete(object)?;
            deleted.objects += 1;
        }
    }
    Ok(deleted)
}
