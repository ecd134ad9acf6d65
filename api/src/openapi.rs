//! The OpenAPI 3.1 document, derived from the handlers (`#[utoipa::path]`)
//! and the types of their bodies and parameters (`ToSchema`, `IntoParams`).
//! The router is built from the same `routes!` calls ([`router`]), so a
//! route cannot exist without being documented, and the query parameters a
//! read accepts are the ones its parameter type documents
//! ([`crate::query::Spec::of`]).

use std::collections::BTreeMap;
use std::sync::OnceLock;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use paystream_domain::id::{MerchantId, PaymentId};
use paystream_domain::payment::PaymentStatus;
use paystream_domain::Currency;
use paystream_projections::overview::Dimension;
use serde::Serialize;
use serde_json::{json, Value};
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{ContentBuilder, ObjectBuilder, Ref, RefOr, Type};
use utoipa::{IntoParams, IntoResponses, Modify, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::ErrorBody;
use crate::handlers as h;
use crate::read as r;
use crate::state::AppState;

/// The response header every answer carries.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Paystream API",
        description = "An event-sourced payment platform. Amounts are integers in minor units. \
            Every list has one shape (`object`, `data`, `has_more`, `next_cursor`) and answers CSV for \
            `Accept: text/csv`. Errors have one shape (`Error`). docs/api.md walks through it.",
    ),
    components(schemas(ErrorBody, MethodType)),
    modifiers(&Security),
    tags(
        (name = "merchants", description = "Merchants and their standing"),
        (name = "api_keys", description = "API keys (one role each)"),
        (name = "payments", description = "Payments: create, capture, void, refund, review, disputes"),
        (name = "reads", description = "Read models: search, dashboards, analytics, the ledger"),
        (name = "projections", description = "The read models' status and rebuilds"),
        (name = "meta", description = "Health and this document"),
    ),
)]
struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                Http::builder()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("An API key: `Authorization: Bearer <key>`"))
                    .build(),
            ),
        );
    }
}

/// Every route: each `routes!` registers a handler with axum and its
/// `#[utoipa::path]` with the document.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(h::healthz))
        .routes(routes!(h::create_merchant, r::list_merchants))
        .routes(routes!(h::get_merchant))
        .routes(routes!(h::suspend_merchant))
        .routes(routes!(h::reactivate_merchant))
        .routes(routes!(h::change_tier))
        .routes(routes!(h::close_merchant))
        .routes(routes!(h::create_key))
        .routes(routes!(h::revoke_key))
        .routes(routes!(h::create_payment, r::search_payments))
        .routes(routes!(h::get_payment))
        .routes(routes!(h::payment_events))
        .routes(routes!(h::capture_payment))
        .routes(routes!(h::void_payment))
        .routes(routes!(h::refund_payment))
        .routes(routes!(h::review_payment))
        .routes(routes!(h::open_dispute))
        .routes(routes!(h::resolve_dispute))
        .routes(routes!(r::merchant_dashboard))
        .routes(routes!(r::analytics_overview))
        .routes(routes!(r::ledger_accounts))
        .routes(routes!(r::trial_balance))
        .routes(routes!(r::ledger_journal))
        .routes(routes!(r::projections_status))
        .routes(routes!(r::rebuild_projection))
        .routes(routes!(openapi_v1))
        .routes(routes!(openapi_root))
}

/// The document as served: every answer's `x-request-id` header added to each
/// response of each operation.
pub fn document() -> &'static Value {
    static DOCUMENT: OnceLock<Value> = OnceLock::new();
    DOCUMENT.get_or_init(|| {
        let mut document = serde_json::to_value(router().into_openapi()).unwrap_or(Value::Null);
        let request_id = json!({
            "description": "This request's id, as in the server's log lines",
            "schema": {"type": "string", "format": "uuid"},
        });
        if let Some(paths) = document.get_mut("paths").and_then(Value::as_object_mut) {
            for operation in paths.values_mut().filter_map(Value::as_object_mut).flat_map(|o| o.values_mut()) {
                optional_body_is_an_object(operation);
                let Some(responses) = operation.get_mut("responses").and_then(Value::as_object_mut) else {
                    continue;
                };
                for response in responses.values_mut() {
                    response["headers"][REQUEST_ID_HEADER] = request_id.clone();
                }
            }
        }
        document
    })
}

/// An optional body (`request_body(content = Option<T>)`) may be left out, but
/// when sent it is an object: its schema is `T`, not "`T` or `null`".
fn optional_body_is_an_object(operation: &mut Value) {
    let Some(content) = operation.pointer_mut("/requestBody/content/application~1json") else {
        return;
    };
    let one_of = content["schema"]["oneOf"].as_array().cloned().unwrap_or_default();
    if let [null, schema] = one_of.as_slice() {
        if null["type"] == "null" {
            content["schema"] = schema.clone();
            operation["requestBody"]["required"] = Value::Bool(false);
        }
    }
}

/// The OpenAPI 3.1 document of this API.
fn serve_document() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], axum::Json(document())).into_response()
}

/// This document.
#[utoipa::path(
    get, path = "/v1/openapi.json", operation_id = "getOpenApi", tag = "meta",
    summary = "This document (OpenAPI 3.1)", description = "Roles: none.",
    responses((status = 200, description = "The OpenAPI 3.1 document", body = Object), Internal),
)]
pub async fn openapi_v1() -> Response {
    serve_document()
}

/// This document, at the root.
#[utoipa::path(
    get, path = "/openapi.json", operation_id = "getOpenApiAtRoot", tag = "meta",
    summary = "This document (OpenAPI 3.1), at the root", description = "Roles: none.",
    responses((status = 200, description = "The OpenAPI 3.1 document", body = Object), Internal),
)]
pub async fn openapi_root() -> Response {
    serve_document()
}

// ---------------------------------------------------------------- responses

fn error_response(description: &str) -> RefOr<utoipa::openapi::Response> {
    ResponseBuilder::new()
        .description(description)
        .content("application/json", ContentBuilder::new().schema(Some(Ref::from_schema_name("Error"))).build())
        .into()
}

fn errors(list: &[(&str, &str)]) -> BTreeMap<String, RefOr<utoipa::openapi::Response>> {
    list.iter().map(|(status, description)| (status.to_string(), error_response(description))).collect()
}

const BAD_REQUEST: (&str, &str) =
    ("400", "The request is malformed: a body, query parameter or header that is wrong (`param` names it)");
const FORBIDDEN: (&str, &str) = ("403", "The key's role may not call this route");
const INTERNAL: (&str, &str) = ("500", "Something went wrong on the server's side (logged there)");

/// 401, with its `WWW-Authenticate: Bearer` header.
fn unauthenticated() -> (String, RefOr<utoipa::openapi::Response>) {
    let header = HeaderBuilder::new()
        .schema(ObjectBuilder::new().schema_type(Type::String).enum_values(Some(["Bearer"])))
        .description(Some("Always `Bearer`"))
        .build();
    let response = ResponseBuilder::new()
        .description("No key, a malformed `Authorization` header, or an unknown or revoked key")
        .header("WWW-Authenticate", header)
        .content("application/json", ContentBuilder::new().schema(Some(Ref::from_schema_name("Error"))).build())
        .build();
    ("401".to_string(), response.into())
}

/// A command's failures: 400, 401, 403, 409, 413, 415, 422, 500.
pub struct CommandErrors;

impl IntoResponses for CommandErrors {
    fn responses() -> BTreeMap<String, RefOr<utoipa::openapi::Response>> {
        let mut map = errors(&[
            BAD_REQUEST,
            FORBIDDEN,
            ("409", "The `Idempotency-Key` was used with another request (`idempotency_key_reused`), or the object kept changing concurrently (`concurrent_modification`)"),
            ("413", "The body is over 1 MiB"),
            ("415", "A body that is not `Content-Type: application/json`"),
            ("422", "A business rule refused the command (`code` says which; docs/errors.md)"),
            INTERNAL,
        ]);
        map.extend([unauthenticated()]);
        map
    }
}

/// A read's failures: 400, 401, 403, 500.
pub struct ReadErrors;

impl IntoResponses for ReadErrors {
    fn responses() -> BTreeMap<String, RefOr<utoipa::openapi::Response>> {
        let mut map = errors(&[BAD_REQUEST, FORBIDDEN, INTERNAL]);
        map.extend([unauthenticated()]);
        map
    }
}

/// 404: no such object, or another merchant's.
pub struct NotFound;

impl IntoResponses for NotFound {
    fn responses() -> BTreeMap<String, RefOr<utoipa::openapi::Response>> {
        errors(&[("404", "No such object, or (merchant keys) another merchant's")])
    }
}

/// 503: the projection has not reached `min_position` in time, or is being built.
pub struct Lagging;

impl IntoResponses for Lagging {
    fn responses() -> BTreeMap<String, RefOr<utoipa::openapi::Response>> {
        errors(&[(
            "503",
            "`projection_lagging`: the read's projection did not reach `min_position` within 5 seconds, has failed, or is being built from the log; retry shortly",
        )])
    }
}

/// 409 `already_rebuilding`.
pub struct AlreadyRebuilding;

impl IntoResponses for AlreadyRebuilding {
    fn responses() -> BTreeMap<String, RefOr<utoipa::openapi::Response>> {
        errors(&[("409", "`already_rebuilding`: that projection is rebuilding now")])
    }
}

/// 500 only.
pub struct Internal;

impl IntoResponses for Internal {
    fn responses() -> BTreeMap<String, RefOr<utoipa::openapi::Response>> {
        errors(&[INTERNAL])
    }
}

// ---------------------------------------------------------------- parameters

/// The `Idempotency-Key` request header of every write.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
pub struct IdempotencyKey {
    /// 1 to 255 visible ASCII characters, without a run of 12 or more digits.
    /// The same key with the same request (docs/api.md) within 24 hours returns
    /// the first answer again with `Idempotent-Replayed: true`; with another
    /// request, `409 idempotency_key_reused`.
    #[param(rename = "Idempotency-Key", pattern = "^[!-~]{1,255}$", max_length = 255, min_length = 1)]
    idempotency_key: Option<String>,
}

/// A payment method type, as search filters by it.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MethodType {
    Card,
    BankTransfer,
    Wallet,
    QrCode,
    Nfc,
}

/// `GET /v1/payments`.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct SearchParams {
    /// Any of these statuses: comma-separated (`captured,refunded`) or the parameter repeated.
    #[param(style = Form, explode = false)]
    status: Option<Vec<PaymentStatus>>,
    /// Any of these method types (comma-separated or repeated).
    #[param(style = Form, explode = false)]
    method: Option<Vec<MethodType>>,
    /// Any of these currencies (comma-separated or repeated).
    #[param(style = Form, explode = false)]
    currency: Option<Vec<Currency>>,
    /// Created at or after: a date (its whole UTC day) or an RFC 3339 time.
    #[param(value_type = Option<String>, format = Date)]
    from: Option<String>,
    /// Created before: a date (up to the end of that UTC day) or an RFC 3339 time.
    #[param(value_type = Option<String>, format = Date)]
    to: Option<String>,
    /// At least this amount (minor units); at most `max_amount`.
    min_amount: Option<i64>,
    /// At most this amount (minor units).
    max_amount: Option<i64>,
    /// The customer's id, or, when it contains `@`, the customer's email (case ignored).
    customer: Option<String>,
    /// One merchant's payments (admin, analyst, auditor); a merchant key always searches its own.
    merchant_id: Option<MerchantId>,
    /// Page size, 1 to 100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<u32>,
    /// The previous page's `next_cursor`.
    starting_after: Option<PaymentId>,
    /// Wait, at most 5 s, until the projection has applied this log position.
    min_position: Option<u64>,
}

/// `GET /v1/payments/{id}/events`.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct EventParams {
    /// Page size, 1 to 1,000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// The previous page's `next_cursor`.
    #[param(pattern = "^[0-9]{1,19}$")]
    starting_after: Option<String>,
}

/// `GET /v1/merchants`.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct MerchantListParams {
    /// Page size, 1 to 100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<u32>,
    /// The previous page's `next_cursor`: the merchants onboarded before it.
    starting_after: Option<MerchantId>,
    /// Wait, at most 5 s, until the projection has applied this log position.
    min_position: Option<u64>,
}

/// `GET /v1/merchants/{id}/dashboard`.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct DashboardParams {
    /// First UTC day (default: 29 days before `to`); at most 366 days before `to`.
    #[param(value_type = Option<String>, format = Date)]
    from: Option<String>,
    /// Last UTC day, included (default: today).
    #[param(value_type = Option<String>, format = Date)]
    to: Option<String>,
    /// Only this currency.
    currency: Option<Currency>,
    /// Wait, at most 5 s, until the projection has applied this log position.
    min_position: Option<u64>,
}

/// `GET /v1/analytics/overview`.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct OverviewParams {
    /// First UTC day (default: 29 days before `to`).
    #[param(value_type = Option<String>, format = Date)]
    from: Option<String>,
    /// Last UTC day, included (default: today).
    #[param(value_type = Option<String>, format = Date)]
    to: Option<String>,
    /// Dimensions to keep apart (comma-separated); `currency` is always added.
    #[param(style = Form, explode = false)]
    group_by: Option<Vec<Dimension>>,
    /// Only this merchant.
    merchant_id: Option<MerchantId>,
    /// Only these currencies (comma-separated or repeated).
    #[param(style = Form, explode = false)]
    currency: Option<Vec<Currency>>,
    /// Wait, at most 5 s, until the projection has applied this log position.
    min_position: Option<u64>,
}

/// `GET /v1/ledger/accounts`.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct AccountParams {
    /// Only these currencies (comma-separated or repeated).
    #[param(style = Form, explode = false)]
    currency: Option<Vec<Currency>>,
    /// Wait, at most 5 s, until the projection has applied this log position.
    min_position: Option<u64>,
}

/// `GET /v1/ledger/trial_balance`.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct TrialBalanceParams {
    /// Wait, at most 5 s, until the projection has applied this log position.
    min_position: Option<u64>,
}

/// `GET /v1/ledger/journal`.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct JournalParams {
    /// The previous page's `next_cursor`: entries posted after it.
    #[param(pattern = "^[0-9]{1,19}$")]
    starting_after: Option<String>,
    /// The older name of `starting_after` (a log position); not both.
    after: Option<u64>,
    /// Page size, 1 to 1,000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// Wait, at most 5 s, until the projection has applied this log position.
    min_position: Option<u64>,
}

/// No query parameter.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub struct NoParams {}
