//! The one place errors become HTTP responses, all in one shape:
//! `{"error": {"type", "code", "message", "param"}}`.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use paystream_commands::CommandError;
use paystream_domain::{DomainError, ErrorKind};
use paystream_projections::{Lagging, ProjectionError};
use paystream_store::StoreError;
use serde::Serialize;
use serde_json::json;
use utoipa::ToSchema;

/// The one error shape (documents what [`ApiError`] renders).
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Error)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// The family.
    #[serde(rename = "type")]
    pub kind: ErrorType,
    /// The precise reason to branch on (`invalid_body`, `resource_missing`,
    /// `projection_lagging`, a business rule's code from docs/errors.md, ...).
    pub code: String,
    /// A sentence for people.
    pub message: String,
    /// The request field at fault, in dotted form (`method.card.number`), a
    /// query parameter or header name, or `null`.
    pub param: Option<String>,
}

/// The error families.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorType {
    InvalidRequestError,
    AuthenticationError,
    PermissionError,
    IdempotencyError,
    ConflictError,
    RuleError,
    ApiError,
}

/// The `code` of an error response, left in the response's extensions for the
/// request log line (`app::request_span`).
#[derive(Debug, Clone)]
pub struct ErrorCode(pub String);

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub code: String,
    pub message: String,
    pub param: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, code: &str, message: impl Into<String>) -> ApiError {
        ApiError { status, kind, code: code.to_string(), message: message.into(), param: None }
    }

    pub fn with_param(mut self, param: impl Into<String>) -> ApiError {
        self.param = Some(param.into());
        self
    }

    pub fn invalid(code: &str, message: impl Into<String>, param: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", code, message).with_param(param)
    }

    pub fn unauthenticated(message: &str) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "authentication_error", "unauthenticated", message)
    }

    pub fn forbidden() -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "permission_error", "forbidden", "this key's role may not do that")
    }

    pub fn not_found(what: &str) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "invalid_request_error", "resource_missing", format!("no such {what}"))
    }

    pub fn internal() -> ApiError {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "api_error",
            "internal_error",
            "something went wrong on our side",
        )
    }

    pub fn unavailable(code: &str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "api_error", code, message)
    }
}

impl From<DomainError> for ApiError {
    fn from(error: DomainError) -> ApiError {
        let (status, kind) = match error.kind() {
            ErrorKind::InvalidInput => (StatusCode::BAD_REQUEST, "invalid_request_error"),
            ErrorKind::NotFound => (StatusCode::NOT_FOUND, "invalid_request_error"),
            ErrorKind::Rejected => (StatusCode::UNPROCESSABLE_ENTITY, "rule_error"),
        };
        let mut api = ApiError::new(status, kind, error.code(), error.to_string());
        api.param = error.param().map(str::to_string);
        api
    }
}

impl From<CommandError> for ApiError {
    fn from(error: CommandError) -> ApiError {
        match error {
            CommandError::Rejected(domain) => domain.into(),
            CommandError::Conflict { .. } => ApiError::new(
                StatusCode::CONFLICT,
                "conflict_error",
                "concurrent_modification",
                "the object changed concurrently too often; retry the request",
            ),
            CommandError::IdempotencyKeyReused => ApiError::new(
                StatusCode::CONFLICT,
                "idempotency_error",
                "idempotency_key_reused",
                "this Idempotency-Key was already used with a different request",
            ),
            CommandError::Store(StoreError::Invalid(reason)) => {
                ApiError::invalid("invalid_request", format!("request too large for one event: {reason}"), "body")
            }
            other => {
                // Logged once, here; the client sees a generic 500.
                tracing::error!(error = %other, "command failed");
                ApiError::internal()
            }
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> ApiError {
        CommandError::Store(error).into()
    }
}

/// The read side: a bad query is a 400 naming its parameter, a projection behind
/// `min_position` past the wait a 503.
impl From<ProjectionError> for ApiError {
    fn from(error: ProjectionError) -> ApiError {
        match error {
            ProjectionError::InvalidQuery { param, reason } => {
                ApiError::invalid("invalid_query", format!("{param}: {reason}"), param)
            }
            ProjectionError::Building { projection, checkpoint } => ApiError::unavailable(
                "projection_lagging",
                format!(
                    "projection {projection} is being built from the log (at position {checkpoint}) and answers once complete; retry shortly"
                ),
            ),
            ProjectionError::AlreadyRebuilding(name) => ApiError::new(
                StatusCode::CONFLICT,
                "conflict_error",
                "already_rebuilding",
                format!("projection {name} is already rebuilding"),
            ),
            other => {
                tracing::error!(error = %other, "projection query failed");
                ApiError::internal()
            }
        }
    }
}

impl From<Lagging> for ApiError {
    fn from(lagging: Lagging) -> ApiError {
        ApiError::unavailable(
            "projection_lagging",
            format!(
                "projection {} has applied position {} but not yet {}; retry shortly",
                lagging.projection, lagging.checkpoint, lagging.position
            ),
        )
        .with_param("min_position")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body =
            json!({"error": {"type": self.kind, "code": self.code, "message": self.message, "param": self.param}});
        let mut response = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert("www-authenticate", HeaderValue::from_static("Bearer"));
        }
        response.extensions_mut().insert(ErrorCode(self.code));
        response
    }
}
