//! `paystream bench http`: the payment API's load and soak benchmark.
//!
//! Unless given a running server (`--url`), it starts the server as a child
//! process, this same binary with `serve --data DIR --listen 127.0.0.1:0`,
//! `PAYSTREAM_ADMIN_KEY` set and the `serve` tuning options forwarded, so the
//! server's memory is measured alone: the clients, their buffers and the
//! latency records live in the bench process. It creates a merchant and its
//! key per client (one merchant would reach its tier's daily volume limit
//! within minutes), then runs `clients` keep-alive HTTP/1.1 connections, each
//! creating automatic-capture card payments for its merchant with a distinct
//! Luhn-valid card and customer (one request = a payment initiated,
//! risk-assessed, authorized and captured: two durable appends of two events
//! each) until the run ends.
//!
//! Every `SAMPLE_EVERY` it samples the server's RSS (`VmRSS` in
//! `/proc/<pid>/status`), the log head (`GET /healthz`) and the largest
//! projection lag (`GET /v1/projections`). After the load it waits until the
//! projections have reached the head, stops the server with SIGTERM, starts
//! `serve` again on the same data, times it until `/healthz` answers 200 (the
//! start-up time of a restart on the data the run left), reads the restarted
//! server's idle RSS `IDLE_SETTLE` later, and stops it.
//!
//! # Report (stdout)
//!
//! A stable text format: one header line, one Markdown table with a row per
//! interval, then `name: value` lines in this order (a line whose figure could
//! not be measured, e.g. RSS with `--url`, says `not measured` and why).
//!
//! ```text
//! paystream bench http: 64 clients, 120 s, intervals of 30 s, server: child pid 4242, data /tmp/x
//!
//! | interval | payments | failures | payments/s | p50 ms | p99 ms | max ms | RSS MiB | head |
//! |---|---:|---:|---:|---:|---:|---:|---:|---:|
//! | 0-30 s | 171234 | 0 | 5708 | 10.61 | 24.02 | 80.11 | 412.3 | 342470 |
//! ...
//! payments: 684000 created+captured, 0 failed, 5700 payments/s, 11400 durable appends/s
//! first failure: 422 {"error":...}            (only when a request failed)
//! latency (whole run): p50 10.70 ms, p99 25.10 ms, max 120.00 ms
//! p99 last/first interval: 1.12x
//! events in the log: 1368004
//! RSS: peak 980.1 MiB (sampled every 1 s), high-water mark 985.0 MiB (VmHWM), end 975.2 MiB (anonymous 960.0 MiB, file 15.2 MiB)
//! RSS per million events: peak 716.5 MiB, end 712.9 MiB
//! projection lag: max 1200 events (sampled every 1 s), caught up 3 ms after the load stopped
//! stop: SIGTERM to exit 0.41 s (exit status: 0)
//! restart on this data: /healthz 200 after 4.12 s (listening after 4.10 s), head 1368004, RSS 420.0 MiB at ready, 431.2 MiB idle 5 s later
//! ```
//!
//! Intervals are cut by each request's completion time; the last interval
//! also holds the requests still in flight when the run ended, and its rate
//! is over its real length. Percentiles are nearest-rank over every answered
//! request of the interval (failed ones included). `RSS MiB` and `head` are
//! the samples nearest the interval's end. MiB = 2^20 bytes. RSS per million
//! events divides by the head position at the end, which counts every event
//! in the log (earlier runs too when `--data` is reused). The `end` RSS is
//! sampled when the load stops; the high-water mark and the split into
//! anonymous memory (`RssAnon`: heap, caches) and file pages (`RssFile`) are
//! read once the projections have caught up, just before SIGTERM.

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::server::BoxError;

/// How often the server's RSS, the head and the projection lag are sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// Default length of a report interval (`--interval-seconds`).
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);
/// Default number of concurrent keep-alive clients (`--clients`).
pub const DEFAULT_CLIENTS: usize = 64;
/// Longest wait for a child server to answer `/healthz` after its spawn.
const START_TIMEOUT: Duration = Duration::from_secs(600);
/// Longest wait for a child server to exit after SIGTERM (it flushes the
/// projections and closes the store first); then it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(300);
/// How long after its start the restarted server's idle RSS is read.
const IDLE_SETTLE: Duration = Duration::from_secs(5);
/// Pause between two `/healthz` probes while a server starts, and between
/// two projection status reads while they catch up.
const POLL_EVERY: Duration = Duration::from_millis(10);
/// Longest wait for one monitoring request (`/healthz`, `/v1/projections`).
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait for the projections to reach the head after the load.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(300);
/// Pause before a client reconnects after a connection error.
const RECONNECT_PAUSE: Duration = Duration::from_millis(100);
/// The admin key a child server registers (`PAYSTREAM_ADMIN_KEY`).
const BENCH_ADMIN_KEY: &str = "bench-admin-key";
const KIB_PER_MIB: f64 = 1024.0;

#[derive(Debug, Clone)]
pub struct HttpBenchOptions {
    pub clients: usize,
    pub duration: Duration,
    /// Length of a report interval.
    pub interval: Duration,
    pub target: Target,
}

#[derive(Debug, Clone)]
pub enum Target {
    /// A server already running: no RSS, no restart.
    Running { addr: SocketAddr, admin_key: String },
    /// A `serve` child process started and stopped by the bench.
    Child(ChildServer),
}

#[derive(Debug, Clone)]
pub struct ChildServer {
    /// The `paystream` binary (`std::env::current_exe()`).
    pub exe: PathBuf,
    pub data: PathBuf,
    /// Further `serve` options: the bench gives the budget ones (`--store-cache-mib 16`, ...).
    pub serve_args: Vec<String>,
}

/// One keep-alive HTTP/1.1 connection; just enough of the protocol for the
/// bench (Content-Length bodies, no chunking).
struct Connection {
    stream: BufReader<TcpStream>,
}

impl Connection {
    async fn open(addr: SocketAddr) -> Result<Connection, BoxError> {
        let stream = TcpStream::connect(addr).await.map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        stream.set_nodelay(true)?;
        Ok(Connection { stream: BufReader::new(stream) })
    }

    async fn request(
        &mut self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<&Value>,
    ) -> Result<(u16, Value), BoxError> {
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: bench\r\n");
        if let Some(key) = key {
            head.push_str(&format!("Authorization: Bearer {key}\r\n"));
        }
        let body = match body {
            Some(body) => serde_json::to_vec(body)?,
            None => Vec::new(),
        };
        if !body.is_empty() {
            head.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        let stream = self.stream.get_mut();
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(&body).await?;
        let mut status_line = String::new();
        self.stream.read_line(&mut status_line).await?;
        let status: u16 =
            status_line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or("bad status line")?;
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            if self.stream.read_line(&mut line).await? == 0 {
                return Err("connection closed inside the response head".into());
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse()?;
                }
            }
        }
        let mut buffer = vec![0; length];
        self.stream.read_exact(&mut buffer).await?;
        Ok((status, serde_json::from_slice(&buffer).unwrap_or(Value::Null)))
    }
}

/// One request on a fresh connection, bounded by `PROBE_TIMEOUT`.
async fn probe(addr: SocketAddr, path: &str, key: Option<&str>) -> Result<(u16, Value), BoxError> {
    let once = async {
        let mut connection = Connection::open(addr).await?;
        connection.request("GET", path, key, None).await
    };
    tokio::time::timeout(PROBE_TIMEOUT, once).await.map_err(|_| format!("GET {path}: no answer"))?
}

async fn head_position(addr: SocketAddr) -> Option<u64> {
    match probe(addr, "/healthz", None).await {
        Ok((200, body)) => body["head_position"].as_u64(),
        _ => None,
    }
}

/// The lowest checkpoint and the largest lag of the projections.
async fn projection_progress(addr: SocketAddr, admin_key: &str) -> Option<(u64, u64)> {
    match probe(addr, "/v1/projections", Some(admin_key)).await {
        Ok((200, body)) => {
            let rows = body["data"].as_array()?;
            let checkpoint = rows.iter().filter_map(|r| r["checkpoint"].as_u64()).min()?;
            let lag = rows.iter().filter_map(|r| r["lag"].as_u64()).max()?;
            Some((checkpoint, lag))
        }
        _ => None,
    }
}

/// A field of `/proc/<pid>/status` given in kB (`VmRSS`, `VmHWM`), in KiB.
fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
}

/// A `paystream serve` child process. Dropped while running, it is killed
/// (an error path of the bench must not leave a server behind).
struct ServerProcess {
    child: Option<Child>,
    pid: u32,
    addr: SocketAddr,
    /// From spawn to the `listening on` line.
    listening_after: Duration,
    /// From spawn to the first 200 from `/healthz`.
    ready_after: Duration,
}

impl ServerProcess {
    async fn start(spec: &ChildServer) -> Result<ServerProcess, BoxError> {
        let spawned = Instant::now();
        let mut child = Command::new(&spec.exe)
            .arg("serve")
            .arg("--data")
            .arg(&spec.data)
            .args(["--listen", "127.0.0.1:0"])
            .args(&spec.serve_args)
            .env("PAYSTREAM_ADMIN_KEY", BENCH_ADMIN_KEY)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start {} serve: {e}", spec.exe.display()))?;
        let pid = child.id();
        let Some(stdout) = child.stdout.take() else {
            let _ = child.kill();
            let _ = child.wait();
            return Err("the server's stdout is not piped".into());
        };
        let (listening_tx, listening_rx) = tokio::sync::oneshot::channel();
        // Reads the server's stdout to its end (so the pipe never fills):
        // the `listening on` line gives the address, any other line goes to
        // the bench's stderr.
        std::thread::spawn(move || {
            let mut listening_tx = Some(listening_tx);
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                match line.trim().strip_prefix("listening on http://") {
                    Some(addr) => {
                        if let Some(tx) = listening_tx.take() {
                            let _ = tx.send(addr.to_string());
                        }
                    }
                    None => eprintln!("server: {line}"),
                }
            }
        });
        let mut server = ServerProcess {
            child: Some(child),
            pid,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            listening_after: Duration::ZERO,
            ready_after: Duration::ZERO,
        };
        let addr = match tokio::time::timeout(START_TIMEOUT, listening_rx).await {
            Ok(Ok(addr)) => addr,
            Ok(Err(_)) => {
                let status = server.exit_status();
                return Err(format!("the server exited before listening ({status})").into());
            }
            Err(_) => return Err(format!("the server was not listening after {START_TIMEOUT:?}").into()),
        };
        server.addr = addr.parse().map_err(|e| format!("bad address in `listening on http://{addr}`: {e}"))?;
        server.listening_after = spawned.elapsed();
        loop {
            if let Ok((200, _)) = probe(server.addr, "/healthz", None).await {
                break;
            }
            if let Some(child) = server.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(format!("the server exited before /healthz answered ({status})").into());
                }
            }
            if spawned.elapsed() > START_TIMEOUT {
                return Err(format!("/healthz did not answer 200 within {START_TIMEOUT:?}").into());
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
        server.ready_after = spawned.elapsed();
        Ok(server)
    }

    fn rss_kib(&self) -> Option<u64> {
        proc_status_kib(self.pid, "VmRSS")
    }

    /// The exit status if the child has exited, for error messages.
    fn exit_status(&mut self) -> String {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(Some(status))) => status.to_string(),
            _ => "still running".to_string(),
        }
    }

    /// Sends SIGTERM and waits for the exit: how long it took and the status.
    async fn stop(&mut self) -> Result<(Duration, ExitStatus), BoxError> {
        let Some(mut child) = self.child.take() else {
            return Err("the server was already stopped".into());
        };
        let asked = Instant::now();
        let kill = Command::new("kill").args(["-TERM", &self.pid.to_string()]).status();
        if !matches!(kill, Ok(status) if status.success()) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("kill -TERM {} failed: {kill:?}", self.pid).into());
        }
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok((asked.elapsed(), status));
            }
            if asked.elapsed() > STOP_TIMEOUT {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("the server did not exit within {STOP_TIMEOUT:?} of SIGTERM; killed").into());
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A Luhn-valid 16-digit Visa number starting 42 (never a sandbox decline
/// card, which start 40), different per `n`, so the
/// velocity rules see distinct cards.
pub fn test_card(n: u64) -> String {
    let body = format!("42{:013}", n % 10_000_000_000_000);
    // `body` is all digits, so there is always a check digit.
    let check = paystream_domain::method::luhn_check_digit(&body).unwrap_or_default();
    format!("{body}{check}")
}

/// One answered (or failed) request: when it completed, counted from the
/// start of the load, and how long it took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    pub done_ms: u32,
    pub latency_us: u32,
    /// 201 with the payment captured.
    pub ok: bool,
}

/// One sample of the server, taken every `SAMPLE_EVERY`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    pub at_ms: u64,
    pub rss_kib: Option<u64>,
    pub head: Option<u64>,
    pub lag: Option<u64>,
}

/// One row of the report's table.
#[derive(Debug, Clone, PartialEq)]
pub struct IntervalRow {
    pub from_ms: u64,
    pub to_ms: u64,
    pub payments: u64,
    pub failures: u64,
    pub per_second: u64,
    pub p50_us: u32,
    pub p99_us: u32,
    pub max_us: u32,
    pub rss_kib: Option<u64>,
    pub head: Option<u64>,
}

pub use paystream_store::bench::percentile;

/// Requests per second over `ms` milliseconds, rounded down.
fn rate(count: u64, ms: u64) -> u64 {
    count * 1_000 / ms.max(1)
}

/// The report's rows: a load of `duration_ms` cut into intervals of
/// `interval_ms` (the last one may be shorter, and it stretches to `run_ms`,
/// when the last request in flight completed), with the sample nearest each
/// interval's end.
pub fn interval_rows(
    completions: &[Completion],
    samples: &[Sample],
    interval_ms: u64,
    duration_ms: u64,
    run_ms: u64,
) -> Vec<IntervalRow> {
    let interval_ms = interval_ms.max(1);
    let count = duration_ms.div_ceil(interval_ms).max(1);
    let mut latencies: Vec<Vec<u32>> = vec![Vec::new(); count as usize];
    let mut failures = vec![0u64; count as usize];
    let mut last_done_ms = 0;
    for c in completions {
        let index = (u64::from(c.done_ms) / interval_ms).min(count - 1) as usize;
        latencies[index].push(c.latency_us);
        if !c.ok {
            failures[index] += 1;
        }
        last_done_ms = last_done_ms.max(u64::from(c.done_ms));
    }
    let mut rows = Vec::new();
    for (index, (mut latencies, failures)) in latencies.into_iter().zip(failures).enumerate() {
        let index = index as u64;
        let from_ms = index * interval_ms;
        let mut to_ms = ((index + 1) * interval_ms).min(duration_ms).max(from_ms);
        if index == count - 1 {
            to_ms = to_ms.max(run_ms).max(last_done_ms);
        }
        latencies.sort_unstable();
        let payments = latencies.len() as u64 - failures;
        let nearest = samples.iter().min_by_key(|s| s.at_ms.abs_diff(to_ms));
        rows.push(IntervalRow {
            from_ms,
            to_ms,
            payments,
            failures,
            per_second: rate(payments, to_ms - from_ms),
            p50_us: percentile(&latencies, 50.0),
            p99_us: percentile(&latencies, 99.0),
            max_us: latencies.last().copied().unwrap_or(0),
            rss_kib: nearest.and_then(|s| s.rss_kib),
            head: nearest.and_then(|s| s.head),
        });
    }
    rows
}

/// MiB of RSS per million events in the log (`None` for an empty log).
pub fn mib_per_million_events(rss_kib: u64, events: u64) -> Option<f64> {
    (events > 0).then(|| rss_kib as f64 / KIB_PER_MIB / (events as f64 / 1e6))
}

/// p99 of the last interval over p99 of the first (`None` for one interval).
pub fn p99_ratio(rows: &[IntervalRow]) -> Option<f64> {
    match rows {
        [first, .., last] if first.p99_us > 0 => Some(f64::from(last.p99_us) / f64::from(first.p99_us)),
        _ => None,
    }
}

fn ms(us: u32) -> f64 {
    f64::from(us) / 1e3
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or_else(|| "-".to_string(), |kib| format!("{:.1}", kib as f64 / KIB_PER_MIB))
}

fn or_dash(value: Option<u64>) -> String {
    value.map_or_else(|| "-".to_string(), |v| v.to_string())
}

fn millis(duration: Duration) -> u32 {
    u32::try_from(duration.as_millis()).unwrap_or(u32::MAX)
}

fn micros(duration: Duration) -> u32 {
    u32::try_from(duration.as_micros()).unwrap_or(u32::MAX)
}

struct ClientRecord {
    completions: Vec<Completion>,
    first_failure: Option<String>,
}

/// One client: payments on one keep-alive connection until `deadline`; a
/// connection error counts as a failure and the client reconnects.
async fn client(
    addr: SocketAddr,
    key: String,
    client: u64,
    started: Instant,
    deadline: Instant,
) -> Result<ClientRecord, BoxError> {
    let mut connection = Connection::open(addr).await?;
    let mut record = ClientRecord { completions: Vec::new(), first_failure: None };
    let mut n = 0u64;
    while Instant::now() < deadline {
        n += 1;
        let body = json!({
            "amount": 1000 + (n % 500) as i64,
            "currency": "USD",
            "capture": "automatic",
            "method": {"type": "card", "card": {"number": test_card(client * 1_000_000_000 + n), "exp_month": 12, "exp_year": 2030, "cvc": "123"}},
            "customer": {"id": format!("cus_{client}_{n}"), "ip": "198.51.100.7", "country": "US"},
        });
        let sent = Instant::now();
        let answer = connection.request("POST", "/v1/payments", Some(&key), Some(&body)).await;
        let done = Instant::now();
        let ok = match answer {
            Ok((201, payment)) if payment["status"] == "captured" => true,
            Ok((status, payment)) => {
                record.first_failure.get_or_insert_with(|| format!("{status} {payment}"));
                false
            }
            Err(error) => {
                record.first_failure.get_or_insert_with(|| format!("connection error: {error}"));
                tokio::time::sleep(RECONNECT_PAUSE).await;
                connection = Connection::open(addr).await?;
                false
            }
        };
        record.completions.push(Completion { done_ms: millis(done - started), latency_us: micros(done - sent), ok });
    }
    Ok(record)
}

/// One merchant and merchant key per client: a tier A merchant may take
/// 5,000,000 USD a day, which one merchant reaches after ~400,000 of the
/// bench's payments (10.00-14.99 USD), a minute or two of load.
async fn create_merchants(addr: SocketAddr, admin_key: &str, count: usize) -> Result<Vec<String>, BoxError> {
    let mut setup = Connection::open(addr).await?;
    let mut keys = Vec::with_capacity(count);
    for n in 0..count {
        let (status, merchant) = setup
            .request(
                "POST",
                "/v1/merchants",
                Some(admin_key),
                Some(&json!({"name": format!("Bench Shop {n}"), "country": "US", "default_currency": "USD", "tier": "A", "fees": {"percent_bps": 290, "fixed": 30}})),
            )
            .await?;
        if status != 201 {
            return Err(format!("creating a merchant failed: {status} {merchant}").into());
        }
        let (status, key) = setup
            .request(
                "POST",
                "/v1/api_keys",
                Some(admin_key),
                Some(&json!({"role": "merchant", "merchant_id": merchant["id"]})),
            )
            .await?;
        let key = key["key"].as_str().ok_or_else(|| format!("creating a key failed: {status} {key}"))?;
        keys.push(key.to_string());
    }
    Ok(keys)
}

async fn sample(addr: SocketAddr, admin_key: &str, pid: Option<u32>, started: Instant) -> Sample {
    let rss_kib = pid.and_then(|pid| proc_status_kib(pid, "VmRSS"));
    let head = head_position(addr).await;
    let lag = projection_progress(addr, admin_key).await.map(|(_, lag)| lag);
    Sample { at_ms: started.elapsed().as_millis() as u64, rss_kib, head, lag }
}

/// Waits until every projection's checkpoint has reached `head`.
async fn projections_caught_up(addr: SocketAddr, admin_key: &str, head: u64) -> Option<Duration> {
    let waiting = Instant::now();
    while waiting.elapsed() < CATCH_UP_TIMEOUT {
        match projection_progress(addr, admin_key).await {
            Some((checkpoint, _)) if checkpoint >= head => return Some(waiting.elapsed()),
            Some(_) => tokio::time::sleep(POLL_EVERY).await,
            None => return None,
        }
    }
    None
}

/// Starts `serve` again on the data the run left, times it until `/healthz`
/// answers 200, reads its RSS then and `IDLE_SETTLE` later, and stops it.
async fn restart(spec: &ChildServer) -> Result<String, BoxError> {
    let mut restarted = ServerProcess::start(spec).await?;
    let ready_kib = restarted.rss_kib();
    let head = head_position(restarted.addr).await;
    tokio::time::sleep(IDLE_SETTLE).await;
    let idle_kib = restarted.rss_kib();
    let (_, status) = restarted.stop().await?;
    Ok(format!(
        "restart on this data: /healthz 200 after {:.2} s (listening after {:.2} s), head {}, RSS {} MiB at ready, {} MiB idle {} s later ({status} at stop)\n",
        restarted.ready_after.as_secs_f64(),
        restarted.listening_after.as_secs_f64(),
        or_dash(head),
        mib(ready_kib),
        mib(idle_kib),
        IDLE_SETTLE.as_secs(),
    ))
}

pub async fn run(options: HttpBenchOptions) -> Result<String, BoxError> {
    let (mut server, addr, admin_key) = match &options.target {
        Target::Running { addr, admin_key } => (None, *addr, admin_key.clone()),
        Target::Child(spec) => {
            let server = ServerProcess::start(spec).await?;
            let addr = server.addr;
            (Some(server), addr, BENCH_ADMIN_KEY.to_string())
        }
    };
    let pid = server.as_ref().map(|s| s.pid);
    let mut out = report_header(&options, server.as_ref(), addr);

    let merchant_keys = create_merchants(addr, &admin_key, options.clients).await?;
    let started = Instant::now();
    let deadline = started + options.duration;
    let monitor = tokio::spawn(monitor(addr, admin_key.clone(), pid, started, deadline));
    let tasks: Vec<_> = (0..options.clients as u64)
        .zip(merchant_keys)
        .map(|(n, key)| tokio::spawn(client(addr, key, n, started, deadline)))
        .collect();
    let mut completions = Vec::new();
    let mut failure_sample = None;
    for task in tasks {
        let mut record = task.await??;
        completions.append(&mut record.completions);
        failure_sample = failure_sample.or(record.first_failure);
    }
    let run_ms = started.elapsed().as_millis() as u64;
    let mut samples = monitor.await?;
    let end = sample(addr, &admin_key, pid, started).await;
    samples.push(end);

    let rows = interval_rows(
        &completions,
        &samples,
        options.interval.as_millis() as u64,
        options.duration.as_millis() as u64,
        run_ms,
    );
    out.push_str(&interval_table(&rows));
    out.push_str(&load_summary(completions, failure_sample, run_ms, &rows));
    let events = end.head;
    out.push_str(&format!("events in the log: {}\n", or_dash(events)));

    // Let the projections reach the head before the server is stopped, so
    // the restart measures a start, not the end of a catch-up.
    let caught_up = match events {
        Some(head) => projections_caught_up(addr, &admin_key, head).await,
        None => None,
    };
    let lag_line = lag_line(&samples, caught_up);
    let Some(running) = server.as_mut() else {
        out.push_str("RSS: not measured (--url)\n");
        out.push_str("RSS per million events: not measured (--url)\n");
        out.push_str(&lag_line);
        out.push_str("stop: not measured (--url)\n");
        out.push_str("restart on this data: not measured (--url)\n");
        return Ok(out);
    };
    out.push_str(&rss_lines(running.pid, &samples, end, events));
    out.push_str(&lag_line);
    out.push_str(&stop_and_restart(running, &options.target).await);
    Ok(out)
}

/// The report's first line: the load and the server.
fn report_header(options: &HttpBenchOptions, server: Option<&ServerProcess>, addr: SocketAddr) -> String {
    match (&options.target, server) {
        (Target::Child(spec), Some(server)) => format!(
            "paystream bench http: {} clients, {} s, intervals of {} s, server: child pid {}, data {}{}{}, first start ready after {:.2} s\n\n",
            options.clients,
            options.duration.as_secs(),
            options.interval.as_secs(),
            server.pid,
            spec.data.display(),
            if spec.serve_args.is_empty() { "" } else { ", serve " },
            spec.serve_args.join(" "),
            server.ready_after.as_secs_f64(),
        ),
        _ => format!(
            "paystream bench http: {} clients, {} s, intervals of {} s, server: {addr} (--url)\n\n",
            options.clients,
            options.duration.as_secs(),
            options.interval.as_secs(),
        ),
    }
}

/// Samples the server every [`SAMPLE_EVERY`] until `deadline`.
async fn monitor(
    addr: SocketAddr,
    admin_key: String,
    pid: Option<u32>,
    started: Instant,
    deadline: Instant,
) -> Vec<Sample> {
    let mut samples = Vec::new();
    let mut ticks = tokio::time::interval(SAMPLE_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        samples.push(sample(addr, &admin_key, pid, started).await);
        if Instant::now() >= deadline {
            return samples;
        }
    }
}

/// The table of intervals, in Markdown.
fn interval_table(rows: &[IntervalRow]) -> String {
    let mut out = String::new();
    out.push_str("| interval | payments | failures | payments/s | p50 ms | p99 ms | max ms | RSS MiB | head |\n");
    out.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for row in rows {
        out.push_str(&format!(
            "| {}-{} s | {} | {} | {} | {:.2} | {:.2} | {:.2} | {} | {} |\n",
            (row.from_ms + 500) / 1_000,
            (row.to_ms + 500) / 1_000,
            row.payments,
            row.failures,
            row.per_second,
            ms(row.p50_us),
            ms(row.p99_us),
            ms(row.max_us),
            mib(row.rss_kib),
            or_dash(row.head),
        ));
    }
    out.push('\n');
    out
}

/// Throughput, failures and latency of the whole run.
fn load_summary(
    completions: Vec<Completion>,
    failure_sample: Option<String>,
    run_ms: u64,
    rows: &[IntervalRow],
) -> String {
    let mut out = String::new();
    let payments = completions.iter().filter(|c| c.ok).count() as u64;
    let failures = completions.len() as u64 - payments;
    let per_second = rate(payments, run_ms);
    out.push_str(&format!(
        "payments: {payments} created+captured, {failures} failed, {per_second} payments/s, {} durable appends/s\n",
        per_second * 2
    ));
    if let Some(failure) = failure_sample {
        out.push_str(&format!("first failure: {failure}\n"));
    }
    let mut latencies: Vec<u32> = completions.iter().map(|c| c.latency_us).collect();
    drop(completions);
    latencies.sort_unstable();
    out.push_str(&format!(
        "latency (whole run): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms\n",
        ms(percentile(&latencies, 50.0)),
        ms(percentile(&latencies, 99.0)),
        ms(latencies.last().copied().unwrap_or(0)),
    ));
    match p99_ratio(rows) {
        Some(ratio) => out.push_str(&format!("p99 last/first interval: {ratio:.2}x\n")),
        None => out.push_str("p99 last/first interval: not measured (one interval)\n"),
    }
    out
}

/// The projections' lag over the run and how long they took to catch up.
fn lag_line(samples: &[Sample], caught_up: Option<Duration>) -> String {
    let max_lag = samples.iter().filter_map(|s| s.lag).max();
    format!(
        "projection lag: max {} events (sampled every {} s), {}\n",
        or_dash(max_lag),
        SAMPLE_EVERY.as_secs(),
        match caught_up {
            Some(after) => format!("caught up {} ms after the load stopped", after.as_millis()),
            None => "caught up: not measured".to_string(),
        }
    )
}

/// The child server's memory: peak, high-water mark, end, and per million events.
fn rss_lines(pid: u32, samples: &[Sample], end: Sample, events: Option<u64>) -> String {
    let mut out = String::new();
    let peak_kib = samples.iter().filter_map(|s| s.rss_kib).max();
    out.push_str(&format!(
        "RSS: peak {} MiB (sampled every {} s), high-water mark {} MiB (VmHWM), end {} MiB (anonymous {} MiB, file {} MiB)\n",
        mib(peak_kib),
        SAMPLE_EVERY.as_secs(),
        mib(proc_status_kib(pid, "VmHWM")),
        mib(end.rss_kib),
        mib(proc_status_kib(pid, "RssAnon")),
        mib(proc_status_kib(pid, "RssFile")),
    ));
    let per_million = |kib: Option<u64>| match (kib, events) {
        (Some(kib), Some(events)) => mib_per_million_events(kib, events).map(|v| format!("{v:.1}")),
        _ => None,
    };
    out.push_str(&format!(
        "RSS per million events: peak {} MiB, end {} MiB\n",
        per_million(peak_kib).unwrap_or_else(|| "-".to_string()),
        per_million(end.rss_kib).unwrap_or_else(|| "-".to_string()),
    ));
    out
}

/// Stops the child server and starts it again on the same data. From here on
/// a failure is a line of the report, not the loss of it.
async fn stop_and_restart(running: &mut ServerProcess, target: &Target) -> String {
    let mut out = String::new();
    match running.stop().await {
        Ok((after, status)) => {
            out.push_str(&format!("stop: SIGTERM to exit {:.2} s ({status})\n", after.as_secs_f64()))
        }
        Err(error) => {
            out.push_str(&format!("stop: failed: {error}\n"));
            out.push_str("restart on this data: not measured (the first server did not stop)\n");
            return out;
        }
    }
    if let Target::Child(spec) = target {
        match restart(spec).await {
            Ok(line) => out.push_str(&line),
            Err(error) => out.push_str(&format!("restart on this data: failed: {error}\n")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_cards_pass_luhn() {
        for n in [0, 1, 42, 999_999_999_999] {
            let card = super::test_card(n);
            assert_eq!(card.len(), 16);
            assert!(paystream_domain::method::luhn_valid(&card), "{card}");
        }
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let values: Vec<u32> = (1..=100).collect();
        assert_eq!([percentile(&values, 50.0), percentile(&values, 99.0), percentile(&values, 100.0)], [50, 99, 100]);
        assert_eq!(percentile(&[7], 99.0), 7);
        assert_eq!(percentile::<u32>(&[], 50.0), 0);
    }

    fn completion(done_ms: u32, latency_us: u32, ok: bool) -> Completion {
        Completion { done_ms, latency_us, ok }
    }

    fn sample(at_ms: u64, rss_kib: u64, head: u64) -> Sample {
        Sample { at_ms, rss_kib: Some(rss_kib), head: Some(head), lag: Some(0) }
    }

    #[test]
    fn intervals_cut_by_completion_time_with_the_nearest_sample() {
        let completions = [
            completion(100, 1_000, true),
            completion(900, 3_000, true),
            completion(1_000, 2_000, false),
            completion(1_500, 4_000, true),
            // In flight when the 2 s run ended: counted in the last interval,
            // which stretches to it.
            completion(2_500, 9_000, true),
        ];
        let samples = [sample(0, 10, 0), sample(1_000, 20, 4), sample(2_000, 30, 8), sample(2_600, 40, 10)];
        let rows = interval_rows(&completions, &samples, 1_000, 2_000, 2_400);
        assert_eq!(
            rows,
            vec![
                IntervalRow {
                    from_ms: 0,
                    to_ms: 1_000,
                    payments: 2,
                    failures: 0,
                    per_second: 2,
                    p50_us: 1_000,
                    p99_us: 3_000,
                    max_us: 3_000,
                    rss_kib: Some(20),
                    head: Some(4),
                },
                IntervalRow {
                    from_ms: 1_000,
                    to_ms: 2_500,
                    payments: 2,
                    failures: 1,
                    per_second: 1,
                    p50_us: 4_000,
                    p99_us: 9_000,
                    max_us: 9_000,
                    rss_kib: Some(40),
                    head: Some(10),
                },
            ]
        );
        assert_eq!(p99_ratio(&rows), Some(3.0));
    }

    #[test]
    fn a_run_shorter_than_the_interval_is_one_row() {
        let rows = interval_rows(&[completion(5_000, 2_000, true)], &[], 60_000, 10_000, 10_000);
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].from_ms, rows[0].to_ms, rows[0].payments, rows[0].per_second), (0, 10_000, 1, 0));
        assert_eq!(rows[0].rss_kib, None);
        assert_eq!(p99_ratio(&rows), None);
    }

    #[test]
    fn rss_per_million_events() {
        assert_eq!(mib_per_million_events(512 * 1024, 2_000_000), Some(256.0));
        assert_eq!(mib_per_million_events(512 * 1024, 0), None);
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn proc_status_fields_parse_for_this_process() {
        let pid = std::process::id();
        assert!(proc_status_kib(pid, "VmRSS").is_some_and(|kib| kib > 0));
        assert_eq!(proc_status_kib(pid, "NoSuchField"), None);
    }
}
