//! The cluster's S3-compatible server (SeaweedFS's S3 gateway, started by `cluster.sh up`)
//! through the `object_store` crate, as the worker's savepoints will use it: put, get (whole
//! and a range), head, list, a multipart upload, create-if-absent, delete; and a wrong secret
//! is refused, so the gateway really checks the credentials it was given.
//!
//! Every test works under its own prefix of the `sluice-savepoints` bucket and deletes what
//! it wrote.

use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use futures::TryStreamExt as _;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path;
use object_store::{
    ClientOptions, ObjectStore, ObjectStoreExt as _, PutMode, PutOptions, PutPayload, RetryConfig,
    WriteMultipart,
};
use sluice_e2e::{S3Settings, unique_name};

/// A client for the bucket of `settings`, signing with `secret`. Few retries: a test against
/// a server on loopback should fail in seconds, not after the default three minutes.
fn store(settings: &S3Settings, secret: &str) -> Result<AmazonS3> {
    AmazonS3Builder::new()
        .with_endpoint(&settings.endpoint)
        .with_region(&settings.region)
        .with_bucket_name(&settings.bucket)
        .with_access_key_id(&settings.access_key_id)
        .with_secret_access_key(secret)
        .with_retry(RetryConfig {
            max_retries: 2,
            retry_timeout: Duration::from_secs(20),
            ..RetryConfig::default()
        })
        // The client options replace the builder's whole set: allow_http goes here, or a
        // with_allow_http before them is lost (reqwest then refuses http://: "builder
        // error", "URL scheme is not allowed").
        .with_client_options(
            ClientOptions::new()
                .with_timeout(Duration::from_secs(30))
                .with_allow_http(settings.endpoint.starts_with("http://")),
        )
        .build()
        .with_context(|| {
            format!(
                "failed to build an S3 client for {} bucket {} (from {})",
                settings.endpoint, settings.bucket, settings.origin
            )
        })
}

/// `len` bytes that differ from one test run and offset to the next, so a read that returned
/// another object's or another offset's bytes cannot pass.
fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()[0]
        })
        .collect()
}

fn seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(7, |elapsed| {
            u64::try_from(elapsed.as_nanos() % u128::from(u64::MAX)).unwrap_or(7)
        })
}

/// Deletes everything under `prefix` (what a test wrote), then checks nothing is left.
async fn clean_up(store: &AmazonS3, prefix: &Path) -> Result<()> {
    let objects: Vec<_> = store.list(Some(prefix)).try_collect().await?;
    for object in &objects {
        store
            .delete(&object.location)
            .await
            .with_context(|| format!("failed to delete {}", object.location))?;
    }
    let left: Vec<_> = store.list(Some(prefix)).try_collect().await?;
    ensure!(
        left.is_empty(),
        "objects left under {prefix} after deleting them: {left:?}"
    );
    Ok(())
}

#[tokio::test]
async fn objects_round_trip_through_the_s3_api() -> Result<()> {
    let settings = S3Settings::load()?;
    let store = store(&settings, &settings.secret_access_key)?;
    let prefix = Path::from(format!("e2e/{}", unique_name("s3-round-trip")));
    let location = prefix.clone().join("part-0.sst");
    let body = payload(1024 * 1024 + 17, seed());

    let put = store
        .put(&location, PutPayload::from(body.clone()))
        .await
        .with_context(|| {
            format!(
                "failed to put {location} to {} bucket {} (is SeaweedFS up? `make cluster-status`)",
                settings.endpoint, settings.bucket
            )
        })?;
    ensure!(
        put.e_tag.is_some(),
        "the put of {location} returned no ETag"
    );

    let got = store.get(&location).await?.bytes().await?;
    ensure!(
        got.as_ref() == body.as_slice(),
        "get {location} returned {} bytes that differ from the {} put",
        got.len(),
        body.len()
    );
    let range = store.get_range(&location, 1000..5096).await?;
    ensure!(
        range.as_ref() == &body[1000..5096],
        "get_range 1000..5096 of {location} returned other bytes"
    );
    let meta = store.head(&location).await?;
    ensure!(
        meta.size == u64::try_from(body.len())?,
        "head {location}: size {} for {} bytes put",
        meta.size,
        body.len()
    );
    ensure!(
        meta.e_tag == put.e_tag,
        "head {location}: ETag {:?}, the put returned {:?}",
        meta.e_tag,
        put.e_tag
    );

    let listed: Vec<_> = store.list(Some(&prefix)).try_collect().await?;
    let names: Vec<String> = listed
        .iter()
        .map(|meta| meta.location.to_string())
        .collect();
    ensure!(
        names == [location.to_string()],
        "list {prefix} gave {names:?}, expected only {location}"
    );

    store.delete(&location).await?;
    match store.get(&location).await {
        Err(object_store::Error::NotFound { .. }) => {}
        Err(error) => bail!("get {location} after delete failed, but not with NotFound: {error}"),
        Ok(_) => bail!("get {location} still succeeds after delete"),
    }
    clean_up(&store, &prefix).await
}

/// Savepoint files of RocksDB are large SSTs: uploaded in parts (object_store's multipart
/// writer, 5 MiB parts), read back whole.
#[tokio::test]
async fn a_multipart_upload_reads_back_whole() -> Result<()> {
    let settings = S3Settings::load()?;
    let store = store(&settings, &settings.secret_access_key)?;
    let prefix = Path::from(format!("e2e/{}", unique_name("s3-multipart")));
    let location = prefix.clone().join("big.sst");
    let body = payload(12 * 1024 * 1024 + 3, seed());

    let upload = store.put_multipart(&location).await?;
    let mut writer = WriteMultipart::new_with_chunk_size(upload, 5 * 1024 * 1024);
    for chunk in body.chunks(1024 * 1024) {
        writer.write(chunk);
    }
    writer
        .finish()
        .await
        .with_context(|| format!("the multipart upload of {location} failed"))?;

    let meta = store.head(&location).await?;
    ensure!(
        meta.size == u64::try_from(body.len())?,
        "head {location}: size {} for {} bytes uploaded in parts",
        meta.size,
        body.len()
    );
    let got = store.get(&location).await?.bytes().await?;
    ensure!(
        got.as_ref() == body.as_slice(),
        "the multipart object {location} reads back different bytes ({} of {})",
        got.len(),
        body.len()
    );
    clean_up(&store, &prefix).await
}

/// A manifest written with create-if-absent: the second writer must be refused, not win.
#[tokio::test]
async fn create_if_absent_refuses_to_overwrite() -> Result<()> {
    let settings = S3Settings::load()?;
    let store = store(&settings, &settings.secret_access_key)?;
    let prefix = Path::from(format!("e2e/{}", unique_name("s3-create")));
    let location = prefix.clone().join("MANIFEST");
    let create = || PutOptions::from(PutMode::Create);

    store
        .put_opts(&location, PutPayload::from_static(b"first"), create())
        .await
        .with_context(|| format!("the first create of {location} failed"))?;
    let second = store
        .put_opts(&location, PutPayload::from_static(b"second"), create())
        .await;
    let got = store.get(&location).await?.bytes().await?;
    clean_up(&store, &prefix).await?;
    match second {
        Err(object_store::Error::AlreadyExists { .. }) => {}
        Err(error) => {
            bail!("the second create of {location} failed, but not with AlreadyExists: {error}")
        }
        Ok(_) => bail!("the second create of {location} succeeded: it overwrote the first"),
    }
    ensure!(
        got.as_ref() == b"first",
        "{location} holds {:?} after a refused second create",
        String::from_utf8_lossy(&got)
    );
    Ok(())
}

#[tokio::test]
async fn a_wrong_secret_is_refused() -> Result<()> {
    let settings = S3Settings::load()?;
    let wrong = store(&settings, "not-the-secret")?;
    let location = Path::from(format!("e2e/{}/refused", unique_name("s3-wrong-secret")));
    match wrong.put(&location, PutPayload::from_static(b"x")).await {
        Err(object_store::Error::NotFound { .. }) => {
            bail!("a put with a wrong secret failed with NotFound, not as unauthenticated")
        }
        Err(error) => {
            let text = error.to_string();
            ensure!(
                text.contains("403")
                    || text.contains("SignatureDoesNotMatch")
                    || text.contains("AccessDenied"),
                "a put with a wrong secret failed, but not as refused credentials: {text}"
            );
        }
        Ok(_) => bail!(
            "a put with a wrong secret succeeded: the gateway at {} does not check credentials",
            settings.endpoint
        ),
    }
    let right = store(&settings, &settings.secret_access_key)?;
    match right.head(&location).await {
        Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(error) => Err(error).context("head with the right secret failed"),
        Ok(_) => bail!("the object put with a wrong secret exists: {location}"),
    }
}
