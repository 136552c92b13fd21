//! What the API server cannot check, and everything it can, for places with no API server.
//!
//! The CRD's OpenAPI schema and CEL rules reject most bad manifests at `kubectl apply`.
//! [`validate`] repeats those rules (with the same messages, from [`crate::messages`]) and
//! adds what needs a real CEL parser: every expression of the pipeline parses, uses only
//! the variable `event`, and reads only fields that the step before it produces. The
//! controller runs it before building anything, and `sluice-worker validate` runs it on
//! files, so a GitOps pre-commit check gives the same answer as the cluster.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::num::NonZeroU16;

use cel::common::ast::{EntryExpr, Expr, IdedExpr, LiteralValue};

use crate::messages;
use crate::pipeline::{
    AggregateFunction, AggregateOutput, Aggregation, CheckedPipeline, Expression, KeyedPipeline,
    MAX_WINDOWS_PER_EVENT, PipelineStep, StatelessStep, Window, WindowKind, WindowSpec,
    WindowedAggregate,
};
use crate::streamjob::{EventTime, Partitioning, StartPosition, StreamJobSpec};
use types::CelType;

/// The variable an expression reads the event from.
pub const EVENT_VARIABLE: &str = "event";

/// The fields of a result that an aggregate step adds besides its named outputs.
pub const RESULT_FIELDS: [&str; 4] = ["key", "windowStart", "windowEnd", "isUpdate"];

/// Identifiers that name CEL types, as in `type(event.count) == int`.
const CEL_TYPE_NAMES: [&str; 10] = [
    "bool",
    "bytes",
    "double",
    "int",
    "list",
    "map",
    "null_type",
    "string",
    "type",
    "uint",
];

/// The most steps a pipeline may have (also in the CRD).
pub const MAX_PIPELINE_STEPS: usize = 32;

/// One problem with a manifest: the field, and what is wrong with it and how to fix it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// Path of the field, for example `spec.pipeline[2].filter`.
    pub field: String,
    /// What is wrong, and the fix.
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}: {}", self.field, self.message)
    }
}

/// Every problem found in a manifest (never empty).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ValidationErrors {
    /// The problems, in the order of the fields.
    pub errors: Vec<FieldError>,
}

impl fmt::Display for ValidationErrors {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "invalid StreamJob:")?;
        for error in &self.errors {
            write!(formatter, "\n  {error}")?;
        }
        Ok(())
    }
}

/// A spec that passed [`validate`], in typed form: what the worker runs and the
/// controller deploys. Built only by [`validate`], so every rule it checked holds.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct CheckedJob {
    /// The spec as written (Kafka settings, state, resources: what the controller deploys).
    pub spec: StreamJobSpec,
    /// Where events come from.
    pub source: CheckedSource,
    /// The pipeline, checked.
    pub pipeline: CheckedPipeline,
    /// Where results go.
    pub sink: CheckedSink,
    /// The number of key groups (`spec.maxParallelism`).
    pub key_groups: NonZeroU16,
}

/// The source of a checked job.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CheckedSource {
    /// The topics, distinct, each a valid Kafka topic name.
    pub topics: Vec<String>,
    /// Whether events of one key may be on any partition (the worker repartitions) or
    /// the topics are already partitioned by the key.
    pub partitioning: Partitioning,
    /// Where a job with no state starts reading.
    pub start_from: StartPosition,
    /// The event-time field and its format.
    pub event_time: EventTime,
    /// How far behind the greatest event time of a partition its watermark stays.
    pub max_out_of_orderness: std::time::Duration,
    /// When a silent partition stops holding the watermark back.
    pub idle_timeout: Option<std::time::Duration>,
}

/// The sink of a checked job.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CheckedSink {
    /// The results topic.
    pub topic: String,
    /// The record key expression over each result.
    pub key: Option<Expression>,
    /// Where dead letters go (`None`: counted and dropped).
    pub dead_letter_topic: Option<String>,
    /// Where late events go (`None`: counted and dropped).
    pub late_data_topic: Option<String>,
}

pub use crate::manifest::{ManifestError, load_manifest};
pub use quantity::is_quantity;

/// Checks that a StreamJob named `name` can name its workers (the CRD's rule on
/// `metadata.name`, [`messages::RULE_JOB_NAME`]); the controller checks it too, for jobs
/// created before the CRD had the rule.
pub fn validate_name(name: &str) -> Result<(), FieldError> {
    if metadata::names_workers(name) {
        Ok(())
    } else {
        Err(FieldError {
            field: "metadata.name".to_string(),
            message: format!("{name:?}: {}", messages::JOB_NAME_INVALID),
        })
    }
}

/// Checks that `spec.savepoints.initialSavepoint` names a savepoint of this job (its
/// location ends in `/<namespace>/<name>/<id>`): a worker restores only its own job's
/// savepoints, as their Kafka offsets include the job's repartition topic. With no
/// namespace (a manifest file that does not say it), only the name is checked.
pub fn validate_initial_savepoint(
    location: &str,
    namespace: Option<&str>,
    name: &str,
) -> Result<(), FieldError> {
    let mut segments = location.trim_end_matches('/').rsplit('/');
    let id = segments.next().unwrap_or_default();
    let (job, job_namespace) = (segments.next(), segments.next());
    let namespace_matches = namespace.is_none_or(|namespace| job_namespace == Some(namespace));
    if !id.is_empty() && job == Some(name) && job_namespace.is_some() && namespace_matches {
        return Ok(());
    }
    let namespace = namespace.unwrap_or("<namespace>");
    Err(FieldError {
        field: "spec.savepoints.initialSavepoint".to_string(),
        message: format!(
            "{location:?} is not a savepoint of StreamJob {namespace}/{name}: a job starts only from its own savepoints, whose locations end in /{namespace}/{name}/<id> (the final savepoint of a deleted job of this name, say); `sluice-worker savepoint list <location>/{namespace}/{name}` lists them"
        ),
    })
}

/// The problem of a job's `spec.savepoints.initialSavepoint`, if any (see
/// [`validate_initial_savepoint`]).
pub fn initial_savepoint_problem(job: &crate::StreamJob) -> Option<FieldError> {
    let initial = job.spec.savepoints.as_ref()?.initial_savepoint.as_deref()?;
    let name = job.metadata.name.as_deref().unwrap_or_default();
    validate_initial_savepoint(initial, job.metadata.namespace.as_deref(), name).err()
}

/// Checks a spec: the rules of the CRD and the pipeline's CEL expressions.
pub fn validate(spec: &StreamJobSpec) -> Result<CheckedJob, ValidationErrors> {
    let mut errors = Errors::default();
    // The CRD's schema, on the spec as typed (defaults filled in).
    let mut value = serde_json::to_value(spec).expect("a spec serializes");
    schema::check(
        &mut value,
        &schema::root()["properties"]["spec"],
        "spec",
        &mut errors.0,
    );
    let schema_errors = errors.0.len();
    check_parallelism(spec, &mut errors);
    check_connections(spec, &mut errors);
    check_savepoints(spec, &mut errors);
    let (steps, fields_after_pipeline) = check_pipeline(&spec.pipeline, &mut errors);
    let sink_key = spec.sink.key.as_deref().and_then(|source| {
        check_expression(
            source,
            "spec.sink.key",
            fields_after_pipeline.as_ref(),
            Expected::Anything,
            &mut errors,
        )
    });
    // Where a check of its own reports a field, it says more than the schema's bound.
    let (from_schema, own) = errors.0.split_at(schema_errors);
    let mut merged: Vec<FieldError> = from_schema
        .iter()
        .filter(|error| !own.iter().any(|other| other.field == error.field))
        .cloned()
        .collect();
    merged.extend_from_slice(own);
    errors.0 = merged;
    let key_groups = u16::try_from(spec.max_parallelism)
        .ok()
        .and_then(NonZeroU16::new);
    match (errors.0.is_empty(), key_groups) {
        (true, Some(key_groups)) => Ok(CheckedJob {
            spec: spec.clone(),
            source: CheckedSource {
                topics: spec.source.topics.clone(),
                partitioning: spec.source.partitioning,
                start_from: spec.source.start_from,
                event_time: spec.source.event_time.clone(),
                max_out_of_orderness: spec.source.watermark.max_out_of_orderness.get(),
                idle_timeout: spec
                    .source
                    .watermark
                    .idle_timeout
                    .map(|timeout| timeout.get()),
            },
            pipeline: typed_pipeline(steps),
            sink: CheckedSink {
                topic: spec.sink.topic.clone(),
                key: sink_key,
                dead_letter_topic: spec.sink.dead_letter_topic.clone(),
                late_data_topic: spec.sink.late_data_topic.clone(),
            },
            key_groups,
        }),
        _ => Err(ValidationErrors { errors: errors.0 }),
    }
}

/// A checked step, in the order written (before the order rules give it its shape).
enum Step {
    Filter(Expression),
    Map(Vec<(String, Expression)>),
    KeyBy(Expression),
    Window(Window),
    Aggregate(Vec<AggregateOutput>),
}

/// Gives steps that passed the order rules (at most one keyBy; a window after it,
/// directly followed by its aggregate) their typed shape.
fn typed_pipeline(steps: Vec<Step>) -> CheckedPipeline {
    let mut pipeline = CheckedPipeline {
        before_key: Vec::new(),
        keyed: None,
    };
    let mut pending_window = None;
    for step in steps {
        let stateless = match step {
            Step::Filter(expression) => StatelessStep::Filter(expression),
            Step::Map(outputs) => StatelessStep::Map(outputs),
            Step::KeyBy(key) => {
                pipeline.keyed = Some(KeyedPipeline {
                    key,
                    before_window: Vec::new(),
                    window: None,
                });
                continue;
            }
            Step::Window(window) => {
                pending_window = Some(window);
                continue;
            }
            Step::Aggregate(aggregates) => {
                if let (Some(keyed), Some(window)) = (&mut pipeline.keyed, pending_window.take()) {
                    keyed.window = Some(WindowedAggregate {
                        window,
                        aggregates,
                        after_window: Vec::new(),
                    });
                }
                continue;
            }
        };
        match &mut pipeline.keyed {
            None => pipeline.before_key.push(stateless),
            Some(KeyedPipeline {
                window: Some(windowed),
                ..
            }) => windowed.after_window.push(stateless),
            Some(keyed) => keyed.before_window.push(stateless),
        }
    }
    pipeline
}

#[derive(Default)]
struct Errors(Vec<FieldError>);

impl Errors {
    fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            field: field.into(),
            message: message.into(),
        });
    }
}

/// The CRD's rules across fields (ranges are the schema's).
fn check_parallelism(spec: &StreamJobSpec, errors: &mut Errors) {
    if spec.parallelism > spec.max_parallelism {
        errors.add("spec.parallelism", messages::PARALLELISM_ABOVE_MAX);
    }
    if let Some(autoscaler) = &spec.autoscaler {
        if autoscaler.min_parallelism > autoscaler.max_parallelism {
            errors.add(
                "spec.autoscaler.minParallelism",
                messages::AUTOSCALER_MIN_ABOVE_MAX,
            );
        }
        if autoscaler.max_parallelism > spec.max_parallelism {
            errors.add(
                "spec.autoscaler.maxParallelism",
                messages::AUTOSCALER_MAX_ABOVE_KEY_GROUPS,
            );
        }
        if autoscaler.enabled
            && spec.savepoints.is_none()
            && spec.pipeline.iter().any(|step| step.window.is_some())
        {
            errors.add(
                "spec.savepoints.location",
                messages::AUTOSCALER_NEEDS_SAVEPOINTS,
            );
        }
    }
}

fn check_savepoints(spec: &StreamJobSpec, errors: &mut Errors) {
    if let Some(interval) = spec
        .savepoints
        .as_ref()
        .and_then(|savepoints| savepoints.interval)
        && interval.get() < std::time::Duration::from_secs(messages::SAVEPOINT_INTERVAL_MIN_SECONDS)
    {
        errors.add(
            "spec.savepoints.interval",
            messages::SAVEPOINT_INTERVAL_TOO_SHORT,
        );
    }
    if let Some(rollback) = &spec.rollback
        && rollback.ready_timeout.get()
            < std::time::Duration::from_secs(messages::READY_TIMEOUT_MIN_SECONDS)
    {
        errors.add(
            "spec.rollback.readyTimeout",
            messages::READY_TIMEOUT_TOO_SHORT,
        );
    }
}

fn check_connections(spec: &StreamJobSpec, errors: &mut Errors) {
    if let Some(problem) = crate::kafka::bootstrap_servers_problem(&spec.kafka.bootstrap_servers) {
        errors.add("spec.kafka.bootstrapServers", problem);
    }
    for name in spec.kafka.properties.keys() {
        if name == "bootstrap.servers" {
            errors.add(
                format!("spec.kafka.properties.{name}"),
                messages::KAFKA_BOOTSTRAP_PROPERTY,
            );
        } else if crate::kafka::OWNED_PROPERTIES.contains(&name.as_str()) {
            errors.add(
                format!("spec.kafka.properties.{name}"),
                messages::KAFKA_PROPERTY_OWNED,
            );
        }
    }
    if spec.source.topics.is_empty() {
        errors.add("spec.source.topics", "must name at least one topic to read");
    }
    for (index, topic) in spec.source.topics.iter().enumerate() {
        let field = format!("spec.source.topics[{index}]");
        check_topic_name(topic, &field, errors);
        if spec.source.topics[..index].contains(topic) {
            errors.add(
                field,
                format!("{topic:?} is listed twice: name each topic once"),
            );
        }
    }
    if spec.source.event_time.field.trim().is_empty() {
        errors.add(
            "spec.source.eventTime.field",
            "must name the event field that holds the event time, for example timestamp",
        );
    }
    let sink = &spec.sink;
    check_topic_name(&sink.topic, "spec.sink.topic", errors);
    for (field, topic) in [
        ("spec.sink.deadLetterTopic", &sink.dead_letter_topic),
        ("spec.sink.lateDataTopic", &sink.late_data_topic),
    ] {
        let Some(topic) = topic else { continue };
        check_topic_name(topic, field, errors);
        if *topic == sink.topic {
            errors.add(
                field,
                "must differ from spec.sink.topic, so results and rejected events stay apart",
            );
        }
        if spec.source.topics.contains(topic) {
            errors.add(
                field,
                "must not be one of spec.source.topics, or rejected events would be read again",
            );
        }
    }
    if spec.source.topics.contains(&sink.topic) {
        errors.add(
            "spec.sink.topic",
            "must not be one of spec.source.topics, or results would be read again as input",
        );
    }
    // The CRD's isQuantity rules (its schema bounds their length).
    let quantities = spec
        .resources
        .iter()
        .flat_map(|resources| {
            [
                ("limits", &resources.limits),
                ("requests", &resources.requests),
            ]
            .into_iter()
            .flat_map(|(kind, values)| {
                values.iter().flatten().map(move |(name, quantity)| {
                    (format!("spec.resources.{kind}.{name}"), &quantity.0)
                })
            })
        })
        .chain([(
            "spec.state.volumeSize".to_string(),
            &spec.state.volume_size.0,
        )]);
    for (field, quantity) in quantities {
        if quantity.chars().count() as u64 <= crate::streamjob::MAX_QUANTITY_LENGTH
            && !quantity::is_quantity(quantity)
        {
            errors.add(
                field,
                format!("{quantity:?} {}", messages::QUANTITY_INVALID),
            );
        }
    }
}

/// Kafka's own rule for topic names.
fn check_topic_name(topic: &str, field: &str, errors: &mut Errors) {
    if let Some(problem) = crate::kafka::topic_name_problem(topic) {
        errors.add(field, problem);
    }
}

/// The fields an event has after a step: `None` while it is the decoded input, whose
/// fields are not known in advance.
type KnownFields = Option<BTreeSet<String>>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StepKind {
    Filter,
    Map,
    KeyBy,
    Window,
    Aggregate,
}

fn step_kind(step: &PipelineStep) -> Result<StepKind, usize> {
    let kinds = [
        (step.filter.is_some(), StepKind::Filter),
        (step.map.is_some(), StepKind::Map),
        (step.key_by.is_some(), StepKind::KeyBy),
        (step.window.is_some(), StepKind::Window),
        (step.aggregate.is_some(), StepKind::Aggregate),
    ];
    let set: Vec<StepKind> = kinds
        .iter()
        .filter(|(present, _)| *present)
        .map(|(_, kind)| *kind)
        .collect();
    match set.as_slice() {
        [kind] => Ok(*kind),
        other => Err(other.len()),
    }
}

fn check_pipeline(pipeline: &[PipelineStep], errors: &mut Errors) -> (Vec<Step>, KnownFields) {
    if pipeline.is_empty() {
        errors.add(
            "spec.pipeline",
            "must have at least one step, for example - filter: \"true\"",
        );
    }
    if pipeline.len() > MAX_PIPELINE_STEPS {
        errors.add(
            "spec.pipeline",
            format!(
                "may have at most {MAX_PIPELINE_STEPS} steps, has {}",
                pipeline.len()
            ),
        );
    }
    let mut kinds = Vec::new();
    for (index, step) in pipeline.iter().enumerate() {
        match step_kind(step) {
            Ok(kind) => kinds.push(Some(kind)),
            Err(_) => {
                errors.add(
                    format!("spec.pipeline[{index}]"),
                    messages::STEP_EXACTLY_ONE,
                );
                kinds.push(None);
            }
        }
    }
    check_step_order(&kinds, errors);

    let mut steps = Vec::new();
    let mut fields: KnownFields = None;
    for (index, step) in pipeline.iter().enumerate() {
        let path = format!("spec.pipeline[{index}]");
        if let Some(source) = &step.filter {
            if let Some(expression) = check_expression(
                source,
                &format!("{path}.filter"),
                fields.as_ref(),
                Expected::Bool,
                errors,
            ) {
                steps.push(Step::Filter(expression));
            }
        } else if let Some(outputs) = &step.map {
            steps.push(Step::Map(check_map(
                outputs,
                &path,
                fields.as_ref(),
                errors,
            )));
            fields = Some(outputs.keys().cloned().collect());
        } else if let Some(source) = &step.key_by {
            if let Some(expression) = check_expression(
                source,
                &format!("{path}.keyBy"),
                fields.as_ref(),
                Expected::Key,
                errors,
            ) {
                steps.push(Step::KeyBy(expression));
            }
        } else if let Some(window) = &step.window {
            if let Some(window) = check_window(window, &format!("{path}.window"), errors) {
                steps.push(Step::Window(window));
            }
        } else if let Some(aggregations) = &step.aggregate {
            steps.push(Step::Aggregate(check_aggregate(
                aggregations,
                &path,
                fields.as_ref(),
                errors,
            )));
            let mut result_fields: BTreeSet<String> =
                RESULT_FIELDS.iter().map(|name| name.to_string()).collect();
            result_fields.extend(aggregations.keys().cloned());
            fields = Some(result_fields);
        }
    }
    (steps, fields)
}

/// The ordering rules of the CRD, on the step kinds (a step with no single kind is `None`).
fn check_step_order(kinds: &[Option<StepKind>], errors: &mut Errors) {
    let positions = |wanted: StepKind| -> Vec<usize> {
        kinds
            .iter()
            .enumerate()
            .filter(|(_, kind)| **kind == Some(wanted))
            .map(|(index, _)| index)
            .collect()
    };
    let key_bys = positions(StepKind::KeyBy);
    let windows = positions(StepKind::Window);
    let aggregates = positions(StepKind::Aggregate);
    if key_bys.len() > 1 {
        errors.add(
            format!("spec.pipeline[{}]", key_bys[1]),
            messages::PIPELINE_ONE_KEY_BY,
        );
    }
    if windows.len() > 1 {
        errors.add(
            format!("spec.pipeline[{}]", windows[1]),
            messages::PIPELINE_ONE_WINDOW,
        );
    }
    if let Some(&window) = windows.first() {
        if key_bys.first().is_none_or(|&key_by| key_by > window) {
            errors.add(
                format!("spec.pipeline[{window}]"),
                messages::PIPELINE_WINDOW_NEEDS_KEY_BY,
            );
        }
        if kinds.get(window + 1) != Some(&Some(StepKind::Aggregate)) {
            errors.add(
                format!("spec.pipeline[{window}]"),
                messages::PIPELINE_WINDOW_NEEDS_AGGREGATE,
            );
        }
    }
    for &aggregate in &aggregates {
        let after_window = aggregate > 0 && kinds[aggregate - 1] == Some(StepKind::Window);
        if !after_window {
            errors.add(
                format!("spec.pipeline[{aggregate}]"),
                messages::PIPELINE_AGGREGATE_NEEDS_WINDOW,
            );
        }
    }
}

fn is_identifier(name: &str) -> bool {
    let mut characters = name.chars();
    characters
        .next()
        .is_some_and(|first| first.is_ascii_alphabetic() || first == '_')
        && characters.all(|character| character.is_ascii_alphanumeric() || character == '_')
}

fn check_map(
    outputs: &BTreeMap<String, String>,
    path: &str,
    fields: Option<&BTreeSet<String>>,
    errors: &mut Errors,
) -> Vec<(String, Expression)> {
    if outputs.is_empty() {
        errors.add(
            format!("{path}.map"),
            "must name at least one output field, for example page: event.url",
        );
    }
    let mut checked = Vec::new();
    for (name, source) in outputs {
        let field = format!("{path}.map.{name}");
        if !is_identifier(name) {
            errors.add(&field, messages::OUTPUT_NAME_INVALID);
        }
        if let Some(expression) =
            check_expression(source, &field, fields, Expected::Anything, errors)
        {
            checked.push((name.clone(), expression));
        }
    }
    checked
}

fn check_window(window: &WindowSpec, path: &str, errors: &mut Errors) -> Option<Window> {
    let kinds = [
        window
            .tumbling
            .as_ref()
            .map(|tumbling| WindowKind::Tumbling {
                size: tumbling.size.get(),
            }),
        window.sliding.as_ref().map(|sliding| WindowKind::Sliding {
            size: sliding.size.get(),
            slide: sliding.slide.get(),
        }),
        window.session.as_ref().map(|session| WindowKind::Session {
            gap: session.gap.get(),
        }),
    ];
    let set: Vec<WindowKind> = kinds.into_iter().flatten().collect();
    let [kind] = set.as_slice() else {
        errors.add(path, messages::WINDOW_EXACTLY_ONE_KIND);
        return None;
    };
    if let WindowKind::Sliding { size, slide } = kind
        && slide > size
    {
        errors.add(format!("{path}.sliding.slide"), messages::SLIDE_ABOVE_SIZE);
        return None;
    }
    if let WindowKind::Sliding { size, slide } = kind
        && size.as_millis() > slide.as_millis() * MAX_WINDOWS_PER_EVENT
    {
        errors.add(format!("{path}.sliding.slide"), messages::SLIDE_TOO_SMALL);
        return None;
    }
    Some(Window {
        kind: *kind,
        allowed_lateness: window
            .allowed_lateness
            .map(|lateness| lateness.get())
            .unwrap_or_default(),
    })
}

fn check_aggregate(
    aggregations: &BTreeMap<String, Aggregation>,
    path: &str,
    fields: Option<&BTreeSet<String>>,
    errors: &mut Errors,
) -> Vec<AggregateOutput> {
    if aggregations.is_empty() {
        errors.add(
            format!("{path}.aggregate"),
            "must name at least one result, for example count: {function: Count}",
        );
    }
    let mut checked = Vec::new();
    for (name, aggregation) in aggregations {
        let field = format!("{path}.aggregate.{name}");
        if !is_identifier(name) {
            errors.add(&field, messages::OUTPUT_NAME_INVALID);
        }
        if RESULT_FIELDS.contains(&name.as_str()) {
            errors.add(
                &field,
                format!(
                    "{name:?} is a field every result has ({}): choose another name",
                    RESULT_FIELDS.join(", ")
                ),
            );
        }
        let of = match (&aggregation.of, aggregation.function) {
            (None, AggregateFunction::Count) => None,
            (None, _) => {
                errors.add(&field, messages::AGGREGATION_NEEDS_OF);
                continue;
            }
            (Some(source), _) => {
                match check_expression(
                    source,
                    &format!("{field}.of"),
                    fields,
                    Expected::Number,
                    errors,
                ) {
                    Some(expression) => Some(expression),
                    None => continue,
                }
            }
        };
        checked.push(AggregateOutput {
            name: name.clone(),
            function: aggregation.function,
            of,
        });
    }
    checked
}

/// What a step needs its expression to give.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expected {
    /// Any value (a `map` output, the sink key).
    Anything,
    /// A bool (a `filter`).
    Bool,
    /// A string, an integer or a bool (a `keyBy`).
    Key,
    /// A number (an aggregate's `of`).
    Number,
}

/// Parses a CEL expression, checks what it reads (only `event`, and variables bound by
/// macros such as `exists`; once a `map` or `aggregate` fixed the event's fields, only
/// those fields) and type-checks it: every operator and function must accept its
/// operands (event fields count as any type), and the result must be what the step
/// needs.
fn check_expression(
    source: &str,
    field: &str,
    known_fields: Option<&BTreeSet<String>>,
    expected: Expected,
    errors: &mut Errors,
) -> Option<Expression> {
    let program = match crate::expression::parse(source) {
        Ok(program) => program,
        Err(problem) => {
            errors.add(field, problem.to_string());
            return None;
        }
    };
    let mut usage = Usage::default();
    usage.visit(program.expression(), &mut Vec::new());
    let mut failed = false;
    for variable in &usage.unknown_variables {
        errors.add(
            field,
            format!(
                "the CEL expression {source:?} uses the unknown variable {variable:?}: expressions see one variable, event (for example event.{variable})"
            ),
        );
        failed = true;
    }
    if let (Some(known), Some(read)) = (known_fields, &usage.event_fields) {
        for missing in read.difference(known) {
            let available: Vec<&str> = known.iter().map(String::as_str).collect();
            errors.add(
                field,
                format!(
                    "the CEL expression {source:?} reads event.{missing}, but the step before produces only {}: use one of them or add {missing} to that step",
                    available.join(", ")
                ),
            );
            failed = true;
        }
    }
    for pattern in regex_literals(program.expression()) {
        if let Err(problem) = regex::Regex::new(pattern) {
            let detail = problem.to_string().replace('\n', " ");
            errors.add(
                field,
                format!(
                    "the CEL expression {source:?} matches against {pattern:?}, which is not a regular expression (RE2 syntax): {detail}"
                ),
            );
            failed = true;
        }
    }
    if failed {
        return None;
    }
    let result = match types::infer(program.expression(), &mut Vec::new()) {
        Ok(result) => result,
        Err(problem) => {
            errors.add(
                field,
                format!("the CEL expression {source:?} cannot be evaluated: it {problem}"),
            );
            return None;
        }
    };
    let fits = match expected {
        Expected::Anything => true,
        Expected::Bool => matches!(result, CelType::Bool | CelType::Dyn),
        Expected::Key => matches!(
            result,
            CelType::String | CelType::Int | CelType::Uint | CelType::Bool | CelType::Dyn
        ),
        Expected::Number => matches!(
            result,
            CelType::Int | CelType::Uint | CelType::Double | CelType::Dyn
        ),
    };
    if !fits {
        let need = match expected {
            Expected::Bool => {
                "a filter must give a bool (true keeps the event): compare the value, for example with == or >"
            }
            Expected::Key => {
                "a key must be a string, an integer or a bool: convert it, for example with string()"
            }
            _ => "an aggregate needs a number: convert it, for example with int() or double()",
        };
        errors.add(
            field,
            format!(
                "the CEL expression {source:?} gives {} {}, but {need}",
                if result == CelType::Int { "an" } else { "a" },
                result.name()
            ),
        );
        return None;
    }
    Some(Expression {
        source: source.to_string(),
        event_fields: usage.event_fields,
    })
}

/// The literal patterns of the expression's `matches` calls.
fn regex_literals(expression: &IdedExpr) -> Vec<&str> {
    let mut patterns = Vec::new();
    let mut pending = vec![expression];
    while let Some(node) = pending.pop() {
        match &node.expr {
            Expr::Call(call) => {
                if call.func_name == "matches"
                    && let Some(IdedExpr {
                        expr: Expr::Literal(LiteralValue::String(pattern)),
                        ..
                    }) = call.args.last()
                {
                    patterns.push(pattern.inner());
                }
                pending.extend(call.target.as_deref());
                pending.extend(&call.args);
            }
            Expr::Select(select) => pending.push(&select.operand),
            Expr::List(list) => pending.extend(&list.elements),
            Expr::Map(map) => {
                for entry in &map.entries {
                    if let EntryExpr::MapEntry(entry) = &entry.expr {
                        pending.push(&entry.key);
                        pending.push(&entry.value);
                    }
                }
            }
            Expr::Comprehension(comprehension) => pending.extend([
                &comprehension.iter_range,
                &comprehension.accu_init,
                &comprehension.loop_cond,
                &comprehension.loop_step,
                &comprehension.result,
            ]),
            Expr::Unspecified | Expr::Ident(_) | Expr::Literal(_) | Expr::Struct(_) => {}
        }
    }
    patterns
}

/// What an expression reads.
struct Usage {
    /// Top-level event fields selected; `None` once the whole event is used.
    event_fields: Option<BTreeSet<String>>,
    unknown_variables: BTreeSet<String>,
}

impl Default for Usage {
    fn default() -> Self {
        Self {
            event_fields: Some(BTreeSet::new()),
            unknown_variables: BTreeSet::new(),
        }
    }
}

impl Usage {
    fn visit(&mut self, expression: &IdedExpr, bound: &mut Vec<String>) {
        match &expression.expr {
            Expr::Unspecified | Expr::Literal(_) => {}
            Expr::Ident(name) => self.identifier(name, bound),
            Expr::Select(select) => match &select.operand.expr {
                Expr::Ident(name) if name == EVENT_VARIABLE && !bound.contains(name) => {
                    self.event_field(&select.field);
                }
                _ => self.visit(&select.operand, bound),
            },
            Expr::Call(call) => {
                // event['field'] reads one field, like event.field.
                if call.func_name == "_[_]"
                    && let [
                        target,
                        IdedExpr {
                            expr: Expr::Literal(LiteralValue::String(key)),
                            ..
                        },
                    ] = call.args.as_slice()
                    && matches!(&target.expr, Expr::Ident(name) if name == EVENT_VARIABLE && !bound.contains(name))
                {
                    self.event_field(key);
                    return;
                }
                if let Some(target) = &call.target {
                    self.visit(target, bound);
                }
                for argument in &call.args {
                    self.visit(argument, bound);
                }
            }
            Expr::List(list) => {
                for element in &list.elements {
                    self.visit(element, bound);
                }
            }
            Expr::Map(map) => {
                for entry in &map.entries {
                    match &entry.expr {
                        EntryExpr::MapEntry(map_entry) => {
                            self.visit(&map_entry.key, bound);
                            self.visit(&map_entry.value, bound);
                        }
                        EntryExpr::StructField(struct_field) => {
                            self.visit(&struct_field.value, bound);
                        }
                    }
                }
            }
            Expr::Struct(structure) => {
                for entry in &structure.entries {
                    if let EntryExpr::StructField(struct_field) = &entry.expr {
                        self.visit(&struct_field.value, bound);
                    }
                }
            }
            Expr::Comprehension(comprehension) => {
                self.visit(&comprehension.iter_range, bound);
                self.visit(&comprehension.accu_init, bound);
                let before = bound.len();
                bound.push(comprehension.iter_var.clone());
                if let Some(second) = &comprehension.iter_var2 {
                    bound.push(second.clone());
                }
                bound.push(comprehension.accu_var.clone());
                self.visit(&comprehension.loop_cond, bound);
                self.visit(&comprehension.loop_step, bound);
                self.visit(&comprehension.result, bound);
                bound.truncate(before);
            }
        }
    }

    fn identifier(&mut self, name: &str, bound: &[String]) {
        if bound.iter().any(|variable| variable == name)
            || name.starts_with('@')
            || CEL_TYPE_NAMES.contains(&name)
        {
            return;
        }
        if name == EVENT_VARIABLE {
            self.event_fields = None;
        } else {
            self.unknown_variables.insert(name.to_string());
        }
    }

    fn event_field(&mut self, field: &str) {
        if let Some(fields) = &mut self.event_fields {
            fields.insert(field.to_string());
        }
    }
}

pub(crate) mod metadata;
mod quantity;
pub(crate) mod schema;
#[cfg(test)]
mod tests;
mod types;
