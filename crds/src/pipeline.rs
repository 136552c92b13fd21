//! Pipeline steps: the form a user writes ([`PipelineStep`]) and the checked form the
//! worker compiles ([`CheckedPipeline`]), produced by [`crate::validate()`].

use std::collections::{BTreeMap, BTreeSet};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::duration::Duration;
use crate::expression::MAX_EXPRESSION_LENGTH;
use crate::messages;

/// One step of a pipeline: exactly one of `filter`, `map`, `keyBy`, `window`, `aggregate`.
/// Expressions are CEL (the language of Kubernetes validation rules) over the variable
/// `event`, the decoded event, or the output of the latest `map` or `aggregate` before it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "(has(self.filter) ? 1 : 0) + (has(self.map) ? 1 : 0) + (has(self.keyBy) ? 1 : 0) + (has(self.window) ? 1 : 0) + (has(self.aggregate) ? 1 : 0) == 1",
        "message": messages::STEP_EXACTLY_ONE,
    },
]))]
pub struct PipelineStep {
    /// Keep only events for which this CEL expression is true, for example
    /// `event.status == 200`. An expression that fails or is not a bool sends the event
    /// to the dead-letter output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = MAX_EXPRESSION_LENGTH))]
    pub filter: Option<String>,

    /// Replace each event by a new one with these fields, each a CEL expression over the
    /// incoming event, for example `page: event.url.split('?')[0]`. Only these fields remain; the event
    /// time travels with the event, so the output need not keep the event-time field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxProperties" = 64, "x-kubernetes-validations" = [
        { "rule": "self.all(name, name.matches('^[A-Za-z_][A-Za-z0-9_]*$'))", "message": messages::OUTPUT_NAME_INVALID },
    ]))]
    #[schemars(inner(length(min = 1, max = MAX_EXPRESSION_LENGTH)))]
    pub map: Option<BTreeMap<String, String>>,

    /// The key of each event, a CEL expression such as `event.page`: windows and
    /// aggregates are per key, and keyed state is partitioned by it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = MAX_EXPRESSION_LENGTH))]
    pub key_by: Option<String>,

    /// Group the events of each key into event-time windows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<WindowSpec>,

    /// Named results computed over each window, for example
    /// `views: {function: Count}` or `avgLatency: {function: Avg, of: event.latencyMs}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxProperties" = 64, "x-kubernetes-validations" = [
        { "rule": "self.all(name, name.matches('^[A-Za-z_][A-Za-z0-9_]*$'))", "message": messages::OUTPUT_NAME_INVALID },
    ]))]
    pub aggregate: Option<BTreeMap<String, Aggregation>>,
}

/// An event-time window: exactly one of `tumbling`, `sliding`, `session`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "(has(self.tumbling) ? 1 : 0) + (has(self.sliding) ? 1 : 0) + (has(self.session) ? 1 : 0) == 1",
        "message": messages::WINDOW_EXACTLY_ONE_KIND,
    },
]))]
pub struct WindowSpec {
    /// Fixed, non-overlapping windows of `size`, aligned to the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tumbling: Option<TumblingWindow>,

    /// Overlapping windows of `size` starting every `slide`; an event is in size/slide
    /// windows, rounded down or up depending on its time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sliding: Option<SlidingWindow>,

    /// Per-key windows of activity that close after `gap` without events; sessions that
    /// an event bridges merge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<SessionWindow>,

    /// How long after a window's end (in event time) its state is kept: an event that
    /// arrives within it updates the window and emits an updated result; a later one goes
    /// to the late-data output. Unset: no lateness, a window is final when it fires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_lateness: Option<Duration>,
}

/// The most windows of a sliding window one event may belong to (size / slide, rounded up).
pub const MAX_WINDOWS_PER_EVENT: u128 = 1000;

/// Fixed windows.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct TumblingWindow {
    /// Length of each window.
    pub size: Duration,
}

/// Overlapping windows.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[schemars(extend("x-kubernetes-validations" = [
    { "rule": "duration(self.slide) <= duration(self.size)", "message": messages::SLIDE_ABOVE_SIZE },
    { "rule": "duration(self.size).getMilliseconds() <= duration(self.slide).getMilliseconds() * 1000", "message": messages::SLIDE_TOO_SMALL },
]))]
pub struct SlidingWindow {
    /// Length of each window.
    pub size: Duration,
    /// Time between the starts of consecutive windows.
    pub slide: Duration,
}

/// Session windows.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct SessionWindow {
    /// A session closes when a key has no event for this long.
    pub gap: Duration,
}

/// One named result of an aggregate step.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[schemars(extend("x-kubernetes-validations" = [
    // `function` is a CEL reserved word: Kubernetes exposes it as `__function__`.
    { "rule": "self.__function__ == 'Count' || has(self.of)", "message": messages::AGGREGATION_NEEDS_OF },
]))]
pub struct Aggregation {
    /// What to compute.
    pub function: AggregateFunction,
    /// The CEL expression to aggregate, a number (not needed for count).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = MAX_EXPRESSION_LENGTH))]
    pub of: Option<String>,
}

/// An aggregate function.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum AggregateFunction {
    /// Number of events.
    Count,
    /// Sum of `of`.
    Sum,
    /// Least `of`.
    Min,
    /// Greatest `of`.
    Max,
    /// Mean of `of`.
    Avg,
}

impl AggregateFunction {
    /// The name as written in a manifest.
    pub fn name(self) -> &'static str {
        match self {
            Self::Count => "Count",
            Self::Sum => "Sum",
            Self::Min => "Min",
            Self::Max => "Max",
            Self::Avg => "Avg",
        }
    }
}

/// A CEL expression that parsed, with what it reads of the event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expression {
    /// The expression as written.
    pub source: String,
    /// The top-level fields of `event` that the expression selects (`event.page` gives
    /// `page`). `None` when it uses `event` as a whole (for example `size(event)`), so
    /// all fields must be passed.
    pub event_fields: Option<BTreeSet<String>>,
}

/// A stateless step: what `filter` and `map` become once checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StatelessStep {
    /// Keep events for which the expression is true.
    Filter(Expression),
    /// Replace the event by these named fields.
    Map(Vec<(String, Expression)>),
}

/// A checked window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// Tumbling, sliding or session.
    pub kind: WindowKind,
    /// How long after its end a window's state is kept (zero: none).
    pub allowed_lateness: std::time::Duration,
}

/// The kind of a window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WindowKind {
    /// Fixed windows of `size`.
    Tumbling {
        /// Length of each window.
        size: std::time::Duration,
    },
    /// Windows of `size` every `slide`.
    Sliding {
        /// Length of each window.
        size: std::time::Duration,
        /// Distance between window starts.
        slide: std::time::Duration,
    },
    /// Sessions closed by a `gap` without events.
    Session {
        /// Inactivity that closes a session.
        gap: std::time::Duration,
    },
}

/// One named result of an aggregate step, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AggregateOutput {
    /// The output field name.
    pub name: String,
    /// What is computed.
    pub function: AggregateFunction,
    /// The aggregated expression (`None` for count).
    pub of: Option<Expression>,
}

/// A pipeline that passed [`crate::validate()`], in the shape the rules allow: stateless
/// steps, then optionally a key, more stateless steps, and optionally a window with its
/// aggregate followed by stateless steps on the results. Nothing downstream re-checks the
/// order of steps: a window without a key, or an aggregate without a window, cannot be
/// written in this type.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CheckedPipeline {
    /// Stateless steps before the `keyBy` (every step when there is none).
    pub before_key: Vec<StatelessStep>,
    /// The `keyBy` and everything after it.
    pub keyed: Option<KeyedPipeline>,
}

/// The keyed part of a pipeline.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyedPipeline {
    /// The key expression: a string, an integer or a bool.
    pub key: Expression,
    /// Stateless steps between the `keyBy` and the window (every step after the `keyBy`
    /// when there is no window).
    pub before_window: Vec<StatelessStep>,
    /// The window, its aggregate and the steps on its results.
    pub window: Option<WindowedAggregate>,
}

/// A window with its aggregate step and the stateless steps on its results.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct WindowedAggregate {
    /// The window.
    pub window: Window,
    /// The named results per key and window, in the order of their names.
    pub aggregates: Vec<AggregateOutput>,
    /// Stateless steps each result goes through.
    pub after_window: Vec<StatelessStep>,
}

impl CheckedPipeline {
    /// The keyBy expression, if the pipeline is keyed.
    pub fn key_by(&self) -> Option<&Expression> {
        self.keyed.as_ref().map(|keyed| &keyed.key)
    }

    /// The window and its aggregate, if the pipeline has one.
    pub fn windowed(&self) -> Option<&WindowedAggregate> {
        self.keyed.as_ref().and_then(|keyed| keyed.window.as_ref())
    }

    /// The window, if the pipeline has one.
    pub fn window(&self) -> Option<&Window> {
        self.windowed().map(|windowed| &windowed.window)
    }

    /// Number of steps, as written.
    pub fn step_count(&self) -> usize {
        let keyed = self.keyed.as_ref().map_or(0, |keyed| {
            1 + keyed.before_window.len()
                + keyed
                    .window
                    .as_ref()
                    .map_or(0, |windowed| 2 + windowed.after_window.len())
        });
        self.before_key.len() + keyed
    }
}
