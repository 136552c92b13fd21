//! The StreamJob API on a real API server: the CRD installs, the examples are accepted and
//! read back, and the status and scale subresources work (the latter through the real
//! kubectl). Every fixture's verdict, against validate's, is in `validate.rs`.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail, ensure};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::{Client, Resource as _};
use serde_json::{Value, json};
use sluice_crds::StreamJob;
use sluice_e2e::{Environment, TestNamespace, install_crd, repo_root};

/// Connects, installs the CRD and makes a fresh namespace for one test.
async fn setup(prefix: &str) -> Result<(Environment, Client, TestNamespace)> {
    let environment = Environment::load()?;
    let client = environment.client().await?;
    install_crd(&client).await?;
    let namespace = TestNamespace::create(&client, prefix).await?;
    Ok((environment, client, namespace))
}

fn stream_jobs(client: &Client, namespace: &str) -> Api<DynamicObject> {
    let resource = ApiResource::erase::<StreamJob>(&());
    Api::namespaced_with(client.clone(), namespace, &resource)
}

/// Every `examples/*/streamjob.yaml`, as untyped JSON.
fn example_manifests() -> Result<Vec<(PathBuf, Value)>> {
    let examples = repo_root().join("examples");
    let mut manifests = Vec::new();
    for entry in std::fs::read_dir(&examples)
        .with_context(|| format!("failed to list {}", examples.display()))?
    {
        let path = entry?.path().join("streamjob.yaml");
        if path.is_file() {
            let manifest = read_manifest(&path)?;
            manifests.push((path, manifest));
        }
    }
    manifests.sort_by(|left, right| left.0.cmp(&right.0));
    ensure!(
        !manifests.is_empty(),
        "no examples/*/streamjob.yaml found under {}",
        examples.display()
    );
    Ok(manifests)
}

fn read_manifest(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("failed to read {}", path.display()))?;
    serde_yaml_ng::from_str(&text).with_context(|| format!("failed to parse {}", path.display()))
}

/// The manifest as an object for `namespace`, with a name unique to this test.
fn object_in(manifest: &Value, namespace: &str, name: Option<&str>) -> Result<DynamicObject> {
    let mut manifest = manifest.clone();
    manifest["metadata"]["namespace"] = json!(namespace);
    if let Some(name) = name {
        manifest["metadata"]["name"] = json!(name);
    }
    serde_json::from_value(manifest).context("failed to read the manifest as a Kubernetes object")
}

/// True when every field of `expected` is in `actual` with the same value; the server may
/// add defaults, so `actual` can have more.
fn contains(actual: &Value, expected: &Value) -> bool {
    match (actual, expected) {
        (Value::Object(actual), Value::Object(expected)) => expected.iter().all(|(key, value)| {
            actual
                .get(key)
                .is_some_and(|actual_value| contains(actual_value, value))
        }),
        (Value::Array(actual), Value::Array(expected)) => {
            actual.len() == expected.len()
                && actual.iter().zip(expected).all(|(a, e)| contains(a, e))
        }
        (Value::Number(actual), Value::Number(expected)) => actual.as_f64() == expected.as_f64(),
        _ => actual == expected,
    }
}

/// Creates the first example under a fresh name and returns that name.
async fn create_first_example(client: &Client, namespace: &str) -> Result<String> {
    let (path, manifest) = example_manifests()?.swap_remove(0);
    let name = sluice_e2e::unique_name("job");
    stream_jobs(client, namespace)
        .create(
            &PostParams::default(),
            &object_in(&manifest, namespace, Some(&name))?,
        )
        .await
        .with_context(|| format!("failed to create {} as {name}", path.display()))?;
    Ok(name)
}

#[tokio::test]
async fn crd_installs_and_becomes_established() -> Result<()> {
    let environment = Environment::load()?;
    let client = environment.client().await?;
    let crd = install_crd(&client).await?;
    assert_eq!(crd.spec.group, StreamJob::group(&()).as_ref());
    assert_eq!(crd.spec.names.kind, "StreamJob");
    let stored = Api::<CustomResourceDefinition>::all(client)
        .get(sluice_crds::crd::NAME)
        .await
        .context("failed to read the CRD back")?;
    let established = stored
        .status
        .and_then(|status| status.conditions)
        .unwrap_or_default()
        .into_iter()
        .any(|condition| condition.type_ == "Established" && condition.status == "True");
    ensure!(
        established,
        "CRD {} is not Established",
        sluice_crds::crd::NAME
    );
    // Discovery through the real kubectl sees the short name too.
    let resources =
        environment.kubectl(&["api-resources", "--api-group=sluice.dev", "-o", "wide"])?;
    ensure!(
        resources.contains("streamjobs") && resources.contains("sj"),
        "kubectl api-resources does not list streamjobs/sj:\n{resources}"
    );
    Ok(())
}

#[tokio::test]
async fn example_stream_jobs_are_accepted_and_read_back() -> Result<()> {
    let (_, client, namespace) = setup("e2e-examples").await?;
    let api = stream_jobs(&client, &namespace.name);
    let result = async {
        for (path, manifest) in example_manifests()? {
            let object = object_in(&manifest, &namespace.name, None)?;
            let name = object
                .metadata
                .name
                .clone()
                .context("example without a name")?;
            api.create(&PostParams::default(), &object)
                .await
                .with_context(|| format!("the API server rejected {}", path.display()))?;
            let stored = api
                .get(&name)
                .await
                .with_context(|| format!("failed to read back {name}"))?;
            let stored_spec = &stored.data["spec"];
            ensure!(
                contains(stored_spec, &manifest["spec"]),
                "{} read back differs:\nsent {:#}\ngot  {stored_spec:#}",
                path.display(),
                manifest["spec"]
            );
            // The typed StreamJob reads what the server stored.
            let typed: StreamJob = serde_json::from_value(serde_json::to_value(&stored)?)
                .with_context(|| format!("{name} as stored does not parse as a StreamJob"))?;
            assert_eq!(typed.metadata.name.as_deref(), Some(name.as_str()));
        }
        Ok(())
    }
    .await;
    namespace.delete().await?;
    result
}

#[tokio::test]
async fn status_is_patched_through_the_status_subresource() -> Result<()> {
    let (_, client, namespace) = setup("e2e-status").await?;
    let api = stream_jobs(&client, &namespace.name);
    let result = async {
        let name = create_first_example(&client, &namespace.name).await?;
        let patch = json!({"status": {"phase": "Running", "replicas": 1}});
        api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .context("failed to merge-patch /status")?;
        let stored = api.get(&name).await?;
        assert_eq!(stored.data["status"]["phase"], json!("Running"));
        assert_eq!(stored.data["status"]["replicas"], json!(1));
        // A status change through the main resource is ignored (status is a subresource).
        let ignored = json!({"status": {"phase": "Failed"}});
        api.patch(&name, &PatchParams::default(), &Patch::Merge(&ignored))
            .await
            .context("failed to merge-patch the main resource")?;
        assert_eq!(
            api.get(&name).await?.data["status"]["phase"],
            json!("Running")
        );
        Ok(())
    }
    .await;
    namespace.delete().await?;
    result
}

#[tokio::test]
async fn kubectl_scale_changes_parallelism() -> Result<()> {
    let (environment, client, namespace) = setup("e2e-scale").await?;
    let api = stream_jobs(&client, &namespace.name);
    let result = async {
        let name = create_first_example(&client, &namespace.name).await?;
        let target = format!("streamjob/{name}");
        environment.kubectl(&["scale", &target, "--replicas=3", "-n", &namespace.name])?;
        let stored = api.get(&name).await?;
        assert_eq!(stored.data["spec"]["parallelism"], json!(3));
        let scale = environment.kubectl(&[
            "get",
            &target,
            "-n",
            &namespace.name,
            "--subresource=scale",
            "-o",
            "jsonpath={.spec.replicas}",
        ])?;
        assert_eq!(scale.trim(), "3");
        Ok(())
    }
    .await;
    namespace.delete().await?;
    result
}

#[tokio::test]
async fn max_parallelism_cannot_change_once_created() -> Result<()> {
    let (_, client, namespace) = setup("e2e-immutable").await?;
    let api = stream_jobs(&client, &namespace.name);
    let result = async {
        let name = create_first_example(&client, &namespace.name).await?;
        let created = api.get(&name).await?;
        let key_groups = created.data["spec"]["maxParallelism"]
            .as_i64()
            .context("the example sets spec.maxParallelism")?;
        // Another field changes freely; maxParallelism does not.
        let allowed = json!({"spec": {"parallelism": 1}});
        api.patch(&name, &PatchParams::default(), &Patch::Merge(&allowed))
            .await
            .context("failed to change spec.parallelism")?;
        let changed = json!({"spec": {"maxParallelism": key_groups * 2}});
        match api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&changed))
            .await
        {
            Ok(_) => bail!(
                "spec.maxParallelism changed from {key_groups} to {}",
                key_groups * 2
            ),
            Err(kube::Error::Api(status))
                if status
                    .message
                    .contains(sluice_crds::messages::MAX_PARALLELISM_IMMUTABLE) => {}
            Err(other) => bail!("rejected with {other}, expected the immutability message"),
        }
        let stored = api.get(&name).await?;
        ensure!(
            stored.data["spec"]["maxParallelism"] == json!(key_groups),
            "stored spec.maxParallelism is {}",
            stored.data["spec"]["maxParallelism"]
        );
        Ok(())
    }
    .await;
    namespace.delete().await?;
    result
}
