//! The OpenAPI document as clients and schemathesis read it.
//!
//! utoipa derives the skeleton from the handlers and types in `api`; this
//! module completes it so that the document describes exactly what the
//! daemon answers:
//! - request bodies carry the rules the handlers enforce (non-blank texts,
//!   lengths as sent, IANA zone names, language tags, E.164 numbers, an
//!   email or a phone, the address a chosen channel needs), so a body the
//!   schema admits is accepted and one it forbids is refused;
//! - every status a route can answer is listed with its body and content
//!   type (the JSON error shape, plain text, TwiML, HTML);
//! - the routes outside `api` are described too: Twilio's webhooks, the
//!   unsubscribe link, `/metrics`, `/-/reload`, `/-/backup`, and this
//!   document itself.
//!
//! It touches only the document, never a handler.

use serde_json::{Map, Value, json};
use utoipa::OpenApi;

use super::{ApiDoc, MAX_BODY};

/// Whitespace as Rust's `str::trim` sees it (Unicode `White_Space`), as
/// the inside of a character class.
const WHITE_SPACE: &str =
    "\\t-\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000";

/// `Idempotency-Key`: 1 to 255 visible ASCII characters (HTTP strips
/// surrounding blanks, so the first and last are not blank).
const IDEMPOTENCY_KEY: &str = "^[!-~]([\\t -~]{0,253}[!-~])?$";

/// A language tag as `domain::Locale` parses it.
const LOCALE: &str = "^[A-Za-z]{2,3}([-_][A-Za-z0-9]{2,8})*$";

/// E.164 as `domain::E164` checks its shape; the number must also be
/// valid in its country's numbering plan (`format: e164`).
const E164: &str = "^\\+[0-9]{1,15}$";

use crate::http::consent::DELIVERY_STATUSES;

/// The document served at `/openapi.json`.
pub fn document() -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi())
        .unwrap_or_else(|e| unreachable!("the generated document always serializes: {e}"));
    request_schemas(&mut doc);
    case_operations(&mut doc);
    other_operations(&mut doc);
    doc
}

/// A text the handlers trim: it must hold one character that is not
/// white space, and its length counts as sent.
fn text(max: usize) -> Value {
    json!({"type": "string", "minLength": 1, "maxLength": max, "pattern": format!("[^{WHITE_SPACE}]")})
}

/// A blank string, which the handlers read as no value.
fn blank() -> Value {
    json!({"type": "string", "pattern": format!("^[{WHITE_SPACE}]*$")})
}

fn email() -> Value {
    json!({"type": "string", "format": "email", "maxLength": 254})
}

fn phone() -> Value {
    json!({"type": "string", "format": "e164", "pattern": E164})
}

fn request_schemas(doc: &mut Value) {
    let zones: Vec<&str> = chrono_tz::TZ_VARIANTS.iter().map(|z| z.name()).collect();
    let schemas = &mut doc["components"]["schemas"];
    schemas["CaseInput"] = json!({
        "type": "object",
        "description": "The body of `PUT /v1/cases/{id}`.",
        "additionalProperties": false,
        "required": ["subject", "customer"],
        "properties": {
            "subject": text(500),
            "status": {"$ref": "#/components/schemas/Status"},
            "priority": {"$ref": "#/components/schemas/Priority"},
            "customer": {"$ref": "#/components/schemas/CustomerInput"},
            "cc": {
                "description": "People copied on the case: each gets the customer's messages in their own language and zone, on their own channels.",
                "type": "array",
                "maxItems": crate::domain::MAX_CC,
                "items": {"$ref": "#/components/schemas/CustomerInput"}
            },
            "assignee": {"type": ["string", "null"], "maxLength": 200},
            "eta": {"type": ["string", "null"], "format": "date-time"},
            "tags": {"type": "array", "maxItems": 50, "items": text(100)},
            "fields": {"type": "object", "maxProperties": 100},
        }
    });
    // An address is required for each channel the customer chose, and at
    // least one address at all; a blank address counts as none.
    let has =
        |field: &str, value: Value| json!({"required": [field], "properties": {field: value}});
    let channel_needs = |channel: &str, field: &str, value: Value| {
        json!({
            "if": {
                "required": ["channels"],
                "properties": {"channels": {"type": "array", "contains": {"const": channel}}}
            },
            "then": has(field, value)
        })
    };
    schemas["CustomerInput"] = json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["name"],
        "properties": {
            "name": text(200),
            "email": {"anyOf": [email(), blank(), {"type": "null"}]},
            "phone": {"anyOf": [phone(), blank(), {"type": "null"}]},
            "timezone": {
                "description": "IANA time zone; the configured default when absent.",
                "enum": zones.into_iter().map(Value::from).chain([Value::Null]).collect::<Vec<_>>(),
                "example": "America/New_York"
            },
            "locale": {
                "description": "Language tag; the configured default when absent.",
                "type": ["string", "null"],
                "pattern": LOCALE,
                "example": "en"
            },
            "channels": {
                "description": "Allowed channels in order of preference; when absent, email and sms where there is an address (whatsapp only when named).",
                "type": ["array", "null"],
                "items": {"$ref": "#/components/schemas/Channel"}
            }
        },
        "allOf": [
            {"anyOf": [has("email", email()), has("phone", phone())]},
            channel_needs("email", "email", email()),
            channel_needs("sms", "phone", phone()),
            channel_needs("whatsapp", "phone", phone()),
        ]
    });
    let variant = |kind: &str, description: &str, required: &[&str], props: Value| {
        let mut properties = props.as_object().cloned().unwrap_or_default();
        properties.insert("type".into(), json!({"const": kind}));
        let mut req = vec![Value::from("type")];
        req.extend(required.iter().map(|r| Value::from(*r)));
        json!({
            "type": "object",
            "description": description,
            "additionalProperties": false,
            "required": req,
            "properties": properties
        })
    };
    schemas["EventInput"] = json!({
        "description": "An event a ticket system reports on a case.",
        "oneOf": [
            variant("note", "A public agent note; the customer hears of it when a `note` message is configured.",
                &["body"],
                json!({"body": text(10_000), "author": {"type": ["string", "null"], "maxLength": 200}})),
            variant("agent_reply", "An agent answered the customer directly: the update clock starts again.",
                &[], json!({})),
            variant("status", "The case moved to another status.",
                &["status"], json!({"status": {"$ref": "#/components/schemas/Status"}})),
            variant("eta", "A new estimate of when the case will be solved (`null` clears it).",
                &[], json!({"eta": {"type": ["string", "null"], "format": "date-time"}})),
        ]
    });
}

fn error_ref() -> Value {
    json!({"$ref": "#/components/schemas/ErrorBody"})
}

fn json_error(description: &str) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": error_ref()}}})
}

fn unauthorized() -> Value {
    let mut r = json_error("No token, or not a valid one");
    r["headers"] = json!({"WWW-Authenticate": {"schema": {"type": "string", "const": "Bearer"}}});
    r
}

fn plain(description: &str) -> Value {
    json!({"description": description, "content": {"text/plain": {"schema": {"type": "string"}}}})
}

fn html(description: &str) -> Value {
    json!({"description": description, "content": {"text/html": {"schema": {"type": "string"}}}})
}

fn responses(op: &mut Value, list: &[(&str, Value)]) {
    let map = op["responses"]
        .as_object_mut()
        .map(std::mem::take)
        .unwrap_or_default();
    let mut out = Map::new();
    for (code, body) in list {
        // Keep what utoipa wrote for a status (its description and body)
        // unless this module says more.
        let merged = match (map.get(*code), body) {
            (Some(old), Value::Null) => old.clone(),
            (_, new) => new.clone(),
        };
        out.insert((*code).to_owned(), merged);
    }
    op["responses"] = Value::Object(out);
}

fn case_operations(doc: &mut Value) {
    let replayed = json!({
        "Idempotent-Replayed": {
            "description": "Present when this is the stored answer to an earlier request with the same Idempotency-Key",
            "schema": {"type": "string", "const": "true"}
        }
    });
    let too_large = json_error(&format!("The body is over {MAX_BODY} bytes"));
    let bad_request = json_error("The body is not JSON, or the Idempotency-Key is not usable");
    let invalid = json_error("A field, or the case id, is not valid; `field` names it");
    let not_found = json_error("No such case for this token's source");
    let conflict = json_error("The Idempotency-Key was used for a different request");
    let unavailable = json_error("The store cannot take the request now; retry later");
    let paths = &mut doc["paths"];
    for (path, method) in [
        ("/v1/cases/{id}", "put"),
        ("/v1/cases/{id}", "get"),
        ("/v1/cases/{id}", "delete"),
        ("/v1/cases/{id}/events", "post"),
    ] {
        let op = &mut paths[path][method];
        for p in op["parameters"].as_array_mut().into_iter().flatten() {
            if p["name"] == "Idempotency-Key" {
                p["schema"] = json!({"type": "string", "pattern": IDEMPOTENCY_KEY});
            }
        }
        let mut list: Vec<(&str, Value)> = match method {
            "put" => vec![("200", Value::Null), ("201", Value::Null)],
            "post" | "get" => vec![("200", Value::Null)],
            _ => vec![("204", Value::Null)],
        };
        if matches!(method, "put" | "post") {
            list.push(("400", bad_request.clone()));
        }
        list.push(("401", unauthorized()));
        if method != "put" {
            list.push(("404", not_found.clone()));
        }
        if matches!(method, "put" | "post") {
            list.push(("409", conflict.clone()));
            list.push(("413", too_large.clone()));
        }
        list.push(("422", invalid.clone()));
        list.push(("503", unavailable.clone()));
        responses(op, &list);
        if matches!(method, "put" | "post") {
            for code in ["200", "201"] {
                if op["responses"].get(code).is_some() {
                    op["responses"][code]["headers"] = replayed.clone();
                }
            }
        }
    }
    for (path, method) in [("/healthz", "get"), ("/readyz", "get")] {
        let op = &mut paths[path][method];
        for code in ["200", "503"] {
            if let Some(r) = op["responses"].get_mut(code) {
                r["content"] = json!({"text/plain": {"schema": {"type": "string"}}});
            }
        }
    }
}

fn other_operations(doc: &mut Value) {
    let bearer = json!([{"bearer": []}]);
    let signature = json!({
        "name": "X-Twilio-Signature", "in": "header", "required": false,
        "description": "Twilio's HMAC-SHA1 signature of the URL and parameters; requests without a valid one are refused with 403",
        "schema": {"type": "string"}
    });
    let form = |required: &[&str], props: Value| {
        json!({
            "required": true,
            "content": {"application/x-www-form-urlencoded": {"schema": {
                "type": "object", "required": required, "properties": props,
                "additionalProperties": {"type": "string"}
            }}}
        })
    };
    let refused =
        plain("The X-Twilio-Signature is missing or wrong, or no Twilio auth token is configured");
    let too_large = plain(&format!("The body is over {MAX_BODY} bytes"));
    let unavailable = plain("The store cannot take the request now; retry later");
    let paths = doc["paths"].as_object_mut();
    let Some(paths) = paths else { return };
    paths.insert(
        "/openapi.json".into(),
        json!({"get": {
            "tags": ["operations"], "operationId": "openapi",
            "summary": "This document.",
            "responses": {"200": {"description": "The OpenAPI document",
                "content": {"application/json": {"schema": {"type": "object"}}}}}
        }}),
    );
    paths.insert(
        "/metrics".into(),
        json!({"get": {
            "tags": ["operations"], "operationId": "metrics",
            "summary": "Prometheus metrics (text exposition format 0.0.4).",
            "responses": {"200": {"description": "The series",
                "content": {"text/plain": {"schema": {"type": "string"}}}}}
        }}),
    );
    paths.insert(
        "/-/reload".into(),
        json!({"post": {
            "tags": ["operations"], "operationId": "reload",
            "summary": "Reload config, rules and templates (admin token).",
            "security": bearer,
            "responses": {
                "200": {"description": "Reloaded", "content": {"application/json": {"schema": {
                    "type": "object", "required": ["rescheduled", "needs_restart"],
                    "properties": {
                        "rescheduled": {"type": "integer", "minimum": 0},
                        "needs_restart": {"type": "array", "items": {"type": "string"}}
                    }
                }}}},
                "401": unauthorized(),
                "403": json_error("The admin endpoints are off: no admin token is configured"),
                "422": json_error("The new configuration is not valid; the running one stays"),
                "503": json_error("The store failed during the reload"),
            }
        }}),
    );
    paths.insert("/-/backup".into(), json!({"post": {
        "tags": ["operations"], "operationId": "backup",
        "summary": "A consistent copy of the store, as `tidings restore` reads it (admin token).",
        "security": bearer,
        "responses": {
            "200": {"description": "The backup file",
                "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
            "401": unauthorized(),
            "403": json_error("The admin endpoints are off: no admin token is configured"),
            "503": json_error("The store could not be copied"),
        }
    }}));
    let inbound = |operation: &str, tag: &str, summary: &str| {
        json!({"post": {
            "tags": [tag], "operationId": operation,
            "summary": summary,
            "parameters": [signature.clone()],
            "requestBody": form(&["From"], json!({"From": {"type": "string", "minLength": 1}, "Body": {"type": "string"}})),
            "responses": {
                "200": {"description": "TwiML: empty, or the HELP reply",
                    "content": {"text/xml": {"schema": {"type": "string"}}}},
                "403": refused.clone(),
                "413": too_large.clone(),
                "422": plain("`From` is missing"),
                "503": unavailable.clone(),
            }
        }})
    };
    paths.insert(
        "/v1/sms/inbound".into(),
        inbound(
            "sms_inbound",
            "sms",
            "Twilio's inbound-message webhook: STOP, START and HELP keywords (a `From` of `whatsapp:+…` is a WhatsApp message).",
        ),
    );
    paths.insert(
        "/v1/whatsapp/inbound".into(),
        inbound(
            "whatsapp_inbound",
            "whatsapp",
            "Twilio's inbound WhatsApp webhook: opens the 24-hour window; STOP, START and HELP keywords for WhatsApp.",
        ),
    );
    paths.insert(
        "/v1/sms/status".into(),
        json!({"post": {
            "tags": ["sms"], "operationId": "sms_status",
            "summary": "Twilio's delivery-report callback for a message tidings sent.",
            "parameters": [
                signature,
                {"name": "source", "in": "query", "required": true, "schema": {"type": "string"},
                 "description": "The case's source, as tidings put it in the callback URL"},
                {"name": "case", "in": "query", "required": true,
                 "description": "The case id (not only dots)",
                 "schema": {"type": "string", "maxLength": 128,
                    "pattern": "^[A-Za-z0-9._:-]*[A-Za-z0-9_:-][A-Za-z0-9._:-]*$"}},
                {"name": "msg", "in": "query", "required": true,
                 "schema": {"type": "string", "format": "uuid"}},
            ],
            "requestBody": {
                "required": true,
                "content": {"application/x-www-form-urlencoded": {"schema": {
                    "type": "object",
                    "properties": {
                        "MessageStatus": {"enum": DELIVERY_STATUSES},
                        "SmsStatus": {"type": "string", "description": "Read only when MessageStatus is absent"},
                        "ErrorCode": {"type": "string"}
                    },
                    "anyOf": [
                        {"required": ["MessageStatus"]},
                        {
                            "not": {"required": ["MessageStatus"]},
                            "required": ["SmsStatus"],
                            "properties": {"SmsStatus": {"enum": DELIVERY_STATUSES}}
                        }
                    ],
                    "additionalProperties": {"type": "string"}
                }}}
            },
            "responses": {
                "204": {"description": "Filed, or nothing to file"},
                "403": refused,
                "413": too_large,
                "422": plain("The callback names no known message, or an unknown status"),
                "503": unavailable.clone(),
            }
        }}),
    );
    paths.insert(
        "/v1/inbound/{system}/{source}".into(),
        json!({"post": {
            "tags": ["cases"], "operationId": "inbound_webhook",
            "summary": "A ticket system's own webhook (Zendesk, Zammad, Freshdesk, Jira Service Management), signed by the system; see the README's Ticket systems.",
            "parameters": [
                {"name": "system", "in": "path", "required": true,
                 "schema": {"enum": ["zendesk", "zammad", "freshdesk", "jira-sm"]}},
                {"name": "source", "in": "path", "required": true, "schema": {"type": "string"},
                 "description": "The source an `inbound:` entry speaks for"},
            ],
            "requestBody": {"required": true, "content": {"application/json": {"schema": {
                "type": "object",
                "description": "The system's webhook body, as it sends it (or the body shipped in packaging/inbound/)"
            }}}},
            "responses": {
                "201": {"description": "The webhook created the case", "content": {"application/json": {"schema": {
                    "type": "object", "required": ["case", "created"],
                    "properties": {"case": {"type": "string"}, "created": {"const": true}}
                }}}},
                "200": {"description": "The webhook updated the case, or named a customer who cannot be reached (`case` null, nothing stored)",
                    "content": {"application/json": {"schema": {
                    "type": "object", "required": ["case", "created"],
                    "properties": {"case": {"type": ["string", "null"]}, "created": {"const": false}}
                }}}},
                "400": json_error("The body is not the system's webhook"),
                "401": json_error("The signature (or Freshdesk's token) is missing or wrong, or a Zendesk signature is more than 5 minutes old"),
                "404": json_error("No `inbound:` entry for this system and source"),
                "409": json_error("The delivery id was used before with another body"),
                "413": json_error(&format!("The body is over {MAX_BODY} bytes")),
                "422": json_error("The ticket reads as a case that is not valid (the field is named)"),
                "503": json_error("The store cannot take the request now; retry later"),
            }
        }}),
    );
    paths.insert("/v1/email/bounce".into(), json!({"post": {
        "tags": ["operations"], "operationId": "email_bounce",
        "summary": "A returned mail (RFC 3464 delivery status notification) addressed to the VERP sender `email.bounce_address` made; `tidings bounce` posts one from an MTA (admin token).",
        "security": bearer,
        "requestBody": {"required": true, "content": {
            "message/rfc822": {"schema": {"type": "string"}},
            "text/plain": {"schema": {"type": "string"}},
        }},
        "responses": {
            "200": {"description": "Filed: a hard bounce failed the message (and names the channel the update went again on), a soft one marked it delayed",
                "content": {"application/json": {"schema": {
                    "type": "object", "required": ["message", "result", "fallback"],
                    "properties": {
                        "message": {"type": "string", "format": "uuid"},
                        "result": {"enum": ["failed", "delayed", "ignored"]},
                        "fallback": {"enum": ["email", "sms", "whatsapp", null]}
                    }
                }}}},
            "400": json_error("The body is not a delivery status notification"),
            "401": unauthorized(),
            "403": json_error("The admin endpoints are off: no admin token is configured"),
            "404": json_error("No case holds the message the report names"),
            "413": json_error(&format!("The body is over {MAX_BODY} bytes")),
            "422": json_error("No address the report was sent to carries a token of this daemon's"),
            "503": json_error("The store cannot take the request now; retry later"),
        }
    }}));
    let unsubscribe = |method: &str| {
        json!({
            "tags": ["consent"], "operationId": format!("unsubscribe_{method}"),
            "summary": if method == "get" {
                "The email opt-out link: a confirmation page; changes nothing."
            } else {
                "Opts the address out for the source that sent the email (the confirmation's button, or RFC 8058 one-click)."
            },
            "parameters": [{"name": "token", "in": "path", "required": true, "schema": {"type": "string"}}],
            "responses": {
                "200": html(if method == "get" { "The confirmation page" } else { "Unsubscribed" }),
                "400": plain("The path is not valid UTF-8"),
                "404": html("The link is not valid"),
                "503": unavailable.clone(),
            }
        })
    };
    paths.insert(
        "/unsubscribe/{token}".into(),
        json!({"get": unsubscribe("get"), "post": unsubscribe("post")}),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_described() {
        let doc = document();
        for (path, method) in [
            ("/v1/cases/{id}", "put"),
            ("/v1/cases/{id}", "get"),
            ("/v1/cases/{id}", "delete"),
            ("/v1/cases/{id}/events", "post"),
            ("/v1/sms/inbound", "post"),
            ("/v1/sms/status", "post"),
            ("/v1/inbound/{system}/{source}", "post"),
            ("/v1/email/bounce", "post"),
            ("/unsubscribe/{token}", "get"),
            ("/unsubscribe/{token}", "post"),
            ("/healthz", "get"),
            ("/readyz", "get"),
            ("/metrics", "get"),
            ("/openapi.json", "get"),
            ("/-/reload", "post"),
            ("/-/backup", "post"),
        ] {
            assert!(
                doc["paths"][path][method]["responses"].is_object(),
                "{method} {path}"
            );
        }
        let put = &doc["paths"]["/v1/cases/{id}"]["put"]["responses"];
        for code in ["200", "201", "400", "401", "409", "413", "422", "503"] {
            assert!(put[code].is_object(), "PUT lacks {code}");
        }
    }

    #[test]
    fn every_zone_the_parser_takes_is_listed() {
        let doc = document();
        let zones = doc["components"]["schemas"]["CustomerInput"]["properties"]["timezone"]["enum"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert!(zones.len() > 400);
        for z in zones.iter().filter_map(Value::as_str) {
            assert!(crate::domain::parse_timezone(z).is_ok(), "{z}");
        }
    }
}
