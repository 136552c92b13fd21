//! Messages of the rules that both the API server (through `x-kubernetes-validations` in
//! the CRD) and [`crate::validate()`] enforce, written once so a user reads the same words
//! from `kubectl apply`, from `sluice-worker validate` and in the controller's events.
//! Each names the field and the fix.

/// The longest StreamJob name: the worker pods carry the label
/// `controller-revision-hash: <name>-<10 characters>`, which must fit in 63.
pub const MAX_JOB_NAME_LENGTH: usize = 52;

/// The CEL rule on the StreamJob's root for `metadata.name`: the job's name is also the name
/// of its headless Service (an RFC 1035 label: starting with a letter, no dots) and the stem
/// of its pods' names and labels (at most [`MAX_JOB_NAME_LENGTH`]).
pub const RULE_JOB_NAME: &str =
    "self.metadata.name.size() <= 52 && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')";

/// A StreamJob name the workers cannot take.
pub const JOB_NAME_INVALID: &str = "metadata.name must be at most 52 lowercase letters, digits and '-', starting with a letter and ending with a letter or a digit (as in page-views-v2): the job's Service and worker pods take its name";

/// `spec.parallelism` above `spec.maxParallelism`.
pub const PARALLELISM_ABOVE_MAX: &str = "spec.parallelism must not exceed spec.maxParallelism (the number of key groups): lower parallelism, or raise maxParallelism before the job has state";

/// `spec.maxParallelism` changed on an existing StreamJob.
pub const MAX_PARALLELISM_IMMUTABLE: &str = "spec.maxParallelism is immutable: it fixes how keyed state is split into key groups; create a new StreamJob to change it";

/// `autoscaler.minParallelism` above `autoscaler.maxParallelism`.
pub const AUTOSCALER_MIN_ABOVE_MAX: &str = "spec.autoscaler.minParallelism must not exceed spec.autoscaler.maxParallelism: lower minParallelism or raise maxParallelism";

/// The autoscaler on a job with keyed state and nowhere to put savepoints.
pub const AUTOSCALER_NEEDS_SAVEPOINTS: &str = "spec.savepoints.location is required to autoscale a job with a window: every rescale restores its keyed state from a savepoint; set spec.savepoints.location (file:// or s3://), or disable the autoscaler";

/// The CEL form of [`AUTOSCALER_NEEDS_SAVEPOINTS`] (on the spec).
pub const RULE_AUTOSCALER_NEEDS_SAVEPOINTS: &str = "!has(self.autoscaler) || !has(self.autoscaler.enabled) || !self.autoscaler.enabled || has(self.savepoints) || !self.pipeline.exists(step, has(step.window))";

/// `autoscaler.maxParallelism` above the number of key groups.
pub const AUTOSCALER_MAX_ABOVE_KEY_GROUPS: &str = "spec.autoscaler.maxParallelism must not exceed spec.maxParallelism (the number of key groups): lower the autoscaler's maxParallelism";

/// A pipeline step with zero or several operations.
pub const STEP_EXACTLY_ONE: &str = "each pipeline step must set exactly one of filter, map, keyBy, window or aggregate: split it into one step per operation";

/// A window with zero or several kinds.
pub const WINDOW_EXACTLY_ONE_KIND: &str =
    "a window must set exactly one of tumbling, sliding or session";

/// A sliding window whose slide exceeds its size.
pub const SLIDE_ABOVE_SIZE: &str = "sliding.slide must not exceed sliding.size: events would fall between windows; use a tumbling window or a smaller slide";

/// A sliding window that puts each event in too many windows.
pub const SLIDE_TOO_SMALL: &str = "sliding.size may be at most 1000 times sliding.slide: each event is counted in up to size/slide windows (rounded up); use a larger slide";

/// An aggregation other than count without `of`.
pub const AGGREGATION_NEEDS_OF: &str = "Sum, Min, Max and Avg need 'of', the CEL expression to aggregate (for example of: event.latencyMs); only Count works without it";

/// Output names of map and aggregate.
pub const OUTPUT_NAME_INVALID: &str = "output names must be identifiers (letters, digits and _, not starting with a digit), so later steps can use them as event.<name>";

/// Two keyBy steps.
pub const PIPELINE_ONE_KEY_BY: &str = "spec.pipeline may contain at most one keyBy step";

/// Two window steps.
pub const PIPELINE_ONE_WINDOW: &str = "spec.pipeline may contain at most one window step";

/// A window with no keyBy before it.
pub const PIPELINE_WINDOW_NEEDS_KEY_BY: &str = "a window step must come after a keyBy step: add keyBy before the window, saying what the windows are per";

/// An aggregate not directly after a window.
pub const PIPELINE_AGGREGATE_NEEDS_WINDOW: &str =
    "an aggregate step must come directly after a window step: add a window before it";

/// A window not directly followed by an aggregate.
pub const PIPELINE_WINDOW_NEEDS_AGGREGATE: &str = "a window step must be followed directly by an aggregate step saying what to compute per window";

/// The kind of each step, as a CEL list expression over the pipeline (`self`): 1 keyBy,
/// 2 window, 3 aggregate, 0 anything else. Integers, not strings: the API server's cost
/// estimate of `indexOf` over strings of unknown length exceeds its budget.
macro_rules! step_kinds {
    () => {
        "self.map(step, has(step.keyBy) ? 1 : has(step.window) ? 2 : has(step.aggregate) ? 3 : 0)"
    };
}

/// CEL: a window comes after a keyBy.
pub const RULE_WINDOW_AFTER_KEY_BY: &str = concat!(
    "!self.exists(step, has(step.window)) || (self.exists(step, has(step.keyBy)) && ",
    step_kinds!(),
    ".indexOf(1) < ",
    step_kinds!(),
    ".indexOf(2))"
);

/// CEL: an aggregate comes directly after a window.
pub const RULE_AGGREGATE_AFTER_WINDOW: &str = concat!(
    "!self.exists(step, has(step.aggregate)) || (self.exists(step, has(step.window)) && ",
    step_kinds!(),
    ".indexOf(3) == ",
    step_kinds!(),
    ".indexOf(2) + 1)"
);

/// CEL: a window is directly followed by an aggregate.
pub const RULE_WINDOW_BEFORE_AGGREGATE: &str = concat!(
    "!self.exists(step, has(step.window)) || ",
    step_kinds!(),
    ".lastIndexOf(3) == ",
    step_kinds!(),
    ".indexOf(2) + 1"
);

/// What a savepoint location must look like (also the CRD's `pattern`).
/// (`file:///` and a path that is not only slashes, or `s3://` and a bucket: the only
/// locations workers read and write, `Url::parse` in the worker.)
pub const SAVEPOINT_LOCATION_PATTERN: &str = r"^(file:///.*[^/].*|s3://[^/].*)$";

/// A savepoint location that is not a URL Sluice writes to.
pub const SAVEPOINT_LOCATION_INVALID: &str = "must be a URL of a mounted path (file:///savepoints, three slashes) or of an S3 bucket (s3://bucket/prefix): the locations workers write to";

/// CEL: an int-or-string value is a Kubernetes quantity.
pub const RULE_IS_QUANTITY: &str = "isQuantity(string(self))";

/// A quantity (`volumeSize`, `resources`) that does not parse.
pub const QUANTITY_INVALID: &str = "must be a Kubernetes quantity such as 500m, 2, 1.5Gi or 10Gi: a number, then optionally a suffix (m, k, M, G, T, Ki, Mi, Gi, Ti, or e and an exponent)";

/// `bootstrap.servers` in `spec.kafka.properties`.
pub const KAFKA_BOOTSTRAP_PROPERTY: &str = "is taken from spec.kafka.bootstrapServers, which every worker and the autoscaler use: set the brokers there and remove this property";

/// The shortest `spec.savepoints.interval`.
pub const SAVEPOINT_INTERVAL_MIN_SECONDS: u64 = 10;

/// A `spec.savepoints.interval` below [`SAVEPOINT_INTERVAL_MIN_SECONDS`].
pub const SAVEPOINT_INTERVAL_TOO_SHORT: &str = "must be at least 10s: each periodic savepoint pauses the workers while they write it; for recovery from a crash the workers' checkpoints (spec.state.checkpointInterval) are what count";

/// The shortest `spec.rollback.readyTimeout`.
pub const READY_TIMEOUT_MIN_SECONDS: u64 = 10;

/// A `spec.rollback.readyTimeout` below [`READY_TIMEOUT_MIN_SECONDS`].
pub const READY_TIMEOUT_TOO_SHORT: &str = "must be at least 10s: workers need that long to start and restore; a shorter timeout would roll back changes that are fine (set spec.rollback.enabled: false to never roll back)";

/// A Kafka client property the worker sets itself.
pub const KAFKA_PROPERTY_OWNED: &str = "is set by the worker itself for exactly-once processing (it owns bootstrap.servers, group.id, transactional.id, enable.idempotence, isolation.level, enable.auto.commit, enable.auto.offset.store, auto.offset.reset and transaction.timeout.ms): remove it";
