//! The command line: print the CRD, validate a manifest exactly as the controller will,
//! and check that the controller can reach the API server and read StreamJobs (`doctor`).

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use kube::api::ListParams;
use kube::{Api, Client};
use sluice_crds::StreamJob;

/// The controller's command line.
#[derive(Parser)]
#[command(
    name = "sluice-controller",
    version,
    about = "The Sluice controller for StreamJobs"
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Subcommand)]
pub enum Command {
    /// Print the StreamJob CustomResourceDefinition as YAML.
    Crd,
    /// Check a StreamJob manifest as the controller does; exits non-zero when invalid.
    Validate {
        /// The manifest file (YAML or JSON).
        #[arg(long)]
        job: PathBuf,
    },
    /// Check that the controller reaches the API server and can list StreamJobs:
    /// uses in-cluster configuration inside a pod, else KUBECONFIG.
    Doctor {
        /// Namespace to list; default: the pod's own namespace, else the kubeconfig's.
        #[arg(long)]
        namespace: Option<String>,
    },
}

/// Runs a command.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Crd => {
            print!("{}", sluice_crds::crd::yaml());
            Ok(())
        }
        Command::Validate { job } => validate(&job),
        Command::Doctor { namespace } => doctor(namespace).await,
    }
}

fn validate(path: &PathBuf) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("failed to read {}", path.display()))?;
    let manifest = sluice_crds::load_manifests(&text)
        .with_context(|| format!("{} is not a valid manifest", path.display()))?;
    let mut invalid = 0;
    for skipped in &manifest.skipped {
        println!(
            "{}: document {} is {} {}, not a StreamJob: skipped",
            path.display(),
            skipped.document,
            skipped.api_version,
            skipped.kind
        );
    }
    for job in &manifest.jobs {
        let name = job.name.as_deref().unwrap_or("(unnamed)");
        match &job.result {
            Ok(_) => println!("{}: StreamJob {name} is valid", path.display()),
            Err(error) => {
                invalid += 1;
                eprintln!(
                    "{}: document {}: StreamJob {name} is invalid: {error}",
                    path.display(),
                    job.document
                );
            }
        }
    }
    if manifest.jobs.is_empty() {
        anyhow::bail!(
            "{}: {}",
            path.display(),
            sluice_crds::manifest::ManifestError::NoStreamJob
        );
    }
    if invalid > 0 {
        anyhow::bail!(
            "{}: {invalid} of {} StreamJobs are invalid",
            path.display(),
            manifest.jobs.len()
        );
    }
    Ok(())
}

async fn doctor(namespace: Option<String>) -> anyhow::Result<()> {
    let client = Client::try_default()
        .await
        .context("failed to configure a Kubernetes client (in-cluster or KUBECONFIG)")?;
    let version = client
        .apiserver_version()
        .await
        .context("failed to reach the API server")?;
    println!("api server: reachable, version {}", version.git_version);
    let namespace = namespace.unwrap_or_else(|| client.default_namespace().to_string());
    let jobs: Api<StreamJob> = Api::namespaced(client, &namespace);
    let list = jobs
        .list(&ListParams::default())
        .await
        .with_context(|| format!("failed to list StreamJobs in namespace {namespace}"))?;
    println!("streamjobs in {namespace}: {}", list.items.len());
    for job in list.items {
        println!(
            "streamjob {} parallelism={}",
            job.metadata.name.unwrap_or_default(),
            job.spec.parallelism
        );
    }
    Ok(())
}
