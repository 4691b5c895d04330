//! The parameters of an event destination's create and update: each read and checked
//! on its own; `Err` says which and why, for a 400.

use serde_json::{json, Map, Value};

/// The event types a destination may enable.
const EVENT_TYPES: &[&str] = &[
    "v2.payments.off_session_payment.created",
    "v2.payments.off_session_payment.attempt_started",
    "v2.payments.off_session_payment.attempt_failed",
    "v2.payments.off_session_payment.authorization_attempt_started",
    "v2.payments.off_session_payment.authorization_attempt_failed",
    "v2.payments.off_session_payment.requires_capture",
    "v2.payments.off_session_payment.succeeded",
    "v2.payments.off_session_payment.failed",
    "v2.payments.off_session_payment.canceled",
    "v2.payments.off_session_payment.paused",
    "v2.payments.off_session_payment.resumed",
];

/// `enabled_events`: a list of this server's event types, or `*`; `Err` says why not.
pub(super) fn enabled_events(value: Option<&Value>) -> Result<Vec<String>, String> {
    let events = match value {
        None | Some(Value::Null) => {
            return Err("`enabled_events` is required: a list of event types or `*`".into())
        }
        Some(Value::Array(events)) if !events.is_empty() => events,
        Some(Value::Array(_)) => {
            return Err("`enabled_events` must list at least one event type (or `*`)".into())
        }
        Some(_) => return Err("`enabled_events` must be a list of event types or `*`".into()),
    };
    let mut enabled = Vec::new();
    for event in events {
        match event.as_str() {
            Some(e) if e == "*" || EVENT_TYPES.contains(&e) => enabled.push(e.to_owned()),
            _ => return Err(format!("`enabled_events`: `{event}` is not an event type")),
        }
    }
    Ok(enabled)
}

/// `webhook_endpoint.url`: https, or plain http on loopback; `Err` says why not.
pub(super) fn endpoint_url(value: Option<&Value>) -> Result<&str, String> {
    let Some(endpoint) = value.and_then(Value::as_object) else {
        return Err("`webhook_endpoint` is required: an object with `url`".into());
    };
    if let Some(unknown) = endpoint.keys().find(|k| k.as_str() != "url") {
        return Err(format!("unknown parameter `webhook_endpoint.{unknown}`"));
    }
    let Some(url) = endpoint.get("url").and_then(Value::as_str) else {
        return Err("`webhook_endpoint.url` is required: a string".into());
    };
    // Parsed, not matched by prefix: `http://127.0.0.1@evil.example/` and
    // `http://localhost.evil.example/` start like loopback but go elsewhere.
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| format!("`webhook_endpoint.url` is not a URL: {e}"))?;
    let loopback = matches!(parsed.host_str(), Some("localhost" | "127.0.0.1" | "[::1]"));
    if parsed.scheme() != "https" && !(parsed.scheme() == "http" && loopback) {
        return Err("`webhook_endpoint.url` must be https (plain http only for loopback)".into());
    }
    Ok(url)
}

/// `include`: a list of the values `allowed`; whether it holds each.
pub(super) fn include_of(value: Option<&Value>, allowed: &str) -> Result<bool, String> {
    match value {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Array(items)) => {
            for item in items {
                if item.as_str() != Some(allowed) {
                    return Err(format!("`include`: `{item}` is not `{allowed}`"));
                }
            }
            Ok(!items.is_empty())
        }
        Some(_) => Err(format!("`include` must be a list (`[\"{allowed}\"]`)")),
    }
}

/// `description`: a string, or null.
pub(super) fn description_of(value: Option<&Value>) -> Result<Value, String> {
    match value {
        None | Some(Value::Null) => Ok(Value::Null),
        Some(Value::String(d)) => Ok(json!(d)),
        Some(_) => Err("`description` must be a string".into()),
    }
}

/// `metadata`: an object of strings merged into `base`; a null value removes its key,
/// as Stripe's metadata does.
pub(super) fn metadata_of(
    value: Option<&Value>,
    base: Map<String, Value>,
) -> Result<Value, String> {
    let mut merged = base;
    match value {
        None | Some(Value::Null) => {}
        Some(Value::Object(entries)) => {
            for (key, value) in entries {
                match value {
                    Value::Null => {
                        merged.remove(key);
                    }
                    Value::String(_) => {
                        merged.insert(key.clone(), value.clone());
                    }
                    _ => return Err(format!("`metadata.{key}` must be a string or null")),
                }
            }
        }
        Some(_) => return Err("`metadata` must be an object of strings".into()),
    }
    Ok(Value::Object(merged))
}
