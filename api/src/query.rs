//! Query-string parameters: read as sent (repeats kept), each parsed with a
//! 400 that names it. Unknown parameters are refused, so a typo never silently
//! widens a query. A multi-valued parameter takes a comma-separated list
//! (`status=captured,refunded`), repeated or not (`status=captured&status=refunded`);
//! any other parameter given twice is refused.

use std::str::FromStr;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use utoipa::openapi::path::ParameterIn;
use utoipa::IntoParams;

use crate::error::ApiError;

/// The query string's `name=value` pairs, in order.
#[derive(Debug, Clone, Default)]
pub struct QueryString(pub Vec<(String, String)>);

impl<S: Send + Sync> FromRequestParts<S> for QueryString {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let raw = parts.uri.query().unwrap_or_default();
        serde_urlencoded::from_str::<Vec<(String, String)>>(raw)
            .map(QueryString)
            .map_err(|_| ApiError::invalid("invalid_query", "the query string could not be read", "query"))
    }
}

/// Which parameters an endpoint takes, and which of them are lists: read from
/// the endpoint's documented parameters ([`Spec::of`]), so an endpoint accepts
/// exactly what its OpenAPI document lists.
#[derive(Debug, Clone, Default)]
pub struct Spec {
    pub single: Vec<String>,
    pub multi: Vec<String>,
}

impl Spec {
    /// The query parameters `P` documents: an array-typed one takes several values.
    pub fn of<P: IntoParams>() -> Spec {
        let mut spec = Spec::default();
        for parameter in P::into_params(|| Some(ParameterIn::Query)) {
            let schema = serde_json::to_value(&parameter.schema).unwrap_or_default();
            let is_array = match &schema["type"] {
                serde_json::Value::String(kind) => kind == "array",
                serde_json::Value::Array(kinds) => kinds.iter().any(|k| k == "array"),
                _ => false,
            };
            if is_array {
                spec.multi.push(parameter.name);
            } else {
                spec.single.push(parameter.name);
            }
        }
        spec
    }
}

/// The parameters of one request, checked against its endpoint's [`Spec`].
pub struct Params(Vec<(String, String)>);

impl Params {
    pub fn new(QueryString(raw): QueryString, spec: &Spec) -> Result<Params, ApiError> {
        for (i, (name, _)) in raw.iter().enumerate() {
            let multi = spec.multi.contains(name);
            if !multi && !spec.single.contains(name) {
                return Err(ApiError::invalid(
                    "unknown_parameter",
                    format!("unknown query parameter {name}"),
                    name.clone(),
                ));
            }
            if !multi && raw[..i].iter().any(|(earlier, _)| earlier == name) {
                return Err(ApiError::invalid("invalid_query", format!("{name} may be given once only"), name.clone()));
            }
        }
        Ok(Params(raw))
    }

    /// A single parameter's value; an empty value is no value.
    pub fn text(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str()).filter(|v| !v.is_empty())
    }

    /// Every value of a multi-valued parameter: each occurrence split at commas,
    /// blanks trimmed, empty items left out.
    pub fn list(&self, name: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(n, _)| n == name)
            .flat_map(|(_, v)| v.split(','))
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .collect()
    }

    pub fn parse<T: FromStr>(&self, name: &'static str, what: &str) -> Result<Option<T>, ApiError> {
        self.text(name).map(|v| v.parse::<T>().map_err(|_| invalid(name, what))).transpose()
    }

    /// Every value of a multi-valued parameter, parsed.
    pub fn parse_list<T>(
        &self,
        name: &'static str,
        what: &str,
        parse: impl Fn(&str) -> Option<T>,
    ) -> Result<Vec<T>, ApiError> {
        self.list(name).into_iter().map(|v| parse(v).ok_or_else(|| invalid(name, what))).collect()
    }

    /// `limit`: `default` when absent, else 1 to `max`.
    pub fn limit(&self, default: usize, max: usize) -> Result<usize, ApiError> {
        let what = format!("an integer from 1 to {max}");
        match self.parse::<usize>("limit", &what)? {
            None => Ok(default),
            Some(limit) if (1..=max).contains(&limit) => Ok(limit),
            Some(_) => Err(ApiError::invalid("invalid_query", format!("limit: must be 1 to {max}"), "limit")),
        }
    }

    pub fn min_position(&self) -> Result<Option<u64>, ApiError> {
        self.parse("min_position", "a log position (integer)")
    }
}

fn invalid(name: &'static str, what: &str) -> ApiError {
    ApiError::invalid("invalid_query", format!("{name} must be {what}"), name)
}
