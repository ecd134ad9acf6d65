//! `app(state) -> Router`: the whole HTTP API, drivable without a socket (`serve`
//! adds `GET /metrics` beside it: `crate::metrics`).

use std::net::SocketAddr;
use std::time::Instant;

use axum::extract::{ConnectInfo, DefaultBodyLimit, MatchedPath, Request};
use axum::http::HeaderValue;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use tracing::Instrument;
use uuid::Uuid;

use crate::error::{ApiError, ErrorCode};
use crate::extract::{redact_digits, RequestId, MAX_BODY_BYTES};
use crate::metrics;
use crate::openapi;
use crate::state::AppState;

pub fn app(state: AppState) -> Router {
    // The routes and the OpenAPI document come from the same `routes!` calls
    // (`openapi::router`): no route exists without being documented.
    let (router, _document) = openapi::router().split_for_parts();
    router
        .fallback(|| async { ApiError::not_found("route").into_response() })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                axum::http::StatusCode::METHOD_NOT_ALLOWED,
                "invalid_request_error",
                "method_not_allowed",
                "this route does not accept that method",
            )
            .into_response()
        })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn(request_span))
        .with_state(state)
}

/// One span per request with its id (echoed as `x-request-id`), the client's
/// address, the caller's role, key id and merchant (recorded by the `Caller`
/// extractor); one `handled` line when it is answered, with the status, the
/// error's `code` for an error and the time taken; and the request's metrics
/// (`crate::metrics`). Neither bodies nor headers are logged, so no card number,
/// CVC or API key secret can reach a log line from here.
async fn request_span(mut request: Request, next: Next) -> Response {
    let request_id = Uuid::now_v7();
    request.extensions_mut().insert(RequestId(request_id));
    let route = metrics::route_label(request.extensions().get::<MatchedPath>());
    let method = metrics::method_label(request.method());
    let span = tracing::info_span!(
        "request",
        request_id = %request_id,
        method = %request.method(),
        path = %redact_digits(request.uri().path()),
        client = tracing::field::Empty,
        role = tracing::field::Empty,
        key_id = tracing::field::Empty,
        merchant_id = tracing::field::Empty,
    );
    if let Some(ConnectInfo(client)) = request.extensions().get::<ConnectInfo<SocketAddr>>() {
        span.record("client", tracing::field::display(client));
    }
    let started = Instant::now();
    let mut response = next.run(request).instrument(span.clone()).await;
    let elapsed = started.elapsed();
    let status = response.status();
    let elapsed_us = elapsed.as_micros() as u64;
    let code = response.extensions().get::<ErrorCode>().map(|code| tracing::field::display(code.0.as_str()));
    span.in_scope(|| {
        if status.is_server_error() {
            tracing::warn!(status = status.as_u16(), code, elapsed_us, "handled");
        } else {
            tracing::info!(status = status.as_u16(), code, elapsed_us, "handled");
        }
    });
    metrics::record_request(route, method, status, elapsed);
    if let Ok(value) = HeaderValue::from_str(&request_id.to_string()) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}
