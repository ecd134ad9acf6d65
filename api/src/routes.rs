//! The route table: every endpoint once, with what the OpenAPI document
//! says about it. The router is built from this table, so a route cannot
//! exist without being documented.

use axum::routing::{delete, get, post, MethodRouter};
use serde_json::{json, Map, Value};

use crate::handlers as h;
use crate::read as r;
use crate::state::AppState;

pub struct Route {
    pub method: &'static str,
    /// OpenAPI and axum share the `{param}` syntax.
    pub path: &'static str,
    pub summary: &'static str,
    pub roles: &'static str,
    /// Name of the request body schema in `schemas()`, if any.
    pub body: Option<&'static str>,
    /// Success status and the response schema name.
    pub success: (u16, &'static str),
    pub handler: fn() -> MethodRouter<AppState>,
}

macro_rules! route {
    ($method:ident $path:literal, $summary:literal, roles: $roles:literal, body: $body:expr, ok: ($status:literal, $schema:literal), $handler:path) => {
        Route {
            method: stringify!($method),
            path: $path,
            summary: $summary,
            roles: $roles,
            body: $body,
            success: ($status, $schema),
            handler: || $method($handler),
        }
    };
}

pub fn routes() -> Vec<Route> {
    vec![
        route!(get "/healthz", "Liveness and log head position", roles: "none", body: None, ok: (200, "Health"), h::healthz),
        route!(post "/v1/merchants", "Onboard a merchant", roles: "admin", body: Some("CreateMerchant"), ok: (201, "Merchant"), h::create_merchant),
        route!(get "/v1/merchants", "List merchants, newest first (cursor pagination; CSV with Accept: text/csv)", roles: "admin, analyst, auditor", body: None, ok: (200, "MerchantList"), r::list_merchants),
        route!(get "/v1/merchants/{id}", "Retrieve a merchant", roles: "admin, merchant (own)", body: None, ok: (200, "Merchant"), h::get_merchant),
        route!(post "/v1/merchants/{id}/suspend", "Suspend a merchant", roles: "admin", body: Some("Reason"), ok: (200, "Merchant"), h::suspend_merchant),
        route!(post "/v1/merchants/{id}/reactivate", "Reactivate a suspended merchant", roles: "admin", body: Some("Reason"), ok: (200, "Merchant"), h::reactivate_merchant),
        route!(post "/v1/merchants/{id}/tier", "Change a merchant's risk tier", roles: "admin", body: Some("ChangeTier"), ok: (200, "Merchant"), h::change_tier),
        route!(post "/v1/merchants/{id}/close", "Close a merchant", roles: "admin", body: Some("Reason"), ok: (200, "Merchant"), h::close_merchant),
        route!(post "/v1/api_keys", "Create an API key (the secret is shown once)", roles: "admin", body: Some("CreateApiKey"), ok: (201, "ApiKey"), h::create_key),
        route!(delete "/v1/api_keys/{id}", "Revoke an API key", roles: "admin", body: None, ok: (200, "ApiKey"), h::revoke_key),
        route!(post "/v1/payments", "Create a payment (risk, authorization, automatic capture)", roles: "merchant", body: Some("CreatePayment"), ok: (201, "Payment"), h::create_payment),
        route!(get "/v1/payments/{id}", "Retrieve a payment", roles: "admin, analyst, auditor, merchant (own)", body: None, ok: (200, "Payment"), h::get_payment),
        route!(get "/v1/payments/{id}/events", "The payment's own history, as stored", roles: "admin, analyst, auditor, merchant (own)", body: None, ok: (200, "EventList"), h::payment_events),
        route!(post "/v1/payments/{id}/capture", "Capture all or part of an authorization", roles: "merchant (own)", body: Some("Capture"), ok: (200, "Payment"), h::capture_payment),
        route!(post "/v1/payments/{id}/void", "Void an authorization before any capture", roles: "merchant (own)", body: Some("Reason"), ok: (200, "Payment"), h::void_payment),
        route!(post "/v1/payments/{id}/refunds", "Refund all or part of what was captured", roles: "merchant (own)", body: Some("Refund"), ok: (201, "Refund"), h::refund_payment),
        route!(post "/v1/payments/{id}/review", "Approve or reject a payment held for review", roles: "admin, analyst", body: Some("Review"), ok: (200, "Payment"), h::review_payment),
        route!(post "/v1/payments/{id}/disputes", "Open a dispute (the acquirer's chargeback notice)", roles: "admin", body: Some("OpenDispute"), ok: (201, "Dispute"), h::open_dispute),
        route!(post "/v1/payments/{id}/disputes/{dispute_id}/resolve", "Record a dispute's outcome", roles: "admin", body: Some("ResolveDispute"), ok: (200, "Dispute"), h::resolve_dispute),
        route!(get "/v1/payments", "Search payments, newest first (cursor pagination; CSV with Accept: text/csv)", roles: "admin, analyst, auditor, merchant (own only)", body: None, ok: (200, "PaymentList"), r::search_payments),
        route!(get "/v1/merchants/{id}/dashboard", "A merchant's dashboard by UTC day and currency (from, to, currency)", roles: "admin, analyst, merchant (own)", body: None, ok: (200, "Dashboard"), r::merchant_dashboard),
        route!(get "/v1/analytics/overview", "Platform totals grouped by day, merchant, tier, method and currency", roles: "admin, analyst", body: None, ok: (200, "Overview"), r::analytics_overview),
        route!(get "/v1/ledger/accounts", "Ledger account balances per currency", roles: "admin, analyst", body: None, ok: (200, "LedgerAccounts"), r::ledger_accounts),
        route!(get "/v1/ledger/trial_balance", "Trial balance: sums to zero in every currency", roles: "admin, analyst", body: None, ok: (200, "TrialBalance"), r::trial_balance),
        route!(get "/v1/ledger/journal", "Journal entries in log order (after, limit)", roles: "admin, analyst, auditor", body: None, ok: (200, "Journal"), r::ledger_journal),
        route!(get "/v1/projections", "Projections: checkpoint, head, lag, state", roles: "admin, analyst", body: None, ok: (200, "ProjectionList"), r::projections_status),
        route!(post "/v1/projections/{name}/rebuild", "Rebuild a projection into a new version in the background; switch once caught up", roles: "admin", body: None, ok: (202, "ProjectionRebuild"), r::rebuild_projection),
        route!(get "/v1/openapi.json", "This document", roles: "none", body: None, ok: (200, "OpenApi"), openapi_handler),
    ]
}

async fn openapi_handler() -> axum::Json<Value> {
    axum::Json(openapi())
}

fn schemas() -> Value {
    let money_amount = json!({"type": "integer", "format": "int64", "description": "minor units (cents, yen, fils)"});
    let currency = json!({"type": "string", "description": "ISO 4217 code", "example": "USD"});
    let reason = json!({"type": "string", "maxLength": 500});
    json!({
        "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "object", "properties": {
            "type": {"type": "string"}, "code": {"type": "string"}, "message": {"type": "string"}, "param": {"type": ["string", "null"]}}}}},
        "Health": {"type": "object"},
        "OpenApi": {"type": "object"},
        "CreateMerchant": {"type": "object", "additionalProperties": false, "required": ["name", "country", "default_currency", "tier", "fees"], "properties": {
            "name": {"type": "string", "maxLength": 200},
            "country": {"type": "string", "description": "ISO 3166-1 alpha-2"},
            "default_currency": currency, "settlement_currency": currency,
            "tier": {"type": "string", "enum": ["A", "B", "C", "D"]},
            "fees": {"type": "object", "required": ["percent_bps", "fixed"], "properties": {
                "percent_bps": {"type": "integer", "minimum": 0, "maximum": 1000}, "fixed": money_amount}}}},
        "Merchant": {"type": "object", "properties": {"id": {"type": "string", "example": "mer_0190..."}, "status": {"type": "string", "enum": ["active", "suspended", "closed"]}, "position": {"type": "integer"}}},
        "Reason": {"type": "object", "additionalProperties": false, "properties": {"reason": reason}},
        "ChangeTier": {"type": "object", "additionalProperties": false, "required": ["tier"], "properties": {"tier": {"type": "string", "enum": ["A", "B", "C", "D"]}, "reason": reason}},
        "CreateApiKey": {"type": "object", "additionalProperties": false, "required": ["role"], "properties": {
            "role": {"type": "string", "enum": ["admin", "merchant", "analyst", "auditor"]}, "merchant_id": {"type": "string"}}},
        "ApiKey": {"type": "object", "properties": {"id": {"type": "string"}, "role": {"type": "string"}, "merchant_id": {"type": ["string", "null"]}, "key": {"type": "string", "description": "only in the creation response"}}},
        "CreatePayment": {"type": "object", "additionalProperties": false, "required": ["amount", "currency", "method"], "properties": {
            "amount": money_amount, "currency": currency,
            "method": {"oneOf": [
                {"type": "object", "required": ["type", "card"], "properties": {"type": {"const": "card"}, "card": {"type": "object", "required": ["number", "exp_month", "exp_year", "cvc"], "properties": {
                    "number": {"type": "string"}, "exp_month": {"type": "integer"}, "exp_year": {"type": "integer"}, "cvc": {"type": "string"}}}}},
                {"type": "object", "required": ["type", "wallet"], "properties": {"type": {"const": "wallet"}, "wallet": {"type": "object", "required": ["provider", "account_id"], "properties": {
                    "provider": {"type": "string", "enum": ["alipay", "wechat_pay", "unionpay_quickpass"]}, "account_id": {"type": "string"}}}}},
                {"type": "object", "required": ["type", "bank_transfer"], "properties": {"type": {"const": "bank_transfer"}, "bank_transfer": {"type": "object", "required": ["bank_code", "account_holder", "account_id"], "properties": {
                    "bank_code": {"type": "string"}, "account_holder": {"type": "string"}, "account_id": {"type": "string"}}}}},
                {"type": "object", "required": ["type", "qr_code"], "properties": {"type": {"const": "qr_code"}, "qr_code": {"type": "object", "required": ["scheme", "payer_id"], "properties": {
                    "scheme": {"type": "string", "enum": ["alipay", "wechat_pay", "unionpay", "emvco"]}, "payer_id": {"type": "string"}}}}},
                {"type": "object", "required": ["type", "nfc"], "properties": {"type": {"const": "nfc"}, "nfc": {"type": "object", "required": ["device_token"], "properties": {
                    "device_token": {"type": "string"}}}}}]},
            "capture": {"type": "string", "enum": ["automatic", "manual"], "default": "automatic"},
            "customer": {"type": "object", "additionalProperties": false, "properties": {"id": {"type": "string"}, "email": {"type": "string"}, "ip": {"type": "string"}, "country": {"type": "string"}}},
            "description": {"type": "string", "maxLength": 1000},
            "metadata": {"type": "object", "maxProperties": 20, "additionalProperties": {"type": "string", "maxLength": 500}}}},
        "Payment": {"type": "object", "properties": {
            "id": {"type": "string", "example": "pay_0190..."},
            "status": {"type": "string", "enum": ["pending", "requires_review", "authorized", "declined", "captured", "voided", "expired", "refunded"]},
            "amount": money_amount, "currency": currency, "amount_capturable": money_amount, "amount_captured": money_amount, "amount_refunded": money_amount,
            "method": {"type": "object", "description": "masked summary: brand and last4 for cards"},
            "risk": {"type": "object", "properties": {"score": {"type": "integer"}, "decision": {"type": "string"}, "rules": {"type": "array", "items": {"type": "string"}}}},
            "decline_code": {"type": ["string", "null"]}, "created_at": {"type": "string", "format": "date-time"}, "position": {"type": "integer"}}},
        "Capture": {"type": "object", "additionalProperties": false, "properties": {"amount": money_amount, "currency": currency, "final": {"type": "boolean"}}},
        "Refund": {"type": "object", "additionalProperties": false, "properties": {"amount": money_amount, "currency": currency, "reason": reason}},
        "Review": {"type": "object", "additionalProperties": false, "required": ["decision"], "properties": {"decision": {"type": "string", "enum": ["approve", "reject"]}, "reason": reason}},
        "OpenDispute": {"type": "object", "additionalProperties": false, "required": ["amount", "reason"], "properties": {"amount": money_amount, "currency": currency, "reason": reason}},
        "ResolveDispute": {"type": "object", "additionalProperties": false, "required": ["outcome"], "properties": {"outcome": {"type": "string", "enum": ["won", "lost"]}}},
        "Dispute": {"type": "object", "properties": {"id": {"type": "string", "example": "dp_0190..."}, "status": {"type": "string", "enum": ["open", "won", "lost"]}}},
        "EventList": {"type": "object", "properties": {"data": {"type": "array", "items": {"type": "object"}}, "has_more": {"type": "boolean"}, "next_cursor": {"type": ["string", "null"]}}},
        "MerchantList": {"type": "object", "properties": {"data": {"type": "array", "items": {"$ref": "#/components/schemas/Merchant"}}, "has_more": {"type": "boolean"}, "next_cursor": {"type": ["string", "null"]}}},
        "PaymentList": {"type": "object", "properties": {"data": {"type": "array", "items": {"type": "object"}}, "has_more": {"type": "boolean"}, "next_cursor": {"type": ["string", "null"]}}},
        "Dashboard": {"type": "object", "properties": {"days": {"type": "array", "items": {"type": "object"}}, "totals": {"type": "array", "items": {"type": "object"}}, "balances": {"type": "array", "items": {"type": "object"}}}},
        "Overview": {"type": "object", "properties": {"rows": {"type": "array", "items": {"type": "object"}}}},
        "LedgerAccounts": {"type": "object", "properties": {"data": {"type": "array", "items": {"type": "object", "properties": {"account": {"type": "string"}, "currency": {"type": "string"}, "debit_minor": {"type": "integer"}, "credit_minor": {"type": "integer"}, "balance_minor": {"type": "integer"}}}}}},
        "TrialBalance": {"type": "object", "properties": {"balanced": {"type": "boolean"}, "currencies": {"type": "array", "items": {"type": "object"}}}},
        "Journal": {"type": "object", "properties": {"data": {"type": "array", "items": {"type": "object"}}, "has_more": {"type": "boolean"}, "next_cursor": {"type": ["string", "null"], "description": "pass as `starting_after` for the next page"}}},
        "ProjectionList": {"type": "object", "properties": {"data": {"type": "array", "items": {"type": "object", "properties": {"name": {"type": "string"}, "checkpoint": {"type": "integer"}, "head": {"type": "integer"}, "lag": {"type": "integer"}, "state": {"type": "string"}}}}}},
        "ProjectionRebuild": {"type": "object"},
    })
}

fn path_parameters(path: &str) -> Vec<Value> {
    path.split('/')
        .filter_map(|segment| segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
        .collect()
}

/// The OpenAPI 3.1 document, generated from the route table.
pub fn openapi() -> Value {
    let error = |description: &str| json!({"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
    let mut paths = Map::new();
    for route in routes() {
        let mut responses = Map::new();
        responses.insert(
            route.success.0.to_string(),
            json!({"description": "success", "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{}", route.success.1)}}}}),
        );
        if route.roles != "none" {
            for (status, description) in [
                ("400", "invalid request (param names the field)"),
                ("401", "missing or invalid API key"),
                ("403", "the key's role may not do this"),
                ("404", "not found, or not this merchant's"),
                ("409", "idempotency key reused with another body, or a conflict"),
                ("413", "body over 1 MiB"),
                ("415", "body not application/json"),
                ("422", "a business rule refused the command (code says which)"),
            ] {
                responses.insert(status.to_string(), error(description));
            }
        }
        let mut operation = json!({
            "summary": route.summary,
            "description": format!("Roles: {}.", route.roles),
            "parameters": path_parameters(route.path),
            "responses": responses,
        });
        if route.roles != "none" {
            operation["security"] = json!([{"bearer": []}]);
            if route.method != "get" {
                if let Some(parameters) = operation["parameters"].as_array_mut() {
                    parameters.push(json!({"name": "Idempotency-Key", "in": "header", "required": false, "schema": {"type": "string", "maxLength": 255}}));
                }
            }
        }
        if let Some(body) = route.body {
            operation["requestBody"] = json!({"required": false, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{body}")}}}});
        }
        let entry = paths.entry(route.path.to_string()).or_insert_with(|| json!({}));
        entry[route.method] = operation;
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "Paystream API", "version": env!("CARGO_PKG_VERSION")},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": schemas(),
        },
        "paths": paths,
    })
}
