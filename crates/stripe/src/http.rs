//! One logical request to Stripe: URL building with every segment percent-encoded,
//! transport retries under the same idempotency key, no redirects followed, bodies
//! read up to a cap, and quoting of what came back.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};

use crate::transformers::{error_code, is_stripe_error, Form, WireErrorCode};
use crate::StripeProcessor;

/// The most bytes read from any Stripe response body; the rest is never read.
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// The most characters of Stripe's (or a proxy's) text quoted in a message or error.
pub const MAX_QUOTED_CHARS: usize = 500;

/// `text` for quoting in a message: control characters escaped, and cut (on a
/// character boundary) after [`MAX_QUOTED_CHARS`] characters, marked `…(truncated)`.
pub fn quote(text: &str) -> String {
    quote_at_most(text, MAX_QUOTED_CHARS)
}

/// [`quote`] with another limit.
fn quote_at_most(text: &str, max_chars: usize) -> String {
    offsession_core::text::quote(text, max_chars)
}

/// What came back from one logical request (after transport retries).
#[derive(Debug)]
pub(crate) enum Reply {
    /// An HTTP response. A redirect (3xx) is never followed; it arrives here.
    Response {
        status: StatusCode,
        /// At most [`MAX_BODY_BYTES`] of the body (lossy UTF-8).
        body: String,
        /// The body was longer than [`MAX_BODY_BYTES`]; the rest was not read.
        truncated: bool,
        /// `Location` of a redirect, quoted.
        location: Option<String>,
    },
    /// The request never left (connection refused, DNS): nothing executed.
    NotSent(String),
    /// The request may have been executed; no answer.
    Lost(String),
}

impl Reply {
    /// Whether the request may have been executed without this reply saying so: no
    /// answer, a server error, or `409` (Stripe is still running a request with the
    /// same idempotency key).
    fn may_have_executed(&self) -> bool {
        match self {
            Reply::Lost(_) => true,
            Reply::NotSent(_) => false,
            Reply::Response { status, .. } => {
                status.is_server_error() || *status == StatusCode::CONFLICT
            }
        }
    }

    /// Whether the reply says what became of the request: a success, a decline
    /// (`402`) or a refusal of the request itself (`400`, `404`, …), which Stripe
    /// answers a retry of an executed request with from its idempotency store, so it
    /// speaks for every earlier try. Not a server error, `409`, `429`, `401` or `403`:
    /// those say only that this try was not run. (A keyed request's 4xx without
    /// Stripe's error body never gets here: `send` makes it [`Reply::Lost`].)
    fn is_definite(&self) -> bool {
        match self {
            Reply::Response { status, .. } => {
                status.is_success()
                    || (status.is_client_error()
                        && !matches!(status.as_u16(), 401 | 403 | 409 | 429))
            }
            Reply::NotSent(_) | Reply::Lost(_) => false,
        }
    }

    fn describe(&self) -> String {
        match self {
            Reply::Response { status, .. } => format!("HTTP {status}"),
            Reply::NotSent(message) => format!("not sent ({message})"),
            Reply::Lost(message) => format!("no answer ({message})"),
        }
    }
}

use offsession_core::hash::fnv1a as fnv;

/// Appends `segment` percent-encoded so that it stays one path segment whatever it
/// holds: every byte but `A–Z a–z 0–9 - . _ ~` becomes `%XX` (so `/`, `?`, `#`, `%`,
/// spaces and control characters never reach the path as themselves).
pub(crate) fn encode_segment(segment: &str, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(byte >> 4)]));
            out.push(char::from(HEX[usize::from(byte & 0xF)]));
        }
    }
}

/// Reads at most [`MAX_BODY_BYTES`] of a body; `true` when there was more (unread).
async fn read_capped(mut response: reqwest::Response) -> Result<(String, bool), reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = MAX_BODY_BYTES - body.len();
        if chunk.len() > room {
            body.extend_from_slice(&chunk[..room]);
            return Ok((String::from_utf8_lossy(&body).into_owned(), true));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((String::from_utf8_lossy(&body).into_owned(), false))
}

/// The message for a redirect, which is never followed.
pub(crate) fn redirected(what: &str, status: StatusCode, location: Option<&str>) -> String {
    format!(
        "{what} answered {status} redirecting to `{}`; redirects are not followed (check processor.api_base and any proxy)",
        location.unwrap_or("")
    )
}

/// A body quoted for a message, noting when it was cut at [`MAX_BODY_BYTES`].
pub(crate) fn quote_body(body: &str, truncated: bool) -> String {
    if truncated {
        format!(
            "(body over {MAX_BODY_BYTES} bytes; only that much read) {}",
            quote(body)
        )
    } else {
        quote(body)
    }
}

impl StripeProcessor {
    pub(crate) fn backoff(&self, key: &str, retry: u32) -> Duration {
        let n = f64::from(retry);
        let base = self.config.retry_base.as_secs_f64() * (1.0 + n * n);
        let capped = base.min(self.config.retry_cap.as_secs_f64());
        // Jitter in [0.5, 1.0), derived from the key so that it needs no RNG.
        let jitter = 0.5 + (fnv(&format!("{key}:{retry}")) >> 11) as f64 / (1u64 << 54) as f64;
        Duration::from_secs_f64(capped * jitter)
    }

    /// The URL of `segments` under the API base: every segment percent-encoded as one
    /// path segment, `query` form-encoded. `None` if the base is unusable or a segment
    /// is empty, `.` or `..` (no request is sent then).
    pub(crate) fn url(&self, segments: &[&str], query: &[(&str, &str)]) -> Option<reqwest::Url> {
        let mut url = reqwest::Url::parse(&self.config.api_base).ok()?;
        if url.cannot_be_a_base() {
            return None;
        }
        let mut path = url.path().trim_end_matches('/').to_owned();
        for segment in segments {
            if segment.is_empty() || *segment == "." || *segment == ".." {
                return None;
            }
            path.push('/');
            encode_segment(segment, &mut path);
        }
        url.set_path(&path);
        url.set_query(None);
        url.set_fragment(None);
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        Some(url)
    }

    /// Sends one logical request, with transport retries that reuse `idempotency_key`.
    /// Any 401/403, whichever call drew it, marks the processor misconfigured.
    pub(crate) async fn send(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, &str)],
        form: Option<&Form>,
        idempotency_key: Option<&str>,
    ) -> Reply {
        let Some(url) = self.url(segments, query) else {
            return Reply::NotSent(format!(
                "refused to build a request for path {}",
                quote(&format!("{segments:?}"))
            ));
        };
        let label = segments.join("/");
        let mut retry = 0;
        // Whether an earlier try may have been executed (no answer, a server error, or
        // the key still in use by a try Stripe is running): a later try that says
        // nothing of the outcome must not be read as "nothing happened".
        let mut maybe_executed: Option<String> = None;
        loop {
            let mut request = self
                .http
                .request(method.clone(), url.clone())
                .bearer_auth(self.secret_key.expose())
                .header("Stripe-Version", &self.config.stripe_version);
            if let Some(key) = idempotency_key {
                request = request.header("Idempotency-Key", key);
            }
            if let Some(form) = form {
                request = request.form(form);
            }
            let (reply, should_retry) = match request.send().await {
                Ok(response) => {
                    let status = response.status();
                    if matches!(status.as_u16(), 401 | 403) {
                        self.mark_misconfigured(status);
                    }
                    let header = response
                        .headers()
                        .get("Stripe-Should-Retry")
                        .and_then(|v| v.to_str().ok())
                        .map(|v| v == "true");
                    let location = response
                        .headers()
                        .get(reqwest::header::LOCATION)
                        .map(|v| quote_at_most(&String::from_utf8_lossy(v.as_bytes()), 200));
                    match read_capped(response).await {
                        // On a keyed request (one that may move money) only Stripe's own
                        // error body is Stripe's answer. A 4xx without it is a proxy's or
                        // a load balancer's (a 408 after forwarding, a 400 or 404 of its
                        // own): it says neither that Stripe ran the request nor that it
                        // did not, so the outcome stays unknown and the request is sent
                        // again under the same key.
                        Ok((body, truncated))
                            if idempotency_key.is_some()
                                && status.is_client_error()
                                && !is_stripe_error(&body, truncated) =>
                        {
                            (
                                Reply::Lost(format!(
                                    "HTTP {status} without Stripe's error body, so not Stripe's answer (a proxy's?): {}",
                                    quote_at_most(&body, 200)
                                )),
                                true,
                            )
                        }
                        Ok((body, truncated)) => {
                            let guess = status.is_server_error()
                                || status == StatusCode::CONFLICT
                                || (status == StatusCode::TOO_MANY_REQUESTS
                                    && error_code(&body) == Some(WireErrorCode::LockTimeout));
                            // A redirect is a misconfiguration; sending again won't help.
                            let retry = !status.is_redirection() && header.unwrap_or(guess);
                            (
                                Reply::Response {
                                    status,
                                    body,
                                    truncated,
                                    location,
                                },
                                retry,
                            )
                        }
                        Err(err) => (
                            Reply::Lost(format!(
                                "reading the response: {}",
                                quote(&err.to_string())
                            )),
                            true,
                        ),
                    }
                }
                Err(err) if err.is_connect() => (Reply::NotSent(quote(&err.to_string())), true),
                Err(err) => (Reply::Lost(quote(&err.to_string())), true),
            };
            if !should_retry || retry >= self.config.max_network_retries {
                return match maybe_executed {
                    Some(earlier) if !reply.is_definite() => Reply::Lost(format!(
                        "{earlier}; the last of {} tries: {}",
                        retry + 1,
                        reply.describe()
                    )),
                    _ => reply,
                };
            }
            if maybe_executed.is_none() && reply.may_have_executed() {
                maybe_executed = Some(format!(
                    "try {} may have executed: {}",
                    retry + 1,
                    reply.describe()
                ));
            }
            tracing::debug!(
                path = %quote(&label),
                retry,
                "retrying a Stripe request with the same idempotency key"
            );
            tokio::time::sleep(self.backoff(idempotency_key.unwrap_or(&label), retry + 1)).await;
            retry += 1;
        }
    }

    /// Whether a 401/403 came back less than `misconfigured_cooldown` ago.
    pub(crate) fn is_misconfigured(&self) -> bool {
        let until = *self
            .misconfigured_until
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        until.is_some_and(|until| Instant::now() < until)
    }

    /// A 401/403 means the key is wrong or lacks permissions: every call fails the
    /// same way until it is fixed, so authorizations stop for `misconfigured_cooldown`.
    fn mark_misconfigured(&self, status: StatusCode) {
        tracing::error!(processor = %self.config.id, %status, "Stripe refused the API key; check the secret key and its permissions");
        *self
            .misconfigured_until
            .lock()
            .unwrap_or_else(|p| p.into_inner()) =
            Some(Instant::now() + self.config.misconfigured_cooldown);
    }
}
