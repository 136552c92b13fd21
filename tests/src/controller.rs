//! `sluice-controller run` processes on this machine against the test cluster, as a user
//! runs it from a shell while developing: started, scraped, asked to stop (SIGTERM),
//! killed (SIGKILL).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::Environment;
use crate::worker::{free_address, http_get, log_tail};

/// The controller binary: `SLUICE_CONTROLLER_BIN`, else the one built beside this test.
pub fn controller_binary() -> Result<PathBuf> {
    crate::built_binary("SLUICE_CONTROLLER_BIN", "sluice-controller")
}

/// How one controller runs.
#[derive(Clone, Debug)]
pub struct ControllerSpec {
    /// The namespaces it watches.
    pub namespaces: Vec<String>,
    /// The worker image of jobs that set none.
    pub worker_image: String,
    /// Leader election: the Lease's namespace and name; `None`: off.
    pub lease: Option<(String, String)>,
    /// Lease duration (with leader election).
    pub lease_duration: Duration,
    /// Its identity.
    pub identity: String,
    /// Where its log goes (appended).
    pub log: PathBuf,
    /// More flags of `sluice-controller run` (the webhook's, for example).
    pub extra_args: Vec<String>,
}

/// A running controller process.
pub struct ControllerProcess {
    /// How it was started.
    pub spec: ControllerSpec,
    /// Its metrics and health endpoints.
    pub address: SocketAddr,
    child: Child,
}

impl ControllerProcess {
    /// Starts a controller against the test cluster.
    pub fn start(environment: &Environment, spec: &ControllerSpec) -> Result<Self> {
        let address = free_address()?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&spec.log)
            .with_context(|| format!("failed to open {}", spec.log.display()))?;
        let mut command = Command::new(controller_binary()?);
        command
            .env("KUBECONFIG", &environment.kubeconfig)
            .args([
                "--log-format",
                "json",
                "--log",
                "info,sluice_controller=debug",
            ])
            .arg("run")
            .arg(format!("--namespace={}", spec.namespaces.join(",")))
            .arg(format!("--worker-image={}", spec.worker_image))
            .arg(format!("--http-address={address}"))
            .arg(format!("--identity={}", spec.identity));
        match &spec.lease {
            Some((namespace, name)) => {
                command
                    .arg(format!("--lease-namespace={namespace}"))
                    .arg(format!("--lease-name={name}"))
                    .arg(format!(
                        "--lease-duration={}s",
                        spec.lease_duration.as_secs()
                    ))
                    .arg("--lease-renew-before=2s");
            }
            None => {
                command.arg("--leader-election=false");
            }
        }
        command.args(&spec.extra_args);
        let child = command
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("failed to start sluice-controller")?;
        Ok(Self {
            spec: spec.clone(),
            address,
            child,
        })
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until `/readyz` says ready, or fails with the end of its log.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let started = Instant::now();
        while started.elapsed() < timeout {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "controller {} exited ({status}) before it was ready:\n{}",
                    self.spec.identity,
                    log_tail(&self.spec.log)
                );
            }
            if matches!(http_get(self.address, "/readyz"), Ok((200, _))) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "controller {} was not ready within {timeout:?}:\n{}",
            self.spec.identity,
            log_tail(&self.spec.log)
        )
    }

    /// The sum of the samples of metric `name` (every line starting with it).
    pub fn metric(&self, name: &str) -> Result<f64> {
        let (_, text) = http_get(self.address, "/metrics")?;
        let values: Vec<f64> = text
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter(|line| {
                line.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
            })
            .filter_map(|line| line.rsplit(' ').next()?.parse().ok())
            .collect();
        if values.is_empty() {
            bail!("no metric {name} in:\n{text}");
        }
        Ok(values.iter().sum())
    }

    /// Whether it holds the leader Lease now.
    pub fn leads(&self) -> bool {
        self.metric("sluice_controller_leader").unwrap_or(0.0) >= 1.0
    }

    /// Waits until the process exits by itself (a crash point, say).
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if started.elapsed() > timeout {
                bail!(
                    "controller {} still runs after {timeout:?}:\n{}",
                    self.spec.identity,
                    log_tail(&self.spec.log)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL: the process dies where it stands (the Lease is not released).
    pub fn kill(&mut self) -> Result<()> {
        self.child.kill().ok();
        self.child.wait()?;
        Ok(())
    }

    /// SIGTERM, then waits for the exit.
    pub fn terminate(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .context("failed to run kill")?;
        if !status.success() {
            bail!("kill -TERM {} failed", self.child.id());
        }
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if started.elapsed() > timeout {
                self.child.kill().ok();
                bail!(
                    "controller {} did not exit within {timeout:?} of SIGTERM:\n{}",
                    self.spec.identity,
                    log_tail(&self.spec.log)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The end of its log, for failure messages.
    pub fn log_tail(&self) -> String {
        log_tail(&self.spec.log)
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
