//! The command line: `sluice-worker local` and `sluice-worker validate`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::engine::EngineOptions;
use crate::io::file::{FileSink, LineSource};
use crate::local::{LocalOptions, Summary};

/// The Sluice worker: runs a StreamJob's pipeline on Kafka (`run`, what a worker pod
/// executes) or on local files (`local`), and checks manifests (`validate`).
#[derive(Debug, Parser)]
#[command(name = "sluice-worker", version, about, long_about = None)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Human, global = true, env = "SLUICE_LOG_FORMAT")]
    pub log_format: LogFormat,

    /// Log filter (tracing's env-filter syntax), for example `info` or `sluice_worker=debug`.
    #[arg(long, default_value = "info", global = true, env = "SLUICE_LOG")]
    pub log: String,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// How logs are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// For people.
    Human,
    /// One JSON object per line.
    Json,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one worker of a StreamJob on Kafka, exactly once (what a worker pod executes).
    Run(RunArgs),
    /// Run a StreamJob on a file of JSON lines, with no cluster and no broker.
    Local(LocalArgs),
    /// Check a StreamJob manifest the way the controller does; exit non-zero on error.
    Validate(ValidateArgs),
    /// Check, list and delete savepoints (docs/savepoints.md).
    #[command(subcommand)]
    Savepoint(SavepointCommand),
}

/// `sluice-worker savepoint`.
#[derive(Debug, Subcommand)]
pub enum SavepointCommand {
    /// Whether a StreamJob can restore a savepoint's state, and why not: exit 0 when it
    /// can, 1 when it cannot (every file is fetched and its checksum checked).
    Check {
        /// The StreamJob manifest that would restore it.
        #[arg(long)]
        job: PathBuf,
        /// The savepoint: `file:///…/<namespace>/<name>/<id>` or `s3://…/<id>`.
        #[arg(long)]
        savepoint: String,
        /// Skip fetching the files (compatibility only).
        #[arg(long)]
        no_verify: bool,
    },
    /// The savepoints of one job: `<location>/<namespace>/<name>`.
    List {
        /// The job's savepoint directory.
        location: String,
    },
    /// Delete a savepoint; table files another savepoint uses are kept.
    Delete {
        /// The savepoint.
        savepoint: String,
    },
}

/// `sluice-worker local`.
#[derive(Debug, Args)]
pub struct LocalArgs {
    /// The StreamJob manifest.
    #[arg(long)]
    pub job: PathBuf,
    /// Events, one JSON object per line; `-` or absent: stdin.
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// Where results go, one JSON object per line; `-` or absent: stdout.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Where dead letters go (JSON lines of {reason, detail, line, original}); absent:
    /// counted only.
    #[arg(long)]
    pub dead_letter: Option<PathBuf>,
    /// Where late events go (same envelope, reason "late"); absent: counted only.
    #[arg(long)]
    pub late: Option<PathBuf>,
    /// Directory for the RocksDB state, which must be empty (local mode starts from empty
    /// state) and is kept after the run; absent: a temporary directory, removed at the end.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// About how many windows the in-memory state cache holds before evicting to RocksDB.
    #[arg(long, default_value_t = EngineOptions::default().state_cache_entries)]
    pub state_cache_entries: usize,
    /// How often to log progress on long runs.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub progress_interval: Duration,
    /// Print no summary at the end.
    #[arg(long)]
    pub quiet: bool,
}

/// `sluice-worker run`. Every flag can also be set by its environment variable, as the
/// controller does in a worker pod.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The StreamJob manifest (the controller mounts it from a ConfigMap).
    #[arg(long, env = "SLUICE_JOB")]
    pub job: PathBuf,
    /// The StreamJob's namespace; default: the manifest's, else "default". It names the
    /// job's consumer group, transactional ids and repartition topic.
    #[arg(long, env = "SLUICE_NAMESPACE")]
    pub namespace: Option<String>,
    /// This worker's ordinal, 0 to parallelism - 1; default: the number after the last
    /// '-' of the host name (a StatefulSet pod `<name>-<ordinal>`).
    #[arg(long, env = "SLUICE_ORDINAL")]
    pub ordinal: Option<u32>,
    /// The number of workers of the job.
    #[arg(long, env = "SLUICE_PARALLELISM")]
    pub parallelism: u32,
    /// After a rescale down, the parallelism before it: worker 0 aborts the transactions
    /// the removed workers may have left open.
    #[arg(long, env = "SLUICE_PREVIOUS_PARALLELISM")]
    pub previous_parallelism: Option<u32>,
    /// A directory of Kafka client properties, one file per property (the Secret of
    /// spec.kafka.secretRef, mounted); they add to spec.kafka.properties.
    #[arg(long, env = "SLUICE_KAFKA_PROPERTIES")]
    pub kafka_properties: Option<PathBuf>,
    /// The state directory: RocksDB and its checkpoints (the pod's volume).
    #[arg(long, env = "SLUICE_STATE_DIR", default_value = "/var/lib/sluice")]
    pub state_dir: PathBuf,
    /// Where the admin API listens (/healthz, /readyz, /metrics).
    #[arg(long, env = "SLUICE_ADMIN_ADDRESS", default_value = "0.0.0.0:8080")]
    pub admin_address: std::net::SocketAddr,
    /// About how many windows the in-memory state cache holds before evicting to RocksDB.
    #[arg(long, env = "SLUICE_STATE_CACHE_ENTRIES", default_value_t = EngineOptions::default().state_cache_entries)]
    pub state_cache_entries: usize,
    /// How long a Kafka request may take before the worker gives up on it and retries.
    #[arg(long, env = "SLUICE_KAFKA_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub kafka_timeout: Duration,
    /// Where savepoints are written, `file:///path` or `s3://bucket/prefix`; default:
    /// spec.savepoints.location. S3 credentials come from the AWS_* variables.
    #[arg(long, env = "SLUICE_SAVEPOINT_LOCATION")]
    pub savepoint_location: Option<String>,
    /// Start from this savepoint (any parallelism), once: a worker restarted with the
    /// same value keeps the state it made since.
    #[arg(long, env = "SLUICE_RESTORE_FROM")]
    pub restore_from: Option<String>,
    /// Take only the Kafka offsets (and watermark) of --restore-from: the windows start
    /// empty, and the savepoint's state need not fit the job (an upgrade with
    /// `upgradeMode: Stateless`).
    #[arg(
        long,
        env = "SLUICE_RESTORE_OFFSETS_ONLY",
        requires = "restore_from",
        value_parser = clap::builder::BoolishValueParser::new(),
        default_value = "false",
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub restore_offsets_only: bool,
    /// The epoch of --restore-from: a worker restarted with the same savepoint and epoch
    /// keeps the state it made since; another epoch restores the savepoint again, whatever
    /// the volume holds (the controller sets one when it rolls back to a savepoint that
    /// another spec's workers may have restored).
    #[arg(long, env = "SLUICE_RESTORE_EPOCH", requires = "restore_from")]
    pub restore_epoch: Option<u64>,
    /// A file holding the bearer token the admin API's savepoint endpoints require (a
    /// mounted Secret); without it they refuse every request.
    #[arg(long, env = "SLUICE_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// The hash of the spec this worker runs, recorded in savepoints (set by the
    /// controller).
    #[arg(long, env = "SLUICE_SPEC_HASH")]
    pub spec_hash: Option<String>,
    /// For recovery tests only: crash at a point of the commit protocol,
    /// `before-commit:<n>` or `after-commit:<n>` (the n-th checkpoint of this process).
    #[arg(long, env = "SLUICE_TEST_CRASH", hide = true)]
    pub crash_point: Option<crate::run::CrashPoint>,
}

/// The exit code of a worker fenced by another with its ordinal.
pub const EXIT_FENCED: u8 = 3;

/// `sluice-worker validate`.
#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// The StreamJob manifest (YAML or JSON).
    #[arg(long)]
    pub job: PathBuf,
}

/// Sets up logging on stderr.
pub fn init_logging(format: LogFormat, filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: a log redirected to a file or a pod log stays plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Runs a command.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Local(args) => run_local(&args, cli.log_format),
        Command::Run(args) => run_worker(&args),
        Command::Validate(args) => Ok(run_validate(&args)),
        Command::Savepoint(command) => run_savepoint(&command),
    }
}

fn run_savepoint(command: &SavepointCommand) -> anyhow::Result<ExitCode> {
    use crate::savepoint::{Directory, StateDescription, Url, manage, restore};
    match command {
        SavepointCommand::Check {
            job,
            savepoint,
            no_verify,
        } => {
            let text = read_job(job)?;
            let (manifest, checked) =
                sluice_crds::load_manifest(&text).map_err(|error| anyhow::anyhow!("{error}"))?;
            let identity = crate::savepoint::JobIdentity {
                namespace: manifest
                    .metadata
                    .namespace
                    .clone()
                    .unwrap_or_else(|| "default".into()),
                name: manifest.metadata.name.clone().unwrap_or_default(),
            };
            let url = Url::parse(savepoint)?;
            let opened = match restore::Savepoint::open(&url) {
                Ok(opened) => opened,
                Err(error) => {
                    println!("cannot restore: {error:#}");
                    return Ok(ExitCode::FAILURE);
                }
            };
            let problems = opened.problems(
                &identity,
                &StateDescription::of(&checked),
                checked.spec.allow_non_restored_state,
            );
            if !problems.is_empty() {
                println!("cannot restore {url}:");
                for problem in problems {
                    println!("  - {problem}");
                }
                return Ok(ExitCode::FAILURE);
            }
            if !no_verify && let Err(error) = opened.verify() {
                println!("cannot restore: {error:#}");
                return Ok(ExitCode::FAILURE);
            }
            println!(
                "{}: can restore {url} (taken at parallelism {}, {} bytes, completed {})",
                job.display(),
                opened.manifest.parallelism,
                opened.manifest.size(),
                opened.manifest.completed_at
            );
            Ok(ExitCode::SUCCESS)
        }
        SavepointCommand::List { location } => {
            let directory = Directory::open(&Url::parse(location)?)?;
            println!(
                "{:<32} {:<10} {:>11} {:>14}  COMPLETED",
                "ID", "STATE", "PARALLELISM", "BYTES"
            );
            for listed in manage::list(&directory)? {
                match &listed.manifest {
                    Some(manifest) => println!(
                        "{:<32} {:<10} {:>11} {:>14}  {}",
                        listed.id,
                        "complete",
                        manifest.parallelism,
                        manifest.size(),
                        manifest.completed_at
                    ),
                    None => println!(
                        "{:<32} {:<10} {:>11} {:>14}  -",
                        listed.id, "incomplete", "-", listed.own_bytes
                    ),
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        SavepointCommand::Delete { savepoint } => {
            let url = Url::parse(savepoint)?;
            let (job_url, id) = url
                .split_last()
                .with_context(|| format!("failed to delete {url}: it names no savepoint"))?;
            let deleted = manage::delete(&Directory::open(&job_url)?, &id)?;
            println!(
                "deleted savepoint {id}: {} objects removed, {} shared files kept (used by other savepoints)",
                deleted.objects, deleted.kept_shared
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// A StreamJob file's text, decoded as kubectl decodes it (UTF-16 with a byte-order mark,
/// invalid UTF-8 as U+FFFD).
fn read_job(path: &Path) -> anyhow::Result<String> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("failed to read the StreamJob {}", path.display()))?;
    Ok(sluice_crds::manifest::yaml::decode(&bytes).into_owned())
}

fn run_validate(args: &ValidateArgs) -> ExitCode {
    sluice_crds::manifest::report::validate_file(&args.job)
}

/// The savepoint location: the flag's, else the job's `spec.savepoints.location`.
fn savepoint_location(
    args: &RunArgs,
    manifest: &sluice_crds::StreamJob,
) -> anyhow::Result<Option<crate::savepoint::Url>> {
    let configured = args.savepoint_location.clone().or_else(|| {
        manifest
            .spec
            .savepoints
            .as_ref()
            .map(|savepoints| savepoints.location.clone())
    });
    configured
        .as_deref()
        .map(crate::savepoint::Url::parse)
        .transpose()
        .context("failed to read the savepoint location (--savepoint-location or spec.savepoints.location)")
}

/// The ordinal of a StatefulSet pod from its host name `<name>-<ordinal>`.
pub fn ordinal_from_host_name(host_name: &str) -> Option<u32> {
    host_name.rsplit_once('-')?.1.parse().ok()
}

fn run_worker(args: &RunArgs) -> anyhow::Result<ExitCode> {
    // Read and checked once; everything below uses this copy.
    let (manifest, job) = sluice_crds::load_manifest(&read_job(&args.job)?)
        .map_err(|error| anyhow::anyhow!("failed to load {}: {error}", args.job.display()))?;
    let ordinal = match args.ordinal {
        Some(ordinal) => ordinal,
        None => {
            let host_name = std::env::var("HOSTNAME")
                .ok()
                .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
                .unwrap_or_default();
            ordinal_from_host_name(host_name.trim()).with_context(|| {
                format!(
                    "failed to find this worker's ordinal: the host name {:?} does not end in -<ordinal>; set --ordinal",
                    host_name.trim()
                )
            })?
        }
    };
    let options = crate::run::RunOptions {
        job: args.job.clone(),
        namespace: args.namespace.clone(),
        ordinal,
        parallelism: args.parallelism,
        previous_parallelism: args.previous_parallelism,
        kafka_properties: args.kafka_properties.clone(),
        state_dir: args.state_dir.clone(),
        state_cache_entries: args.state_cache_entries,
        kafka_timeout: args.kafka_timeout,
        crash_point: args.crash_point,
        savepoint_location: savepoint_location(args, &manifest)?,
        restore_from: args
            .restore_from
            .as_deref()
            .map(crate::savepoint::Url::parse)
            .transpose()
            .context("failed to read --restore-from")?,
        restore_offsets_only: args.restore_offsets_only,
        restore_epoch: args.restore_epoch,
        spec_hash: args.spec_hash.clone(),
    };
    let token = match &args.admin_token_file {
        Some(path) => {
            let token = std::fs::read_to_string(path)
                .with_context(|| {
                    format!(
                        "failed to read the admin token {} (--admin-token-file)",
                        path.display()
                    )
                })?
                .trim()
                .to_string();
            anyhow::ensure!(
                !token.is_empty(),
                "failed to use the admin token {}: the file is empty",
                path.display()
            );
            Some(token)
        }
        None => None,
    };
    let metrics = crate::metrics::Metrics::default();
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    let exchanges_events = job.pipeline.windowed().is_some()
        && job.source.partitioning == sluice_crds::streamjob::Partitioning::Any;
    let status = std::sync::Arc::new(crate::run::WorkerStatus::new(
        crate::savepoint::Savepoints::with_rules(
            options.savepoint_location.is_some(),
            exchanges_events,
            Some(crate::run::savepoint_records_directory(&args.state_dir)),
        ),
    ));
    // Before the admin API answers: a resume must never come before this and be undone.
    crate::run::apply_recorded_stop(&options, &status)?;
    crate::admin::serve(
        args.admin_address,
        crate::admin::AdminState {
            status: status.clone(),
            registry: std::sync::Arc::new(std::sync::Mutex::new(registry)),
            token,
            stop_record: Some(crate::run::stop_record_path(&args.state_dir)),
            job_savepoints: match &options.savepoint_location {
                Some(location) => Some(crate::savepoint::job_url(
                    location,
                    &crate::run::job_identity(&manifest, options.namespace.as_deref())?,
                )),
                None => None,
            },
        },
    )?;
    // The engine runs on a thread whose stack is known, so the expression depth that
    // validation allows is always safe to evaluate.
    let outcome = std::thread::Builder::new()
        .name("worker".into())
        .stack_size(crate::pipeline::expression::EVALUATION_STACK_BYTES)
        .spawn(move || crate::run::run(&manifest, &job, &options, &status, &metrics))?
        .join()
        .map_err(|_| anyhow::anyhow!("the worker thread panicked"))??;
    match outcome {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(reason) => {
            tracing::error!("{reason}");
            eprintln!("error: {reason}");
            Ok(ExitCode::from(EXIT_FENCED))
        }
    }
}

fn run_local(args: &LocalArgs, log_format: LogFormat) -> anyhow::Result<ExitCode> {
    let text = read_job(&args.job)?;
    let (_, checked) =
        sluice_crds::load_manifest(&text).map_err(|error| anyhow::anyhow!("{error}"))?;
    let mut source = LineSource::open(args.input.as_deref())?;
    let mut sink = FileSink::create(
        args.output.as_deref(),
        args.dead_letter.as_deref(),
        args.late.as_deref(),
    )?;
    let temporary;
    let state_directory = match &args.state_dir {
        Some(directory) => {
            std::fs::create_dir_all(directory).with_context(|| {
                format!(
                    "failed to create the state directory {}",
                    directory.display()
                )
            })?;
            let mut entries = std::fs::read_dir(directory).with_context(|| {
                format!("failed to read the state directory {}", directory.display())
            })?;
            if entries.next().is_some() {
                anyhow::bail!(
                    "failed to use the state directory {}: it is not empty, and local mode starts from empty state (restoring a checkpoint comes with Kafka mode): remove it or choose another",
                    directory.display()
                );
            }
            directory.clone()
        }
        None => {
            temporary = tempfile::Builder::new()
                .prefix("sluice-local-state-")
                .tempdir()
                .context("failed to create a temporary state directory")?;
            temporary.path().to_path_buf()
        }
    };
    let options = LocalOptions {
        engine: EngineOptions {
            state_cache_entries: args.state_cache_entries,
        },
        progress_interval: Some(args.progress_interval),
    };
    let summary = crate::local::run(&checked, &mut source, &mut sink, &state_directory, &options)?;
    if !args.quiet && log_format == LogFormat::Human {
        eprint!("{}", format_summary(&summary));
    }
    Ok(ExitCode::SUCCESS)
}

/// The end-of-run summary for people.
pub fn format_summary(summary: &Summary) -> String {
    let mut text = format!(
        "events in: {}\nresults out: {}\nfiltered out: {}\nlate: {}\ndead letters: {}\n",
        summary.events_in,
        summary.results_out,
        summary.filtered,
        summary.late,
        summary.dead_letters_total()
    );
    for (reason, count) in &summary.dead_letters {
        text.push_str(&format!("  {reason}: {count}\n"));
    }
    text
}
