//! Every answer the suite receives is checked against the OpenAPI document
//! the same server serves: its status must be documented for the operation
//! (method and path template), its content type among the documented ones,
//! and a JSON body must match the documented schema, which is made strict
//! here (no property the schema does not name). The document is fetched and
//! compiled once per server address, and each schema compiled once.
//!
//! Requests to paths the document does not list (the 404 fallback), with a
//! method it does not list for the path (405), are not checked.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::{json, Map, Value};

use crate::http::{Request, Response};

/// One server's document and the validators compiled from it so far.
struct Document {
    /// The OpenAPI document, with `$ref`s rewritten to `#/$defs/...`.
    paths: Map<String, Value>,
    defs: Value,
    validators: Mutex<HashMap<String, Arc<jsonschema::Validator>>>,
}

fn documents() -> &'static Mutex<HashMap<SocketAddr, Arc<Document>>> {
    static DOCUMENTS: OnceLock<Mutex<HashMap<SocketAddr, Arc<Document>>>> = OnceLock::new();
    DOCUMENTS.get_or_init(Default::default)
}

fn document(addr: SocketAddr) -> Arc<Document> {
    if let Some(document) = documents().lock().unwrap().get(&addr) {
        return Arc::clone(document);
    }
    let response = Request::new("GET", "/v1/openapi.json").send_unchecked(addr);
    assert_eq!(response.status, 200, "GET /v1/openapi.json: {}", response.text());
    let text = response.text().replace("#/components/schemas/", "#/$defs/");
    let served: Value = serde_json::from_str(&text).expect("the OpenAPI document is JSON");
    let mut defs = served["components"]["schemas"].clone();
    strict(&mut defs);
    let document = Arc::new(Document {
        paths: served["paths"].as_object().cloned().unwrap_or_default(),
        defs,
        validators: Mutex::new(HashMap::new()),
    });
    documents().lock().unwrap().insert(addr, Arc::clone(&document));
    document
}

/// Makes every object schema closed: `unevaluatedProperties: false` on each
/// schema that names properties or combines others with `allOf`, except the
/// parts of an `allOf` (their parent closes them together).
fn strict(defs: &mut Value) {
    let mut in_all_of = Vec::new();
    collect_all_of_refs(defs, &mut in_all_of);
    if let Some(map) = defs.as_object_mut() {
        for (name, schema) in map.iter_mut() {
            close(schema, in_all_of.contains(name));
        }
    }
}

fn collect_all_of_refs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            if let Some(parts) = map.get("allOf").and_then(Value::as_array) {
                for part in parts {
                    if let Some(name) = part["$ref"].as_str().and_then(|r| r.strip_prefix("#/$defs/")) {
                        out.push(name.to_string());
                    }
                }
            }
            map.values().for_each(|v| collect_all_of_refs(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| collect_all_of_refs(v, out)),
        _ => {}
    }
}

fn close(schema: &mut Value, part_of_all_of: bool) {
    let Some(map) = schema.as_object_mut() else {
        return;
    };
    let names_properties = map.contains_key("properties") || map.contains_key("allOf");
    if names_properties
        && !part_of_all_of
        && !map.contains_key("additionalProperties")
        && !map.contains_key("unevaluatedProperties")
    {
        map.insert("unevaluatedProperties".into(), json!(false));
    }
    for (key, inner) in map.iter_mut() {
        match (key.as_str(), inner) {
            ("allOf", Value::Array(parts)) => parts.iter_mut().for_each(|p| close(p, true)),
            ("properties", Value::Object(properties)) => properties.values_mut().for_each(|p| close(p, false)),
            (_, Value::Array(items)) => items.iter_mut().for_each(|p| close(p, false)),
            (_, inner @ Value::Object(_)) => close(inner, false),
            _ => {}
        }
    }
}

/// The path template of the document that `path` (no query string) matches:
/// a literal match first, then the one with the fewest `{parameters}`.
fn template<'a>(paths: &'a Map<String, Value>, path: &str) -> Option<&'a str> {
    let segments: Vec<&str> = path.split('/').collect();
    paths
        .keys()
        .filter(|template| {
            let parts: Vec<&str> = template.split('/').collect();
            parts.len() == segments.len()
                && parts.iter().zip(&segments).all(|(part, segment)| {
                    part == segment || (part.starts_with('{') && part.ends_with('}') && !segment.is_empty())
                })
        })
        .min_by_key(|template| template.matches('{').count())
        .map(String::as_str)
}

/// Checks `response` to `method path` against the server's document; panics
/// with what does not match.
pub fn check(addr: SocketAddr, method: &str, path: &str, response: &Response) {
    let document = document(addr);
    let path_only = path.split('?').next().unwrap_or(path);
    let Some(template) = template(&document.paths, path_only) else {
        return;
    };
    let Some(operation) = document.paths[template].get(method.to_ascii_lowercase()) else {
        return;
    };
    let what = format!("{method} {path} (operation {template}) answered {}", response.status);
    let documented = &operation["responses"][response.status.to_string()];
    assert!(documented.is_object(), "{what}: the status is not documented; body {}", response.text());
    let content_type = response.header("content-type").unwrap_or_default();
    let media = content_type.split(';').next().unwrap_or_default().trim().to_string();
    if response.body.is_empty() && media.is_empty() {
        return;
    }
    let content = &documented["content"];
    assert!(
        content.get(&media).is_some(),
        "{what}: content type {content_type:?} is not documented (documented: {})",
        content.as_object().map(|c| c.keys().cloned().collect::<Vec<_>>().join(", ")).unwrap_or_default()
    );
    if media != "application/json" {
        return;
    }
    let key = format!("{method} {template} {}", response.status);
    let validator = {
        let mut validators = document.validators.lock().unwrap();
        match validators.get(&key) {
            Some(validator) => Arc::clone(validator),
            None => {
                let mut schema = content[&media]["schema"].clone();
                close(&mut schema, false);
                let root = json!({
                    "$schema": "https://json-schema.org/draft/2020-12/schema",
                    "$defs": document.defs,
                    "allOf": [schema],
                });
                let validator = jsonschema::draft202012::options()
                    .should_validate_formats(true)
                    .build(&root)
                    .unwrap_or_else(|e| panic!("{what}: the schema does not compile: {e}"));
                let validator = Arc::new(validator);
                validators.insert(key, Arc::clone(&validator));
                validator
            }
        }
    };
    let body: Value = serde_json::from_slice(&response.body)
        .unwrap_or_else(|e| panic!("{what}: the body is not JSON ({e}): {}", response.text()));
    let errors: Vec<String> =
        validator.iter_errors(&body).map(|e| format!("{} at {}", e, e.instance_path())).take(10).collect();
    assert!(
        errors.is_empty(),
        "{what}: the body does not match the documented schema:\n  {}\nbody: {body}",
        errors.join("\n  ")
    );
}
