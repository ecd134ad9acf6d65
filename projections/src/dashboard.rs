//! Merchant dashboard: per merchant, UTC day and currency, the volume counters of
//! [`Counters`], the payment method mix, and balances.
//!
//! Tree layout (`projection/merchant_dashboard/v<N>`):
//!
//! ```text
//! p<inverted payment uuid>                bucket of PaymentRef: per payment merchant, currency, tier, method
//! d<merchant uuid><YYYY-MM-DD><currency>   DayRow: Counters and method mix (i64 BE each)
//! ```
//!
//! # Balances
//!
//! Per currency, as of the end of the query's `to` day (all rows up to it), in minor
//! units; they add up to `net` (captured − fees − refunded − dispute lost):
//!
//! * `pending_minor` = (captured − settled) − (fees − settled fees): captured funds
//!   the acquirer has not settled yet, net of their fees.
//! * `reserved_minor` = disputed − dispute won − dispute lost: held while disputes
//!   are open.
//! * `available_minor` = (settled − settled fees) − refunded − dispute lost −
//!   reserved − paid out: settled funds the merchant can be paid. Refunds and lost
//!   chargebacks are taken from it when they happen, so it can be negative (the
//!   merchant owes the platform).
//! * `paid_out_minor`: 0 until payouts exist.

use std::collections::BTreeMap;
use std::io::Write;

use paystream_domain::id::MerchantId;
use paystream_domain::payment::PaymentEvent;
use paystream_domain::Currency;
use serde::{Deserialize, Serialize};

use crate::counters::{event_delta, method_index, Counters, Derived, PaymentRef, Refs, METHOD_TYPES};
use crate::csv::CsvWriter;
use crate::decode::{Decoded, DomainRecord};
use crate::error::ProjectionError;
use crate::keys;
use crate::model::{ProjectionName, ReadModel, Record, Stage, WorkingSet};

/// Most days one dashboard query may span.
pub const MAX_DASHBOARD_DAYS: i64 = 366;

const NAME: ProjectionName = ProjectionName::MerchantDashboard;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct DayRow {
    counters: Counters,
    method_mix: [i64; 5],
}

impl Record for DayRow {
    fn decode(bytes: &[u8]) -> Option<Self> {
        let counters = Counters::decode_from(bytes)?;
        let rest = bytes.get(bytes.len().checked_sub(40)?..)?;
        let mut method_mix = [0i64; 5];
        for (i, chunk) in rest.chunks_exact(8).enumerate() {
            method_mix[i] = i64::from_be_bytes(chunk.try_into().ok()?);
        }
        Some(DayRow { counters, method_mix })
    }
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(160);
        self.counters.encode_into(&mut out);
        for v in self.method_mix {
            out.extend_from_slice(&v.to_be_bytes());
        }
        out
    }
}

fn day_key(merchant: &uuid::Uuid, date: time::Date, currency: Currency) -> Vec<u8> {
    keys::key(&[b"d", merchant.as_bytes(), &keys::date_key(date), &keys::currency_key(currency)])
}

/// The merchant dashboard read model.
#[derive(Debug, Clone, Copy, Default)]
pub struct MerchantDashboard;

impl ReadModel for MerchantDashboard {
    fn name(&self) -> ProjectionName {
        NAME
    }

    fn schema(&self) -> u32 {
        // 2: payment refs in buckets of `crate::buckets` instead of time buckets.
        2
    }

    fn working_set(&self) -> Box<dyn WorkingSet> {
        Box::new(DashboardSet { refs: Refs::new(NAME), rows: Stage::new(NAME) })
    }

    fn export_csv(&self, tree: &sled::Tree, out: &mut dyn Write) -> Result<(), ProjectionError> {
        let mut csv = CsvWriter::new(out);
        csv.row(["merchant_id"].into_iter().chain(day_columns()))?;
        for item in tree.scan_prefix(b"d") {
            let (key, value) = item?;
            let (merchant, date, currency, row) = parse_day(&key, &value)?;
            csv.row([merchant.to_string()].into_iter().chain(day_cells(&DayFigures::new(date, currency, row))))?;
        }
        Ok(())
    }
}

/// The dashboard's records in memory (see [`WorkingSet`]).
struct DashboardSet {
    refs: Refs,
    rows: Stage<DayRow>,
}

impl WorkingSet for DashboardSet {
    fn apply(&mut self, tree: &sled::Tree, events: &[Decoded]) -> Result<(), ProjectionError> {
        let DashboardSet { refs, rows } = self;
        for decoded in events {
            let DomainRecord::Payment { payment_id, event } = &decoded.record else { continue };
            let (payment, method) = match event {
                PaymentEvent::PaymentInitiated { merchant_id, amount, method, .. } => {
                    let r = PaymentRef {
                        merchant: *merchant_id.as_uuid(),
                        currency: amount.currency,
                        tier: None,
                        method: method_index(method),
                    };
                    refs.put(tree, *payment_id.as_uuid(), r)?;
                    (r, Some(r.method))
                }
                _ => match refs.get(tree, payment_id.as_uuid())? {
                    Some(r) => (r, None),
                    None => return Err(orphan(decoded.position)),
                },
            };
            let Some((at, delta)) = event_delta(event) else { continue };
            let mut row = rows.get_mut(tree, &day_key(&payment.merchant, at.utc_date(), payment.currency))?;
            let row = row.get_or_insert_with(DayRow::default);
            row.counters = row.counters.checked_add(&delta).ok_or_else(|| overflow(decoded.position))?;
            if let Some(method) = method {
                let slot = &mut row.method_mix[usize::from(method).min(4)];
                *slot = slot.checked_add(1).ok_or_else(|| overflow(decoded.position))?;
            }
        }
        Ok(())
    }

    fn flush(&mut self, batch: &mut sled::Batch) {
        self.refs.flush(batch);
        self.rows.flush(batch);
    }

    fn bytes(&self) -> usize {
        self.refs.bytes() + self.rows.bytes()
    }

    fn evict(&mut self) {
        self.refs.evict();
        self.rows.evict();
    }

    fn forget_tree(&mut self) {
        self.refs.forget_tree();
        self.rows.forget_tree();
    }

    fn assume_empty_tree(&mut self) {
        self.refs.assume_empty_tree();
        self.rows.assume_empty_tree();
    }
}

fn method_column(method: &str) -> &'static str {
    match method {
        "card" => "method_card_count",
        "bank_transfer" => "method_bank_transfer_count",
        "wallet" => "method_wallet_count",
        "qr_code" => "method_qr_code_count",
        _ => "method_nfc_count",
    }
}

pub(crate) fn orphan(position: u64) -> ProjectionError {
    ProjectionError::Invariant {
        projection: "read model",
        position,
        detail: "payment event of a payment that was never initiated".into(),
    }
}

pub(crate) fn overflow(position: u64) -> ProjectionError {
    ProjectionError::Invariant { projection: "read model", position, detail: "counter overflow".into() }
}

/// The counter and derived columns every CSV of counters has, in order.
pub(crate) const FIGURE_COLUMNS: [&str; 20] = [
    "attempted_count",
    "authorized_count",
    "declined_count",
    "captured_count",
    "refunded_count",
    "disputed_count",
    "authorized_minor",
    "captured_minor",
    "refunded_minor",
    "disputed_minor",
    "dispute_won_minor",
    "dispute_lost_minor",
    "fees_minor",
    "settled_minor",
    "settled_fees_minor",
    "net_minor",
    "approval_rate_bps",
    "refund_rate_bps",
    "dispute_rate_bps",
    "average_ticket_minor",
];

pub(crate) fn figure_cells(c: &Counters, d: &Derived) -> Vec<String> {
    let opt = |v: Option<i64>| v.map(|v| v.to_string()).unwrap_or_default();
    vec![
        c.attempted_count.to_string(),
        c.authorized_count.to_string(),
        c.declined_count.to_string(),
        c.captured_count.to_string(),
        c.refunded_count.to_string(),
        c.disputed_count.to_string(),
        c.authorized_minor.to_string(),
        c.captured_minor.to_string(),
        c.refunded_minor.to_string(),
        c.disputed_minor.to_string(),
        c.dispute_won_minor.to_string(),
        c.dispute_lost_minor.to_string(),
        c.fees_minor.to_string(),
        c.settled_minor.to_string(),
        c.settled_fees_minor.to_string(),
        d.net_minor.to_string(),
        opt(d.approval_rate_bps),
        opt(d.refund_rate_bps),
        opt(d.dispute_rate_bps),
        opt(d.average_ticket_minor),
    ]
}

fn corrupt(key: &[u8], detail: &str) -> ProjectionError {
    ProjectionError::Corrupt {
        projection: NAME.as_str(),
        key: String::from_utf8_lossy(key).into_owned(),
        detail: detail.into(),
    }
}

fn parse_day(key: &[u8], value: &[u8]) -> Result<(MerchantId, time::Date, Currency, DayRow), ProjectionError> {
    // d + 16 + 10 + 3
    if key.len() != 30 {
        return Err(corrupt(key, "day key of unexpected length"));
    }
    let merchant = keys::uuid_from(&key[1..17]).ok_or_else(|| corrupt(key, "merchant"))?;
    let date = keys::parse_date(&key[17..27]).ok_or_else(|| corrupt(key, "date"))?;
    let currency = keys::parse_currency(&key[27..30]).ok_or_else(|| corrupt(key, "currency"))?;
    let row = DayRow::decode(value).ok_or_else(|| corrupt(key, "row"))?;
    Ok((MerchantId::from_uuid(merchant), date, currency, row))
}

/// A dashboard query. Dates are UTC days, both inclusive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DashboardQuery {
    pub merchant_id: MerchantId,
    pub from: time::Date,
    pub to: time::Date,
    pub currency: Option<Currency>,
}

/// Counters of one day (or of the whole range, in `totals`) in one currency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DayFigures {
    /// `YYYY-MM-DD` (UTC).
    pub date: String,
    pub currency: Currency,
    #[serde(flatten)]
    pub counters: Counters,
    #[serde(flatten)]
    pub derived: Derived,
    /// Attempted payments per method type (`card`, `bank_transfer`, `wallet`, `qr_code`, `nfc`).
    pub method_mix: BTreeMap<String, i64>,
}

/// Columns of a day of a dashboard in CSV.
fn day_columns() -> impl Iterator<Item = &'static str> {
    ["date", "currency"].into_iter().chain(FIGURE_COLUMNS).chain(METHOD_TYPES.iter().map(|m| method_column(m)))
}

fn day_cells(day: &DayFigures) -> Vec<String> {
    let mut cells = vec![day.date.clone(), day.currency.to_string()];
    cells.extend(figure_cells(&day.counters, &day.derived));
    cells.extend(METHOD_TYPES.iter().map(|m| day.method_mix.get(*m).copied().unwrap_or(0).to_string()));
    cells
}

/// Writes the days of a dashboard report as CSV (the columns of `paystream export
/// --projection merchant_dashboard`, without the merchant).
pub fn write_days_csv(days: &[DayFigures], out: &mut dyn Write) -> Result<(), ProjectionError> {
    let mut csv = CsvWriter::new(out);
    csv.row(day_columns())?;
    for day in days {
        csv.row(day_cells(day))?;
    }
    Ok(())
}

impl DayFigures {
    fn new(date: time::Date, currency: Currency, row: DayRow) -> DayFigures {
        DayFigures {
            date: String::from_utf8_lossy(&keys::date_key(date)).into_owned(),
            currency,
            counters: row.counters,
            derived: row.counters.derived(),
            method_mix: mix_map(&row.method_mix),
        }
    }
}

fn mix_map(mix: &[i64; 5]) -> BTreeMap<String, i64> {
    METHOD_TYPES.iter().zip(mix).map(|(name, count)| (name.to_string(), *count)).collect()
}

/// Totals of the queried range in one currency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TotalFigures {
    pub currency: Currency,
    #[serde(flatten)]
    pub counters: Counters,
    #[serde(flatten)]
    pub derived: Derived,
    pub method_mix: BTreeMap<String, i64>,
}

/// Balances in one currency as of the end of the query's `to` day (module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Balance {
    pub currency: Currency,
    pub pending_minor: i64,
    pub reserved_minor: i64,
    pub available_minor: i64,
    pub paid_out_minor: i64,
}

impl Balance {
    fn from_counters(currency: Currency, c: &Counters) -> Balance {
        let pending =
            c.captured_minor.saturating_sub(c.settled_minor).saturating_sub(c.fees_minor - c.settled_fees_minor);
        let reserved = c.disputed_minor.saturating_sub(c.dispute_won_minor).saturating_sub(c.dispute_lost_minor);
        let paid_out = 0;
        let available = c
            .settled_minor
            .saturating_sub(c.settled_fees_minor)
            .saturating_sub(c.refunded_minor)
            .saturating_sub(c.dispute_lost_minor)
            .saturating_sub(reserved)
            .saturating_sub(paid_out);
        Balance {
            currency,
            pending_minor: pending,
            reserved_minor: reserved,
            available_minor: available,
            paid_out_minor: paid_out,
        }
    }
}

/// The answer to a [`DashboardQuery`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DashboardReport {
    pub merchant_id: MerchantId,
    pub from: String,
    pub to: String,
    pub currency: Option<Currency>,
    /// One row per day and currency that had activity, oldest first.
    pub days: Vec<DayFigures>,
    /// One row per currency.
    pub totals: Vec<TotalFigures>,
    pub balances: Vec<Balance>,
}

/// Answers a dashboard query from the model in `tree`.
pub fn query(tree: &sled::Tree, q: &DashboardQuery) -> Result<DashboardReport, ProjectionError> {
    if q.from > q.to {
        return Err(ProjectionError::invalid("from", "must not be after to"));
    }
    if (q.to - q.from).whole_days() >= MAX_DASHBOARD_DAYS {
        return Err(ProjectionError::invalid("to", format!("a query spans at most {MAX_DASHBOARD_DAYS} days")));
    }
    let merchant = q.merchant_id.as_uuid();
    let prefix = keys::key(&[b"d", merchant.as_bytes()]);
    let start = keys::key(&[&prefix, &keys::date_key(q.from)]);
    let end = keys::prefix_end(&keys::key(&[&prefix, &keys::date_key(q.to)]));
    let mut days = Vec::new();
    let mut totals: BTreeMap<Currency, DayRow> = BTreeMap::new();
    for item in tree.range(start..end.clone()) {
        let (key, value) = item?;
        let (_, date, currency, row) = parse_day(&key, &value)?;
        if q.currency.is_some_and(|c| c != currency) {
            continue;
        }
        let total = totals.entry(currency).or_default();
        total.counters = total.counters.checked_add(&row.counters).ok_or_else(|| overflow(0))?;
        for (t, v) in total.method_mix.iter_mut().zip(row.method_mix) {
            *t = t.saturating_add(v);
        }
        days.push(DayFigures::new(date, currency, row));
    }
    // Balances take every day up to `to`, not only the range.
    let mut balances: BTreeMap<Currency, Counters> = BTreeMap::new();
    for item in tree.range(prefix.clone()..end) {
        let (key, value) = item?;
        let (_, _, currency, row) = parse_day(&key, &value)?;
        if q.currency.is_some_and(|c| c != currency) {
            continue;
        }
        let sum = balances.entry(currency).or_default();
        *sum = sum.checked_add(&row.counters).ok_or_else(|| overflow(0))?;
    }
    Ok(DashboardReport {
        merchant_id: q.merchant_id,
        from: String::from_utf8_lossy(&keys::date_key(q.from)).into_owned(),
        to: String::from_utf8_lossy(&keys::date_key(q.to)).into_owned(),
        currency: q.currency,
        days,
        totals: totals
            .into_iter()
            .map(|(currency, row)| TotalFigures {
                currency,
                counters: row.counters,
                derived: row.counters.derived(),
                method_mix: mix_map(&row.method_mix),
            })
            .collect(),
        balances: balances.iter().map(|(currency, c)| Balance::from_counters(*currency, c)).collect(),
    })
}
