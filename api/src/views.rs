//! How objects look in API responses: one type per object, whose OpenAPI
//! schema is derived from it (`ToSchema`), so the document says exactly what
//! is served. Amounts are integers in minor units; ids carry their prefix;
//! the card shows brand and last four only.

use std::collections::BTreeMap;

use paystream_commands::facts::KeyRecord;
use paystream_domain::api_key::Role;
use paystream_domain::country::CountryCode;
use paystream_domain::id::{ApiKeyId, CaptureId, DisputeId, MerchantId, PaymentId, RefundId};
use paystream_domain::merchant::{Merchant, MerchantStatus, Tier};
use paystream_domain::method::MethodSummary;
use paystream_domain::payment::{
    CaptureMethod, Customer, DeclineCode, DisputeStatus, Payment, PaymentEvent, PaymentStatus,
};
use paystream_domain::risk::{RiskDecision, RiskRule};
use paystream_domain::time::Timestamp;
use paystream_domain::Currency;
use paystream_projections::{ProjectionName, ProjectionStatus};
use paystream_store::RecordedEvent;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

/// A one-value enum naming an object's kind in its `object` field.
macro_rules! object_kind {
    ($($(#[$doc:meta])* $name:ident = $variant:ident),* $(,)?) => {$(
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            $variant,
        }
    )*};
}

object_kind!(
    /// Always `merchant`.
    MerchantObject = Merchant,
    /// Always `payment`.
    PaymentObject = Payment,
    /// Always `refund`.
    RefundObject = Refund,
    /// Always `dispute`.
    DisputeObject = Dispute,
    /// Always `api_key`.
    ApiKeyObject = ApiKey,
    /// Always `projection_rebuild`.
    ProjectionRebuildObject = ProjectionRebuild,
    /// Always `ok`.
    HealthStatus = Ok,
    /// Always `succeeded`: a refund is recorded once the acquirer took it.
    RefundStatus = Succeeded,
);

/// The limits of a merchant's tier, in whole major units of the payment's currency.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Limits {
    pub max_single_payment_major: i64,
    pub max_daily_volume_major: i64,
}

/// What the platform charges the merchant: `percent_bps` of each capture plus
/// `fixed` (minor units) on the first one.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Fees {
    pub percent_bps: u32,
    pub fixed: i64,
}

/// A merchant.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct MerchantView {
    pub id: MerchantId,
    pub object: MerchantObject,
    pub name: String,
    pub country: CountryCode,
    pub default_currency: Currency,
    pub settlement_currency: Currency,
    pub tier: Tier,
    pub limits: Limits,
    pub fees: Fees,
    pub status: MerchantStatus,
    pub created_at: Timestamp,
    /// Log position of the last event that shaped it (pass as `min_position`).
    pub position: u64,
}

pub fn merchant(m: &Merchant, position: u64) -> MerchantView {
    let limits = m.tier.limits();
    MerchantView {
        id: m.id,
        object: MerchantObject::Merchant,
        name: m.name.clone(),
        country: m.country,
        default_currency: m.default_currency,
        settlement_currency: m.settlement_currency,
        tier: m.tier,
        limits: Limits {
            max_single_payment_major: limits.max_single_payment_major,
            max_daily_volume_major: limits.max_daily_volume_major,
        },
        fees: Fees { percent_bps: m.fees.percent_bps, fixed: m.fees.fixed_minor },
        status: m.status,
        created_at: m.onboarded_at,
        position,
    }
}

/// The risk rules' verdict.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Risk {
    /// 0 to 100.
    pub score: u8,
    pub decision: RiskDecision,
    pub rules: Vec<RiskRule>,
}

/// One capture of a payment.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CaptureItem {
    pub id: CaptureId,
    pub amount: i64,
    pub fee: i64,
    pub created_at: Timestamp,
}

/// One refund of a payment.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RefundItem {
    pub id: RefundId,
    pub amount: i64,
    pub reason: Option<String>,
    pub created_at: Timestamp,
}

/// One dispute of a payment.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DisputeItem {
    pub id: DisputeId,
    pub amount: i64,
    pub reason: String,
    pub status: DisputeStatus,
    pub created_at: Timestamp,
}

/// A payment. Amounts are minor units of `currency`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PaymentView {
    pub id: PaymentId,
    pub object: PaymentObject,
    pub merchant_id: MerchantId,
    pub status: PaymentStatus,
    pub amount: i64,
    pub currency: Currency,
    /// What the authorization still holds and may be captured.
    pub amount_capturable: i64,
    pub amount_captured: i64,
    pub amount_refunded: i64,
    /// captured − refunded − open and lost disputes.
    pub amount_refundable: i64,
    /// Under open disputes.
    pub amount_disputed: i64,
    pub amount_dispute_lost: i64,
    pub amount_settled: i64,
    /// Fees charged on the captures.
    pub fees: i64,
    pub capture: CaptureMethod,
    /// The instrument, without its secrets: brand, last four, expiry and a keyed fingerprint for cards.
    pub method: MethodSummary,
    pub customer: Customer,
    pub description: Option<String>,
    pub metadata: BTreeMap<String, String>,
    /// `null` until the risk rules ran.
    pub risk: Option<Risk>,
    pub decline_code: Option<DeclineCode>,
    pub acquirer_reference: Option<String>,
    pub authorization_expires_at: Option<Timestamp>,
    pub captures: Vec<CaptureItem>,
    pub refunds: Vec<RefundItem>,
    pub disputes: Vec<DisputeItem>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    /// Log position of the last event that shaped it (pass as `min_position`).
    pub position: u64,
}

pub fn payment(p: &Payment, position: u64) -> PaymentView {
    PaymentView {
        id: p.id,
        object: PaymentObject::Payment,
        merchant_id: p.merchant_id,
        status: p.status(),
        amount: p.amount.amount_minor,
        currency: p.amount.currency,
        amount_capturable: p.amount_capturable,
        amount_captured: p.amount_captured,
        amount_refunded: p.amount_refunded,
        amount_refundable: p.amount_refundable(),
        amount_disputed: p.amount_disputed_open(),
        amount_dispute_lost: p.amount_dispute_lost(),
        amount_settled: p.amount_settled,
        fees: p.fees_charged,
        capture: p.capture_method,
        method: p.method.clone(),
        customer: p.customer.clone(),
        description: p.description.clone(),
        metadata: p.metadata.clone(),
        risk: p.risk.as_ref().map(|r| Risk { score: r.score, decision: r.decision, rules: r.rules.clone() }),
        decline_code: p.decline_code,
        acquirer_reference: p.authorization.as_ref().map(|a| a.acquirer_reference.clone()),
        authorization_expires_at: p.authorization.as_ref().map(|a| a.expires_at),
        captures: p
            .captures
            .iter()
            .map(|c| CaptureItem { id: c.id, amount: c.amount_minor, fee: c.fee_minor, created_at: c.captured_at })
            .collect(),
        refunds: p
            .refunds
            .iter()
            .map(|r| RefundItem {
                id: r.id,
                amount: r.amount_minor,
                reason: r.reason.clone(),
                created_at: r.refunded_at,
            })
            .collect(),
        disputes: p
            .disputes
            .iter()
            .map(|d| DisputeItem {
                id: d.id,
                amount: d.amount_minor,
                reason: d.reason.clone(),
                status: d.status,
                created_at: d.opened_at,
            })
            .collect(),
        created_at: p.created_at,
        updated_at: p.updated_at,
        position,
    }
}

/// A refund.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RefundView {
    pub id: RefundId,
    pub object: RefundObject,
    pub payment_id: PaymentId,
    pub amount: i64,
    pub currency: Currency,
    pub reason: Option<String>,
    pub status: RefundStatus,
    pub created_at: Timestamp,
    pub position: u64,
}

/// The refund a request created, from the events it wrote.
pub fn refund(p: &Payment, events: &[(PaymentEvent, u64)]) -> Option<RefundView> {
    events.iter().find_map(|(event, position)| match event {
        PaymentEvent::PaymentRefunded { refund_id, amount, reason, refunded_at } => Some(RefundView {
            id: *refund_id,
            object: RefundObject::Refund,
            payment_id: p.id,
            amount: amount.amount_minor,
            currency: amount.currency,
            reason: reason.clone(),
            status: RefundStatus::Succeeded,
            created_at: *refunded_at,
            position: *position,
        }),
        _ => None,
    })
}

/// A dispute.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DisputeView {
    pub id: DisputeId,
    pub object: DisputeObject,
    pub payment_id: PaymentId,
    pub amount: i64,
    pub currency: Currency,
    pub reason: String,
    pub status: DisputeStatus,
    pub created_at: Timestamp,
    pub position: u64,
}

/// The dispute a request opened or resolved, from the events it wrote.
pub fn dispute(p: &Payment, events: &[(PaymentEvent, u64)]) -> Option<DisputeView> {
    let (dispute_id, position) = events.iter().find_map(|(event, position)| match event {
        PaymentEvent::PaymentDisputeOpened { dispute_id, .. }
        | PaymentEvent::PaymentDisputeWon { dispute_id, .. }
        | PaymentEvent::PaymentDisputeLost { dispute_id, .. } => Some((*dispute_id, *position)),
        _ => None,
    })?;
    let d = p.disputes.iter().find(|d| d.id == dispute_id)?;
    Some(DisputeView {
        id: d.id,
        object: DisputeObject::Dispute,
        payment_id: p.id,
        amount: d.amount_minor,
        currency: p.amount.currency,
        reason: d.reason.clone(),
        status: d.status,
        created_at: d.opened_at,
        position,
    })
}

/// An API key. Its secret is never stored: `key` is in the answer that
/// created it only (not in a replay of that request, nor anywhere else).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ApiKeyView {
    pub id: ApiKeyId,
    pub object: ApiKeyObject,
    pub role: Role,
    /// The merchant of a `merchant` key; `null` for other roles.
    pub merchant_id: Option<MerchantId>,
    pub revoked: bool,
    /// The secret to send as `Authorization: Bearer <key>`: in the creation's first answer only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    pub position: u64,
}

pub fn api_key(key: &KeyRecord, secret: Option<&str>, position: u64) -> ApiKeyView {
    ApiKeyView {
        id: key.id,
        object: ApiKeyObject::ApiKey,
        role: key.role,
        merchant_id: key.merchant_id,
        revoked: key.revoked,
        key: secret.map(str::to_string),
        position,
    }
}

/// Who appended an event: the API key and its role.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ActorView {
    pub key_id: String,
    pub role: String,
}

/// The envelope's metadata.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct EventMetadataView {
    /// The request that appended it.
    #[schema(value_type = Option<String>, pattern = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")]
    pub correlation_id: Option<Uuid>,
    #[schema(value_type = Option<String>, pattern = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")]
    pub causation_id: Option<Uuid>,
    /// `null` for events the server appended by itself (sweeps, the first admin key).
    pub actor: Option<ActorView>,
}

/// One stored event as an auditor sees it: the envelope, the payload and the
/// hash chain.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct EventView {
    /// Global log position (also the cursor of a page of events).
    pub position: u64,
    pub stream_id: String,
    pub stream_version: u64,
    #[schema(value_type = String, pattern = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")]
    pub event_id: Uuid,
    /// The event type (`PaymentInitiated`, `PaymentCaptured`, ...; docs/events.md).
    #[serde(rename = "type")]
    pub event_type: String,
    pub schema_version: u32,
    pub recorded_at: Timestamp,
    pub metadata: EventMetadataView,
    /// The payload as stored: an object with `type` and the event's fields (docs/events.md).
    #[schema(value_type = Object)]
    pub data: Value,
    /// Hex SHA-256 of the previous event (all zeros for position 1).
    pub prev_hash: String,
    /// Hex SHA-256 over `prev_hash` and this event.
    pub hash: String,
}

/// One stored event as an auditor sees it.
pub fn recorded_event(e: &RecordedEvent) -> EventView {
    let data: Value = serde_json::from_slice(&e.payload).unwrap_or(Value::Null);
    EventView {
        position: e.position,
        stream_id: e.stream_id.clone(),
        stream_version: e.stream_version,
        event_id: e.event_id,
        event_type: e.event_type.clone(),
        schema_version: e.schema_version,
        recorded_at: Timestamp::from_datetime(e.recorded_at),
        metadata: EventMetadataView {
            correlation_id: e.metadata.correlation_id,
            causation_id: e.metadata.causation_id,
            actor: e.metadata.actor.as_ref().map(|a| ActorView { key_id: a.key_id.clone(), role: a.role.clone() }),
        },
        data,
        prev_hash: hex::encode(e.prev_hash),
        hash: hex::encode(e.hash),
    }
}

/// The server is up: the log's head and how far the write side's facts follow it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Health {
    pub status: HealthStatus,
    pub head_position: u64,
    pub facts_position: u64,
}

/// A rebuild was started; its outcome shows in `GET /v1/projections`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ProjectionRebuildView {
    pub object: ProjectionRebuildObject,
    pub projection: ProjectionName,
    /// The projection's status right after the start (state `rebuilding`).
    pub status: Option<ProjectionStatus>,
}
