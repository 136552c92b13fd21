//! Manifest files, read as `kubectl apply` reads them and checked as the API server and
//! the controller check them.
//!
//! A file may hold several YAML documents (or be JSON). Each is converted to JSON as
//! kubectl converts it ([`yaml`]); each StreamJob among them is checked in the API
//! server's order: its `metadata`, then the CRD's schema (unknown fields, types, bounds),
//! and only when those hold, the typed spec and [`crate::validate()`]. A `kind: List` is
//! opened and its items checked, as kubectl applies each item. Documents of other kinds
//! are skipped, as a pre-commit check of a folder of mixed manifests expects: validate
//! does not check them (the API server will).

pub mod report;
pub mod yaml;

use serde_json::Value;

use crate::streamjob::StreamJob;
use crate::validate::{CheckedJob, FieldError, ValidationErrors, metadata, schema};

/// The largest manifest file read: the most the API server accepts in one request.
pub const MAX_MANIFEST_BYTES: usize = 3 * 1024 * 1024;

/// The most bytes all annotations of an object may take, keys and values together (the
/// API server's `TotalAnnotationSizeLimitB`).
pub const MAX_ANNOTATION_BYTES: usize = 256 * 1024;

/// The annotation in which `kubectl apply` (client-side) stores the object it applies.
pub const LAST_APPLIED_ANNOTATION: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// The `apiVersion` of a StreamJob.
pub const API_VERSION: &str = "sluice.dev/v1alpha1";

/// Why a manifest could not be read as a StreamJob.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Larger than [`MAX_MANIFEST_BYTES`].
    #[error(
        "the manifest is {bytes} bytes, more than the {MAX_MANIFEST_BYTES} the API server accepts in one request: split it"
    )]
    TooLarge {
        /// Its size.
        bytes: usize,
    },
    /// Not YAML that kubectl reads.
    #[error("failed to read the manifest as YAML: {0}")]
    Yaml(#[from] yaml::YamlError),
    /// A field of the wrong shape, found when reading the typed StreamJob.
    #[error("failed to read the manifest as a StreamJob: {field}: {message}")]
    Field {
        /// Path of the field.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// Another kind of object.
    #[error(
        "the manifest is apiVersion {api_version:?} kind {kind:?}, expected apiVersion \"sluice.dev/v1alpha1\" kind \"StreamJob\""
    )]
    WrongKind {
        /// The apiVersion found.
        api_version: String,
        /// The kind found.
        kind: String,
    },
    /// No document is a StreamJob.
    #[error("the manifest holds no StreamJob (kind: StreamJob, apiVersion: sluice.dev/v1alpha1)")]
    NoStreamJob,
    /// Several StreamJobs where one is expected.
    #[error("the manifest holds {count} StreamJobs where one is expected: give each its own file")]
    SeveralStreamJobs {
        /// How many.
        count: usize,
    },
    /// It is a StreamJob, with problems.
    #[error(transparent)]
    Invalid(#[from] ValidationErrors),
}

/// A StreamJob document of a manifest file, checked.
#[derive(Debug)]
#[non_exhaustive]
pub struct ManifestJob {
    /// Its position in the file, from 1.
    pub document: usize,
    /// The line it starts at.
    pub line: usize,
    /// Its position in the `items` of a `kind: List` document, from 1.
    pub item: Option<usize>,
    /// `metadata.name`, when it is a string.
    pub name: Option<String>,
    /// The StreamJob and its checked form, or what is wrong with it.
    pub result: Result<(StreamJob, CheckedJob), ManifestError>,
}

/// A document that is not a StreamJob, skipped.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SkippedDocument {
    /// Its position in the file, from 1.
    pub document: usize,
    /// Its position in the `items` of a `kind: List` document, from 1.
    pub item: Option<usize>,
    /// Its `apiVersion`.
    pub api_version: String,
    /// Its `kind`.
    pub kind: String,
    /// Its `metadata.name`, if any.
    pub name: Option<String>,
}

/// The documents of a manifest file.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct Manifest {
    /// The StreamJobs (and documents that may be meant as one: no kind, another version).
    pub jobs: Vec<ManifestJob>,
    /// Documents of other kinds.
    pub skipped: Vec<SkippedDocument>,
}

/// Reads a manifest file's bytes as kubectl reads them ([`yaml::decode`]: UTF-16 with a
/// byte-order mark, invalid UTF-8 as U+FFFD) and checks each StreamJob among them.
pub fn load_manifests_bytes(bytes: &[u8]) -> Result<Manifest, ManifestError> {
    // UTF-16 takes up to twice the bytes of the text.
    if bytes.len() > 2 * MAX_MANIFEST_BYTES {
        return Err(ManifestError::TooLarge { bytes: bytes.len() });
    }
    load_manifests(&yaml::decode(bytes))
}

/// Reads every document of a manifest file and checks each StreamJob among them. Fails
/// as a whole only when the file is too large or is not YAML.
pub fn load_manifests(text: &str) -> Result<Manifest, ManifestError> {
    if text.len() > MAX_MANIFEST_BYTES {
        return Err(ManifestError::TooLarge { bytes: text.len() });
    }
    // kubectl's YAML reader skips a UTF-8 byte-order mark (as editors on Windows write one).
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut manifest = Manifest::default();
    for (index, document) in yaml::documents(text)?.into_iter().enumerate() {
        let number = index + 1;
        // kubectl applies each item of a `kind: List` (v1) as an object of its own.
        let is_list = document.value.get("kind").and_then(Value::as_str) == Some("List")
            && document.value.get("items").is_some_and(Value::is_array);
        let objects: Vec<(Option<usize>, Value)> = if is_list {
            let mut value = document.value;
            match value.get_mut("items").map(Value::take) {
                Some(Value::Array(items)) => items
                    .into_iter()
                    .enumerate()
                    .map(|(item, value)| (Some(item + 1), value))
                    .collect(),
                _ => Vec::new(),
            }
        } else {
            vec![(None, document.value)]
        };
        for (item, value) in objects {
            add_object(&mut manifest, number, document.line, item, value);
        }
    }
    Ok(manifest)
}

/// Adds one object of a file to `manifest`: checked when it is (or may be meant as) a
/// StreamJob, else skipped.
fn add_object(
    manifest: &mut Manifest,
    document: usize,
    line: usize,
    item: Option<usize>,
    value: Value,
) {
    let text_of = |name: &str| value.get(name).and_then(Value::as_str);
    let name = value
        .get("metadata")
        .and_then(|metadata| metadata.get("name"))
        .and_then(Value::as_str)
        .map(str::to_string);
    let (api_version, kind) = (text_of("apiVersion"), text_of("kind"));
    let is_stream_job = kind == Some("StreamJob")
        && api_version.is_some_and(|version| version.starts_with("sluice.dev/"));
    if let (Some(api_version), Some(kind), false) = (api_version, kind, is_stream_job) {
        manifest.skipped.push(SkippedDocument {
            document,
            item,
            api_version: api_version.to_string(),
            kind: kind.to_string(),
            name,
        });
        return;
    }
    manifest.jobs.push(ManifestJob {
        document,
        line,
        item,
        name,
        result: load_document(value),
    });
}

/// Reads a manifest file that holds one StreamJob (and maybe documents of other kinds)
/// and checks it.
pub fn load_manifest(text: &str) -> Result<(StreamJob, CheckedJob), ManifestError> {
    let mut manifest = load_manifests(text)?;
    match manifest.jobs.len() {
        1 => manifest.jobs.remove(0).result,
        0 => match manifest.skipped.as_slice() {
            [only] => Err(ManifestError::WrongKind {
                api_version: only.api_version.clone(),
                kind: only.kind.clone(),
            }),
            _ => Err(ManifestError::NoStreamJob),
        },
        count => Err(ManifestError::SeveralStreamJobs { count }),
    }
}

/// The bytes `kubectl apply` (client-side) makes the annotations take: it copies the
/// whole object, as JSON, into [`LAST_APPLIED_ANNOTATION`], so a StreamJob of more than
/// about 256 KiB of JSON cannot be applied that way even when its own annotations are
/// small. An error when that is over [`MAX_ANNOTATION_BYTES`] and the annotations alone
/// are not (those are reported by [`metadata::check`]).
fn last_applied_size(object: &mut Value) -> Option<FieldError> {
    let annotations = object
        .pointer_mut("/metadata/annotations")
        .and_then(Value::as_object_mut);
    // kubectl replaces an annotation of that name the manifest may already have.
    let previous = annotations.map(|annotations| {
        let previous = annotations.remove(LAST_APPLIED_ANNOTATION);
        let own: usize = annotations
            .iter()
            .map(|(key, value)| key.len() + value.as_str().map_or(0, str::len))
            .sum();
        (previous, own)
    });
    let (previous, own) = previous.unwrap_or((None, 0));
    let json = go_json_len(object);
    if let Some(previous) = previous
        && let Some(annotations) = object
            .pointer_mut("/metadata/annotations")
            .and_then(Value::as_object_mut)
    {
        annotations.insert(LAST_APPLIED_ANNOTATION.to_string(), previous);
    }
    // json.Encoder ends the JSON with a newline.
    let total = own + LAST_APPLIED_ANNOTATION.len() + json + 1;
    (own <= MAX_ANNOTATION_BYTES && total > MAX_ANNOTATION_BYTES).then(|| FieldError {
        field: "metadata.annotations".to_string(),
        message: format!(
            "too long for `kubectl apply`: it stores the whole StreamJob ({json} bytes of JSON) in the annotation {LAST_APPLIED_ANNOTATION}, which makes the annotations take about {total} bytes, more than the {MAX_ANNOTATION_BYTES} an object may have: apply it with `kubectl apply --server-side` (or `kubectl create`), which adds no such annotation, or make the StreamJob smaller (its annotations, podTemplate, expressions)"
        ),
    })
}

/// The length of `value` as Go's encoding/json writes it: serde_json's compact form, with
/// `<`, `>` and `&` escaped as `\u003c` and U+2028, U+2029 as `\u2028`, as Go escapes them.
fn go_json_len(value: &Value) -> usize {
    let text = serde_json::to_string(value).unwrap_or_default();
    let escaped: usize = text
        .chars()
        .map(|character| match character {
            '<' | '>' | '&' => 5,
            '\u{2028}' | '\u{2029}' => 3,
            _ => 0,
        })
        .sum();
    text.len() + escaped
}

/// Checks one StreamJob document, in the order the API server does.
fn load_document(mut object: Value) -> Result<(StreamJob, CheckedJob), ManifestError> {
    let api_version = object.get("apiVersion").and_then(Value::as_str);
    let kind = object.get("kind").and_then(Value::as_str);
    if kind.is_some() && api_version.is_some() && api_version != Some(API_VERSION) {
        return Err(ManifestError::WrongKind {
            api_version: api_version.unwrap_or_default().to_string(),
            kind: kind.unwrap_or_default().to_string(),
        });
    }
    let mut errors: Vec<FieldError> = Vec::new();
    for field in ["apiVersion", "kind"] {
        if object.get(field).and_then(Value::as_str).is_none() {
            errors.push(FieldError {
                field: field.to_string(),
                message: format!(
                    "is required: a StreamJob has apiVersion: {API_VERSION} and kind: StreamJob"
                ),
            });
        }
    }
    if !object.is_object() {
        return Err(ValidationErrors {
            errors: vec![FieldError {
                field: "(document)".to_string(),
                message: format!(
                    "must be a mapping of fields, not {}",
                    schema::kind_of(&object)
                ),
            }],
        }
        .into());
    }
    metadata::check(object.get("metadata"), &mut errors);
    if let Some(error) = last_applied_size(&mut object) {
        errors.push(error);
    }
    // The status subresource makes the API server drop `status` on create and update,
    // after its strict field validation has reported fields the schema does not know.
    if let Some(status) = object
        .as_object_mut()
        .and_then(|fields| fields.remove("status"))
        && let Some(schema) = schema::root().pointer("/properties/status")
    {
        schema::check_unknown_fields(&status, schema, "status", &mut errors);
    }
    // The type fields and metadata are checked above; the CRD's schema does not describe
    // them.
    let mut header = serde_json::Map::new();
    if let Some(fields) = object.as_object_mut() {
        for name in ["apiVersion", "kind"] {
            if let Some(value) = fields.remove(name) {
                header.insert(name.to_string(), value);
            }
        }
    }
    let metadata = object
        .as_object_mut()
        .and_then(|fields| fields.remove("metadata"));
    schema::check(&mut object, schema::root(), "", &mut errors);
    if let Some(fields) = object.as_object_mut() {
        fields.extend(header);
    }
    if !errors.is_empty() {
        // As the API server: when the object does not fit the schema, the rules are not
        // evaluated.
        return Err(ValidationErrors { errors }.into());
    }
    if let (Some(fields), Some(mut metadata)) = (object.as_object_mut(), metadata) {
        // Go decodes a null label or annotation as "".
        for map in ["labels", "annotations"] {
            if let Some(entries) = metadata.get_mut(map).and_then(Value::as_object_mut) {
                for value in entries.values_mut() {
                    if value.is_null() {
                        *value = Value::String(String::new());
                    }
                }
            }
        }
        fields.insert("metadata".to_string(), metadata);
    }
    let job: StreamJob = serde_path_to_error::deserialize(object).map_err(|error| {
        let field = error.path().to_string();
        let message = error.into_inner().to_string();
        ManifestError::Field { field, message }
    })?;
    // Stricter than the API server: a savepoint the workers would refuse to restore.
    let initial = crate::validate::initial_savepoint_problem(&job);
    match (crate::validate(&job.spec), initial) {
        (Ok(checked), None) => Ok((job, checked)),
        (Ok(_), Some(error)) => Err(ValidationErrors {
            errors: vec![error],
        }
        .into()),
        (Err(mut invalid), error) => {
            invalid.errors.extend(error);
            Err(invalid.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const JOB: &str = "apiVersion: sluice.dev/v1alpha1\nkind: StreamJob\nmetadata:\n  name: NAME\nspec:\n  kafka: {bootstrapServers: kafka:9092}\n  source: {topics: [in], eventTime: {field: ts}}\n  pipeline:\n  - filter: FILTER\n  sink: {topic: out}\n";

    fn job(name: &str, filter: &str) -> String {
        JOB.replace("NAME", name).replace("FILTER", filter)
    }

    #[test]
    fn each_stream_job_of_a_file_is_checked_and_named() {
        let text = format!(
            "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: settings}}\n---\n{}---\n{}",
            job("good", "event.status == 200"),
            job("bad", "event.status + 1"),
        );
        let manifest = load_manifests(&text).unwrap();
        assert_eq!(
            manifest.skipped,
            [SkippedDocument {
                document: 1,
                item: None,
                api_version: "v1".to_string(),
                kind: "ConfigMap".to_string(),
                name: Some("settings".to_string()),
            }]
        );
        let verdicts: Vec<(usize, Option<&str>, bool)> = manifest
            .jobs
            .iter()
            .map(|job| (job.document, job.name.as_deref(), job.result.is_ok()))
            .collect();
        assert_eq!(verdicts, [(2, Some("good"), true), (3, Some("bad"), false)]);
        let error = manifest.jobs[1].result.as_ref().unwrap_err().to_string();
        assert!(error.contains("spec.pipeline[0].filter"), "{error}");
        assert!(matches!(
            load_manifest(&text),
            Err(ManifestError::SeveralStreamJobs { count: 2 })
        ));
    }

    #[test]
    fn the_api_servers_order_schema_before_rules() {
        // An unknown field and a bad expression: as the API server, the schema's problem
        // is reported and the rules are not run.
        let text = job("typo", "event.status +").replace("  kafka:", "  paralelism: 2\n  kafka:");
        let error = load_manifest(&text).unwrap_err().to_string();
        assert!(error.contains("did you mean \"parallelism\"?"), "{error}");
        assert!(!error.contains("filter"), "{error}");
    }

    #[test]
    fn a_byte_order_mark_is_skipped_as_kubectl_skips_it() {
        let text = format!("\u{feff}{}", job("marked", "event.status == 200"));
        let (job, _) = load_manifest(&text).unwrap();
        assert_eq!(job.metadata.name.as_deref(), Some("marked"));
    }

    #[test]
    fn files_beyond_the_api_servers_limit_are_not_read() {
        let text = "#".repeat(MAX_MANIFEST_BYTES + 1);
        assert!(matches!(
            load_manifests(&text),
            Err(ManifestError::TooLarge { .. })
        ));
    }

    #[test]
    fn the_items_of_a_list_are_checked_as_kubectl_applies_them() {
        let item = |name: &str, filter: &str| {
            job(name, filter)
                .lines()
                .enumerate()
                .map(|(index, line)| {
                    if index == 0 {
                        format!("- {line}\n")
                    } else {
                        format!("  {line}\n")
                    }
                })
                .collect::<String>()
        };
        let text = format!(
            "apiVersion: v1\nkind: List\nitems:\n{}{}- {{apiVersion: v1, kind: ConfigMap, metadata: {{name: c}}}}\n---\n{}",
            item("first", "event.status == 200"),
            item("second", "event.status + 1"),
            job("third", "event.a == 1"),
        );
        let manifest = load_manifests(&text).unwrap();
        let verdicts: Vec<(usize, Option<usize>, Option<&str>, bool)> = manifest
            .jobs
            .iter()
            .map(|job| {
                (
                    job.document,
                    job.item,
                    job.name.as_deref(),
                    job.result.is_ok(),
                )
            })
            .collect();
        assert_eq!(
            verdicts,
            [
                (1, Some(1), Some("first"), true),
                (1, Some(2), Some("second"), false),
                (2, None, Some("third"), true),
            ]
        );
        assert_eq!(manifest.skipped[0].item, Some(3));
    }

    #[test]
    fn kubectl_applys_copy_of_the_object_counts_in_the_annotations() {
        // 140 000 bytes of annotation: under the limit alone, over it with kubectl's copy.
        let annotated = job("annotated", "event.a == 1").replace(
            "  name: annotated\n",
            &format!(
                "  name: annotated\n  annotations: {{a: '{}'}}\n",
                "x".repeat(140_000)
            ),
        );
        let error = load_manifest(&annotated).unwrap_err().to_string();
        assert!(
            error.contains("metadata.annotations: too long for `kubectl apply`"),
            "{error}"
        );
        assert!(error.contains("kubectl apply --server-side"), "{error}");
        // The same in the pod template, 300 000 bytes, and within the limit at 120 000.
        let pod = |size: usize| {
            job("pod", "event.a == 1").replace(
                "  sink: {topic: out}\n",
                &format!(
                    "  sink: {{topic: out}}\n  podTemplate: {{annotations: {{a: '{}'}}}}\n",
                    "x".repeat(size)
                ),
            )
        };
        assert!(load_manifest(&pod(300_000)).is_err());
        load_manifest(&pod(120_000)).unwrap();
        // Over the limit alone: reported once, as the API server words it.
        let alone = job("alone", "event.a == 1").replace(
            "  name: alone\n",
            &format!(
                "  name: alone\n  annotations: {{a: '{}'}}\n",
                "x".repeat(MAX_ANNOTATION_BYTES)
            ),
        );
        let error = load_manifest(&alone).unwrap_err().to_string();
        assert!(!error.contains("kubectl apply`"), "{error}");
        assert!(error.contains("more than the 262144"), "{error}");
    }

    #[test]
    fn status_is_dropped_but_its_unknown_fields_are_not() {
        let with = |status: &str| format!("{}status: {status}\n", job("status", "event.a == 1"));
        load_manifest(&with("{phase: Bogus, replicas: -3}")).unwrap();
        load_manifest(&with("3")).unwrap();
        let error = load_manifest(&with("{phase: Running, conditions: [{bogus: 1}]}"))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("status.conditions[0].bogus: unknown field"),
            "{error}"
        );
    }

    #[test]
    fn bytes_are_read_as_kubectl_reads_them() {
        let text = job("encoded", "event.status == 200");
        let mut utf16 = vec![0xFF, 0xFE];
        for unit in text.encode_utf16() {
            utf16.extend(unit.to_le_bytes());
        }
        assert_eq!(
            load_manifests_bytes(&utf16).unwrap().jobs[0]
                .name
                .as_deref(),
            Some("encoded")
        );
        let latin1 = format!("# caf\u{e9}\n{text}").replace('\u{e9}', "\u{1}");
        let mut bytes = latin1.into_bytes();
        let position = bytes.iter().position(|byte| *byte == 1).unwrap();
        bytes[position] = 0xE9;
        assert!(load_manifests_bytes(&bytes).unwrap().jobs[0].result.is_ok());
    }
}
