//! Test fixtures that read like sentences: StreamJob manifests from a builder
//! (`JobBuilder::tumbling().lateness("3s").build()`) instead of YAML pasted into every
//! test, and generated events.

use serde_json::{Value, json};

/// A StreamJob manifest under construction. The base job reads topic `in`, takes its
/// event time from `ts` in Unix milliseconds, and writes to `out`.
#[derive(Clone, Debug)]
pub struct JobBuilder {
    spec: Value,
    before_key: Vec<Value>,
    key: Option<String>,
    before_window: Vec<Value>,
    window: Option<Value>,
    aggregates: Value,
    after_window: Vec<Value>,
}

impl JobBuilder {
    /// A job with no pipeline steps yet (add some with [`Self::step`]).
    pub fn new() -> Self {
        Self {
            spec: json!({
                "maxParallelism": 16,
                "kafka": {"bootstrapServers": "kafka:9092"},
                "source": {
                    "topics": ["in"],
                    "eventTime": {"field": "ts", "format": "UnixMillis"},
                    "watermark": {"maxOutOfOrderness": "2s"},
                },
                "sink": {"topic": "out"},
            }),
            before_key: Vec::new(),
            key: None,
            before_window: Vec::new(),
            window: None,
            aggregates: json!({}),
            after_window: Vec::new(),
        }
    }

    /// Per `event.user`, a window of `window` (as in the manifest) counting events (`n`)
    /// and summing `event.value` (`total`), with 3s of allowed lateness.
    fn windowed(window: Value) -> Self {
        let mut window = window;
        window["allowedLateness"] = json!("3s");
        Self {
            key: Some("event.user".into()),
            window: Some(window),
            ..Self::new()
        }
        .aggregates(&[("n", "Count", None), ("total", "Sum", Some("event.value"))])
    }

    /// Tumbling windows of 10s.
    pub fn tumbling() -> Self {
        Self::windowed(json!({"tumbling": {"size": "10s"}}))
    }

    /// Sliding windows of 10s every 5s.
    pub fn sliding() -> Self {
        Self::windowed(json!({"sliding": {"size": "10s", "slide": "5s"}}))
    }

    /// Sessions closed by 4s without events.
    pub fn session() -> Self {
        Self::windowed(json!({"session": {"gap": "4s"}}))
    }

    /// The three window kinds, each with its name.
    pub fn every_window_kind() -> Vec<(&'static str, String)> {
        vec![
            ("tumbling", Self::tumbling().build()),
            ("sliding", Self::sliding().build()),
            ("session", Self::session().build()),
        ]
    }

    /// Adds a stateless step (a YAML mapping such as `filter: "event.ok"`) where the
    /// pipeline is now: before the key, before the window, or after the window.
    pub fn step(mut self, yaml: &str) -> Self {
        let step: Value = serde_yaml_ng::from_str(yaml).expect("a step is YAML");
        if self.key.is_none() {
            self.before_key.push(step);
        } else if self.window.is_none() || self.aggregates.as_object().is_none_or(|a| a.is_empty())
        {
            self.before_window.push(step);
        } else {
            self.after_window.push(step);
        }
        self
    }

    /// Adds a stateless step after the window (on each result).
    pub fn after_window(mut self, yaml: &str) -> Self {
        self.after_window
            .push(serde_yaml_ng::from_str(yaml).expect("a step is YAML"));
        self
    }

    /// Adds a stateless step between the key and the window.
    pub fn before_window(mut self, yaml: &str) -> Self {
        self.before_window
            .push(serde_yaml_ng::from_str(yaml).expect("a step is YAML"));
        self
    }

    /// Keys events by `expression`.
    pub fn key_by(mut self, expression: &str) -> Self {
        self.key = Some(expression.into());
        self
    }

    /// The window (as in the manifest, YAML), keeping the allowed lateness.
    pub fn window(mut self, yaml: &str) -> Self {
        let mut window: Value = serde_yaml_ng::from_str(yaml).expect("a window is YAML");
        if let Some(lateness) = self
            .window
            .as_ref()
            .and_then(|old| old.get("allowedLateness"))
        {
            window["allowedLateness"] = lateness.clone();
        }
        self.window = Some(window);
        self
    }

    /// The allowed lateness of the window (`None`: none).
    pub fn lateness(mut self, lateness: Option<&str>) -> Self {
        let window = self.window.as_mut().expect("a windowed job");
        match lateness {
            Some(lateness) => window["allowedLateness"] = json!(lateness),
            None => {
                window.as_object_mut().unwrap().remove("allowedLateness");
            }
        }
        self
    }

    /// Replaces the aggregates: `(name, function, of)`.
    pub fn aggregates(mut self, aggregates: &[(&str, &str, Option<&str>)]) -> Self {
        let mut map = serde_json::Map::new();
        for (name, function, of) in aggregates {
            let mut aggregate = json!({"function": function});
            if let Some(of) = of {
                aggregate["of"] = json!(of);
            }
            map.insert((*name).to_string(), aggregate);
        }
        self.aggregates = Value::Object(map);
        self
    }

    /// The watermark's maximum out-of-orderness.
    pub fn out_of_orderness(self, duration: &str) -> Self {
        self.set("/source/watermark/maxOutOfOrderness", json!(duration))
    }

    /// The idle timeout of partitions.
    pub fn idle_timeout(self, duration: &str) -> Self {
        self.set("/source/watermark/idleTimeout", json!(duration))
    }

    /// The event-time field's format (`Rfc3339`, `UnixMillis`, `UnixSeconds`).
    pub fn time_format(self, format: &str) -> Self {
        self.set("/source/eventTime/format", json!(format))
    }

    /// The number of key groups.
    pub fn key_groups(self, key_groups: u32) -> Self {
        self.set("/maxParallelism", json!(key_groups))
    }

    /// The sink's key expression.
    pub fn sink_key(self, expression: &str) -> Self {
        self.set("/sink/key", json!(expression))
    }

    /// Sets any field of the spec by JSON pointer (created if missing).
    pub fn set(mut self, pointer: &str, value: Value) -> Self {
        let mut target = &mut self.spec;
        for part in pointer.trim_start_matches('/').split('/') {
            if target.get(part).is_none() {
                target[part] = json!({});
            }
            target = target.get_mut(part).unwrap();
        }
        *target = value;
        self
    }

    /// The manifest, as YAML.
    pub fn build(&self) -> String {
        let mut pipeline = self.before_key.clone();
        if let Some(key) = &self.key {
            pipeline.push(json!({"keyBy": key}));
        }
        pipeline.extend(self.before_window.iter().cloned());
        if let Some(window) = &self.window {
            pipeline.push(json!({"window": window}));
            pipeline.push(json!({"aggregate": self.aggregates}));
        }
        pipeline.extend(self.after_window.iter().cloned());
        let mut spec = self.spec.clone();
        spec["pipeline"] = Value::Array(pipeline);
        let manifest = json!({
            "apiVersion": "sluice.dev/v1alpha1",
            "kind": "StreamJob",
            "metadata": {"name": "test"},
            "spec": spec,
        });
        // JSON, which is YAML too: serde_yaml_ng writes YAML 1.2 and leaves names such as
        // `n` or `on` unquoted, which kubectl (YAML 1.1) and validate read as booleans.
        serde_json::to_string_pretty(&manifest).expect("a manifest serializes")
    }
}

impl Default for JobBuilder {
    fn default() -> Self {
        Self::new()
    }
}

/// One generated input record.
#[derive(Clone, Debug)]
pub struct Generated {
    /// Its position in the whole input (also the processing time it is read at).
    pub index: i64,
    /// The partition it is on.
    pub partition: i32,
    /// Its offset in that partition.
    pub offset: i64,
    /// The record.
    pub payload: String,
}

/// `count` records over `partitions` partitions (round robin) for `keys` users, 10 ms
/// apart in event time with up to 1.5s of disorder, a few far behind (late) and a few
/// not JSON; `{"user": "u<k>", "ts": <millis>, "value": <int>}`. The same seed gives the
/// same records.
pub fn generate_events(count: usize, partitions: i32, keys: u64, seed: u64) -> Vec<Generated> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut next = move || {
        // xorshift64*
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    let mut offsets = vec![0i64; usize::try_from(partitions).unwrap()];
    (0..count)
        .map(|index| {
            let index = i64::try_from(index).unwrap();
            let partition = i32::try_from(index % i64::from(partitions)).unwrap();
            let roll = next() % 100;
            let jitter = i64::try_from(next() % 1_500).unwrap();
            let payload = match roll {
                0 => "{not json".to_string(),
                1 | 2 => {
                    // Far behind: late for most windows.
                    let time = index * 10 - 20_000;
                    format!(r#"{{"user":"u{}","ts":{time},"value":1}}"#, next() % keys)
                }
                _ => {
                    let time = index * 10 - jitter;
                    let value = i64::try_from(next() % 1_000).unwrap() - 300;
                    format!(
                        r#"{{"user":"u{}","ts":{time},"value":{value}}}"#,
                        next() % keys
                    )
                }
            };
            let slot = &mut offsets[usize::try_from(partition).unwrap()];
            let offset = *slot;
            *slot += 1;
            Generated {
                index,
                partition,
                offset,
                payload,
            }
        })
        .collect()
}
