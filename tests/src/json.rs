//! Whole-object comparison of JSON responses. The expected value is written
//! out in full; only values that change from run to run (ids, timestamps,
//! positions, references) are patterns:
//!
//! - `"*"` matches any value except `null`;
//! - a string ending in `*` (`"pay_*"`) matches a string with that prefix.
//!
//! Objects must have exactly the same keys, arrays the same length.

use serde_json::Value;

/// Checks `actual` against `expected`; on mismatch panics with every
/// difference (by JSON path) and both documents.
#[track_caller]
pub fn assert_json(actual: &Value, expected: &Value) {
    let mut diffs = Vec::new();
    diff("$", actual, expected, &mut diffs);
    assert!(diffs.is_empty(), "JSON mismatch:\n  {}\nactual:   {}\nexpected: {}", diffs.join("\n  "), actual, expected);
}

/// Whether `actual` matches `expected` (see the module docs).
pub fn matches(actual: &Value, expected: &Value) -> bool {
    let mut diffs = Vec::new();
    diff("$", actual, expected, &mut diffs);
    diffs.is_empty()
}

fn diff(path: &str, actual: &Value, expected: &Value, diffs: &mut Vec<String>) {
    match (actual, expected) {
        (a, Value::String(pattern)) if pattern == "*" => {
            if a.is_null() {
                diffs.push(format!("{path}: expected a value, got null"));
            }
        }
        (Value::String(a), Value::String(pattern)) if pattern.ends_with('*') => {
            if !a.starts_with(&pattern[..pattern.len() - 1]) {
                diffs.push(format!("{path}: expected {pattern:?}, got {a:?}"));
            }
        }
        (Value::Object(a), Value::Object(e)) => {
            for key in e.keys().filter(|k| !a.contains_key(*k)) {
                diffs.push(format!("{path}.{key}: missing"));
            }
            for key in a.keys().filter(|k| !e.contains_key(*k)) {
                diffs.push(format!("{path}.{key}: unexpected (value {})", a[key]));
            }
            for (key, e_value) in e {
                if let Some(a_value) = a.get(key) {
                    diff(&format!("{path}.{key}"), a_value, e_value, diffs);
                }
            }
        }
        (Value::Array(a), Value::Array(e)) => {
            if a.len() != e.len() {
                diffs.push(format!("{path}: expected {} items, got {}: {actual}", e.len(), a.len()));
            } else {
                for (i, (a_item, e_item)) in a.iter().zip(e).enumerate() {
                    diff(&format!("{path}[{i}]"), a_item, e_item, diffs);
                }
            }
        }
        (a, e) => {
            if a != e {
                diffs.push(format!("{path}: expected {e}, got {a}"));
            }
        }
    }
}

/// Merges `patch` into `base`: objects key by key (recursively), anything
/// else replaced. Builds an expected object as "that one, with these changes".
pub fn merge(base: &mut Value, patch: Value) {
    match (base, patch) {
        (Value::Object(base), Value::Object(patch)) => {
            for (key, value) in patch {
                merge(base.entry(key).or_insert(Value::Null), value);
            }
        }
        (base, patch) => *base = patch,
    }
}

/// `base` with `patch` merged in.
pub fn merged(base: &Value, patch: Value) -> Value {
    let mut value = base.clone();
    merge(&mut value, patch);
    value
}

/// Checks that `body` is exactly one error in the API's shape, with the
/// given status-independent `code` and `param`, and returns its message.
#[track_caller]
pub fn assert_error(body: &Value, error_type: &str, code: &str, param: Option<&str>) -> String {
    assert_json(
        body,
        &serde_json::json!({"error": {"type": error_type, "code": code, "message": "*", "param": param}}),
    );
    let message = body["error"]["message"].as_str().expect("message is a string");
    assert!(!message.is_empty(), "empty error message");
    message.to_string()
}
