//! `GET /metrics`: the server's metrics in the Prometheus text format
//! (docs/operations.md, "Metrics", lists every series).
//!
//! Every crate records through the `metrics` facade; [`install`] puts the Prometheus
//! recorder behind it once per process, before the log opens (the store resolves its
//! handles when it opens). The exporter has no listener of its own: the route renders
//! its handle. What is cheaper to read than to keep current (the projections' and the
//! facts' lag) is read at each scrape, so an unscraped server does no work for it;
//! a small task drains the histograms every [`UPKEEP_INTERVAL`] so that they stay
//! bounded between scrapes.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::{MatchedPath, State};
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use metrics::{describe_counter, describe_gauge, describe_histogram, Gauge, SharedString, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use paystream_commands::services::Services;
use paystream_domain::api_key::ApiKeyAggregate;
use paystream_domain::merchant::MerchantAggregate;
use paystream_domain::payment::PaymentAggregate;
use paystream_domain::Aggregate;
use paystream_projections::Projections;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use crate::openapi;
use crate::state::AppState;

/// Counter (labels `route`, `method`, `status`): requests answered.
pub const HTTP_REQUESTS_TOTAL: &str = "paystream_http_requests_total";
/// Histogram (labels `route`, `method`): seconds from a request's arrival to its response.
pub const HTTP_REQUEST_DURATION_SECONDS: &str = "paystream_http_request_duration_seconds";
/// Gauge: HTTP connections open (accepted and not yet closed).
pub const HTTP_OPEN_CONNECTIONS: &str = "paystream_http_open_connections";
/// Gauge (label `projection`): events of the log a projection has not yet applied.
pub const PROJECTION_LAG_EVENTS: &str = "paystream_projection_lag_events";
/// Gauge (label `projection`): the last log position a projection applied.
pub const PROJECTION_CHECKPOINT_POSITION: &str = "paystream_projection_checkpoint_position";
/// Gauge: events of the log the write side's facts have not yet applied.
pub const FACTS_LAG_EVENTS: &str = "paystream_facts_lag_events";

/// The `route` label of a request that matched no route (a 404 of the fallback).
pub const UNMATCHED_ROUTE: &str = "unmatched";
/// The path of the metrics.
pub const METRICS_PATH: &str = "/metrics";
/// How often the histograms are drained into their buckets between scrapes.
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Upper bounds of the latency histograms' buckets, in seconds (100 µs to 10 s).
const SECONDS_BUCKETS: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
/// Upper bounds of the group commit sizes' buckets, in events (at most 16,384 a group).
const GROUP_COMMIT_BUCKETS: &[f64] =
    &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0, 16384.0];

/// Installs the Prometheus recorder behind the `metrics` facade, once per process
/// (later calls return the same handle). Call it before the log opens.
pub fn install() -> Result<PrometheusHandle, String> {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    if let Some(handle) = HANDLE.get() {
        return Ok(handle.clone());
    }
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full(paystream_store::metrics::GROUP_COMMIT_EVENTS.into()),
                GROUP_COMMIT_BUCKETS,
            )
        })
        .map_err(|e| format!("metrics: {e}"))?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|e| format!("metrics: {e}"))?;
    describe();
    // A counter is shown once it exists: the conflict retries of every stream category
    // are shown (at 0) from the start.
    for category in
        [PaymentAggregate::STREAM_CATEGORY, MerchantAggregate::STREAM_CATEGORY, ApiKeyAggregate::STREAM_CATEGORY]
    {
        metrics::counter!(paystream_commands::bus::CONFLICT_RETRIES_TOTAL, "category" => category).increment(0);
    }
    Ok(HANDLE.get_or_init(|| handle).clone())
}

/// The `# HELP` and `# TYPE` of every series.
fn describe() {
    use paystream_store::metrics as store;
    describe_counter!(HTTP_REQUESTS_TOTAL, "HTTP requests answered, by route template, method and status");
    describe_histogram!(
        HTTP_REQUEST_DURATION_SECONDS,
        Unit::Seconds,
        "Seconds from a request's arrival to its response, by route template and method"
    );
    describe_gauge!(HTTP_OPEN_CONNECTIONS, "HTTP connections open");
    describe_histogram!(
        store::APPEND_DURATION_SECONDS,
        Unit::Seconds,
        "Seconds from an append call to its durable acknowledgement"
    );
    describe_histogram!(store::GROUP_COMMIT_EVENTS, "Events made durable by one group commit (one fdatasync)");
    describe_gauge!(store::HEAD_POSITION, "The event log's last durable position");
    describe_counter!(
        paystream_commands::bus::CONFLICT_RETRIES_TOTAL,
        "Appends refused because the stream changed meanwhile (decided again), by stream category"
    );
    describe_gauge!(PROJECTION_LAG_EVENTS, "Events of the log a projection has not yet applied (head - checkpoint)");
    describe_gauge!(PROJECTION_CHECKPOINT_POSITION, "The last log position a projection applied");
    describe_gauge!(FACTS_LAG_EVENTS, "Events of the log the write side's facts have not yet applied");
}

/// Drains the histograms every [`UPKEEP_INTERVAL`] (the exporter's own listener would;
/// this one has none). Abort it at shutdown.
pub fn spawn_upkeep(handle: PrometheusHandle) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(UPKEEP_INTERVAL);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            handle.run_upkeep();
        }
    })
}

#[derive(Clone)]
struct Scrape {
    handle: PrometheusHandle,
    services: Arc<Services>,
    projections: Projections,
}

/// `GET /metrics`, without authentication (like `/healthz`): counts, latencies,
/// positions and lags, nothing about a merchant or a payment. Served beside the API's
/// routes, not through them: scrapes are neither logged nor counted as requests.
pub fn router(handle: PrometheusHandle, state: &AppState) -> Router {
    let scrape = Scrape { handle, services: Arc::clone(&state.services), projections: state.projections.clone() };
    Router::new().route(METRICS_PATH, get(render)).with_state(scrape)
}

async fn render(State(scrape): State<Scrape>) -> Response {
    let head = scrape.services.bus.store().head().await;
    if let Ok(head) = head {
        metrics::gauge!(FACTS_LAG_EVENTS).set(head.saturating_sub(scrape.services.facts.applied()) as f64);
    }
    match scrape.projections.status().await {
        Ok(rows) => {
            for row in rows {
                let name = row.name.as_str();
                metrics::gauge!(PROJECTION_LAG_EVENTS, "projection" => name).set(row.lag as f64);
                metrics::gauge!(PROJECTION_CHECKPOINT_POSITION, "projection" => name).set(row.checkpoint as f64);
            }
        }
        Err(error) => tracing::warn!(%error, "metrics: the projections' status is unavailable"),
    }
    let body = scrape.handle.render();
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body).into_response()
}

/// The `route` label: the matched route's template (`/v1/payments/{id}`), never the
/// raw path, so the series stay as many as the routes. Every route the router has is
/// a path of the OpenAPI document (both come from the same `routes!` calls), whose
/// keys live as long as the process.
pub fn route_label(matched: Option<&MatchedPath>) -> &'static str {
    let Some(matched) = matched else { return UNMATCHED_ROUTE };
    openapi::document()
        .get("paths")
        .and_then(Value::as_object)
        .and_then(|paths| paths.get_key_value(matched.as_str()))
        .map_or(UNMATCHED_ROUTE, |(template, _)| template.as_str())
}

/// The `method` label: the standard methods by name, any other as `other`.
pub fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Counts a request and records its latency.
pub fn record_request(route: &'static str, method: &'static str, status: StatusCode, elapsed: Duration) {
    let status = SharedString::from(status.as_u16().to_string());
    metrics::counter!(HTTP_REQUESTS_TOTAL, "route" => route, "method" => method, "status" => status).increment(1);
    metrics::histogram!(HTTP_REQUEST_DURATION_SECONDS, "route" => route, "method" => method).record(elapsed);
}

/// The server's listener: a TCP listener that counts its open connections
/// ([`HTTP_OPEN_CONNECTIONS`]). Serve it through `axum::serve::ListenerExt::tap_io`
/// to get axum's `ConnectInfo<SocketAddr>` (which axum implements for a tapped
/// listener of any kind).
pub struct CountingListener {
    inner: TcpListener,
    open: Gauge,
}

impl CountingListener {
    pub fn new(inner: TcpListener) -> CountingListener {
        CountingListener { inner, open: metrics::gauge!(HTTP_OPEN_CONNECTIONS) }
    }
}

impl axum::serve::Listener for CountingListener {
    type Io = Counted<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        // axum's accept for TcpListener retries (after a pause) on errors itself.
        let (io, addr) = axum::serve::Listener::accept(&mut self.inner).await;
        self.open.increment(1.0);
        (Counted { io, open: self.open.clone() }, addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A connection, counted as open until it is dropped.
pub struct Counted<I> {
    io: I,
    open: Gauge,
}

impl<I> Drop for Counted<I> {
    fn drop(&mut self) {
        self.open.decrement(1.0);
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Counted<I> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Counted<I> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
