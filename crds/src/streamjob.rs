//! `StreamJob` (`sluice.dev/v1alpha1`): what a user writes to run a streaming job.
//!
//! A StreamJob reads events from Kafka topics, runs them through an ordered pipeline of
//! steps (filter, map, keyBy, window, aggregate), and writes results to a Kafka topic,
//! exactly once. The controller turns it into a worker StatefulSet; the worker runs the
//! same spec on Kafka, or on local files with `sluice-worker local`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::duration::Duration;
use crate::expression::MAX_EXPRESSION_LENGTH;
use crate::messages;
use crate::pipeline::PipelineStep;
use crate::status::StreamJobStatus;

/// The desired state of a StreamJob: where events come from, what happens to them, where
/// results go, and how the job is run, upgraded and scaled.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "sluice.dev",
    version = "v1alpha1",
    kind = "StreamJob",
    plural = "streamjobs",
    shortname = "sj",
    namespaced,
    status = "StreamJobStatus",
    derive = "PartialEq",
    doc = "A stateful stream-processing job: Kafka in, an event-time pipeline, Kafka out, exactly once.",
    scale = r#"{"specReplicasPath":".spec.parallelism","statusReplicasPath":".status.replicas","labelSelectorPath":".status.selector"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase","description":"Where the job is in its lifecycle"}"#,
    printcolumn = r#"{"name":"Parallelism","type":"integer","jsonPath":".spec.parallelism","description":"Desired number of workers"}"#,
    printcolumn = r#"{"name":"Ready","type":"integer","jsonPath":".status.readyReplicas","description":"Workers that are ready"}"#,
    printcolumn = r#"{"name":"Lag","type":"integer","jsonPath":".status.consumerLag","description":"Records not yet processed, summed over the source partitions"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Spec","type":"string","priority":1,"jsonPath":".status.deployed.specHash","description":"Hash of the spec the workers run"}"#,
    printcolumn = r#"{"name":"Message","type":"string","priority":1,"jsonPath":".status.conditions[?(@.type==\"Ready\")].message","description":"Why the job is or is not ready"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    { "rule": "self.parallelism <= self.maxParallelism", "message": messages::PARALLELISM_ABOVE_MAX },
    { "rule": "!has(self.autoscaler) || self.autoscaler.minParallelism <= self.autoscaler.maxParallelism", "message": messages::AUTOSCALER_MIN_ABOVE_MAX },
    { "rule": "!has(self.autoscaler) || self.autoscaler.maxParallelism <= self.maxParallelism", "message": messages::AUTOSCALER_MAX_ABOVE_KEY_GROUPS },
    { "rule": messages::RULE_AUTOSCALER_NEEDS_SAVEPOINTS, "message": messages::AUTOSCALER_NEEDS_SAVEPOINTS },
]))]
pub struct StreamJobSpec {
    /// Container image of the worker. Defaults to the controller's `--worker-image` (the
    /// chart's `workerImage`), else the `sluice-worker` image of its own version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,

    /// When the kubelet pulls the worker image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<ImagePullPolicy>,

    /// Number of workers (pods). Each worker owns a contiguous range of key groups and the
    /// Kafka partitions assigned to it. Changed by `kubectl scale` (or an HPA or KEDA),
    /// never by Sluice's autoscaler, which keeps the parallelism it chose in
    /// `status.autoscaler`; at most `maxParallelism`.
    #[serde(default = "default_parallelism")]
    #[schemars(range(min = 1, max = 32768))]
    pub parallelism: i32,

    /// Number of key groups: keyed state is split into this many groups (hash of the key
    /// modulo maxParallelism), the unit that moves between workers on rescale. It bounds
    /// parallelism and cannot change once the job has state.
    #[serde(default = "default_max_parallelism")]
    #[schemars(range(min = 1, max = 32768))]
    #[schemars(extend("x-kubernetes-validations" = [
        { "rule": "self == oldSelf", "message": messages::MAX_PARALLELISM_IMMUTABLE },
    ]))]
    pub max_parallelism: i32,

    /// Connection to the Kafka cluster the job reads from and writes to.
    pub kafka: KafkaConnection,

    /// Where events come from and how their event time and watermarks are derived.
    pub source: Source,

    /// The ordered steps each event goes through. Stateless steps (`filter`, `map`) may
    /// appear anywhere; a `window` must come after a `keyBy` and be followed directly by
    /// an `aggregate`.
    #[schemars(length(min = 1, max = 32))]
    #[schemars(extend("x-kubernetes-validations" = [
        { "rule": "self.filter(step, has(step.keyBy)).size() <= 1", "message": messages::PIPELINE_ONE_KEY_BY },
        { "rule": "self.filter(step, has(step.window)).size() <= 1", "message": messages::PIPELINE_ONE_WINDOW },
        { "rule": messages::RULE_WINDOW_AFTER_KEY_BY, "message": messages::PIPELINE_WINDOW_NEEDS_KEY_BY },
        { "rule": messages::RULE_AGGREGATE_AFTER_WINDOW, "message": messages::PIPELINE_AGGREGATE_NEEDS_WINDOW },
        { "rule": messages::RULE_WINDOW_BEFORE_AGGREGATE, "message": messages::PIPELINE_WINDOW_NEEDS_AGGREGATE },
    ]))]
    pub pipeline: Vec<PipelineStep>,

    /// Where results, dead letters and late events go.
    pub sink: Sink,

    /// Where workers keep keyed state and how often they checkpoint it.
    #[serde(default)]
    pub state: StateSpec,

    /// Savepoints: consistent snapshots of the whole job, taken before upgrades and
    /// rescales, periodically, on request and on delete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub savepoints: Option<SavepointSpec>,

    /// How a running job moves to a new spec: `Savepoint` (take a savepoint, restart from
    /// it), `LastState` (restart from the last checkpoint on the volumes, faster, no
    /// savepoint), or `Stateless` (a savepoint of the Kafka offsets only: the new spec's
    /// windows start empty, and any pipeline change is accepted).
    #[serde(default)]
    pub upgrade_mode: UpgradeMode,

    /// Automatic rollback: when the workers of a new spec or parallelism are not all Ready
    /// within `readyTimeout`, the controller starts the last good spec again from the
    /// savepoint taken before the change. Unset: enabled, with a 5m timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback: Option<RollbackSpec>,

    /// Let a restore drop state that no longer maps to the pipeline (as Flink's
    /// `allowNonRestoredState`): the accumulators of an aggregate removed from the job, or
    /// whose function changed under the same name (it starts empty in windows already
    /// open). Without it such a change is refused (`IncompatibleState`). The `keyBy`, the
    /// window and `maxParallelism` still cannot change: no state would map (use
    /// `upgradeMode: Stateless`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_non_restored_state: bool,

    /// Stop the job's workers, keeping state (a savepoint is taken first when
    /// upgradeMode is `Savepoint`). Set back to false to resume.
    #[serde(default)]
    pub suspend: bool,

    /// Change this number to restart the workers once (for example from Git), with the
    /// same spec and the upgrade mode's state handling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_nonce: Option<i64>,

    /// Change this number to take one savepoint now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub savepoint_trigger_nonce: Option<i64>,

    /// Automatic scaling of parallelism from the consumer lag and processing rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaler: Option<AutoscalerSpec>,

    /// CPU and memory of each worker container. Unset: the controller's default
    /// (`--worker-resources`, the chart's `workerResources`), else none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = quantity_rules)]
    pub resources: Option<ResourceRequirements>,

    /// The parts of the worker pods a user may set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_template: Option<PodTemplate>,
}

/// The longest quantity, and the most quantities of one map (`resources.limits`): bounds
/// the API server needs to accept the cost of the `isQuantity` rule on each.
pub const MAX_QUANTITY_LENGTH: u64 = 64;
/// See [`MAX_QUANTITY_LENGTH`].
pub const MAX_QUANTITIES: u64 = 16;

/// Adds to every quantity of a schema (an int-or-string) the rule that it parses, with the
/// bounds that let the API server estimate its cost. `validate` checks the same with
/// its own parser of quantities.
fn quantity_rules(schema: &mut schemars::Schema) {
    fn walk(node: &mut serde_json::Value) {
        let Some(fields) = node.as_object_mut() else {
            return;
        };
        if fields.get("x-kubernetes-int-or-string") == Some(&serde_json::Value::Bool(true)) {
            fields.insert("maxLength".into(), MAX_QUANTITY_LENGTH.into());
            fields.insert(
                "x-kubernetes-validations".into(),
                serde_json::json!([{ "rule": messages::RULE_IS_QUANTITY, "message": messages::QUANTITY_INVALID }]),
            );
        }
        if fields
            .get("additionalProperties")
            .and_then(|values| values.get("x-kubernetes-int-or-string"))
            .is_some()
        {
            fields.insert("maxProperties".into(), MAX_QUANTITIES.into());
        }
        for child in fields.values_mut() {
            walk(child);
        }
    }
    if let Some(fields) = schema.as_object_mut() {
        let mut whole = serde_json::Value::Object(std::mem::take(fields));
        walk(&mut whole);
        if let serde_json::Value::Object(walked) = whole {
            *fields = walked;
        }
    }
}

/// The default number of workers.
pub const DEFAULT_PARALLELISM: i32 = 1;
/// The default number of key groups (as in Flink).
pub const DEFAULT_MAX_PARALLELISM: i32 = 128;

fn default_parallelism() -> i32 {
    DEFAULT_PARALLELISM
}

fn default_max_parallelism() -> i32 {
    DEFAULT_MAX_PARALLELISM
}

/// When the kubelet pulls an image (as in a Pod spec).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ImagePullPolicy {
    /// Pull on every pod start.
    Always,
    /// Pull only when the node lacks the image.
    IfNotPresent,
    /// Never pull; the image must be on the node.
    Never,
}

/// Connection to a Kafka cluster.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KafkaConnection {
    /// Comma-separated `host:port` list of brokers to bootstrap from.
    #[schemars(length(min = 1, max = 2048))]
    pub bootstrap_servers: String,

    /// A Secret in the job's namespace whose keys are Kafka client properties, for
    /// credentials and TLS (for example `security.protocol`, `sasl.mechanism`,
    /// `sasl.username`, `sasl.password`, `ssl.ca.pem`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretReference>,

    /// Other Kafka client properties (librdkafka names), for settings that are not secret.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64))]
    pub properties: BTreeMap<String, String>,
}

/// A Secret in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct SecretReference {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Where events come from.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Source {
    /// Kafka topics to read; all partitions of each are read.
    #[schemars(length(min = 1, max = 64), inner(length(min = 1, max = 249)))]
    pub topics: Vec<String>,

    /// How record values are decoded.
    #[serde(default)]
    pub format: Format,

    /// Where a job with no state (no checkpoint, no savepoint) starts reading.
    #[serde(default)]
    pub start_from: StartPosition,

    /// How the topics are partitioned with respect to the pipeline's `keyBy`. `Any`
    /// (default): events of one key may be on any partition, so workers send each keyed
    /// event to the owner of its key group through an internal topic of the job (one
    /// worker, owning every key group, keeps them in process). `ByKey`: the producers
    /// already put every event of a key on one partition, so each worker keeps the state
    /// of the partitions it reads and the extra hop is skipped; if the claim is wrong, a
    /// key's events are aggregated separately per partition.
    #[serde(default)]
    pub partitioning: Partitioning,

    /// Which field of an event holds its event time, and how it is written.
    pub event_time: EventTime,

    /// How far event time may run ahead of the slowest partition before windows close.
    #[serde(default)]
    pub watermark: Watermark,
}

/// How records are encoded.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum Format {
    /// One JSON object per record.
    #[default]
    Json,
}

/// Where a job with no state starts reading.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum StartPosition {
    /// From the oldest record still retained.
    #[default]
    Earliest,
    /// From records produced after the job starts.
    Latest,
}

/// How source topics are partitioned with respect to the pipeline's key.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum Partitioning {
    /// Events of one key may be on any partition: keyed events go to the owner of their
    /// key group through the job's internal repartition topic (with one worker, which
    /// owns every key group, in process).
    #[default]
    Any,
    /// Every event of a key is on one partition (the producers partition by the job's
    /// key): no repartition topic; state is split by source partition.
    ByKey,
}

/// The event-time field of an event.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventTime {
    /// Name of the top-level field of the decoded event that holds its event time.
    #[schemars(length(min = 1, max = 256))]
    pub field: String,

    /// How the field is written.
    #[serde(default)]
    pub format: TimeFormat,
}

/// How an event time is written.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum TimeFormat {
    /// An RFC 3339 string such as `2026-11-26T10:15:00Z` or `2026-11-26T11:15:00.250+01:00`.
    #[default]
    Rfc3339,
    /// An integer number of milliseconds since the Unix epoch.
    UnixMillis,
    /// An integer (or fractional) number of seconds since the Unix epoch.
    UnixSeconds,
}

/// Watermark generation: the watermark of a partition is the greatest event time seen
/// minus `maxOutOfOrderness`; the job's watermark is the least over active partitions.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Watermark {
    /// How much later than the newest event an event may arrive and still count as on
    /// time. Larger values tolerate more disorder but delay results.
    #[serde(default = "default_max_out_of_orderness")]
    pub max_out_of_orderness: Duration,

    /// A partition that receives nothing for this long stops holding the watermark back.
    /// Unset: an idle partition holds it back until it receives data again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<Duration>,
}

impl Default for Watermark {
    fn default() -> Self {
        Self {
            max_out_of_orderness: default_max_out_of_orderness(),
            idle_timeout: None,
        }
    }
}

fn default_max_out_of_orderness() -> Duration {
    Duration::from_secs(5)
}

/// Where results go.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Sink {
    /// Kafka topic that receives results.
    #[schemars(length(min = 1, max = 249))]
    pub topic: String,

    /// How results are encoded.
    #[serde(default)]
    pub format: Format,

    /// A CEL expression over the result (`event`) giving the Kafka record key, for example
    /// `event.page`. Unset: the key of `keyBy` (for a window, the window's key) when the
    /// pipeline has one, else no key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = MAX_EXPRESSION_LENGTH))]
    pub key: Option<String>,

    /// Topic for events that cannot be decoded or evaluated, with their original bytes
    /// and the reason in headers. Unset: such events are counted, logged and dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 249))]
    pub dead_letter_topic: Option<String>,

    /// Topic for events that arrive later than the window's allowed lateness, untouched,
    /// with the reason in a header. Unset: such events are counted and dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 249))]
    pub late_data_topic: Option<String>,
}

/// Where workers keep keyed state.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StateSpec {
    /// StorageClass of each worker's state volume. Unset: the controller's default for new
    /// jobs (`--worker-storage-class`, the chart's `workerStorageClass`), else the
    /// cluster's default; volumes that exist keep the class they were made with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub storage_class_name: Option<String>,

    /// Size of each worker's state volume (RocksDB).
    #[serde(default = "default_volume_size")]
    #[schemars(transform = quantity_rules)]
    pub volume_size: Quantity,

    /// How often a worker checkpoints: flushes state, commits its Kafka transaction and
    /// the consumed offsets together. Results become visible to read_committed consumers
    /// at each checkpoint, so this bounds end-to-end latency.
    #[serde(default = "default_checkpoint_interval")]
    pub checkpoint_interval: Duration,
}

impl Default for StateSpec {
    fn default() -> Self {
        Self {
            storage_class_name: None,
            volume_size: default_volume_size(),
            checkpoint_interval: default_checkpoint_interval(),
        }
    }
}

fn default_volume_size() -> Quantity {
    Quantity("1Gi".to_string())
}

/// 2s, chosen by measurement (bench/README.md, "Choosing the default checkpoint
/// interval"): the shortest interval measured clearly within 10% of the best throughput
/// (it was the best; 1s fell at the edge, 9.8% below); results become visible at each
/// checkpoint.
fn default_checkpoint_interval() -> Duration {
    Duration::from_secs(2)
}

/// Savepoint settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SavepointSpec {
    /// Where savepoints are written: `file:///path` on a volume mounted by every worker,
    /// or `s3://bucket/prefix` on S3 or an S3-compatible store (no other scheme).
    #[schemars(length(min = 1, max = 1024), regex(pattern = messages::SAVEPOINT_LOCATION_PATTERN))]
    pub location: String,

    /// Take a savepoint this often (at least 10s; each one pauses the workers while they
    /// write it). Unset: only before upgrades and rescales, on suspend, on request and on
    /// delete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,

    /// Which savepoints are kept; older ones are deleted.
    #[serde(default)]
    pub retention: SavepointRetention,

    /// A savepoint the job starts from when it is created (as Flink's
    /// `initialSavepointPath`): the location of one savepoint,
    /// `<location>/<namespace>/<name>/<id>`, taken by a StreamJob of the same namespace and
    /// name (the final savepoint of a deleted one, say). Read once, when the job first
    /// deploys; changing it later does nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024), regex(pattern = messages::SAVEPOINT_LOCATION_PATTERN))]
    pub initial_savepoint: Option<String>,

    /// Take a final savepoint when the StreamJob is deleted: the controller holds the
    /// deletion (a finalizer) until every running worker wrote its part. A job whose
    /// final savepoint cannot be taken stays until the finalizer is removed by hand
    /// (docs/lifecycle.md).
    #[serde(default = "default_true")]
    pub on_delete: bool,

    /// A Secret in the job's namespace whose keys become the workers' environment
    /// variables, for the location's credentials and settings (for `s3://`:
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT`,
    /// `AWS_ALLOW_HTTP`; see docs/savepoints.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretReference>,
}

fn default_true() -> bool {
    true
}

/// Which savepoints are kept.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SavepointRetention {
    /// Keep at most this many savepoints.
    #[serde(default = "default_retention_count")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_count: i32,

    /// Delete savepoints older than this (the newest is always kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<Duration>,
}

impl Default for SavepointRetention {
    fn default() -> Self {
        Self {
            max_count: default_retention_count(),
            max_age: None,
        }
    }
}

fn default_retention_count() -> i32 {
    5
}

/// How a running job moves to a new spec.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum UpgradeMode {
    /// Take a savepoint, stop the workers, start the new spec from the savepoint.
    #[default]
    Savepoint,
    /// Stop the workers and start the new spec from the last checkpoint on their volumes.
    LastState,
    /// Take a savepoint and start the new spec from its Kafka offsets alone, with empty
    /// windows: any pipeline change is accepted.
    Stateless,
}

/// Automatic rollback of a change whose workers do not become Ready.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RollbackSpec {
    /// Whether a change whose workers are not Ready in time is rolled back. A rollback
    /// is automatic only when no worker of the new spec committed anything after the
    /// savepoint (docs/lifecycle.md); the user's manifest is never modified.
    #[serde(default = "default_true")]
    pub enabled: bool,

    /// How long the workers of a new spec may take to be all Ready, from the moment
    /// they start from the savepoint (at least 10s).
    #[serde(default = "default_ready_timeout")]
    pub ready_timeout: Duration,
}

impl Default for RollbackSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            ready_timeout: default_ready_timeout(),
        }
    }
}

fn default_ready_timeout() -> Duration {
    Duration::from_secs(300)
}

/// Automatic scaling of parallelism.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AutoscalerSpec {
    /// Whether the autoscaler may change parallelism.
    #[serde(default)]
    pub enabled: bool,

    /// Never scale below this many workers.
    #[serde(default = "default_parallelism")]
    #[schemars(range(min = 1, max = 32768))]
    pub min_parallelism: i32,

    /// Never scale above this many workers; at most the job's maxParallelism.
    #[schemars(range(min = 1, max = 32768))]
    pub max_parallelism: i32,

    /// Busy share of each worker to aim for, in percent: scale up above it, down well below.
    #[serde(default = "default_target_utilization")]
    #[schemars(range(min = 1, max = 100))]
    pub target_utilization_percent: i32,

    /// Scale so that the current lag would be consumed within this duration.
    #[serde(default = "default_catch_up_duration")]
    pub catch_up_duration: Duration,

    /// Wait this long after the last scaling, and for this long of low load, before
    /// scaling down.
    #[serde(default = "default_scale_down_delay")]
    pub scale_down_delay: Duration,
}

fn default_target_utilization() -> i32 {
    70
}

fn default_catch_up_duration() -> Duration {
    Duration::from_secs(300)
}

fn default_scale_down_delay() -> Duration {
    Duration::from_secs(600)
}

/// The parts of the worker pods a user may set; the controller owns the rest.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodTemplate {
    /// Labels added to the worker pods (the controller's own labels win).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,

    /// Annotations added to the worker pods.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,

    /// Node labels a worker pod's node must have.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,

    /// Taints the worker pods tolerate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,

    /// Scheduling constraints of the worker pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,

    /// ServiceAccount the worker pods run as. Unset: one the controller creates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub service_account_name: Option<String>,

    /// PriorityClass of the worker pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub priority_class_name: Option<String>,
}
