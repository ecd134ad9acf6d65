//! `paystream bench http`: a load generator for the payment API.
//!
//! Starts a server on a fresh data directory (or targets `--url`), creates
//! a merchant and its key, then runs `clients` concurrent keep-alive HTTP/1.1
//! connections, each creating payments with automatic capture (one request =
//! a payment initiated, risk-assessed, authorized and captured, two durable
//! appends) for `seconds`. Reports payments/s and latency percentiles.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::server::BoxError;

#[derive(Debug, Clone)]
pub struct HttpBenchOptions {
    pub clients: usize,
    pub duration: Duration,
    /// A running server; `None` starts one in this process on `data`.
    pub target: Option<(SocketAddr, String)>,
    pub data: PathBuf,
}

/// One keep-alive HTTP/1.1 connection; just enough of the protocol for the
/// bench (Content-Length bodies, no chunking).
struct Connection {
    stream: BufReader<TcpStream>,
}

impl Connection {
    async fn open(addr: SocketAddr) -> Result<Connection, BoxError> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Connection { stream: BufReader::new(stream) })
    }

    async fn request(&mut self, method: &str, path: &str, key: &str, body: &Value) -> Result<(u16, Value), BoxError> {
        let body = serde_json::to_vec(body)?;
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
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
            self.stream.read_line(&mut line).await?;
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

/// A Luhn-valid 16-digit Visa number starting 42 (never a sandbox decline
/// card, which start 40), different per `n`, so the
/// velocity rules see distinct cards.
pub fn test_card(n: u64) -> String {
    let body = format!("42{:013}", n % 10_000_000_000_000);
    let mut sum = 0;
    for (i, b) in body.bytes().rev().enumerate() {
        let mut d = u32::from(b - b'0');
        if i % 2 == 0 {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
    }
    format!("{body}{}", (10 - sum % 10) % 10)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    // Nearest-rank percentile; the float only picks an index, never money.
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub async fn run(options: HttpBenchOptions) -> Result<String, BoxError> {
    let admin_key = "bench-admin-key".to_string();
    let mut projections = None;
    let (addr, admin_key, _server) = match options.target.clone() {
        Some((addr, key)) => (addr, key, None),
        None => {
            std::env::set_var("PAYSTREAM_ADMIN_KEY", &admin_key);
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let addr = listener.local_addr()?;
            let opened = crate::server::open(&options.data, &crate::server::Tuning::default()).await?;
            crate::server::bootstrap_admin(&opened.services).await?;
            // The projections follow the log during the load, as in production
            // (dropping the handle leaves them running).
            let _ = opened.projections.start();
            projections = Some(opened.projections.clone());
            let router = crate::app::app(crate::state::AppState {
                services: opened.services,
                projections: opened.projections.clone(),
            });
            let server = tokio::spawn(async move { axum::serve(listener, router).await });
            (addr, admin_key, Some(server))
        }
    };
    let mut setup = Connection::open(addr).await?;
    let (status, merchant) = setup
        .request(
            "POST",
            "/v1/merchants",
            &admin_key,
            &json!({"name": "Bench Shop", "country": "US", "default_currency": "USD", "tier": "A", "fees": {"percent_bps": 290, "fixed": 30}}),
        )
        .await?;
    if status != 201 {
        return Err(format!("creating the merchant failed: {status} {merchant}").into());
    }
    let (status, key) = setup
        .request("POST", "/v1/api_keys", &admin_key, &json!({"role": "merchant", "merchant_id": merchant["id"]}))
        .await?;
    let merchant_key =
        key["key"].as_str().ok_or_else(|| format!("creating the key failed: {status} {key}"))?.to_string();

    let started = Instant::now();
    let deadline = started + options.duration;
    // Samples the largest projection lag (head - checkpoint) during the load.
    let lag_sampler = projections.clone().map(|projections| {
        tokio::spawn(async move {
            let mut max_lag = 0;
            while Instant::now() < deadline {
                if let Ok(status) = projections.status().await {
                    max_lag = status.iter().map(|s| s.lag).max().unwrap_or(0).max(max_lag);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            max_lag
        })
    });
    let mut tasks = Vec::new();
    for client in 0..options.clients {
        let key = merchant_key.clone();
        tasks.push(tokio::spawn(async move {
            let mut connection = Connection::open(addr).await?;
            let mut latencies = Vec::new();
            let mut failures = 0u64;
            let mut first_failure = None;
            let mut n = 0u64;
            while Instant::now() < deadline {
                n += 1;
                let body = json!({
                    "amount": 1000 + (n % 500) as i64,
                    "currency": "USD",
                    "capture": "automatic",
                    "method": {"type": "card", "card": {"number": test_card(client as u64 * 1_000_000_000 + n), "exp_month": 12, "exp_year": 2030, "cvc": "123"}},
                    "customer": {"id": format!("cus_{client}_{n}"), "ip": "198.51.100.7", "country": "US"},
                });
                let sent = Instant::now();
                let (status, payment) = connection.request("POST", "/v1/payments", &key, &body).await?;
                latencies.push(sent.elapsed());
                if status != 201 || payment["status"] != "captured" {
                    failures += 1;
                    first_failure.get_or_insert_with(|| format!("{status} {payment}"));
                }
            }
            Ok::<_, BoxError>((latencies, failures, first_failure))
        }));
    }
    let mut latencies = Vec::new();
    let mut failures = 0;
    let mut failure_sample = None;
    for task in tasks {
        let (mut l, f, sample) = task.await??;
        latencies.append(&mut l);
        failures += f;
        failure_sample = failure_sample.or(sample);
    }
    if let Some(sample) = failure_sample {
        eprintln!("first failed response: {sample}");
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let mut lag_line = String::new();
    if let (Some(projections), Some(sampler)) = (projections, lag_sampler) {
        let max_lag = sampler.await.unwrap_or(0);
        let head = projections.status().await?.iter().map(|s| s.head).max().unwrap_or(0);
        let caught_up = Instant::now();
        for name in paystream_projections::ProjectionName::ALL {
            projections.wait_for(name, head, Duration::from_secs(120)).await?;
        }
        lag_line = format!(
            "\n\nProjection lag during the load (all four projections, sampled every 100 ms): max {max_lag} events; \
             caught up with the head ({head}) {:.0} ms after the load stopped.",
            caught_up.elapsed().as_secs_f64() * 1e3
        );
    }
    let count = latencies.len() as u64;
    let per_second = count * 1_000 / (elapsed.as_millis().max(1) as u64);
    Ok(format!(
        "| clients | payments created+captured | failures | payments/s | durable appends/s | p50 | p99 | max |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|\n\
         | {} | {count} | {failures} | {per_second} | {} | {:.2} ms | {:.2} ms | {:.2} ms |{lag_line}",
        options.clients,
        per_second * 2,
        percentile(&latencies, 50.0).as_secs_f64() * 1e3,
        percentile(&latencies, 99.0).as_secs_f64() * 1e3,
        latencies.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn test_cards_pass_luhn() {
        for n in [0, 1, 42, 999_999_999_999] {
            let card = super::test_card(n);
            assert_eq!(card.len(), 16);
            assert!(paystream_domain::method::luhn_valid(&card), "{card}");
        }
    }
}
