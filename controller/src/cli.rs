//! The command line: run the controller, print the CRD, validate a manifest exactly as
//! the controller will, and check that the controller can reach the API server and read
//! StreamJobs (`doctor`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use k8s_openapi::api::core::v1::ResourceRequirements;
use kube::api::ListParams;
use kube::{Api, Client};
use sluice_crds::StreamJob;

use crate::build::WorkerDefaults;
use crate::context::{Settings, default_worker_image};
use crate::run::{
    LeaderElection, RunOptions, WebhookCertificates, WebhookOptions, default_identity,
};
use crate::telemetry::LogFormat;

/// The controller's command line.
#[derive(Parser)]
#[command(
    name = "sluice-controller",
    version,
    about = "The Sluice controller for StreamJobs"
)]
pub struct Cli {
    /// How log lines are written: `text` for people, `json` for log collectors.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true, env = "SLUICE_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// Which log lines are written: a level (`info`, `debug`) or a tracing filter such as
    /// `info,sluice_controller=debug,kube=warn`.
    #[arg(long, default_value = "info", global = true, env = "SLUICE_LOG")]
    pub log: String,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Subcommand)]
pub enum Command {
    /// Reconcile StreamJobs into running workers until SIGTERM: in a pod (the Helm chart)
    /// with in-cluster configuration, or from a shell with KUBECONFIG.
    Run(Box<RunArgs>),
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

/// `sluice-controller run`.
#[derive(Args, Clone, Debug)]
pub struct RunArgs {
    /// Namespaces whose StreamJobs are reconciled, comma-separated or repeated; default:
    /// all namespaces (the chart's ClusterRole allows both).
    #[arg(long = "namespace", value_delimiter = ',', env = "SLUICE_NAMESPACES")]
    pub namespaces: Vec<String>,
    /// The worker image of jobs whose spec.image is unset; default: the sluice-worker image
    /// of this controller's version.
    #[arg(long, env = "SLUICE_WORKER_IMAGE", default_value_t = default_worker_image())]
    pub worker_image: String,
    /// The resources of workers whose spec.resources is unset, as JSON, e.g.
    /// '{"requests":{"cpu":"500m","memory":"1Gi"},"limits":{"memory":"1Gi"}}'; default:
    /// none (the namespace's LimitRange, if any).
    #[arg(long, env = "SLUICE_WORKER_RESOURCES", value_parser = parse_resources)]
    pub worker_resources: Option<ResourceRequirements>,
    /// The storage class of new jobs' state volumes whose spec.state.storageClassName is
    /// unset; default: the cluster's default class. Jobs whose volumes exist keep theirs.
    #[arg(long, env = "SLUICE_WORKER_STORAGE_CLASS")]
    pub worker_storage_class: Option<String>,
    /// Where /metrics, /healthz and /readyz are served.
    #[arg(long, env = "SLUICE_HTTP_ADDRESS", default_value = "0.0.0.0:8080")]
    pub http_address: SocketAddr,
    /// How many StreamJobs are reconciled at once, and how many API requests they have in
    /// flight at most; new jobs' first statuses have a lane of as many requests of their own.
    #[arg(long, env = "SLUICE_CONCURRENCY", default_value_t = 16)]
    pub concurrency: u16,
    /// How long a job's reconcile waits after the last change that asked for it, so a
    /// burst of changes (a new job's children appearing, its StatefulSet's status moving)
    /// is one reconcile; 0s: at once. It delays every reconcile, a new job's first status
    /// too.
    #[arg(long, env = "SLUICE_DEBOUNCE", default_value = "0s", value_parser = humantime::parse_duration)]
    pub debounce: Duration,
    /// How often a healthy job is reconciled when nothing changed (repairs what a watch
    /// missed).
    #[arg(long, env = "SLUICE_RESYNC_INTERVAL", default_value = "10m", value_parser = humantime::parse_duration)]
    pub resync_interval: Duration,
    /// How long every worker may take to write its part of the savepoint a change takes
    /// (docs/lifecycle.md); past it the change is aborted and retried.
    #[arg(long, env = "SLUICE_SAVEPOINT_TIMEOUT", default_value = "10m", value_parser = humantime::parse_duration)]
    pub savepoint_timeout: Duration,
    /// The wait before retrying a change whose savepoint failed; it doubles with every
    /// attempt, up to ten minutes.
    #[arg(long, env = "SLUICE_SAVEPOINT_RETRY_BACKOFF", default_value = "30s", value_parser = humantime::parse_duration)]
    pub savepoint_retry_backoff: Duration,
    /// For recovery tests only: abort at a step of a change (`recorded`,
    /// `savepoint-requested`, `savepoint-completed`, `rolling`), as if killed there.
    #[arg(long, env = "SLUICE_TEST_CRASH", hide = true, value_enum)]
    pub test_crash: Option<crate::lifecycle::CrashPoint>,
    /// How often the autoscaler samples an autoscaled job's Kafka offsets and workers
    /// (docs/autoscaling.md).
    #[arg(long, env = "SLUICE_AUTOSCALER_SAMPLE_INTERVAL", default_value = "15s", value_parser = humantime::parse_duration)]
    pub autoscaler_sample_interval: Duration,
    /// How much of a job's recent samples the autoscaler decides from (at least two of the
    /// job's checkpoint intervals plus one sample interval); nothing is decided until a
    /// whole window has been sampled since the workers started.
    #[arg(long, env = "SLUICE_AUTOSCALER_WINDOW", default_value = "2m", value_parser = humantime::parse_duration)]
    pub autoscaler_window: Duration,
    /// Run only while holding a Lease, so several replicas can run with one active. Off
    /// (`--leader-election=false`) for a single process from a shell.
    #[arg(long, env = "SLUICE_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,
    /// The Lease's name.
    #[arg(long, env = "SLUICE_LEASE_NAME", default_value = "sluice-controller")]
    pub lease_name: String,
    /// The Lease's namespace; default: the pod's own (POD_NAMESPACE), else the kubeconfig's.
    #[arg(long, env = "POD_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// How long the Lease is held without renewal: a standby takes over at most this long
    /// after the leader dies (at once after a clean shutdown, which releases it).
    #[arg(long, env = "SLUICE_LEASE_DURATION", default_value = "15s", value_parser = humantime::parse_duration)]
    pub lease_duration: Duration,
    /// How long before the Lease expires the leader renews it.
    #[arg(long, env = "SLUICE_LEASE_RENEW_BEFORE", default_value = "5s", value_parser = humantime::parse_duration)]
    pub lease_renew_before: Duration,
    /// This process's name in the Lease and in Events; default: POD_NAME, else the host
    /// name and a random suffix.
    #[arg(long, env = "SLUICE_IDENTITY")]
    pub identity: Option<String>,
    /// Serve the validating admission webhook (HTTPS, path /validate-streamjob) on this
    /// address, so `kubectl apply` refuses what the controller would; unset: no webhook.
    #[arg(long, env = "SLUICE_WEBHOOK_ADDRESS")]
    pub webhook_address: Option<SocketAddr>,
    /// Serve the certificate in this directory (`tls.crt`, `tls.key`: a cert-manager
    /// Certificate's Secret mounted there), re-read when it changes; unset: the controller
    /// generates one and keeps it in --webhook-secret.
    #[arg(long, env = "SLUICE_WEBHOOK_CERTIFICATE_DIRECTORY")]
    pub webhook_certificate_directory: Option<PathBuf>,
    /// The Secret (type kubernetes.io/tls) holding the generated certificate and its CA.
    #[arg(
        long,
        env = "SLUICE_WEBHOOK_SECRET",
        default_value = "sluice-controller-webhook"
    )]
    pub webhook_secret: String,
    /// The Secret's namespace; default: the pod's own (POD_NAMESPACE), else the
    /// kubeconfig's.
    #[arg(long, env = "SLUICE_WEBHOOK_SECRET_NAMESPACE")]
    pub webhook_secret_namespace: Option<String>,
    /// The ValidatingWebhookConfiguration whose caBundle the controller writes with the CA
    /// of the generated certificate; unset: another party writes it.
    #[arg(long, env = "SLUICE_WEBHOOK_CONFIGURATION")]
    pub webhook_configuration: Option<String>,
    /// The host names the generated certificate is for: the webhook Service's DNS names
    /// (`<service>.<namespace>.svc`), or an IP address the API server calls; comma-separated
    /// or repeated. Required when the controller generates the certificate.
    #[arg(
        long = "webhook-host",
        value_delimiter = ',',
        env = "SLUICE_WEBHOOK_HOSTS"
    )]
    pub webhook_hosts: Vec<String>,
    /// How long a generated certificate is valid; it is renewed when a third is left.
    #[arg(long, env = "SLUICE_WEBHOOK_CERTIFICATE_VALIDITY", default_value = "365d", value_parser = humantime::parse_duration)]
    pub webhook_certificate_validity: Duration,
}

impl RunArgs {
    /// The options of `run::run`.
    pub fn options(&self) -> RunOptions {
        RunOptions {
            namespaces: self
                .namespaces
                .iter()
                .map(|namespace| namespace.trim().to_string())
                .filter(|namespace| !namespace.is_empty())
                .collect(),
            settings: Settings {
                workers: WorkerDefaults {
                    image: self.worker_image.clone(),
                    resources: self.worker_resources.clone(),
                    storage_class_name: self
                        .worker_storage_class
                        .clone()
                        .filter(|class| !class.is_empty()),
                },
                resync_interval: self.resync_interval,
                lifecycle: crate::lifecycle::machine::Timing {
                    savepoint_timeout: self.savepoint_timeout,
                    retry_backoff: self.savepoint_retry_backoff,
                },
                autoscaler: crate::autoscaler::Timing {
                    sample_interval: self.autoscaler_sample_interval.max(Duration::from_secs(1)),
                    window: self.autoscaler_window,
                },
                // As many requests as reconciles: concurrent applies within a reconcile
                // shorten one job's latency, not the API server's total work.
                requests_in_flight: usize::from(self.concurrency.max(1)),
                crash_point: self.test_crash,
            },
            http_address: self.http_address,
            concurrency: self.concurrency.max(1),
            debounce: self.debounce,
            leader_election: self.leader_election.then(|| LeaderElection {
                lease_name: self.lease_name.clone(),
                lease_namespace: self.lease_namespace.clone(),
                lease_duration: self.lease_duration,
                renew_before: self.lease_renew_before,
            }),
            identity: self.identity.clone().unwrap_or_else(default_identity),
            webhook: self.webhook_address.map(|address| WebhookOptions {
                address,
                certificates: match &self.webhook_certificate_directory {
                    Some(directory) => WebhookCertificates::Directory(directory.clone()),
                    None => WebhookCertificates::Generated {
                        secret: self.webhook_secret.clone(),
                        namespace: self.webhook_secret_namespace.clone(),
                        configuration: self.webhook_configuration.clone(),
                        hosts: self
                            .webhook_hosts
                            .iter()
                            .map(|host| host.trim().to_string())
                            .filter(|host| !host.is_empty())
                            .collect(),
                        validity: self.webhook_certificate_validity,
                    },
                },
            }),
        }
    }
}

/// Runs a command; `validate` answers with its own exit code, the others with 1 on error.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run(args) => crate::run::run(args.options()).await?,
        Command::Crd => print!("{}", sluice_crds::crd::yaml()),
        Command::Validate { job } => {
            return Ok(sluice_crds::manifest::report::validate_file(&job));
        }
        Command::Doctor { namespace } => doctor(namespace).await?,
    }
    Ok(ExitCode::SUCCESS)
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

/// `--worker-resources`: a ResourceRequirements as JSON, every quantity parsed.
fn parse_resources(text: &str) -> Result<ResourceRequirements, String> {
    let example = r#"give JSON such as {"requests":{"cpu":"500m","memory":"1Gi"}}"#;
    let value: serde_json::Value = serde_json::from_str(text).map_err(|error| {
        format!("failed to read the worker resources {text:?}: {error}; {example}")
    })?;
    // The Kubernetes type ignores unknown fields: a typo such as `limit` would be lost.
    if let Some(unknown) = value
        .as_object()
        .into_iter()
        .flat_map(|object| object.keys())
        .find(|key| !["requests", "limits", "claims"].contains(&key.as_str()))
    {
        return Err(format!(
            "failed to read the worker resources: unknown field {unknown:?} (requests, limits or claims); {example}"
        ));
    }
    let resources: ResourceRequirements = serde_json::from_value(value).map_err(|error| {
        format!("failed to read the worker resources {text:?}: {error}; {example}")
    })?;
    for (kind, quantities) in [
        ("requests", &resources.requests),
        ("limits", &resources.limits),
    ] {
        for (name, quantity) in quantities.iter().flatten() {
            if !sluice_crds::validate::is_quantity(&quantity.0) {
                return Err(format!(
                    "failed to read the worker resources: {kind}.{name} {:?} is not a quantity (such as 500m, 2 or 1.5Gi)",
                    quantity.0
                ));
            }
        }
    }
    Ok(resources)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_flags_have_defaults_for_a_shell() {
        let cli = Cli::try_parse_from(["sluice-controller", "run"]).unwrap();
        let Command::Run(args) = cli.command else {
            panic!("not run")
        };
        let options = args.options();
        assert!(options.namespaces.is_empty());
        assert_eq!(options.settings.workers.image, default_worker_image());
        assert_eq!(options.settings.workers.resources, None);
        assert_eq!(options.settings.workers.storage_class_name, None);
        assert!(options.leader_election.is_some());
        assert_eq!(cli.log_format, LogFormat::Text);
    }

    #[test]
    fn run_flags_name_namespaces_and_turn_off_leader_election() {
        let cli = Cli::try_parse_from([
            "sluice-controller",
            "--log-format",
            "json",
            "run",
            "--namespace",
            "a,b",
            "--namespace",
            "c",
            "--leader-election=false",
            "--worker-image",
            "localhost/sluice-worker:dev",
        ])
        .unwrap();
        let Command::Run(args) = cli.command else {
            panic!("not run")
        };
        let options = args.options();
        assert_eq!(options.namespaces, ["a", "b", "c"]);
        assert!(options.leader_election.is_none());
        assert_eq!(
            options.settings.workers.image,
            "localhost/sluice-worker:dev"
        );
        assert_eq!(cli.log_format, LogFormat::Json);
    }

    #[test]
    fn worker_defaults_are_read_and_checked() {
        let parse = |arguments: &[&str]| {
            let mut all = vec!["sluice-controller", "run"];
            all.extend_from_slice(arguments);
            Cli::try_parse_from(all)
        };
        let cli = parse(&[
            "--worker-resources",
            r#"{"requests":{"cpu":"500m","memory":"1Gi"},"limits":{"memory":"1Gi"}}"#,
            "--worker-storage-class",
            "fast",
        ])
        .unwrap();
        let Command::Run(args) = cli.command else {
            panic!("not run")
        };
        let workers = args.options().settings.workers;
        let resources = workers.resources.unwrap();
        assert_eq!(resources.requests.unwrap()["cpu"].0, "500m");
        assert_eq!(resources.limits.unwrap()["memory"].0, "1Gi");
        assert_eq!(workers.storage_class_name.as_deref(), Some("fast"));
        for (bad, named) in [
            ("{requests: 1}", "failed to read the worker resources"),
            (r#"{"requests":{"cpu":"lots"}}"#, "requests.cpu"),
            (
                r#"{"limit":{"cpu":"1"}}"#,
                "failed to read the worker resources",
            ),
        ] {
            let Err(error) = parse(&["--worker-resources", bad]) else {
                panic!("{bad} was accepted");
            };
            let error = error.to_string();
            assert!(error.contains(named), "{bad}: {error}");
        }
    }
}
