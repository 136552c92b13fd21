//! YAML read as `kubectl apply` reads it, into the JSON it sends to the API server.
//!
//! kubectl converts each document of a file to JSON with sigs.k8s.io/yaml, whose YAML is
//! 1.1: a plain `yes`, `on` or `y` is a bool, `010` an octal int, `1_000` an int, `1.0`
//! a float (sent as the JSON number `1`), merge keys (`<<: *anchor`) merge, a repeated key
//! keeps its last value, and a document that is empty or `null` is skipped. A quoted
//! scalar is always a string. The same rules apply here, so `validate` sees the object the
//! API server sees.
//!
//! Nothing here recurses on the input: nesting and alias expansion are bounded, so no
//! file can exhaust the stack or the memory.

use serde_json::{Map, Number, Value};
use yaml_rust2::parser::{Event, Parser, Tag};
use yaml_rust2::scanner::TScalarStyle;

/// The deepest a document may nest. No StreamJob nests half as deep; the API server
/// refuses anything deeper anyway (there is no field of free-form content).
pub const MAX_NESTING: usize = 64;

/// The most values a document may expand to (aliases repeat what they refer to).
pub const MAX_VALUES: usize = 200_000;

/// One document of a file, as JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// The document, converted as kubectl converts it.
    pub value: Value,
    /// The line it starts at (1-based).
    pub line: usize,
}

/// Why a file is not YAML kubectl would read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct YamlError {
    /// The line (1-based).
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

/// A collection being built.
enum Frame {
    Sequence {
        anchor: usize,
        items: Vec<Value>,
    },
    Mapping {
        anchor: usize,
        entries: Map<String, Value>,
        key: Option<Key>,
    },
}

/// A mapping key waiting for its value.
enum Key {
    Name(String),
    Merge,
}

/// Every non-empty document of `text`, in order.
pub fn documents(text: &str) -> Result<Vec<Document>, YamlError> {
    let mut parser = Parser::new_from_str(text);
    let mut documents = Vec::new();
    let mut anchors: Vec<Option<(Value, usize)>> = Vec::new();
    let mut stack: Vec<Frame> = Vec::new();
    let mut root: Option<Value> = None;
    let mut start_line = 1;
    let mut values = 0usize;
    loop {
        let (event, marker) = parser.next_token().map_err(|error| YamlError {
            line: error.marker().line(),
            message: error.info().to_string(),
        })?;
        let line = marker.line();
        let fail = |message: String| YamlError { line, message };
        let value = match event {
            Event::StreamEnd => break,
            Event::Nothing | Event::StreamStart => continue,
            Event::DocumentStart => {
                start_line = line;
                root = None;
                anchors.clear();
                values = 0;
                continue;
            }
            Event::DocumentEnd => {
                match root.take() {
                    None | Some(Value::Null) => {}
                    Some(value) => documents.push(Document {
                        value,
                        line: start_line,
                    }),
                }
                continue;
            }
            Event::SequenceStart(anchor, ref tag) | Event::MappingStart(anchor, ref tag) => {
                if let Some(tag) = tag
                    .as_ref()
                    .filter(|tag| !is_core_tag(tag, &["seq", "map"]))
                {
                    return Err(fail(format!(
                        "the tag {}{} is not supported: remove it",
                        tag.handle, tag.suffix
                    )));
                }
                if stack.len() >= MAX_NESTING {
                    return Err(fail(format!(
                        "the document nests more than {MAX_NESTING} levels deep; no StreamJob does"
                    )));
                }
                stack.push(if matches!(event, Event::SequenceStart(..)) {
                    Frame::Sequence {
                        anchor,
                        items: Vec::new(),
                    }
                } else {
                    Frame::Mapping {
                        anchor,
                        entries: Map::new(),
                        key: None,
                    }
                });
                continue;
            }
            Event::SequenceEnd | Event::MappingEnd => match stack.pop() {
                Some(Frame::Sequence { anchor, items }) => {
                    remember(&mut anchors, anchor, Value::Array(items), &mut values)
                        .map_err(fail)?
                }
                Some(Frame::Mapping {
                    anchor, entries, ..
                }) => remember(&mut anchors, anchor, Value::Object(entries), &mut values)
                    .map_err(fail)?,
                None => return Err(fail("a collection ends that never started".to_string())),
            },
            Event::Alias(anchor) => {
                let Some(Some((value, size))) = anchors.get(anchor) else {
                    return Err(fail("an alias refers to an unknown anchor".to_string()));
                };
                values = values.saturating_add(*size);
                if values > MAX_VALUES {
                    return Err(fail(format!(
                        "the document expands to more than {MAX_VALUES} values (through aliases)"
                    )));
                }
                value.clone()
            }
            Event::Scalar(text, style, anchor, tag) => {
                // A plain `<<` key merges the mapping (or mappings) given as its value.
                if let Some(Frame::Mapping {
                    key: key @ None, ..
                }) = stack.last_mut()
                    && style == TScalarStyle::Plain
                    && tag.is_none()
                    && text == "<<"
                {
                    *key = Some(Key::Merge);
                    continue;
                }
                let value = scalar(&text, style, tag.as_ref()).map_err(fail)?;
                remember(&mut anchors, anchor, value, &mut values).map_err(fail)?
            }
        };
        // Attach the finished value to its parent.
        match stack.last_mut() {
            None => root = Some(value),
            Some(Frame::Sequence { items, .. }) => items.push(value),
            Some(Frame::Mapping { entries, key, .. }) => match key.take() {
                None => *key = Some(Key::Name(key_string(value).map_err(fail)?)),
                Some(Key::Name(name)) => {
                    entries.insert(name, value);
                }
                Some(Key::Merge) => merge(entries, value).map_err(fail)?,
            },
        }
    }
    Ok(documents)
}

/// Records a finished value under its anchor, if it has one, and counts it.
fn remember(
    anchors: &mut Vec<Option<(Value, usize)>>,
    anchor: usize,
    value: Value,
    values: &mut usize,
) -> Result<Value, String> {
    *values += 1;
    if *values > MAX_VALUES {
        return Err(format!("the document has more than {MAX_VALUES} values"));
    }
    if anchor > 0 {
        if anchors.len() <= anchor {
            anchors.resize(anchor + 1, None);
        }
        anchors[anchor] = Some((value.clone(), size(&value)));
    }
    Ok(value)
}

/// The number of values in `value`, itself included.
fn size(value: &Value) -> usize {
    let mut count = 0;
    let mut pending = vec![value];
    while let Some(value) = pending.pop() {
        count += 1;
        match value {
            Value::Array(items) => pending.extend(items),
            Value::Object(entries) => pending.extend(entries.values()),
            _ => {}
        }
    }
    count
}

/// `<<: value`: merges a mapping, or a list of mappings (earlier ones win), into
/// `entries`; as in go-yaml v2, merged keys replace those already set and keys written
/// after the merge replace merged ones.
fn merge(entries: &mut Map<String, Value>, value: Value) -> Result<(), String> {
    let invalid = || "a merge key (<<) needs a mapping or a list of mappings".to_string();
    match value {
        Value::Object(merged) => entries.extend(merged),
        Value::Array(list) => {
            for item in list.into_iter().rev() {
                match item {
                    Value::Object(merged) => entries.extend(merged),
                    _ => return Err(invalid()),
                }
            }
        }
        _ => return Err(invalid()),
    }
    Ok(())
}

/// A mapping key as sigs.k8s.io/yaml writes it in JSON.
fn key_string(value: Value) -> Result<String, String> {
    match value {
        Value::String(text) => Ok(text),
        Value::Bool(boolean) => Ok(boolean.to_string()),
        Value::Number(number) => Ok(number.to_string()),
        Value::Null => Err("a mapping key is null, which JSON cannot hold: quote it".to_string()),
        Value::Array(_) | Value::Object(_) => {
            Err("a mapping key is a list or a mapping, which JSON cannot hold".to_string())
        }
    }
}

fn is_core_tag(tag: &Tag, names: &[&str]) -> bool {
    (tag.handle == "!!" || tag.handle == "tag:yaml.org,2002:")
        && names.contains(&tag.suffix.as_str())
}

/// The value of a scalar: a quoted or block scalar is a string; a plain one is resolved
/// by the YAML 1.1 rules of go-yaml v2.
fn scalar(text: &str, style: TScalarStyle, tag: Option<&Tag>) -> Result<Value, String> {
    let resolved = if style == TScalarStyle::Plain {
        resolve_plain(text)?
    } else {
        Value::String(text.to_string())
    };
    let Some(tag) = tag else {
        return Ok(resolved);
    };
    if tag.handle == "!" && tag.suffix.is_empty() {
        return Ok(Value::String(text.to_string()));
    }
    let matches = |name: &str| is_core_tag(tag, &[name]);
    if matches("str") {
        return Ok(Value::String(text.to_string()));
    }
    let plain = resolve_plain(text)?;
    let fits = (matches("int") && (plain.is_i64() || plain.is_u64()))
        || (matches("float") && plain.is_number())
        || (matches("bool") && plain.is_boolean())
        || (matches("null") && plain.is_null());
    if fits {
        Ok(plain)
    } else {
        Err(format!(
            "{text:?} cannot be read as {}{}",
            tag.handle, tag.suffix
        ))
    }
}

/// go-yaml v2's resolution of a plain scalar.
fn resolve_plain(text: &str) -> Result<Value, String> {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Ok(Value::Null),
        "y" | "Y" | "yes" | "Yes" | "YES" | "true" | "True" | "TRUE" | "on" | "On" | "ON" => {
            return Ok(Value::Bool(true));
        }
        "n" | "N" | "no" | "No" | "NO" | "false" | "False" | "FALSE" | "off" | "Off" | "OFF" => {
            return Ok(Value::Bool(false));
        }
        ".nan" | ".NaN" | ".NAN" | ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF"
        | "-.inf" | "-.Inf" | "-.INF" => {
            return Err(format!(
                "{text} is not a number JSON can hold (kubectl refuses it too): quote it if it is meant as a string"
            ));
        }
        _ => {}
    }
    let first = text.as_bytes()[0];
    if first == b'.' {
        return Ok(go_float(text)
            .map(float_value)
            .unwrap_or_else(|| Value::String(text.to_string())));
    }
    if !(first.is_ascii_digit() || first == b'+' || first == b'-') {
        return Ok(Value::String(text.to_string()));
    }
    let plain: String = text.chars().filter(|character| *character != '_').collect();
    if let Some(integer) = go_parse_int(&plain) {
        return Ok(Value::from(integer));
    }
    if let Some(unsigned) = go_parse_uint(&plain) {
        return Ok(Value::from(unsigned));
    }
    if is_yaml_float(&plain)
        && let Some(float) = go_float(&plain)
    {
        return Ok(float_value(float));
    }
    let binary = |digits: &str| i64::from_str_radix(digits, 2).ok();
    if let Some(digits) = plain.strip_prefix("0b")
        && let Some(integer) = binary(digits)
    {
        return Ok(Value::from(integer));
    }
    if let Some(digits) = plain.strip_prefix("-0b")
        && let Some(integer) = binary(digits)
    {
        return Ok(Value::from(-integer));
    }
    Ok(Value::String(text.to_string()))
}

/// A float as encoding/json writes it and the API server reads it back: an integral value
/// within int64 is an integer.
fn float_value(float: f64) -> Value {
    const LIMIT: f64 = 9_223_372_036_854_775_808.0; // 2^63
    if float.fract() == 0.0 && float.abs() < LIMIT {
        // The value is integral and within range, so the conversion is exact.
        #[allow(clippy::cast_possible_truncation)]
        return Value::from(float as i64);
    }
    Number::from_f64(float).map_or(Value::Null, Value::Number)
}

/// `^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$`, go-yaml v2's float syntax.
fn is_yaml_float(text: &str) -> bool {
    let bytes = text.as_bytes();
    let mut position = usize::from(matches!(bytes.first(), Some(b'+' | b'-')));
    let digits = |position: &mut usize| {
        let start = *position;
        while bytes.get(*position).is_some_and(u8::is_ascii_digit) {
            *position += 1;
        }
        *position - start
    };
    if bytes.get(position) == Some(&b'.') {
        position += 1;
        if digits(&mut position) == 0 {
            return false;
        }
    } else {
        if digits(&mut position) == 0 {
            return false;
        }
        if bytes.get(position) == Some(&b'.') {
            position += 1;
            digits(&mut position);
        }
    }
    if matches!(bytes.get(position), Some(b'e' | b'E')) {
        position += 1;
        if matches!(bytes.get(position), Some(b'+' | b'-')) {
            position += 1;
        }
        if digits(&mut position) == 0 {
            return false;
        }
    }
    position == bytes.len()
}

/// Go's `strconv.ParseFloat` on the decimal forms YAML produces.
fn go_float(text: &str) -> Option<f64> {
    text.parse::<f64>().ok().filter(|float| float.is_finite())
}

/// Go's `strconv.ParseInt(text, 0, 64)`: an optional sign, then `0x`, `0o`, `0b` or a
/// leading `0` (octal) choose the base.
fn go_parse_int(text: &str) -> Option<i64> {
    let (negative, digits) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    let magnitude = go_parse_uint(digits)?;
    if negative {
        0i64.checked_sub_unsigned(magnitude)
    } else {
        i64::try_from(magnitude).ok()
    }
}

/// Go's `strconv.ParseUint(text, 0, 64)`.
fn go_parse_uint(text: &str) -> Option<u64> {
    let lower = text.to_ascii_lowercase();
    let (radix, digits) = if let Some(rest) = lower.strip_prefix("0x") {
        (16, rest)
    } else if let Some(rest) = lower.strip_prefix("0o") {
        (8, rest)
    } else if let Some(rest) = lower.strip_prefix("0b") {
        (2, rest)
    } else if lower.len() > 1 && lower.starts_with('0') {
        (8, &lower[1..])
    } else {
        (10, lower.as_str())
    };
    if digits.is_empty() || !digits.chars().all(|digit| digit.is_digit(radix)) {
        return None;
    }
    u64::from_str_radix(digits, radix).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn one(text: &str) -> Value {
        let mut documents = documents(text).unwrap();
        assert_eq!(documents.len(), 1, "{text}");
        documents.remove(0).value
    }

    #[test]
    fn plain_scalars_resolve_as_kubectl_resolves_them() {
        let cases = [
            ("yes", json!(true)),
            ("y", json!(true)),
            ("On", json!(true)),
            ("off", json!(false)),
            ("'yes'", json!("yes")),
            ("\"on\"", json!("on")),
            ("~", json!(null)),
            ("null", json!(null)),
            ("010", json!(8)),
            ("0x1F", json!(31)),
            ("0o17", json!(15)),
            ("1_000", json!(1000)),
            ("08", json!(8)),
            ("1.0", json!(1)),
            ("1e3", json!(1000)),
            ("1.5", json!(1.5)),
            ("-2", json!(-2)),
            ("+3", json!(3)),
            ("9223372036854775807", json!(i64::MAX)),
            ("18446744073709551615", json!(u64::MAX)),
            ("2001-12-14", json!("2001-12-14")),
            ("1m", json!("1m")),
            ("kafka:9092", json!("kafka:9092")),
            ("!!str 10", json!("10")),
            ("!!int '10'", json!(10)),
            ("|\n  text\n", json!("text\n")),
        ];
        for (text, expected) in cases {
            // As a mapping's value: a document that is only null is skipped.
            let indented = text.replace('\n', "\n  ");
            assert_eq!(one(&format!("v: {indented}"))["v"], expected, "{text}");
        }
    }

    #[test]
    fn documents_merge_keys_and_repeated_keys_follow_kubectl() {
        let text = "---\n---\na: &base {x: 1, w: 2}\nb:\n  <<: *base\n  w: 3\nc: 1\nc: 2\n---\nnull\n---\n{e: &e {x: 1}, d: [*e]}\n...\n";
        let documents = documents(text).unwrap();
        let values: Vec<&Value> = documents.iter().map(|document| &document.value).collect();
        assert_eq!(
            values,
            [
                &json!({"a": {"x": 1, "w": 2}, "b": {"x": 1, "w": 3}, "c": 2}),
                &json!({"e": {"x": 1}, "d": [{"x": 1}]}),
            ]
        );
        assert_eq!(documents[0].line, 2, "the line of its ---");
        assert_eq!(
            one("{on: a, 1: b, 0x10: c}"),
            json!({"true": "a", "1": "b", "16": "c"})
        );
        assert_eq!(
            one("a: {x: 1}\nb: {w: 2}\nc: {<<: [{x: 1}, {x: 2, z: 3}]}"),
            json!({"a": {"x": 1}, "b": {"w": 2}, "c": {"x": 1, "z": 3}})
        );
    }

    #[test]
    fn hostile_documents_are_refused_without_exhausting_anything() {
        let deep = format!("{}1{}", "[".repeat(100), "]".repeat(100));
        // The parser has a limit of its own, below what would exhaust a stack.
        let deeper = format!("{}1{}", "[".repeat(100_000), "]".repeat(100_000));
        // Each level ten aliases of the one before, in block style: a million values.
        let mut laughs = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for (level, previous) in [("b", "a"), ("c", "b"), ("d", "c"), ("e", "d"), ("f", "e")] {
            laughs.push_str(&format!("{level}: &{level}\n"));
            laughs.push_str(&format!("- *{previous}\n").repeat(10));
        }
        let cases = [
            (deep.as_str(), "nests more than 64 levels"),
            (deeper.as_str(), "recursion limit exceeded"),
            (laughs.as_str(), "more than 200000 values"),
            ("a: .inf", "not a number JSON can hold"),
            ("{[1]: a}", "a mapping key is a list"),
            ("a: !custom x", "cannot be read as !custom"),
            ("a: [1", "while parsing a flow sequence"),
        ];
        for (text, expected) in cases {
            let error = documents(text).unwrap_err().to_string();
            assert!(error.contains(expected), "{error}");
        }
    }
}
