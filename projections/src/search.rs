//! Payment search: one summary per payment, kept current as its events arrive, and
//! indexes in sled key order so a page is a short range scan, newest first.
//!
//! Tree layout (`projection/payment_search/v<N>`), where `<desc id>` is the payment
//! uuid with every bit inverted, so ascending keys are descending ids. Both maps are
//! kept in buckets of [`crate::buckets`] (one sled key per bucket of up to
//! [`SUMMARIES_PER_BUCKET`] or [`INDEX_ENTRIES_PER_BUCKET`] members, keyed by the
//! largest `<desc id>` it holds), because a new sled key per payment made rebuilds slow:
//!
//! ```text
//! s<desc id>                   bucket of PaymentSummary (binary)  all payments, newest first
//! i<merchant uuid><desc id>    bucket of <desc id>                one merchant's payments, newest first
//! ```
//!
//! Payment ids are UUIDv7 minted when the payment is created: their first 48 bits are
//! the creation time in milliseconds, so descending id order is newest-first creation
//! order (ties within a millisecond broken by the id's random bits). The key is thus
//! (merchant, created time, id), reversed, without storing the time twice; `created_from`
//! and `created_to` narrow the scanned range through the id's time bits (with a margin
//! of [`CREATED_AT_MARGIN_MS`]) and then compare `created_at` exactly.
//!
//! Index keys depend only on what never changes (merchant and id), so a status change
//! rewrites the summary only, and pagination with `starting_after` stays stable while
//! payments move. Filters on status, method, currency, amount and customer are checked
//! on the summaries as the range is scanned, at most [`MAX_SCANNED_PER_QUERY`] per page.

use std::io::Write;
use std::ops::ControlFlow;

use paystream_domain::id::{MerchantId, PaymentId};
use paystream_domain::method::{CardBrand, MethodSummary};
use paystream_domain::payment::{CaptureMethod, DeclineCode, PaymentEvent, PaymentStatus, ReviewState};
use paystream_domain::risk::RiskDecision;
use paystream_domain::time::Timestamp;
use paystream_domain::Currency;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::buckets::{self, BucketSet, Member, MemberKey};
use crate::codec::{Reader, Writer};
use crate::counters::METHOD_TYPES;
use crate::csv::CsvWriter;
use crate::dashboard::orphan;
use crate::decode::{Decoded, DomainRecord};
use crate::error::ProjectionError;
use crate::keys;
use crate::model::{string_heap, ProjectionName, ReadModel, Record, WorkingSet};

/// Largest page.
pub const MAX_PAGE_SIZE: usize = 100;
/// Page size when the query names none.
pub const DEFAULT_PAGE_SIZE: usize = 20;
/// Most index entries one query looks at. A selective filter that matches little
/// returns a short page with `has_more` and a cursor to continue from.
pub const MAX_SCANNED_PER_QUERY: usize = 10_000;
/// Most summaries stored under one key (about 10 KB).
pub const SUMMARIES_PER_BUCKET: usize = 64;
/// Most entries of a merchant's index stored under one key (about 4.3 KB).
pub const INDEX_ENTRIES_PER_BUCKET: usize = 256;

/// Key prefix of the summaries.
const SUMMARIES: &[u8] = b"s";

const NAME: ProjectionName = ProjectionName::PaymentSearch;

/// A payment as search shows it: a flat summary. Amounts (minor units) and the
/// capture mode carry the names of the payment object of the HTTP API (`amount`,
/// `amount_captured`, `fees`, `capture`, ...), in JSON and CSV alike.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PaymentSummary {
    pub id: PaymentId,
    pub merchant_id: MerchantId,
    pub status: PaymentStatus,
    #[serde(rename = "amount")]
    pub amount_minor: i64,
    pub currency: Currency,
    #[serde(rename = "amount_capturable")]
    pub amount_capturable_minor: i64,
    #[serde(rename = "amount_captured")]
    pub amount_captured_minor: i64,
    #[serde(rename = "amount_refunded")]
    pub amount_refunded_minor: i64,
    /// Under open disputes.
    #[serde(rename = "amount_disputed")]
    pub amount_disputed_minor: i64,
    #[serde(rename = "amount_dispute_lost")]
    pub amount_dispute_lost_minor: i64,
    #[serde(rename = "amount_settled")]
    pub amount_settled_minor: i64,
    #[serde(rename = "fees")]
    pub fees_minor: i64,
    #[serde(rename = "capture")]
    pub capture_method: CaptureMethod,
    /// `card`, `bank_transfer`, `wallet`, `qr_code` or `nfc`.
    pub method_type: String,
    pub card_brand: Option<CardBrand>,
    /// Last four of the card, account or token, when the method has one.
    pub last4: Option<String>,
    pub customer_id: Option<String>,
    pub customer_email: Option<String>,
    pub risk_score: Option<u8>,
    pub risk_decision: Option<RiskDecision>,
    pub review: ReviewState,
    pub decline_code: Option<DeclineCode>,
    pub authorized: bool,
    pub voided: bool,
    pub expired: bool,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// Format byte of the stored summary (the first byte of its value).
const SUMMARY_FORMAT: u8 = 1;

/// Stored in the compact binary form of [`crate::codec`] (about 150 bytes).
impl Record for PaymentSummary {
    fn decode(bytes: &[u8]) -> Option<Self> {
        let mut r = Reader::new(bytes);
        if r.u8()? != SUMMARY_FORMAT {
            return None;
        }
        let summary = PaymentSummary {
            id: PaymentId::from_uuid(r.uuid()?),
            merchant_id: MerchantId::from_uuid(r.uuid()?),
            status: r.name()?,
            amount_minor: r.i64()?,
            currency: r.currency()?,
            amount_capturable_minor: r.i64()?,
            amount_captured_minor: r.i64()?,
            amount_refunded_minor: r.i64()?,
            amount_disputed_minor: r.i64()?,
            amount_dispute_lost_minor: r.i64()?,
            amount_settled_minor: r.i64()?,
            fees_minor: r.i64()?,
            capture_method: r.name()?,
            method_type: r.string()?,
            card_brand: r.opt_name()?,
            last4: r.opt_string()?,
            customer_id: r.opt_string()?,
            customer_email: r.opt_string()?,
            risk_score: match r.u8()? {
                0 => None,
                1 => Some(r.u8()?),
                _ => return None,
            },
            risk_decision: r.opt_name()?,
            review: r.name()?,
            decline_code: r.opt_name()?,
            authorized: flag(r.u8()?)?,
            voided: flag(r.u8()?)?,
            expired: flag(r.u8()?)?,
            created_at: r.timestamp()?,
            updated_at: r.timestamp()?,
        };
        r.is_empty().then_some(summary)
    }

    fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(192);
        w.u8(SUMMARY_FORMAT);
        w.uuid(self.id.as_uuid());
        w.uuid(self.merchant_id.as_uuid());
        w.name(&self.status);
        w.i64(self.amount_minor);
        w.currency(self.currency);
        w.i64(self.amount_capturable_minor);
        w.i64(self.amount_captured_minor);
        w.i64(self.amount_refunded_minor);
        w.i64(self.amount_disputed_minor);
        w.i64(self.amount_dispute_lost_minor);
        w.i64(self.amount_settled_minor);
        w.i64(self.fees_minor);
        w.name(&self.capture_method);
        w.str(&self.method_type);
        w.opt_name(self.card_brand.as_ref());
        w.opt_str(self.last4.as_deref());
        w.opt_str(self.customer_id.as_deref());
        w.opt_str(self.customer_email.as_deref());
        match self.risk_score {
            None => w.u8(0),
            Some(score) => {
                w.u8(1);
                w.u8(score);
            }
        }
        w.opt_name(self.risk_decision.as_ref());
        w.name(&self.review);
        w.opt_name(self.decline_code.as_ref());
        w.u8(u8::from(self.authorized));
        w.u8(u8::from(self.voided));
        w.u8(u8::from(self.expired));
        w.timestamp(self.created_at);
        w.timestamp(self.updated_at);
        w.out
    }
}

fn flag(b: u8) -> Option<bool> {
    match b {
        0 => Some(false),
        1 => Some(true),
        _ => None,
    }
}

impl PaymentSummary {
    /// The same rule as `Payment::status` in the domain.
    fn derive_status(&self) -> PaymentStatus {
        paystream_domain::payment::StatusFacts {
            declined: self.decline_code.is_some(),
            voided: self.voided,
            review_pending: self.review == ReviewState::Pending,
            authorized: self.authorized,
            expired: self.expired,
            amount_capturable: self.amount_capturable_minor,
            amount_captured: self.amount_captured_minor,
            amount_refunded: self.amount_refunded_minor,
        }
        .status()
    }

    fn initiated(payment_id: PaymentId, event: &PaymentEvent) -> Option<PaymentSummary> {
        let PaymentEvent::PaymentInitiated {
            merchant_id, amount, capture_method, method, customer, initiated_at, ..
        } = event
        else {
            return None;
        };
        let (card_brand, last4) = match method {
            MethodSummary::Card { brand, last4, .. } => (Some(*brand), Some(last4.clone())),
            MethodSummary::BankTransfer { account_last4, .. } => (None, Some(account_last4.clone())),
            MethodSummary::Nfc { token_last4, .. } => (None, Some(token_last4.clone())),
            MethodSummary::Wallet { .. } | MethodSummary::QrCode { .. } => (None, None),
        };
        Some(PaymentSummary {
            id: payment_id,
            merchant_id: *merchant_id,
            status: PaymentStatus::Pending,
            amount_minor: amount.amount_minor,
            currency: amount.currency,
            amount_capturable_minor: 0,
            amount_captured_minor: 0,
            amount_refunded_minor: 0,
            amount_disputed_minor: 0,
            amount_dispute_lost_minor: 0,
            amount_settled_minor: 0,
            fees_minor: 0,
            capture_method: *capture_method,
            method_type: method.type_name().to_string(),
            card_brand,
            last4,
            customer_id: customer.id.clone(),
            customer_email: customer.email.clone(),
            risk_score: None,
            risk_decision: None,
            review: ReviewState::NotRequired,
            decline_code: None,
            authorized: false,
            voided: false,
            expired: false,
            created_at: *initiated_at,
            updated_at: *initiated_at,
        })
    }

    /// Mirrors the domain's `evolve` for the fields kept here.
    fn evolve(&mut self, event: &PaymentEvent) {
        use PaymentEvent as E;
        let at = match event {
            E::PaymentInitiated { initiated_at, .. } => *initiated_at,
            E::PaymentRiskAssessed { score, decision, assessed_at, .. } => {
                self.risk_score = Some(*score);
                self.risk_decision = Some(*decision);
                if *decision == RiskDecision::Review {
                    self.review = ReviewState::Pending;
                }
                *assessed_at
            }
            E::PaymentAuthorized { amount, authorized_at, .. } => {
                self.authorized = true;
                self.amount_capturable_minor = amount.amount_minor;
                *authorized_at
            }
            E::PaymentDeclined { decline_code, declined_at } => {
                self.decline_code = Some(*decline_code);
                self.amount_capturable_minor = 0;
                *declined_at
            }
            E::PaymentReviewApproved { reviewed_at, .. } => {
                self.review = ReviewState::Approved;
                *reviewed_at
            }
            E::PaymentReviewRejected { reviewed_at, .. } => {
                self.review = ReviewState::Rejected;
                self.decline_code = Some(DeclineCode::ReviewRejected);
                self.amount_capturable_minor = 0;
                *reviewed_at
            }
            E::PaymentCaptured { amount, fee, final_capture, captured_at, .. } => {
                self.amount_captured_minor = self.amount_captured_minor.saturating_add(amount.amount_minor);
                self.amount_capturable_minor =
                    if *final_capture { 0 } else { self.amount_capturable_minor.saturating_sub(amount.amount_minor) };
                self.fees_minor = self.fees_minor.saturating_add(fee.amount_minor);
                *captured_at
            }
            E::PaymentVoided { voided_at, .. } => {
                self.voided = true;
                self.amount_capturable_minor = 0;
                *voided_at
            }
            E::PaymentAuthorizationExpired { expired_at, .. } => {
                self.expired = true;
                self.amount_capturable_minor = 0;
                *expired_at
            }
            E::PaymentRefunded { amount, refunded_at, .. } => {
                self.amount_refunded_minor = self.amount_refunded_minor.saturating_add(amount.amount_minor);
                *refunded_at
            }
            E::PaymentDisputeOpened { amount, opened_at, .. } => {
                self.amount_disputed_minor = self.amount_disputed_minor.saturating_add(amount.amount_minor);
                *opened_at
            }
            E::PaymentDisputeWon { amount, resolved_at, .. } => {
                self.amount_disputed_minor = self.amount_disputed_minor.saturating_sub(amount.amount_minor);
                *resolved_at
            }
            E::PaymentDisputeLost { amount, resolved_at, .. } => {
                self.amount_disputed_minor = self.amount_disputed_minor.saturating_sub(amount.amount_minor);
                self.amount_dispute_lost_minor = self.amount_dispute_lost_minor.saturating_add(amount.amount_minor);
                *resolved_at
            }
            E::PaymentSettled { amount, settled_at, .. } => {
                self.amount_settled_minor = self.amount_settled_minor.saturating_add(amount.amount_minor);
                *settled_at
            }
        };
        self.updated_at = at;
        self.status = self.derive_status();
    }
}

impl Member for PaymentSummary {
    fn member_key(&self) -> MemberKey {
        keys::uuid_desc(self.id.as_uuid())
    }
    fn encode_payload(&self, out: &mut Writer) {
        out.out.extend_from_slice(&self.encode());
    }
    fn decode_payload(key: &MemberKey, payload: &[u8]) -> Option<Self> {
        PaymentSummary::decode(payload).filter(|s| &keys::uuid_desc(s.id.as_uuid()) == key)
    }
    fn heap_bytes(&self) -> usize {
        let optional = |s: &Option<String>| s.as_deref().map_or(0, string_heap);
        string_heap(&self.method_type)
            + optional(&self.last4)
            + optional(&self.customer_id)
            + optional(&self.customer_email)
    }
}

/// An entry of a merchant's index: the payment's `<desc id>`.
struct IndexEntry(MemberKey);

impl Member for IndexEntry {
    fn member_key(&self) -> MemberKey {
        self.0
    }
    fn encode_payload(&self, _: &mut Writer) {}
    fn decode_payload(key: &MemberKey, payload: &[u8]) -> Option<Self> {
        payload.is_empty().then_some(IndexEntry(*key))
    }
}

/// Key prefix of one merchant's index.
fn index_prefix(merchant: &Uuid) -> Vec<u8> {
    keys::key(&[b"i", merchant.as_bytes()])
}

/// Most a payment id's time may differ from its `created_at` for the range narrowing.
pub const CREATED_AT_MARGIN_MS: i64 = 24 * 3_600 * 1_000;

/// The inverted bytes of the smallest (`fill` 0) or largest (`fill` 0xff) UUIDv7 of a
/// millisecond.
fn desc_time_bound(at: Timestamp, margin_ms: i64, fill: u8) -> [u8; 16] {
    let ms = i64::try_from(at.as_datetime().unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
    let ms = u64::try_from(ms.saturating_add(margin_ms).max(0)).unwrap_or(0).min((1 << 48) - 1);
    let mut raw = [fill; 16];
    raw[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    keys::uuid_desc(&Uuid::from_bytes(raw))
}

fn normalize_email(email: &str) -> String {
    email.to_lowercase()
}

/// The payment search read model.
#[derive(Debug, Clone, Copy, Default)]
pub struct PaymentSearch;

impl ReadModel for PaymentSearch {
    fn name(&self) -> ProjectionName {
        NAME
    }

    fn schema(&self) -> u32 {
        // 2: summaries in the binary form of `crate::codec` instead of JSON.
        // 3: summaries and merchant indexes in buckets (`crate::buckets`).
        3
    }

    fn working_set(&self) -> Box<dyn WorkingSet> {
        Box::new(SearchSet {
            summaries: BucketSet::new(NAME, SUMMARIES_PER_BUCKET),
            index: BucketSet::new(NAME, INDEX_ENTRIES_PER_BUCKET),
        })
    }

    fn export_csv(&self, tree: &sled::Tree, out: &mut dyn Write) -> Result<(), ProjectionError> {
        let mut csv = CsvWriter::new(out);
        csv.row(CSV_HEADER)?;
        buckets::scan(tree, NAME, SUMMARIES, &[0; 16], |key, payload| {
            csv.row(summary_cells(&decode_summary(key, payload)?))?;
            Ok(ControlFlow::Continue(()))
        })
    }
}

/// The model's records in memory (see [`WorkingSet`]).
struct SearchSet {
    summaries: BucketSet<PaymentSummary>,
    index: BucketSet<IndexEntry>,
}

impl WorkingSet for SearchSet {
    fn apply(&mut self, tree: &sled::Tree, events: &[Decoded]) -> Result<(), ProjectionError> {
        let SearchSet { summaries, index } = self;
        for decoded in events {
            let DomainRecord::Payment { payment_id, event } = &decoded.record else { continue };
            let key = keys::uuid_desc(payment_id.as_uuid());
            if let Some(mut summary) = PaymentSummary::initiated(*payment_id, event) {
                summary.evolve(event);
                index.insert(tree, &index_prefix(summary.merchant_id.as_uuid()), IndexEntry(key))?;
                summaries.insert(tree, SUMMARIES, summary)?;
                continue;
            }
            match summaries.get_mut(tree, SUMMARIES, &key)? {
                Some(mut summary) => summary.evolve(event),
                None => return Err(orphan(decoded.position)),
            }
        }
        Ok(())
    }

    fn flush(&mut self, batch: &mut sled::Batch) {
        self.index.flush(batch);
        self.summaries.flush(batch);
    }

    fn bytes(&self) -> usize {
        self.summaries.bytes() + self.index.bytes()
    }

    fn evict(&mut self) {
        self.summaries.evict();
        self.index.evict();
    }

    fn forget_tree(&mut self) {
        self.summaries.forget_tree();
        self.index.forget_tree();
    }

    fn assume_empty_tree(&mut self) {
        self.summaries.assume_empty_tree();
        self.index.assume_empty_tree();
    }
}

/// Columns of a payment CSV.
pub const CSV_HEADER: [&str; 27] = [
    "id",
    "merchant_id",
    "status",
    "amount",
    "currency",
    "amount_capturable",
    "amount_captured",
    "amount_refunded",
    "amount_disputed",
    "amount_dispute_lost",
    "amount_settled",
    "fees",
    "capture",
    "method_type",
    "card_brand",
    "last4",
    "customer_id",
    "customer_email",
    "risk_score",
    "risk_decision",
    "review",
    "decline_code",
    "authorized",
    "voided",
    "expired",
    "created_at",
    "updated_at",
];

fn enum_text<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(serde_json::Value::Null) | Err(_) => String::new(),
        Ok(other) => other.to_string(),
    }
}

fn summary_cells(s: &PaymentSummary) -> Vec<String> {
    vec![
        s.id.to_string(),
        s.merchant_id.to_string(),
        enum_text(&s.status),
        s.amount_minor.to_string(),
        s.currency.to_string(),
        s.amount_capturable_minor.to_string(),
        s.amount_captured_minor.to_string(),
        s.amount_refunded_minor.to_string(),
        s.amount_disputed_minor.to_string(),
        s.amount_dispute_lost_minor.to_string(),
        s.amount_settled_minor.to_string(),
        s.fees_minor.to_string(),
        enum_text(&s.capture_method),
        s.method_type.clone(),
        enum_text(&s.card_brand),
        s.last4.clone().unwrap_or_default(),
        s.customer_id.clone().unwrap_or_default(),
        s.customer_email.clone().unwrap_or_default(),
        s.risk_score.map(|v| v.to_string()).unwrap_or_default(),
        enum_text(&s.risk_decision),
        enum_text(&s.review),
        enum_text(&s.decline_code),
        s.authorized.to_string(),
        s.voided.to_string(),
        s.expired.to_string(),
        s.created_at.to_string(),
        s.updated_at.to_string(),
    ]
}

/// Writes payment summaries (e.g. one page of search results) as CSV.
pub fn write_csv(summaries: &[PaymentSummary], out: &mut dyn Write) -> Result<(), ProjectionError> {
    let mut csv = CsvWriter::new(out);
    csv.row(CSV_HEADER)?;
    for s in summaries {
        csv.row(summary_cells(s))?;
    }
    Ok(())
}

fn decode_summary(key: &MemberKey, payload: &[u8]) -> Result<PaymentSummary, ProjectionError> {
    PaymentSummary::decode_payload(key, payload).ok_or_else(|| ProjectionError::Corrupt {
        projection: NAME.as_str(),
        key: format!("{key:?}"),
        detail: "summary does not parse".into(),
    })
}

/// One payment by id, if it exists.
pub fn get(tree: &sled::Tree, payment_id: PaymentId) -> Result<Option<PaymentSummary>, ProjectionError> {
    buckets::find(tree, NAME, SUMMARIES, &keys::uuid_desc(payment_id.as_uuid()))
}

/// A search. Every filter is optional; they combine with AND.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SearchQuery {
    /// Only this merchant's payments. The API sets it to the caller's merchant for
    /// merchant keys; analysts and admins may leave it out (all merchants).
    pub merchant_id: Option<MerchantId>,
    /// Any of these statuses; empty: any status.
    pub status: Vec<PaymentStatus>,
    /// Any of these methods (`card`, `bank_transfer`, `wallet`, `qr_code` or `nfc`);
    /// empty: any method.
    pub method_type: Vec<String>,
    /// Any of these currencies; empty: any currency.
    pub currency: Vec<Currency>,
    /// Created at or after.
    pub created_from: Option<Timestamp>,
    /// Created strictly before.
    pub created_to: Option<Timestamp>,
    pub min_amount_minor: Option<i64>,
    pub max_amount_minor: Option<i64>,
    pub customer_id: Option<String>,
    /// Compared case-insensitively.
    pub customer_email: Option<String>,
    /// 1..=100; `None` means 20.
    pub limit: Option<usize>,
    /// The `next_cursor` of the previous page (a payment id).
    pub starting_after: Option<PaymentId>,
}

/// A page of results, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SearchPage {
    pub data: Vec<PaymentSummary>,
    pub has_more: bool,
    /// Pass as `starting_after` for the next page; `null` when there is none. It is the
    /// last payment of `data`, or the last one looked at when the scan bound was reached.
    pub next_cursor: Option<PaymentId>,
}

impl SearchQuery {
    fn matches(&self, s: &PaymentSummary) -> bool {
        self.merchant_id.is_none_or(|m| m == s.merchant_id)
            && (self.status.is_empty() || self.status.contains(&s.status))
            && (self.method_type.is_empty() || self.method_type.contains(&s.method_type))
            && (self.currency.is_empty() || self.currency.contains(&s.currency))
            && self.created_from.is_none_or(|from| s.created_at >= from)
            && self.created_to.is_none_or(|to| s.created_at < to)
            && self.min_amount_minor.is_none_or(|min| s.amount_minor >= min)
            && self.max_amount_minor.is_none_or(|max| s.amount_minor <= max)
            && self.customer_id.as_deref().is_none_or(|c| s.customer_id.as_deref() == Some(c))
            && self.customer_email.as_deref().is_none_or(|e| {
                s.customer_email.as_deref().is_some_and(|own| normalize_email(own) == normalize_email(e))
            })
    }

    fn validate(&self) -> Result<usize, ProjectionError> {
        let limit = self.limit.unwrap_or(DEFAULT_PAGE_SIZE);
        if !(1..=MAX_PAGE_SIZE).contains(&limit) {
            return Err(ProjectionError::invalid("limit", format!("must be 1 to {MAX_PAGE_SIZE}")));
        }
        for method in &self.method_type {
            if !METHOD_TYPES.contains(&method.as_str()) {
                return Err(ProjectionError::invalid("method", format!("must be one of {METHOD_TYPES:?}")));
            }
        }
        if let (Some(min), Some(max)) = (self.min_amount_minor, self.max_amount_minor) {
            if min > max {
                return Err(ProjectionError::invalid("min_amount", "must not exceed max_amount"));
            }
        }
        Ok(limit)
    }
}

/// The `<desc id>` right after `key` (`None` past the last one).
fn successor(key: &MemberKey) -> Option<MemberKey> {
    u128::from_be_bytes(*key).checked_add(1).map(u128::to_be_bytes)
}

/// Answers a search from the model in `tree`.
pub fn search(tree: &sled::Tree, q: &SearchQuery) -> Result<SearchPage, ProjectionError> {
    let limit = q.validate()?;
    let empty = SearchPage { data: Vec::new(), has_more: false, next_cursor: None };
    // Scanned `<desc id>`s: from `start` (newest wanted) to `last` (oldest wanted), inclusive.
    let mut start = q.created_to.map_or([0; 16], |to| desc_time_bound(to, CREATED_AT_MARGIN_MS, 0xff));
    let last = q.created_from.map_or([0xff; 16], |from| desc_time_bound(from, -CREATED_AT_MARGIN_MS, 0));
    if let Some(after) = q.starting_after {
        let cursor = get(tree, after)?
            .filter(|s| q.merchant_id.is_none_or(|m| m == s.merchant_id))
            .ok_or_else(|| ProjectionError::invalid("starting_after", "no such payment"))?;
        match successor(&keys::uuid_desc(cursor.id.as_uuid())) {
            Some(next) => start = start.max(next),
            None => return Ok(empty),
        }
    }
    if start > last {
        return Ok(empty);
    }
    let prefix = match q.merchant_id {
        Some(merchant) => index_prefix(merchant.as_uuid()),
        None => SUMMARIES.to_vec(),
    };
    let mut data = Vec::with_capacity(limit);
    let mut scanned = 0usize;
    let mut last_scanned = None;
    let mut more = false;
    buckets::scan(tree, NAME, &prefix, &start, |key, payload| {
        if key > &last {
            return Ok(ControlFlow::Break(()));
        }
        let payment_id = keys::uuid_from_desc(key).map(PaymentId::from_uuid).ok_or_else(|| {
            ProjectionError::Corrupt { projection: NAME.as_str(), key: format!("{key:?}"), detail: "member key".into() }
        })?;
        if scanned == MAX_SCANNED_PER_QUERY {
            // Bound reached with entries left: continue after the last one looked at.
            more = true;
            return Ok(ControlFlow::Break(()));
        }
        scanned += 1;
        let summary = match q.merchant_id {
            Some(_) => match get(tree, payment_id)? {
                Some(summary) => summary,
                None => return Ok(ControlFlow::Continue(())),
            },
            None => decode_summary(key, payload)?,
        };
        if !q.matches(&summary) {
            last_scanned = Some(payment_id);
            return Ok(ControlFlow::Continue(()));
        }
        if data.len() == limit {
            more = true;
            last_scanned = data.last().map(|s: &PaymentSummary| s.id);
            return Ok(ControlFlow::Break(()));
        }
        last_scanned = Some(payment_id);
        data.push(summary);
        Ok(ControlFlow::Continue(()))
    })?;
    Ok(match more {
        true => SearchPage { data, has_more: true, next_cursor: last_scanned },
        false => SearchPage { data, has_more: false, next_cursor: None },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::{SimOptions, Simulator};

    /// Every summary of a varied history (all methods, statuses, reviews, declines,
    /// disputes) decodes to itself, and so do the journal chunks of the same events.
    #[test]
    fn binary_summaries_round_trip() {
        let options = SimOptions { seed: 3, refund_percent: 40, dispute_percent: 35, ..SimOptions::default() };
        let (mut sim, _) = Simulator::new(options).unwrap();
        let mut statuses = std::collections::HashSet::new();
        for _ in 0..2_000 {
            let flow = sim.next_payment().unwrap();
            let mut events = flow.events.iter();
            let first = events.next().unwrap();
            let mut summary = PaymentSummary::initiated(flow.payment_id, first).unwrap();
            summary.evolve(first);
            for event in events {
                summary.evolve(event);
                let bytes = summary.encode();
                assert_eq!(PaymentSummary::decode(&bytes).as_ref(), Some(&summary));
                assert!(bytes.len() < 200, "{} bytes", bytes.len());
            }
            statuses.insert(enum_text(&summary.status));
        }
        assert!(statuses.len() >= 5, "{statuses:?}");
        assert_eq!(PaymentSummary::decode(b"{}"), None);
    }

    /// With thousands of payments (many buckets, split while payments arrive out of id
    /// order), every page of every search equals the same search done by brute force
    /// over the summaries, and each summary is found by id.
    #[test]
    fn bucketed_search_equals_brute_force() {
        let options =
            SimOptions { seed: 11, merchants: 7, refund_percent: 30, dispute_percent: 10, ..SimOptions::default() };
        let (mut sim, _) = Simulator::new(options).unwrap();
        let mut flows = Vec::new();
        for _ in 0..3_000 {
            flows.push(sim.next_payment().unwrap());
        }
        // Out of id order: each run of 10 payments in reverse.
        for chunk in flows.chunks_mut(10) {
            chunk.reverse();
        }
        let mut decoded = Vec::new();
        let mut expected: Vec<PaymentSummary> = Vec::new();
        for flow in &flows {
            let mut summary: Option<PaymentSummary> = None;
            for event in &flow.events {
                let position = decoded.len() as u64 + 1;
                decoded.push(Decoded {
                    position,
                    record: DomainRecord::Payment { payment_id: flow.payment_id, event: event.clone() },
                });
                match summary.as_mut() {
                    Some(s) => s.evolve(event),
                    None => {
                        let mut s = PaymentSummary::initiated(flow.payment_id, event).unwrap();
                        s.evolve(event);
                        summary = Some(s);
                    }
                }
            }
            expected.extend(summary);
        }
        expected.sort_by(|a, b| b.id.as_uuid().cmp(a.id.as_uuid()));
        let db = sled::Config::new().temporary(true).open().unwrap();
        let tree = db.open_tree("search").unwrap();
        for batch in decoded.chunks(500) {
            let mut writes = sled::Batch::default();
            PaymentSearch.apply(&tree, batch, &mut writes).unwrap();
            tree.apply_batch(writes).unwrap();
        }
        assert!(tree.len() > 3_000 / SUMMARIES_PER_BUCKET, "{} keys", tree.len());
        assert!(tree.len() < 3_000 / 8, "{} keys", tree.len());
        for s in expected.iter().step_by(7) {
            assert_eq!(get(&tree, s.id).unwrap().as_ref(), Some(s));
        }
        let merchant = expected[0].merchant_id;
        let mid = expected[expected.len() / 2].created_at;
        let queries = [
            SearchQuery { limit: Some(100), ..Default::default() },
            SearchQuery { merchant_id: Some(merchant), limit: Some(37), ..Default::default() },
            SearchQuery { status: vec![PaymentStatus::Refunded], limit: Some(9), ..Default::default() },
            SearchQuery { merchant_id: Some(merchant), created_to: Some(mid), limit: Some(50), ..Default::default() },
            SearchQuery {
                created_from: Some(mid),
                min_amount_minor: Some(5_000),
                limit: Some(100),
                ..Default::default()
            },
        ];
        for query in queries {
            let want: Vec<&PaymentSummary> = expected.iter().filter(|s| query.matches(s)).collect();
            assert!(!want.is_empty(), "{query:?}");
            let mut got = Vec::new();
            let mut q = query.clone();
            loop {
                let page = search(&tree, &q).unwrap();
                got.extend(page.data);
                if !page.has_more {
                    break;
                }
                q.starting_after = page.next_cursor;
            }
            assert_eq!(got.iter().collect::<Vec<_>>(), want, "{query:?}");
        }
    }
}
