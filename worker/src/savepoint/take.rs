//! Writing one worker's part of a savepoint from a local snapshot (hard links to a
//! complete checkpoint's files, already consistent), and the manifest once every part is
//! there. Runs beside processing: the worker's loop only pays for the hard links.

use std::path::Path;

use anyhow::Context as _;
use sha2::{Digest as _, Sha256};

use super::format::{MANIFEST, Manifest, Part, SHARED};
use super::location::Directory;

/// The SHA-256 of `bytes` in lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// `bytes` in lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    let mut text = String::with_capacity(2 * bytes.len());
    for byte in bytes {
        text.push_str(&format!("{byte:02x}"));
    }
    text
}

/// Where a file of part `ordinal` of savepoint `savepoint` goes: table files (immutable,
/// named by RocksDB) by content in the shared directory, so savepoints of a job store
/// each only once; the small files beside the part.
pub fn object_of(savepoint: &str, ordinal: u32, name: &str, sha256: &str) -> String {
    if name.ends_with(".sst") {
        format!("{SHARED}/{sha256}.sst")
    } else {
        format!("{savepoint}/part-{ordinal}/{name}")
    }
}

/// What writing a part did.
#[derive(Debug)]
pub struct Written {
    /// The part, as written.
    pub part: Part,
    /// Bytes uploaded (files already shared by another savepoint are not).
    pub uploaded_bytes: u64,
    /// The manifest, when this part completed the savepoint.
    pub manifest: Option<Manifest>,
}

/// Uploads the files of the RocksDB snapshot in `snapshot` into `job_directory` as part
/// `part` (whose `files` this fills), then the part's description, then the manifest if
/// every part of the savepoint is now there.
pub fn write_part(
    job_directory: &Directory,
    mut part: Part,
    snapshot: &Path,
) -> anyhow::Result<Written> {
    let mut names: Vec<String> = std::fs::read_dir(snapshot)
        .with_context(|| format!("failed to list the snapshot {}", snapshot.display()))?
        .map(|entry| entry.map(|entry| entry.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()
        .with_context(|| format!("failed to list the snapshot {}", snapshot.display()))?;
    names.sort();
    let mut uploaded_bytes = 0;
    part.files.clear();
    for name in names {
        let path = snapshot.join(&name);
        let bytes =
            std::fs::read(&path).with_context(|| format!("failed to read {}", path.display()))?;
        let sha256 = sha256_hex(&bytes);
        let size = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
        let object = object_of(&part.savepoint, part.ordinal, &name, &sha256);
        let shared = object.starts_with(SHARED);
        if !(shared && job_directory.size(&object)? == Some(size)) {
            uploaded_bytes += size;
            job_directory.put(&object, bytes)?;
        }
        part.files.push(super::format::FileEntry {
            name,
            object,
            size,
            sha256,
        });
    }
    let description = serde_json::to_vec_pretty(&part).context("failed to encode the part")?;
    job_directory.put(
        &format!("{}/{}", part.savepoint, Part::file_name(part.ordinal)),
        description,
    )?;
    let manifest = complete(job_directory, &part.savepoint)?;
    Ok(Written {
        part,
        uploaded_bytes,
        manifest,
    })
}

/// Writes the manifest of savepoint `savepoint` if all its parts are written and it has
/// none yet. Two workers finishing at once may both write it: the content is the same
/// but for the completion time, and each write is whole.
pub fn complete(job_directory: &Directory, savepoint: &str) -> anyhow::Result<Option<Manifest>> {
    let manifest_object = format!("{savepoint}/{MANIFEST}");
    if let Some(bytes) = job_directory.get(&manifest_object)? {
        return Ok(serde_json::from_slice(&bytes).ok());
    }
    let mut parts = Vec::new();
    for (object, _) in job_directory.list(savepoint)? {
        let Some(name) = object.rsplit('/').next() else {
            continue;
        };
        if !(name.starts_with("part-") && name.ends_with(".json")) {
            continue;
        }
        let Some(bytes) = job_directory.get(&object)? else {
            continue;
        };
        let part: Part = serde_json::from_slice(&bytes)
            .with_context(|| format!("failed to read part {object}"))?;
        parts.push(part);
    }
    let completed_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let Some(manifest) = Manifest::assemble(parts, completed_at) else {
        return Ok(None);
    };
    job_directory.put(
        &manifest_object,
        serde_json::to_vec_pretty(&manifest).context("failed to encode the manifest")?,
    )?;
    Ok(Some(manifest))
}
