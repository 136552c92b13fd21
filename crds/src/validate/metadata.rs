//! `metadata`, checked as the API server checks the `ObjectMeta` of every object: its
//! fields and their types, the name (a DNS subdomain, which `kubectl apply` requires),
//! the namespace, label and annotation keys and values, finalizers.

use serde_json::{Map, Value};

use super::FieldError;
use super::schema::{kind_of, unknown_field};
use crate::manifest::MAX_ANNOTATION_BYTES;
use crate::messages;

/// The fields of `ObjectMeta`, with the JSON type each must have.
const FIELDS: [(&str, Kind); 15] = [
    ("name", Kind::String),
    ("generateName", Kind::String),
    ("namespace", Kind::String),
    ("selfLink", Kind::String),
    ("uid", Kind::String),
    ("resourceVersion", Kind::String),
    ("generation", Kind::Integer),
    ("creationTimestamp", Kind::String),
    ("deletionTimestamp", Kind::String),
    ("deletionGracePeriodSeconds", Kind::Integer),
    ("labels", Kind::StringMap),
    ("annotations", Kind::StringMap),
    ("ownerReferences", Kind::List),
    ("finalizers", Kind::List),
    ("managedFields", Kind::List),
];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    String,
    Integer,
    StringMap,
    List,
}

/// Checks `metadata` (`None` when the manifest has none).
pub(crate) fn check(metadata: Option<&Value>, errors: &mut Vec<FieldError>) {
    let mut add = |field: String, message: String| errors.push(FieldError { field, message });
    let empty = Map::new();
    let metadata = match metadata {
        None | Some(Value::Null) => &empty,
        Some(Value::Object(fields)) => fields,
        Some(other) => {
            add(
                "metadata".to_string(),
                format!("must be a mapping of fields, not {}", kind_of(other)),
            );
            return;
        }
    };
    let known: Vec<&str> = FIELDS.iter().map(|(name, _)| *name).collect();
    for (name, value) in metadata {
        let field = format!("metadata.{name}");
        let Some((_, kind)) = FIELDS.iter().find(|(known, _)| known == name) else {
            add(field, unknown_field(name, &known));
            continue;
        };
        let fits = match kind {
            _ if value.is_null() => true,
            Kind::String => value.is_string(),
            Kind::Integer => value.is_i64(),
            Kind::StringMap => value.is_object(),
            Kind::List => value.is_array(),
        };
        if !fits {
            let wanted = match kind {
                Kind::String => "a string",
                Kind::Integer => "an integer",
                Kind::StringMap => "a mapping of strings",
                Kind::List => "a list",
            };
            add(field, format!("must be {wanted}, not {}", kind_of(value)));
            continue;
        }
        if *kind == Kind::StringMap
            && let Some(entries) = value.as_object()
        {
            for (key, entry) in entries {
                // A null value reads as "", as Go decodes it.
                if !(entry.is_string() || entry.is_null()) {
                    add(
                        format!("{field}.{key}"),
                        format!(
                            "must be a string, not {}: quote it (\"{entry}\"); YAML reads unquoted yes, no, on, off, y and n as booleans",
                            kind_of(entry)
                        ),
                    );
                }
            }
        }
    }

    match metadata.get("name").and_then(Value::as_str) {
        None | Some("") => add(
            "metadata.name".to_string(),
            if metadata.contains_key("generateName") {
                "is required: kubectl apply cannot use generateName, give the StreamJob a name"
            } else {
                "is required: give the StreamJob a name"
            }
            .to_string(),
        ),
        Some(name) => {
            if let Some(problem) = dns_subdomain(name) {
                add(
                    "metadata.name".to_string(),
                    format!("{name:?} is not a valid name: {problem}"),
                );
            } else if let Err(error) = super::validate_name(name) {
                // The CRD's rule on its root (`messages::RULE_JOB_NAME`), in Rust.
                add(error.field, error.message);
            }
        }
    }
    if let Some(namespace) = metadata.get("namespace").and_then(Value::as_str)
        && let Some(problem) = dns_label(namespace)
    {
        add(
            "metadata.namespace".to_string(),
            format!("{namespace:?} is not a valid namespace: {problem}"),
        );
    }
    if let Some(labels) = metadata.get("labels").and_then(Value::as_object) {
        for (key, value) in labels {
            let field = format!("metadata.labels.{key}");
            if let Some(problem) = qualified_name(key) {
                add(field.clone(), format!("the label key {key:?} {problem}"));
            }
            if let Some(value) = value.as_str()
                && let Some(problem) = label_value(value)
            {
                add(field, format!("the label value {value:?} {problem}"));
            }
        }
    }
    if let Some(annotations) = metadata.get("annotations").and_then(Value::as_object) {
        let mut bytes = 0usize;
        for (key, value) in annotations {
            // The API server checks annotation keys lowercased (label keys as they are).
            if let Some(problem) = qualified_name(&key.to_lowercase()) {
                add(
                    format!("metadata.annotations.{key}"),
                    format!("the annotation key {key:?} {problem}"),
                );
            }
            bytes += key.len() + value.as_str().map_or(0, str::len);
        }
        if bytes > MAX_ANNOTATION_BYTES {
            add(
                "metadata.annotations".to_string(),
                format!(
                    "take {bytes} bytes, more than the {MAX_ANNOTATION_BYTES} an object may have"
                ),
            );
        }
    }
    if let Some(references) = metadata.get("ownerReferences").and_then(Value::as_array) {
        owner_references(references, &mut add);
    }
    if let Some(finalizers) = metadata.get("finalizers").and_then(Value::as_array) {
        for (index, finalizer) in finalizers.iter().enumerate() {
            let field = format!("metadata.finalizers[{index}]");
            match finalizer.as_str() {
                Some(name) => {
                    if let Some(problem) = qualified_name(name) {
                        add(field, format!("the finalizer {name:?} {problem}"));
                    }
                }
                None => add(
                    field,
                    format!("must be a string, not {}", kind_of(finalizer)),
                ),
            }
        }
    }
}

/// The fields of an `OwnerReference`, and whether each is a string (else a bool).
const OWNER_REFERENCE_FIELDS: [(&str, bool); 6] = [
    ("apiVersion", true),
    ("kind", true),
    ("name", true),
    ("uid", true),
    ("controller", false),
    ("blockOwnerDeletion", false),
];

/// Checks `metadata.ownerReferences` as the API server does: each names the owner's
/// apiVersion, kind, name and uid, an Event is never an owner, and at most one is the
/// controller.
fn owner_references(references: &[Value], add: &mut impl FnMut(String, String)) {
    let known: Vec<&str> = OWNER_REFERENCE_FIELDS
        .iter()
        .map(|(name, _)| *name)
        .collect();
    let mut controllers = Vec::new();
    for (index, reference) in references.iter().enumerate() {
        let path = format!("metadata.ownerReferences[{index}]");
        let empty = Map::new();
        let fields = match reference {
            Value::Null => &empty,
            Value::Object(fields) => fields,
            other => {
                add(
                    path,
                    format!("must be a mapping of fields, not {}", kind_of(other)),
                );
                continue;
            }
        };
        let mut typed = true;
        for (name, value) in fields {
            let field = format!("{path}.{name}");
            match OWNER_REFERENCE_FIELDS
                .iter()
                .find(|(known, _)| known == name)
            {
                None => add(field, unknown_field(name, &known)),
                Some((_, true)) if !(value.is_string() || value.is_null()) => {
                    typed = false;
                    add(field, format!("must be a string, not {}", kind_of(value)));
                }
                Some((_, false)) if !(value.is_boolean() || value.is_null()) => {
                    typed = false;
                    add(
                        field,
                        format!("must be true or false, not {}", kind_of(value)),
                    );
                }
                Some(_) => {}
            }
        }
        if !typed {
            continue;
        }
        let text = |name: &str| fields.get(name).and_then(Value::as_str).unwrap_or("");
        // Go's schema.ParseGroupVersion: `v1`, `group/version`; more slashes are invalid.
        let api_version = text("apiVersion");
        let (group, version) = match api_version.matches('/').count() {
            0 => ("", api_version),
            1 => api_version.split_once('/').unwrap_or_default(),
            _ => ("", ""),
        };
        if version.is_empty() {
            add(
                format!("{path}.apiVersion"),
                format!(
                    "{api_version:?}: version must not be empty: give the owner's apiVersion, as in v1 or apps/v1"
                ),
            );
        }
        for name in ["kind", "name", "uid"] {
            if text(name).is_empty() {
                add(
                    format!("{path}.{name}"),
                    format!("must not be empty: give the owner's {name}"),
                );
            }
        }
        if group.is_empty() && version == "v1" && text("kind") == "Event" {
            add(
                path,
                "/v1, Kind=Event is disallowed from being an owner".to_string(),
            );
        }
        if fields.get("controller").and_then(Value::as_bool) == Some(true) {
            controllers.push(format!("{}/{}", text("kind"), text("name")));
        }
    }
    if let [first, second, ..] = controllers.as_slice() {
        add(
            "metadata.ownerReferences".to_string(),
            format!(
                "Only one reference can have Controller set to true. Found \"true\" in references for {first} and {second}: keep controller: true on one"
            ),
        );
    }
}

/// Why `name` is not a lowercase RFC 1123 subdomain, if it is not.
pub(crate) fn dns_subdomain(name: &str) -> Option<String> {
    if name.len() > 253 {
        return Some(format!(
            "it has {} characters, at most 253 are allowed",
            name.chars().count()
        ));
    }
    if name.split('.').all(|label| is_dns_label(label, 253)) {
        return None;
    }
    Some("use lowercase letters, digits, '-' and '.', starting and ending with a letter or a digit (as in page-views or page-views.v2)".to_string())
}

/// Whether a StreamJob named `name` can name its workers: an RFC 1035 label (a letter
/// first, no dots) of at most [`messages::MAX_JOB_NAME_LENGTH`] characters.
pub(crate) fn names_workers(name: &str) -> bool {
    is_dns_label(name, messages::MAX_JOB_NAME_LENGTH)
        && name.as_bytes().first().is_some_and(u8::is_ascii_lowercase)
}

/// Why `name` is not a lowercase RFC 1123 label, if it is not.
fn dns_label(name: &str) -> Option<String> {
    (!is_dns_label(name, 63)).then(|| {
        "use at most 63 lowercase letters, digits and '-', starting and ending with a letter or a digit".to_string()
    })
}

fn is_dns_label(label: &str, most: usize) -> bool {
    let bytes = label.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= most
        && bytes
            .iter()
            .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || *byte == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

/// `[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?`, at most `most` characters.
fn is_name_part(name: &str, most: usize) -> bool {
    let bytes = name.as_bytes();
    let edge = |byte: u8| byte.is_ascii_alphanumeric();
    !bytes.is_empty()
        && bytes.len() <= most
        && edge(bytes[0])
        && edge(bytes[bytes.len() - 1])
        && bytes
            .iter()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.'))
}

/// Why `key` is not a qualified name (`[prefix/]name`), if it is not.
fn qualified_name(key: &str) -> Option<String> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix
        && dns_subdomain(prefix).is_some()
    {
        return Some(
            "has a prefix that is not a DNS subdomain (lowercase letters, digits, '-' and '.')"
                .to_string(),
        );
    }
    (!is_name_part(name, 63)).then(|| {
        "is not a valid name: at most 63 letters, digits, '-', '_' and '.', starting and ending with a letter or a digit".to_string()
    })
}

/// Why `value` is not a label value, if it is not.
fn label_value(value: &str) -> Option<String> {
    (!value.is_empty() && !is_name_part(value, 63)).then(|| {
        "is not valid: at most 63 letters, digits, '-', '_' and '.', starting and ending with a letter or a digit (or empty)".to_string()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn metadata_is_checked_as_the_api_server_checks_it() {
        let long = "a".repeat(254);
        let cases = [
            (json!({"name": "page-views"}), ""),
            (
                json!({"name": "a-b-c", "labels": {"app": null, "x.io/y": "z"}}),
                "",
            ),
            (json!({"name": "a".repeat(52)}), ""),
            (
                json!({"name": "a".repeat(53)}),
                "the job's Service and worker pods",
            ),
            (json!({"name": "a".repeat(253)}), "at most 52 lowercase"),
            (json!({"name": "page.views"}), "starting with a letter"),
            (json!({"name": "1page"}), "starting with a letter"),
            (json!({}), "metadata.name: is required"),
            (
                json!({"generateName": "job-"}),
                "metadata.name: is required: kubectl apply cannot use generateName",
            ),
            (
                json!({"name": "Page"}),
                "\"Page\" is not a valid name: use lowercase",
            ),
            (json!({"name": "page_views"}), "is not a valid name"),
            (json!({"name": "café"}), "is not a valid name"),
            (json!({"name": long}), "it has 254 characters, at most 253"),
            (
                json!({"name": 5}),
                "metadata.name: must be a string, not an integer",
            ),
            (
                json!({"name": "x", "labels": {"a": 1}}),
                "metadata.labels.a: must be a string, not an integer",
            ),
            (
                json!({"name": "x", "labels": {"a": true}}),
                "metadata.labels.a: must be a string, not a boolean",
            ),
            (
                json!({"name": "x", "labels": {"a b": "c"}}),
                "the label key \"a b\"",
            ),
            (
                json!({"name": "x", "labels": {"a": "v".repeat(64)}}),
                "the label value",
            ),
            (
                json!({"name": "x", "annotations": {"a": 1}}),
                "metadata.annotations.a: must be a string",
            ),
            (
                json!({"name": "x", "labelz": {}}),
                "metadata.labelz: unknown field \"labelz\": did you mean \"labels\"?",
            ),
            (
                json!({"name": "x", "namespace": "Bad"}),
                "is not a valid namespace",
            ),
            (
                json!({"name": "x", "finalizers": ["bad finalizer"]}),
                "the finalizer \"bad finalizer\"",
            ),
            (
                json!({"name": "x", "generation": "1"}),
                "metadata.generation: must be an integer, not a string",
            ),
            // Annotation keys are checked lowercased, label keys as they are.
            (
                json!({"name": "x", "annotations": {"Example.com/X": "v"}}),
                "",
            ),
            (
                json!({"name": "x", "labels": {"Example.com/x": "v"}}),
                "the label key \"Example.com/x\"",
            ),
            (
                json!({"name": "x", "ownerReferences": [
                    {"apiVersion": "apps/v1", "kind": "Deployment", "name": "d", "uid": "u", "controller": true, "blockOwnerDeletion": true},
                    {"apiVersion": "v1", "kind": "ConfigMap", "name": "c", "uid": "v", "controller": false},
                ]}),
                "",
            ),
            (
                json!({"name": "x", "ownerReferences": [{"name": "o"}]}),
                "metadata.ownerReferences[0].apiVersion: \"\": version must not be empty",
            ),
            (
                json!({"name": "x", "ownerReferences": [{"name": "o"}]}),
                "metadata.ownerReferences[0].uid: must not be empty",
            ),
            (
                json!({"name": "x", "ownerReferences": [null]}),
                "metadata.ownerReferences[0].kind: must not be empty",
            ),
            (
                json!({"name": "x", "ownerReferences": [{"apiVersion": "a/b/c", "kind": "K", "name": "o", "uid": "u"}]}),
                "version must not be empty",
            ),
            (
                json!({"name": "x", "ownerReferences": [{"apiVersion": "v1", "kind": "Event", "name": "o", "uid": "u"}]}),
                "disallowed from being an owner",
            ),
            (
                json!({"name": "x", "ownerReferences": [{"apiVersion": "v1", "kind": "K", "name": "o", "uid": "u", "controler": true}]}),
                "unknown field \"controler\": did you mean \"controller\"?",
            ),
            (
                json!({"name": "x", "ownerReferences": [{"apiVersion": "v1", "kind": "K", "name": "o", "uid": "u", "controller": "yes"}]}),
                "controller: must be true or false, not a string",
            ),
            (
                json!({"name": "x", "ownerReferences": [
                    {"apiVersion": "v1", "kind": "K", "name": "a", "uid": "u", "controller": true},
                    {"apiVersion": "v1", "kind": "K", "name": "b", "uid": "v", "controller": true},
                ]}),
                "Only one reference can have Controller set to true. Found \"true\" in references for K/a and K/b",
            ),
        ];
        for (metadata, expected) in cases {
            let mut errors = Vec::new();
            check(Some(&metadata), &mut errors);
            let messages: Vec<String> = errors.iter().map(ToString::to_string).collect();
            if expected.is_empty() {
                assert!(messages.is_empty(), "{metadata}: {messages:#?}");
            } else {
                assert!(
                    messages.iter().any(|message| message.contains(expected)),
                    "{metadata}: expected {expected:?} in {messages:#?}"
                );
            }
        }
    }
}
