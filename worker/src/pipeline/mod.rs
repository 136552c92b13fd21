//! The pipeline, compiled once from a checked StreamJob: stateless stages (filter, map)
//! before the key, the key, stages before the window, the keyed window operator with its
//! aggregates, stateless stages on the results, and the sink key.

pub mod aggregate;
pub mod expression;
pub mod value;
pub mod window_operator;

use serde_json::{Map, Value};
use sluice_crds::CheckedJob;
use sluice_crds::pipeline::{AggregateFunction, StatelessStep, WindowedAggregate};

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

/// The window, its aggregate step and the stages on its results.
#[derive(Debug)]
pub struct CompiledWindow {
    /// How events are assigned to windows.
    pub assigner: WindowAssigner,
    /// How long after its end a window keeps its state.
    pub allowed_lateness: Millis,
    /// The aggregate outputs, in order.
    pub outputs: Vec<CompiledAggregate>,
    /// Stages on the window results.
    pub after_window: Vec<Stage>,
}

/// The keyBy and what follows it.
#[derive(Debug)]
pub struct CompiledKeyed {
    /// The key expression.
    pub key: CompiledExpression,
    /// Stages between the keyBy and the window (all stages after the keyBy without one).
    pub before_window: Vec<Stage>,
    /// The window and its aggregates.
    pub window: Option<CompiledWindow>,
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
    pub key_groups: u32,
    /// Stages before the keyBy (all of them when there is none).
    pub before_key: Vec<Stage>,
    /// The keyBy, the window and their stages.
    pub keyed: Option<CompiledKeyed>,
    /// The sink's key expression.
    pub sink_key: Option<CompiledExpression>,
}

impl CompiledPipeline {
    /// The window step, if any.
    pub fn window(&self) -> Option<&CompiledWindow> {
        self.keyed.as_ref().and_then(|keyed| keyed.window.as_ref())
    }
}

fn compile_stages(steps: &[StatelessStep]) -> Result<Vec<Stage>, CompileError> {
    steps
        .iter()
        .map(|step| {
            Ok(match step {
                StatelessStep::Filter(expression) => {
                    Stage::Filter(CompiledExpression::compile(expression)?)
                }
                StatelessStep::Map(outputs) => Stage::Map(
                    outputs
                        .iter()
                        .map(|(name, expression)| {
                            Ok((name.clone(), CompiledExpression::compile(expression)?))
                        })
                        .collect::<Result<_, CompileError>>()?,
                ),
            })
        })
        .collect()
}

fn compile_window(windowed: &WindowedAggregate) -> Result<CompiledWindow, CompileError> {
    Ok(CompiledWindow {
        assigner: windowed.window.kind.into(),
        allowed_lateness: duration_millis(windowed.window.allowed_lateness),
        outputs: windowed
            .aggregates
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
        after_window: compile_stages(&windowed.after_window)?,
    })
}

/// Compiles a checked job: every CEL expression is parsed here, once.
pub fn compile(job: &CheckedJob) -> Result<CompiledPipeline, CompileError> {
    let keyed = job
        .pipeline
        .keyed
        .as_ref()
        .map(|keyed| {
            Ok::<_, CompileError>(CompiledKeyed {
                key: CompiledExpression::compile(&keyed.key)?,
                before_window: compile_stages(&keyed.before_window)?,
                window: keyed.window.as_ref().map(compile_window).transpose()?,
            })
        })
        .transpose()?;
    Ok(CompiledPipeline {
        event_time: EventTimeField::new(
            job.source.event_time.field.clone(),
            job.source.event_time.format,
            keyed
                .as_ref()
                .and_then(|keyed| keyed.window.as_ref())
                .map(|window| &window.assigner),
        ),
        max_out_of_orderness: duration_millis(job.source.max_out_of_orderness),
        idle_timeout: job.source.idle_timeout.map(duration_millis),
        key_groups: u32::from(job.key_groups.get()),
        before_key: compile_stages(&job.pipeline.before_key)?,
        keyed,
        sink_key: job
            .sink
            .key
            .as_ref()
            .map(CompiledExpression::compile)
            .transpose()?,
    })
}

/// The canonical key of an event, or why it has none.
pub fn evaluate_key(key: &mut CompiledExpression, event: &Event) -> Result<Vec<u8>, Failure> {
    let value = key
        .evaluate(&event.fields)
        .map_err(|error| Failure::new(DeadLetterReason::KeyError, error.to_string()))?;
    canonical_key(&value).ok_or_else(|| {
        Failure::new(
            DeadLetterReason::KeyUnsupportedType,
            format!(
                "the key {:?} gave {}: a key must be a string, an integer or a bool",
                key.source(),
                describe(&value)
            ),
        )
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
