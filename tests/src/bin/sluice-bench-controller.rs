//! The controller's scale benchmark driver (`bench/controller-scale.sh` runs it): applies
//! `BENCH_JOBS` StreamJobs to one namespace as fast as the API server takes them, watches
//! them, and reports how long the running `sluice-controller` took to reconcile them: time
//! until every job has a status for its generation and until every job is Ready, the p50
//! and p99 latency from a job's apply to its first status, API requests per reconcile (from
//! the controller's metrics), and the controller's peak RSS and CPU time (from `/proc`).
//!
//! Settings (environment): `BENCH_JOBS` (1000), `BENCH_NAMESPACE` (sluice-bench),
//! `BENCH_CONTROLLER_ADDRESS` (its metrics address, required), `BENCH_CONTROLLER_PID`
//! (required), `BENCH_APPLY_CONCURRENCY` (16 applies in flight), `BENCH_NODE_SELECTOR`
//! (`type=kwok`: where the pods go), `BENCH_STORAGE_CLASS` (sluice-bench-fake),
//! `BENCH_TIMEOUT` (seconds, 600), `BENCH_WAIT_READY` (1: also wait for Ready),
//! `BENCH_APPLY_RATE` (jobs per second; 0, the default: as fast as the API server takes
//! them, a burst like a GitOps sync of every job at once).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use futures::{StreamExt, TryStreamExt};
use kube::api::{Api, PostParams};
use kube::runtime::watcher;
use serde_json::json;
use sluice_crds::StreamJob;
use sluice_e2e::Environment;
use sluice_e2e::worker::http_get;

/// When each job was seen at each stage.
#[derive(Default)]
struct Seen {
    applied: HashMap<String, Instant>,
    first_status: HashMap<String, Instant>,
    reconciled: HashMap<String, Instant>,
    ready: HashMap<String, Instant>,
}

fn setting(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|value| !value.is_empty())
        .unwrap_or_else(|| default.to_string())
}

fn job(
    name: &str,
    namespace: &str,
    node_selector: (&str, &str),
    storage_class: &str,
) -> Result<StreamJob> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "sluice.dev/v1alpha1",
        "kind": "StreamJob",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "parallelism": 1,
            "imagePullPolicy": "Never",
            // Never contacted: the pods run on a kwok node, which runs nothing.
            "kafka": {"bootstrapServers": "kafka.invalid:9092"},
            "source": {
                "topics": ["page-views"],
                "eventTime": {"field": "timestamp"},
                "watermark": {"maxOutOfOrderness": "5s"}
            },
            "pipeline": [
                {"filter": "event.status == 200"},
                {"keyBy": "event.url"},
                {"window": {"tumbling": {"size": "1m"}, "allowedLateness": "30s"}},
                {"aggregate": {"views": {"function": "Count"}}}
            ],
            "sink": {"topic": "page-views-per-minute"},
            "state": {"volumeSize": "1Gi", "storageClassName": storage_class},
            "podTemplate": {
                "nodeSelector": {node_selector.0: node_selector.1},
                "tolerations": [{"key": "kwok.x-k8s.io/node", "operator": "Exists",
                                 "effect": "NoSchedule"}]
            }
        }
    }))?)
}

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    // Nearest rank.
    let rank = (fraction * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The sum of the samples of a metric (lines starting with `name` and a space or `{`).
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Requests other than watches, and reconciles, from the controller's metrics.
fn requests_and_reconciles(address: SocketAddr) -> Result<(f64, f64)> {
    let (_, text) = http_get(address, "/metrics").context("failed to scrape the controller")?;
    let requests = metric(&text, "sluice_controller_api_requests_total")
        - metric(
            &text,
            "sluice_controller_api_requests_total{verb=\"watch\"}",
        );
    Ok((
        requests,
        metric(&text, "sluice_controller_reconciles_total"),
    ))
}

/// What `/proc` tells of a process: its peak RSS, and its RSS now split into anonymous
/// memory (the heap) and file-backed pages (the binary's code and data read in), in MiB;
/// and its CPU time (user + system, seconds).
struct ProcessUsage {
    peak_rss: f64,
    rss_anonymous: f64,
    rss_file: f64,
    cpu: f64,
}

/// The value in MiB of the `/proc/<pid>/status` line `field` (given in kB).
fn status_mebibytes(status: &str, field: &str) -> Result<f64> {
    let kibibytes: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no {field} in /proc status"))?;
    Ok(kibibytes / 1024.0)
}

fn process_usage(pid: u32) -> Result<ProcessUsage> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("failed to read /proc/{pid}/status"))?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The fields after the command name (which may hold spaces, so after its ')').
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the name.
    let ticks: f64 = fields
        .get(11..13)
        .context("short /proc stat")?
        .iter()
        .filter_map(|field| field.parse::<f64>().ok())
        .sum();
    let per_second: f64 = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|output| String::from_utf8(output.stdout).ok()?.trim().parse().ok())
        .unwrap_or(100.0);
    Ok(ProcessUsage {
        peak_rss: status_mebibytes(&status, "VmHWM")?,
        rss_anonymous: status_mebibytes(&status, "RssAnon")?,
        rss_file: status_mebibytes(&status, "RssFile")?,
        cpu: ticks / per_second,
    })
}

#[tokio::main]
async fn main() -> Result<()> {
    let jobs: usize = setting("BENCH_JOBS", "1000").parse()?;
    let namespace = setting("BENCH_NAMESPACE", "sluice-bench");
    let address: SocketAddr = setting("BENCH_CONTROLLER_ADDRESS", "")
        .parse()
        .context("BENCH_CONTROLLER_ADDRESS: the controller's metrics address")?;
    let pid: u32 = setting("BENCH_CONTROLLER_PID", "")
        .parse()
        .context("BENCH_CONTROLLER_PID: the controller's process id")?;
    let concurrency: usize = setting("BENCH_APPLY_CONCURRENCY", "16").parse()?;
    let node_selector = setting("BENCH_NODE_SELECTOR", "type=kwok");
    let node_selector = node_selector
        .split_once('=')
        .context("BENCH_NODE_SELECTOR is key=value")?;
    let storage_class = setting("BENCH_STORAGE_CLASS", "sluice-bench-fake");
    let timeout = Duration::from_secs(setting("BENCH_TIMEOUT", "600").parse()?);
    let wait_ready = setting("BENCH_WAIT_READY", "1") == "1";
    let rate: f64 = setting("BENCH_APPLY_RATE", "0").parse()?;

    let environment = Environment::load()?;
    let client = environment.client().await?;
    let api: Api<StreamJob> = Api::namespaced(client.clone(), &namespace);
    let seen = Arc::new(Mutex::new(Seen::default()));

    // The watch starts before the first apply, so no status is missed.
    let watching = {
        let seen = seen.clone();
        let api = api.clone();
        let (listed, mut listed_receiver) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let stream = watcher(api, watcher::Config::default());
            futures::pin_mut!(stream);
            while let Some(event) = stream.try_next().await? {
                let now = Instant::now();
                let job = match event {
                    watcher::Event::InitDone => {
                        let _ = listed.send(true);
                        continue;
                    }
                    watcher::Event::Apply(job) | watcher::Event::InitApply(job) => job,
                    _ => continue,
                };
                let name = job.metadata.name.clone().unwrap_or_default();
                let Some(status) = &job.status else { continue };
                let mut seen = seen.lock().expect("no panic while holding the lock");
                seen.first_status.entry(name.clone()).or_insert(now);
                if status.observed_generation.is_some()
                    && status.observed_generation == job.metadata.generation
                {
                    seen.reconciled.entry(name.clone()).or_insert(now);
                }
                if status
                    .conditions
                    .iter()
                    .any(|condition| condition.type_ == "Ready" && condition.status == "True")
                {
                    seen.ready.entry(name).or_insert(now);
                }
            }
            anyhow::Ok(())
        });
        listed_receiver
            .wait_for(|listed| *listed)
            .await
            .context("the StreamJob watch ended before its first list")?;
        task
    };

    let (requests_before, reconciles_before) = requests_and_reconciles(address)?;
    eprintln!(
        "applying {jobs} StreamJobs to {namespace}, {concurrency} at a time, rate {rate}/s (0: no limit)"
    );
    let started = Instant::now();
    let names: Vec<String> = (0..jobs).map(|index| format!("bench-{index:04}")).collect();
    futures::stream::iter(names.iter().cloned().enumerate())
        .then(|(index, name)| async move {
            if rate > 0.0 {
                let due = started + Duration::from_secs_f64(index as f64 / rate);
                tokio::time::sleep_until(due.into()).await;
            }
            name
        })
        .map(|name| {
            let api = api.clone();
            let seen = seen.clone();
            let namespace = namespace.clone();
            let storage_class = storage_class.clone();
            async move {
                let job = job(&name, &namespace, node_selector, &storage_class)?;
                api.create(&PostParams::default(), &job)
                    .await
                    .with_context(|| format!("failed to create StreamJob {name}"))?;
                seen.lock()
                    .expect("no panic while holding the lock")
                    .applied
                    .insert(name, Instant::now());
                anyhow::Ok(())
            }
        })
        .buffer_unordered(concurrency)
        .try_collect::<Vec<()>>()
        .await?;
    let applied = started.elapsed();
    eprintln!("applied {jobs} in {applied:?}");

    let wait_for = |stage: &'static str| {
        let seen = seen.clone();
        async move {
            loop {
                let count = {
                    let seen = seen.lock().expect("no panic while holding the lock");
                    match stage {
                        "reconciled" => seen.reconciled.len(),
                        _ => seen.ready.len(),
                    }
                };
                if count >= jobs {
                    return Ok(started.elapsed());
                }
                if started.elapsed() > timeout {
                    bail!("only {count} of {jobs} jobs {stage} within {timeout:?}");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let all_reconciled = wait_for("reconciled").await?;
    eprintln!("all reconciled after {all_reconciled:?}");
    let (requests_reconciled, reconciles_reconciled) = requests_and_reconciles(address)?;
    let all_ready = if wait_ready {
        let ready = wait_for("ready").await?;
        eprintln!("all Ready after {ready:?}");
        Some(ready)
    } else {
        None
    };
    // The StatefulSets' status updates settle; then count what the whole run cost.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (requests_after, reconciles_after) = requests_and_reconciles(address)?;
    let usage = process_usage(pid)?;
    watching.abort();

    let mut latencies: Vec<Duration> = {
        let seen = seen.lock().expect("no panic while holding the lock");
        names
            .iter()
            .filter_map(|name| {
                Some(
                    seen.first_status
                        .get(name)?
                        .saturating_duration_since(*seen.applied.get(name)?),
                )
            })
            .collect()
    };
    latencies.sort();
    let requests = requests_after - requests_before;
    let reconciles = reconciles_after - reconciles_before;
    let first_requests = requests_reconciled - requests_before;
    let first_reconciles = reconciles_reconciled - reconciles_before;
    println!("jobs                                {jobs}");
    println!(
        "applied in                          {:.2} s ({})",
        applied.as_secs_f64(),
        if rate > 0.0 {
            format!("paced at {rate} per second")
        } else {
            "a burst".to_string()
        }
    );
    println!(
        "all reconciled (status) after       {:.2} s",
        all_reconciled.as_secs_f64()
    );
    if let Some(ready) = all_ready {
        println!(
            "all Ready (kwok pods) after         {:.2} s",
            ready.as_secs_f64()
        );
    }
    println!(
        "apply -> first status              p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms ({} samples)",
        percentile(&latencies, 0.50).as_secs_f64() * 1000.0,
        percentile(&latencies, 0.99).as_secs_f64() * 1000.0,
        latencies.last().copied().unwrap_or_default().as_secs_f64() * 1000.0,
        latencies.len()
    );
    println!(
        "until all reconciled                {first_requests} API requests, {first_reconciles} reconciles, {:.1} requests per reconcile",
        first_requests / first_reconciles.max(1.0)
    );
    println!(
        "whole run (+10 s settling)          {requests} API requests, {reconciles} reconciles, {:.1} requests per reconcile",
        requests / reconciles.max(1.0)
    );
    println!(
        "controller peak RSS                 {:.1} MiB",
        usage.peak_rss
    );
    println!(
        "controller RSS at the end           {:.1} MiB anonymous, {:.1} MiB file-backed",
        usage.rss_anonymous, usage.rss_file
    );
    println!("controller CPU (user + system)      {:.2} s", usage.cpu);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_are_read_in_mebibytes() {
        let status = "VmHWM:\t   75776 kB\nRssAnon:\t   51200 kB\nRssFile:\t   10240 kB\n";
        let cases = [
            ("VmHWM", Some(74.0)),
            ("RssAnon", Some(50.0)),
            ("RssFile", Some(10.0)),
            // Only the whole field name: "Rss" is no line of its own.
            ("Rss", None),
            ("VmRSS", None),
        ];
        for (field, expect) in cases {
            assert_eq!(status_mebibytes(status, field).ok(), expect, "{field}");
        }
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let cases = [(0.50, 50), (0.99, 99), (1.0, 100), (0.001, 1)];
        for (fraction, expect) in cases {
            assert_eq!(
                percentile(&samples, fraction),
                Duration::from_millis(expect),
                "{fraction}"
            );
        }
        assert_eq!(percentile(&[], 0.5), Duration::ZERO);
    }

    #[test]
    fn metrics_are_summed_over_their_labels() {
        let text = "# HELP x\nsluice_controller_api_requests_total{verb=\"watch\"} 6\n\
                    sluice_controller_api_requests_total{verb=\"patch\"} 10\n\
                    sluice_controller_api_requests_total_other 99\n";
        assert_eq!(metric(text, "sluice_controller_api_requests_total"), 16.0);
        assert_eq!(
            metric(text, "sluice_controller_api_requests_total{verb=\"watch\"}"),
            6.0
        );
    }
}
