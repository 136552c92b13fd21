//! The Helm chart as users meet it: `helm lint`; `values.schema.json` refusing wrong values
//! with their path; every value set rendering objects the real API server accepts (a
//! server-side dry run); and the controller's rights matching the table in
//! docs/operations.md, both ways, cluster-wide and per namespace.

use std::collections::BTreeSet;

use anyhow::{Context as _, Result, ensure};
use serde_yaml_ng::Value as Yaml;
use sluice_e2e::{Environment, TestNamespace, read_repo_file, rendered_documents, unique_name};

/// API groups whose kinds this cluster does not serve (the Prometheus Operator's and
/// cert-manager's): their objects are checked by rendering only.
const GROUPS_NOT_SERVED: [&str; 2] = ["monitoring.coreos.com/", "cert-manager.io/"];

fn template(environment: &Environment, namespace: &str, extra: &[&str]) -> Result<String> {
    template_release(environment, "sluice", namespace, extra)
}

/// `helm template` of a release with a name of the caller's choosing.
fn template_release(
    environment: &Environment,
    release: &str,
    namespace: &str,
    extra: &[&str],
) -> Result<String> {
    let mut arguments = vec!["template", release, "charts/sluice", "-n", namespace];
    arguments.extend_from_slice(extra);
    environment.helm(&arguments)
}

fn kinds(rendered: &str) -> Result<Vec<String>> {
    Ok(rendered_documents(rendered)?
        .iter()
        .filter_map(|(_, _, value)| value.get("kind")?.as_str().map(String::from))
        .collect())
}

#[test]
fn helm_lint_passes() -> Result<()> {
    let output = Environment::load()?.helm(&["lint", "charts/sluice", "--strict"])?;
    ensure!(output.contains("0 chart(s) failed"), "helm lint: {output}");
    Ok(())
}

#[test]
fn the_schema_refuses_wrong_values_naming_them() -> Result<()> {
    let environment = Environment::load()?;
    // (what, --set argument, what the message must name)
    let cases = [
        ("a string for a number", "replicas=two", "/replicas"),
        ("an unknown key (a typo)", "replicaz=2", "replicaz"),
        (
            "a nested typo",
            "webhook.failurPolicy=Ignore",
            "failurPolicy",
        ),
        ("a privileged port", "webhook.port=80", "/webhook/port"),
        ("a log format that is none", "logFormat=xml", "/logFormat"),
        (
            "a number for a duration",
            "leaderElection.leaseDuration=15",
            "leaseDuration",
        ),
        (
            "a bad duration",
            "leaderElection.leaseDuration=soon",
            "leaseDuration",
        ),
        (
            "a bad failure policy",
            "webhook.failurePolicy=Sometimes",
            "failurePolicy",
        ),
        (
            "a timeout the API server refuses",
            "webhook.timeoutSeconds=60",
            "timeoutSeconds",
        ),
        (
            "a string for a list",
            "watchNamespaces=team-a",
            "/watchNamespaces",
        ),
        (
            "a namespace that is no DNS label",
            "watchNamespaces={Team_A}",
            "watchNamespaces",
        ),
        (
            "a pull policy that is none",
            "image.pullPolicy=Sometimes",
            "pullPolicy",
        ),
        (
            "a typo in the worker resources",
            "workerResources.request.cpu=1",
            "request",
        ),
        (
            "a number for a label",
            "grafanaDashboard.labels.grafana_dashboard=1",
            "grafana_dashboard",
        ),
    ];
    for (what, set, named) in cases {
        let error = template(&environment, "sluice-system", &["--set", set])
            .err()
            .with_context(|| format!("{what}: helm rendered --set {set}"))?;
        let message = format!("{error:#}");
        ensure!(
            message.contains("schema") && message.contains(named),
            "{what}: --set {set} failed without naming {named} in the schema's terms: {message}"
        );
    }
    // Two replicas without leader election would reconcile every job twice.
    let error = template(
        &environment,
        "sluice-system",
        &[
            "--set",
            "replicas=2",
            "--set",
            "leaderElection.enabled=false",
        ],
    )
    .err()
    .context("two replicas without leader election rendered")?;
    ensure!(
        format!("{error:#}").contains("leaderElection.enabled"),
        "{error:#}"
    );
    // And the values the chart ships pass.
    template(&environment, "sluice-system", &[])?;
    Ok(())
}

/// Every value set renders objects the API server accepts, in fresh namespaces. The
/// release is named after its fresh namespace: cluster-scoped objects (ClusterRole,
/// ClusterRoleBinding, the webhook configuration) carry the release's name, and a release
/// installed for real under a common name (`make demo` installs `sluice` and leaves it
/// running) would otherwise own those names and turn the dry run into a conflict.
#[tokio::test]
async fn every_value_set_renders_objects_the_api_server_accepts() -> Result<()> {
    let environment = Environment::load()?;
    let client = environment.client().await?;
    let release = TestNamespace::create(&client, "chart").await?;
    let team_a = TestNamespace::create(&client, "chart-a").await?;
    let team_b = TestNamespace::create(&client, "chart-b").await?;
    let watched = format!("watchNamespaces={{{},{}}}", team_a.name, team_b.name);
    let directory = std::env::temp_dir().join(unique_name("chart"));
    std::fs::create_dir_all(&directory)?;
    let monitors = [
        "--api-versions",
        "monitoring.coreos.com/v1/ServiceMonitor",
        "--api-versions",
        "monitoring.coreos.com/v1/PodMonitor",
    ];
    // (name, helm arguments, kinds that must be rendered, kinds that must not)
    type ValueSet<'a> = (&'a str, Vec<&'a str>, Vec<&'a str>, Vec<&'a str>);
    let value_sets: Vec<ValueSet> = vec![
        (
            "defaults",
            vec![],
            vec![
                "Deployment",
                "ClusterRole",
                "ValidatingWebhookConfiguration",
            ],
            vec!["NetworkPolicy", "ServiceMonitor", "PodMonitor", "ConfigMap"],
        ),
        (
            "one replica, no leader election, no webhook",
            vec![
                "--set",
                "replicas=1",
                "--set",
                "leaderElection.enabled=false",
                "--set",
                "webhook.enabled=false",
            ],
            vec!["Deployment"],
            vec!["ValidatingWebhookConfiguration", "Service"],
        ),
        (
            "watched namespaces with a NetworkPolicy",
            vec!["--set", &watched, "--set", "networkPolicy.enabled=true"],
            vec!["Role", "RoleBinding", "NetworkPolicy"],
            vec![],
        ),
        (
            "the Prometheus Operator installed, a dashboard",
            [
                monitors.as_slice(),
                &["--set", "grafanaDashboard.enabled=true"],
            ]
            .concat(),
            vec!["ServiceMonitor", "PodMonitor", "ConfigMap"],
            vec![],
        ),
        (
            "cert-manager",
            vec!["--set", "webhook.certManager=true"],
            vec!["Certificate", "Issuer"],
            vec![],
        ),
        (
            "worker defaults",
            vec![
                "--set",
                "workerResources.requests.cpu=500m",
                "--set",
                "workerStorageClass=local-path",
            ],
            vec!["Deployment"],
            vec![],
        ),
    ];
    let mut failures = Vec::new();
    for (name, arguments, present, absent) in &value_sets {
        let rendered = template_release(&environment, &release.name, &release.name, arguments)
            .with_context(|| format!("{name}: helm template"))?;
        let kinds = kinds(&rendered)?;
        for kind in present {
            ensure!(
                kinds.iter().any(|rendered| rendered == kind),
                "{name}: no {kind} rendered (kinds: {kinds:?})"
            );
        }
        for kind in absent {
            ensure!(
                !kinds.iter().any(|rendered| rendered == kind),
                "{name}: a {kind} rendered (kinds: {kinds:?})"
            );
        }
        let served: Vec<String> = rendered_documents(&rendered)?
            .into_iter()
            .filter(|(_, _, value)| {
                let api_version = value
                    .get("apiVersion")
                    .and_then(Yaml::as_str)
                    .unwrap_or_default();
                !GROUPS_NOT_SERVED
                    .iter()
                    .any(|group| api_version.starts_with(group))
            })
            .map(|(_, text, _)| text)
            .collect();
        let file = directory.join("rendered.yaml");
        std::fs::write(&file, served.join("---\n"))?;
        if let Err(error) = environment.kubectl(&[
            "apply",
            "--server-side",
            "--dry-run=server",
            "--field-manager=helm",
            "-f",
            &file.to_string_lossy(),
        ]) {
            failures.push(format!("{name}: {error:#}"));
        }
    }
    release.delete().await?;
    team_a.delete().await?;
    team_b.delete().await?;
    std::fs::remove_dir_all(&directory)?;
    ensure!(
        failures.is_empty(),
        "the API server refused rendered objects:\n{}",
        failures.join("\n")
    );
    Ok(())
}

/// A right: (API group, resource, verb, scope), as the table in docs/operations.md names
/// them (`core` for the empty group).
type Right = (String, String, String, String);

/// The rights table of docs/operations.md (`## Rights`).
fn documented_rights() -> Result<BTreeSet<Right>> {
    let text = read_repo_file("docs/operations.md")?;
    let section = text
        .split("\n## Rights")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .context("docs/operations.md has no `## Rights` section")?;
    let mut rights = BTreeSet::new();
    for line in section.lines().filter(|line| line.starts_with("| ")) {
        let cells: Vec<&str> = line
            .trim_matches('|')
            .split('|')
            .map(|cell| cell.trim().trim_matches('`'))
            .collect();
        if cells[0] == "API group" {
            continue;
        }
        let [group, resource, verbs, scope, _why] = cells[..] else {
            anyhow::bail!("a row of the rights table without 5 cells: {line}");
        };
        for verb in verbs.split(',') {
            rights.insert((
                group.to_string(),
                resource.to_string(),
                verb.trim().to_string(),
                scope.to_string(),
            ));
        }
    }
    ensure!(!rights.is_empty(), "the rights table is empty");
    Ok(rights)
}

/// The rights the rendered chart grants, with the scope the table uses.
fn rendered_rights(rendered: &str, release_namespace: &str) -> Result<BTreeSet<Right>> {
    let mut rights = BTreeSet::new();
    for (source, _, value) in rendered_documents(rendered)? {
        let kind = value.get("kind").and_then(Yaml::as_str).unwrap_or_default();
        if kind != "Role" && kind != "ClusterRole" {
            continue;
        }
        let namespace = value
            .get("metadata")
            .and_then(|metadata| metadata.get("namespace"))
            .and_then(Yaml::as_str);
        let rules = value
            .get("rules")
            .and_then(Yaml::as_sequence)
            .with_context(|| format!("a {kind} without rules ({source})"))?;
        for rule in rules {
            let strings = |key: &str| -> Vec<String> {
                rule.get(key)
                    .and_then(Yaml::as_sequence)
                    .map(|items| {
                        items
                            .iter()
                            .filter_map(|item| item.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default()
            };
            let scope = if !strings("resourceNames").is_empty() {
                "its own, by name"
            } else if kind == "Role" && namespace == Some(release_namespace) {
                "release namespace"
            } else {
                "watched namespaces"
            };
            for group in strings("apiGroups") {
                let group = if group.is_empty() {
                    "core".into()
                } else {
                    group
                };
                for resource in strings("resources") {
                    for verb in strings("verbs") {
                        rights.insert((group.clone(), resource.clone(), verb, scope.into()));
                    }
                }
            }
        }
    }
    Ok(rights)
}

fn compare(what: &str, rendered: &BTreeSet<Right>, documented: &BTreeSet<Right>) -> Result<()> {
    let extra: Vec<_> = rendered.difference(documented).collect();
    let missing: Vec<_> = documented.difference(rendered).collect();
    ensure!(
        extra.is_empty() && missing.is_empty(),
        "{what}: the chart's rules and docs/operations.md's rights table differ\n\
         granted but not documented: {extra:?}\ndocumented but not granted: {missing:?}"
    );
    Ok(())
}

#[test]
fn the_controllers_rights_are_the_documented_ones() -> Result<()> {
    let environment = Environment::load()?;
    let documented = documented_rights()?;
    // Cluster-wide, generating the webhook's certificate: every row.
    let rendered = template(&environment, "sluice-system", &[])?;
    compare(
        "defaults",
        &rendered_rights(&rendered, "sluice-system")?,
        &documented,
    )?;
    // Two watched namespaces: the same rules in a Role in each, no ClusterRole beyond the
    // webhook configuration's.
    let rendered = template(
        &environment,
        "sluice-system",
        &["--set", "watchNamespaces={team-a,team-b}"],
    )?;
    compare(
        "watchNamespaces",
        &rendered_rights(&rendered, "sluice-system")?,
        &documented,
    )?;
    let mut per_namespace = BTreeSet::new();
    for (_, _, value) in rendered_documents(&rendered)? {
        let kind = value.get("kind").and_then(Yaml::as_str).unwrap_or_default();
        let name = value["metadata"]["name"].as_str().unwrap_or_default();
        if kind == "ClusterRole" {
            ensure!(
                name.ends_with("-webhook"),
                "with watchNamespaces, a ClusterRole {name} besides the webhook's"
            );
        }
        if kind == "Role" && name.ends_with("-controller") {
            per_namespace.insert(
                value["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            );
        }
    }
    ensure!(
        per_namespace == BTreeSet::from(["team-a".to_string(), "team-b".to_string()]),
        "the controller's Roles are in {per_namespace:?}, not in team-a and team-b"
    );
    // With cert-manager, the controller keeps no certificate: the last two rows go.
    let rendered = template(
        &environment,
        "sluice-system",
        &["--set", "webhook.certManager=true"],
    )?;
    let without_certificate: BTreeSet<Right> = documented
        .iter()
        .filter(|(group, resource, _, scope)| {
            !(group == "admissionregistration.k8s.io"
                || (resource == "secrets" && scope == "release namespace"))
        })
        .cloned()
        .collect();
    compare(
        "cert-manager",
        &rendered_rights(&rendered, "sluice-system")?,
        &without_certificate,
    )?;
    Ok(())
}
