//! The engine: drives records from a source through the compiled pipeline, the watermark
//! and the window operator to a sink. It never reads a clock: the caller passes the
//! processing time (for idle partitions), so runs are deterministic.
//!
//! Per record: decode → event time (the partition's watermark moves) → stages before the
//! window (filter, map, keyBy) → aggregate inputs → window operator (late events leave
//! here) → then the operator watermark advances and windows fire → stages after the
//! window → sink key → sink. Any failure on an event sends it to the dead-letter output;
//! only sink and state-store failures stop the engine.

use std::io::Write as _;

use serde_json::{Map, Value};
use sluice_crds::CheckedJob;

use crate::dead_letter::{DeadLetterReason, Failure};
use crate::io::{OutputRecord, Position, RejectReason, Rejected, Sink, SourceRecord};
use crate::metrics::Metrics;
use crate::pipeline::aggregate::Number128;
use crate::pipeline::window_operator::{Admission, WindowOperator, WindowResult};
use crate::pipeline::{
    CompiledPipeline, Event, StageOutcome, aggregate_inputs, compile, run_stages,
};
use crate::state::{KeyedWindowState, StateStore};
use crate::time::Millis;
use crate::time::event_time::{EventTimeError, format_rfc3339};
use crate::time::watermark::{PartitionId, WatermarkTracker};
use crate::time::window::WindowRange;

/// Settings of an engine that are not in the StreamJob.
#[derive(Clone, Copy, Debug)]
pub struct EngineOptions {
    /// About how many windows the hot-state cache holds before it evicts to the store.
    pub state_cache_entries: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            state_cache_entries: 500_000,
        }
    }
}

/// A running pipeline.
pub struct Engine {
    pipeline: CompiledPipeline,
    watermarks: WatermarkTracker,
    windows: Option<WindowOperator>,
    metrics: Metrics,
    inputs: Vec<Option<Number128>>,
    results: Vec<WindowResult>,
    output_names: Vec<String>,
    /// The last window formatted for results, and its formatted bounds.
    window_bounds: (Option<WindowRange>, String),
    /// The result fields the sink key reads (`None`: all).
    sink_key_fields: Option<Vec<String>>,
}

impl Engine {
    /// Compiles `job` and opens its window state on `store`.
    pub fn new(
        job: &CheckedJob,
        store: Box<dyn StateStore>,
        options: EngineOptions,
        metrics: Metrics,
    ) -> anyhow::Result<Self> {
        let pipeline = compile(job)?;
        let windows = pipeline.window.as_ref().map(|window| {
            WindowOperator::new(
                window.assigner,
                window.allowed_lateness,
                window
                    .outputs
                    .iter()
                    .map(|output| output.function)
                    .collect(),
                pipeline.max_parallelism,
                KeyedWindowState::new(store, options.state_cache_entries),
            )
        });
        let output_names = pipeline
            .window
            .as_ref()
            .map(|window| {
                window
                    .outputs
                    .iter()
                    .map(|output| output.name.clone())
                    .collect()
            })
            .unwrap_or_default();
        tracing::debug!(pipeline = ?pipeline, "compiled the pipeline");
        Ok(Self {
            watermarks: WatermarkTracker::new(pipeline.max_out_of_orderness, pipeline.idle_timeout),
            pipeline,
            windows,
            metrics,
            inputs: Vec::new(),
            results: Vec::new(),
            output_names,
            window_bounds: (None, String::new()),
            sink_key_fields: job
                .sink_key
                .as_ref()
                .and_then(|expression| expression.event_fields.as_ref())
                .map(|fields| fields.iter().cloned().collect()),
        })
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The operator watermark.
    pub fn watermark(&self) -> Millis {
        self.watermarks.current()
    }

    /// Windows with state (0 without a window step).
    pub fn open_windows(&self) -> u64 {
        self.windows
            .as_ref()
            .map_or(0, WindowOperator::open_windows)
    }

    /// Window entries in the store after a checkpoint (cache written back): for tests
    /// that state does not leak.
    pub fn count_stored_windows(&mut self) -> anyhow::Result<u64> {
        match &mut self.windows {
            Some(windows) => Ok(windows.state().count_stored_windows()?),
            None => Ok(0),
        }
    }

    /// Pending timers, in memory and in the store.
    pub fn count_timers(&mut self) -> anyhow::Result<u64> {
        match &mut self.windows {
            Some(windows) => Ok(windows.state().count_timers()?),
            None => Ok(0),
        }
    }

    /// The source's partitions assigned to this engine at processing time `now` (all of
    /// them in local mode; a Kafka consumer's assignment after a rebalance): each holds
    /// the watermark back until it sends an event or goes idle.
    pub fn assign_partitions(&mut self, partitions: &[PartitionId], now: Millis) {
        self.watermarks.assign(partitions, now);
    }

    /// Partitions moved away from this engine no longer hold its watermark back.
    pub fn revoke_partitions(
        &mut self,
        partitions: &[PartitionId],
        now: Millis,
        sink: &mut dyn Sink,
    ) -> anyhow::Result<()> {
        self.watermarks.revoke(partitions);
        self.advance(now, sink)
    }

    /// Processes one record at processing time `now`.
    pub fn process(
        &mut self,
        record: SourceRecord<'_>,
        now: Millis,
        sink: &mut dyn Sink,
    ) -> anyhow::Result<()> {
        self.metrics.events_in.inc();
        let decoded = decode(record.payload).and_then(|fields| {
            let time = self
                .pipeline
                .event_time
                .extract(&fields, record.payload)
                .map_err(event_time_failure)?;
            Ok((fields, time))
        });
        let (fields, time) = match decoded {
            Ok(decoded) => decoded,
            Err(failure) => {
                // The record still shows its partition is active, and processing time
                // moved: an idle partition may release the watermark.
                self.watermarks.observe(record.partition, None, now);
                self.dead_letter(&failure, Some(record.position), record.payload, sink)?;
                return self.advance(now, sink);
            }
        };
        self.watermarks.observe(record.partition, Some(time), now);
        let mut event = Event {
            fields,
            time,
            key: None,
        };
        match run_stages(&mut self.pipeline.before_window, &mut event) {
            StageOutcome::Passed => self.send_to_window_or_sink(event, record, sink)?,
            StageOutcome::Dropped => {
                self.metrics.filtered_events.inc();
            }
            StageOutcome::Failed(failure) => {
                self.dead_letter(&failure, Some(record.position), record.payload, sink)?
            }
        }
        self.advance(now, sink)
    }

    fn send_to_window_or_sink(
        &mut self,
        event: Event,
        record: SourceRecord<'_>,
        sink: &mut dyn Sink,
    ) -> anyhow::Result<()> {
        let (Some(windows), Some(compiled)) = (&mut self.windows, &mut self.pipeline.window) else {
            return self.emit_event(event, sink);
        };
        if let Err(failure) = aggregate_inputs(&mut compiled.outputs, &event, &mut self.inputs) {
            return self.dead_letter(&failure, Some(record.position), record.payload, sink);
        }
        let Some(key) = event.key.as_deref() else {
            let failure = Failure::new(
                DeadLetterReason::KeyError,
                "the event has no key: add a keyBy step before the window",
            );
            return self.dead_letter(&failure, Some(record.position), record.payload, sink);
        };
        let watermark = self.watermarks.current();
        match windows.add(key, event.time, &self.inputs, watermark, &mut self.results)? {
            Admission::Accepted => self.emit_results(sink),
            Admission::Overflow {
                window,
                output,
                overflow,
            } => {
                let failure = Failure::new(
                    DeadLetterReason::AggregateOverflow,
                    format!(
                        "aggregate {}: with this event, in window [{}, {}): {overflow}; the window keeps its result without it",
                        self.output_names[output],
                        format_rfc3339(window.start),
                        format_rfc3339(window.end),
                    ),
                );
                self.dead_letter(&failure, Some(record.position), record.payload, sink)
            }
            Admission::Late { window } => {
                self.metrics.late_events.inc();
                let detail = format!(
                    "event time {} is in window [{}, {}), whose state expired at {} (window end plus allowed lateness {}ms); watermark {}",
                    format_rfc3339(event.time),
                    format_rfc3339(window.start),
                    format_rfc3339(window.end),
                    format_rfc3339(window.end.saturating_add(compiled.allowed_lateness)),
                    compiled.allowed_lateness,
                    format_rfc3339(watermark),
                );
                sink.late(Rejected {
                    reason: RejectReason::Late,
                    detail: &detail,
                    position: Some(record.position),
                    original: record.payload,
                })
            }
        }
    }

    /// Lets the watermark move at processing time `now` with no new record (an idle
    /// partition timing out), firing what it passes.
    pub fn advance(&mut self, now: Millis, sink: &mut dyn Sink) -> anyhow::Result<()> {
        if let Some(watermark) = self.watermarks.advance(now) {
            self.fire(watermark, sink)?;
        }
        Ok(())
    }

    /// The input ended: the watermark moves to the end of time and every window fires.
    pub fn finish(&mut self, sink: &mut dyn Sink) -> anyhow::Result<()> {
        let watermark = self.watermarks.end_of_input();
        self.fire(watermark, sink)?;
        sink.flush()
    }

    /// Writes every change of state to the store (the next issue adds offsets and the
    /// Kafka transaction to it).
    pub fn checkpoint(&mut self, sink: &mut dyn Sink) -> anyhow::Result<()> {
        if let Some(windows) = &mut self.windows {
            windows.state().checkpoint()?;
        }
        sink.flush()
    }

    fn fire(&mut self, watermark: Millis, sink: &mut dyn Sink) -> anyhow::Result<()> {
        self.metrics.watermark.set(watermark);
        if let Some(windows) = &mut self.windows {
            windows.advance(watermark, &mut self.results)?;
            self.metrics
                .open_windows
                .set(i64::try_from(windows.open_windows()).unwrap_or(i64::MAX));
            self.emit_results(sink)?;
        }
        Ok(())
    }

    fn emit_results(&mut self, sink: &mut dyn Sink) -> anyhow::Result<()> {
        let results = std::mem::take(&mut self.results);
        for result in &results {
            self.emit_result(result, sink)?;
        }
        self.results = results;
        self.results.clear();
        Ok(())
    }

    fn emit_result(&mut self, result: &WindowResult, sink: &mut dyn Sink) -> anyhow::Result<()> {
        if self.pipeline.after_window.is_empty() {
            // The common case: the result is the output. Encode it directly, and give the
            // sink key only the fields it reads.
            let value = self.encode_result_directly(result);
            let key = match &mut self.pipeline.sink_key {
                None => key_bytes_of_canonical(&result.key),
                Some(expression) => {
                    let fields =
                        result_fields(result, &self.output_names, self.sink_key_fields.as_deref());
                    match expression.evaluate(&fields) {
                        Ok(key) => key_bytes(&key),
                        Err(error) => {
                            let failure =
                                Failure::new(DeadLetterReason::SinkKeyError, error.to_string());
                            return self.dead_letter(&failure, None, &value, sink);
                        }
                    }
                }
            };
            self.metrics.results_out.inc();
            return sink.result(OutputRecord {
                key: Some(key),
                value,
            });
        }
        let fields = result_fields(result, &self.output_names, None);
        let mut event = Event {
            fields,
            time: result.range.end.saturating_sub(1),
            key: Some(result.key.clone()),
        };
        match run_stages(&mut self.pipeline.after_window, &mut event) {
            StageOutcome::Passed => self.emit_event(event, sink),
            StageOutcome::Dropped => {
                self.metrics.filtered_events.inc();
                Ok(())
            }
            StageOutcome::Failed(failure) => {
                let original = self.encode_fields(&event.fields);
                self.dead_letter(&failure, None, &original, sink)
            }
        }
    }

    /// A result as `{"key", "windowStart", "windowEnd", outputs..., "isUpdate"}`.
    fn encode_result_directly(&mut self, result: &WindowResult) -> Vec<u8> {
        // Every key of a window fires together: format its bounds once.
        if self.window_bounds.0 != Some(result.range) {
            self.window_bounds = (
                Some(result.range),
                format!(
                    ",\"windowStart\":\"{}\",\"windowEnd\":\"{}\"",
                    format_rfc3339(result.range.start),
                    format_rfc3339(result.range.end)
                ),
            );
        }
        let mut out = Vec::with_capacity(128 + result.key.len());
        out.extend_from_slice(b"{\"key\":");
        out.extend_from_slice(&result.key);
        out.extend_from_slice(self.window_bounds.1.as_bytes());
        for (name, value) in self.output_names.iter().zip(&result.values) {
            out.push(b',');
            let _ = serde_json::to_writer(&mut out, name);
            out.push(b':');
            value.write_json(&mut out);
        }
        let _ = write!(out, ",\"isUpdate\":{}}}", result.is_update);
        out
    }

    /// Fields as a JSON object, result fields first in their usual order.
    fn encode_fields(&self, fields: &Map<String, Value>) -> Vec<u8> {
        let mut first: Vec<&str> = vec!["key", "windowStart", "windowEnd"];
        first.extend(self.output_names.iter().map(String::as_str));
        first.push("isUpdate");
        let mut out = Vec::with_capacity(128);
        out.push(b'{');
        let mut separator = false;
        let ordered = first
            .iter()
            .filter_map(|name| fields.get_key_value(*name))
            .chain(
                fields
                    .iter()
                    .filter(|(name, _)| !first.contains(&name.as_str())),
            );
        for (name, value) in ordered {
            if separator {
                out.push(b',');
            }
            separator = true;
            let _ = serde_json::to_writer(&mut out, name);
            out.push(b':');
            let _ = serde_json::to_writer(&mut out, value);
        }
        out.push(b'}');
        out
    }

    fn emit_event(&mut self, event: Event, sink: &mut dyn Sink) -> anyhow::Result<()> {
        let value = self.encode_fields(&event.fields);
        let key = match &mut self.pipeline.sink_key {
            Some(expression) => match expression.evaluate(&event.fields) {
                Ok(key) => Some(key_bytes(&key)),
                Err(error) => {
                    let failure = Failure::new(DeadLetterReason::SinkKeyError, error.to_string());
                    return self.dead_letter(&failure, None, &value, sink);
                }
            },
            None => event.key.as_deref().map(key_bytes_of_canonical),
        };
        self.metrics.results_out.inc();
        sink.result(OutputRecord { key, value })
    }

    fn dead_letter(
        &self,
        failure: &Failure,
        position: Option<&Position>,
        original: &[u8],
        sink: &mut dyn Sink,
    ) -> anyhow::Result<()> {
        self.metrics.dead_letter(failure.reason);
        tracing::debug!(reason = %failure.reason, detail = %failure.detail, ?position, "dead letter");
        sink.dead_letter(Rejected {
            reason: RejectReason::DeadLetter(failure.reason),
            detail: &failure.detail,
            position,
            original,
        })
    }
}

/// Decodes a record into the fields of an event.
pub fn decode(payload: &[u8]) -> Result<Map<String, Value>, Failure> {
    match serde_json::from_slice::<Value>(payload) {
        Ok(Value::Object(fields)) => Ok(fields),
        Ok(other) => Err(Failure::new(
            DeadLetterReason::DecodeNotAnObject,
            format!("the record is a JSON {}, not an object", json_type(&other)),
        )),
        Err(error) => Err(Failure::new(
            DeadLetterReason::DecodeInvalidJson,
            format!("failed to decode the record as JSON: {error}"),
        )),
    }
}

/// The fields of a result as an event: all of them, or only `wanted`.
fn result_fields(
    result: &WindowResult,
    output_names: &[String],
    wanted: Option<&[String]>,
) -> Map<String, Value> {
    let wants = |name: &str| wanted.is_none_or(|wanted| wanted.iter().any(|field| field == name));
    let mut fields = Map::new();
    if wants("key") {
        fields.insert(
            "key".into(),
            serde_json::from_slice(&result.key).unwrap_or(Value::Null),
        );
    }
    if wants("windowStart") {
        fields.insert(
            "windowStart".into(),
            Value::String(format_rfc3339(result.range.start)),
        );
    }
    if wants("windowEnd") {
        fields.insert(
            "windowEnd".into(),
            Value::String(format_rfc3339(result.range.end)),
        );
    }
    for (name, value) in output_names.iter().zip(&result.values) {
        if wants(name) {
            fields.insert(name.clone(), value.to_json());
        }
    }
    if wants("isUpdate") {
        fields.insert("isUpdate".into(), Value::Bool(result.is_update));
    }
    fields
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// A Kafka record key from a value: a string's text, anything else's JSON.
fn key_bytes(value: &Value) -> Vec<u8> {
    match value {
        Value::String(text) => text.as_bytes().to_vec(),
        other => other.to_string().into_bytes(),
    }
}

fn key_bytes_of_canonical(canonical: &[u8]) -> Vec<u8> {
    match serde_json::from_slice::<Value>(canonical) {
        Ok(value) => key_bytes(&value),
        Err(_) => canonical.to_vec(),
    }
}

/// The dead letter of an event whose time cannot be used.
fn event_time_failure(error: EventTimeError) -> Failure {
    let reason = match error {
        EventTimeError::Missing { .. } => DeadLetterReason::EventTimeMissing,
        EventTimeError::Invalid { .. } => DeadLetterReason::EventTimeInvalid,
        EventTimeError::OutOfRange { .. }
        | EventTimeError::TooEarlyForWindow { .. }
        | EventTimeError::TooLateForWindow { .. } => DeadLetterReason::EventTimeOutOfRange,
    };
    Failure::new(reason, error.to_string())
}
