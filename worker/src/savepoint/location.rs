//! Where savepoints are: `file:///path` (a volume every worker mounts) or
//! `s3://bucket/prefix` (any S3-compatible store), both behind `object_store`. S3
//! settings come from the standard `AWS_*` environment variables (`AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT`, `AWS_ALLOW_HTTP`), which the
//! controller sets from the job's Secret.
//!
//! The calls are blocking: each [`Directory`] drives its store on a runtime of its own,
//! so the worker's loop and the command line use them without being async.

use std::sync::Arc;

use anyhow::Context as _;
use futures::TryStreamExt as _;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt as _, PutPayload};

/// A parsed location.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Url {
    /// A directory on a file system.
    File(std::path::PathBuf),
    /// A bucket and a prefix in it (no leading or trailing slash).
    S3 {
        /// The bucket.
        bucket: String,
        /// The prefix ("" for the whole bucket).
        prefix: String,
    },
}

impl Url {
    /// Parses `file:///path` or `s3://bucket[/prefix]`.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let text = text.trim_end_matches('/');
        if let Some(path) = text.strip_prefix("file://") {
            anyhow::ensure!(
                path.starts_with('/'),
                "failed to use location {text:?}: a file location is file:///absolute/path (three slashes)"
            );
            return Ok(Self::File(path.into()));
        }
        if let Some(rest) = text.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            anyhow::ensure!(
                !bucket.is_empty(),
                "failed to use location {text:?}: an S3 location is s3://bucket/prefix"
            );
            return Ok(Self::S3 {
                bucket: bucket.into(),
                prefix: prefix.trim_matches('/').into(),
            });
        }
        anyhow::bail!(
            "failed to use location {text:?}: only file:///path and s3://bucket/prefix are supported (spec.savepoints.location)"
        )
    }

    /// The location `segment` below this one.
    pub fn join(&self, segment: &str) -> Self {
        match self {
            Self::File(path) => Self::File(path.join(segment)),
            Self::S3 { bucket, prefix } => Self::S3 {
                bucket: bucket.clone(),
                prefix: if prefix.is_empty() {
                    segment.into()
                } else {
                    format!("{prefix}/{segment}")
                },
            },
        }
    }

    /// The location above this one and the last segment of this one.
    pub fn split_last(&self) -> Option<(Self, String)> {
        match self {
            Self::File(path) => {
                let last = path.file_name()?.to_str()?.to_string();
                Some((Self::File(path.parent()?.to_path_buf()), last))
            }
            Self::S3 { bucket, prefix } => {
                let (parent, last) = prefix.rsplit_once('/').unwrap_or(("", prefix));
                (!last.is_empty()).then(|| {
                    (
                        Self::S3 {
                            bucket: bucket.clone(),
                            prefix: parent.into(),
                        },
                        last.to_string(),
                    )
                })
            }
        }
    }
}

impl std::fmt::Display for Url {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(path) => write!(formatter, "file://{}", path.display()),
            Self::S3 { bucket, prefix } if prefix.is_empty() => write!(formatter, "s3://{bucket}"),
            Self::S3 { bucket, prefix } => write!(formatter, "s3://{bucket}/{prefix}"),
        }
    }
}

/// A directory of objects at a location, with blocking calls.
pub struct Directory {
    url: Url,
    store: Arc<dyn ObjectStore>,
    root: ObjectPath,
    runtime: tokio::runtime::Runtime,
}

impl Directory {
    /// Opens the directory at `url` (creating it on a file system).
    pub fn open(url: &Url) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("failed to start the savepoint runtime")?;
        let (store, root): (Arc<dyn ObjectStore>, ObjectPath) = match url {
            Url::File(path) => {
                std::fs::create_dir_all(path)
                    .with_context(|| format!("failed to create {}", path.display()))?;
                let store = object_store::local::LocalFileSystem::new_with_prefix(path)
                    .with_context(|| format!("failed to open {}", path.display()))?;
                (Arc::new(store), ObjectPath::default())
            }
            Url::S3 { bucket, prefix } => {
                let store = object_store::aws::AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .build()
                    .with_context(|| {
                        format!("failed to configure S3 for bucket {bucket} (AWS_* variables)")
                    })?;
                (Arc::new(store), ObjectPath::from(prefix.as_str()))
            }
        };
        Ok(Self {
            url: url.clone(),
            store,
            root,
            runtime,
        })
    }

    /// The location.
    pub fn url(&self) -> &Url {
        &self.url
    }

    fn path(&self, relative: &str) -> ObjectPath {
        relative
            .split('/')
            .filter(|segment| !segment.is_empty())
            .fold(self.root.clone(), |path, segment| path.join(segment))
    }

    /// Where `relative` is on this machine's file system, for a `file://` location: a
    /// restore reads (or hard-links) it there rather than through the object store.
    /// `None` for an S3 location, and for a path with a `.` or `..` segment (which the
    /// object store resolves its own way).
    pub fn local_path(&self, relative: &str) -> Option<std::path::PathBuf> {
        let Url::File(root) = &self.url else {
            return None;
        };
        let segments: Vec<&str> = relative
            .split('/')
            .filter(|segment| !segment.is_empty())
            .collect();
        if segments
            .iter()
            .any(|segment| *segment == "." || *segment == "..")
        {
            return None;
        }
        Some(
            segments
                .into_iter()
                .fold(root.clone(), |path, segment| path.join(segment)),
        )
    }

    fn describe(&self, relative: &str) -> String {
        format!("{}/{relative}", self.url)
    }

    /// The content of `relative`, `None` if there is no such object.
    pub fn get(&self, relative: &str) -> anyhow::Result<Option<Vec<u8>>> {
        let path = self.path(relative);
        let store = self.store.clone();
        let result = self.runtime.block_on(async move {
            match store.get(&path).await {
                Ok(result) => result.bytes().await.map(Some),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(error) => Err(error),
            }
        });
        result
            .map(|bytes| bytes.map(|bytes| bytes.to_vec()))
            .with_context(|| format!("failed to read {}", self.describe(relative)))
    }

    /// The size of `relative`, `None` if there is no such object.
    pub fn size(&self, relative: &str) -> anyhow::Result<Option<u64>> {
        let path = self.path(relative);
        let store = self.store.clone();
        let result = self.runtime.block_on(async move {
            match store.head(&path).await {
                Ok(meta) => Ok(Some(meta.size)),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(error) => Err(error),
            }
        });
        result.with_context(|| format!("failed to look up {}", self.describe(relative)))
    }

    /// Writes `bytes` to `relative` (whole, or not at all).
    pub fn put(&self, relative: &str, bytes: Vec<u8>) -> anyhow::Result<()> {
        let path = self.path(relative);
        let store = self.store.clone();
        self.runtime
            .block_on(async move { store.put(&path, PutPayload::from(bytes)).await })
            .map(|_| ())
            .with_context(|| format!("failed to write {}", self.describe(relative)))
    }

    /// Every object below `relative`, with its path relative to this directory and size.
    pub fn list(&self, relative: &str) -> anyhow::Result<Vec<(String, u64)>> {
        let prefix = self.path(relative);
        let store = self.store.clone();
        let root = self.root.clone();
        let result = self.runtime.block_on(async move {
            let objects: Vec<_> = store.list(Some(&prefix)).try_collect().await?;
            Ok::<_, object_store::Error>(
                objects
                    .into_iter()
                    .filter_map(|object| {
                        let relative: Vec<String> = object
                            .location
                            .prefix_match(&root)?
                            .map(|part| part.as_ref().to_string())
                            .collect();
                        Some((relative.join("/"), object.size))
                    })
                    .collect(),
            )
        });
        result.with_context(|| format!("failed to list {}", self.describe(relative)))
    }

    /// Deletes `relative` (no error if it is already gone).
    pub fn delete(&self, relative: &str) -> anyhow::Result<()> {
        let path = self.path(relative);
        let store = self.store.clone();
        let result = self.runtime.block_on(async move {
            match store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(error) => Err(error),
            }
        });
        result.with_context(|| format!("failed to delete {}", self.describe(relative)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_supported_locations_and_refuses_others() {
        assert_eq!(
            Url::parse("file:///data/savepoints/").unwrap(),
            Url::File("/data/savepoints".into())
        );
        assert_eq!(
            Url::parse("s3://bucket/a/b").unwrap(),
            Url::S3 {
                bucket: "bucket".into(),
                prefix: "a/b".into()
            }
        );
        assert_eq!(
            Url::parse("s3://bucket").unwrap(),
            Url::S3 {
                bucket: "bucket".into(),
                prefix: String::new()
            }
        );
        for bad in ["file://relative", "s3://", "gs://bucket", "/plain/path"] {
            assert!(Url::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn joins_and_splits() {
        let root = Url::parse("s3://bucket").unwrap();
        let savepoint = root.join("ns").join("job").join("sp-1");
        assert_eq!(savepoint.to_string(), "s3://bucket/ns/job/sp-1");
        let (job, id) = savepoint.split_last().unwrap();
        assert_eq!(
            (job.to_string().as_str(), id.as_str()),
            ("s3://bucket/ns/job", "sp-1")
        );
        let file = Url::parse("file:///x/ns/job/sp-2").unwrap();
        let (job, id) = file.split_last().unwrap();
        assert_eq!(
            (job.to_string().as_str(), id.as_str()),
            ("file:///x/ns/job", "sp-2")
        );
    }

    #[test]
    fn files_round_trip_through_a_directory() {
        let temporary = tempfile::tempdir().unwrap();
        let url = Url::File(temporary.path().join("a"));
        let directory = Directory::open(&url).unwrap();
        directory.put("x/one.json", b"1".to_vec()).unwrap();
        directory.put("x/two/three", b"333".to_vec()).unwrap();
        assert_eq!(directory.get("x/one.json").unwrap(), Some(b"1".to_vec()));
        assert_eq!(directory.get("missing").unwrap(), None);
        assert_eq!(directory.size("x/two/three").unwrap(), Some(3));
        let mut listed = directory.list("x").unwrap();
        listed.sort();
        assert_eq!(
            listed,
            vec![("x/one.json".into(), 1), ("x/two/three".into(), 3)]
        );
        directory.delete("x/one.json").unwrap();
        directory.delete("x/one.json").unwrap();
        assert_eq!(directory.get("x/one.json").unwrap(), None);
    }
}
