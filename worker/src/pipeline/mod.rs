//! The pipeline, compiled once from a checked StreamJob: stateless stages (filter, map,
//! keyBy) before the window, the keyed window operator with its aggregates, stateless
//! stages on the results, and the sink key.

pub mod aggregate;
pub mod expression;
pub mod value;
pub mod window_operator;

use serde_json::{Map, Value};
use sluice_crds::CheckedJob;
use sluice_crds::pipeline::{AggregateFunction, Step};

use crate::dead_letter::{DeadLetterReason, Failure};
use crate::time::event_time::{EventTimeField, describe};
use crate::time::window::WindowAssigner;
use crate::time::{Millis, duration_millis};
use aggregate::Number128;
use expression::{CompileError, CompiledExpression};

/// An event on its way through the pipeline.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// Its fields: the decoded record, or the output of the latest map.
    pub fields: Map<String, Value>,
    /// Its event time, carried as metadata (a map need not keep the field).
    pub time: Millis,
    /// Its key once a keyBy ran: the canonical bytes (compact JSON).
    pub key: Option<Vec<u8>>,
}

/// A stateless stage.
#[derive(Debug)]
pub enum Stage {
    /// Keep events for which it is true.
    Filter(CompiledExpression),
    /// Replace the fields.
    Map(Vec<(String, CompiledExpression)>),
    /// Set the key.
    KeyBy(CompiledExpression),
}

/// What a run of stages did with an event.
#[derive(Debug, PartialEq, Eq)]
pub enum StageOutcome {
    /// It went through every stage.
    Passed,
    /// A filter dropped it.
    Dropped,
    /// A stage failed: dead letter.
    Failed(Failure),
}

/// One output of the aggregate step.
#[derive(Debug)]
pub struct CompiledAggregate {
    /// Its name in results.
    pub name: String,
    /// The function.
    pub function: AggregateFunction,
    /// Its input (`None` for count).
    pub of: Option<CompiledExpression>,
}

/// The window and aggregate steps.
#[derive(Debug)]
pub struct CompiledWindow {
    /// How events are assigned to windows.
    pub assigner: WindowAssigner,
    /// How long after its end a window keeps its state.
    pub allowed_lateness: Millis,
    /// The aggregate outputs, in order.
    pub outputs: Vec<CompiledAggregate>,
}

/// A pipeline ready to run.
#[derive(Debug)]
pub struct CompiledPipeline {
    /// Where the event time is.
    pub event_time: EventTimeField,
    /// Watermark lag behind the greatest event time.
    pub max_out_of_orderness: Millis,
    /// When an idle partition stops holding the watermark back.
    pub idle_timeout: Option<Millis>,
    /// Number of key groups.
    pub max_parallelism: u32,
    /// Stages before the window (all of them when there is no window).
    pub before_window: Vec<Stage>,
    /// The window and its aggregates.
    pub window: Option<CompiledWindow>,
    /// Stages on the window results.
    pub after_window: Vec<Stage>,
    /// The sink's key expression.
    pub sink_key: Option<CompiledExpression>,
}

/// The most windows a sliding window may put one event in (`size / slide`, rounded up): beyond it a
/// single event would cost thousands of state updates.
pub const MAX_WINDOWS_PER_EVENT: i64 = 1000;

/// Why a checked job cannot run.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// An expression did not compile.
    #[error(transparent)]
    Expression(#[from] CompileError),
    /// A sliding window whose slide is tiny next to its size.
    #[error(
        "failed to compile the window: a sliding window of size {size}ms and slide {slide}ms puts each event in {windows} windows, more than {MAX_WINDOWS_PER_EVENT}: use a larger slide"
    )]
    TooManyWindows {
        /// The size.
        size: Millis,
        /// The slide.
        slide: Millis,
        /// Windows per event.
        windows: i64,
    },
}

/// Compiles a checked job: every CEL expression is parsed here, once.
pub fn compile(job: &CheckedJob) -> Result<CompiledPipeline, PipelineError> {
    let spec = &job.spec;
    let mut before_window = Vec::new();
    let mut after_window = Vec::new();
    let mut window = None;
    let mut pending_window = None;
    for step in &job.pipeline.steps {
        let stages = if window.is_some() {
            &mut after_window
        } else {
            &mut before_window
        };
        match step {
            Step::Filter(expression) => {
                stages.push(Stage::Filter(CompiledExpression::compile(expression)?))
            }
            Step::Map(outputs) => stages.push(Stage::Map(
                outputs
                    .iter()
                    .map(|(name, expression)| {
                        Ok((name.clone(), CompiledExpression::compile(expression)?))
                    })
                    .collect::<Result<_, CompileError>>()?,
            )),
            Step::KeyBy(expression) => {
                stages.push(Stage::KeyBy(CompiledExpression::compile(expression)?))
            }
            Step::Window(checked) => pending_window = Some(*checked),
            Step::Aggregate(outputs) => {
                let checked = pending_window
                    .take()
                    .unwrap_or(sluice_crds::pipeline::Window {
                        kind: sluice_crds::pipeline::WindowKind::Tumbling {
                            size: std::time::Duration::from_secs(60),
                        },
                        allowed_lateness: std::time::Duration::ZERO,
                    });
                let assigner: WindowAssigner = checked.kind.into();
                if let WindowAssigner::Sliding { size, slide } = assigner {
                    let windows = (size + slide - 1) / slide;
                    if windows > MAX_WINDOWS_PER_EVENT {
                        return Err(PipelineError::TooManyWindows {
                            size,
                            slide,
                            windows,
                        });
                    }
                }
                window = Some(CompiledWindow {
                    assigner,
                    allowed_lateness: duration_millis(checked.allowed_lateness),
                    outputs: outputs
                        .iter()
                        .map(|output| {
                            Ok(CompiledAggregate {
                                name: output.name.clone(),
                                function: output.function,
                                of: output
                                    .of
                                    .as_ref()
                                    .map(CompiledExpression::compile)
                                    .transpose()?,
                            })
                        })
                        .collect::<Result<_, CompileError>>()?,
                });
            }
        }
    }
    Ok(CompiledPipeline {
        event_time: EventTimeField::new(
            spec.source.event_time.field.clone(),
            spec.source.event_time.format,
            window.as_ref().map(|window| &window.assigner),
        ),
        max_out_of_orderness: spec.source.watermark.max_out_of_orderness.as_millis_i64(),
        idle_timeout: spec
            .source
            .watermark
            .idle_timeout
            .map(|timeout| timeout.as_millis_i64()),
        max_parallelism: u32::try_from(spec.max_parallelism).unwrap_or(1).max(1),
        before_window,
        window,
        after_window,
        sink_key: job
            .sink_key
            .as_ref()
            .map(CompiledExpression::compile)
            .transpose()?,
    })
}

/// Runs `event` through `stages`.
pub fn run_stages(stages: &mut [Stage], event: &mut Event) -> StageOutcome {
    for stage in stages {
        match stage {
            Stage::Filter(expression) => match expression.evaluate(&event.fields) {
                Ok(value) => match value.as_ref() {
                    Value::Bool(true) => {}
                    Value::Bool(false) => return StageOutcome::Dropped,
                    other => {
                        return StageOutcome::Failed(Failure::new(
                            DeadLetterReason::FilterNotBool,
                            format!(
                                "the filter {:?} gave {}, not a bool",
                                expression.source(),
                                describe(other)
                            ),
                        ));
                    }
                },
                Err(error) => {
                    return StageOutcome::Failed(Failure::new(
                        DeadLetterReason::FilterError,
                        error.to_string(),
                    ));
                }
            },
            Stage::Map(outputs) => {
                let mut fields = Map::new();
                for (name, expression) in outputs.iter_mut() {
                    match expression.evaluate(&event.fields) {
                        Ok(value) => {
                            fields.insert(name.clone(), value.into_owned());
                        }
                        Err(error) => {
                            return StageOutcome::Failed(Failure::new(
                                DeadLetterReason::MapError,
                                format!("map output {name}: {error}"),
                            ));
                        }
                    }
                }
                event.fields = fields;
            }
            Stage::KeyBy(expression) => match expression.evaluate(&event.fields) {
                Ok(value) => match canonical_key(&value) {
                    Some(key) => event.key = Some(key),
                    None => {
                        return StageOutcome::Failed(Failure::new(
                            DeadLetterReason::KeyUnsupportedType,
                            format!(
                                "the key {:?} gave {}: a key must be a string, an integer or a bool",
                                expression.source(),
                                describe(&value)
                            ),
                        ));
                    }
                },
                Err(error) => {
                    return StageOutcome::Failed(Failure::new(
                        DeadLetterReason::KeyError,
                        error.to_string(),
                    ));
                }
            },
        }
    }
    StageOutcome::Passed
}

/// The canonical bytes of a key (its compact JSON), for strings, integers and bools.
pub fn canonical_key(value: &Value) -> Option<Vec<u8>> {
    match value {
        Value::String(_) | Value::Bool(_) => serde_json::to_vec(value).ok(),
        Value::Number(number) if number.is_i64() || number.is_u64() => {
            serde_json::to_vec(value).ok()
        }
        _ => None,
    }
}

/// The aggregate inputs of an event, all or nothing: the first failing or non-numeric
/// input dead-letters the whole event.
pub fn aggregate_inputs(
    outputs: &mut [CompiledAggregate],
    event: &Event,
    inputs: &mut Vec<Option<Number128>>,
) -> Result<(), Failure> {
    inputs.clear();
    for output in outputs {
        let Some(expression) = &mut output.of else {
            inputs.push(None);
            continue;
        };
        let value = expression.evaluate(&event.fields).map_err(|error| {
            Failure::new(
                DeadLetterReason::AggregateError,
                format!("aggregate {}: {error}", output.name),
            )
        })?;
        let number = Number128::of(&value).ok_or_else(|| {
            Failure::new(
                DeadLetterReason::AggregateNotNumber,
                format!(
                    "aggregate {}: {:?} gave {}, not a number",
                    output.name,
                    expression.source(),
                    describe(&value)
                ),
            )
        })?;
        inputs.push(Some(number));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn refuses_sliding_windows_with_too_many_windows_per_event() {
        let manifest = |slide: &str| {
            format!(
                r#"
apiVersion: sluice.dev/v1alpha1
kind: StreamJob
metadata:
  name: sliding
spec:
  kafka:
    bootstrapServers: kafka:9092
  source:
    topics: [in]
    eventTime:
      field: ts
  pipeline:
    - keyBy: "event.user"
    - window:
        sliding:
          size: 1h
          slide: {slide}
    - aggregate:
        n:
          function: count
  sink:
    topic: out
"#
            )
        };
        let cases = [
            ("4s", true),
            ("3600ms", true),
            ("3599ms", false),
            ("1ms", false),
        ];
        for (slide, compiles) in cases {
            // validate() refuses the small slides before the engine sees them; the engine
            // keeps its own limit for a CheckedJob built in code, so set the slide there.
            let (_, mut checked) = sluice_crds::load_manifest(&manifest("4s")).unwrap();
            let slide_duration: sluice_crds::Duration = slide.parse().unwrap();
            for step in &mut checked.pipeline.steps {
                if let sluice_crds::pipeline::Step::Window(window) = step
                    && let sluice_crds::pipeline::WindowKind::Sliding { slide, .. } =
                        &mut window.kind
                {
                    *slide = slide_duration.get();
                }
            }
            assert_eq!(compile(&checked).is_ok(), compiles, "slide {slide}");
            assert_eq!(
                sluice_crds::load_manifest(&manifest(slide)).is_ok(),
                compiles,
                "validate() and the engine agree on slide {slide}"
            );
        }
    }

    #[test]
    fn keys_are_canonical_json_of_scalars() {
        let cases = [
            (json!("/home"), Some("\"/home\"")),
            (json!(42), Some("42")),
            (json!(u64::MAX), Some("18446744073709551615")),
            (json!(true), Some("true")),
            (json!(1.5), None),
            (json!(null), None),
            (json!([1]), None),
            (json!({"a": 1}), None),
        ];
        for (value, expected) in cases {
            assert_eq!(
                canonical_key(&value).map(|bytes| String::from_utf8(bytes).unwrap()),
                expected.map(String::from),
                "{value}"
            );
        }
    }
}
