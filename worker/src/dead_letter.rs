//! Dead letters and late data: events the pipeline sets aside, with their original bytes,
//! a reason and where they came from. They never stop the worker.

use std::fmt;

/// Why an event went to the dead-letter output. The kebab-case name is the reason in the
/// local-mode envelope, the `sluice-reason` Kafka header and the metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DeadLetterReason {
    /// The record is not JSON.
    DecodeInvalidJson,
    /// The record is JSON but not an object.
    DecodeNotAnObject,
    /// The event has no event-time field.
    EventTimeMissing,
    /// The event-time field has the wrong type or format.
    EventTimeInvalid,
    /// The event time is outside years 0000 to 9999, or one of its windows would be.
    EventTimeOutOfRange,
    /// A filter failed to evaluate.
    FilterError,
    /// A filter gave something other than a bool.
    FilterNotBool,
    /// A map output failed to evaluate.
    MapError,
    /// The keyBy expression failed to evaluate.
    KeyError,
    /// The key is not a string, an integer or a bool.
    KeyUnsupportedType,
    /// An aggregate input failed to evaluate.
    AggregateError,
    /// An aggregate input is not a number.
    AggregateNotNumber,
    /// An aggregate input would take a window's result out of range (a sum beyond the
    /// largest double).
    AggregateOverflow,
    /// The sink key expression failed on a result.
    SinkKeyError,
}

impl DeadLetterReason {
    /// Every reason, for metrics and documentation.
    pub const ALL: [DeadLetterReason; 14] = [
        Self::DecodeInvalidJson,
        Self::DecodeNotAnObject,
        Self::EventTimeMissing,
        Self::EventTimeInvalid,
        Self::EventTimeOutOfRange,
        Self::FilterError,
        Self::FilterNotBool,
        Self::MapError,
        Self::KeyError,
        Self::KeyUnsupportedType,
        Self::AggregateError,
        Self::AggregateNotNumber,
        Self::AggregateOverflow,
        Self::SinkKeyError,
    ];

    /// The kebab-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::DecodeInvalidJson => "decode-invalid-json",
            Self::DecodeNotAnObject => "decode-not-an-object",
            Self::EventTimeMissing => "event-time-missing",
            Self::EventTimeInvalid => "event-time-invalid",
            Self::EventTimeOutOfRange => "event-time-out-of-range",
            Self::FilterError => "filter-error",
            Self::FilterNotBool => "filter-not-bool",
            Self::MapError => "map-error",
            Self::KeyError => "key-error",
            Self::KeyUnsupportedType => "key-unsupported-type",
            Self::AggregateError => "aggregate-error",
            Self::AggregateNotNumber => "aggregate-not-number",
            Self::AggregateOverflow => "aggregate-overflow",
            Self::SinkKeyError => "sink-key-error",
        }
    }
}

impl fmt::Display for DeadLetterReason {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// The reason given to late events.
pub const LATE_REASON: &str = "late";

/// A failure on one event: the reason and a detail message for people.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// Why.
    pub reason: DeadLetterReason,
    /// What exactly, for people.
    pub detail: String,
}

impl Failure {
    /// A failure.
    pub fn new(reason: DeadLetterReason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_distinct_kebab_case_names() {
        let names: std::collections::BTreeSet<&str> = DeadLetterReason::ALL
            .iter()
            .map(|reason| reason.as_str())
            .collect();
        assert_eq!(names.len(), DeadLetterReason::ALL.len());
        for name in names {
            assert!(
                name.chars()
                    .all(|character| character.is_ascii_lowercase() || character == '-'),
                "{name}"
            );
        }
    }
}
