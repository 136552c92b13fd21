//! The CRD, offline: the committed YAML is what the Rust types generate, every invalid
//! fixture is rejected with its expected message, and every example is accepted.
//!
//! "Offline" means without an API server: the CRD's CEL rules are evaluated by kube-cel
//! (with schema defaults applied first, as the API server does), and what only the
//! OpenAPI schema checks (types, enums, minimums) is covered by deserializing into the
//! Rust types and running `sluice_crds::validate`. The e2e suite sends the same fixtures
//! to a real API server.

use std::path::{Path, PathBuf};

use serde_json::Value;
use sluice_crds::crd;

fn repository_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn schema() -> Value {
    let definition = serde_json::to_value(crd::definition()).unwrap();
    definition["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

/// A fixture's header line `# <name>: <text>`.
fn header(text: &str, name: &str) -> Option<String> {
    text.lines()
        .take_while(|line| line.starts_with('#'))
        .find_map(|line| {
            line.strip_prefix(&format!("# {name}: "))
                .map(str::to_string)
        })
}

/// The messages of the CRD's CEL rules for a manifest, evaluated by kube-cel.
fn cel_errors(manifest: &str, old: Option<&Value>) -> Vec<String> {
    let object: Value = serde_yaml_ng::from_str(manifest).unwrap();
    match kube_cel::Validator::new().validate(&schema(), &object, old) {
        Ok(()) => Vec::new(),
        Err(errors) => errors
            .iter()
            .map(|error| format!("{}: {}", error.field_path, error.message))
            .collect(),
    }
}

/// The messages of `sluice_crds::load_manifest` (types, enums, `validate`), and those
/// of each StreamJob when the file holds several (a `kind: List`, say).
fn sluice_errors(manifest: &str) -> Vec<String> {
    let mut errors = manifest_problems(manifest.as_bytes());
    if let Err(error) = sluice_crds::load_manifest(manifest) {
        errors.push(error.to_string());
    }
    errors
}

/// Every message an offline check produces for a manifest.
fn offline_errors(manifest: &str, old: Option<&Value>) -> Vec<String> {
    let mut messages = cel_errors(manifest, old);
    messages.extend(sluice_errors(manifest));
    messages
}

fn yaml_files(folder: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(folder)
        .unwrap_or_else(|error| panic!("failed to list {}: {error}", folder.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| {
            path.extension()
                .is_some_and(|extension| extension == "yaml")
        })
        .collect();
    files.sort();
    files
}

#[test]
fn committed_crd_matches_the_rust_types() {
    let path = repository_root().join("crds").join(crd::COMMITTED_PATH);
    let committed = std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("failed to read {}: {error}", path.display()));
    assert!(
        committed == crd::yaml(),
        "{} is out of date with the Rust types in crds/src: run `make crd` and commit the result",
        path.display()
    );
}

#[test]
fn the_chart_ships_the_same_crd() {
    let chart = repository_root()
        .join("charts/sluice/crds")
        .join(crd::COMMITTED_PATH);
    let shipped = std::fs::read_to_string(&chart)
        .unwrap_or_else(|error| panic!("failed to read {}: {error}", chart.display()));
    assert!(
        shipped == crd::yaml(),
        "{} differs from the Rust types: run `make crd` and commit the result",
        chart.display()
    );
}

#[test]
fn every_rule_of_the_crd_compiles() {
    let compiled = kube_cel::compile_schema(&schema());
    let errors: Vec<String> = compiled
        .compilation_errors()
        .iter()
        .map(|error| error.to_string())
        .collect();
    assert!(
        errors.is_empty(),
        "CEL rules that do not compile: {errors:#?}"
    );
}

#[test]
fn every_invalid_fixture_is_rejected_with_its_message() {
    let files = yaml_files(&repository_root().join("tests/fixtures/invalid"));
    assert!(
        files.len() >= 15,
        "expected at least 15 invalid fixtures, found {}",
        files.len()
    );
    for file in files {
        let manifest = std::fs::read_to_string(&file).unwrap();
        let expected = header(&manifest, "expect")
            .unwrap_or_else(|| panic!("{} has no '# expect: ' header", file.display()));
        match header(&manifest, "expect-offline") {
            // The OpenAPI schema rejects it in the API server; offline, the Rust types and
            // `validate` must, in their own words.
            Some(offline) => {
                let errors = sluice_errors(&manifest);
                assert!(
                    errors.iter().any(|error| error.contains(&offline)),
                    "{}: expected an error containing {offline:?}, got {errors:#?}",
                    file.display()
                );
            }
            // A CEL rule of the CRD rejects it: kube-cel must give its message, and
            // `validate` the same words.
            None => {
                for (checker, errors) in [
                    ("kube-cel", cel_errors(&manifest, None)),
                    ("validate", sluice_errors(&manifest)),
                ] {
                    assert!(
                        errors.iter().any(|error| error.contains(&expected)),
                        "{}: expected {checker} to report {expected:?}, got {errors:#?}",
                        file.display()
                    );
                }
            }
        }
    }
}

#[test]
fn every_example_is_accepted() {
    let examples = repository_root().join("examples");
    let mut count = 0;
    for entry in std::fs::read_dir(&examples).unwrap() {
        let file = entry.unwrap().path().join("streamjob.yaml");
        if !file.exists() {
            continue;
        }
        let manifest = std::fs::read_to_string(&file).unwrap();
        let errors = offline_errors(&manifest, None);
        assert!(errors.is_empty(), "{}: {errors:#?}", file.display());
        count += 1;
    }
    assert!(count >= 2, "expected at least two examples, found {count}");
}

#[test]
fn max_parallelism_cannot_change() {
    let manifest =
        std::fs::read_to_string(repository_root().join("examples/page-views/streamjob.yaml"))
            .unwrap();
    let old: Value = serde_yaml_ng::from_str(&manifest).unwrap();
    let mut new = old.clone();
    new["spec"]["maxParallelism"] = 32.into();
    let new_manifest = serde_yaml_ng::to_string(&new).unwrap();
    let errors = offline_errors(&new_manifest, Some(&old));
    assert!(
        errors
            .iter()
            .any(|error| error.contains(sluice_crds::messages::MAX_PARALLELISM_IMMUTABLE)),
        "{errors:#?}"
    );
    let unchanged = offline_errors(&manifest, Some(&old));
    assert!(unchanged.is_empty(), "{unchanged:#?}");
}

#[test]
fn every_field_has_a_description() {
    fn walk(path: &str, schema: &Value, missing: &mut Vec<String>) {
        if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
            for (name, property) in properties {
                let child = format!("{path}.{name}");
                if property.get("description").is_none() {
                    missing.push(child.clone());
                }
                walk(&child, property, missing);
            }
        }
        if let Some(items) = schema.get("items") {
            walk(&format!("{path}[]"), items, missing);
        }
        if let Some(values) = schema
            .get("additionalProperties")
            .filter(|value| value.is_object())
        {
            walk(&format!("{path}{{}}"), values, missing);
        }
    }
    let mut missing = Vec::new();
    walk("spec", &schema()["properties"]["spec"], &mut missing);
    walk("status", &schema()["properties"]["status"], &mut missing);
    assert!(
        missing.is_empty(),
        "fields without a description (kubectl explain shows nothing): {missing:#?}"
    );
}

#[test]
fn committed_reference_matches_the_crd() {
    let path = repository_root().join("docs/streamjob.md");
    let committed = std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("failed to read {}: {error}", path.display()));
    assert!(
        committed == sluice_crds::reference::markdown(),
        "{} is out of date with the CRD: run `make crd` and commit the result",
        path.display()
    );
}

/// Every problem `load_manifests` finds in a file, one line each (empty when every
/// StreamJob in it is valid).
fn manifest_problems(manifest: &[u8]) -> Vec<String> {
    match sluice_crds::load_manifests_bytes(manifest) {
        Err(error) => vec![error.to_string()],
        Ok(loaded) if loaded.jobs.is_empty() => vec!["no StreamJob".to_string()],
        Ok(loaded) => loaded
            .jobs
            .into_iter()
            .filter_map(|job| job.result.err())
            .map(|error| error.to_string())
            .collect(),
    }
}

#[test]
fn every_valid_fixture_is_accepted() {
    let files = yaml_files(&repository_root().join("tests/fixtures/valid"));
    assert!(!files.is_empty(), "no valid fixtures");
    for file in files {
        // Bytes: some are UTF-16, or hold bytes that are not UTF-8, as kubectl reads them.
        let manifest = std::fs::read(&file).unwrap();
        let problems = manifest_problems(&manifest);
        assert!(problems.is_empty(), "{}: {problems:#?}", file.display());
    }
}

/// What the API server accepts and `validate` refuses, each with its reason.
#[test]
fn every_stricter_fixture_is_refused_offline_with_its_message() {
    let files = yaml_files(&repository_root().join("tests/fixtures/stricter"));
    assert!(!files.is_empty(), "no stricter fixtures");
    for file in files {
        let manifest = std::fs::read_to_string(&file).unwrap();
        assert!(
            header(&manifest, "stricter").is_some(),
            "{} does not say why only validate refuses it ('# stricter: ')",
            file.display()
        );
        let expected = header(&manifest, "expect-offline")
            .unwrap_or_else(|| panic!("{} has no '# expect-offline: ' header", file.display()));
        let problems = manifest_problems(manifest.as_bytes());
        assert!(
            problems.iter().any(|problem| problem.contains(&expected)),
            "{}: expected {expected:?} in {problems:#?}",
            file.display()
        );
        // The CRD's own rules accept it: only validate can see the problem.
        let cel = cel_errors(&manifest, None);
        assert!(
            cel.is_empty(),
            "{}: the CRD's rules refuse it: {cel:#?}",
            file.display()
        );
    }
}
