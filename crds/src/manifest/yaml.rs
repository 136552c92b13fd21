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

use std::borrow::Cow;

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

/// The most tabs after a `:` that are rewritten to spaces in one document (see
/// [`first_document`]); each costs a parse of the document.
const MAX_TAB_REWRITES: usize = 100;

/// A file's bytes as kubectl reads them: a byte-order mark selects UTF-16 (little or big
/// endian) or UTF-8 and is dropped, and every byte that is not valid UTF-8 (or an
/// unpaired UTF-16 surrogate) becomes U+FFFD, as `unicode.BOMOverride(unicode.UTF8.NewDecoder())`
/// does in kubectl's file reader.
pub fn decode(bytes: &[u8]) -> Cow<'_, str> {
    let utf16 = |big_endian: bool, body: &[u8]| {
        let units = body.chunks(2).map(|pair| match pair {
            [high, low] if big_endian => u16::from_be_bytes([*high, *low]),
            [low, high] => u16::from_le_bytes([*low, *high]),
            // An odd byte at the end: not a code unit, decoded as U+FFFD below.
            _ => 0xDC00,
        });
        Cow::Owned(
            char::decode_utf16(units)
                .map(|unit| unit.unwrap_or(char::REPLACEMENT_CHARACTER))
                .collect(),
        )
    };
    match bytes {
        [0xFF, 0xFE, body @ ..] => utf16(false, body),
        [0xFE, 0xFF, body @ ..] => utf16(true, body),
        [0xEF, 0xBB, 0xBF, body @ ..] => lossy_utf8(body),
        body => lossy_utf8(body),
    }
}

/// `bytes` as UTF-8, each byte of an invalid sequence replaced by U+FFFD (as Go does,
/// where Rust's `from_utf8_lossy` replaces a whole sequence by one).
pub fn lossy_utf8(bytes: &[u8]) -> Cow<'_, str> {
    if let Ok(text) = std::str::from_utf8(bytes) {
        return Cow::Borrowed(text);
    }
    let mut text = String::with_capacity(bytes.len() + 16);
    for chunk in bytes.utf8_chunks() {
        text.push_str(chunk.valid());
        for _ in chunk.invalid() {
            text.push(char::REPLACEMENT_CHARACTER);
        }
    }
    Cow::Owned(text)
}

/// A part of a file between two `---` lines, as kubectl's document reader cuts it.
struct Chunk<'a> {
    text: &'a str,
    /// The line of the file it starts at (1-based).
    first_line: usize,
}

/// Cuts `text` as k8s.io/apimachinery's `YAMLReader` does before any YAML is parsed:
/// every line that starts with `---` ends a document, and only spaces or a comment may
/// follow the `---` on it (`--- {a: 1}`, `---a` and `----` are refused). A `%YAML`
/// directive therefore ends up in a document of its own, which go-yaml refuses.
fn split(text: &str) -> Result<Vec<Chunk<'_>>, YamlError> {
    let mut chunks = Vec::new();
    let (mut start, mut first_line) = (0, 1);
    let mut offset = 0;
    for (index, line) in text.split_inclusive('\n').enumerate() {
        let end = offset + line.len();
        if let Some(rest) = line.strip_prefix("---") {
            let rest = rest.trim();
            if !rest.is_empty() && !rest.starts_with('#') {
                return Err(YamlError {
                    line: index + 1,
                    message: format!(
                        "invalid Yaml document separator: {rest} (kubectl cuts documents at every line that starts with ---, and refuses anything but a comment after it: put the content on the next line)"
                    ),
                });
            }
            if offset > start {
                chunks.push(Chunk {
                    text: &text[start..offset],
                    first_line,
                });
            }
            start = end;
            first_line = index + 2;
        }
        offset = end;
    }
    if text.len() > start {
        chunks.push(Chunk {
            text: &text[start..],
            first_line,
        });
    }
    Ok(chunks)
}

/// Whether go-yaml reads `character`: it refuses control characters other than tab and
/// line breaks, DEL, surrogates and U+FFFE/U+FFFF, anywhere in a document.
fn readable(character: char) -> bool {
    matches!(character,
        '\t' | '\n' | '\r' | ' '..='~' | '\u{85}' | '\u{A0}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

/// Refuses a control character, as go-yaml does.
fn check_characters(text: &str) -> Result<(), YamlError> {
    let Some(position) = text.find(|character| !readable(character)) else {
        return Ok(());
    };
    let character = text[position..].chars().next().unwrap_or_default();
    Err(YamlError {
        line: text[..position].matches('\n').count() + 1,
        message: format!(
            "control characters are not allowed (U+{:04X}), as kubectl's YAML reader refuses them: remove it, or write it as an escape in a double-quoted string (\"\\u{:04X}\")",
            u32::from(character),
            u32::from(character)
        ),
    })
}

/// Refuses a tab after the `-` of a block sequence entry (`-<TAB>filter: …`), which
/// go-yaml refuses ("found character that cannot start any token") and yaml-rust2 would
/// read. The scanner's `BlockEntry` token is marked after the blanks that follow its `-`.
fn check_tabs_after_dashes(text: &str) -> Result<(), YamlError> {
    use yaml_rust2::scanner::{Scanner, TokenType};
    let bytes = text.as_bytes();
    // From character index (the scanner's) to byte offset, moving forward.
    let (mut characters, mut offset) = (0usize, 0usize);
    for token in Scanner::new(text.chars()) {
        if token.1 != TokenType::BlockEntry {
            continue;
        }
        let index = token.0.index();
        if index < characters {
            (characters, offset) = (0, 0);
        }
        for character in text[offset..].chars().take(index - characters) {
            offset += character.len_utf8();
        }
        characters = index;
        let mut position = offset;
        let mut tab = false;
        while position > 0 && matches!(bytes[position - 1], b' ' | b'\t') {
            tab |= bytes[position - 1] == b'\t';
            position -= 1;
        }
        if tab && position > 0 && bytes[position - 1] == b'-' {
            return Err(YamlError {
                line: token.0.line(),
                message: "found character that cannot start any token: kubectl's YAML reader refuses a tab after the '-' of a list item: use spaces".to_string(),
            });
        }
    }
    Ok(())
}

/// Every non-empty document of `text`, in order, read as kubectl reads them: cut at
/// `---` lines, then the first YAML document of each part converted to JSON.
pub fn documents(text: &str) -> Result<Vec<Document>, YamlError> {
    let mut documents = Vec::new();
    // kubectl reads a file whose first character is `{` as a stream of JSON objects, and
    // falls back to YAML when the first object is not JSON (a comment, a trailing comma).
    let mut first_line = 1;
    let mut text = text;
    if text.trim_start().starts_with('{') {
        let (objects, rest) = json_stream(text)?;
        match (objects.len(), rest) {
            (_, None) => return Ok(objects),
            (0, Some(_)) => {}
            (_, Some(offset)) => {
                first_line += text[..offset].matches('\n').count();
                text = &text[offset..];
                documents = objects;
            }
        }
    }
    for chunk in split(text)? {
        let chunk = Chunk {
            first_line: chunk.first_line + first_line - 1,
            ..chunk
        };
        let shift = |mut error: YamlError| {
            error.line += chunk.first_line - 1;
            error
        };
        check_characters(chunk.text).map_err(shift)?;
        check_tabs_after_dashes(chunk.text).map_err(shift)?;
        let mut text = Cow::Borrowed(chunk.text);
        let mut rewrites = 0;
        let document = loop {
            match first_document(&text) {
                Ok(document) => break document,
                Err(Failure::TabAfterColon(error, index)) if rewrites < MAX_TAB_REWRITES => {
                    // go-yaml takes a tab after the `:` of a key as the separator, where
                    // yaml-rust2 wants a space: rewrite it to a space and read again.
                    if !tab_to_space(text.to_mut(), index) {
                        return Err(shift(error));
                    }
                    rewrites += 1;
                }
                Err(Failure::Yaml(error) | Failure::TabAfterColon(error, _)) => {
                    return Err(shift(error));
                }
            }
        };
        if let Some(mut document) = document {
            document.line += chunk.first_line - 1;
            documents.push(document);
        }
    }
    Ok(documents)
}

/// The JSON objects at the start of `text`, as Go's json.Decoder reads a stream of them,
/// with the byte offset where JSON stops when it does not reach the end. As in kubectl,
/// two objects read and then a syntax error is an error; with fewer, the rest is YAML.
fn json_stream(text: &str) -> Result<(Vec<Document>, Option<usize>), YamlError> {
    let mut documents = Vec::new();
    let mut stream = serde_json::Deserializer::from_str(text).into_iter::<Value>();
    let mut offset = 0;
    loop {
        // The offset before the whitespace of the next value: where YAML would resume.
        let start = offset + (text[offset..].len() - text[offset..].trim_start().len());
        match stream.next() {
            None => return Ok((documents, None)),
            Some(Ok(mut value)) => {
                offset = stream.byte_offset();
                normalize_numbers(&mut value);
                if !value.is_null() {
                    documents.push(Document {
                        value,
                        line: text[..start].matches('\n').count() + 1,
                    });
                }
            }
            Some(Err(error)) if documents.len() > 1 => {
                return Err(YamlError {
                    line: error.line(),
                    message: format!(
                        "the file is a stream of JSON objects, and this one is not JSON: {error}"
                    ),
                });
            }
            Some(Err(_)) => return Ok((documents, Some(offset))),
        }
    }
}

/// Numbers as kubectl sends them: Go writes an integral float (`2.0`) as an integer.
fn normalize_numbers(value: &mut Value) {
    let mut pending = vec![value];
    while let Some(value) = pending.pop() {
        match value {
            Value::Number(number) if !(number.is_i64() || number.is_u64()) => {
                if let Some(float) = number.as_f64() {
                    *value = float_value(float);
                }
            }
            Value::Array(items) => pending.extend(items.iter_mut()),
            Value::Object(entries) => pending.extend(entries.values_mut()),
            _ => {}
        }
    }
}

/// Replaces the tabs just before character `index` of `text` (the blanks after a `:`)
/// by spaces; false when there are none.
fn tab_to_space(text: &mut String, index: usize) -> bool {
    let Some((offset, _)) = text.char_indices().nth(index) else {
        return false;
    };
    // Safety of the edit: only ASCII tabs become ASCII spaces, so the text stays UTF-8.
    let mut bytes = std::mem::take(text).into_bytes();
    let mut position = offset;
    let mut changed = false;
    while position > 0 && matches!(bytes[position - 1], b' ' | b'\t') {
        if bytes[position - 1] == b'\t' {
            bytes[position - 1] = b' ';
            changed = true;
        }
        position -= 1;
    }
    *text = String::from_utf8(bytes).unwrap_or_default();
    changed
}

/// Why a part of a file could not be read.
enum Failure {
    Yaml(YamlError),
    /// yaml-rust2 refused a tab after a `:`, before character `.1`.
    TabAfterColon(YamlError, usize),
}

impl From<YamlError> for Failure {
    fn from(error: YamlError) -> Self {
        Failure::Yaml(error)
    }
}

/// The first document of `text` (go-yaml's `Unmarshal` reads only the first), unless it
/// is empty or `null`.
fn first_document(text: &str) -> Result<Option<Document>, Failure> {
    let mut parser = Parser::new_from_str(text);
    let mut anchors: Vec<Option<(Value, usize)>> = Vec::new();
    let mut stack: Vec<Frame> = Vec::new();
    let mut root: Option<Value> = None;
    let mut start_line = 1;
    let mut values = 0usize;
    loop {
        let (event, marker) = parser.next_token().map_err(|error| {
            let yaml = YamlError {
                line: error.marker().line(),
                message: error.info().to_string(),
            };
            if error.info() == "':' must be followed by a valid YAML whitespace" {
                Failure::TabAfterColon(yaml, error.marker().index())
            } else {
                Failure::Yaml(yaml)
            }
        })?;
        let line = marker.line();
        let fail = |message: String| YamlError { line, message };
        let value = match event {
            Event::StreamEnd => return Ok(None),
            Event::Nothing | Event::StreamStart => continue,
            Event::DocumentStart => {
                start_line = line;
                root = None;
                anchors.clear();
                values = 0;
                continue;
            }
            Event::DocumentEnd => {
                return Ok(match root.take() {
                    None | Some(Value::Null) => None,
                    Some(value) => Some(Document {
                        value,
                        line: start_line,
                    }),
                });
            }
            // go-yaml v2 ignores the tag of a list or mapping, whatever it is.
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                if stack.len() >= MAX_NESTING {
                    return Err(Failure::Yaml(fail(format!(
                        "the document nests more than {MAX_NESTING} levels deep; no StreamJob does"
                    ))));
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
                None => {
                    return Err(Failure::Yaml(fail(
                        "a collection ends that never started".to_string(),
                    )));
                }
            },
            Event::Alias(anchor) => {
                let Some(Some((value, size))) = anchors.get(anchor) else {
                    return Err(Failure::Yaml(fail(
                        "an alias refers to an unknown anchor".to_string(),
                    )));
                };
                values = values.saturating_add(*size);
                if values > MAX_VALUES {
                    return Err(Failure::Yaml(fail(format!(
                        "the document expands to more than {MAX_VALUES} values (through aliases)"
                    ))));
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
    if matches("binary") {
        // Decoded into the string of its bytes, as go-yaml v2 does.
        return base64(text)
            .map(|bytes| Value::String(lossy_utf8(&bytes).into_owned()))
            .ok_or_else(|| format!("!!binary value contains invalid base64 data: {text:?}"));
    }
    if !is_core_tag(tag, &["int", "float", "bool", "null", "timestamp"]) {
        // A tag go-yaml cannot resolve (`!custom`, `!!map` on a scalar) leaves the text
        // as a string.
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

/// Go's `base64.StdEncoding.DecodeString`: padded standard base64, line breaks ignored.
fn base64(text: &str) -> Option<Vec<u8>> {
    let digits: Vec<u8> = text
        .bytes()
        .filter(|byte| !matches!(byte, b'\r' | b'\n'))
        .collect();
    if !digits.len().is_multiple_of(4) {
        return None;
    }
    let value = |byte: u8| -> Option<u32> {
        Some(u32::from(match byte {
            b'A'..=b'Z' => byte - b'A',
            b'a'..=b'z' => byte - b'a' + 26,
            b'0'..=b'9' => byte - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        }))
    };
    let mut bytes = Vec::with_capacity(digits.len() / 4 * 3);
    let groups = digits.len() / 4;
    for (index, group) in digits.chunks(4).enumerate() {
        let padding = group.iter().rev().take_while(|byte| **byte == b'=').count();
        if padding > 2 || (padding > 0 && index + 1 != groups) {
            return None;
        }
        let mut word = 0u32;
        for byte in &group[..4 - padding] {
            word = word << 6 | value(*byte)?;
        }
        word <<= 6 * padding;
        let [_, first, second, third] = word.to_be_bytes();
        bytes.extend_from_slice(&[first, second, third][..3 - padding]);
    }
    Some(bytes)
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
        assert_eq!(documents[0].line, 3, "the line after its ---");
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
            ("a: !!binary '###'", "invalid base64"),
            ("a: [1", "while parsing a flow sequence"),
        ];
        for (text, expected) in cases {
            let error = documents(text).unwrap_err().to_string();
            assert!(error.contains(expected), "{error}");
        }
    }

    #[test]
    fn files_are_decoded_as_kubectl_decodes_them() {
        let utf16 = |big_endian: bool, text: &str| {
            let mut bytes = if big_endian {
                vec![0xFE, 0xFF]
            } else {
                vec![0xFF, 0xFE]
            };
            for unit in text.encode_utf16() {
                bytes.extend(if big_endian {
                    unit.to_be_bytes()
                } else {
                    unit.to_le_bytes()
                });
            }
            bytes
        };
        assert_eq!(decode(&utf16(false, "a: é\n")), "a: é\n");
        assert_eq!(decode(&utf16(true, "a: 😀\n")), "a: 😀\n");
        assert_eq!(decode(b"\xEF\xBB\xBFa: 1"), "a: 1");
        // Each byte of an invalid sequence is one U+FFFD, as in Go.
        assert_eq!(
            decode(b"a: caf\xE9\xE2\x82"),
            "a: caf\u{FFFD}\u{FFFD}\u{FFFD}"
        );
        assert_eq!(decode(b"\xFF\xFEa\x00\x00\xD8"), "a\u{FFFD}");
    }

    #[test]
    fn documents_are_cut_at_separator_lines_first() {
        let text = "# one\na: 1\n--- # comment\n---\nb: 2\n...\nc: 3\n---\n";
        let read = documents(text).unwrap();
        let values: Vec<&Value> = read.iter().map(|document| &document.value).collect();
        // Only the first YAML document of each part is read, as go-yaml's Unmarshal does.
        assert_eq!(values, [&json!({"a": 1}), &json!({"b": 2})]);
        assert_eq!(read[1].line, 5);
        for (text, expected) in [
            ("--- {a: 1}\n", "invalid Yaml document separator: {a: 1}"),
            ("a: 1\n----\n", "invalid Yaml document separator: -"),
            ("%YAML 1.1\n---\na: 1\n", "line 2"),
            (
                "a: 1\n---\nb: \"x\u{7}\"\n",
                "line 3: control characters are not allowed (U+0007)",
            ),
            (
                "a: \"\u{7f}\"\n",
                "control characters are not allowed (U+007F)",
            ),
            (
                "a:\n-\tb\n",
                "line 2: found character that cannot start any token",
            ),
            ("a:\n- \tb\n", "a tab after the '-'"),
        ] {
            let error = documents(text).map(|_| ()).unwrap_err().to_string();
            assert!(error.contains(expected), "{text:?}: {error}");
        }
    }

    #[test]
    fn yaml_details_follow_go_yaml() {
        assert_eq!(
            one("a:\t2\nb: {c:\t3, d: 4}\ne:\t\tx y\n"),
            json!({"a": 2, "b": {"c": 3, "d": 4}, "e": "x y"})
        );
        assert_eq!(one("a: [\"x\ty\", 1]\n"), json!({"a": ["x\ty", 1]}));
        assert_eq!(
            one("a: !custom 10\nb: !!binary aGVsbG8=\nc: !thing {d: 1}\ne: !!binary /w==\n"),
            json!({"a": "10", "b": "hello", "c": {"d": 1}, "e": "\u{FFFD}"})
        );
        assert_eq!(one("a: \"\u{85}\u{a0}\"\n"), json!({"a": "\u{85}\u{a0}"}));
    }

    #[test]
    fn a_file_that_starts_with_a_brace_is_a_json_stream() {
        let read = documents("{\"a\": 1.0}\n{\"b\": [2]}\n").unwrap();
        let values: Vec<&Value> = read.iter().map(|document| &document.value).collect();
        assert_eq!(values, [&json!({"a": 1}), &json!({"b": [2]})]);
        assert_eq!(read[1].line, 2);
        // Not JSON from the first object: YAML, as kubectl falls back to it.
        assert_eq!(one("{a: 1, b: [2,],}\n"), json!({"a": 1, "b": [2]}));
        // One object, then YAML.
        let read = documents("{\"a\": 1}\n---\nb: 2\n").unwrap();
        assert_eq!(read.len(), 2);
        assert_eq!(read[1].value, json!({"b": 2}));
        assert_eq!(read[1].line, 3);
        let error = documents("{\"a\": 1}\n{\"b\": 2}\n{c: 3}\n").unwrap_err();
        assert!(
            error.to_string().contains("stream of JSON objects"),
            "{error}"
        );
    }
}
