//! Every route the suite exercises, as (method, path template) in the
//! OpenAPI syntax. The role matrix (tests/roles.rs) drives each one and
//! checks it covered exactly this table; tests/openapi.rs checks the served
//! OpenAPI document lists exactly these.

pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/healthz"),
    ("POST", "/v1/merchants"),
    ("GET", "/v1/merchants"),
    ("GET", "/v1/merchants/{id}"),
    ("POST", "/v1/merchants/{id}/suspend"),
    ("POST", "/v1/merchants/{id}/reactivate"),
    ("POST", "/v1/merchants/{id}/tier"),
    ("POST", "/v1/merchants/{id}/close"),
    ("POST", "/v1/api_keys"),
    ("DELETE", "/v1/api_keys/{id}"),
    ("POST", "/v1/payments"),
    ("GET", "/v1/payments/{id}"),
    ("GET", "/v1/payments/{id}/events"),
    ("POST", "/v1/payments/{id}/capture"),
    ("POST", "/v1/payments/{id}/void"),
    ("POST", "/v1/payments/{id}/refunds"),
    ("POST", "/v1/payments/{id}/review"),
    ("POST", "/v1/payments/{id}/disputes"),
    ("POST", "/v1/payments/{id}/disputes/{dispute_id}/resolve"),
    ("GET", "/v1/payments"),
    ("GET", "/v1/merchants/{id}/dashboard"),
    ("GET", "/v1/analytics/overview"),
    ("GET", "/v1/ledger/accounts"),
    ("GET", "/v1/ledger/trial_balance"),
    ("GET", "/v1/ledger/journal"),
    ("GET", "/v1/projections"),
    ("POST", "/v1/projections/{name}/rebuild"),
    ("GET", "/v1/openapi.json"),
    ("GET", "/openapi.json"),
];
