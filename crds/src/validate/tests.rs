use super::*;

/// A valid spec: page views per page per minute.
const PAGE_VIEWS: &str = r#"
parallelism: 2
maxParallelism: 16
kafka:
  bootstrapServers: kafka:9092
source:
  topics: [page-views]
  eventTime:
    field: timestamp
  watermark:
    maxOutOfOrderness: 5s
pipeline:
  - filter: "event.status == 200"
  - map:
      page: "event.url"
      latency: "event.latencyMs"
  - keyBy: "event.page"
  - window:
      tumbling: {size: 1m}
      allowedLateness: 30s
  - aggregate:
      views: {function: Count}
      slowest: {function: Max, of: "event.latency"}
sink:
  topic: page-view-counts
  key: "event.key"
  deadLetterTopic: page-views-dlq
"#;

fn spec_with(change: impl FnOnce(&mut serde_json::Value)) -> StreamJobSpec {
    let mut value: serde_json::Value = serde_yaml_ng::from_str(PAGE_VIEWS).unwrap();
    change(&mut value);
    serde_json::from_value(value).unwrap()
}

fn step(yaml: &str) -> serde_json::Value {
    serde_yaml_ng::from_str(yaml).unwrap()
}

#[test]
fn the_base_spec_is_valid_and_checked() {
    let checked = validate(&spec_with(|_| {})).unwrap();
    assert_eq!(checked.pipeline.step_count(), 5);
    assert_eq!(checked.pipeline.before_key.len(), 2);
    let windowed = checked.pipeline.windowed().unwrap();
    assert_eq!(
        windowed
            .aggregates
            .iter()
            .map(|aggregate| (aggregate.name.as_str(), aggregate.function))
            .collect::<Vec<_>>(),
        [
            ("slowest", AggregateFunction::Max),
            ("views", AggregateFunction::Count)
        ]
    );
    assert!(windowed.after_window.is_empty());
    assert_eq!(checked.key_groups.get(), 16);
    let key_by = checked.pipeline.key_by().unwrap();
    assert_eq!(key_by.event_fields, Some(["page".to_string()].into()));
    let window = checked.pipeline.window().unwrap();
    assert_eq!(
        window.kind,
        WindowKind::Tumbling {
            size: std::time::Duration::from_secs(60)
        }
    );
    assert_eq!(window.allowed_lateness, std::time::Duration::from_secs(30));
    assert_eq!(checked.sink.key.unwrap().source, "event.key");
}

#[test]
fn invalid_specs_name_the_field_and_the_fix() {
    type Change = Box<dyn FnOnce(&mut serde_json::Value)>;
    let cases: Vec<(&str, Change, &str, &str)> = vec![
        (
            "parallelism above key groups",
            Box::new(|spec| spec["parallelism"] = 17.into()),
            "spec.parallelism",
            messages::PARALLELISM_ABOVE_MAX,
        ),
        (
            "autoscaler min above max",
            Box::new(|spec| {
                spec["autoscaler"] = step("{enabled: true, minParallelism: 4, maxParallelism: 2}")
            }),
            "spec.autoscaler.minParallelism",
            messages::AUTOSCALER_MIN_ABOVE_MAX,
        ),
        (
            "autoscaler max above key groups",
            Box::new(|spec| spec["autoscaler"] = step("{enabled: true, maxParallelism: 32}")),
            "spec.autoscaler.maxParallelism",
            messages::AUTOSCALER_MAX_ABOVE_KEY_GROUPS,
        ),
        (
            "step with two operations",
            Box::new(|spec| spec["pipeline"][0] = step("{filter: 'true', keyBy: 'event.page'}")),
            "spec.pipeline[0]",
            messages::STEP_EXACTLY_ONE,
        ),
        (
            "window without keyBy",
            Box::new(|spec| {
                spec["pipeline"].as_array_mut().unwrap().remove(2);
            }),
            "spec.pipeline[2]",
            messages::PIPELINE_WINDOW_NEEDS_KEY_BY,
        ),
        (
            "aggregate without window",
            Box::new(|spec| {
                spec["pipeline"].as_array_mut().unwrap().remove(3);
            }),
            "spec.pipeline[3]",
            messages::PIPELINE_AGGREGATE_NEEDS_WINDOW,
        ),
        (
            "window without aggregate",
            Box::new(|spec| {
                spec["pipeline"].as_array_mut().unwrap().remove(4);
            }),
            "spec.pipeline[3]",
            messages::PIPELINE_WINDOW_NEEDS_AGGREGATE,
        ),
        (
            "two window kinds",
            Box::new(|spec| {
                spec["pipeline"][3] = step("{window: {tumbling: {size: 1m}, session: {gap: 5m}}}")
            }),
            "spec.pipeline[3].window",
            messages::WINDOW_EXACTLY_ONE_KIND,
        ),
        (
            "slide larger than size",
            Box::new(|spec| {
                spec["pipeline"][3] = step("{window: {sliding: {size: 1m, slide: 2m}}}")
            }),
            "spec.pipeline[3].window.sliding.slide",
            messages::SLIDE_ABOVE_SIZE,
        ),
        (
            "a slide so small each event is in thousands of windows",
            Box::new(|spec| {
                spec["pipeline"][3] = step("{window: {sliding: {size: 1h, slide: 1s}}}")
            }),
            "spec.pipeline[3].window.sliding.slide",
            messages::SLIDE_TOO_SMALL,
        ),
        (
            "sum without of",
            Box::new(|spec| spec["pipeline"][4] = step("{aggregate: {total: {function: Sum}}}")),
            "spec.pipeline[4].aggregate.total",
            messages::AGGREGATION_NEEDS_OF,
        ),
        (
            "filter that does not parse",
            Box::new(|spec| spec["pipeline"][0] = step("{filter: 'event.status =='}")),
            "spec.pipeline[0].filter",
            "failed to parse the CEL expression",
        ),
        (
            "filter that gives an int",
            Box::new(|spec| spec["pipeline"][0] = step("{filter: '1 + 2'}")),
            "spec.pipeline[0].filter",
            "the CEL expression \"1 + 2\" gives an int, but a filter must give a bool",
        ),
        (
            "function the runtime does not have",
            Box::new(|spec| spec["pipeline"][0] = step("{filter: 'nosuchfunc(event.url)'}")),
            "spec.pipeline[0].filter",
            "cannot be evaluated: it calls nosuchfunc(), which is not a function here; the functions are bool, bytes, charAt, contains,",
        ),
        (
            "function with the wrong arguments",
            Box::new(|spec| spec["pipeline"][0] = step("{filter: 'size(event.url, 3) > 1'}")),
            "spec.pipeline[0].filter",
            "it calls size(dyn, int), which does not exist; size takes size(string) or",
        ),
        (
            "operands of types no operator takes",
            Box::new(|spec| spec["pipeline"][0] = step(r#"{filter: 'event.url + 1 > "x"'}"#)),
            "spec.pipeline[0].filter",
            "it applies > to int and string, which it does not take: convert one side",
        ),
        (
            "key of a type keys cannot have",
            Box::new(|spec| spec["pipeline"][2] = step("{keyBy: '[event.page]'}")),
            "spec.pipeline[2].keyBy",
            "gives a list, but a key must be a string, an integer or a bool",
        ),
        (
            "aggregate of a string",
            Box::new(|spec| {
                spec["pipeline"][4] =
                    step("{aggregate: {total: {function: Sum, of: 'string(event.latency)'}}}")
            }),
            "spec.pipeline[4].aggregate.total.of",
            "gives a string, but an aggregate needs a number",
        ),
        (
            "unknown variable",
            Box::new(|spec| spec["pipeline"][0] = step("{filter: 'evnt.status == 200'}")),
            "spec.pipeline[0].filter",
            "unknown variable \"evnt\"",
        ),
        (
            "field the map does not produce",
            Box::new(|spec| spec["pipeline"][2] = step("{keyBy: 'event.url'}")),
            "spec.pipeline[2].keyBy",
            "reads event.url, but the step before produces only latency, page",
        ),
        (
            "sink key reads a field results lack",
            Box::new(|spec| spec["sink"]["key"] = "event.page".into()),
            "spec.sink.key",
            "reads event.page, but the step before produces only isUpdate, key, slowest, views, windowEnd, windowStart",
        ),
        (
            "map output name not an identifier",
            Box::new(|spec| spec["pipeline"][1] = step("{map: {'page-name': 'event.url'}}")),
            "spec.pipeline[1].map.page-name",
            messages::OUTPUT_NAME_INVALID,
        ),
        (
            "aggregate output shadows a result field",
            Box::new(|spec| spec["pipeline"][4] = step("{aggregate: {key: {function: Count}}}")),
            "spec.pipeline[4].aggregate.key",
            "is a field every result has",
        ),
        (
            "dead letters to the sink topic",
            Box::new(|spec| spec["sink"]["deadLetterTopic"] = "page-view-counts".into()),
            "spec.sink.deadLetterTopic",
            "must differ from spec.sink.topic",
        ),
        (
            "sink topic read as source",
            Box::new(|spec| spec["sink"]["topic"] = "page-views".into()),
            "spec.sink.topic",
            "must not be one of spec.source.topics",
        ),
        (
            "invalid topic name",
            Box::new(|spec| spec["source"]["topics"][0] = "page views".into()),
            "spec.source.topics[0]",
            "is not a valid Kafka topic name",
        ),
        (
            "empty pipeline",
            Box::new(|spec| spec["pipeline"] = serde_json::json!([])),
            "spec.pipeline",
            "must have at least one step",
        ),
        (
            "autoscaler on a windowed job without savepoints",
            Box::new(|spec| spec["autoscaler"] = step("{enabled: true, maxParallelism: 4}")),
            "spec.savepoints.location",
            messages::AUTOSCALER_NEEDS_SAVEPOINTS,
        ),
        (
            "periodic savepoints back to back",
            Box::new(|spec| {
                spec["savepoints"] = step("{location: s3://b/p, interval: 5s}");
            }),
            "spec.savepoints.interval",
            "must be at least 10s",
        ),
        (
            "a rollback before the workers could start",
            Box::new(|spec| spec["rollback"] = step("{readyTimeout: 2s}")),
            "spec.rollback.readyTimeout",
            "must be at least 10s",
        ),
        (
            "savepoint location without a scheme",
            Box::new(|spec| spec["savepoints"] = step("{location: /savepoints}")),
            "spec.savepoints.location",
            "must be a URL",
        ),
    ];
    for (name, change, field, message) in cases {
        let errors = validate(&spec_with(change)).unwrap_err().errors;
        assert!(
            errors
                .iter()
                .any(|error| error.field == field && error.message.contains(message)),
            "{name}: expected {field}: {message}, got {errors:#?}"
        );
    }
}

#[test]
fn expressions_may_use_macros_and_index_syntax() {
    let spec = spec_with(|spec| {
        spec["pipeline"][0] = step(
            r#"{filter: "event.tags.exists(tag, tag == 'checkout') && has(event.user) && event['status'] == 200 && type(event.status) == int"}"#,
        );
    });
    let checked = validate(&spec).unwrap();
    let StatelessStep::Filter(filter) = &checked.pipeline.before_key[0] else {
        panic!("first step is the filter")
    };
    assert_eq!(
        filter.event_fields,
        Some(["status", "tags", "user"].map(String::from).into())
    );
}

#[test]
fn using_the_whole_event_means_every_field_is_needed() {
    let spec = spec_with(|spec| spec["pipeline"][0] = step("{filter: 'size(event) > 2'}"));
    let checked = validate(&spec).unwrap();
    let StatelessStep::Filter(filter) = &checked.pipeline.before_key[0] else {
        panic!("first step is the filter")
    };
    assert_eq!(filter.event_fields, None);
}

#[test]
fn manifests_of_another_kind_are_refused() {
    let error = load_manifest("apiVersion: v1\nkind: ConfigMap\n").unwrap_err();
    assert!(
        error
            .to_string()
            .contains("expected apiVersion \"sluice.dev/v1alpha1\" kind \"StreamJob\""),
        "{error}"
    );
}

#[test]
fn a_bad_duration_names_its_field() {
    let manifest = format!(
        "apiVersion: sluice.dev/v1alpha1\nkind: StreamJob\nmetadata: {{name: x}}\nspec:\n{}",
        PAGE_VIEWS
            .replace("5s", "5 seconds")
            .lines()
            .map(|line| format!("  {line}\n"))
            .collect::<String>()
    );
    let error = load_manifest(&manifest).unwrap_err().to_string();
    assert!(
        error.contains("spec.source.watermark.maxOutOfOrderness: \"5 seconds\" must be"),
        "{error}"
    );
    assert!(error.contains("positive duration"), "{error}");
}

#[test]
fn a_duration_too_long_names_its_field_and_the_limit() {
    let manifest = format!(
        "apiVersion: sluice.dev/v1alpha1\nkind: StreamJob\nmetadata: {{name: x}}\nspec:\n{}",
        PAGE_VIEWS
            .replace("{size: 1m}", "{size: 2562048h}")
            .lines()
            .map(|line| format!("  {line}\n"))
            .collect::<String>()
    );
    let error = load_manifest(&manifest).unwrap_err().to_string();
    assert!(
        error.contains(
            "tumbling.size: \"2562048h\" is too long: a duration is at most 2562047h47m16s854ms"
        ),
        "{error}"
    );
}

#[test]
fn an_initial_savepoint_must_be_one_of_the_jobs_own() {
    let shop = Some("shop");
    let cases = [
        ("s3://b/prefix/shop/orders/final-3-1", shop, true),
        ("s3://b/prefix/shop/orders/final-3-1/", shop, true),
        ("file:///savepoints/shop/orders/manual-2-1", shop, true),
        ("s3://b/prefix/team/orders/final-3-1", None, true),
        ("s3://b/prefix/shop/other/final-3-1", shop, false),
        ("s3://b/prefix/shop/other/final-3-1", None, false),
        ("s3://b/prefix/team/orders/final-3-1", shop, false),
        ("s3://b/prefix/shop/orders", shop, false),
        ("s3://b/prefix", shop, false),
        ("orders/final-3-1", None, false),
    ];
    for (location, namespace, valid) in cases {
        let result = super::validate_initial_savepoint(location, namespace, "orders");
        assert_eq!(result.is_ok(), valid, "{location} in {namespace:?}");
        if let Err(error) = result {
            assert_eq!(error.field, "spec.savepoints.initialSavepoint");
            assert!(error.message.contains("/orders/<id>"), "{}", error.message);
        }
    }
}
