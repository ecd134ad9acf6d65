//! How objects look in API responses. Amounts are integers in minor units;
//! ids carry their prefix; the card shows brand and last four only.

use paystream_commands::facts::KeyRecord;
use paystream_domain::merchant::Merchant;
use paystream_domain::method::MethodSummary;
use paystream_domain::payment::{Payment, PaymentEvent};
use paystream_store::RecordedEvent;
use serde_json::{json, Value};

pub fn merchant(m: &Merchant, position: u64) -> Value {
    json!({
        "id": m.id,
        "object": "merchant",
        "name": m.name,
        "country": m.country,
        "default_currency": m.default_currency,
        "settlement_currency": m.settlement_currency,
        "tier": m.tier,
        "limits": {
            "max_single_payment_major": m.tier.limits().max_single_payment_major,
            "max_daily_volume_major": m.tier.limits().max_daily_volume_major,
        },
        "fees": {"percent_bps": m.fees.percent_bps, "fixed": m.fees.fixed_minor},
        "status": m.status,
        "created_at": m.onboarded_at,
        "position": position,
    })
}

fn method(summary: &MethodSummary) -> Value {
    // The summary is already free of secrets; its JSON is the API's.
    serde_json::to_value(summary).unwrap_or(Value::Null)
}

pub fn payment(p: &Payment, position: u64) -> Value {
    let currency = p.amount.currency;
    json!({
        "id": p.id,
        "object": "payment",
        "merchant_id": p.merchant_id,
        "status": p.status(),
        "amount": p.amount.amount_minor,
        "currency": currency,
        "amount_capturable": p.amount_capturable,
        "amount_captured": p.amount_captured,
        "amount_refunded": p.amount_refunded,
        "amount_refundable": p.amount_refundable(),
        "amount_disputed": p.amount_disputed_open(),
        "amount_dispute_lost": p.amount_dispute_lost(),
        "amount_settled": p.amount_settled,
        "fees": p.fees_charged,
        "capture": p.capture_method,
        "method": method(&p.method),
        "customer": p.customer,
        "description": p.description,
        "metadata": p.metadata,
        "risk": p.risk.as_ref().map(|r| json!({"score": r.score, "decision": r.decision, "rules": r.rules})),
        "decline_code": p.decline_code.map(|c| c.as_str()),
        "acquirer_reference": p.authorization.as_ref().map(|a| a.acquirer_reference.clone()),
        "authorization_expires_at": p.authorization.as_ref().map(|a| a.expires_at),
        "captures": p.captures.iter().map(|c| json!({
            "id": c.id, "amount": c.amount_minor, "fee": c.fee_minor, "created_at": c.captured_at,
        })).collect::<Vec<_>>(),
        "refunds": p.refunds.iter().map(|r| json!({
            "id": r.id, "amount": r.amount_minor, "reason": r.reason, "created_at": r.refunded_at,
        })).collect::<Vec<_>>(),
        "disputes": p.disputes.iter().map(|d| json!({
            "id": d.id, "amount": d.amount_minor, "reason": d.reason, "status": d.status, "created_at": d.opened_at,
        })).collect::<Vec<_>>(),
        "created_at": p.created_at,
        "updated_at": p.updated_at,
        "position": position,
    })
}

/// The refund a request created, from the events it wrote.
pub fn refund(p: &Payment, events: &[(PaymentEvent, u64)]) -> Option<Value> {
    events.iter().find_map(|(event, position)| match event {
        PaymentEvent::PaymentRefunded { refund_id, amount, reason, refunded_at } => Some(json!({
            "id": refund_id,
            "object": "refund",
            "payment_id": p.id,
            "amount": amount.amount_minor,
            "currency": amount.currency,
            "reason": reason,
            "status": "succeeded",
            "created_at": refunded_at,
            "position": position,
        })),
        _ => None,
    })
}

/// The dispute a request opened or resolved, from the events it wrote.
pub fn dispute(p: &Payment, events: &[(PaymentEvent, u64)]) -> Option<Value> {
    let (dispute_id, position) = events.iter().find_map(|(event, position)| match event {
        PaymentEvent::PaymentDisputeOpened { dispute_id, .. }
        | PaymentEvent::PaymentDisputeWon { dispute_id, .. }
        | PaymentEvent::PaymentDisputeLost { dispute_id, .. } => Some((*dispute_id, *position)),
        _ => None,
    })?;
    let d = p.disputes.iter().find(|d| d.id == dispute_id)?;
    Some(json!({
        "id": d.id,
        "object": "dispute",
        "payment_id": p.id,
        "amount": d.amount_minor,
        "currency": p.amount.currency,
        "reason": d.reason,
        "status": d.status,
        "created_at": d.opened_at,
        "position": position,
    }))
}

pub fn api_key(key: &KeyRecord, secret: Option<&str>, position: u64) -> Value {
    let mut view = json!({
        "id": key.id,
        "object": "api_key",
        "role": key.role,
        "merchant_id": key.merchant_id,
        "revoked": key.revoked,
        "position": position,
    });
    if let Some(secret) = secret {
        view["key"] = json!(secret);
    }
    view
}

/// One stored event as an auditor sees it.
pub fn recorded_event(e: &RecordedEvent) -> Value {
    let data: Value = serde_json::from_slice(&e.payload).unwrap_or(Value::Null);
    let recorded_at = paystream_domain::time::Timestamp::from_datetime(e.recorded_at);
    json!({
        "position": e.position,
        "stream_id": e.stream_id,
        "stream_version": e.stream_version,
        "event_id": e.event_id,
        "type": e.event_type,
        "schema_version": e.schema_version,
        "recorded_at": recorded_at,
        "metadata": {
            "correlation_id": e.metadata.correlation_id,
            "causation_id": e.metadata.causation_id,
            "actor": e.metadata.actor.as_ref().map(|a| json!({"key_id": a.key_id, "role": a.role})),
        },
        "data": data,
        "prev_hash": hex::encode(e.prev_hash),
        "hash": hex::encode(e.hash),
    })
}
