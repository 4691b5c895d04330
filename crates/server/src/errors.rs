//! Errors in the v2 shape: `{"error": {"type", "code", "message"}}`.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use offsession_core::ApiError;
use serde_json::json;

/// An error response with this status, type, code and message.
pub(crate) fn error(status: u16, kind: &str, code: &str, message: impl Into<String>) -> Response {
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        Json(json!({"error": {"type": kind, "code": code, "message": message.into()}})),
    )
        .into_response()
}

/// An invalid request (400) naming what is wrong. A message that starts with a
/// parameter in backquotes (`` `name` is required ``) names it as `param` too, as
/// the engine's own validation errors do.
pub(crate) fn invalid(message: impl Into<String>) -> Response {
    let message = message.into();
    let param = message
        .strip_prefix('`')
        .and_then(|rest| rest.split_once('`'))
        .map(|(param, _)| param.to_owned())
        .filter(|param| {
            !param.is_empty()
                && param
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.[]".contains(&b))
        });
    let mut body = json!({"error": {
        "type": "invalid_request_error",
        "code": "osp_generic_invalid_request",
        "message": message,
    }});
    if let Some(param) = param {
        body["error"]["param"] = json!(param);
    }
    (StatusCode::BAD_REQUEST, Json(body)).into_response()
}

/// The engine's error as the API answers it. A 500 carries no internals: the
/// engine's message is logged, the client gets a generic one.
pub(crate) fn api(err: ApiError) -> Response {
    let status = err.code.http_status();
    if status >= 500 {
        tracing::error!(error = %err, "request failed");
        return error(
            status,
            "api_error",
            err.code.as_str(),
            "The server could not complete the request; it was logged. Retry with the same Idempotency-Key.",
        );
    }
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
        Json(err.body()),
    )
        .into_response()
}

/// A failure of the store or another internal part: a 500 whose details are logged,
/// not sent.
pub(crate) fn internal(err: impl std::fmt::Display) -> Response {
    api(ApiError::new(
        offsession_core::ErrorCode::ApiError,
        err.to_string(),
    ))
}

/// 404 in the API's shape.
pub(crate) fn not_found(what: &str) -> Response {
    error(404, "invalid_request_error", "resource_missing", what)
}

/// 429 with `Retry-After`.
pub(crate) fn rate_limited(retry_after_secs: u64) -> Response {
    let mut response = error(
        429,
        "rate_limit",
        "rate_limit",
        "Too many requests with this API key; slow down and retry after the time in Retry-After.",
    );
    if let Ok(value) = HeaderValue::from_str(&retry_after_secs.max(1).to_string()) {
        response.headers_mut().insert("retry-after", value);
    }
    response
}
