//! Listing and deleting a job's savepoints. Shared table files are reference-counted by
//! the savepoints that list them: deleting a savepoint deletes its own files and the
//! shared ones no other savepoint (complete, or with parts written) references.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, Utc};

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

/// Which of a job's savepoints are kept (`spec.savepoints.retention`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Retention {
    /// Keep at most this many complete savepoints (at least one is always kept).
    pub max_count: usize,
    /// Delete complete savepoints completed longer ago than this.
    pub max_age: Option<Duration>,
    /// Never delete these ids (those the job's status refers to).
    pub keep: BTreeSet<String>,
}

/// The savepoints `retention` deletes, of a job's savepoints given as their id and, for
/// complete ones, their completion time (RFC 3339), at `now`: complete ones beyond the
/// newest `max_count` and those older than `max_age`; never the newest complete one, one
/// in `keep`, nor an incomplete one (it may be being written; `sluice-worker savepoint
/// delete` removes one a failure left). Newest first.
pub fn expired(
    savepoints: &[(&str, Option<&str>)],
    retention: &Retention,
    now: DateTime<Utc>,
) -> Vec<String> {
    let mut complete: Vec<(DateTime<Utc>, &str)> = savepoints
        .iter()
        .filter_map(|(id, completed_at)| {
            // A completion time that does not parse counts as the oldest possible.
            let completed = DateTime::parse_from_rfc3339((*completed_at)?)
                .map(|time| time.with_timezone(&Utc))
                .unwrap_or(DateTime::<Utc>::MIN_UTC);
            Some((completed, *id))
        })
        .collect();
    // Newest first; equal times by id, the greater first.
    complete.sort_unstable_by(|a, b| b.cmp(a));
    let max_count = retention.max_count.max(1);
    let too_old = |completed: DateTime<Utc>| {
        retention.max_age.is_some_and(|max_age| {
            chrono::Duration::from_std(max_age).is_ok_and(|max_age| now - completed > max_age)
        })
    };
    complete
        .iter()
        .enumerate()
        .skip(1)
        .filter(|(index, (completed, id))| {
            !retention.keep.contains(*id) && (*index >= max_count || too_old(*completed))
        })
        .map(|(_, (_, id))| id.to_string())
        .collect()
}

/// What [`apply_retention`] did.
#[derive(Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Applied {
    /// The savepoints deleted, newest first.
    pub deleted: Vec<String>,
    /// The savepoints left, complete or not, oldest id first.
    pub kept: Vec<String>,
}

/// Deletes the savepoints [`expired`] chooses from the job's directory.
pub fn apply_retention(
    job_directory: &Directory,
    retention: &Retention,
    now: DateTime<Utc>,
) -> anyhow::Result<Applied> {
    let listed = list(job_directory)?;
    let savepoints: Vec<(&str, Option<&str>)> = listed
        .iter()
        .map(|savepoint| {
            (
                savepoint.id.as_str(),
                savepoint
                    .manifest
                    .as_ref()
                    .map(|manifest| manifest.completed_at.as_str()),
            )
        })
        .collect();
    let deleted = expired(&savepoints, retention, now);
    for id in &deleted {
        delete(job_directory, id)
            .with_context(|| format!("failed to delete savepoint {id} for retention"))?;
    }
    Ok(Applied {
        kept: listed
            .into_iter()
            .map(|savepoint| savepoint.id)
            .filter(|id| !deleted.contains(id))
            .collect(),
        deleted,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_deletes_the_oldest_and_the_old_but_never_the_newest_or_a_kept_one() {
        let at = |minute: u32| format!("2026-11-30T10:{minute:02}:00Z");
        let (one, two, three, four) = (at(1), at(2), at(3), at(4));
        let all: Vec<(&str, Option<&str>)> = vec![
            ("upgrade-2-1", Some(&one)),
            ("rescale-3-1", Some(&two)),
            ("failed-4-1", None),
            ("manual-5-1", Some(&three)),
            ("suspend-6-1", Some(&four)),
        ];
        let now: DateTime<Utc> = "2026-11-30T10:10:00Z".parse().unwrap();
        let minutes = |count: u64| Some(Duration::from_secs(60 * count));
        let keep = |ids: &[&str]| ids.iter().map(|id| id.to_string()).collect();
        struct Case {
            name: &'static str,
            max_count: usize,
            max_age: Option<Duration>,
            keep: BTreeSet<String>,
            expect: &'static [&'static str],
        }
        let cases = [
            Case {
                name: "five kept: nothing to delete (the incomplete one does not count)",
                max_count: 5,
                max_age: None,
                keep: BTreeSet::new(),
                expect: &[],
            },
            Case {
                name: "two kept: the two oldest complete ones go",
                max_count: 2,
                max_age: None,
                keep: BTreeSet::new(),
                expect: &["rescale-3-1", "upgrade-2-1"],
            },
            Case {
                name: "one kept, but status refers to the oldest",
                max_count: 1,
                max_age: None,
                keep: keep(&["upgrade-2-1"]),
                expect: &["manual-5-1", "rescale-3-1"],
            },
            Case {
                name: "a count of zero still keeps the newest",
                max_count: 0,
                max_age: None,
                keep: BTreeSet::new(),
                expect: &["manual-5-1", "rescale-3-1", "upgrade-2-1"],
            },
            Case {
                name: "older than 7.5 minutes: the two oldest",
                max_count: 5,
                max_age: Some(Duration::from_secs(450)),
                keep: BTreeSet::new(),
                expect: &["rescale-3-1", "upgrade-2-1"],
            },
            Case {
                name: "all too old: the newest stays anyway",
                max_count: 5,
                max_age: minutes(1),
                keep: BTreeSet::new(),
                expect: &["manual-5-1", "rescale-3-1", "upgrade-2-1"],
            },
        ];
        for case in cases {
            let retention = Retention {
                max_count: case.max_count,
                max_age: case.max_age,
                keep: case.keep,
            };
            assert_eq!(expired(&all, &retention, now), case.expect, "{}", case.name);
        }
    }

    #[test]
    fn a_completion_time_that_does_not_parse_counts_as_the_oldest() {
        let all: Vec<(&str, Option<&str>)> = vec![
            ("b", Some("yesterday")),
            ("a", Some("2026-11-30T10:00:00Z")),
        ];
        let retention = Retention {
            max_count: 1,
            ..Retention::default()
        };
        assert_eq!(expired(&all, &retention, Utc::now()), ["b"]);
    }
}
