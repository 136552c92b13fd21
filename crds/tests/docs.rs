//! Every CEL expression the documentation shows works: each StreamJob in a YAML block of
//! the README and `docs/` validates, and each expression written as inline code (the
//! reference's examples, which `kubectl explain` shows too) parses within the limits and
//! evaluates in the worker's CEL environment on a sample event.

use std::path::{Path, PathBuf};

use serde_json::Value;

fn repository_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The README and every page under `docs/`.
fn documents() -> Vec<(PathBuf, String)> {
    let root = repository_root();
    let mut paths = vec![root.join("README.md")];
    let mut pages: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|extension| extension == "md"))
        .collect();
    pages.sort();
    paths.extend(pages);
    paths
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).unwrap();
            (path, text)
        })
        .collect()
}

/// The fenced blocks of a Markdown text marked `yaml`.
fn yaml_blocks(text: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        match (&mut current, line.trim_start()) {
            (None, fence) if fence.starts_with("```yaml") => current = Some(String::new()),
            (Some(_), fence) if fence.starts_with("```") => blocks.extend(current.take()),
            (Some(block), _) => {
                block.push_str(line);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
}

/// The inline code spans of a Markdown text, outside fenced blocks.
fn inline_code(text: &str) -> Vec<String> {
    let mut spans = Vec::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if !fenced {
            spans.extend(line.split('`').skip(1).step_by(2).map(str::to_string));
        }
    }
    spans
}

/// The expressions in an inline code span: the span itself when it is an expression over
/// `event`, or the expression values of a YAML mapping such as
/// `avg: {function: Avg, of: event.latencyMs}`. Spans with a placeholder such as `<op>`
/// describe a form, not an expression.
fn expressions_in(span: &str) -> Vec<String> {
    let reads_event = |text: &str| text.contains("event.") || text.contains("event[");
    let placeholder = regex::Regex::new(r"<[a-z]+>").unwrap();
    if !reads_event(span) || placeholder.is_match(span) {
        return Vec::new();
    }
    match serde_yaml_ng::from_str::<Value>(span) {
        Ok(Value::Object(fields)) => {
            let mut found = Vec::new();
            let mut pending: Vec<Value> = fields.into_iter().map(|(_, value)| value).collect();
            while let Some(value) = pending.pop() {
                match value {
                    Value::String(text) if reads_event(&text) => found.push(text),
                    Value::Object(fields) => pending.extend(fields.into_iter().map(|(_, v)| v)),
                    Value::Array(items) => pending.extend(items),
                    _ => {}
                }
            }
            found
        }
        _ => vec![span.to_string()],
    }
}

/// An event with every field the documentation's expressions read.
fn sample_event() -> std::collections::HashMap<String, cel::Value> {
    [
        ("status", cel::Value::Int(200)),
        ("url", cel::Value::from("/pricing?ref=ad")),
        ("page", cel::Value::from("/pricing")),
        ("latencyMs", cel::Value::Int(42)),
        ("timestamp", cel::Value::from("2026-11-29T06:00:00Z")),
        ("field", cel::Value::from("value")),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_string(), value))
    .collect()
}

#[test]
fn every_stream_job_in_the_docs_validates() {
    let mut count = 0;
    for (path, text) in documents() {
        for block in yaml_blocks(&text) {
            // A StreamJob at the top level (not a reference to one, as KEDA's scaleTargetRef).
            if !block
                .lines()
                .any(|line| line.trim_end() == "kind: StreamJob")
            {
                continue;
            }
            count += 1;
            let loaded = sluice_crds::load_manifests(&block)
                .unwrap_or_else(|error| panic!("{}: {error}\n{block}", path.display()));
            assert!(
                !loaded.jobs.is_empty(),
                "{}: no StreamJob in\n{block}",
                path.display()
            );
            for job in loaded.jobs {
                if let Err(error) = job.result {
                    panic!("{}: {error}\n{block}", path.display());
                }
            }
        }
    }
    assert!(count >= 1, "no StreamJob found in the docs");
}

#[test]
fn every_expression_in_the_docs_evaluates() {
    let mut checked = Vec::new();
    for (path, text) in documents() {
        for span in inline_code(&text) {
            for source in expressions_in(&span) {
                let program = sluice_crds::expression::parse(&source).unwrap_or_else(|error| {
                    panic!(
                        "{}: the expression `{source}` is refused: {error}",
                        path.display()
                    )
                });
                let mut context = sluice_crds::expression::context();
                context.add_variable_from_value("event", sample_event());
                let value = program.execute(&context);
                assert!(
                    value.is_ok(),
                    "{}: the expression `{source}` fails: {value:?}",
                    path.display()
                );
                checked.push(source);
            }
        }
    }
    // The reference's own examples, among them the strings extension's split.
    for expected in [
        "event.status == 200",
        "event.page",
        "event.url.split('?')[0]",
        "event.latencyMs",
    ] {
        assert!(
            checked.iter().any(|source| source == expected),
            "`{expected}` is no longer in the docs; checked {checked:#?}"
        );
    }
}
