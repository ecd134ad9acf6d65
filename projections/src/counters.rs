//! Volume counters shared by the merchant dashboard and the platform overview: which
//! payment event moves which counter, and the rates derived from them.
//!
//! Every figure is counted on the UTC day of the event that causes it (a payment
//! initiated on Monday and captured on Tuesday counts as attempted on Monday and
//! captured on Tuesday), in the payment's currency.

use paystream_domain::merchant::Tier;
use paystream_domain::method::MethodSummary;
use paystream_domain::payment::PaymentEvent;
use paystream_domain::time::Timestamp;
use paystream_domain::Currency;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::buckets::{BucketSet, Member, MemberKey};
use crate::codec::Writer;
use crate::keys;
use crate::model::Record;

/// The payment method types, in the order counters and keys use.
pub const METHOD_TYPES: [&str; 5] = ["card", "bank_transfer", "wallet", "qr_code", "nfc"];

pub(crate) fn method_index(method: &MethodSummary) -> u8 {
    match method {
        MethodSummary::Card { .. } => 0,
        MethodSummary::BankTransfer { .. } => 1,
        MethodSummary::Wallet { .. } => 2,
        MethodSummary::QrCode { .. } => 3,
        MethodSummary::Nfc { .. } => 4,
    }
}

/// Counts and amounts (minor units of the row's currency).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Counters {
    /// `PaymentInitiated`.
    pub attempted_count: i64,
    /// `PaymentAuthorized`.
    pub authorized_count: i64,
    /// `PaymentDeclined` (acquirer or risk rules; review rejections are not declines here).
    pub declined_count: i64,
    /// `PaymentCaptured` events (a payment captured in two parts counts twice).
    pub captured_count: i64,
    /// `PaymentRefunded` events.
    pub refunded_count: i64,
    /// `PaymentDisputeOpened` events.
    pub disputed_count: i64,
    pub authorized_minor: i64,
    pub captured_minor: i64,
    pub refunded_minor: i64,
    /// Amount of disputes opened.
    pub disputed_minor: i64,
    pub dispute_won_minor: i64,
    pub dispute_lost_minor: i64,
    /// Fees charged at capture.
    pub fees_minor: i64,
    /// Captured amounts put into settlement batches (`PaymentSettled.amount`).
    pub settled_minor: i64,
    /// Fees settled with them (`PaymentSettled.fees`).
    pub settled_fees_minor: i64,
}

const COUNTER_FIELDS: usize = 15;

impl Counters {
    fn as_array(&self) -> [i64; COUNTER_FIELDS] {
        [
            self.attempted_count,
            self.authorized_count,
            self.declined_count,
            self.captured_count,
            self.refunded_count,
            self.disputed_count,
            self.authorized_minor,
            self.captured_minor,
            self.refunded_minor,
            self.disputed_minor,
            self.dispute_won_minor,
            self.dispute_lost_minor,
            self.fees_minor,
            self.settled_minor,
            self.settled_fees_minor,
        ]
    }

    fn from_array(a: [i64; COUNTER_FIELDS]) -> Counters {
        Counters {
            attempted_count: a[0],
            authorized_count: a[1],
            declined_count: a[2],
            captured_count: a[3],
            refunded_count: a[4],
            disputed_count: a[5],
            authorized_minor: a[6],
            captured_minor: a[7],
            refunded_minor: a[8],
            disputed_minor: a[9],
            dispute_won_minor: a[10],
            dispute_lost_minor: a[11],
            fees_minor: a[12],
            settled_minor: a[13],
            settled_fees_minor: a[14],
        }
    }

    /// Field-wise checked sum; `None` on overflow.
    pub fn checked_add(&self, other: &Counters) -> Option<Counters> {
        let (a, b) = (self.as_array(), other.as_array());
        let mut out = [0i64; COUNTER_FIELDS];
        for i in 0..COUNTER_FIELDS {
            out[i] = a[i].checked_add(b[i])?;
        }
        Some(Counters::from_array(out))
    }

    pub(crate) fn encode_into(&self, out: &mut Vec<u8>) {
        for v in self.as_array() {
            out.extend_from_slice(&v.to_be_bytes());
        }
    }

    pub(crate) fn decode_from(bytes: &[u8]) -> Option<Counters> {
        if bytes.len() < COUNTER_FIELDS * 8 {
            return None;
        }
        let mut a = [0i64; COUNTER_FIELDS];
        for (i, chunk) in bytes.chunks_exact(8).take(COUNTER_FIELDS).enumerate() {
            a[i] = i64::from_be_bytes(chunk.try_into().ok()?);
        }
        Some(Counters::from_array(a))
    }

    /// The derived figures of these counters.
    pub fn derived(&self) -> Derived {
        Derived {
            net_minor: self
                .captured_minor
                .saturating_sub(self.refunded_minor)
                .saturating_sub(self.dispute_lost_minor)
                .saturating_sub(self.fees_minor),
            approval_rate_bps: rate_bps(
                self.authorized_count,
                self.authorized_count.saturating_add(self.declined_count),
            ),
            refund_rate_bps: rate_bps(self.refunded_minor, self.captured_minor),
            dispute_rate_bps: rate_bps(self.disputed_count, self.captured_count),
            average_ticket_minor: divide_rounded(self.authorized_minor, self.authorized_count),
        }
    }
}

impl Record for Counters {
    fn decode(bytes: &[u8]) -> Option<Self> {
        Counters::decode_from(bytes)
    }
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(COUNTER_FIELDS * 8);
        self.encode_into(&mut out);
        out
    }
}

/// Figures computed from [`Counters`] at query time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Derived {
    /// captured − refunded − dispute lost − fees.
    pub net_minor: i64,
    /// authorized / (authorized + declined), in basis points; `null` when nothing was decided.
    pub approval_rate_bps: Option<i64>,
    /// refunded / captured amount, in basis points.
    pub refund_rate_bps: Option<i64>,
    /// disputes opened / captures, in basis points (the card schemes' chargeback ratio).
    pub dispute_rate_bps: Option<i64>,
    /// authorized amount / authorized count, rounded half up.
    pub average_ticket_minor: Option<i64>,
}

/// `numerator × 10,000 / denominator`, rounded half up (both are non-negative);
/// `None` when the denominator is 0. Computed in i128, so it cannot overflow.
pub fn rate_bps(numerator: i64, denominator: i64) -> Option<i64> {
    divide_rounded_i128(i128::from(numerator) * 10_000, i128::from(denominator))
}

fn divide_rounded(numerator: i64, denominator: i64) -> Option<i64> {
    divide_rounded_i128(i128::from(numerator), i128::from(denominator))
}

fn divide_rounded_i128(numerator: i128, denominator: i128) -> Option<i64> {
    if denominator <= 0 {
        return None;
    }
    let rounded = (numerator * 2 + denominator).div_euclid(denominator * 2);
    i64::try_from(rounded).ok()
}

/// What moves which counter: the event's UTC day and the change, or `None` for events
/// that move no counter (risk assessment, review, void, expiry).
pub(crate) fn event_delta(event: &PaymentEvent) -> Option<(Timestamp, Counters)> {
    use PaymentEvent as E;
    let zero = Counters::default();
    Some(match event {
        E::PaymentInitiated { initiated_at, .. } => (*initiated_at, Counters { attempted_count: 1, ..zero }),
        E::PaymentAuthorized { amount, authorized_at, .. } => {
            (*authorized_at, Counters { authorized_count: 1, authorized_minor: amount.amount_minor, ..zero })
        }
        E::PaymentDeclined { declined_at, .. } => (*declined_at, Counters { declined_count: 1, ..zero }),
        E::PaymentCaptured { amount, fee, captured_at, .. } => (
            *captured_at,
            Counters { captured_count: 1, captured_minor: amount.amount_minor, fees_minor: fee.amount_minor, ..zero },
        ),
        E::PaymentRefunded { amount, refunded_at, .. } => {
            (*refunded_at, Counters { refunded_count: 1, refunded_minor: amount.amount_minor, ..zero })
        }
        E::PaymentDisputeOpened { amount, opened_at, .. } => {
            (*opened_at, Counters { disputed_count: 1, disputed_minor: amount.amount_minor, ..zero })
        }
        E::PaymentDisputeWon { amount, resolved_at, .. } => {
            (*resolved_at, Counters { dispute_won_minor: amount.amount_minor, ..zero })
        }
        E::PaymentDisputeLost { amount, resolved_at, .. } => {
            (*resolved_at, Counters { dispute_lost_minor: amount.amount_minor, ..zero })
        }
        E::PaymentSettled { amount, fees, settled_at, .. } => (
            *settled_at,
            Counters { settled_minor: amount.amount_minor, settled_fees_minor: fees.amount_minor, ..zero },
        ),
        E::PaymentRiskAssessed { .. }
        | E::PaymentReviewApproved { .. }
        | E::PaymentReviewRejected { .. }
        | E::PaymentVoided { .. }
        | E::PaymentAuthorizationExpired { .. } => return None,
    })
}

/// What the dashboard and the overview remember of each payment (21 bytes): whose it
/// is, its currency, the merchant's tier when it was initiated, and its method type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PaymentRef {
    pub merchant: Uuid,
    pub currency: Currency,
    pub tier: Option<Tier>,
    pub method: u8,
}

pub(crate) fn tier_byte(tier: Option<Tier>) -> u8 {
    match tier {
        Some(Tier::A) => b'A',
        Some(Tier::B) => b'B',
        Some(Tier::C) => b'C',
        Some(Tier::D) => b'D',
        None => b'-',
    }
}

pub(crate) fn tier_from_byte(b: u8) -> Option<Tier> {
    match b {
        b'A' => Some(Tier::A),
        b'B' => Some(Tier::B),
        b'C' => Some(Tier::C),
        b'D' => Some(Tier::D),
        _ => None,
    }
}

impl Record for PaymentRef {
    fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != 21 {
            return None;
        }
        Some(PaymentRef {
            merchant: keys::uuid_from(&bytes[..16])?,
            currency: keys::parse_currency(&bytes[16..19])?,
            tier: tier_from_byte(bytes[19]),
            method: bytes[20],
        })
    }
    fn encode(&self) -> Vec<u8> {
        keys::key(&[self.merchant.as_bytes(), &keys::currency_key(self.currency), &[tier_byte(self.tier), self.method]])
    }
}

/// Key prefix of the payment refs.
const REFS: &[u8] = b"p";
/// Most payment refs stored under one key (about 4.7 KB).
pub(crate) const REFS_PER_BUCKET: usize = 128;

/// A payment's ref as a member of a bucket ([`crate::buckets`]), keyed by the
/// inverted payment uuid, so that new payments (UUIDv7, larger ids) fill the first
/// bucket.
struct RefEntry(MemberKey, PaymentRef);

impl Member for RefEntry {
    fn member_key(&self) -> MemberKey {
        self.0
    }
    fn encode_payload(&self, out: &mut Writer) {
        out.out.extend_from_slice(&self.1.encode());
    }
    fn decode_payload(key: &MemberKey, payload: &[u8]) -> Option<Self> {
        Some(RefEntry(*key, PaymentRef::decode(payload)?))
    }
}

/// Payment refs, read through from and written back to the tree: `p<inverted payment
/// uuid>` is a bucket of up to [`REFS_PER_BUCKET`] refs (one sled key per bucket
/// instead of one per payment, which keeps rebuilds fast; see [`crate::buckets`]).
pub(crate) struct Refs {
    buckets: BucketSet<RefEntry>,
}

impl Refs {
    pub(crate) fn new(projection: crate::model::ProjectionName) -> Refs {
        Refs { buckets: BucketSet::new(projection, REFS_PER_BUCKET) }
    }

    pub(crate) fn get(
        &mut self,
        tree: &sled::Tree,
        payment: &Uuid,
    ) -> Result<Option<PaymentRef>, crate::error::ProjectionError> {
        Ok(self.buckets.get(tree, REFS, &keys::uuid_desc(payment))?.map(|entry| entry.1))
    }

    pub(crate) fn put(
        &mut self,
        tree: &sled::Tree,
        payment: Uuid,
        r: PaymentRef,
    ) -> Result<(), crate::error::ProjectionError> {
        self.buckets.insert(tree, REFS, RefEntry(keys::uuid_desc(&payment), r))
    }

    pub(crate) fn flush(&mut self, batch: &mut sled::Batch) {
        self.buckets.flush(batch);
    }

    pub(crate) fn bytes(&self) -> usize {
        self.buckets.bytes()
    }

    pub(crate) fn evict(&mut self) {
        self.buckets.evict();
    }

    pub(crate) fn forget_tree(&mut self) {
        self.buckets.forget_tree();
    }

    pub(crate) fn assume_empty_tree(&mut self) {
        self.buckets.assume_empty_tree();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_round_half_up() {
        assert_eq!(rate_bps(1, 3), Some(3_333));
        assert_eq!(rate_bps(2, 3), Some(6_667));
        assert_eq!(rate_bps(1, 0), None);
        assert_eq!(rate_bps(0, 5), Some(0));
        assert_eq!(divide_rounded(5, 2), Some(3));
        assert_eq!(divide_rounded(i64::MAX, 1), Some(i64::MAX));
    }

    #[test]
    fn counters_round_trip() {
        let c =
            Counters { attempted_count: 3, captured_minor: -5, settled_fees_minor: i64::MAX, ..Counters::default() };
        assert_eq!(Counters::decode(&c.encode()), Some(c));
        assert_eq!(c.checked_add(&c), None);
    }
}
