//! Turning stored envelopes into domain events, once per event for all projections.

use paystream_domain::aggregate::stream_uuid;
use paystream_domain::api_key::{ApiKeyAggregate, ApiKeyEvent};
use paystream_domain::id::{MerchantId, PaymentId};
use paystream_domain::merchant::{MerchantAggregate, MerchantEvent};
use paystream_domain::payment::{PaymentAggregate, PaymentEvent};
use paystream_store::{Position, RecordedEvent};

use crate::error::ProjectionError;

/// A domain event with the position it has in the log.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    pub position: Position,
    pub record: DomainRecord,
}

/// The event, by stream category. Streams of other categories decode as `Other`
/// (a projection skips them, but its checkpoint still moves past them).
#[derive(Debug, Clone, PartialEq)]
pub enum DomainRecord {
    Payment { payment_id: PaymentId, event: PaymentEvent },
    Merchant { merchant_id: MerchantId, event: MerchantEvent },
    ApiKey { event: ApiKeyEvent },
    Other,
}

/// Decodes one stored event. A payload of a known category that does not parse is an
/// error: skipping it would silently make every read model wrong.
pub fn decode(event: &RecordedEvent) -> Result<Decoded, ProjectionError> {
    let fail = |detail: String| ProjectionError::Decode { position: event.position, detail };
    let record = if let Some(uuid) = stream_uuid::<PaymentAggregate>(&event.stream_id) {
        let parsed = serde_json::from_slice(&event.payload).map_err(|e| fail(e.to_string()))?;
        DomainRecord::Payment { payment_id: PaymentId::from_uuid(uuid), event: parsed }
    } else if let Some(uuid) = stream_uuid::<MerchantAggregate>(&event.stream_id) {
        let parsed = serde_json::from_slice(&event.payload).map_err(|e| fail(e.to_string()))?;
        DomainRecord::Merchant { merchant_id: MerchantId::from_uuid(uuid), event: parsed }
    } else if stream_uuid::<ApiKeyAggregate>(&event.stream_id).is_some() {
        DomainRecord::ApiKey { event: serde_json::from_slice(&event.payload).map_err(|e| fail(e.to_string()))? }
    } else {
        DomainRecord::Other
    };
    Ok(Decoded { position: event.position, record })
}

/// Decodes a batch read from the log, checking that positions follow each other.
pub fn decode_batch(events: &[RecordedEvent], expected_first: Position) -> Result<Vec<Decoded>, ProjectionError> {
    let mut out = Vec::with_capacity(events.len());
    for (i, event) in events.iter().enumerate() {
        let want = expected_first + i as u64;
        if event.position != want {
            return Err(ProjectionError::Decode {
                position: event.position,
                detail: format!("expected position {want}: the log skipped or repeated an event"),
            });
        }
        out.push(decode(event)?);
    }
    Ok(out)
}
