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
    /// hash of method, path and the canonical body ([`Fingerprint::canonical`]);
    /// only a request with an Idempotency-Key stores it (it is what a retry is
    /// compared with).
    pub fn meta(&self, fingerprint: &str) -> RequestMeta {
        let actor = Actor { key_id: self.key.id.to_string(), role: self.key.role.as_str().to_string() };
        let mut meta = RequestMeta::new(self.request_id, Some(actor));
        meta.idempotency_key = self.idempotency_key.as_ref().map(|key| format!("{}:{key}", self.idempotency_scope()));
        meta.request_fingerprint = meta.idempotency_key.is_some().then(|| fingerprint.to_string());
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
                if text.is_empty()
                    || text.chars().count() > MAX_IDEMPOTENCY_KEY_CHARS
                    || !text.bytes().all(|b| b.is_ascii_graphic())
                {
                    return Err(ApiError::invalid(
                        "invalid_idempotency_key",
                        "Idempotency-Key must be 1 to 255 visible ASCII characters",
                        "Idempotency-Key",
                    ));
                }
                if redact_digits(text) != text {
                    return Err(ApiError::invalid(
                        "invalid_idempotency_key",
                        "Idempotency-Key must not contain a run of 12 or more digits (it could be a card number)",
                        "Idempotency-Key",
                    ));
                }
                Some(text.to_string())
            }
        };
        let span = tracing::Span::current();
        span.record("role", key.role.as_str());
        span.record("key_id", tracing::field::display(&key.id));
        if let Some(merchant_id) = key.merchant_id {
            span.record("merchant_id", merchant_id.to_string());
        }
        Ok(Caller { key, request_id, idempotency_key })
    }
}

/// A request body, read (at most 1 MiB, JSON content type) but not parsed:
/// handlers check the caller's role first, then call [`Body::json`]. The
/// fingerprint identifies the request for idempotency; it is computed only
/// for a request with an Idempotency-Key (empty otherwise). An empty body
/// reads as `{}`.
pub struct Body {
    bytes: Bytes,
    pub fingerprint: Fingerprint,
}

/// What identifies a request for idempotency: the SHA-256 of its method, path
/// and the canonical JSON of its body ([`canonical_json`]), so the same request
/// with its keys in another order or other whitespace is the same request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    /// Stored with the request's first event.
    pub canonical: String,
    /// The fingerprint of the exact bytes, as stored before fingerprints were
    /// canonical: a retry of a request first sent to an older server, within
    /// the idempotency window, still replays.
    pub legacy: String,
}

impl Fingerprint {
    /// Every stored fingerprint that names this request.
    pub fn candidates(&self) -> [&str; 2] {
        [&self.canonical, &self.legacy]
    }
}

fn sha256_request(method: &str, path: &str, body: &[u8]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(method.as_bytes());
    hasher.update(b" ");
    hasher.update(path.as_bytes());
    hasher.update(b"\n");
    hasher.update(body);
    hex::encode(hasher.finalize())
}

/// The fingerprint of a request: method, path and the canonical JSON of its
/// body. A body that is empty (or only whitespace) is `{}`, as [`Body::json`]
/// reads it; a body that is not JSON (the request then fails with a 400 and
/// writes nothing) is fingerprinted as sent.
pub fn fingerprint(method: &str, path: &str, body: &[u8]) -> Fingerprint {
    let legacy = sha256_request(method, path, body);
    let trimmed = body.trim_ascii();
    let canonical = if trimmed.is_empty() {
        sha256_request(method, path, b"{}")
    } else {
        match serde_json::from_slice::<serde_json::Value>(trimmed) {
            Ok(value) => sha256_request(method, path, canonical_json(&value).as_bytes()),
            Err(_) => legacy.clone(),
        }
    };
    Fingerprint { canonical, legacy }
}

/// The canonical form of a JSON value: object keys sorted (by their UTF-8
/// bytes) at every depth, no whitespace, strings and numbers as serde_json
/// writes them once parsed (so `"\u0041"` is `"A"`, `1.50` is `1.5`, and `1`
/// and `1.0` stay different numbers).
pub fn canonical_json(value: &serde_json::Value) -> String {
    fn write(value: &serde_json::Value, out: &mut String) {
        match value {
            serde_json::Value::Object(map) => {
                let mut entries: Vec<_> = map.iter().collect();
                entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
                out.push('{');
                for (i, (key, inner)) in entries.into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&serde_json::Value::String(key.clone()).to_string());
                    out.push(':');
                    write(inner, out);
                }
                out.push('}');
            }
            serde_json::Value::Array(items) => {
                out.push('[');
                for (i, inner) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write(inner, out);
                }
                out.push(']');
            }
            scalar => out.push_str(&scalar.to_string()),
        }
    }
    let mut out = String::new();
    write(value, &mut out);
    out
}

impl FromRequest<AppState> for Body {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let method = request.method().to_string();
        let path = request.uri().path().to_string();
        let keyed = request.headers().contains_key("idempotency-key");
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
        let fingerprint = if keyed {
            fingerprint(&method, &path, &bytes)
        } else {
            Fingerprint { canonical: String::new(), legacy: String::new() }
        };
        Ok(Body { bytes, fingerprint })
    }
}

impl Body {
    /// Parses the body as `T`. Errors name the field in `param` (`amount`,
    /// `method.card.number`, or `body` for malformed JSON) and never echo a
    /// long digit run from the input.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, ApiError> {
        let trimmed = self.bytes.trim_ascii();
        let body: &[u8] = if trimmed.is_empty() { b"{}" } else { trimmed };
        if body.first() != Some(&b'{') {
            return Err(ApiError::invalid("invalid_body", "the body must be a JSON object", "body"));
        }
        let mut deserializer = serde_json::Deserializer::from_slice(body);
        let value: T = serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
            let path = error.path().to_string();
            let inner = error.into_inner();
            if inner.is_syntax() || inner.is_eof() {
                return ApiError::invalid("invalid_body", redact_digits(&format!("malformed JSON: {inner}")), "body");
            }
            let message = redact_digits(&inner.to_string());
            // serde names a missing field only in its message; an unknown
            // field is already the last element of the path.
            let param = match (missing_field(&message), path.as_str()) {
                (Some(field), ".") => field,
                (Some(field), path) => format!("{path}.{field}"),
                (None, ".") => "body".to_string(),
                (None, path) => path.to_string(),
            };
            ApiError::invalid("invalid_body", message, param)
        })?;
        deserializer
            .end()
            .map_err(|e| ApiError::invalid("invalid_body", redact_digits(&format!("malformed JSON: {e}")), "body"))?;
        Ok(value)
    }
}

/// "missing field `amount`" -> `amount`.
fn missing_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("missing field `")?;
    Some(rest.split('`').next()?.to_string())
}

/// Digit runs this long could be a card number (12 to 19 digits).
const REDACT_DIGITS_FROM: usize = 12;

/// Replaces every run of 12 or more digits with `[redacted]`, so no text
/// that echoes client input (error messages, logged paths) can carry a card
/// number.
pub fn redact_digits(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        if run.len() >= REDACT_DIGITS_FROM {
            out.push_str("[redacted]");
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for c in text.chars() {
        if c.is_ascii_digit() {
            run.push(c);
        } else {
            flush(&mut run, &mut out);
            out.push(c);
        }
    }
    flush(&mut run, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::{canonical_json, fingerprint, redact_digits};

    #[test]
    fn the_same_json_in_another_form_has_the_same_fingerprint() {
        let a = fingerprint(
            "POST",
            "/v1/payments",
            br#"{"amount": 100, "currency": "USD", "m": {"b": 1, "a": [2, {"y": 1, "x": 2}]}}"#,
        );
        let b = fingerprint(
            "POST",
            "/v1/payments",
            b"{\"m\":{\"a\":[2,{\"x\":2,\"y\":1}],\"b\":1},\n \"currency\":\"\\u0055SD\",\"amount\":100}",
        );
        assert_eq!(a.canonical, b.canonical);
        assert_ne!(a.legacy, b.legacy);
        let other = fingerprint(
            "POST",
            "/v1/payments",
            br#"{"amount": 101, "currency": "USD", "m": {"b": 1, "a": [2, {"y": 1, "x": 2}]}}"#,
        );
        assert_ne!(a.canonical, other.canonical);
        // Array order is meaning; so is the path.
        assert_ne!(fingerprint("POST", "/x", b"[1,2]").canonical, fingerprint("POST", "/x", b"[2,1]").canonical);
        assert_ne!(fingerprint("POST", "/x", b"{}").canonical, fingerprint("POST", "/y", b"{}").canonical);
        // No body is `{}`.
        assert_eq!(fingerprint("POST", "/x", b"").canonical, fingerprint("POST", "/x", b" { } ").canonical);
        assert_eq!(
            canonical_json(&serde_json::json!({"b": [1.5, null, true], "a": "é"})),
            "{\"a\":\"é\",\"b\":[1.5,null,true]}"
        );
    }

    #[test]
    fn long_digit_runs_are_redacted() {
        assert_eq!(redact_digits("integer `4242424242424242`, expected"), "integer `[redacted]`, expected");
        assert_eq!(redact_digits("/v1/payments/4242424242424242/x"), "/v1/payments/[redacted]/x");
        assert_eq!(redact_digits("amount 12345678901 ok"), "amount 12345678901 ok");
        assert_eq!(redact_digits("pay_01a21a61f736701dab0bfdf21188fa44"), "pay_01a21a61f736701dab0bfdf21188fa44");
    }
}
