//! Request extractors: the caller (API key), the request id and the JSON
//! body, each turning its failure into the one error shape.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use paystream_commands::facts::KeyRecord;
use paystream_commands::services::hash_key;
use paystream_commands::RequestMeta;
use paystream_domain::api_key::Role;
use paystream_domain::id::MerchantId;
use paystream_store::Actor;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::error::ApiError;
use crate::state::AppState;

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Longest Idempotency-Key accepted.
pub const MAX_IDEMPOTENCY_KEY_CHARS: usize = 255;

/// The id of this request, set by the tracing middleware.
#[derive(Debug, Clone, Copy)]
pub struct RequestId(pub Uuid);

/// Who is calling: an authenticated, unrevoked API key.
#[derive(Debug, Clone)]
pub struct Caller {
    pub key: KeyRecord,
    pub request_id: Uuid,
    pub idempotency_key: Option<String>,
}

impl Caller {
    pub fn role(&self) -> Role {
        self.key.role
    }

    /// Fails with 403 unless the caller has one of `roles`.
    pub fn require(&self, roles: &[Role]) -> Result<(), ApiError> {
        if roles.contains(&self.key.role) {
            Ok(())
        } else {
            Err(ApiError::forbidden())
        }
    }

    /// Whether the caller may see objects of `merchant_id`: merchants only
    /// their own; other roles were filtered by `require` already.
    pub fn can_see(&self, merchant_id: MerchantId) -> bool {
        self.key.role != Role::Merchant || self.key.merchant_id == Some(merchant_id)
    }

    /// Idempotency keys are scoped by the key's owner: the merchant for
    /// merchant keys, the key itself otherwise.
    fn idempotency_scope(&self) -> String {
        match self.key.merchant_id {
            Some(merchant_id) => merchant_id.to_string(),
            None => self.key.id.to_string(),
        }
    }

    /// Metadata for the events this request writes. `fingerprint` is the
    /// hash of method, path and body.
    pub fn meta(&self, fingerprint: &str) -> RequestMeta {
        let actor = Actor { key_id: self.key.id.to_string(), role: self.key.role.as_str().to_string() };
        let mut meta = RequestMeta::new(self.request_id, Some(actor));
        meta.idempotency_key = self.idempotency_key.as_ref().map(|key| format!("{}:{key}", self.idempotency_scope()));
        meta.request_fingerprint = Some(fingerprint.to_string());
        meta
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(header::AUTHORIZATION)
            .ok_or_else(|| ApiError::unauthenticated("missing Authorization: Bearer <key> header"))?;
        let secret = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| ApiError::unauthenticated("the Authorization header must be \"Bearer <key>\""))?;
        let key = state
            .services
            .facts
            .key_by_hash(&hash_key(secret))
            .filter(|key| !key.revoked)
            .ok_or_else(|| ApiError::unauthenticated("invalid or revoked API key"))?;
        let request_id = parts.extensions.get::<RequestId>().map_or_else(Uuid::now_v7, |r| r.0);
        let idempotency_key = match parts.headers.get("idempotency-key") {
            None => None,
            Some(value) => {
                let text = value.to_str().ok().map(str::trim).unwrap_or_default();
                if text.is_empty() || text.chars().count() > MAX_IDEMPOTENCY_KEY_CHARS {
                    return Err(ApiError::invalid(
                        "invalid_idempotency_key",
                        "Idempotency-Key must be 1 to 255 visible ASCII characters",
                        "Idempotency-Key",
                    ));
                }
                Some(text.to_string())
            }
        };
        let span = tracing::Span::current();
        span.record("role", key.role.as_str());
        if let Some(merchant_id) = key.merchant_id {
            span.record("merchant_id", merchant_id.to_string());
        }
        Ok(Caller { key, request_id, idempotency_key })
    }
}

/// A JSON body: its parsed value and the hash that identifies the request
/// for idempotency. An empty body reads as `{}`.
pub struct Json<T> {
    pub value: T,
    pub fingerprint: String,
}

pub fn fingerprint(method: &str, path: &str, body: &[u8]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(method.as_bytes());
    hasher.update(b" ");
    hasher.update(path.as_bytes());
    hasher.update(b"\n");
    hasher.update(body);
    hex::encode(hasher.finalize())
}

impl<T: DeserializeOwned> FromRequest<AppState> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let method = request.method().to_string();
        let path = request.uri().path().to_string();
        let content_type =
            request.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_string);
        let bytes = Bytes::from_request(request, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "invalid_request_error",
                    "body_too_large",
                    "the body is over 1 MiB",
                )
            } else {
                ApiError::invalid("invalid_body", "the body could not be read", "body")
            }
        })?;
        let body: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) { b"{}" } else { &bytes };
        if !bytes.iter().all(u8::is_ascii_whitespace) {
            let is_json = content_type
                .as_deref()
                .and_then(|ct| ct.split(';').next())
                .is_some_and(|ct| ct.trim().eq_ignore_ascii_case("application/json"));
            if !is_json {
                return Err(ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "invalid_request_error",
                    "unsupported_media_type",
                    "send the body as Content-Type: application/json",
                ));
            }
        }
        let mut deserializer = serde_json::Deserializer::from_slice(body);
        let value: T = serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
            let param = error.path().to_string();
            let inner = error.into_inner();
            let message = if inner.is_syntax() || inner.is_eof() {
                format!("malformed JSON: {inner}")
            } else {
                inner.to_string()
            };
            let param = match (missing_field(&message), param.as_str()) {
                (Some(field), ".") => field,
                (Some(field), path) => format!("{path}.{field}"),
                (None, ".") => "body".to_string(),
                (None, path) => path.to_string(),
            };
            ApiError::invalid("invalid_body", message, param)
        })?;
        deserializer.end().map_err(|e| ApiError::invalid("invalid_body", format!("malformed JSON: {e}"), "body"))?;
        Ok(Json { value, fingerprint: fingerprint(&method, &path, &bytes) })
    }
}

/// serde names a missing or unknown field only in its message:
/// "missing field `amount`", "unknown field `amout`, expected ...".
fn missing_field(message: &str) -> Option<String> {
    let rest = message.split("field `").nth(1)?;
    Some(rest.split('`').next()?.to_string())
}
