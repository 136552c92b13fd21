//! A gate on loopback in front of the cluster's S3 server: it forwards HTTP/1.1 requests
//! one by one and can hold the ones a rule picks, so a test can kill a worker while its
//! savepoint upload is stuck at a chosen request (the second file, the manifest), however
//! small the state and fast the server.

use std::io::{BufRead as _, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

/// One request as the gate saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// `PUT`, `GET`, …
    pub method: String,
    /// The path and query, e.g. `/sluice-savepoints/e2e/…/manifest.json`.
    pub target: String,
}

/// Which requests to hold: given a request and how many PUTs have been forwarded so far.
type Rule = Box<dyn Fn(&Request, usize) -> bool + Send>;

#[derive(Default)]
struct State {
    rule: Option<Rule>,
    /// Bumped by [`S3Gate::open`]: held requests of an older generation are dropped.
    generation: u64,
    held: Vec<Request>,
    puts_forwarded: usize,
}

type Shared = Arc<(Mutex<State>, Condvar)>;

/// The gate. Connections live on threads of their own until either side closes.
pub struct S3Gate {
    /// Where it listens (127.0.0.1, a free port).
    pub address: SocketAddr,
    shared: Shared,
}

impl S3Gate {
    /// A gate forwarding to `upstream` (`http://host:port`), open.
    pub fn start(upstream: &str) -> Result<Self> {
        let upstream_address: SocketAddr = upstream
            .strip_prefix("http://")
            .map(|rest| rest.trim_end_matches('/'))
            .with_context(|| format!("the S3 gate forwards to http://host:port, not {upstream}"))?
            .parse()
            .with_context(|| format!("the S3 gate needs an IP address and port: {upstream}"))?;
        let listener = TcpListener::bind("127.0.0.1:0").context("failed to bind the S3 gate")?;
        let address = listener.local_addr()?;
        let shared: Shared = Arc::default();
        let accepting = shared.clone();
        std::thread::Builder::new()
            .name("s3-gate".into())
            .spawn(move || {
                for client in listener.incoming().flatten() {
                    let shared = accepting.clone();
                    let _ = std::thread::Builder::new()
                        .name("s3-gate-connection".into())
                        .spawn(move || {
                            let _ = forward(client, upstream_address, &shared);
                        });
                }
            })?;
        Ok(Self { address, shared })
    }

    /// The endpoint to give a client instead of the server's.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.address)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Holds, from now on, every request `rule` picks (given the PUTs forwarded so far).
    pub fn hold_when(&self, rule: impl Fn(&Request, usize) -> bool + Send + 'static) {
        let mut state = self.state();
        state.rule = Some(Box::new(rule));
        state.held.clear();
        state.puts_forwarded = 0;
    }

    /// Forwards everything again; the requests held so far are dropped with their
    /// connections (their client is meant to be dead by now).
    pub fn open(&self) {
        let mut state = self.state();
        state.rule = None;
        state.generation += 1;
        state.held.clear();
        self.shared.1.notify_all();
    }

    /// Waits until a request is held and returns it.
    pub fn wait_held(&self, timeout: Duration) -> Result<Request> {
        let deadline = Instant::now() + timeout;
        let mut state = self.state();
        loop {
            if let Some(request) = state.held.first() {
                return Ok(request.clone());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!(
                    "the S3 gate held no request within {timeout:?} ({} PUTs forwarded)",
                    state.puts_forwarded
                );
            }
            state = self
                .shared
                .1
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

/// Forwards the client's requests to the server one at a time (each whole, head and
/// body), and the server's bytes back as they come.
fn forward(client: TcpStream, upstream: SocketAddr, shared: &Shared) -> Result<()> {
    let server = TcpStream::connect_timeout(&upstream, Duration::from_secs(5))?;
    let mut to_client = client.try_clone()?;
    let mut from_server = server.try_clone()?;
    let responses = std::thread::spawn(move || {
        let _ = std::io::copy(&mut from_server, &mut to_client);
        let _ = to_client.shutdown(Shutdown::Both);
    });
    let mut reader = BufReader::new(client.try_clone()?);
    let mut to_server = server;
    let outcome = (|| -> Result<()> {
        loop {
            let Some(head) = read_head(&mut reader)? else {
                return Ok(());
            };
            let request = request_of(&head)?;
            if !admit(shared, &request) {
                return Ok(());
            }
            to_server.write_all(head.as_bytes())?;
            copy_body(&head, &mut reader, &mut to_server)?;
            if request.method == "PUT" {
                let (lock, _) = &**shared;
                lock.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .puts_forwarded += 1;
            }
        }
    })();
    let _ = to_server.shutdown(Shutdown::Both);
    let _ = client.shutdown(Shutdown::Both);
    let _ = responses.join();
    outcome
}

/// Whether to forward `request`: if the rule holds it, waits until the gate is opened,
/// then drops it (false).
fn admit(shared: &Shared, request: &Request) -> bool {
    let (lock, condvar) = &**shared;
    let mut state = lock.lock().unwrap_or_else(PoisonError::into_inner);
    let hold = state
        .rule
        .as_ref()
        .is_some_and(|rule| rule(request, state.puts_forwarded));
    if !hold {
        return true;
    }
    let generation = state.generation;
    state.held.push(request.clone());
    condvar.notify_all();
    while state.generation == generation {
        state = condvar.wait(state).unwrap_or_else(PoisonError::into_inner);
    }
    false
}

/// The request line and headers, up to and with the blank line; `None` at the end.
fn read_head(reader: &mut BufReader<TcpStream>) -> Result<Option<String>> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        head.push_str(&line);
        if line == "\r\n" && head.len() > 2 {
            return Ok(Some(head));
        }
    }
}

fn request_of(head: &str) -> Result<Request> {
    let mut words = head.split(' ');
    match (words.next(), words.next()) {
        (Some(method), Some(target)) => Ok(Request {
            method: method.to_owned(),
            target: target.to_owned(),
        }),
        _ => bail!("not an HTTP request: {head:?}"),
    }
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

/// Copies the body `head` announces: `Content-Length` bytes, or chunks to the last one.
fn copy_body(
    head: &str,
    reader: &mut BufReader<TcpStream>,
    to_server: &mut TcpStream,
) -> Result<()> {
    if header(head, "transfer-encoding").is_some_and(|value| value.contains("chunked")) {
        loop {
            let mut size_line = String::new();
            reader.read_line(&mut size_line)?;
            to_server.write_all(size_line.as_bytes())?;
            let size =
                u64::from_str_radix(size_line.trim().split(';').next().unwrap_or_default(), 16)
                    .with_context(|| format!("a malformed chunk size {size_line:?}"))?;
            if size == 0 {
                // Trailers, up to the blank line.
                loop {
                    let mut line = String::new();
                    reader.read_line(&mut line)?;
                    to_server.write_all(line.as_bytes())?;
                    if line == "\r\n" || line.is_empty() {
                        return Ok(());
                    }
                }
            }
            // The chunk and its CRLF.
            std::io::copy(&mut reader.by_ref().take(size + 2), to_server)?;
        }
    }
    let length: u64 = header(head, "content-length")
        .map(str::parse)
        .transpose()
        .context("a malformed Content-Length")?
        .unwrap_or(0);
    std::io::copy(&mut reader.by_ref().take(length), to_server)?;
    Ok(())
}
