//! The worker process's CPU time and the CPU it may use (its container's quota), read on
//! each scrape. The autoscaler divides one by the other: a worker whose Kafka client
//! threads use up its quota is saturated, however idle its processing loop looks.

use std::path::Path;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// CPU seconds used by every thread of this process so far.
pub fn process_cpu_seconds() -> f64 {
    let time = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    time.tv_sec as f64 + time.tv_nsec as f64 / 1e9
}

/// The cores this process may use: the smallest CPU quota of its cgroup and their
/// ancestors (cgroup v2 `cpu.max`, v1 `cpu.cfs_quota_us`), else the CPUs it may run on.
pub fn cpu_limit_cores() -> f64 {
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let quota = smallest_quota(Path::new("/sys/fs/cgroup"), &own);
    let cpus = std::thread::available_parallelism().map_or(1, usize::from) as f64;
    quota.map_or(cpus, |quota| quota.min(cpus))
}

/// The smallest quota among the cgroup directories that may limit this process, under
/// the hierarchy mounted at `root`, given `/proc/self/cgroup`. In a container the
/// mount shows the container's own cgroup at its top (cgroup v2 with a cgroup namespace,
/// or v1 as runc mounts it), so the tops count as well as the paths the file names.
fn smallest_quota(root: &Path, proc_self_cgroup: &str) -> Option<f64> {
    let mut directories = vec![root.to_path_buf()];
    let mut v1_mounts = Vec::new();
    for line in proc_self_cgroup.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let path = Path::new(path.trim().trim_start_matches('/'));
        let mount = if controllers.is_empty() {
            root.to_path_buf()
        } else if controllers.split(',').any(|controller| controller == "cpu") {
            root.join(controllers)
        } else {
            continue;
        };
        v1_mounts.push(mount.clone());
        directories.extend(path.ancestors().map(|ancestor| mount.join(ancestor)));
    }
    directories.extend(v1_mounts);
    directories.extend([root.join("cpu"), root.join("cpu,cpuacct")]);
    directories
        .iter()
        .filter_map(|directory| read_quota(directory))
        .reduce(f64::min)
}

/// The quota of one cgroup directory, in cores: `cpu.max` (v2) or `cpu.cfs_quota_us`
/// over `cpu.cfs_period_us` (v1).
fn read_quota(directory: &Path) -> Option<f64> {
    if let Ok(text) = std::fs::read_to_string(directory.join("cpu.max")) {
        return parse_cpu_max(&text);
    }
    let quota = std::fs::read_to_string(directory.join("cpu.cfs_quota_us")).ok()?;
    let period = std::fs::read_to_string(directory.join("cpu.cfs_period_us")).ok()?;
    parse_cpu_max(&format!("{} {}", quota.trim(), period.trim()))
}

/// Cores from a `cpu.max` file: `"<quota> <period>"` in microseconds, or `max` (none);
/// v1's quota of -1 is none too.
fn parse_cpu_max(text: &str) -> Option<f64> {
    let mut fields = text.split_whitespace();
    let quota: f64 = fields.next()?.parse().ok()?;
    let period: f64 = fields.next().unwrap_or("100000").parse().ok()?;
    (quota > 0.0 && period > 0.0).then(|| quota / period)
}

/// Serves `cpu_seconds_total` and `cpu_limit_cores`, read when scraped.
#[derive(Debug)]
pub struct CpuCollector;

impl Collector for CpuCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let used = ConstCounter::new(process_cpu_seconds());
        used.encode(encoder.encode_descriptor(
            "cpu_seconds",
            "CPU seconds used by every thread of the worker process (processing, Kafka clients, RocksDB)",
            None,
            used.metric_type(),
        )?)?;
        let limit = ConstGauge::new(cpu_limit_cores());
        limit.encode(encoder.encode_descriptor(
            "cpu_limit_cores",
            "The cores the worker may use: its container's CPU limit, else the CPUs it can run on",
            None,
            limit.metric_type(),
        )?)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_max_files_are_read_as_cores() {
        for (text, cores) in [
            ("max 100000\n", None),
            ("50000 100000\n", Some(0.5)),
            ("10000 100000", Some(0.1)),
            ("200000 100000\n", Some(2.0)),
            ("150000\n", Some(1.5)),
            ("", None),
            ("0 100000", None),
            ("lots 100000", None),
            ("-1 100000", None),
        ] {
            assert_eq!(parse_cpu_max(text), cores, "{text:?}");
        }
    }

    #[test]
    fn the_smallest_quota_on_the_way_to_the_root_wins() {
        let root = tempfile::tempdir().unwrap();
        let pod = root.path().join("kubepods/pod");
        let container = pod.join("container");
        std::fs::create_dir_all(&container).unwrap();
        std::fs::write(root.path().join("cpu.max"), "max 100000\n").unwrap();
        std::fs::write(pod.join("cpu.max"), "20000 100000\n").unwrap();
        std::fs::write(container.join("cpu.max"), "50000 100000\n").unwrap();
        let own = "0::/kubepods/pod/container\n";
        assert_eq!(smallest_quota(root.path(), own), Some(0.2));
        assert_eq!(smallest_quota(root.path(), "0::/\n"), None);
        assert_eq!(smallest_quota(root.path(), ""), None);
    }

    #[test]
    fn a_container_with_its_own_cgroup_namespace_reads_the_top() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("cpu.max"), "10000 100000\n").unwrap();
        assert_eq!(smallest_quota(root.path(), "0::/\n"), Some(0.1));
    }

    #[test]
    fn cgroup_v1_quotas_are_read_from_the_cpu_hierarchy() {
        // As runc mounts it: the container's own cgroup at the top of the cpu mount,
        // while /proc/self/cgroup names the host's path.
        let root = tempfile::tempdir().unwrap();
        let cpu = root.path().join("cpu");
        std::fs::create_dir_all(&cpu).unwrap();
        std::fs::write(cpu.join("cpu.cfs_quota_us"), "10000\n").unwrap();
        std::fs::write(cpu.join("cpu.cfs_period_us"), "100000\n").unwrap();
        let own =
            "4:memory:/node/kubepods/pod/c\n1:cpu:/node/kubepods/pod/c\n0::/node/kubepods/pod/c\n";
        assert_eq!(smallest_quota(root.path(), own), Some(0.1));
        // Seen from the host: the path under the mount, and -1 (no quota) above it.
        let host = tempfile::tempdir().unwrap();
        let joined = host.path().join("cpu,cpuacct");
        let pod = joined.join("kubepods/pod");
        std::fs::create_dir_all(pod.join("c")).unwrap();
        for (directory, quota) in [(&joined, "-1"), (&pod, "50000"), (&pod.join("c"), "-1")] {
            std::fs::write(directory.join("cpu.cfs_quota_us"), quota).unwrap();
            std::fs::write(directory.join("cpu.cfs_period_us"), "100000").unwrap();
        }
        assert_eq!(
            smallest_quota(host.path(), "2:cpu,cpuacct:/kubepods/pod/c\n"),
            Some(0.5)
        );
    }

    #[test]
    fn cpu_time_grows_with_work_and_is_served_under_the_prefix() {
        let before = process_cpu_seconds();
        let mut spin = 0u64;
        while process_cpu_seconds() - before < 0.02 {
            spin = spin.wrapping_add(1);
        }
        assert!(spin > 0);
        let mut registry = prometheus_client::registry::Registry::default();
        registry
            .sub_registry_with_prefix("sluice_worker")
            .register_collector(Box::new(CpuCollector));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(text.contains("sluice_worker_cpu_seconds_total "), "{text}");
        assert!(text.contains("sluice_worker_cpu_limit_cores "), "{text}");
        assert!(cpu_limit_cores() > 0.0);
    }
}
