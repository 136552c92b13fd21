//! Harness for Sluice's end-to-end tests against a real Kubernetes API server and a real
//! Kafka broker.
//!
//! The environment comes from `KUBECONFIG` and `SLUICE_KAFKA_BOOTSTRAP` when both are set
//! (so the suite runs against any cluster, e.g. kind), otherwise from the file that
//! `tests/cluster/cluster.sh up` writes at `${SLUICE_STATE:-/var/tmp/sluice-cluster}/env`.
//! Without either, every test fails with a message that says to run `make cluster-up`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, bail, ensure};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, Config};

pub mod controller;
pub mod exactly_once;
pub mod kafka;
pub mod s3_gate;
pub mod worker;

/// Where `cluster.sh` keeps its runtime state when `SLUICE_STATE` is not set.
pub const DEFAULT_STATE_DIR: &str = "/var/tmp/sluice-cluster";

/// Field manager for every server-side apply the tests make.
pub const FIELD_MANAGER: &str = "sluice-e2e";

/// How long a test waits for the API server to settle something (e.g. CRD establishment).
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Where the cluster is and how to reach it.
#[derive(Clone, Debug)]
pub struct Environment {
    pub kubeconfig: PathBuf,
    /// Kafka bootstrap servers for clients on this machine.
    pub kafka_bootstrap: String,
    /// The kubectl binary to run (`SLUICE_KUBECTL`, else `kubectl` from `PATH`).
    pub kubectl: PathBuf,
    /// The helm binary to run (`SLUICE_HELM`, else `helm` from `PATH`).
    pub helm: PathBuf,
    /// Where the settings came from, for error messages.
    pub origin: String,
}

impl Environment {
    /// Reads the environment variables, else the env file `cluster.sh up` writes.
    pub fn load() -> Result<Self> {
        let from_process = |name: &str| std::env::var(name).ok().filter(|value| !value.is_empty());
        if let (Some(kubeconfig), Some(kafka_bootstrap)) = (
            from_process("KUBECONFIG"),
            from_process("SLUICE_KAFKA_BOOTSTRAP"),
        ) {
            return Ok(Self {
                kubeconfig: PathBuf::from(kubeconfig),
                kafka_bootstrap,
                kubectl: from_process("SLUICE_KUBECTL")
                    .map_or_else(|| "kubectl".into(), PathBuf::from),
                helm: from_process("SLUICE_HELM").map_or_else(|| "helm".into(), PathBuf::from),
                origin: "the KUBECONFIG and SLUICE_KAFKA_BOOTSTRAP environment variables"
                    .to_owned(),
            });
        }
        let env_file = state_dir().join("env");
        let text = std::fs::read_to_string(&env_file).map_err(|error| {
            anyhow::anyhow!(
                "no test cluster: KUBECONFIG and SLUICE_KAFKA_BOOTSTRAP are not both set, and \
                 {} cannot be read ({error}); run `make cluster-up` \
                 (bash tests/cluster/cluster.sh up) first",
                env_file.display()
            )
        })?;
        let values = parse_env_file(&text);
        let get = |name: &str| {
            values.get(name).cloned().with_context(|| {
                format!(
                    "{} does not set {name}; rerun `make cluster-up`",
                    env_file.display()
                )
            })
        };
        Ok(Self {
            kubeconfig: PathBuf::from(get("KUBECONFIG")?),
            kafka_bootstrap: get("SLUICE_KAFKA_BOOTSTRAP")?,
            kubectl: values
                .get("SLUICE_KUBECTL")
                .map_or_else(|| "kubectl".into(), PathBuf::from),
            helm: values
                .get("SLUICE_HELM")
                .map_or_else(|| "helm".into(), PathBuf::from),
            origin: env_file.display().to_string(),
        })
    }

    /// A client for the cluster's API server, authenticated as the admin of the kubeconfig.
    pub async fn client(&self) -> Result<Client> {
        let kubeconfig = Kubeconfig::read_from(&self.kubeconfig).with_context(|| {
            format!(
                "failed to read kubeconfig {} (from {})",
                self.kubeconfig.display(),
                self.origin
            )
        })?;
        let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .context("failed to load the kubeconfig")?;
        let client = Client::try_from(config).context("failed to build a Kubernetes client")?;
        client.apiserver_version().await.with_context(|| {
            format!(
                "failed to reach the API server of {}: is the cluster up? \
                 (`make cluster-status`)",
                self.kubeconfig.display()
            )
        })?;
        Ok(client)
    }

    /// Runs kubectl against the cluster and returns its stdout; fails with its stderr.
    pub fn kubectl(&self, arguments: &[&str]) -> Result<String> {
        run_checked(
            Command::new(&self.kubectl)
                .args(arguments)
                .env("KUBECONFIG", &self.kubeconfig),
        )
    }

    /// Runs helm in the repository root and returns its stdout; fails with its stderr.
    pub fn helm(&self, arguments: &[&str]) -> Result<String> {
        run_checked(
            Command::new(&self.helm)
                .args(arguments)
                .env("KUBECONFIG", &self.kubeconfig)
                .current_dir(repo_root()),
        )
    }
}

/// The documents of a multi-document YAML stream as helm prints it, each with its
/// `# Source:` path (empty when it has none).
pub fn rendered_documents(stream: &str) -> Result<Vec<(String, String, serde_yaml_ng::Value)>> {
    let mut documents = Vec::new();
    let mut current = String::new();
    let mut flush = |text: &mut String| -> Result<()> {
        let body = std::mem::take(text);
        if body.trim().is_empty() {
            return Ok(());
        }
        let (source, rest) = match body.strip_prefix("# Source: ") {
            Some(tail) => tail.split_once('\n').unwrap_or((tail, "")),
            None => ("", body.as_str()),
        };
        let value: serde_yaml_ng::Value = serde_yaml_ng::from_str(rest)
            .with_context(|| format!("failed to parse a rendered document ({source}):\n{rest}"))?;
        documents.push((source.to_owned(), rest.to_owned(), value));
        Ok(())
    };
    for line in stream.lines() {
        if line == "---" {
            flush(&mut current)?;
        } else {
            current.push_str(line);
            current.push('\n');
        }
    }
    flush(&mut current)?;
    Ok(documents)
}

/// Runs a tool and returns its stdout; fails naming the command line, with its stderr.
fn run_checked(command: &mut Command) -> Result<String> {
    let line = format!(
        "{} {}",
        command.get_program().to_string_lossy(),
        command
            .get_args()
            .map(|argument| argument.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let output = command
        .output()
        .with_context(|| format!("failed to run {line} (`make cluster-up` builds the tools)"))?;
    ensure!(
        output.status.success(),
        "{line} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The cluster's S3-compatible server (SeaweedFS's S3 gateway, which `cluster.sh up` starts
/// on 127.0.0.1:8333 with static test credentials and a bucket `sluice-savepoints`).
#[derive(Clone, Debug)]
pub struct S3Settings {
    /// `http://127.0.0.1:8333`: path-style requests, plain HTTP.
    pub endpoint: String,
    pub region: String,
    pub bucket: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    /// Where the settings came from, for error messages.
    pub origin: String,
}

impl S3Settings {
    /// The `SLUICE_S3_*` environment variables when `SLUICE_S3_ENDPOINT` is set (any
    /// S3-compatible server), else the env file `cluster.sh up` writes.
    pub fn load() -> Result<Self> {
        const NAMES: [&str; 5] = [
            "SLUICE_S3_ENDPOINT",
            "SLUICE_S3_REGION",
            "SLUICE_S3_BUCKET",
            "SLUICE_S3_ACCESS_KEY_ID",
            "SLUICE_S3_SECRET_ACCESS_KEY",
        ];
        let from_process = |name: &str| std::env::var(name).ok().filter(|value| !value.is_empty());
        let (values, origin): (HashMap<String, String>, String) =
            if from_process("SLUICE_S3_ENDPOINT").is_some() {
                (
                    NAMES
                        .iter()
                        .filter_map(|name| Some(((*name).to_owned(), from_process(name)?)))
                        .collect(),
                    "the SLUICE_S3_* environment variables".to_owned(),
                )
            } else {
                let env_file = state_dir().join("env");
                let text = std::fs::read_to_string(&env_file).map_err(|error| {
                    anyhow::anyhow!(
                        "no S3 server: SLUICE_S3_ENDPOINT is not set, and {} cannot be read \
                         ({error}); run `make cluster-up` (bash tests/cluster/cluster.sh up) first",
                        env_file.display()
                    )
                })?;
                (parse_env_file(&text), env_file.display().to_string())
            };
        let get = |name: &str| {
            values.get(name).cloned().with_context(|| {
                format!(
                    "{origin} does not set {name} (a cluster started before SeaweedFS was added? \
                     rerun `make cluster-up`)"
                )
            })
        };
        Ok(Self {
            endpoint: get("SLUICE_S3_ENDPOINT")?,
            region: get("SLUICE_S3_REGION")?,
            bucket: get("SLUICE_S3_BUCKET")?,
            access_key_id: get("SLUICE_S3_ACCESS_KEY_ID")?,
            secret_access_key: get("SLUICE_S3_SECRET_ACCESS_KEY")?,
            origin,
        })
    }
}

impl S3Settings {
    /// The standard `AWS_*` variables a worker reads for an `s3://` location
    /// (docs/savepoints.md), pointing at `endpoint` (the server's, or a proxy's in front
    /// of it).
    pub fn worker_env(&self, endpoint: &str) -> Vec<(String, String)> {
        [
            ("AWS_ACCESS_KEY_ID", self.access_key_id.as_str()),
            ("AWS_SECRET_ACCESS_KEY", self.secret_access_key.as_str()),
            ("AWS_REGION", self.region.as_str()),
            ("AWS_ENDPOINT", endpoint),
            (
                "AWS_ALLOW_HTTP",
                if endpoint.starts_with("http://") {
                    "true"
                } else {
                    "false"
                },
            ),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect()
    }
}

/// `${SLUICE_STATE}`, where `cluster.sh` keeps the running cluster's state.
pub fn state_dir() -> PathBuf {
    std::env::var_os("SLUICE_STATE")
        .filter(|value| !value.is_empty())
        .map_or_else(|| PathBuf::from(DEFAULT_STATE_DIR), PathBuf::from)
}

/// Parses the `export NAME="value"` lines of the env file; other lines are ignored.
/// Values referring to other variables (like `PATH`) are kept unexpanded.
pub fn parse_env_file(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("export "))
        .filter_map(|assignment| assignment.split_once('='))
        .map(|(name, value)| {
            let value = value.trim();
            let unquoted = value
                .strip_prefix('"')
                .and_then(|rest| rest.strip_suffix('"'))
                .or_else(|| {
                    value
                        .strip_prefix('\'')
                        .and_then(|rest| rest.strip_suffix('\''))
                })
                .unwrap_or(value);
            (name.trim().to_owned(), unquoted.to_owned())
        })
        .collect()
}

/// A name no other test (in this run or an earlier one) uses: `<prefix>-<time>-<pid>-<n>`,
/// lowercase alphanumerics and dashes, so it is a valid namespace, object and topic name.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis());
    let sequence = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = format!(
        "{prefix}-{}-{}-{sequence}",
        to_base36(millis % 36u128.pow(6)),
        std::process::id()
    );
    name.chars().take(63).collect()
}

fn to_base36(mut value: u128) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut digits = Vec::new();
    loop {
        digits.push(char::from(DIGITS[usize::try_from(value % 36).unwrap_or(0)]));
        value /= 36;
        if value == 0 {
            break;
        }
    }
    digits.iter().rev().collect()
}

/// A namespace created for one test; call [`TestNamespace::delete`] at the end.
pub struct TestNamespace {
    pub name: String,
    client: Client,
}

impl TestNamespace {
    /// Creates a namespace named after `prefix`, labelled so leftovers are easy to find.
    pub async fn create(client: &Client, prefix: &str) -> Result<Self> {
        let name = unique_name(prefix);
        let namespace = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some([("sluice.dev/e2e".to_owned(), "true".to_owned())].into()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &namespace)
            .await
            .with_context(|| format!("failed to create namespace {name}"))?;
        Ok(Self {
            name,
            client: client.clone(),
        })
    }

    /// Deletes the namespace (and everything in it); does not wait for finalization.
    pub async fn delete(self) -> Result<()> {
        Api::<Namespace>::all(self.client)
            .delete(&self.name, &DeleteParams::default())
            .await
            .with_context(|| format!("failed to delete namespace {}", self.name))?;
        Ok(())
    }
}

/// The repository root (the e2e crate lives in `tests/`).
pub fn repo_root() -> PathBuf {
    // `cargo test` sets the variable when it runs a test too: prefer that, since cargo
    // reuses a test binary built from another checkout of the same tree (the shared
    // target directory), whose compile-time path may be gone.
    let manifest_directory = std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    manifest_directory
        .parent()
        .expect("the e2e crate is inside the repository")
        .to_path_buf()
}

/// Reads a file of the repository, relative to its root.
pub fn read_repo_file(relative: &str) -> Result<String> {
    let path = repo_root().join(relative);
    std::fs::read_to_string(&path).with_context(|| format!("failed to read {}", path.display()))
}

/// Files in a directory of the repository whose names end with `suffix`, sorted.
pub fn repo_files(relative_dir: &str, suffix: &str) -> Result<Vec<PathBuf>> {
    let dir = repo_root().join(relative_dir);
    let mut files = Vec::new();
    for entry in
        std::fs::read_dir(&dir).with_context(|| format!("failed to list {}", dir.display()))?
    {
        let path = entry
            .with_context(|| format!("failed to list {}", dir.display()))?
            .path();
        if path.is_file() && path.to_string_lossy().ends_with(suffix) {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// The committed StreamJob CRD (`crds/streamjobs.sluice.dev.yaml`).
pub fn committed_crd() -> Result<CustomResourceDefinition> {
    let relative = format!("crds/{}", sluice_crds::crd::COMMITTED_PATH);
    let yaml = read_repo_file(&relative)?;
    serde_yaml_ng::from_str(&yaml).with_context(|| format!("failed to parse {relative} as a CRD"))
}

/// Applies the committed CRD (server-side apply, so reruns and concurrent tests are fine)
/// and waits until the API server reports it Established.
pub async fn install_crd(client: &Client) -> Result<CustomResourceDefinition> {
    let crd = committed_crd()?;
    let name = crd
        .metadata
        .name
        .clone()
        .context("the committed CRD has no metadata.name")?;
    let api = Api::<CustomResourceDefinition>::all(client.clone());
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&crd),
    )
    .await
    .with_context(|| format!("failed to apply CRD {name}"))?;
    let established = await_condition(api, &name, conditions::is_crd_established());
    match tokio::time::timeout(SETTLE_TIMEOUT, established).await {
        Ok(Ok(Some(crd))) => Ok(crd),
        Ok(Ok(None)) => bail!("CRD {name} disappeared while waiting for it to become Established"),
        Ok(Err(error)) => Err(error).with_context(|| format!("failed to watch CRD {name}")),
        Err(_) => bail!("CRD {name} was not Established within {SETTLE_TIMEOUT:?}"),
    }
}

/// Retries `attempt` until it returns `Ok(Some(_))` or `timeout` passes; used where the
/// cluster settles asynchronously (e.g. discovery after a CRD install).
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut attempt: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last_error = None;
    loop {
        match attempt().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(error) => last_error = Some(error),
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(last_error.unwrap_or_else(|| anyhow::anyhow!("condition not met")))
                .with_context(|| format!("{what}: not done within {timeout:?}"));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A binary of this workspace: the path in the environment variable `variable` when set,
/// else `name` in the target directory this test executable was built into.
pub fn built_binary(variable: &str, name: &str) -> anyhow::Result<std::path::PathBuf> {
    use anyhow::Context as _;
    if let Some(path) = std::env::var_os(variable).filter(|path| !path.is_empty()) {
        return Ok(std::path::PathBuf::from(path));
    }
    // target/release/deps/<test> -> target/release/<name>
    let test = std::env::current_exe().context("failed to find the test executable")?;
    let path = test
        .parent()
        .and_then(std::path::Path::parent)
        .map(|directory| directory.join(name))
        .context("failed to find the target directory")?;
    anyhow::ensure!(
        path.is_file(),
        "{} does not exist: build it first (`make build`), or set {variable}",
        path.display()
    );
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_file_values_are_unquoted() {
        let values = parse_env_file(
            "# comment\nexport KUBECONFIG=\"/x/admin.kubeconfig\"\nexport A='b'\nexport C=d\n\
             export PATH=\"/bin:${PATH}\"\n",
        );
        assert_eq!(values["KUBECONFIG"], "/x/admin.kubeconfig");
        assert_eq!(values["A"], "b");
        assert_eq!(values["C"], "d");
        assert_eq!(values["PATH"], "/bin:${PATH}");
    }

    #[test]
    fn unique_names_are_distinct_dns_labels() {
        let first = unique_name("sluice-e2e");
        let second = unique_name("sluice-e2e");
        assert_ne!(first, second);
        for name in [first, second] {
            assert!(name.len() <= 63);
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            );
        }
    }
}
