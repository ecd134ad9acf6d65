//! The ApiKey aggregate: who may call the API, in which role. Key issuance
//! and revocation are events like any other, so an auditor sees who could act
//! when. The secret itself never reaches the log: only its SHA-256 hash.

use serde::{Deserialize, Serialize};

use crate::aggregate::{Aggregate, Context, DomainEvent};
use crate::error::DomainError;
use crate::id::{ApiKeyId, MerchantId};
use crate::merchant::{Merchant, MerchantStatus};
use crate::time::Timestamp;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Role {
    /// The platform operator: everything.
    Admin,
    /// One merchant's server: its own merchant and payments only.
    Merchant,
    /// Reads read models of every merchant; changes nothing (except review decisions).
    Analyst,
    /// Reads the raw log, replays and verifies; changes nothing.
    Auditor,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Merchant => "merchant",
            Role::Analyst => "analyst",
            Role::Auditor => "auditor",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    pub id: ApiKeyId,
    pub role: Role,
    pub merchant_id: Option<MerchantId>,
    /// Hex SHA-256 of the secret.
    pub key_hash: String,
    pub revoked: bool,
    pub created_at: Timestamp,
}

#[derive(Debug, Clone)]
pub enum ApiKeyCommand {
    /// `merchant` is the merchant the key is bound to, as it stands now
    /// (required for the merchant role, refused for the others).
    Issue {
        key_id: ApiKeyId,
        role: Role,
        merchant: Option<Merchant>,
        key_hash: String,
        now: Timestamp,
    },
    Revoke {
        now: Timestamp,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum ApiKeyEvent {
    ApiKeyIssued {
        key_id: ApiKeyId,
        role: Role,
        #[serde(default)]
        merchant_id: Option<MerchantId>,
        key_hash: String,
        issued_at: Timestamp,
    },
    ApiKeyRevoked {
        key_id: ApiKeyId,
        revoked_at: Timestamp,
    },
}

impl DomainEvent for ApiKeyEvent {
    fn event_type(&self) -> &'static str {
        match self {
            ApiKeyEvent::ApiKeyIssued { .. } => "ApiKeyIssued",
            ApiKeyEvent::ApiKeyRevoked { .. } => "ApiKeyRevoked",
        }
    }
}

#[derive(Debug)]
pub struct ApiKeyAggregate;

impl Aggregate for ApiKeyAggregate {
    const STREAM_CATEGORY: &'static str = "apikey";
    type State = Option<ApiKey>;
    type Command = ApiKeyCommand;
    type Event = ApiKeyEvent;

    fn decide(
        state: &Option<ApiKey>,
        command: ApiKeyCommand,
        _context: &Context,
    ) -> Result<Vec<ApiKeyEvent>, DomainError> {
        match (state, command) {
            (Some(_), ApiKeyCommand::Issue { .. }) => Err(DomainError::ApiKeyAlreadyExists),
            (None, ApiKeyCommand::Issue { key_id, role, merchant, key_hash, now }) => {
                let merchant_id = match (role, merchant) {
                    (Role::Merchant, Some(merchant)) if merchant.status == MerchantStatus::Closed => {
                        return Err(DomainError::MerchantClosed)
                    }
                    (Role::Merchant, Some(merchant)) => Some(merchant.id),
                    (Role::Merchant, None) => {
                        return Err(DomainError::InvalidField {
                            param: "merchant_id",
                            reason: "a merchant key needs a merchant_id",
                        })
                    }
                    (_, Some(_)) => {
                        return Err(DomainError::InvalidField {
                            param: "merchant_id",
                            reason: "only merchant keys are bound to a merchant",
                        })
                    }
                    (_, None) => None,
                };
                if key_hash.len() != 64 || !key_hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(DomainError::InvalidField { param: "key_hash", reason: "must be a hex SHA-256" });
                }
                Ok(vec![ApiKeyEvent::ApiKeyIssued { key_id, role, merchant_id, key_hash, issued_at: now }])
            }
            (None, ApiKeyCommand::Revoke { .. }) => Err(DomainError::ApiKeyNotFound),
            (Some(key), ApiKeyCommand::Revoke { .. }) if key.revoked => Err(DomainError::ApiKeyAlreadyRevoked),
            (Some(key), ApiKeyCommand::Revoke { now }) => {
                Ok(vec![ApiKeyEvent::ApiKeyRevoked { key_id: key.id, revoked_at: now }])
            }
        }
    }

    fn evolve(state: Option<ApiKey>, event: &ApiKeyEvent) -> Option<ApiKey> {
        match (state, event) {
            (_, ApiKeyEvent::ApiKeyIssued { key_id, role, merchant_id, key_hash, issued_at }) => Some(ApiKey {
                id: *key_id,
                role: *role,
                merchant_id: *merchant_id,
                key_hash: key_hash.clone(),
                revoked: false,
                created_at: *issued_at,
            }),
            (Some(key), ApiKeyEvent::ApiKeyRevoked { .. }) => Some(ApiKey { revoked: true, ..key }),
            (None, ApiKeyEvent::ApiKeyRevoked { .. }) => None,
        }
    }
}
