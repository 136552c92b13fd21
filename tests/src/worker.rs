//! `sluice-worker run` processes on this machine against the test broker, as a worker pod
//! would run them: started, asked to stop (SIGTERM), killed (SIGKILL), restarted on the
//! same state directory.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::Environment;

/// The worker binary: `SLUICE_WORKER_BIN`, else the one built beside this test.
pub fn worker_binary() -> Result<PathBuf> {
    crate::built_binary("SLUICE_WORKER_BIN", "sluice-worker")
}

/// A free port on loopback for an admin API.
pub fn free_address() -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").context("failed to find a free port")?;
    Ok(listener.local_addr()?)
}

/// How one worker runs.
#[derive(Clone, Debug)]
pub struct WorkerSpec {
    /// The manifest file.
    pub job: PathBuf,
    /// The namespace it runs as.
    pub namespace: String,
    /// Its ordinal.
    pub ordinal: u32,
    /// The job's parallelism.
    pub parallelism: u32,
    /// Its state directory.
    pub state_dir: PathBuf,
    /// Where its log goes (appended).
    pub log: PathBuf,
    /// More arguments.
    pub extra: Vec<String>,
    /// More environment variables (e.g. the `AWS_*` of an `s3://` savepoint location).
    pub env: Vec<(String, String)>,
}

/// A running worker process.
pub struct WorkerProcess {
    /// How it was started.
    pub spec: WorkerSpec,
    /// Its admin API.
    pub admin: SocketAddr,
    child: Child,
}

impl WorkerProcess {
    /// Starts a worker against the test broker.
    pub fn start(_environment: &Environment, spec: &WorkerSpec) -> Result<Self> {
        let admin = free_address()?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&spec.log)
            .with_context(|| format!("failed to open {}", spec.log.display()))?;
        let child = Command::new(worker_binary()?)
            .arg("--log-format")
            .arg("json")
            .arg("run")
            .arg("--job")
            .arg(&spec.job)
            .arg("--namespace")
            .arg(&spec.namespace)
            .arg("--ordinal")
            .arg(spec.ordinal.to_string())
            .arg("--parallelism")
            .arg(spec.parallelism.to_string())
            .arg("--state-dir")
            .arg(&spec.state_dir)
            .arg("--admin-address")
            .arg(admin.to_string())
            .args(&spec.extra)
            .envs(spec.env.iter().map(|(name, value)| (name, value)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("failed to start sluice-worker")?;
        Ok(Self {
            spec: spec.clone(),
            admin,
            child,
        })
    }

    /// An admin API path's status code and body.
    pub fn get(&self, path: &str) -> Result<(u16, String)> {
        http_get(self.admin, path)
    }

    /// Waits until `/readyz` says ready, or fails with the end of the worker's log.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<Duration> {
        let started = Instant::now();
        while started.elapsed() < timeout {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "worker {} exited ({status}) before it was ready:\n{}",
                    self.spec.ordinal,
                    log_tail(&self.spec.log)
                );
            }
            if matches!(self.get("/readyz"), Ok((200, _))) {
                return Ok(started.elapsed());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "worker {} was not ready within {timeout:?}:\n{}",
            self.spec.ordinal,
            log_tail(&self.spec.log)
        )
    }

    /// SIGKILL: the process dies where it stands.
    pub fn kill(&mut self) -> Result<()> {
        self.child.kill().ok();
        self.child.wait()?;
        Ok(())
    }

    /// SIGSTOP: the process freezes, as one cut off by a network partition.
    pub fn pause(&self) -> Result<()> {
        signal(self.child.id(), "STOP")
    }

    /// SIGCONT: a paused process goes on.
    pub fn resume(&self) -> Result<()> {
        signal(self.child.id(), "CONT")
    }

    /// SIGTERM, then waits for the exit.
    pub fn terminate(&mut self, timeout: Duration) -> Result<ExitStatus> {
        signal(self.child.id(), "TERM")?;
        self.wait(timeout)
    }

    /// Waits for the exit.
    pub fn wait(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if started.elapsed() > timeout {
                self.child.kill().ok();
                bail!(
                    "worker {} did not exit within {timeout:?}:\n{}",
                    self.spec.ordinal,
                    log_tail(&self.spec.log)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// A metric's value from `/metrics` (the first sample whose line starts with `name`).
    pub fn metric(&self, name: &str) -> Result<f64> {
        let (_, text) = self.get("/metrics")?;
        text.lines()
            .find(|line| line.starts_with(name) && !line.starts_with('#'))
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|value| value.parse().ok())
            .with_context(|| format!("no metric {name} in:\n{text}"))
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn signal(pid: u32, name: &str) -> Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .context("failed to run kill")?;
    if !status.success() {
        bail!("kill -{name} {pid} failed");
    }
    Ok(())
}

/// The last lines of a log, for failure messages.
pub fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// A minimal HTTP/1.0 GET on loopback.
pub fn http_get(address: SocketAddr, path: &str) -> Result<(u16, String)> {
    http_request(address, "GET", path, None, "")
}

/// A minimal HTTP/1.0 request on loopback, with a bearer token when given.
pub fn http_request(
    address: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let authorization = token
        .map(|token| format!("Authorization: Bearer {token}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: {address}\r\n{authorization}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .context("a response without a status")?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    Ok((status, body))
}
