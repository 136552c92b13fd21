//! What Kafka accepts and what the worker owns: topic names, bootstrap servers, and the
//! client properties a job may not set. [`crate::validate()`] and the worker share these
//! definitions.

/// Client properties the worker sets itself: a job may not override them, or
/// exactly-once processing would silently break (`validate` refuses them in
/// `spec.kafka.properties`; the worker refuses them in the Secret's properties too).
pub const OWNED_PROPERTIES: [&str; 9] = [
    "bootstrap.servers",
    "group.id",
    "transactional.id",
    "enable.idempotence",
    "isolation.level",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "auto.offset.reset",
    "transaction.timeout.ms",
];

/// The consumer group under which a job's workers commit their positions inside their
/// transactions (no consumer joins it): `sluice.<namespace>.<name>`. A namespace has no
/// '.', so the name is unambiguous. The worker commits under it; the controller's
/// autoscaler reads it.
pub fn group_id(namespace: &str, name: &str) -> String {
    format!("sluice.{namespace}.{name}")
}

/// The transactional id of worker `ordinal` of a job: `<group id>.<ordinal>`. The worker
/// produces under it; the controller fences it before a rollback.
pub fn transactional_id(namespace: &str, name: &str, ordinal: u32) -> String {
    format!("{}.{ordinal}", group_id(namespace, name))
}

/// The longest topic name Kafka accepts.
pub const MAX_TOPIC_LENGTH: usize = 249;

/// A job's repartition topic: `<group id>.repartition`, or, for a name too long for a
/// topic, the group id cut short and a hash of the whole. The worker creates and uses it;
/// the controller reads the job's committed positions in it.
pub fn repartition_topic(namespace: &str, name: &str) -> String {
    let base = group_id(namespace, name);
    let suffix = ".repartition";
    if base.len() + suffix.len() <= MAX_TOPIC_LENGTH {
        return format!("{base}{suffix}");
    }
    let hash = xxhash_rust::xxh3::xxh3_64(base.as_bytes());
    let mut cut = MAX_TOPIC_LENGTH - suffix.len() - 17;
    while !base.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}-{hash:016x}{suffix}", &base[..cut])
}

/// Why Kafka would refuse `topic` as a topic name, if it would.
pub fn topic_name_problem(topic: &str) -> Option<String> {
    let valid_characters = topic
        .chars()
        .all(|character| character.is_ascii_alphanumeric() || matches!(character, '.' | '_' | '-'));
    let problem = if topic.is_empty() {
        "it is empty"
    } else if topic.len() > MAX_TOPIC_LENGTH {
        "it is longer than 249 characters"
    } else if !valid_characters {
        "it has characters other than letters, digits, '.', '_' and '-'"
    } else if topic == "." || topic == ".." {
        "Kafka reserves . and .."
    } else {
        return None;
    };
    Some(format!(
        "{topic:?} is not a valid Kafka topic name ({problem}): use 1 to 249 letters, digits, '.', '_' or '-'"
    ))
}

/// Why `servers` is not a comma-separated list of `host:port`, if it is not.
pub fn bootstrap_servers_problem(servers: &str) -> Option<String> {
    let problems: Vec<String> = servers
        .split(',')
        .map(str::trim)
        .filter_map(|server| server_problem(server).map(|problem| format!("{server:?} {problem}")))
        .collect();
    (!problems.is_empty()).then(|| {
        format!(
            "must be a comma-separated list of host:port, for example kafka-0.kafka:9092,kafka-1.kafka:9092: {}",
            problems.join("; ")
        )
    })
}

fn server_problem(server: &str) -> Option<&'static str> {
    if server.is_empty() {
        return Some("is empty (a comma too many?)");
    }
    let address = server
        .split_once("://")
        .map_or(server, |(_, address)| address);
    let Some((host, port)) = address.rsplit_once(':') else {
        return Some("has no port");
    };
    let host = host
        .strip_prefix('[')
        .and_then(|host| host.strip_suffix(']'))
        .unwrap_or(host);
    let host_valid = !host.is_empty()
        && host.chars().all(|character| {
            character.is_ascii_alphanumeric() || matches!(character, '.' | '-' | '_' | ':')
        });
    if !host_valid {
        return Some("has no valid host name or address");
    }
    match port.parse::<u16>() {
        Ok(port) if port > 0 => None,
        _ => Some("has no valid port (1 to 65535)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_servers_are_host_port_lists() {
        let cases = [
            ("kafka:9092", None),
            ("kafka-0.kafka:9092, kafka-1.kafka:9092", None),
            ("10.0.0.1:9092", None),
            ("[::1]:9092", None),
            ("SASL_SSL://broker.example.com:9093", None),
            ("kafka", Some("\"kafka\" has no port")),
            ("kafka:", Some("has no valid port")),
            ("kafka:99999", Some("has no valid port")),
            ("kafka:9092,", Some("\"\" is empty")),
            ("kafka 9092", Some("has no port")),
            ("my host:9092", Some("has no valid host")),
        ];
        for (servers, expected) in cases {
            let problem = bootstrap_servers_problem(servers);
            match expected {
                None => assert_eq!(problem, None, "{servers}"),
                Some(expected) => assert!(
                    problem
                        .as_deref()
                        .is_some_and(|problem| problem.contains(expected)),
                    "{servers}: {problem:?}"
                ),
            }
        }
    }

    #[test]
    fn topic_names_follow_kafka() {
        let long = "t".repeat(250);
        let cases = [
            ("page-views", None),
            ("a.b_c-1", None),
            ("page views", Some("characters other than")),
            ("..", Some("reserves")),
            ("", Some("empty")),
            (long.as_str(), Some("longer than 249")),
            ("é", Some("characters other than")),
        ];
        for (topic, expected) in cases {
            let problem = topic_name_problem(topic);
            match expected {
                None => assert_eq!(problem, None, "{topic}"),
                Some(expected) => assert!(
                    problem
                        .as_deref()
                        .is_some_and(|problem| problem.contains(expected)),
                    "{topic}: {problem:?}"
                ),
            }
        }
    }
}
