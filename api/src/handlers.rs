//! Thin handlers: extract, authorize, turn the request into a command, call
//! the write side, render. No business rule is checked here.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::LazyLock;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use paystream_commands::bus::Executed;
use paystream_commands::facts::KeyRecord;
use paystream_commands::services::{NewPayment, OnboardMerchant};
use paystream_commands::{CommandError, RequestMeta};
use paystream_domain::api_key::{ApiKeyAggregate, Role};
use paystream_domain::country::CountryCode;
use paystream_domain::id::{ApiKeyId, DisputeId, MerchantId, PaymentId};
use paystream_domain::merchant::{FeeSchedule, MerchantAggregate, MerchantCommand, Tier};
use paystream_domain::method::PaymentMethodInput;
use paystream_domain::payment::{
    AmountInput, CaptureMethod, Customer, DisputeOutcome, Payment, PaymentAggregate, PaymentStatus, ReviewDecision,
};
use paystream_domain::{Aggregate, Currency, DomainError, Money};
use paystream_store::StoreError;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::error::ApiError;
use crate::extract::{Body, Caller, Fingerprint};
use crate::list::{respond_list, List};
use crate::openapi::{CommandErrors, EventParams, IdempotencyKey, Internal, NotFound, ReadErrors};
use crate::query::{Params, QueryString, Spec};
use crate::read::rows_to_csv;
use crate::state::AppState;
use crate::views::{self, ApiKeyView, DisputeView, EventView, Health, MerchantView, PaymentView, RefundView};

const ADMIN: &[Role] = &[Role::Admin];
const MERCHANT: &[Role] = &[Role::Merchant];
const ADMIN_OR_MERCHANT: &[Role] = &[Role::Admin, Role::Merchant];
const READERS: &[Role] = &[Role::Admin, Role::Merchant, Role::Analyst, Role::Auditor];
const REVIEWERS: &[Role] = &[Role::Admin, Role::Analyst];

/// A JSON reply; `replayed` marks an idempotent replay.
pub struct Reply {
    status: StatusCode,
    body: Value,
    replayed: bool,
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body)).into_response();
        if self.replayed {
            response.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
        }
        response
    }
}

fn ok(body: impl Serialize) -> Result<Reply, ApiError> {
    Ok(Reply { status: StatusCode::OK, body: value(body)?, replayed: false })
}

/// A view as the JSON of a reply.
fn value(view: impl Serialize) -> Result<Value, ApiError> {
    serde_json::to_value(view).map_err(|_| ApiError::internal())
}

/// Runs a command with idempotency: a request carrying an Idempotency-Key
/// already seen with the same body gets the first response back (rendered
/// from the log as that request left it, by `replayed`, which also gets the
/// original request's correlation id); with another body, 409.
async fn run<A, T, Fut>(
    state: &AppState,
    caller: &Caller,
    fingerprint: &Fingerprint,
    status: StatusCode,
    exec: impl FnOnce(RequestMeta) -> Fut,
    fresh: impl FnOnce(T) -> Result<Value, ApiError>,
    replayed: impl AsyncFnOnce(Executed<A>, Uuid) -> Result<Value, ApiError>,
) -> Result<Reply, ApiError>
where
    A: Aggregate,
    Fut: Future<Output = Result<T, CommandError>>,
{
    let meta = caller.meta(&fingerprint.canonical);
    let bus = &state.services.bus;
    let Some(key) = meta.idempotency_key.clone() else {
        return Ok(Reply { status, body: fresh(exec(meta).await?)?, replayed: false });
    };
    let _guard = bus.idempotency_guard(&key).await;
    if let Some(replay) = bus.find_replay(&key, &fingerprint.candidates()).await? {
        let body = replayed(bus.replay::<A>(&replay).await?, replay.correlation_id).await?;
        return Ok(Reply { status, body, replayed: true });
    }
    match exec(meta).await {
        Ok(output) => Ok(Reply { status, body: fresh(output)?, replayed: false }),
        // Another node won the race for this key: replay its response.
        Err(CommandError::Store(StoreError::DuplicateIdempotencyKey { .. })) => {
            let replay = bus.find_replay(&key, &fingerprint.candidates()).await?.ok_or_else(ApiError::internal)?;
            let body = replayed(bus.replay::<A>(&replay).await?, replay.correlation_id).await?;
            Ok(Reply { status, body, replayed: true })
        }
        Err(error) => Err(error.into()),
    }
}

fn parse_id<T: std::str::FromStr>(raw: &str, what: &str) -> Result<T, ApiError> {
    raw.parse().map_err(|_| ApiError::not_found(what))
}

fn render_merchant(executed: Executed<MerchantAggregate>) -> Result<Value, ApiError> {
    let merchant = executed.state.ok_or_else(ApiError::internal)?;
    value(views::merchant(&merchant, executed.position))
}

fn render_payment(executed: Executed<PaymentAggregate>) -> Result<Value, ApiError> {
    let payment = executed.state.ok_or_else(ApiError::internal)?;
    value(views::payment(&payment, executed.position))
}

// ---------------------------------------------------------------- merchants

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FeesBody {
    percent_bps: u32,
    fixed: i64,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateMerchant {
    name: String,
    country: CountryCode,
    default_currency: Currency,
    #[serde(default)]
    settlement_currency: Option<Currency>,
    tier: Tier,
    fees: FeesBody,
}

#[utoipa::path(
    post, path = "/v1/merchants", operation_id = "createMerchant", tag = "merchants",
    summary = "Onboard a merchant", description = "Roles: admin.",
    params(IdempotencyKey),
    request_body(content = CreateMerchant, content_type = "application/json"),
    security(("bearer" = [])),
    responses(
        (status = 201, description = "The new merchant", body = MerchantView, headers(("Idempotent-Replayed" = String, description = "`true` when this answer replays an earlier request with the same `Idempotency-Key`"))),
        CommandErrors,
    ),
)]
pub async fn create_merchant(State(state): State<AppState>, caller: Caller, body: Body) -> Result<Reply, ApiError> {
    caller.require(ADMIN)?;
    let b: CreateMerchant = body.json()?;
    let input = OnboardMerchant {
        name: b.name,
        country: b.country,
        default_currency: b.default_currency,
        settlement_currency: b.settlement_currency.unwrap_or(b.default_currency),
        tier: b.tier,
        fees: FeeSchedule { percent_bps: b.fees.percent_bps, fixed_minor: b.fees.fixed },
    };
    let services = &state.services;
    run(
        &state,
        &caller,
        &body.fingerprint,
        StatusCode::CREATED,
        |meta| async move { services.onboard_merchant(&meta, input).await },
        render_merchant,
        async |executed, _| render_merchant(executed),
    )
    .await
}

#[utoipa::path(
    get, path = "/v1/merchants/{id}", operation_id = "getMerchant", tag = "merchants",
    summary = "Retrieve a merchant", description = "Roles: admin, merchant (own).",
    params(("id" = MerchantId, Path, description = "The merchant")), security(("bearer" = [])),
    responses((status = 200, description = "The merchant", body = MerchantView), ReadErrors, NotFound),
)]
pub async fn get_merchant(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Reply, ApiError> {
    caller.require(ADMIN_OR_MERCHANT)?;
    let id: MerchantId = parse_id(&id, "merchant")?;
    if !caller.can_see(id) {
        return Err(ApiError::not_found("merchant"));
    }
    let loaded = state.services.bus.load::<MerchantAggregate>(id.as_uuid()).await?;
    let merchant = loaded.state.ok_or_else(|| ApiError::not_found("merchant"))?;
    ok(views::merchant(&merchant, loaded.position))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReasonBody {
    #[serde(default)]
    reason: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TierBody {
    tier: Tier,
    #[serde(default)]
    reason: Option<String>,
}

async fn change_merchant(
    state: &AppState,
    caller: &Caller,
    id: &str,
    fingerprint: &Fingerprint,
    command: impl Fn(paystream_domain::time::Timestamp) -> MerchantCommand,
) -> Result<Reply, ApiError> {
    caller.require(ADMIN)?;
    let id: MerchantId = parse_id(id, "merchant")?;
    let services = &state.services;
    run(
        state,
        caller,
        fingerprint,
        StatusCode::OK,
        |meta| async move { services.change_merchant(&meta, id, command).await },
        render_merchant,
        async |executed, _| render_merchant(executed),
    )
    .await
}

#[utoipa::path(
    post, path = "/v1/merchants/{id}/suspend", operation_id = "suspendMerchant", tag = "merchants",
    summary = "Suspend a merchant", description = "Roles: admin.",
    params(("id" = MerchantId, Path, description = "The merchant"), IdempotencyKey),
    request_body(content = Option<ReasonBody>, content_type = "application/json", description = "May be left out (an empty body is `{}`)"),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The merchant, suspended", body = MerchantView, headers(("Idempotent-Replayed" = String, description = "`true` when this answer replays an earlier request with the same `Idempotency-Key`"))),
        CommandErrors, NotFound,
    ),
)]
pub async fn suspend_merchant(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Body,
) -> Result<Reply, ApiError> {
    caller.require(ADMIN)?;
    let reason = body.json::<ReasonBody>()?.reason.unwrap_or_default();
    change_merchant(&state, &caller, &id, &body.fingerprint, |now| MerchantCommand::Suspend {
        reason: reason.clone(),
        now,
    })
    .await
}

#[utoipa::path(
    post, path = "/v1/merchants/{id}/reactivate", operation_id = "reactivateMerchant", tag = "merchants",
    summary = "Reactivate a suspended merchant", description = "Roles: admin.",
    params(("id" = MerchantId, Path, description = "The merchant"), IdempotencyKey),
    request_body(content = Option<ReasonBody>, content_type = "application/json", description = "May be left out (an empty body is `{}`)"),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The merchant, active again", body = MerchantView, headers(("Idempotent-Replayed" = String, description = "`true` when this answer replays an earlier request with the same `Idempotency-Key`"))),
        CommandErrors, NotFound,
    ),
)]
pub async fn reactivate_merchant(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Body,
) -> Result<Reply, ApiError> {
    caller.require(ADMIN)?;
    body.json::<ReasonBody>()?;
    change_merchant(&state, &caller, &id, &body.fingerprint, |now| MerchantCommand::Reactivate { now }).await
}

#[utoipa::path(
    post, path = "/v1/merchants/{id}/tier", operation_id = "changeMerchantTier", tag = "merchants",
    summary = "Change a merchant's risk tier", description = "Roles: admin.",
    params(("id" = MerchantId, Path, description = "The merchant"), IdempotencyKey),
    request_body(content = TierBody, content_type = "application/json"),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The merchant in its new tier", body = MerchantView, headers(("Idempotent-Replayed" = String, description = "`true` when this answer replays an earlier request with the same `Idempotency-Key`"))),
        CommandErrors, NotFound,
    ),
)]
pub async fn change_tier(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Body,
) -> Result<Reply, ApiError> {
    caller.require(ADMIN)?;
    let TierBody { tier, reason } = body.json()?;
    change_merchant(&state, &caller, &id, &body.fingerprint, |now| MerchantCommand::ChangeTier {
        tier,
        reason: reason.clone(),
        now,
    })
    .await
}

#[utoipa::path(
    post, path = "/v1/merchants/{id}/close", operation_id = "closeMerchant", tag = "merchants",
    summary = "Close a merchant", description = "Roles: admin.",
    params(("id" = MerchantId, Path, description = "The merchant"), IdempotencyKey),
    request_body(content = Option<ReasonBody>, content_type = "application/json", description = "May be left out (an empty body is `{}`)"),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The merchant, closed", body = MerchantView, headers(("Idempotent-Replayed" = String, description = "`true` when this answer replays an earlier request with the same `Idempotency-Key`"))),
        CommandErrors, NotFound,
    ),
)]
pub async fn close_merchant(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Body,
) -> Result<Reply, ApiError> {
    caller.require(ADMIN)?;
    let reason = body.json::<ReasonBody>()?.reason;
    change_merchant(&state, &caller, &id, &body.fingerprint, |now| MerchantCommand::Close {
        reason: reason.clone(),
        now,
    })
    .await
}

// ---------------------------------------------------------------- api keys

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    role: Role,
    #[serde(default)]
    merchant_id: Option<MerchantId>,
}

fn key_record(executed: &Executed<ApiKeyAggregate>) -> Result<KeyRecord, ApiError> {
    let key = executed.state.as_ref().ok_or_else(ApiError::internal)?;
    Ok(KeyRecord { id: key.id, role: key.role, merchant_id: key.merchant_id, revoked: key.revoked })
}

#[utoipa::path(
    post, path = "/v1/api_keys", operation_id = "createApiKey", tag = "api_keys",
    summary = "Create an API key (the secret is shown once)", description = "Roles: admin.",
    params(IdempotencyKey),
    request_body(content = CreateKey, content_type = "application/json"),
    security(("bearer" = [])),
    responses(
        (status = 201, description = "The key, with its secret in `key` (not in a replay)", body = ApiKeyView, headers(("Idempotent-Replayed" = String, description = "`true` when this answer replays an earlier request with the same `Idempotency-Key`"))),
        CommandErrors, NotFound,
    ),
)]
pub async fn create_key(State(state): State<AppState>, caller: Caller, body: Body) -> Result<Reply, ApiError> {
    caller.require(ADMIN)?;
    let CreateKey { role, merchant_id } = body.json()?;
    if let Some(merchant_id) = merchant_id {
        if state.services.merchant(merchant_id).await?.is_none() {
            return Err(ApiError::from(DomainError::MerchantNotFound).with_param("merchant_id"));
        }
    }
    let services = &state.services;
    run(
        &state,
        &caller,
        &body.fingerprint,
        StatusCode::CREATED,
        |meta| async move { services.issue_key(&meta, role, merchant_id).await },
        |(executed, secret)| value(views::api_key(&key_record(&executed)?, Some(&secret), executed.position)),
        // The secret is shown once only; a replay cannot show it again.
        async |executed, _| value(views::api_key(&key_record(&executed)?, None, executed.position)),
    )
    .await
}

#[utoipa::path(
    delete, path = "/v1/api_keys/{id}", operation_id = "revokeApiKey", tag = "api_keys",
    summary = "Revoke an API key", description = "Roles: admin.",
    params(("id" = ApiKeyId, Path, description = "The key"), IdempotencyKey),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The key, revoked", body = ApiKeyView, headers(("Idempotent-Replayed" = String, description = "`true` when this answer replays an earlier request with the same `Idempotency-Key`"))),
        CommandErrors, NotFound,
    ),
)]
pub async fn revoke_key(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Body,
) -> Result<Reply, ApiError> {
    caller.require(ADMIN)?;
    let id: ApiKeyId = parse_id(&id, "api key")?;
    let services = &state.services;
    let render =
        |executed: Executed<ApiKeyAggregate>| value(views::api_key(&key_record(&executed)?, None, executed.position));
    run(
        &state,
        &caller,
        &body.fingerprint,
        StatusCode::OK,
        |meta| async move { services.revoke_key(&meta, id).await },
        render,
        async |executed, _| render(executed),
    )
    .await
}

// ---------------------------------------------------------------- payments

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePayment {
    amount: i64,
    currency: Currency,
    method: PaymentMethodInput,
    #[serde(default)]
    capture: Option<CaptureMethod>,
    #[serde(default)]
    customer: Option<Customer>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    metadata: Option<BTreeMap<String, String>>,
}

#[utoipa::path(
    post, path = "/v1/payments", operation_id = "createPayment", tag = "payments",
    summary = "Create a payment (risk, authorization, automatic capture)", description = "Roles: merchant.",
    params(IdempotencyKey),
    request_body(content = CreatePayment, content_type = "application/json"),
    security(("bearer" = [])),
    responses(
        (status = 201, description = "The payment: authorized, captured, declined or held for review", body = PaymentView, headers(("Idempotent-Replayed" = String, description = "`true` when this answer replays an earlier request with the same `Idempotency-Key`"))),
        CommandErrors,
    ),
)]
pub async fn create_payment(State(state): State<AppState>, caller: Caller, body: Body) -> Result<Reply, ApiError> {
    caller.require(MERCHANT)?;
    let merchant_id = caller.key.merchant_id.ok_or_else(ApiError::forbidden)?;
    let b: CreatePayment = body.json()?;
    let input = NewPayment {
        merchant_id,
        amount: Money::new(b.amount, b.currency),
        capture_method: b.capture.unwrap_or(CaptureMethod::Automatic),
        method: b.method,
        customer: b.customer.unwrap_or_default(),
        description: b.description,
        metadata: b.metadata.unwrap_or_default(),
    };
    let services = &state.services;
    let method = input.method.clone();
    let resume_meta = caller.meta(&body.fingerprint.canonical).followup();
    run(
        &state,
        &caller,
        &body.fingerprint,
        StatusCode::CREATED,
        |meta| async move { services.create_payment(&meta, input).await },
        render_payment,
        // A retry of a request that was cut off (crash) after the payment was
        // initiated but before the acquirer's answer was recorded finishes it:
        // the retry carries the instrument again, and the events it adds
        // carry the original request's correlation id.
        async |executed: Executed<PaymentAggregate>, correlation_id| {
            let awaiting = executed.state.as_ref().filter(|p| p.status() == PaymentStatus::Pending && p.risk.is_some());
            match awaiting {
                Some(payment) => {
                    let meta = RequestMeta { correlation_id, ..resume_meta };
                    render_payment(services.authorize(&meta, payment.id, payment.amount, &method).await?)
                }
                None => render_payment(executed),
            }
        },
    )
    .await
}

/// The payment if the caller may see it; 404 otherwise (never revealing
/// that another merchant's payment exists).
async fn visible_payment(state: &AppState, caller: &Caller, id: &str) -> Result<(Payment, u64), ApiError> {
    let id: PaymentId = parse_id(id, "payment")?;
    let loaded = state.services.bus.load::<PaymentAggregate>(id.as_uuid()).await?;
    match loaded.state {
        Some(payment) if caller.can_see(payment.merchant_id) => Ok((payment, loaded.position)),
        _ => Err(ApiError::not_found("payment")),
    }
}

#[utoipa::path(
    get, path = "/v1/payments/{id}", operation_id = "getPayment", tag = "payments",
    summary = "Retrieve a payment", description = "Roles: admin, analyst, auditor, merchant (own).",
    params(("id" = PaymentId, Path, description = "The payment")), security(("bearer" = [])),
    responses((status = 200, description = "The payment", body = PaymentView), ReadErrors, NotFound),
)]
pub async fn get_payment(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Reply, ApiError> {
    caller.require(READERS)?;
    let (payment, position) = visible_payment(&state, &caller, &id).await?;
    ok(views::payment(&payment, position))
}

/// Events per page of a payment's history by default, and at most.
const DEFAULT_EVENT_PAGE: usize = 100;
const MAX_EVENT_PAGE: usize = 1_000;
static EVENT_PARAMS: LazyLock<Spec> = LazyLock::new(Spec::of::<EventParams>);

/// The payment's events in log order, a page at a time: the cursor is the
/// position of the page's last event.
#[utoipa::path(
    get, path = "/v1/payments/{id}/events", operation_id = "listPaymentEvents", tag = "payments",
    summary = "The payment's own history, as stored", description = "Roles: admin, analyst, auditor, merchant (own).",
    params(("id" = PaymentId, Path, description = "The payment"), EventParams), security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of the payment's events, in log order",
            content((List<EventView> = "application/json"), (String = "text/csv")),
            headers(("Paystream-Next-Cursor" = String, description = "The next page's cursor, as `next_cursor`; absent on the last page"))),
        ReadErrors, NotFound,
    ),
)]
pub async fn payment_events(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    query: QueryString,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    caller.require(READERS)?;
    let (payment, _) = visible_payment(&state, &caller, &id).await?;
    let params = Params::new(query, &EVENT_PARAMS)?;
    let limit = params.limit(DEFAULT_EVENT_PAGE, MAX_EVENT_PAGE)?;
    let after: u64 = params.parse("starting_after", "the previous page's next_cursor")?.unwrap_or(0);
    let stream = paystream_commands::stream_id::<PaymentAggregate>(payment.id.as_uuid());
    let events = state.services.bus.read_stream(&stream).await?;
    let mut rest = events.iter().filter(|e| e.position > after);
    let data: Vec<EventView> = rest.by_ref().take(limit).map(views::recorded_event).collect();
    let more = rest.next().is_some();
    let next_cursor = data.last().filter(|_| more).map(|e| e.position.to_string());
    let list = List::page(data, next_cursor);
    respond_list(&headers, &list, &list, |out| rows_to_csv(&list.data, out))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CaptureBody {
    #[serde(default)]
    amount: Option<i64>,
    #[serde(default)]
    currency: Option<Currency>,
    #[serde(default, rename = "final")]
    final_capture: Option<bool>,
}

fn amount_input(amount: Option<i64>, currency: Option<Currency>) -> Option<AmountInput> {
    amount.map(|amount_minor| AmountInput { amount_minor, currency })
}

/// Who may run a payment command, and the status of its success.
struct Access {
    roles: &'static [Role],
    status: StatusCode,
}

const MERCHANT_OK: Access = Access { roles: MERCHANT, status: StatusCode::OK };
const MERCHANT_CREATED: Access = Access { roles: MERCHANT, status: StatusCode::CREATED };
const REVIEWER_OK: Access = Access { roles: REVIEWERS, status: StatusCode::OK };
const ADMIN_OK: Access = Access { roles: ADMIN, status: StatusCode::OK };
const ADMIN_CREATED: Access = Access { roles: ADMIN, status: StatusCode::CREATED };

/// Runs a follow-up command on a payment the caller may act on.
async fn act_on_payment(
    state: &AppState,
    caller: &Caller,
    access: Access,
    id: &str,
    fingerprint: &Fingerprint,
    exec: impl AsyncFnOnce(&RequestMeta, PaymentId) -> Result<Executed<PaymentAggregate>, CommandError>,
    render: impl Fn(Executed<PaymentAggregate>) -> Result<Value, ApiError> + Copy,
) -> Result<Reply, ApiError> {
    caller.require(access.roles)?;
    let (payment, _) = visible_payment(state, caller, id).await?;
    let payment_id = payment.id;
    let replayed = async |executed, _| render(executed);
    run(
        state,
        caller,
        fingerprint,
        access.status,
        |meta| async move { exec(&meta, payment_id).await },
        render,
        replayed,
    )
    .await
}

#[utoipa::path(
    post, path = "/v1/payments/{id}/capture", operation_id = "capturePayment", tag = "payments",
    summary = "Capture all or part of an authorization", description = "Roles: merchant (own).",
    params(("id" = PaymentId, Path, description = "The payment"), IdempotencyKey),
    request_body(content = Option<CaptureBody>, content_type = "application/json", description = "May be left out (an empty body is `{}`)"),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The payment after the capture", body = PaymentView, headers(("Idempotent-Replayed" = String, description = "`true` when this answer replays an earlier request with the same `Idempotency-Key`"))),
        CommandErrors, NotFound,
    ),
)]
pub async fn capture_payment(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Body,
) -> Result<Reply, ApiError> {
    caller.require(MERCHANT_OK.roles)?;
    let CaptureBody { amount, currency, final_capture } = body.json()?;
    let services = &state.services;
    act_on_payment(
        &state,
        &caller,
        MERCHANT_OK,
        &id,
        &body.fingerprint,
        async |meta, payment_id| {
            services.capture(meta, payment_id, amount_input(amount, currency), final_capture.unwrap_or(false)).await
        },
        render_payment,
    )
    .await
}

#[utoipa::path(
    post, path = "/v1/payments/{id}/void", operation_id = "voidPayment", tag = "payments",
    summary = "Void an authorization before any capture", description = "Roles: merchant (own).",
    params(("id" = PaymentId, Path, description = "The payment"), IdempotencyKey),
    request_body(content = Option<ReasonBody>, content_type = "application/json", description = "May be left out (an empty body is `{}`)"),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The payment, voided", body = PaymentView, headers(("Idempotent-Replayed" = String, description = "`true` when this answer replays an earlier request with the same `Idempotency-Key`"))),
        CommandErrors, NotFound,
    ),
)]
pub async fn void_payment(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Body,
) -> Result<Reply, ApiError> {
    caller.require(MERCHANT_OK.roles)?;
    let reason = body.json::<ReasonBody>()?.reason;
    let services = &state.services;
    act_on_payment(
        &state,
        &caller,
        MERCHANT_OK,
        &id,
        &body.fingerprint,
        async |meta, payment_id| services.void(meta, payment_id, reason).await,
        render_payment,
    )
    .await
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefundBody {
    #[serde(default)]
    amount: Option<i64>,
    #[serde(default)]
    currency: Option<Currency>,
    #[serde(default)]
    reason: Option<String>,
}

fn render_refund(executed: Executed<PaymentAggregate>) -> Result<Value, ApiError> {
    let payment = executed.state.as_ref().ok_or_else(ApiError::internal)?;
    value(views::refund(payment, &executed.events).ok_or_else(ApiError::internal)?)
}

#[utoipa::path(
    post, path = "/v1/payments/{id}/refunds", operation_id = "refundPayment", tag = "payments",
    summary = "Refund all or part of what was captured", description = "Roles: merchant (own).",
    params(("id" = PaymentId, Path, description = "The payment"), IdempotencyKey),
    request_body(content = Option<RefundBody>, content_type = "application/json", description = "May be left out (an empty body is `{}`)"),
    security(("bearer" = [])),
    responses(
        (status = 201, description = "The refund", body = RefundView, headers(("Idempotent-Replayed" = String, description = "`true` when this answer replays an earlier request with the same `Idempotency-Key`"))),
        CommandErrors, NotFound,
    ),
)]
pub async fn refund_payment(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Body,
) -> Result<Reply, ApiError> {
    caller.require(MERCHANT_CREATED.roles)?;
    let RefundBody { amount, currency, reason } = body.json()?;
    let services = &state.services;
    act_on_payment(
        &state,
        &caller,
        MERCHANT_CREATED,
        &id,
        &body.fingerprint,
        async |meta, payment_id| services.refund(meta, payment_id, amount_input(amount, currency), reason).await,
        render_refund,
    )
    .await
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReviewBody {
    decision: ReviewDecision,
    #[serde(default)]
    reason: Option<String>,
}

#[utoipa::path(
    post, path = "/v1/payments/{id}/review", operation_id = "reviewPayment", tag = "payments",
    summary = "Approve or reject a payment held for review", description = "Roles: admin, analyst.",
    params(("id" = PaymentId, Path, description = "The payment"), IdempotencyKey),
    request_body(content = ReviewBody, content_type = "application/json"),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The payment after the decision", body = PaymentView, headers(("Idempotent-Replayed" = String, description = "`true` when this answer replays an earlier request with the same `Idempotency-Key`"))),
        CommandErrors, NotFound,
    ),
)]
pub async fn review_payment(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Body,
) -> Result<Reply, ApiError> {
    caller.require(REVIEWER_OK.roles)?;
    let ReviewBody { decision, reason } = body.json()?;
    let services = &state.services;
    act_on_payment(
        &state,
        &caller,
        REVIEWER_OK,
        &id,
        &body.fingerprint,
        async |meta, payment_id| services.review(meta, payment_id, decision, reason).await,
        render_payment,
    )
    .await
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DisputeBody {
    amount: i64,
    #[serde(default)]
    currency: Option<Currency>,
    reason: String,
}

fn render_dispute(executed: Executed<PaymentAggregate>) -> Result<Value, ApiError> {
    let payment = executed.state.as_ref().ok_or_else(ApiError::internal)?;
    value(views::dispute(payment, &executed.events).ok_or_else(ApiError::internal)?)
}

#[utoipa::path(
    post, path = "/v1/payments/{id}/disputes", operation_id = "openDispute", tag = "payments",
    summary = "Open a dispute (the acquirer's chargeback notice)", description = "Roles: admin.",
    params(("id" = PaymentId, Path, description = "The payment"), IdempotencyKey),
    request_body(content = DisputeBody, content_type = "application/json"),
    security(("bearer" = [])),
    responses(
        (status = 201, description = "The dispute", body = DisputeView, headers(("Idempotent-Replayed" = String, description = "`true` when this answer replays an earlier request with the same `Idempotency-Key`"))),
        CommandErrors, NotFound,
    ),
)]
pub async fn open_dispute(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Body,
) -> Result<Reply, ApiError> {
    caller.require(ADMIN_CREATED.roles)?;
    let DisputeBody { amount, currency, reason } = body.json()?;
    let services = &state.services;
    act_on_payment(
        &state,
        &caller,
        ADMIN_CREATED,
        &id,
        &body.fingerprint,
        async |meta, payment_id| {
            services.open_dispute(meta, payment_id, AmountInput { amount_minor: amount, currency }, reason).await
        },
        render_dispute,
    )
    .await
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResolveBody {
    outcome: DisputeOutcome,
}

#[utoipa::path(
    post, path = "/v1/payments/{id}/disputes/{dispute_id}/resolve", operation_id = "resolveDispute", tag = "payments",
    summary = "Record a dispute's outcome", description = "Roles: admin.",
    params(("id" = PaymentId, Path, description = "The payment"), ("dispute_id" = DisputeId, Path, description = "The dispute"), IdempotencyKey),
    request_body(content = ResolveBody, content_type = "application/json"),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The dispute, won or lost", body = DisputeView, headers(("Idempotent-Replayed" = String, description = "`true` when this answer replays an earlier request with the same `Idempotency-Key`"))),
        CommandErrors, NotFound,
    ),
)]
pub async fn resolve_dispute(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, dispute_id)): Path<(String, String)>,
    body: Body,
) -> Result<Reply, ApiError> {
    caller.require(ADMIN_OK.roles)?;
    let outcome = body.json::<ResolveBody>()?.outcome;
    let dispute_id: DisputeId = parse_id(&dispute_id, "dispute")?;
    let services = &state.services;
    act_on_payment(
        &state,
        &caller,
        ADMIN_OK,
        &id,
        &body.fingerprint,
        async |meta, payment_id| services.resolve_dispute(meta, payment_id, dispute_id, outcome).await,
        render_dispute,
    )
    .await
}

// ---------------------------------------------------------------- misc

#[utoipa::path(
    get, path = "/healthz", operation_id = "getHealth", tag = "meta",
    summary = "Liveness and log head position", description = "Roles: none.",
    responses((status = 200, description = "The server is up", body = Health), Internal),
)]
pub async fn healthz(State(state): State<AppState>) -> Result<Reply, ApiError> {
    let head = state.services.bus.store().head().await?;
    ok(Health { status: views::HealthStatus::Ok, head_position: head, facts_position: state.services.facts.applied() })
}
