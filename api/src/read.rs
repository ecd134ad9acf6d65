//! Read endpoints over the projections: dashboards, payment search, the
//! platform overview, the ledger and the projections' own status. Every
//! query accepts `min_position=N` (read-your-writes: wait, bounded, until
//! the projection has applied N; past the bound 503 `projection_lagging`)
//! and every list answers CSV for `Accept: text/csv`.

use std::collections::HashMap;
use std::sync::LazyLock;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use paystream_domain::api_key::Role;
use paystream_domain::id::MerchantId;
use paystream_domain::merchant::MerchantAggregate;
use paystream_domain::payment::PaymentStatus;
use paystream_domain::time::Timestamp;
use paystream_domain::Currency;
use paystream_projections::csv::CsvWriter;
use paystream_projections::dashboard::DashboardQuery;
use paystream_projections::dashboard::DashboardReport;
use paystream_projections::ledger::{AccountBalance, JournalEntry, TrialBalance};
use paystream_projections::overview::{Dimension, OverviewQuery};
use paystream_projections::search::PaymentSummary;
use paystream_projections::search::{write_csv, SearchQuery, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE};
use paystream_projections::{dashboard, ledger, overview, ProjectionError, ProjectionName, ProjectionStatus};
use serde::Serialize;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::extract::Caller;
use crate::list::{respond, respond_list, List};
use crate::openapi::{
    AccountParams, AlreadyRebuilding, DashboardParams, IdempotencyKey, JournalParams, Lagging, MerchantListParams,
    NoParams, NotFound, OverviewParams, ReadErrors, SearchParams, TrialBalanceParams,
};
use crate::query::{Params, QueryString, Spec};
use crate::state::AppState;
use crate::views::{self, MerchantView, ProjectionRebuildView};

const ANALYSTS: &[Role] = &[Role::Admin, Role::Analyst];
const DASHBOARD_READERS: &[Role] = &[Role::Admin, Role::Analyst, Role::Merchant];
const SEARCHERS: &[Role] = &[Role::Admin, Role::Analyst, Role::Auditor, Role::Merchant];
const JOURNAL_READERS: &[Role] = &[Role::Admin, Role::Analyst, Role::Auditor];
/// Who may list merchants: every role but merchants.
const MERCHANT_LISTERS: &[Role] = &[Role::Admin, Role::Analyst, Role::Auditor];
/// What a `currency` query parameter must be.
const CURRENCY_EXPECTED: &str = "an ISO 4217 code";
/// What a `merchant_id` query parameter must be.
const MERCHANT_ID_EXPECTED: &str = "a merchant id (mer_...)";
/// Default dashboard / overview window when `from` is not given, in days.
const DEFAULT_WINDOW_DAYS: i64 = 30;
/// Journal entries per page by default, and at most.
const DEFAULT_JOURNAL_PAGE: usize = 100;
/// Merchants per page by default, and at most.
const DEFAULT_MERCHANT_PAGE: usize = 20;
const MAX_MERCHANT_PAGE: usize = 100;

/// The query parameters each read takes: those its OpenAPI parameter type documents.
static NO_PARAMS: LazyLock<Spec> = LazyLock::new(Spec::of::<NoParams>);
static TRIAL_BALANCE_PARAMS: LazyLock<Spec> = LazyLock::new(Spec::of::<TrialBalanceParams>);
static DASHBOARD_PARAMS: LazyLock<Spec> = LazyLock::new(Spec::of::<DashboardParams>);
static SEARCH_PARAMS: LazyLock<Spec> = LazyLock::new(Spec::of::<SearchParams>);
static OVERVIEW_PARAMS: LazyLock<Spec> = LazyLock::new(Spec::of::<OverviewParams>);
static ACCOUNTS_PARAMS: LazyLock<Spec> = LazyLock::new(Spec::of::<AccountParams>);
static JOURNAL_PARAMS: LazyLock<Spec> = LazyLock::new(Spec::of::<JournalParams>);
static MERCHANTS_PARAMS: LazyLock<Spec> = LazyLock::new(Spec::of::<MerchantListParams>);

fn date(params: &Params, name: &'static str) -> Result<Option<time::Date>, ApiError> {
    params.text(name).map(|v| parse_date(v).ok_or_else(|| bad_date(name))).transpose()
}

/// The start of a time range: RFC 3339, or a date meaning the start of that UTC day.
fn instant(params: &Params, name: &'static str) -> Result<Option<Timestamp>, ApiError> {
    instant_or_day(params, name, 0)
}

/// The (exclusive) end of a time range: RFC 3339, or a date meaning the end of that
/// UTC day, so that `from=D&to=D` is the whole of day D, as on the dashboards.
fn end_instant(params: &Params, name: &'static str) -> Result<Option<Timestamp>, ApiError> {
    instant_or_day(params, name, 1)
}

fn instant_or_day(params: &Params, name: &'static str, days_after: i64) -> Result<Option<Timestamp>, ApiError> {
    params
        .text(name)
        .map(|v| {
            Timestamp::parse_rfc3339(v)
                .ok()
                .or_else(|| {
                    let day = parse_date(v)?.checked_add(time::Duration::days(days_after))?;
                    Some(Timestamp::from_datetime(day.midnight().assume_utc()))
                })
                .ok_or_else(|| bad_date(name))
        })
        .transpose()
}

fn currencies(params: &Params) -> Result<Vec<Currency>, ApiError> {
    params.parse_list("currency", CURRENCY_EXPECTED, |v| v.parse().ok())
}

fn bad_date(name: &'static str) -> ApiError {
    ApiError::invalid("invalid_query", format!("{name} must be a date (YYYY-MM-DD) or an RFC 3339 time"), name)
}

fn parse_date(text: &str) -> Option<time::Date> {
    time::Date::parse(text, time::macros::format_description!("[year]-[month]-[day]")).ok()
}

fn today() -> time::Date {
    time::OffsetDateTime::now_utc().date()
}

/// `from`/`to` as dates, defaulting to the last 30 days.
fn date_range(params: &Params) -> Result<(time::Date, time::Date), ApiError> {
    let to = date(params, "to")?.unwrap_or_else(today);
    let from = match date(params, "from")? {
        Some(from) => from,
        None => to.checked_sub(time::Duration::days(DEFAULT_WINDOW_DAYS - 1)).unwrap_or(to),
    };
    Ok((from, to))
}

/// Waits, bounded, until each projection of `names` has applied `min_position`.
/// A position beyond the log's head names no write (positions come from write
/// answers): a 400 at once rather than a 5-second wait for a 503.
async fn wait(state: &AppState, names: &[ProjectionName], params: &Params) -> Result<(), ApiError> {
    if let Some(position) = params.min_position()? {
        let head = state.services.bus.store().head().await?;
        if position > head {
            return Err(ApiError::invalid(
                "invalid_query",
                format!(
                    "min_position: {position} is beyond the log's head ({head}); pass the position a write answered"
                ),
                "min_position",
            ));
        }
        for name in names {
            state.projections.wait_for_default(*name, position).await?;
        }
    }
    Ok(())
}

/// Flattens JSON objects into CSV rows: one column per scalar field, nested
/// objects as `outer.inner`, arrays as JSON text; columns in the order the
/// fields are first seen (alphabetical within an object). For list items that
/// have no CSV form of their own (projection statuses, merchants, events).
pub fn rows_to_csv<T: Serialize>(rows: &[T], out: &mut dyn std::io::Write) -> Result<(), ProjectionError> {
    fn flatten(prefix: &str, value: &Value, out: &mut Vec<(String, String)>) {
        match value {
            Value::Object(map) => {
                for (key, inner) in map {
                    let name = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
                    flatten(&name, inner, out);
                }
            }
            Value::Null => out.push((prefix.to_string(), String::new())),
            Value::String(text) => out.push((prefix.to_string(), text.clone())),
            other => out.push((prefix.to_string(), other.to_string())),
        }
    }
    let mut flat: Vec<Vec<(String, String)>> = Vec::with_capacity(rows.len());
    for row in rows {
        let value = serde_json::to_value(row).map_err(|e| ProjectionError::Io(std::io::Error::other(e)))?;
        let mut cells = Vec::new();
        flatten("", &value, &mut cells);
        flat.push(cells);
    }
    let mut columns: Vec<String> = Vec::new();
    for row in &flat {
        for (name, _) in row {
            if !columns.contains(name) {
                columns.push(name.clone());
            }
        }
    }
    let mut csv = CsvWriter::new(out);
    csv.row(&columns)?;
    for row in &flat {
        let cells: HashMap<&str, &str> = row.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        csv.row(columns.iter().map(|c| cells.get(c.as_str()).copied().unwrap_or("")))?;
    }
    Ok(())
}

fn merchant_id(raw: &str) -> Result<MerchantId, ApiError> {
    raw.parse().map_err(|_| ApiError::not_found("merchant"))
}

// ---------------------------------------------------------------- handlers

#[utoipa::path(
    get, path = "/v1/projections", operation_id = "listProjections", tag = "projections",
    summary = "Projections: checkpoint, head, lag, state", description = "Roles: admin, analyst.",
    params(NoParams), security(("bearer" = [])),
    responses(
        (status = 200, description = "Every projection's status (one page)",
            content((List<ProjectionStatus> = "application/json"), (String = "text/csv")), headers(("Paystream-Next-Cursor" = String, description = "The next page's cursor, as `next_cursor`; absent on the last page"))),
        ReadErrors,
    ),
)]
pub async fn projections_status(
    State(state): State<AppState>,
    caller: Caller,
    query: QueryString,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    caller.require(ANALYSTS)?;
    Params::new(query, &NO_PARAMS)?;
    let list = List::all(state.projections.status().await?);
    respond_list(&headers, &list, &list, |out| rows_to_csv(&list.data, out))
}

#[utoipa::path(
    post, path = "/v1/projections/{name}/rebuild", operation_id = "rebuildProjection", tag = "projections",
    summary = "Rebuild a projection into a new version in the background; switch once caught up",
    description = "Roles: admin.",
    params(("name" = ProjectionName, Path, description = "The projection"), IdempotencyKey, NoParams),
    security(("bearer" = [])),
    responses(
        (status = 202, description = "The rebuild started", body = ProjectionRebuildView),
        ReadErrors, NotFound, AlreadyRebuilding,
    ),
)]
pub async fn rebuild_projection(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    query: QueryString,
) -> Result<Response, ApiError> {
    caller.require(&[Role::Admin])?;
    let name: ProjectionName = name.parse().map_err(|_| ApiError::not_found("projection"))?;
    Params::new(query, &NO_PARAMS)?;
    // The rebuild runs in the background; queries answer from the current
    // version until the new one has caught up and is switched in. A second
    // request while it runs is refused (409 already_rebuilding).
    let rebuild = state.projections.start_rebuild(&[name])?;
    tokio::spawn(async move {
        match rebuild.await {
            Ok(Ok(report)) => tracing::info!(projection = %name, events = report.events, "rebuild finished"),
            Ok(Err(error)) => tracing::error!(projection = %name, %error, "rebuild failed"),
            Err(error) => tracing::error!(projection = %name, %error, "rebuild task failed"),
        }
    });
    let status = state.projections.status().await?;
    let mine = status.into_iter().find(|s| s.name == name);
    let body = ProjectionRebuildView {
        object: views::ProjectionRebuildObject::ProjectionRebuild,
        projection: name,
        status: mine,
    };
    Ok((StatusCode::ACCEPTED, axum::Json(body)).into_response())
}

#[utoipa::path(
    get, path = "/v1/merchants/{id}/dashboard", operation_id = "getMerchantDashboard", tag = "reads",
    summary = "A merchant's dashboard by UTC day and currency (from, to, currency)",
    description = "Roles: admin, analyst, merchant (own).",
    params(("id" = MerchantId, Path, description = "The merchant"), DashboardParams),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Per day and currency, totals and balances (CSV: one line per day and currency)",
            content((DashboardReport = "application/json"), (String = "text/csv"))),
        ReadErrors, NotFound, Lagging,
    ),
)]
pub async fn merchant_dashboard(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    query: QueryString,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    caller.require(DASHBOARD_READERS)?;
    let merchant_id = merchant_id(&id)?;
    if !caller.can_see(merchant_id) || state.services.merchant(merchant_id).await?.is_none() {
        return Err(ApiError::not_found("merchant"));
    }
    let params = Params::new(query, &DASHBOARD_PARAMS)?;
    let (from, to) = date_range(&params)?;
    let query = DashboardQuery { merchant_id, from, to, currency: params.parse("currency", CURRENCY_EXPECTED)? };
    wait(&state, &[ProjectionName::MerchantDashboard], &params).await?;
    let report = state.projections.dashboard(&query)?;
    respond(&headers, &report, |out| dashboard::write_days_csv(&report.days, out))
}

/// Parses a payment status as its JSON name (`captured`, `requires_review`, ...).
fn payment_status(text: &str) -> Option<PaymentStatus> {
    serde_json::from_value(json!(text)).ok()
}

#[utoipa::path(
    get, path = "/v1/payments", operation_id = "searchPayments", tag = "reads",
    summary = "Search payments, newest first (cursor pagination; CSV with Accept: text/csv)",
    description = "Roles: admin, analyst, auditor, merchant (own only).",
    params(SearchParams), security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of payments",
            content((List<PaymentSummary> = "application/json"), (String = "text/csv")), headers(("Paystream-Next-Cursor" = String, description = "The next page's cursor, as `next_cursor`; absent on the last page"))),
        ReadErrors, Lagging,
    ),
)]
pub async fn search_payments(
    State(state): State<AppState>,
    caller: Caller,
    query: QueryString,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    caller.require(SEARCHERS)?;
    let params = Params::new(query, &SEARCH_PARAMS)?;
    let merchant_id = match caller.role() {
        Role::Merchant => Some(caller.key.merchant_id.ok_or_else(ApiError::forbidden)?),
        _ => params.parse("merchant_id", MERCHANT_ID_EXPECTED)?,
    };
    let status = params.parse_list("status", "a payment status (or a comma-separated list)", payment_status)?;
    let customer = params.text("customer").map(str::to_string);
    let (customer_id, customer_email) = match customer {
        Some(c) if c.contains('@') => (None, Some(c)),
        other => (other, None),
    };
    let query = SearchQuery {
        merchant_id,
        status,
        method_type: params.list("method").into_iter().map(str::to_string).collect(),
        currency: currencies(&params)?,
        created_from: instant(&params, "from")?,
        created_to: end_instant(&params, "to")?,
        min_amount_minor: params.parse("min_amount", "an integer amount in minor units")?,
        max_amount_minor: params.parse("max_amount", "an integer amount in minor units")?,
        customer_id,
        customer_email,
        limit: Some(params.limit(DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)?),
        starting_after: params.parse("starting_after", "a payment id (pay_...)")?,
    };
    wait(&state, &[ProjectionName::PaymentSearch], &params).await?;
    let page = state.projections.search_payments(&query)?;
    let next_cursor = page.next_cursor.filter(|_| page.has_more).map(|c| c.to_string());
    let list = List::page(page.data, next_cursor);
    respond_list(&headers, &list, &list, |out| write_csv(&list.data, out))
}

/// The overview: a list of rows (one page), with the range and the dimensions it
/// was grouped by.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct OverviewList {
    #[serde(flatten)]
    pub list: List<overview::OverviewRow>,
    /// First UTC day (`YYYY-MM-DD`).
    pub from: String,
    /// Last UTC day, included.
    pub to: String,
    /// The dimensions of each row (`currency` always among them).
    pub group_by: Vec<Dimension>,
}

#[utoipa::path(
    get, path = "/v1/analytics/overview", operation_id = "getAnalyticsOverview", tag = "reads",
    summary = "Platform totals grouped by day, merchant, tier, method and currency",
    description = "Roles: admin, analyst.",
    params(OverviewParams), security(("bearer" = [])),
    responses(
        (status = 200, description = "The groups (one page)",
            content((OverviewList = "application/json"), (String = "text/csv")), headers(("Paystream-Next-Cursor" = String, description = "The next page's cursor, as `next_cursor`; absent on the last page"))),
        ReadErrors, Lagging,
    ),
)]
pub async fn analytics_overview(
    State(state): State<AppState>,
    caller: Caller,
    query: QueryString,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    caller.require(ANALYSTS)?;
    let params = Params::new(query, &OVERVIEW_PARAMS)?;
    let (from, to) = date_range(&params)?;
    let group_by =
        params.list("group_by").into_iter().map(|d| d.parse::<Dimension>()).collect::<Result<Vec<_>, _>>()?;
    let merchant_id = params.parse("merchant_id", MERCHANT_ID_EXPECTED)?;
    let query = OverviewQuery { from, to, group_by, merchant_id, currency: currencies(&params)? };
    wait(&state, &[ProjectionName::PlatformOverview], &params).await?;
    let report = state.projections.overview(&query)?;
    let mut csv_report = report.clone();
    let body =
        OverviewList { list: List::all(report.rows), from: report.from, to: report.to, group_by: report.group_by };
    respond_list(&headers, &body, &body.list, |out| {
        csv_report.rows = body.list.data.clone();
        overview::write_csv(&csv_report, out)
    })
}

#[utoipa::path(
    get, path = "/v1/ledger/accounts", operation_id = "listLedgerAccounts", tag = "reads",
    summary = "Ledger account balances per currency", description = "Roles: admin, analyst.",
    params(AccountParams), security(("bearer" = [])),
    responses(
        (status = 200, description = "Every account posted to, by currency then account (one page)",
            content((List<AccountBalance> = "application/json"), (String = "text/csv")), headers(("Paystream-Next-Cursor" = String, description = "The next page's cursor, as `next_cursor`; absent on the last page"))),
        ReadErrors, Lagging,
    ),
)]
pub async fn ledger_accounts(
    State(state): State<AppState>,
    caller: Caller,
    query: QueryString,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    caller.require(ANALYSTS)?;
    let params = Params::new(query, &ACCOUNTS_PARAMS)?;
    let currencies = currencies(&params)?;
    wait(&state, &[ProjectionName::Ledger], &params).await?;
    let mut accounts = state.projections.ledger_accounts(None)?;
    accounts.retain(|a| currencies.is_empty() || currencies.contains(&a.currency));
    let list = List::all(accounts);
    respond_list(&headers, &list, &list, |out| ledger::write_accounts_csv(&list.data, out))
}

#[utoipa::path(
    get, path = "/v1/ledger/trial_balance", operation_id = "getTrialBalance", tag = "reads",
    summary = "Trial balance: sums to zero in every currency", description = "Roles: admin, analyst.",
    params(TrialBalanceParams), security(("bearer" = [])),
    responses(
        (status = 200, description = "Debits and credits per currency (CSV: one line per account and currency)",
            content((TrialBalance = "application/json"), (String = "text/csv"))),
        ReadErrors, Lagging,
    ),
)]
pub async fn trial_balance(
    State(state): State<AppState>,
    caller: Caller,
    query: QueryString,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    caller.require(ANALYSTS)?;
    let params = Params::new(query, &TRIAL_BALANCE_PARAMS)?;
    wait(&state, &[ProjectionName::Ledger], &params).await?;
    let balance = state.projections.trial_balance()?;
    let accounts: Vec<_> = balance.currencies.iter().flat_map(|c| c.accounts.iter().cloned()).collect();
    respond(&headers, &balance, |out| ledger::write_accounts_csv(&accounts, out))
}

#[utoipa::path(
    get, path = "/v1/ledger/journal", operation_id = "listJournalEntries", tag = "reads",
    summary = "Journal entries in log order (starting_after, limit)", description = "Roles: admin, analyst, auditor.",
    params(JournalParams), security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of journal entries (CSV: one line per journal line)",
            content((List<JournalEntry> = "application/json"), (String = "text/csv")), headers(("Paystream-Next-Cursor" = String, description = "The next page's cursor, as `next_cursor`; absent on the last page"))),
        ReadErrors, Lagging,
    ),
)]
pub async fn ledger_journal(
    State(state): State<AppState>,
    caller: Caller,
    query: QueryString,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    caller.require(JOURNAL_READERS)?;
    let params = Params::new(query, &JOURNAL_PARAMS)?;
    // `starting_after` takes the previous page's cursor; `after` (a log
    // position, which is what the cursor holds) is its older name.
    let cursor = "the previous page's next_cursor (a log position)";
    let after = match (params.parse::<u64>("starting_after", cursor)?, params.parse::<u64>("after", cursor)?) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid("invalid_query", "give starting_after or after, not both", "after"))
        }
        (one, other) => one.or(other).unwrap_or(0),
    };
    let limit = params.limit(DEFAULT_JOURNAL_PAGE, ledger::MAX_JOURNAL_PAGE)?;
    wait(&state, &[ProjectionName::Ledger], &params).await?;
    let page = state.projections.journal(after, limit)?;
    let next_cursor = page.next_cursor.filter(|_| page.has_more).map(|c| c.to_string());
    let list = List::page(page.data, next_cursor);
    respond_list(&headers, &list, &list, |out| ledger::write_journal_csv(&list.data, out))
}

#[utoipa::path(
    get, path = "/v1/merchants", operation_id = "listMerchants", tag = "merchants",
    summary = "List merchants, newest first (cursor pagination; CSV with Accept: text/csv)",
    description = "Roles: admin, analyst, auditor.",
    params(MerchantListParams), security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of merchants",
            content((List<MerchantView> = "application/json"), (String = "text/csv")), headers(("Paystream-Next-Cursor" = String, description = "The next page's cursor, as `next_cursor`; absent on the last page"))),
        ReadErrors, Lagging,
    ),
)]
pub async fn list_merchants(
    State(state): State<AppState>,
    caller: Caller,
    query: QueryString,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    caller.require(MERCHANT_LISTERS)?;
    let params = Params::new(query, &MERCHANTS_PARAMS)?;
    let limit = params.limit(DEFAULT_MERCHANT_PAGE, MAX_MERCHANT_PAGE)?;
    let after: Option<MerchantId> =
        params.parse("starting_after", "the previous page's next_cursor (a merchant id)")?;
    wait(&state, &[ProjectionName::PlatformOverview], &params).await?;
    let (ids, more) = state.projections.merchant_ids(after, limit)?;
    let mut data: Vec<MerchantView> = Vec::with_capacity(ids.len());
    for id in &ids {
        let loaded = state.services.bus.load::<MerchantAggregate>(id.as_uuid()).await?;
        let merchant = loaded.state.ok_or_else(|| {
            tracing::error!(merchant_id = %id, "the overview lists a merchant the log does not have");
            ApiError::internal()
        })?;
        data.push(views::merchant(&merchant, loaded.position));
    }
    let next_cursor = ids.last().filter(|_| more).map(ToString::to_string);
    let list = List::page(data, next_cursor);
    respond_list(&headers, &list, &list, |out| rows_to_csv(&list.data, out))
}
