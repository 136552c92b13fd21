//! The local cluster itself, as `tests/cluster/cluster.sh up` promises it: the API server is
//! ready, kubectl, the server and helm run the versions pinned in
//! `tests/cluster/versions.sh`, the chart renders (with the committed CRD when asked), and
//! nothing the cluster started listens beyond loopback and the bridge address.
//!
//! The listener check finds the cluster's processes by their pid files (and, for anything
//! else, by running a binary of the caches, naming the state directory on its command line
//! or living in the node's pod cgroups under `/sluice-node`), so listeners of other software
//! on this machine (e.g. the sandbox's own 0.0.0.0:2024, another kubelet's pods) are reported
//! but do not count. It also requires every expected listener to be found on its owner's
//! pid, so it cannot pass by finding nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail, ensure};
use serde_yaml_ng::Value as Yaml;
use sluice_e2e::{Environment, read_repo_file, rendered_documents, state_dir};

/// The address of the project's bridge (`SLUICE_BRIDGE_IP` in `tests/cluster/versions.sh`).
const BRIDGE_ADDRESS: &str = "10.244.0.1";

/// The only addresses the cluster's processes may listen on.
const ALLOWED_HOSTS: [&str; 4] = ["127.0.0.1", "::1", "::ffff:127.0.0.1", BRIDGE_ADDRESS];

/// Listeners each component must have (`host:port`; port `*` is any port), by the name of
/// its pid file. Documented in tests/cluster/README.md and NODE.md.
const EXPECTED_LISTENERS: &[(&str, &[&str])] = &[
    ("etcd", &["127.0.0.1:2379", "127.0.0.1:2380"]),
    ("kube-apiserver", &["10.244.0.1:6443"]),
    ("apiserver-relay", &["127.0.0.1:6443"]),
    ("kube-controller-manager", &["127.0.0.1:10257"]),
    ("kube-scheduler", &["127.0.0.1:10259"]),
    (
        "kafka",
        &["127.0.0.1:9092", "127.0.0.1:9093", "10.244.0.1:9094"],
    ),
    ("kubelet", &["10.244.0.1:10250", "127.0.0.1:10248"]),
    ("kube-proxy", &["127.0.0.1:10249", "127.0.0.1:10256"]),
    // CRI streaming server on a random loopback port.
    ("containerd", &["127.0.0.1:*"]),
    // S3 gateway, master, volume server, filer; each with gRPC on its port + 10000.
    (
        "seaweedfs",
        &[
            "127.0.0.1:8333",
            "127.0.0.1:9333",
            "127.0.0.1:8380",
            "127.0.0.1:8888",
            "127.0.0.1:19333",
            "127.0.0.1:18380",
            "127.0.0.1:18888",
        ],
    ),
];

/// The node's cgroup root (`SLUICE_NODE_CGROUP_ROOT` in `tests/cluster/versions.sh`, the
/// kubelet's `cgroupRoot`): its pods run in `<hierarchy>/sluice-node/kubepods/...`. Another
/// kubelet's pods (`/kubepods/...`) are not the cluster's.
fn node_cgroup_root() -> String {
    std::env::var("SLUICE_NODE_CGROUP_ROOT")
        .ok()
        .filter(|value| !value.is_empty())
        .unwrap_or_else(|| "/sluice-node".to_owned())
}

/// `${SLUICE_CACHE}`, where the cluster's binaries and Kafka's jars are cached.
fn cache_dir() -> PathBuf {
    std::env::var_os("SLUICE_CACHE")
        .filter(|value| !value.is_empty())
        .map_or_else(|| PathBuf::from("/var/cache/sluice"), PathBuf::from)
}

/// The version `tests/cluster/versions.sh` pins for `name`, from its
/// `export NAME="${NAME:-default}"` line.
fn pinned_version(name: &str) -> Result<String> {
    let text = read_repo_file("tests/cluster/versions.sh")?;
    let prefix = format!("export {name}=");
    let line = text
        .lines()
        .map(str::trim)
        .find(|line| line.starts_with(&prefix))
        .with_context(|| format!("tests/cluster/versions.sh does not export {name}"))?;
    let default = line
        .split_once(":-")
        .and_then(|(_, rest)| rest.split_once('}'))
        .map(|(value, _)| value.to_owned())
        .filter(|value| !value.is_empty())
        .with_context(|| {
            format!("failed to read the default of {name} in tests/cluster/versions.sh: {line}")
        })?;
    Ok(default)
}

fn yaml_string<'a>(value: &'a Yaml, path: &[&str]) -> Option<&'a str> {
    path.iter()
        .try_fold(value, |value, key| value.get(key))?
        .as_str()
}

#[tokio::test]
async fn api_server_answers_readyz_with_ok() -> Result<()> {
    let environment = Environment::load()?;
    let readyz = environment.kubectl(&["get", "--raw", "/readyz"])?;
    ensure!(
        readyz.trim() == "ok",
        "kubectl get --raw /readyz printed {readyz:?}, not \"ok\""
    );
    Ok(())
}

#[tokio::test]
async fn kubectl_and_the_api_server_run_the_pinned_kubernetes_version() -> Result<()> {
    let pinned = pinned_version("K8S_VERSION")?;
    let environment = Environment::load()?;
    let output = environment.kubectl(&["version", "-o", "json"])?;
    let versions: serde_json::Value = serde_json::from_str(&output)
        .with_context(|| format!("failed to parse `kubectl version -o json`:\n{output}"))?;
    for side in ["clientVersion", "serverVersion"] {
        let version = versions[side]["gitVersion"].as_str().unwrap_or_default();
        ensure!(
            version == pinned,
            "kubectl version: {side}.gitVersion is {version:?}, tests/cluster/versions.sh pins \
             {pinned} (a stale build? run `make cluster-up`)\n{output}"
        );
    }
    Ok(())
}

#[test]
fn helm_is_the_pinned_version() -> Result<()> {
    let pinned = pinned_version("HELM_VERSION")?;
    let environment = Environment::load()?;
    let version = environment.helm(&["version", "--template", "{{.Version}}"])?;
    ensure!(
        version.trim() == pinned,
        "helm version is {:?}, tests/cluster/versions.sh pins {pinned} ({})",
        version.trim(),
        environment.helm.display()
    );
    Ok(())
}

#[test]
fn helm_template_renders_the_controller_identity_without_crds() -> Result<()> {
    let rendered = Environment::load()?.helm(&[
        "template",
        "sluice",
        "charts/sluice",
        "-n",
        "sluice-system",
    ])?;
    let documents = rendered_documents(&rendered)?;
    let mut by_kind: BTreeMap<String, Vec<&Yaml>> = BTreeMap::new();
    for (_, _, document) in &documents {
        let kind = yaml_string(document, &["kind"]).unwrap_or("<no kind>");
        by_kind.entry(kind.to_owned()).or_default().push(document);
    }
    let kinds: Vec<&String> = by_kind.keys().collect();
    let single = |kind: &str| -> Result<&Yaml> {
        match by_kind.get(kind).map(Vec::as_slice) {
            Some([document]) => Ok(*document),
            other => bail!(
                "helm template charts/sluice rendered {} {kind}s (kinds: {kinds:?}), expected 1",
                other.map_or(0, <[&Yaml]>::len)
            ),
        }
    };
    // The controller's ClusterRole and binding (the webhook's are beside them).
    let named = |kind: &str, name: &str| -> Result<&Yaml> {
        by_kind
            .get(kind)
            .into_iter()
            .flatten()
            .copied()
            .find(|document| yaml_string(document, &["metadata", "name"]) == Some(name))
            .with_context(|| format!("helm template charts/sluice rendered no {kind} {name}"))
    };
    let service_account = single("ServiceAccount")?;
    let cluster_role = named("ClusterRole", "sluice-controller")?;
    let binding = named("ClusterRoleBinding", "sluice-controller")?;
    ensure!(
        !by_kind.contains_key("CustomResourceDefinition"),
        "helm template without --include-crds rendered a CRD (kinds: {kinds:?})"
    );

    let account_name = yaml_string(service_account, &["metadata", "name"]).unwrap_or_default();
    let account_namespace =
        yaml_string(service_account, &["metadata", "namespace"]).unwrap_or_default();
    ensure!(
        account_namespace == "sluice-system",
        "the ServiceAccount is in namespace {account_namespace:?}, not the release's"
    );
    let role_name = yaml_string(cluster_role, &["metadata", "name"]).unwrap_or_default();
    let rules = cluster_role
        .get("rules")
        .and_then(Yaml::as_sequence)
        .map_or(0, Vec::len);
    ensure!(rules > 0, "the ClusterRole {role_name} has no rules");
    ensure!(
        yaml_string(binding, &["roleRef", "kind"]) == Some("ClusterRole")
            && yaml_string(binding, &["roleRef", "name"]) == Some(role_name),
        "the ClusterRoleBinding does not refer to ClusterRole {role_name}:\n{}",
        serde_yaml_ng::to_string(binding)?
    );
    let subjects = binding
        .get("subjects")
        .and_then(Yaml::as_sequence)
        .cloned()
        .unwrap_or_default();
    ensure!(
        subjects.iter().any(|subject| {
            yaml_string(subject, &["kind"]) == Some("ServiceAccount")
                && yaml_string(subject, &["name"]) == Some(account_name)
                && yaml_string(subject, &["namespace"]) == Some(account_namespace)
        }),
        "the ClusterRoleBinding does not bind ServiceAccount {account_namespace}/{account_name}:\n{}",
        serde_yaml_ng::to_string(binding)?
    );
    Ok(())
}

#[test]
fn helm_template_include_crds_carries_the_committed_crd_unchanged() -> Result<()> {
    let committed_text = read_repo_file("crds/streamjobs.sluice.dev.yaml")?;
    let committed: Yaml = serde_yaml_ng::from_str(&committed_text)
        .context("failed to parse crds/streamjobs.sluice.dev.yaml")?;
    let rendered =
        Environment::load()?.helm(&["template", "sluice", "charts/sluice", "--include-crds"])?;
    let documents = rendered_documents(&rendered)?;
    let crds: Vec<&(String, String, Yaml)> = documents
        .iter()
        .filter(|(_, _, document)| {
            yaml_string(document, &["kind"]) == Some("CustomResourceDefinition")
        })
        .collect();
    let [(source, text, crd)] = crds.as_slice() else {
        bail!(
            "helm template --include-crds rendered {} CRDs, expected exactly 1 (sources: {:?})",
            crds.len(),
            documents
                .iter()
                .map(|(source, _, _)| source)
                .collect::<Vec<_>>()
        );
    };
    ensure!(
        crd == &committed,
        "the CRD helm renders ({source}) differs from crds/streamjobs.sluice.dev.yaml: run \
         `make crd` and commit charts/sluice/crds/"
    );
    // Byte for byte too (helm adds only a `# Source:` line and a trailing newline).
    ensure!(
        text.trim_end() == committed_text.trim_end(),
        "the CRD helm renders ({source}) parses like crds/streamjobs.sluice.dev.yaml but its \
         text differs (comments or formatting): run `make crd` and commit charts/sluice/crds/"
    );
    Ok(())
}

// --- listeners -----------------------------------------------------------------------------

/// One listening socket as `ss -Hltnup` prints it.
#[derive(Clone, Debug, PartialEq)]
struct Listener {
    protocol: String,
    /// Without brackets or `%interface`; `*` for a wildcard.
    host: String,
    port: String,
    /// (process name, pid) of every process holding the socket; empty when ss cannot tell.
    processes: Vec<(String, u32)>,
    line: String,
}

impl Listener {
    fn endpoint(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    fn matches(&self, pattern: &str) -> bool {
        let (host, port) = pattern.rsplit_once(':').unwrap_or((pattern, "*"));
        self.host == host && (port == "*" || self.port == port)
    }
}

fn parse_ss_listeners(output: &str) -> Result<Vec<Listener>> {
    let mut listeners = Vec::new();
    for line in output.lines().filter(|line| !line.trim().is_empty()) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [
            protocol,
            _state,
            _receive_queue,
            _send_queue,
            local,
            _peer,
            ..,
        ] = fields.as_slice()
        else {
            bail!("failed to parse an ss line (too few fields): {line}");
        };
        let (host, port) = local
            .rsplit_once(':')
            .with_context(|| format!("failed to parse the local address of: {line}"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let host = host.split_once('%').map_or(host, |(address, _)| address);
        let processes = fields[6..]
            .join(" ")
            .split("((")
            .flat_map(|users| users.split("),("))
            .filter_map(|entry| {
                let name = entry.strip_prefix('"')?.split_once('"')?.0.to_owned();
                let pid = entry.split_once("pid=")?.1;
                let digits: String = pid.chars().take_while(char::is_ascii_digit).collect();
                Some((name, digits.parse().ok()?))
            })
            .collect();
        listeners.push(Listener {
            protocol: (*protocol).to_owned(),
            host: host.to_owned(),
            port: port.to_owned(),
            processes,
            line: line.trim_end().to_owned(),
        });
    }
    Ok(listeners)
}

/// What the check found: listeners of the cluster by owner, and everyone else's.
#[derive(Debug, Default)]
struct ListenerReport {
    ours: BTreeMap<String, Vec<Listener>>,
    foreign: Vec<Listener>,
}

impl ListenerReport {
    fn classify(listeners: Vec<Listener>, owner_of: impl Fn(u32, &str) -> Option<String>) -> Self {
        let mut report = Self::default();
        for listener in listeners {
            let owners: BTreeSet<String> = listener
                .processes
                .iter()
                .filter_map(|(name, pid)| owner_of(*pid, name))
                .collect();
            if owners.is_empty() {
                report.foreign.push(listener);
                continue;
            }
            for owner in owners {
                report.ours.entry(owner).or_default().push(listener.clone());
            }
        }
        report
    }

    /// Listeners of ours on an address other than loopback or the bridge.
    fn violations(&self) -> Vec<String> {
        self.ours
            .iter()
            .flat_map(|(owner, listeners)| listeners.iter().map(move |listener| (owner, listener)))
            .filter(|(_, listener)| !ALLOWED_HOSTS.contains(&listener.host.as_str()))
            .map(|(owner, listener)| {
                format!(
                    "{owner} listens on {}: {}",
                    listener.endpoint(),
                    listener.line
                )
            })
            .collect()
    }

    /// Expected listeners that were not found on their component's process.
    fn missing(&self, expected: &[(&str, &[&str])]) -> Vec<String> {
        let mut missing = Vec::new();
        for (component, patterns) in expected {
            let found = self.ours.get(*component).map_or(&[][..], Vec::as_slice);
            for pattern in *patterns {
                if !found.iter().any(|listener| listener.matches(pattern)) {
                    missing.push(format!(
                        "{component} on {pattern} (its listeners: {:?})",
                        found.iter().map(Listener::endpoint).collect::<Vec<_>>()
                    ));
                }
            }
        }
        missing
    }
}

/// The processes named by the cluster's pid files (`run/*.pid`, `node/pids/*.pid`) that are
/// alive and still run the command line recorded beside them: pid → component.
fn pid_file_components(state: &Path) -> Result<BTreeMap<u32, String>> {
    let mut components = BTreeMap::new();
    for directory in [state.join("run"), state.join("node/pids")] {
        let Ok(entries) = std::fs::read_dir(&directory) else {
            continue;
        };
        for entry in entries {
            let path = entry
                .with_context(|| format!("failed to list {}", directory.display()))?
                .path();
            if path.extension().is_none_or(|extension| extension != "pid") {
                continue;
            }
            let component = path
                .file_stem()
                .map(|stem| stem.to_string_lossy().into_owned())
                .unwrap_or_default();
            let Ok(pid) = std::fs::read_to_string(&path)
                .unwrap_or_default()
                .trim()
                .parse::<u32>()
            else {
                continue;
            };
            let expected = std::fs::read_to_string(path.with_extension("pid.cmd"))
                .unwrap_or_default()
                .trim()
                .to_owned();
            let running = std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|command| String::from_utf8_lossy(&command).replace('\0', " "))
                .is_ok_and(|command| command.contains(&expected));
            if running {
                components.insert(pid, component);
            }
        }
    }
    Ok(components)
}

/// Who owns a process: its component when a pid file names it, else a description when it
/// runs a binary of the caches, names the state or Kafka's cache on its command line, or
/// runs in a pod of the node (a cgroup under the node's cgroup root); `None` for software not
/// ours.
fn owner_of_process(
    pid: u32,
    name: &str,
    components: &BTreeMap<u32, String>,
    state: &Path,
    cache: &Path,
) -> Option<String> {
    if let Some(component) = components.get(&pid) {
        return Some(component.clone());
    }
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    if let Ok(executable) = std::fs::read_link(proc_dir.join("exe"))
        && executable.starts_with(cache.join("bin"))
    {
        return Some(format!("{name} (pid {pid}, {})", executable.display()));
    }
    let command = std::fs::read(proc_dir.join("cmdline"))
        .map(|command| String::from_utf8_lossy(&command).replace('\0', " "))
        .unwrap_or_default();
    let state_text = state.to_string_lossy();
    let kafka_text = cache.join("kafka").to_string_lossy().into_owned();
    if command.contains(state_text.as_ref()) || command.contains(&kafka_text) {
        return Some(format!("{name} (pid {pid}, {command})"));
    }
    let cgroup = std::fs::read_to_string(proc_dir.join("cgroup")).unwrap_or_default();
    let pods = format!("{}/kubepods", node_cgroup_root());
    if cgroup.lines().any(|line| {
        line.splitn(3, ':')
            .nth(2)
            .is_some_and(|path| path.starts_with(&pods))
    }) {
        return Some(format!("{name} (pid {pid}, in a pod)"));
    }
    None
}

#[test]
fn cluster_listens_only_on_loopback_and_the_bridge() -> Result<()> {
    let state = state_dir();
    let cache = cache_dir();
    let components = pid_file_components(&state)?;
    let running: BTreeSet<&str> = components.values().map(String::as_str).collect();
    let not_running: Vec<&str> = EXPECTED_LISTENERS
        .iter()
        .map(|(component, _)| *component)
        .filter(|component| !running.contains(component))
        .collect();
    ensure!(
        not_running.is_empty(),
        "no live process for {not_running:?} in the pid files under {} (running: {running:?}); \
         run `make cluster-up`",
        state.display()
    );

    let output = Command::new("ss")
        .arg("-Hltnup")
        .output()
        .context("failed to run ss (iproute2)")?;
    ensure!(
        output.status.success(),
        "ss -Hltnup failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    let listeners = parse_ss_listeners(&String::from_utf8_lossy(&output.stdout))?;
    let report = ListenerReport::classify(listeners, |pid, name| {
        owner_of_process(pid, name, &components, &state, &cache)
    });
    for listener in &report.foreign {
        eprintln!("not ours (ignored): {}", listener.line);
    }
    for (owner, listeners) in &report.ours {
        let endpoints: Vec<String> = listeners.iter().map(Listener::endpoint).collect();
        eprintln!("ours: {owner}: {endpoints:?}");
    }

    let violations = report.violations();
    ensure!(
        violations.is_empty(),
        "the cluster listens beyond 127.0.0.1, ::1 and {BRIDGE_ADDRESS}:\n  {}",
        violations.join("\n  ")
    );
    let missing = report.missing(EXPECTED_LISTENERS);
    ensure!(
        missing.is_empty(),
        "expected listeners not found on their component's pid (is ss run as root, so it can \
         name processes?):\n  {}",
        missing.join("\n  ")
    );
    Ok(())
}

/// The check itself, on a recorded `ss` output: it must catch one of ours on a wildcard
/// address, ignore others' listeners, and notice a missing expected listener.
#[test]
fn listener_check_catches_a_wildcard_listener_of_ours() -> Result<()> {
    let recorded = "\
tcp LISTEN 0 4096 127.0.0.1:2379 0.0.0.0:* users:((\"etcd\",pid=10,fd=8))
tcp LISTEN 0 4096 10.244.0.1:6443 0.0.0.0:* users:((\"kube-apiserver\",pid=11,fd=5))
tcp LISTEN 0 128 0.0.0.0:2024 0.0.0.0:*
tcp LISTEN 0 4096 *:10250 *:* users:((\"kubelet\",pid=12,fd=24),(\"kubelet\",pid=13,fd=24))
tcp LISTEN 0 4096 [::1]:10248 [::]:* users:((\"kubelet\",pid=12,fd=23))
udp UNCONN 0 0 127.0.0.53%lo:53 0.0.0.0:* users:((\"resolved\",pid=99,fd=3))
";
    let listeners = parse_ss_listeners(recorded)?;
    assert_eq!(listeners.len(), 6);
    assert_eq!(listeners[3].host, "*");
    assert_eq!(
        listeners[3].processes,
        vec![("kubelet".to_owned(), 12), ("kubelet".to_owned(), 13)]
    );
    assert_eq!(listeners[4].endpoint(), "::1:10248");
    assert_eq!(listeners[5].endpoint(), "127.0.0.53:53");
    assert!(listeners[2].processes.is_empty());

    let components: BTreeMap<u32, &str> =
        [(10, "etcd"), (11, "kube-apiserver"), (12, "kubelet")].into();
    let report = ListenerReport::classify(listeners, |pid, _| {
        components
            .get(&pid)
            .map(|component| (*component).to_owned())
    });
    assert_eq!(report.foreign.len(), 2, "{report:?}");
    let violations = report.violations();
    assert_eq!(violations.len(), 1, "{violations:?}");
    assert!(violations[0].starts_with("kubelet listens on *:10250"));

    let missing = report.missing(&[
        ("etcd", &["127.0.0.1:2379"]),
        ("kube-apiserver", &["10.244.0.1:*"]),
        ("kafka", &["127.0.0.1:9092"]),
    ]);
    assert_eq!(missing.len(), 1, "{missing:?}");
    assert!(missing[0].starts_with("kafka on 127.0.0.1:9092"));
    Ok(())
}

#[test]
fn pinned_versions_are_read_from_versions_sh() -> Result<()> {
    assert!(pinned_version("K8S_VERSION")?.starts_with("v1."));
    assert!(pinned_version("HELM_VERSION")?.starts_with('v'));
    assert!(pinned_version("NO_SUCH_VERSION").is_err());
    Ok(())
}
