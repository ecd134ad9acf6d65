//! The one list shape every list answers:
//! `{"object": "list", "data": [...], "has_more": bool, "next_cursor": string|null}`,
//! or, for `Accept: text/csv`, one CSV line per item. `next_cursor` is opaque:
//! pass it back as `starting_after` for the next page. It is `null` exactly when
//! `has_more` is `false`, and whenever it is set the `Paystream-Next-Cursor`
//! response header carries the same value (JSON and CSV alike).

use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use paystream_projections::ProjectionError;
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::ApiError;

/// Carries the `next_cursor` of a list page, in JSON and CSV answers alike.
pub const NEXT_CURSOR_HEADER: &str = "paystream-next-cursor";

/// The `object` of every list: always `"list"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ListObject {
    List,
}

/// A page of a list.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct List<T> {
    pub object: ListObject,
    pub data: Vec<T>,
    /// Whether a next page exists (then `next_cursor` is set).
    pub has_more: bool,
    /// Opaque: pass as `starting_after` for the next page; `null` exactly when `has_more` is `false`.
    pub next_cursor: Option<String>,
}

impl<T> List<T> {
    /// A page followed by the page `next_cursor` names, if any.
    pub fn page(data: Vec<T>, next_cursor: Option<String>) -> List<T> {
        List { object: ListObject::List, data, has_more: next_cursor.is_some(), next_cursor }
    }

    /// A whole list in one page.
    pub fn all(data: Vec<T>) -> List<T> {
        List::page(data, None)
    }
}

/// Whether the client asked for CSV (`Accept: text/csv`).
pub fn wants_csv(headers: &HeaderMap) -> bool {
    headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|accept| accept.contains("text/csv"))
}

/// JSON, or, when the client asked for it, the CSV that `csv` writes.
pub fn respond(
    headers: &HeaderMap,
    body: &impl Serialize,
    csv: impl FnOnce(&mut Vec<u8>) -> Result<(), ProjectionError>,
) -> Result<Response, ApiError> {
    if wants_csv(headers) {
        let mut out = Vec::new();
        csv(&mut out)?;
        return Ok(([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], out).into_response());
    }
    let value = serde_json::to_value(body).map_err(|_| ApiError::internal())?;
    Ok(axum::Json(value).into_response())
}

/// A list page as JSON or CSV ([`respond`]), with its cursor in the
/// [`NEXT_CURSOR_HEADER`] when there is a next page.
pub fn respond_list<T: Serialize>(
    headers: &HeaderMap,
    body: &impl Serialize,
    list: &List<T>,
    csv: impl FnOnce(&mut Vec<u8>) -> Result<(), ProjectionError>,
) -> Result<Response, ApiError> {
    let mut response = respond(headers, body, csv)?;
    if let Some(value) = list.next_cursor.as_deref().and_then(|c| HeaderValue::from_str(c).ok()) {
        response.headers_mut().insert(NEXT_CURSOR_HEADER, value);
    }
    Ok(response)
}
