//! `app(state) -> Router`: the whole HTTP surface, drivable without a socket.

use std::time::Instant;

use axum::extract::{DefaultBodyLimit, Request};
use axum::http::HeaderValue;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use tracing::Instrument;
use uuid::Uuid;

use crate::error::ApiError;
use crate::extract::{redact_digits, RequestId, MAX_BODY_BYTES};
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

/// One span per request with its id (echoed as `x-request-id`), the
/// caller's role and merchant (recorded by the `Caller` extractor) and the
/// status. Neither bodies nor headers are logged, so no card number, CVC or
/// API key can reach a log line from here.
async fn request_span(mut request: Request, next: Next) -> Response {
    let request_id = Uuid::now_v7();
    request.extensions_mut().insert(RequestId(request_id));
    let span = tracing::info_span!(
        "request",
        request_id = %request_id,
        method = %request.method(),
        path = %redact_digits(request.uri().path()),
        role = tracing::field::Empty,
        merchant_id = tracing::field::Empty,
    );
    let started = Instant::now();
    let mut response = next.run(request).instrument(span.clone()).await;
    let elapsed_us = started.elapsed().as_micros() as u64;
    span.in_scope(|| tracing::info!(status = response.status().as_u16(), elapsed_us, "handled"));
    if let Ok(value) = HeaderValue::from_str(&request_id.to_string()) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}
