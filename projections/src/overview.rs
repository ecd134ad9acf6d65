//! Platform overview for analysts: volume counters of every merchant, by UTC day,
//! currency, merchant, tier and method type, summed at query time along the
//! dimensions asked for (`group_by`).
//!
//! Tree layout (`projection/platform_overview/v<N>`):
//!
//! ```text
//! m<merchant uuid>                                              MerchantInfo (JSON: name, tier)
//! p<inverted payment uuid>                                      bucket of PaymentRef (see `crate::counters::Refs`)
//! o<YYYY-MM-DD><currency><merchant uuid><tier byte><method byte> Counters (i64 BE each)
//! ```
//!
//! A payment's figures stay with the tier its merchant had when the payment was
//! initiated. Amounts of different currencies are never added: `currency` is always a
//! grouping dimension, whether asked for or not.

use std::collections::BTreeMap;
use std::io::Write;
use std::str::FromStr;

use paystream_domain::id::MerchantId;
use paystream_domain::merchant::{MerchantEvent, Tier};
use paystream_domain::payment::PaymentEvent;
use paystream_domain::Currency;
use serde::{Deserialize, Serialize};

use crate::counters::{
    event_delta, method_index, tier_byte, tier_from_byte, Counters, Derived, PaymentRef, Refs, METHOD_TYPES,
};
use crate::csv::CsvWriter;
use crate::dashboard::{figure_cells, orphan, overflow, FIGURE_COLUMNS, MAX_DASHBOARD_DAYS};
use crate::decode::{Decoded, DomainRecord};
use crate::error::ProjectionError;
use crate::keys;
use crate::model::{json_record, ProjectionName, ReadModel, Record, Stage, WorkingSet};

const NAME: ProjectionName = ProjectionName::PlatformOverview;

/// Most days one overview query may span.
pub const MAX_OVERVIEW_DAYS: i64 = MAX_DASHBOARD_DAYS;
/// Most rows one overview answers; a query grouping into more is refused with a
/// hint to narrow it (the whole model is `paystream export --projection
/// platform_overview`).
pub const MAX_OVERVIEW_ROWS: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct MerchantInfo {
    name: String,
    tier: Tier,
}

json_record!(MerchantInfo, |info| crate::model::string_heap(&info.name));

fn merchant_key(merchant: &uuid::Uuid) -> Vec<u8> {
    keys::key(&[b"m", merchant.as_bytes()])
}

fn row_key(date: time::Date, r: &PaymentRef) -> Vec<u8> {
    keys::key(&[
        b"o",
        &keys::date_key(date),
        &keys::currency_key(r.currency),
        r.merchant.as_bytes(),
        &[tier_byte(r.tier), r.method],
    ])
}

struct RowKey {
    date: time::Date,
    currency: Currency,
    merchant: MerchantId,
    tier: Option<Tier>,
    method: u8,
}

fn parse_row_key(key: &[u8]) -> Option<RowKey> {
    if key.len() != 1 + 10 + 3 + 16 + 2 {
        return None;
    }
    Some(RowKey {
        date: keys::parse_date(&key[1..11])?,
        currency: keys::parse_currency(&key[11..14])?,
        merchant: MerchantId::from_uuid(keys::uuid_from(&key[14..30])?),
        tier: tier_from_byte(key[30]),
        method: key[31],
    })
}

fn corrupt(key: &[u8]) -> ProjectionError {
    ProjectionError::Corrupt { projection: NAME.as_str(), key: format!("{key:?}"), detail: "overview row".into() }
}

/// The platform overview read model.
#[derive(Debug, Clone, Copy, Default)]
pub struct PlatformOverview;

impl ReadModel for PlatformOverview {
    fn name(&self) -> ProjectionName {
        NAME
    }

    fn schema(&self) -> u32 {
        // 2: payment refs in buckets of `crate::buckets` instead of time buckets.
        2
    }

    fn working_set(&self) -> Box<dyn WorkingSet> {
        Box::new(OverviewSet { merchants: Stage::new(NAME), refs: Refs::new(NAME), rows: Stage::new(NAME) })
    }

    fn export_csv(&self, tree: &sled::Tree, out: &mut dyn Write) -> Result<(), ProjectionError> {
        let mut csv = CsvWriter::new(out);
        let mut header = vec!["date", "currency", "merchant_id", "tier", "method_type"];
        header.extend(FIGURE_COLUMNS);
        csv.row(header)?;
        for item in tree.scan_prefix(b"o") {
            let (key, value) = item?;
            let k = parse_row_key(&key).ok_or_else(|| corrupt(&key))?;
            let c = Counters::decode(&value).ok_or_else(|| corrupt(&key))?;
            let mut cells = vec![
                String::from_utf8_lossy(&keys::date_key(k.date)).into_owned(),
                k.currency.to_string(),
                k.merchant.to_string(),
                k.tier.map(|t| format!("{t:?}")).unwrap_or_default(),
                method_name(k.method).to_string(),
            ];
            cells.extend(figure_cells(&c, &c.derived()));
            csv.row(cells)?;
        }
        Ok(())
    }
}

/// The model's records in memory (see [`WorkingSet`]).
struct OverviewSet {
    merchants: Stage<MerchantInfo>,
    refs: Refs,
    rows: Stage<Counters>,
}

impl WorkingSet for OverviewSet {
    fn apply(&mut self, tree: &sled::Tree, events: &[Decoded]) -> Result<(), ProjectionError> {
        let OverviewSet { merchants, refs, rows } = self;
        for decoded in events {
            match &decoded.record {
                DomainRecord::Merchant { merchant_id, event } => {
                    let key = merchant_key(merchant_id.as_uuid());
                    match event {
                        MerchantEvent::MerchantOnboarded { name, tier, .. } => {
                            merchants.put(key, MerchantInfo { name: name.clone(), tier: *tier });
                        }
                        MerchantEvent::MerchantTierChanged { to, .. } => {
                            if let Some(info) = merchants.get_mut(tree, &key)?.as_mut() {
                                info.tier = *to;
                            }
                        }
                        _ => {}
                    }
                }
                DomainRecord::Payment { payment_id, event } => {
                    let payment = match event {
                        PaymentEvent::PaymentInitiated { merchant_id, amount, method, .. } => {
                            let tier = merchants.get(tree, &merchant_key(merchant_id.as_uuid()))?.map(|m| m.tier);
                            let r = PaymentRef {
                                merchant: *merchant_id.as_uuid(),
                                currency: amount.currency,
                                tier,
                                method: method_index(method),
                            };
                            refs.put(tree, *payment_id.as_uuid(), r)?;
                            r
                        }
                        _ => match refs.get(tree, payment_id.as_uuid())? {
                            Some(r) => r,
                            None => return Err(orphan(decoded.position)),
                        },
                    };
                    let Some((at, delta)) = event_delta(event) else { continue };
                    let mut row = rows.get_mut(tree, &row_key(at.utc_date(), &payment))?;
                    let row = row.get_or_insert_with(Counters::default);
                    *row = row.checked_add(&delta).ok_or_else(|| overflow(decoded.position))?;
                }
                DomainRecord::ApiKey { .. } | DomainRecord::Other => {}
            }
        }
        Ok(())
    }

    fn flush(&mut self, batch: &mut sled::Batch) {
        self.merchants.flush(batch);
        self.refs.flush(batch);
        self.rows.flush(batch);
    }

    fn bytes(&self) -> usize {
        self.merchants.bytes() + self.refs.bytes() + self.rows.bytes()
    }

    fn evict(&mut self) {
        self.merchants.evict();
        self.refs.evict();
        self.rows.evict();
    }

    fn forget_tree(&mut self) {
        self.merchants.forget_tree();
        self.refs.forget_tree();
        self.rows.forget_tree();
    }

    fn assume_empty_tree(&mut self) {
        self.merchants.assume_empty_tree();
        self.refs.assume_empty_tree();
        self.rows.assume_empty_tree();
    }
}

fn method_name(index: u8) -> &'static str {
    METHOD_TYPES.get(usize::from(index)).copied().unwrap_or("unknown")
}

/// A dimension to sum along.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Dimension {
    Day,
    Merchant,
    Tier,
    Method,
    Currency,
}

impl FromStr for Dimension {
    type Err = ProjectionError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "day" => Dimension::Day,
            "merchant" => Dimension::Merchant,
            "tier" => Dimension::Tier,
            "method" => Dimension::Method,
            "currency" => Dimension::Currency,
            _ => {
                return Err(ProjectionError::invalid(
                    "group_by",
                    "dimensions are day, merchant, tier, method, currency",
                ))
            }
        })
    }
}

/// An overview query. Dates are UTC days, both inclusive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverviewQuery {
    pub from: time::Date,
    pub to: time::Date,
    /// Dimensions to keep apart; `currency` is always added. Empty: one row per currency.
    pub group_by: Vec<Dimension>,
    pub merchant_id: Option<MerchantId>,
    /// Any of these currencies; empty: every currency.
    pub currency: Vec<Currency>,
}

/// One group. Dimensions not grouped by are left out of the JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OverviewRow {
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub date: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub merchant_id: Option<MerchantId>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub merchant_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub tier: Option<Tier>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub method_type: Option<String>,
    pub currency: Currency,
    #[serde(flatten)]
    pub counters: Counters,
    #[serde(flatten)]
    pub derived: Derived,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverviewReport {
    pub from: String,
    pub to: String,
    pub group_by: Vec<Dimension>,
    /// Sorted by the grouped dimensions (day, currency, merchant, tier, method).
    pub rows: Vec<OverviewRow>,
}

type GroupKey = (Option<time::Date>, Currency, Option<MerchantId>, Option<Option<Tier>>, Option<u8>);

/// Answers an overview query from the model in `tree`.
pub fn query(tree: &sled::Tree, q: &OverviewQuery) -> Result<OverviewReport, ProjectionError> {
    query_bounded(tree, q, MAX_OVERVIEW_ROWS)
}

fn query_bounded(tree: &sled::Tree, q: &OverviewQuery, max_rows: usize) -> Result<OverviewReport, ProjectionError> {
    if q.from > q.to {
        return Err(ProjectionError::invalid("from", "must not be after to"));
    }
    if (q.to - q.from).whole_days() >= MAX_OVERVIEW_DAYS {
        return Err(ProjectionError::invalid("to", format!("a query spans at most {MAX_OVERVIEW_DAYS} days")));
    }
    let mut group_by = q.group_by.clone();
    if !group_by.contains(&Dimension::Currency) {
        group_by.push(Dimension::Currency);
    }
    group_by.sort();
    group_by.dedup();
    let has = |d| group_by.contains(&d);
    let start = keys::key(&[b"o", &keys::date_key(q.from)]);
    let end = keys::prefix_end(&keys::key(&[b"o", &keys::date_key(q.to)]));
    let mut groups: BTreeMap<GroupKey, Counters> = BTreeMap::new();
    for item in tree.range(start..end) {
        let (key, value) = item?;
        let k = parse_row_key(&key).ok_or_else(|| corrupt(&key))?;
        if q.merchant_id.is_some_and(|m| m != k.merchant)
            || (!q.currency.is_empty() && !q.currency.contains(&k.currency))
        {
            continue;
        }
        let c = Counters::decode(&value).ok_or_else(|| corrupt(&key))?;
        let group = (
            has(Dimension::Day).then_some(k.date),
            k.currency,
            has(Dimension::Merchant).then_some(k.merchant),
            has(Dimension::Tier).then_some(k.tier),
            has(Dimension::Method).then_some(k.method),
        );
        let sum = groups.entry(group).or_default();
        *sum = sum.checked_add(&c).ok_or_else(|| overflow(0))?;
        if groups.len() > max_rows {
            return Err(ProjectionError::invalid(
                "group_by",
                format!(
                    "more than {max_rows} rows: narrow from/to, filter by merchant_id or currency, or group by fewer dimensions"
                ),
            ));
        }
    }
    let mut rows = Vec::with_capacity(groups.len());
    for ((date, currency, merchant, tier, method), counters) in groups {
        let merchant_name = match merchant {
            Some(m) => merchant_name(tree, m)?,
            None => None,
        };
        rows.push(OverviewRow {
            date: date.map(|d| String::from_utf8_lossy(&keys::date_key(d)).into_owned()),
            merchant_id: merchant,
            merchant_name,
            tier: tier.flatten(),
            method_type: method.map(|m| method_name(m).to_string()),
            currency,
            derived: counters.derived(),
            counters,
        });
    }
    Ok(OverviewReport {
        from: String::from_utf8_lossy(&keys::date_key(q.from)).into_owned(),
        to: String::from_utf8_lossy(&keys::date_key(q.to)).into_owned(),
        group_by,
        rows,
    })
}

/// The ids of the merchants onboarded so far, newest first (ids are UUIDv7, so
/// descending id order is the reverse of the order they were onboarded), before
/// `before` if given: at most `limit`, and whether more follow.
pub fn merchant_ids(
    tree: &sled::Tree,
    before: Option<MerchantId>,
    limit: usize,
) -> Result<(Vec<MerchantId>, bool), ProjectionError> {
    let prefix = b"m".to_vec();
    let end = match before {
        Some(before) => merchant_key(before.as_uuid()),
        None => keys::prefix_end(&prefix),
    };
    let mut ids = Vec::with_capacity(limit);
    for item in tree.range(prefix..end).rev() {
        let (key, _) = item?;
        let id = key
            .get(1..)
            .and_then(|bytes| uuid::Uuid::from_slice(bytes).ok())
            .map(MerchantId::from_uuid)
            .ok_or_else(|| corrupt(&key))?;
        if ids.len() == limit {
            return Ok((ids, true));
        }
        ids.push(id);
    }
    Ok((ids, false))
}

fn merchant_name(tree: &sled::Tree, merchant: MerchantId) -> Result<Option<String>, ProjectionError> {
    Ok(tree.get(merchant_key(merchant.as_uuid()))?.and_then(|v| MerchantInfo::decode(&v)).map(|m| m.name))
}

/// Writes an overview report as CSV (one line per row; dimensions not grouped by are empty).
pub fn write_csv(report: &OverviewReport, out: &mut dyn Write) -> Result<(), ProjectionError> {
    let mut csv = CsvWriter::new(out);
    let mut header = vec!["date", "currency", "merchant_id", "merchant_name", "tier", "method_type"];
    header.extend(FIGURE_COLUMNS);
    csv.row(header)?;
    for r in &report.rows {
        let mut cells = vec![
            r.date.clone().unwrap_or_default(),
            r.currency.to_string(),
            r.merchant_id.map(|m| m.to_string()).unwrap_or_default(),
            r.merchant_name.clone().unwrap_or_default(),
            r.tier.map(|t| format!("{t:?}")).unwrap_or_default(),
            r.method_type.clone().unwrap_or_default(),
        ];
        cells.extend(figure_cells(&r.counters, &r.derived));
        csv.row(cells)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ReadModel;
    use crate::sim::{SimOptions, Simulator};

    /// Grouping into more rows than the bound is a 400 naming `group_by`; the same
    /// data grouped coarser answers.
    #[test]
    fn an_overview_with_too_many_rows_is_refused() {
        let (mut sim, merchants) = Simulator::new(SimOptions { merchants: 6, ..SimOptions::default() }).unwrap();
        let mut decoded = Vec::new();
        let mut push = |record: DomainRecord| {
            let position = decoded.len() as u64 + 1;
            decoded.push(Decoded { position, record });
        };
        for (stream, events) in merchants {
            let merchant_id = MerchantId::from_uuid(uuid::Uuid::parse_str(&stream["merchant-".len()..]).unwrap());
            for event in events {
                push(DomainRecord::Merchant { merchant_id, event });
            }
        }
        for _ in 0..300 {
            let flow = sim.next_payment().unwrap();
            for event in flow.events {
                push(DomainRecord::Payment { payment_id: flow.payment_id, event });
            }
        }
        let db = sled::Config::new().temporary(true).open().unwrap();
        let tree = db.open_tree("overview").unwrap();
        let mut batch = sled::Batch::default();
        PlatformOverview.apply(&tree, &decoded, &mut batch).unwrap();
        tree.apply_batch(batch).unwrap();
        let day = time::macros::date!(2027 - 01 - 01);
        let q = |group_by: Vec<Dimension>| OverviewQuery {
            from: day,
            to: day,
            group_by,
            merchant_id: None,
            currency: Vec::new(),
        };
        let fine = query_bounded(&tree, &q(vec![Dimension::Merchant, Dimension::Method]), 1_000).unwrap();
        let rows = fine.rows.len();
        assert!(rows > 10, "{rows} rows");
        match query_bounded(&tree, &q(vec![Dimension::Merchant, Dimension::Method]), rows - 1) {
            Err(ProjectionError::InvalidQuery { param, .. }) => assert_eq!(param, "group_by"),
            other => panic!("{other:?}"),
        }
        assert!(query_bounded(&tree, &q(vec![]), rows - 1).is_ok());
    }
}
