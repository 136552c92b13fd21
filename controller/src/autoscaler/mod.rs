//! The autoscaler (docs/autoscaling.md; design in docs/architecture.md): for a job with
//! `spec.autoscaler.enabled`, each reconcile that is due one takes a sample (`measure`),
//! adds it to the job's window (`window`, pure), decides from a full window (`decide`,
//! pure), and records the decision in `status.autoscaler`. A new parallelism is only
//! written there: the lifecycle then rescales through a savepoint, as for any rescale.

pub mod decide;
pub mod measure;
pub mod window;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::ResourceExt;
use kube::api::Api;
use sluice_crds::status::{AutoscalerStatus, condition_type, set_condition};
use sluice_crds::{StreamJob, StreamJobSpec};
use tracing::{debug, info};

use self::decide::{Action, Decision, Memory, Refusal, Settings};
use self::measure::{KafkaReader, client_config};
use self::window::{Sample, Summary, Window};
use crate::build::job_name;
use crate::context::Context;
use crate::error::Error;
use crate::lifecycle::effects::worker_addresses;
use crate::metrics::{JobLabels, ScalingLabels};
use crate::names::ChildNames;
use crate::reconcile::{publish, write_status};
use crate::status::{Transition, WorkerCounts};

/// How often the autoscaler samples a job, and how long a window it decides from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// Between two samples of a job.
    pub sample_interval: Duration,
    /// What a full window covers (at least two checkpoint intervals of the job, so a
    /// position that moves only at checkpoints is never mistaken for a stall).
    pub window: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            sample_interval: Duration::from_secs(15),
            window: Duration::from_secs(120),
        }
    }
}

/// What the autoscaler keeps of one job between reconciles (lost with the controller:
/// a new leader starts with empty windows, so it decides nothing for a window).
struct JobState {
    window: Window,
    /// The job's metric labels, to remove its series when it is forgotten.
    labels: JobLabels,
    /// When it was last sampled (a deleted job is forgotten an hour later).
    last_seen: f64,
    memory: Memory,
    reader: Option<(String, Arc<KafkaReader>)>,
    last_written: Option<f64>,
    last_refusal: Option<Refusal>,
    rescale_started: Option<f64>,
}

/// The autoscaler's state of every job, by uid.
pub struct Autoscaler {
    jobs: Mutex<HashMap<String, JobState>>,
    origin: Instant,
}

impl Default for Autoscaler {
    fn default() -> Self {
        Self {
            jobs: Mutex::default(),
            origin: Instant::now(),
        }
    }
}

impl std::fmt::Debug for Autoscaler {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("Autoscaler").finish_non_exhaustive()
    }
}

impl Autoscaler {
    fn now(&self) -> f64 {
        self.origin.elapsed().as_secs_f64()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, JobState>> {
        // A panic while holding it leaves windows that are still windows.
        self.jobs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn forget(&self, uid: &str, metrics: &crate::metrics::AutoscalerMetrics) {
        if let Some(state) = self.lock().remove(uid) {
            metrics.remove(&state.labels);
        }
    }
}

/// How long a job's state outlives its last sample (a deleted job is never reconciled
/// again).
const FORGET_AFTER_SECONDS: f64 = 3600.0;

fn prune(jobs: &mut HashMap<String, JobState>, ctx: &Context, now: f64) {
    jobs.retain(|_, state| {
        let keep = now - state.last_seen < FORGET_AFTER_SECONDS;
        if !keep {
            ctx.metrics.autoscaler.remove(&state.labels);
        }
        keep
    });
}

/// The parallelism a job runs with: the autoscaler's choice while it is enabled
/// (`spec.parallelism` within its bounds before its first decision), else
/// `spec.parallelism`.
pub fn effective_parallelism(job: &StreamJob) -> i32 {
    let spec = &job.spec;
    let Some(autoscaler) = spec.autoscaler.as_ref().filter(|settings| settings.enabled) else {
        return spec.parallelism;
    };
    let chosen = job
        .status
        .as_ref()
        .and_then(|status| status.autoscaler.as_ref())
        .and_then(|status| status.parallelism)
        .unwrap_or(spec.parallelism);
    let max = autoscaler.max_parallelism.min(spec.max_parallelism).max(1);
    chosen.clamp(autoscaler.min_parallelism.min(max), max)
}

fn settings_of(job: &StreamJob) -> Option<Settings> {
    let autoscaler = job
        .spec
        .autoscaler
        .as_ref()
        .filter(|settings| settings.enabled)?;
    Some(Settings {
        min_parallelism: autoscaler.min_parallelism,
        max_parallelism: autoscaler.max_parallelism.min(job.spec.max_parallelism),
        key_groups: job.spec.max_parallelism,
        target_utilization: f64::from(autoscaler.target_utilization_percent) / 100.0,
        catch_up_seconds: autoscaler.catch_up_duration.get().as_secs_f64().max(1.0),
        scale_down_delay_seconds: autoscaler.scale_down_delay.get().as_secs_f64(),
    })
}

fn seconds_since(time: &Time) -> f64 {
    let now = k8s_openapi::jiff::Timestamp::now();
    (now.as_millisecond() - time.0.as_millisecond()) as f64 / 1000.0
}

/// The memory a decision starts from: what the status keeps, and what this controller
/// remembers.
fn memory_of(status: &AutoscalerStatus, kept: &Memory, now: f64) -> Memory {
    Memory {
        last_scale: status
            .last_scale_time
            .as_ref()
            .zip(status.last_scale_from)
            .map(|(time, from)| (now - seconds_since(time), from)),
        capacity_before_scale: status.capacity_before_scale,
        ineffective: status.ineffective_scale_up.clone(),
        ..kept.clone()
    }
}

/// The Kafka client properties of a job: `spec.kafka.properties`, and those of its
/// Secret when it names one (read for an autoscaled job, and by the lifecycle for a
/// rollback's check).
pub(crate) async fn kafka_properties(
    job: &StreamJob,
    ctx: &Context,
) -> Result<BTreeMap<String, String>, String> {
    kafka_properties_of(ctx, &job.namespace().unwrap_or_default(), &job.spec).await
}

/// [`kafka_properties`] of `spec`, a spec of a job in `namespace` (the one it runs, or
/// the last good one a rollback returns to).
pub(crate) async fn kafka_properties_of(
    ctx: &Context,
    namespace: &str,
    spec: &StreamJobSpec,
) -> Result<BTreeMap<String, String>, String> {
    let mut properties = spec.kafka.properties.clone();
    if let Some(reference) = &spec.kafka.secret_ref {
        let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
        let secret = ctx
            .limited(secrets.get(&reference.name))
            .await
            .map_err(|error| format!("failed to read Secret {}: {error}", reference.name))?;
        for (key, value) in secret.data.unwrap_or_default() {
            properties.insert(
                key,
                String::from_utf8_lossy(&value.0).trim_end().to_string(),
            );
        }
    }
    Ok(properties)
}

/// One sample of `job`, whose workers run `parallelism`: Kafka's offsets and the
/// workers' busy and CPU time. Any failure fails the sample.
async fn take_sample(
    job: &StreamJob,
    ctx: &Context,
    parallelism: i32,
    cached_reader: Option<(String, Arc<KafkaReader>)>,
) -> Result<(Sample, (String, Arc<KafkaReader>)), String> {
    let properties = kafka_properties(job, ctx).await?;
    let namespace = job.namespace().unwrap_or_default();
    let group = sluice_crds::kafka::group_id(&namespace, &job_name(job));
    let config = client_config(&job.spec.kafka.bootstrap_servers, &group, &properties);
    let fingerprint = format!("{:?}", config.config_map());
    let reader = match cached_reader {
        Some((known, reader)) if known == fingerprint => reader,
        _ => Arc::new(KafkaReader::new(&config)?),
    };
    let partitions = reader.read(&job.spec.source.topics).await?;
    let names = ChildNames::of(&job_name(job));
    let addresses = worker_addresses(ctx, &namespace, &names.workers, parallelism)
        .await
        .map_err(|error| error.to_string())?;
    let workers = measure::worker_readings(&ctx.worker_admin, &addresses).await;
    let sample = Sample {
        at: ctx.autoscaler.now(),
        partitions,
        workers,
        workers_ready: false,
    };
    Ok((sample, (fingerprint, reader)))
}

/// What a sample led to.
enum Outcome {
    /// The sample failed.
    Failed(String),
    /// The window is not full yet (`true` on its first sample).
    Collecting(bool),
    /// A decision.
    Decided(Box<(Summary, Decision, bool)>),
}

/// The autoscaler's step in a reconcile: returns when the job wants its next sample
/// (`None`: not autoscaled). A new parallelism is written to `status.autoscaler` and
/// `job.spec.parallelism` (in memory only), so the rest of the reconcile rescales.
/// Measurement failures never fail the reconcile: they are a decision not to decide.
pub async fn step(
    job: &mut StreamJob,
    ctx: &Context,
    workers: &WorkerCounts,
) -> Result<Option<Duration>, Error> {
    let uid = job.uid().unwrap_or_default();
    let Some(settings) = settings_of(job) else {
        ctx.autoscaler.forget(&uid, &ctx.metrics.autoscaler);
        // Disabled: its figures and condition would only mislead, and a later enable
        // starts from spec.parallelism.
        if let Some(status) = job.status.as_mut()
            && (status.autoscaler.is_some()
                || status
                    .conditions
                    .iter()
                    .any(|condition| condition.type_ == condition_type::CONSUMING))
        {
            status.autoscaler = None;
            status
                .conditions
                .retain(|condition| condition.type_ != condition_type::CONSUMING);
            write_status(job, ctx).await?;
        }
        return Ok(None);
    };
    let timing = ctx.settings.autoscaler;
    let interval = timing.sample_interval;
    let status = job.status.clone().unwrap_or_default();
    let generation = job.metadata.generation.unwrap_or(0);
    let Some(deployed) = status.deployed.clone() else {
        return Ok(Some(interval));
    };
    if job.spec.suspend
        || status.upgrade.is_some()
        || deployed.generation != generation
        || deployed.parallelism != job.spec.parallelism
    {
        // A change is under way: the next window starts once the workers run it.
        return Ok(Some(interval));
    }
    let now = ctx.autoscaler.now();
    let measures = (deployed.generation, deployed.parallelism);
    let recent = (job.spec.state.checkpoint_interval.get() * 2 + interval).as_secs_f64();
    let span = timing.window.as_secs_f64().max(recent);
    let cached_reader = {
        let mut jobs = ctx.autoscaler.lock();
        let labels = JobLabels {
            namespace: job.namespace().unwrap_or_default(),
            job: job.name_any(),
        };
        prune(&mut jobs, ctx, now);
        let state = jobs.entry(uid.clone()).or_insert_with(|| JobState {
            window: Window::new(measures, span, recent),
            labels,
            last_seen: now,
            memory: Memory::default(),
            reader: None,
            last_written: None,
            last_refusal: None,
            rescale_started: None,
        });
        state.last_seen = now;
        if state.window.measures != measures || state.window.span != span {
            // The workers restarted: a new window, and the time the rescale took.
            if let Some(started) = state.rescale_started.take() {
                state.memory.restart_seconds = Some(now - started);
            }
            state.window = Window::new(measures, span, recent);
            state.memory.recommendations.clear();
            state.memory.observed_since = None;
        }
        if let Some(newest) = state.window.newest() {
            let since = now - newest;
            if since < interval.as_secs_f64() * 0.9 {
                return Ok(Some(
                    interval.saturating_sub(Duration::from_secs_f64(since)),
                ));
            }
        }
        state.reader.clone()
    };
    let measured = take_sample(job, ctx, deployed.parallelism, cached_reader).await;
    let previous = status.autoscaler.clone().unwrap_or_default();
    let outcome = {
        let mut jobs = ctx.autoscaler.lock();
        let Some(state) = jobs.get_mut(&uid) else {
            return Ok(Some(interval));
        };
        match measured {
            Err(error) => Outcome::Failed(format!("no decision: {error}")),
            Ok((mut sample, reader)) => {
                state.reader = Some(reader);
                sample.workers_ready = workers.all_ready();
                state.window.push(sample);
                match state.window.summary() {
                    None => Outcome::Collecting(state.window.len() == 1),
                    Some(summary) => {
                        let memory = memory_of(&previous, &state.memory, now);
                        let decision =
                            decide::decide(&summary, deployed.parallelism, &settings, &memory, now);
                        state.memory = Memory {
                            last_scale: None,
                            capacity_before_scale: None,
                            ineffective: None,
                            ..decision.memory.clone()
                        };
                        let refusal_changed = state.last_refusal != decision.refusal;
                        state.last_refusal = decision.refusal;
                        if matches!(decision.action, Action::Scale(_)) {
                            state.rescale_started = Some(now);
                        }
                        Outcome::Decided(Box::new((summary, decision, refusal_changed)))
                    }
                }
            }
        }
    };
    match outcome {
        Outcome::Failed(reason) => {
            if previous.decision.as_deref() != Some(reason.as_str()) {
                set_decision(job, reason.clone());
                publish(
                    job,
                    ctx,
                    &Transition {
                        warning: true,
                        reason: "AutoscalerMeasurementFailed".into(),
                        message: reason,
                    },
                )
                .await;
                write_status(job, ctx).await?;
            }
        }
        Outcome::Collecting(first) => {
            let collecting = format!(
                "collecting samples: a decision needs {span:.0}s of them after the workers start"
            );
            if first && previous.decision.as_deref() != Some(collecting.as_str()) {
                set_decision(job, collecting);
                write_status(job, ctx).await?;
            }
        }
        Outcome::Decided(decided) => {
            let (summary, decision, refusal_changed) = *decided;
            debug!(reason = %decision.reason, "autoscaler decision");
            record_metrics(ctx, job, &summary, &decision);
            let changed = apply(job, ctx, &previous, &summary, &decision, refusal_changed).await;
            let due_write = {
                let mut jobs = ctx.autoscaler.lock();
                match jobs.get_mut(&uid) {
                    Some(state)
                        if changed || state.last_written.is_none_or(|at| now - at >= span) =>
                    {
                        state.last_written = Some(now);
                        true
                    }
                    _ => false,
                }
            };
            if due_write {
                write_status(job, ctx).await?;
            }
        }
    }
    Ok(Some(interval))
}

fn set_decision(job: &mut StreamJob, reason: String) {
    job.status
        .get_or_insert_with(Default::default)
        .autoscaler
        .get_or_insert_with(Default::default)
        .decision = Some(reason);
}

fn record_metrics(ctx: &Context, job: &StreamJob, summary: &Summary, decision: &Decision) {
    let labels = JobLabels {
        namespace: job.namespace().unwrap_or_default(),
        job: job.name_any(),
    };
    let metrics = &ctx.metrics.autoscaler;
    metrics.lag.get_or_create(&labels).set(summary.lag);
    metrics
        .input_rate
        .get_or_create(&labels)
        .set(summary.input_rate);
    metrics
        .processing_rate
        .get_or_create(&labels)
        .set(summary.processing_rate);
    if let Some(utilization) = summary.utilization {
        metrics.utilization.get_or_create(&labels).set(utilization);
    }
    if let Some(recommended) = decision.recommended {
        metrics
            .recommended_parallelism
            .get_or_create(&labels)
            .set(i64::from(recommended));
    }
}

/// Records a decision in the job's status (in memory) and publishes its Events; returns
/// whether the status changed in a way worth writing at once.
async fn apply(
    job: &mut StreamJob,
    ctx: &Context,
    previous: &AutoscalerStatus,
    summary: &Summary,
    decision: &Decision,
    refusal_changed: bool,
) -> bool {
    let current = job.spec.parallelism;
    let status = job.status.get_or_insert_with(Default::default);
    status.consumer_lag = Some(summary.lag);
    let autoscaler = status.autoscaler.get_or_insert_with(Default::default);
    autoscaler.recommended_parallelism = decision.recommended;
    autoscaler.lag_records = Some(summary.lag);
    autoscaler.input_records_per_second = Some(round(summary.input_rate));
    autoscaler.processed_records_per_second = Some(round(summary.processing_rate));
    autoscaler.utilization_percent = summary
        .utilization
        .map(|utilization| round(utilization * 100.0));
    autoscaler.partitions = Some(summary.classes);
    autoscaler.decision = Some(decision.reason.clone());
    autoscaler.ineffective_scale_up = decision.memory.ineffective.clone();
    autoscaler.capacity_before_scale = decision.memory.capacity_before_scale.map(round);
    let (consuming, reason, message) = if summary.classes.stop > 0 {
        (false, "ConsumerStopped", decision.reason.clone())
    } else if summary.classes.rewind > 0 {
        (false, "ConsumerRewound", decision.reason.clone())
    } else if summary.classes.stall > 0 {
        (false, "ConsumerStalled", decision.reason.clone())
    } else {
        (
            true,
            "Consuming",
            "the committed positions advance on every partition with lag".to_string(),
        )
    };
    let generation = job.metadata.generation;
    let condition_changed = set_condition(
        &mut status.conditions,
        Condition {
            type_: condition_type::CONSUMING.to_string(),
            status: if consuming { "True" } else { "False" }.to_string(),
            reason: reason.to_string(),
            message,
            observed_generation: generation,
            last_transition_time: Time(k8s_openapi::jiff::Timestamp::now()),
        },
    );
    let mut changed = condition_changed
        || previous.recommended_parallelism != decision.recommended
        || previous.partitions != Some(summary.classes)
        || previous.ineffective_scale_up != decision.memory.ineffective
        || previous.capacity_before_scale != decision.memory.capacity_before_scale.map(round);
    if let Action::Scale(parallelism) = decision.action {
        let autoscaler = status.autoscaler.get_or_insert_with(Default::default);
        autoscaler.parallelism = Some(parallelism);
        autoscaler.last_scale_time = Some(Time(k8s_openapi::jiff::Timestamp::now()));
        autoscaler.last_scale_from = Some(current);
        job.spec.parallelism = parallelism;
        ctx.metrics
            .autoscaler
            .scalings
            .get_or_create(&ScalingLabels {
                direction: if parallelism > current { "up" } else { "down" },
            })
            .inc();
        info!(reason = %decision.reason, "autoscaler: {current} → {parallelism} workers");
        publish(
            job,
            ctx,
            &Transition {
                warning: false,
                reason: "AutoscalerScaled".into(),
                message: decision.reason.clone(),
            },
        )
        .await;
        changed = true;
    } else if refusal_changed && let Some(refusal) = decision.refusal {
        publish(
            job,
            ctx,
            &Transition {
                warning: refusal == Refusal::Stuck,
                reason: "AutoscalerRefused".into(),
                message: decision.reason.clone(),
            },
        )
        .await;
        changed = true;
    }
    changed
}

fn round(value: f64) -> f64 {
    (value * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;

    #[test]
    fn the_effective_parallelism_is_the_autoscalers_while_it_is_enabled() {
        let mut job = fixtures::job();
        job.spec.parallelism = 3;
        assert_eq!(effective_parallelism(&job), 3, "no autoscaler");
        job.spec.autoscaler = Some(
            serde_json::from_value(serde_json::json!({
                "enabled": true, "minParallelism": 2, "maxParallelism": 8
            }))
            .unwrap(),
        );
        assert_eq!(effective_parallelism(&job), 3, "before its first decision");
        job.spec.parallelism = 20;
        assert_eq!(effective_parallelism(&job), 8, "spec beyond its bounds");
        job.status.get_or_insert_with(Default::default).autoscaler = Some(AutoscalerStatus {
            parallelism: Some(5),
            ..AutoscalerStatus::default()
        });
        assert_eq!(effective_parallelism(&job), 5, "its decision");
        job.spec.autoscaler.as_mut().unwrap().enabled = false;
        assert_eq!(effective_parallelism(&job), 20, "disabled: the spec rules");
    }
}
