//! Checks of single fields: required values, object ids, statement descriptors,
//! metadata, card options. Each error names the field.

use super::*;

pub(super) fn required<'a, T>(value: &'a Option<T>, param: &str) -> Result<&'a T, ApiError> {
    value
        .as_ref()
        .ok_or_else(|| ApiError::invalid(param, "is required"))
}

/// Object ids (customer, payment method, account, test clock) are ASCII letters,
/// digits, `_` and `-`, at most [`ID_MAX_CHARS`] long: they end up in processor URLs,
/// so nothing that could change a URL's path or query (`/`, `.`, `?`, `#`, `%`, `&`,
/// white space, control characters) is accepted.
pub fn check_id(value: &str, param: &str) -> Result<(), ApiError> {
    if value.is_empty() {
        return Err(ApiError::invalid(param, "must not be empty"));
    }
    if value.len() > ID_MAX_CHARS {
        return Err(ApiError::invalid(
            param,
            format!(
                "must be at most {ID_MAX_CHARS} characters (got {})",
                value.chars().count()
            ),
        ));
    }
    if let Some(bad) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        return Err(ApiError::invalid(
            param,
            format!(
                "must contain only ASCII letters, digits, `_` and `-` (found {})",
                bad.escape_default()
            ),
        ));
    }
    Ok(())
}

pub(super) fn check_descriptor(value: &str, param: &str, min_chars: usize) -> Result<(), ApiError> {
    let chars = value.chars().count();
    if chars > STATEMENT_DESCRIPTOR_MAX_CHARS {
        return Err(ApiError::invalid(
            param,
            format!("must be at most {STATEMENT_DESCRIPTOR_MAX_CHARS} characters (got {chars})"),
        ));
    }
    if chars < min_chars {
        return Err(ApiError::invalid(
            param,
            format!("must be at least {min_chars} characters (got {chars})"),
        ));
    }
    if let Some(bad) = value
        .chars()
        .find(|c| matches!(c, '<' | '>' | '\\' | '\'' | '"' | '*'))
    {
        return Err(ApiError::invalid(
            param,
            format!("must not contain the character `{bad}`"),
        ));
    }
    if !value.chars().any(char::is_alphabetic) {
        return Err(ApiError::invalid(param, "must contain at least one letter"));
    }
    Ok(())
}

pub(super) fn check_metadata(metadata: &BTreeMap<String, String>) -> Result<(), ApiError> {
    if metadata.len() > METADATA_MAX_KEYS {
        return Err(ApiError::invalid(
            "metadata",
            format!(
                "at most {METADATA_MAX_KEYS} keys are allowed (got {}): two of Stripe's 50 are reserved for the engine",
                metadata.len()
            ),
        ));
    }
    for (key, value) in metadata {
        let param = format!("metadata.{key}");
        if key.is_empty() {
            return Err(ApiError::invalid("metadata", "keys must not be empty"));
        }
        if key.starts_with(RESERVED_METADATA_PREFIX) {
            return Err(ApiError::invalid(
                &param,
                format!(
                    "keys starting with `{RESERVED_METADATA_PREFIX}` are reserved for the engine"
                ),
            ));
        }
        if key.chars().count() > METADATA_MAX_KEY_CHARS {
            return Err(ApiError::invalid(
                &param,
                format!("keys must be at most {METADATA_MAX_KEY_CHARS} characters"),
            ));
        }
        if key.contains('[') || key.contains(']') {
            return Err(ApiError::invalid(
                &param,
                "keys must not contain `[` or `]`",
            ));
        }
        if value.chars().count() > METADATA_MAX_VALUE_CHARS {
            return Err(ApiError::invalid(
                &param,
                format!("values must be at most {METADATA_MAX_VALUE_CHARS} characters"),
            ));
        }
    }
    Ok(())
}

/// `payment_method_options.card`: known fields only, each checked.
pub(super) fn check_card_options(value: &serde_json::Value) -> Result<CardOptions, ApiError> {
    let options: CardOptions = serde_path_to_error::deserialize(value.clone()).map_err(|e| {
        let path = e.path().to_string();
        let param = if path.is_empty() || path == "." {
            "payment_method_options.card".to_owned()
        } else {
            format!("payment_method_options.card.{path}")
        };
        ApiError::invalid(&param, e.into_inner())
    })?;
    if let Some(mcc) = &options.mcc {
        if mcc.len() != 4 || !mcc.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ApiError::invalid(
                "payment_method_options.card.mcc",
                format!("must be four digits (got `{}`)", mcc.escape_default()),
            ));
        }
    }
    if let Some(id) = &options.network_transaction_id {
        if id.is_empty()
            || id.len() > ID_MAX_CHARS
            || !id.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            return Err(ApiError::invalid(
                "payment_method_options.card.network_transaction_id",
                format!("must be 1 to {ID_MAX_CHARS} ASCII letters and digits"),
            ));
        }
    }
    Ok(options)
}
