//! Read endpoints over the projections: dashboards, payment search, the
//! platform overview, the ledger and the projections' own status. Every
//! query accepts `min_position=N` (read-your-writes: wait, bounded, until
//! the projection has applied N; past the bound 503 `projection_lagging`)
//! and every list answers CSV for `Accept: text/csv`.

use std::collections::HashMap;
use std::str::FromStr;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use paystream_domain::api_key::Role;
use paystream_domain::id::MerchantId;
use paystream_domain::payment::PaymentStatus;
use paystream_domain::time::Timestamp;
use paystream_domain::Currency;
use paystream_projections::csv::CsvWriter;
use paystream_projections::dashboard::DashboardQuery;
use paystream_projections::overview::{Dimension, OverviewQuery};
use paystream_projections::search::{write_csv, SearchPage, SearchQuery};
use paystream_projections::{dashboard, ledger, overview, ProjectionError, ProjectionName};
use serde::Serialize;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::extract::Caller;
use crate::state::AppState;

const ANALYSTS: &[Role] = &[Role::Admin, Role::Analyst];
const DASHBOARD_READERS: &[Role] = &[Role::Admin, Role::Analyst, Role::Merchant];
const SEARCHERS: &[Role] = &[Role::Admin, Role::Analyst, Role::Auditor, Role::Merchant];
const JOURNAL_READERS: &[Role] = &[Role::Admin, Role::Analyst, Role::Auditor];
/// What a `currency` query parameter must be.
const CURRENCY_EXPECTED: &str = "an ISO 4217 code";
/// What a `merchant_id` query parameter must be.
const MERCHANT_ID_EXPECTED: &str = "a merchant id (mer_...)";
/// Carries the `next_cursor` of a CSV page of search results.
pub const NEXT_CURSOR_HEADER: &str = "paystream-next-cursor";
/// Default dashboard / overview window when `from` is not given, in days.
const DEFAULT_WINDOW_DAYS: i64 = 30;

/// Query-string parameters, each parsed with a 400 that names it. Unknown
/// parameters are refused, so a typo never silently widens a query.
struct Params(HashMap<String, String>);

impl Params {
    fn new(raw: HashMap<String, String>, known: &[&str]) -> Result<Params, ApiError> {
        if let Some(unknown) = raw.keys().find(|k| !known.contains(&k.as_str()) && k.as_str() != "min_position") {
            return Err(ApiError::invalid(
                "unknown_parameter",
                format!("unknown query parameter {unknown}"),
                unknown.clone(),
            ));
        }
        Ok(Params(raw))
    }

    fn text(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str).filter(|v| !v.is_empty())
    }

    fn parse<T: FromStr>(&self, name: &'static str, what: &str) -> Result<Option<T>, ApiError> {
        self.text(name)
            .map(|v| {
                v.parse::<T>().map_err(|_| ApiError::invalid("invalid_query", format!("{name} must be {what}"), name))
            })
            .transpose()
    }

    fn date(&self, name: &'static str) -> Result<Option<time::Date>, ApiError> {
        self.text(name).map(|v| parse_date(v).ok_or_else(|| bad_date(name))).transpose()
    }

    /// The start of a time range: RFC 3339, or a date meaning the start of that UTC day.
    fn instant(&self, name: &'static str) -> Result<Option<Timestamp>, ApiError> {
        self.instant_or_day(name, 0)
    }

    /// The (exclusive) end of a time range: RFC 3339, or a date meaning the end of that
    /// UTC day, so that `from=D&to=D` is the whole of day D, as on the dashboards.
    fn end_instant(&self, name: &'static str) -> Result<Option<Timestamp>, ApiError> {
        self.instant_or_day(name, 1)
    }

    fn instant_or_day(&self, name: &'static str, days_after: i64) -> Result<Option<Timestamp>, ApiError> {
        self.text(name)
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

    fn min_position(&self) -> Result<Option<u64>, ApiError> {
        self.parse("min_position", "a log position (integer)")
    }
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
    let to = params.date("to")?.unwrap_or_else(today);
    let from = match params.date("from")? {
        Some(from) => from,
        None => to.checked_sub(time::Duration::days(DEFAULT_WINDOW_DAYS - 1)).unwrap_or(to),
    };
    Ok((from, to))
}

async fn wait(state: &AppState, names: &[ProjectionName], params: &Params) -> Result<(), ApiError> {
    if let Some(position) = params.min_position()? {
        for name in names {
            state.projections.wait_for_default(*name, position).await?;
        }
    }
    Ok(())
}

fn wants_csv(headers: &HeaderMap) -> bool {
    headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|accept| accept.contains("text/csv"))
}

/// Flattens JSON objects into CSV rows: one column per scalar field, nested
/// objects as `outer.inner`, arrays as JSON text; columns in the order the
/// fields are first seen (alphabetical within an object). For list items that
/// have no CSV form of their own (projection statuses).
pub fn rows_to_csv(rows: &[Value], out: &mut dyn std::io::Write) -> Result<(), ProjectionError> {
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
    let flat: Vec<Vec<(String, String)>> = rows
        .iter()
        .map(|row| {
            let mut cells = Vec::new();
            flatten("", row, &mut cells);
            cells
        })
        .collect();
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

/// JSON, or, when the client asked for it, the CSV that `csv` writes.
fn respond(
    headers: &HeaderMap,
    body: &impl Serialize,
    csv: impl FnOnce(&mut Vec<u8>) -> Result<(), ProjectionError>,
) -> Result<Response, ApiError> {
    if wants_csv(headers) {
        let mut out = Vec::new();
        csv(&mut out)?;
        return Ok(([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], out).into_response());
    }
    let value = serde_json::to_value(body).map_err(|_| ApiError::internal())?;
    Ok(axum::Json(value).into_response())
}

/// A CSV list answer with, when there is a next page, its cursor in the
/// [`NEXT_CURSOR_HEADER`].
fn with_next_cursor(mut response: Response, cursor: Option<String>) -> Response {
    if let Some(value) = cursor.and_then(|c| header::HeaderValue::from_str(&c).ok()) {
        response.headers_mut().insert(NEXT_CURSOR_HEADER, value);
    }
    response
}

fn array(value: &Value, field: &str) -> Vec<Value> {
    value[field].as_array().cloned().unwrap_or_default()
}

fn merchant_id(raw: &str) -> Result<MerchantId, ApiError> {
    raw.parse().map_err(|_| ApiError::not_found("merchant"))
}

// ---------------------------------------------------------------- handlers

pub async fn projections_status(
    State(state): State<AppState>,
    caller: Caller,
    Query(raw): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    caller.require(ANALYSTS)?;
    Params::new(raw, &[])?;
    let status = state.projections.status().await?;
    let body = json!({"object": "list", "data": status});
    respond(&headers, &body, |out| rows_to_csv(&array(&body, "data"), out))
}

pub async fn rebuild_projection(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Query(raw): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    caller.require(&[Role::Admin])?;
    let name: ProjectionName = name.parse().map_err(|_| ApiError::not_found("projection"))?;
    Params::new(raw, &[])?;
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
    Ok((StatusCode::ACCEPTED, axum::Json(json!({"object": "projection_rebuild", "projection": name, "status": mine})))
        .into_response())
}

pub async fn merchant_dashboard(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(raw): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    caller.require(DASHBOARD_READERS)?;
    let merchant_id = merchant_id(&id)?;
    if !caller.can_see(merchant_id) || state.services.merchant(merchant_id).await?.is_none() {
        return Err(ApiError::not_found("merchant"));
    }
    let params = Params::new(raw, &["from", "to", "currency"])?;
    let (from, to) = date_range(&params)?;
    let query = DashboardQuery { merchant_id, from, to, currency: params.parse("currency", CURRENCY_EXPECTED)? };
    wait(&state, &[ProjectionName::MerchantDashboard], &params).await?;
    let report = state.projections.dashboard(&query)?;
    respond(&headers, &report, |out| dashboard::write_days_csv(&report.days, out))
}

pub async fn search_payments(
    State(state): State<AppState>,
    caller: Caller,
    Query(raw): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    caller.require(SEARCHERS)?;
    let params = Params::new(
        raw,
        &[
            "status",
            "method",
            "currency",
            "from",
            "to",
            "min_amount",
            "max_amount",
            "customer",
            "limit",
            "starting_after",
            "merchant_id",
        ],
    )?;
    let merchant_id = match caller.role() {
        Role::Merchant => Some(caller.key.merchant_id.ok_or_else(ApiError::forbidden)?),
        _ => params.parse("merchant_id", MERCHANT_ID_EXPECTED)?,
    };
    let status = params
        .text("status")
        .map(|s| {
            serde_json::from_value::<PaymentStatus>(json!(s))
                .map_err(|_| ApiError::invalid("invalid_query", "status must be a payment status", "status"))
        })
        .transpose()?;
    let customer = params.text("customer").map(str::to_string);
    let (customer_id, customer_email) = match customer {
        Some(c) if c.contains('@') => (None, Some(c)),
        other => (other, None),
    };
    let query = SearchQuery {
        merchant_id,
        status,
        method_type: params.text("method").map(str::to_string),
        currency: params.parse("currency", CURRENCY_EXPECTED)?,
        created_from: params.instant("from")?,
        created_to: params.end_instant("to")?,
        min_amount_minor: params.parse("min_amount", "an integer amount in minor units")?,
        max_amount_minor: params.parse("max_amount", "an integer amount in minor units")?,
        customer_id,
        customer_email,
        limit: params.parse("limit", "an integer from 1 to 100")?,
        starting_after: params.parse("starting_after", "a payment id (pay_...)")?,
    };
    wait(&state, &[ProjectionName::PaymentSearch], &params).await?;
    let page = state.projections.search_payments(&query)?;
    if wants_csv(&headers) {
        return search_csv(&page);
    }
    let mut body = serde_json::to_value(&page).map_err(|_| ApiError::internal())?;
    body["object"] = json!("list");
    Ok(axum::Json(body).into_response())
}

/// A page of search results as CSV, columns in the order of
/// [`paystream_projections::search::CSV_HEADER`]; the cursor of the next page, if
/// any, travels in the `Paystream-Next-Cursor` header.
fn search_csv(page: &SearchPage) -> Result<Response, ApiError> {
    let mut csv = Vec::new();
    write_csv(&page.data, &mut csv)?;
    let response = ([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], csv).into_response();
    Ok(with_next_cursor(response, page.next_cursor.filter(|_| page.has_more).map(|c| c.to_string())))
}

pub async fn analytics_overview(
    State(state): State<AppState>,
    caller: Caller,
    Query(raw): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    caller.require(ANALYSTS)?;
    let params = Params::new(raw, &["from", "to", "group_by", "merchant_id", "currency"])?;
    let (from, to) = date_range(&params)?;
    let group_by = params
        .text("group_by")
        .map(|list| list.split(',').map(|d| d.trim().parse::<Dimension>()).collect::<Result<Vec<_>, _>>())
        .transpose()?
        .unwrap_or_default();
    let merchant_id = params.parse("merchant_id", MERCHANT_ID_EXPECTED)?;
    let query =
        OverviewQuery { from, to, group_by, merchant_id, currency: params.parse("currency", CURRENCY_EXPECTED)? };
    wait(&state, &[ProjectionName::PlatformOverview], &params).await?;
    let report = state.projections.overview(&query)?;
    respond(&headers, &report, |out| overview::write_csv(&report, out))
}

pub async fn ledger_accounts(
    State(state): State<AppState>,
    caller: Caller,
    Query(raw): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    caller.require(ANALYSTS)?;
    let params = Params::new(raw, &["currency"])?;
    let currency: Option<Currency> = params.parse("currency", CURRENCY_EXPECTED)?;
    wait(&state, &[ProjectionName::Ledger], &params).await?;
    let accounts = state.projections.ledger_accounts(currency)?;
    respond(&headers, &json!({"object": "list", "data": accounts}), |out| ledger::write_accounts_csv(&accounts, out))
}

pub async fn trial_balance(
    State(state): State<AppState>,
    caller: Caller,
    Query(raw): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    caller.require(ANALYSTS)?;
    let params = Params::new(raw, &[])?;
    wait(&state, &[ProjectionName::Ledger], &params).await?;
    let balance = state.projections.trial_balance()?;
    let accounts: Vec<_> = balance.currencies.iter().flat_map(|c| c.accounts.iter().cloned()).collect();
    respond(&headers, &balance, |out| ledger::write_accounts_csv(&accounts, out))
}

pub async fn ledger_journal(
    State(state): State<AppState>,
    caller: Caller,
    Query(raw): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    caller.require(JOURNAL_READERS)?;
    let params = Params::new(raw, &["after", "limit"])?;
    let after = params.parse("after", "a log position (integer)")?.unwrap_or(0);
    let limit = params.parse("limit", "an integer from 1 to 1000")?.unwrap_or(100);
    wait(&state, &[ProjectionName::Ledger], &params).await?;
    let page = state.projections.journal(after, limit)?;
    let cursor = page.next_cursor.filter(|_| page.has_more).map(|c| c.to_string());
    Ok(with_next_cursor(respond(&headers, &page, |out| ledger::write_journal_csv(&page.data, out))?, cursor))
}
