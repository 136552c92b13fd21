//! The CRD's OpenAPI schema, checked offline: the same schema the API server enforces
//! (generated from the same Rust types), so the two cannot drift.
//!
//! It checks what the API server's structural-schema validation and strict field
//! validation check: unknown fields (with the nearest known name), types, enums, bounds
//! of numbers, lengths of strings, lists and maps, patterns and required fields; `null`
//! in an object means the field is absent, as the API server prunes it. The CRD's CEL
//! rules are not evaluated here: `validate` repeats each of them in Rust, with the same
//! message.

use std::sync::LazyLock;

use serde_json::Value;

use super::FieldError;
use crate::duration::{DURATION_MESSAGE, DURATION_PATTERN};
use crate::messages;

/// The `openAPIV3Schema` of the CRD.
pub(crate) fn root() -> &'static Value {
    static SCHEMA: LazyLock<Value> = LazyLock::new(|| {
        let definition = serde_json::to_value(crate::crd::definition()).expect("a CRD serializes");
        definition["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
    });
    &SCHEMA
}

/// Checks `value` against `schema`, removing `null` fields (as the API server prunes
/// them), and adds every problem to `errors`. `path` names `value`, as in
/// `spec.pipeline[0]`.
pub(crate) fn check(value: &mut Value, schema: &Value, path: &str, errors: &mut Vec<FieldError>) {
    let field = |message: String| FieldError {
        field: path.to_string(),
        message,
    };
    macro_rules! add {
        ($message:expr) => {
            errors.push(field($message))
        };
    }
    if value.is_null() {
        if !flag(schema, "nullable") {
            add!(format!("must be {}, not null", expected(schema)));
        }
        return;
    }
    if flag(schema, "x-kubernetes-int-or-string") {
        if !(value.is_string() || value.is_i64()) {
            add!(format!(
                "must be an integer or a string, not {}",
                kind_of(value)
            ));
        }
        if let Some(text) = value.as_str() {
            check_string(text, schema, &mut |message| errors.push(field(message)));
        }
        return;
    }
    let fits = match schema.get("type").and_then(Value::as_str) {
        Some("object") => value.is_object(),
        Some("array") => value.is_array(),
        Some("string") => value.is_string(),
        Some("integer") => value.is_i64(),
        Some("number") => value.is_number(),
        Some("boolean") => value.is_boolean(),
        _ => true,
    };
    if !fits {
        add!(format!(
            "must be {}, not {}{}",
            expected(schema),
            kind_of(value),
            fix(schema, value)
        ));
        return;
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(value)
    {
        let names: Vec<String> = allowed
            .iter()
            .map(|value| {
                value
                    .as_str()
                    .map_or_else(|| value.to_string(), str::to_string)
            })
            .collect();
        add!(format!("must be one of {}, not {value}", names.join(", ")));
        return;
    }
    match value {
        Value::String(text) => {
            check_string(text, schema, &mut |message| errors.push(field(message)));
        }
        Value::Number(number) => {
            if let Some(integer) = number.as_i64() {
                check_integer(integer, schema, &mut |message| errors.push(field(message)));
            }
        }
        Value::Array(items) => {
            let count = items.len();
            if let Some(least) = number(schema, "minItems")
                && (count as u64) < least
            {
                add!(if least == 1 {
                    "must not be empty".to_string()
                } else {
                    format!("must have at least {least} items, has {count}")
                });
            }
            if let Some(most) = number(schema, "maxItems")
                && count as u64 > most
            {
                add!(format!("must have at most {most} items, has {count}"));
            }
            if let Some(items_schema) = schema.get("items") {
                for (index, item) in items.iter_mut().enumerate() {
                    check(item, items_schema, &format!("{path}[{index}]"), errors);
                }
            }
        }
        Value::Object(fields) => {
            // The API server prunes a null field, unless the schema says it may be null.
            let properties = schema.get("properties").and_then(Value::as_object);
            let additional = schema
                .get("additionalProperties")
                .filter(|value| value.is_object());
            fields.retain(|name, field| {
                !field.is_null()
                    || properties
                        .and_then(|properties| properties.get(name))
                        .is_some_and(|property| flag(property, "nullable"))
            });
            let count = fields.len();
            if let Some(most) = number(schema, "maxProperties")
                && count as u64 > most
            {
                add!(format!("must have at most {most} entries, has {count}"));
            }
            if let Some(required) = schema.get("required").and_then(Value::as_array) {
                for name in required.iter().filter_map(Value::as_str) {
                    if !fields.contains_key(name) {
                        errors.push(FieldError {
                            field: join(path, name),
                            message: "is required: add it".to_string(),
                        });
                    }
                }
            }
            for (name, field) in fields.iter_mut() {
                let field_path = join(path, name);
                match (
                    properties.and_then(|properties| properties.get(name)),
                    additional,
                ) {
                    (Some(property), _) | (None, Some(property)) => {
                        check(field, property, &field_path, errors);
                    }
                    (None, None) => {
                        if properties.is_some() {
                            let known: Vec<&str> = properties
                                .into_iter()
                                .flat_map(|properties| properties.keys())
                                .map(String::as_str)
                                .collect();
                            errors.push(FieldError {
                                field: field_path,
                                message: unknown_field(name, &known),
                            });
                        }
                    }
                }
            }
        }
        Value::Bool(_) | Value::Null => {}
    }
}

/// Reports the fields of `value` that `schema` does not declare, and nothing else: what
/// the API server's strict field validation sees in a part of the object it then drops
/// (`status`, which the status subresource resets on create).
pub(crate) fn check_unknown_fields(
    value: &Value,
    schema: &Value,
    path: &str,
    errors: &mut Vec<FieldError>,
) {
    match value {
        Value::Array(items) => {
            if let Some(items_schema) = schema.get("items") {
                for (index, item) in items.iter().enumerate() {
                    check_unknown_fields(item, items_schema, &format!("{path}[{index}]"), errors);
                }
            }
        }
        Value::Object(fields) => {
            let properties = schema.get("properties").and_then(Value::as_object);
            let additional = schema
                .get("additionalProperties")
                .filter(|value| value.is_object());
            for (name, field) in fields {
                let field_path = join(path, name);
                match (
                    properties.and_then(|properties| properties.get(name)),
                    additional,
                ) {
                    (Some(property), _) | (None, Some(property)) => {
                        check_unknown_fields(field, property, &field_path, errors);
                    }
                    (None, None) => {
                        if let Some(properties) = properties {
                            let known: Vec<&str> = properties.keys().map(String::as_str).collect();
                            errors.push(FieldError {
                                field: field_path,
                                message: unknown_field(name, &known),
                            });
                        }
                    }
                }
            }
        }
        _ => {}
    }
}

/// The message for a field no schema declares, naming the closest known one.
pub(crate) fn unknown_field(name: &str, known: &[&str]) -> String {
    let suggestion = nearest(name, known)
        .map(|nearest| format!("did you mean {nearest:?}?"))
        .unwrap_or_else(|| format!("the fields here are {}", known.join(", ")));
    format!(
        "unknown field {name:?}: {suggestion} (kubectl apply refuses unknown fields, unless told --validate=false, which drops them silently)"
    )
}

/// The known name closest to `name` in edit distance, if close enough to be a typo.
pub(crate) fn nearest<'a>(name: &str, known: &[&'a str]) -> Option<&'a str> {
    let lower = name.to_ascii_lowercase();
    known
        .iter()
        .map(|candidate| {
            (
                edit_distance(&lower, &candidate.to_ascii_lowercase()),
                *candidate,
            )
        })
        .filter(|(distance, candidate)| *distance <= (candidate.chars().count() / 3).max(2))
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

/// The Levenshtein distance between two strings, by characters.
fn edit_distance(left: &str, right: &str) -> usize {
    let right: Vec<char> = right.chars().collect();
    let mut previous: Vec<usize> = (0..=right.len()).collect();
    for (row, left_char) in left.chars().enumerate() {
        let mut current = vec![row + 1];
        for (column, right_char) in right.iter().enumerate() {
            let substitution = previous[column] + usize::from(left_char != *right_char);
            current.push(
                substitution
                    .min(previous[column + 1] + 1)
                    .min(current[column] + 1),
            );
        }
        previous = current;
    }
    previous[right.len()]
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}.{name}")
    }
}

fn flag(schema: &Value, name: &str) -> bool {
    schema.get(name).and_then(Value::as_bool).unwrap_or(false)
}

fn number(schema: &Value, name: &str) -> Option<u64> {
    schema.get(name).and_then(Value::as_u64)
}

fn check_string(text: &str, schema: &Value, add: &mut impl FnMut(String)) {
    // The API server counts characters, not bytes.
    let length = text.chars().count() as u64;
    if let Some(least) = number(schema, "minLength")
        && length < least
    {
        add(if least == 1 {
            "must not be empty".to_string()
        } else {
            format!("must be at least {least} characters long")
        });
    }
    if let Some(most) = number(schema, "maxLength")
        && length > most
    {
        add(format!(
            "must be at most {most} characters long, has {length}"
        ));
        return;
    }
    if let Some(pattern) = schema.get("pattern").and_then(Value::as_str)
        && !matches_pattern(pattern, text)
    {
        add(match pattern {
            DURATION_PATTERN => format!("{text:?} {DURATION_MESSAGE}"),
            messages::SAVEPOINT_LOCATION_PATTERN => {
                format!("{text:?} {}", messages::SAVEPOINT_LOCATION_INVALID)
            }
            _ => format!("{text:?} must match the pattern {pattern}"),
        });
    }
}

fn matches_pattern(pattern: &str, text: &str) -> bool {
    /// Each pattern of the schema, compiled once (`None`: not a pattern the regex crate reads).
    type Compiled = Vec<(String, Option<regex::Regex>)>;
    static COMPILED: LazyLock<std::sync::Mutex<Compiled>> = LazyLock::new(Default::default);
    let mut compiled = COMPILED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let index = match compiled.iter().position(|(known, _)| known == pattern) {
        Some(index) => index,
        None => {
            compiled.push((pattern.to_string(), regex::Regex::new(pattern).ok()));
            compiled.len() - 1
        }
    };
    compiled[index]
        .1
        .as_ref()
        .is_none_or(|regex| regex.is_match(text))
}

fn check_integer(integer: i64, schema: &Value, add: &mut impl FnMut(String)) {
    let bound = |name: &str| schema.get(name).and_then(Value::as_f64);
    let (mut least, mut most) = (bound("minimum"), bound("maximum"));
    if schema.get("format").and_then(Value::as_str) == Some("int32") {
        least = least.or(Some(f64::from(i32::MIN)));
        most = most.or(Some(f64::from(i32::MAX)));
    }
    #[allow(clippy::cast_precision_loss)]
    let value = integer as f64;
    if let Some(least) = least
        && value < least
    {
        add(format!("must be at least {least}, got {integer}"));
    }
    if let Some(most) = most
        && value > most
    {
        add(format!("must be at most {most}, got {integer}"));
    }
}

/// What the schema wants, as a noun.
fn expected(schema: &Value) -> &'static str {
    if flag(schema, "x-kubernetes-int-or-string") {
        return "an integer or a string";
    }
    match schema.get("type").and_then(Value::as_str) {
        Some("object") => "a mapping of fields",
        Some("array") => "a list",
        Some("string") => "a string",
        Some("integer") => "an integer",
        Some("number") => "a number",
        Some("boolean") => "true or false",
        _ => "a value",
    }
}

/// What a JSON value is, as a noun.
pub(crate) fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(number) if number.is_i64() => "an integer",
        Value::Number(number) if number.is_u64() => "an integer beyond 64 bits",
        Value::Number(_) => "a fractional number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// How to write what the schema wants, when the value is of another scalar type.
fn fix(schema: &Value, value: &Value) -> String {
    match (schema.get("type").and_then(Value::as_str), value) {
        (Some("string"), Value::Number(_) | Value::Bool(_)) => format!(
            ": quote it (\"{value}\"); YAML reads unquoted yes, no, on, off, y and n as booleans"
        ),
        (Some("integer"), Value::String(text)) if text.parse::<i64>().is_ok() => {
            format!(": remove the quotes ({text})")
        }
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn errors_of(mut value: Value) -> Vec<String> {
        // As load_manifests: the type fields and metadata are checked on their own.
        if let Some(fields) = value.as_object_mut() {
            for name in ["apiVersion", "kind", "metadata"] {
                fields.remove(name);
            }
        }
        let mut errors = Vec::new();
        check(&mut value, root(), "", &mut errors);
        errors.iter().map(ToString::to_string).collect()
    }

    fn with_spec(change: impl FnOnce(&mut Value)) -> Value {
        let mut object = json!({
            "apiVersion": "sluice.dev/v1alpha1",
            "kind": "StreamJob",
            "metadata": {"name": "x"},
            "spec": {
                "kafka": {"bootstrapServers": "kafka:9092"},
                "source": {"topics": ["in"], "eventTime": {"field": "ts"}},
                "pipeline": [{"filter": "true"}],
                "sink": {"topic": "out"},
            },
        });
        change(&mut object["spec"]);
        object
    }

    #[test]
    fn the_schema_of_the_crd_is_checked() {
        type Change = Box<dyn FnOnce(&mut Value)>;
        let cases: Vec<(&str, Change, &str)> = vec![
            ("valid", Box::new(|_| {}), ""),
            (
                "nulls are absent",
                Box::new(|spec| {
                    spec["state"] = Value::Null;
                    spec["source"]["watermark"] = json!({"idleTimeout": null});
                }),
                "",
            ),
            (
                "typo",
                Box::new(|spec| spec["paralelism"] = json!(2)),
                "spec.paralelism: unknown field \"paralelism\": did you mean \"parallelism\"?",
            ),
            (
                "nested typo",
                Box::new(|spec| spec["source"]["eventTime"]["formt"] = json!("Rfc3339")),
                "spec.source.eventTime.formt: unknown field \"formt\": did you mean \"format\"?",
            ),
            (
                "no near name",
                Box::new(|spec| spec["sink"]["zzzzzzzz"] = json!(1)),
                "the fields here are deadLetterTopic, format, key, lateDataTopic, topic",
            ),
            (
                "a number for a string",
                Box::new(|spec| spec["kafka"]["properties"] = json!({"linger.ms": 5})),
                "spec.kafka.properties.linger.ms: must be a string, not an integer: quote it (\"5\")",
            ),
            (
                "a boolean for a string",
                Box::new(|spec| spec["source"]["topics"] = json!([true])),
                "spec.source.topics[0]: must be a string, not a boolean",
            ),
            (
                "a quoted number",
                Box::new(|spec| spec["parallelism"] = json!("2")),
                "spec.parallelism: must be an integer, not a string: remove the quotes (2)",
            ),
            (
                "a fraction",
                Box::new(|spec| spec["restartNonce"] = json!(1.5)),
                "spec.restartNonce: must be an integer, not a fractional number",
            ),
            (
                "below the minimum",
                Box::new(|spec| spec["parallelism"] = json!(0)),
                "spec.parallelism: must be at least 1, got 0",
            ),
            (
                "beyond int32",
                Box::new(|spec| spec["parallelism"] = json!(2_147_483_648_i64)),
                "spec.parallelism: must be at most 32768, got 2147483648",
            ),
            (
                "unknown enum value",
                Box::new(|spec| spec["upgradeMode"] = json!("Fast")),
                "spec.upgradeMode: must be one of Savepoint, LastState, Stateless, not \"Fast\"",
            ),
            (
                "too long",
                Box::new(|spec| spec["sink"]["topic"] = json!("t".repeat(250))),
                "spec.sink.topic: must be at most 249 characters long, has 250",
            ),
            (
                "empty list",
                Box::new(|spec| spec["pipeline"] = json!([])),
                "spec.pipeline: must not be empty",
            ),
            (
                "required",
                Box::new(|spec| spec["sink"] = Value::Null),
                "spec.sink: is required: add it",
            ),
            (
                "null in a list",
                Box::new(|spec| spec["source"]["topics"] = json!(["in", null])),
                "spec.source.topics[1]: must be a string, not null",
            ),
            (
                "a duration in words",
                Box::new(|spec| {
                    spec["source"]["watermark"] = json!({"maxOutOfOrderness": "5 seconds"})
                }),
                "spec.source.watermark.maxOutOfOrderness: \"5 seconds\" must be a positive duration",
            ),
            (
                "a fraction for an int-or-string",
                Box::new(|spec| spec["state"] = json!({"volumeSize": 1.5})),
                "spec.state.volumeSize: must be an integer or a string, not a fractional number",
            ),
            (
                "too many entries",
                Box::new(|spec| {
                    let entries: serde_json::Map<String, Value> = (0..65)
                        .map(|index| (format!("p{index}"), json!("v")))
                        .collect();
                    spec["kafka"]["properties"] = Value::Object(entries);
                }),
                "spec.kafka.properties: must have at most 64 entries, has 65",
            ),
            (
                "Kubernetes' own types",
                Box::new(|spec| {
                    spec["podTemplate"] =
                        json!({"tolerations": [{"key": "a", "efect": "NoSchedule"}]})
                }),
                "spec.podTemplate.tolerations[0].efect: unknown field \"efect\": did you mean \"effect\"?",
            ),
        ];
        for (name, change, expected) in cases {
            let errors = errors_of(with_spec(change));
            if expected.is_empty() {
                assert!(errors.is_empty(), "{name}: {errors:#?}");
            } else {
                assert!(
                    errors.iter().any(|error| error.contains(expected)),
                    "{name}: expected {expected:?} in {errors:#?}"
                );
            }
        }
    }

    #[test]
    fn typos_find_their_field() {
        let known = ["parallelism", "maxParallelism", "allowedLateness", "sink"];
        let cases = [
            ("paralelism", Some("parallelism")),
            ("MaxParallelism", Some("maxParallelism")),
            ("alowedLateness", Some("allowedLateness")),
            ("snk", Some("sink")),
            ("pipeline", None),
        ];
        for (name, expected) in cases {
            assert_eq!(nearest(name, &known), expected, "{name}");
        }
    }
}
