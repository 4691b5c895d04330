//! `submit`: validates and stores a batch of create requests under idempotency keys
//! derived from each line, so that a second submission creates nothing twice.

use super::*;

/// What `submit` stored.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SubmitReport {
    /// Non-empty lines read.
    pub submitted: u64,
    /// Lines stored as new payments by this submission.
    pub created: u64,
    /// Lines whose payment an earlier submission already stored (same key).
    pub already_stored: u64,
    /// Lines refused, with their line number and error code.
    pub invalid: Vec<InvalidLine>,
}

impl SubmitReport {
    /// The report as text.
    pub fn render(&self) -> String {
        let mut out = format!(
            "offsession submit\n  submitted        {:>8}\n  created          {:>8}\n  already stored   {:>8}\n  invalid          {:>8}\n",
            self.submitted,
            self.created,
            self.already_stored,
            self.invalid.len()
        );
        for line in &self.invalid {
            out.push_str(&format!(
                "    line {:>6}: {} — {}\n",
                line.line, line.code, line.message
            ));
        }
        out
    }
}

/// The idempotency key of a submitted line: `submit_<32 hex digits of the line's
/// SHA-256>_<n>`, `n` counting earlier lines with the same bytes.
pub fn line_key(line: &[u8], occurrence: u32) -> String {
    let digest = Sha256::digest(line);
    let mut hex = String::with_capacity(32);
    for byte in &digest[..16] {
        hex.push_str(&format!("{byte:02x}"));
    }
    format!("submit_{hex}_{occurrence}")
}

/// Validates and stores every line of `input`; see the module documentation.
pub async fn submit(
    config_path: &Path,
    config: &Config,
    input: &Path,
) -> Result<SubmitReport, RunnerError> {
    durable_only(config, "submit")?;
    let text = std::fs::read(input).map_err(|e| RunnerError::file("reading", input, e))?;
    let wired = wiring::build_live(config_path, config).await?;
    let engine = wired.engine.clone();
    let started = SystemClock.now();
    let mut report = SubmitReport::default();
    let mut seen: std::collections::HashMap<&[u8], u32> = std::collections::HashMap::new();
    let mut lines = Vec::new();
    for (index, line) in text.split(|b| *b == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.trim_ascii().is_empty() {
            continue;
        }
        report.submitted += 1;
        let occurrence = seen.entry(line).or_insert(0);
        let key = line_key(line, *occurrence);
        *occurrence += 1;
        lines.push((index + 1, line, key));
    }
    let results: Vec<_> = futures::stream::iter(lines)
        .map(|(number, line, key)| {
            let engine = engine.clone();
            async move {
                if let Err(err) = std::str::from_utf8(line) {
                    return (number, Err(InvalidLine::not_utf8(number, err)));
                }
                let result =
                    engine
                        .create_json(line, Some(&key))
                        .await
                        .map_err(|err| InvalidLine {
                            line: number,
                            code: err.code.as_str().to_owned(),
                            message: err.message,
                        });
                (number, result)
            }
        })
        .buffer_unordered(config.worker.submit_concurrency)
        .collect()
        .await;
    let mut results = results;
    results.sort_by_key(|(number, _)| *number);
    for (_, result) in results {
        match result {
            Ok(payment) if payment.created < started => report.already_stored += 1,
            Ok(_) => report.created += 1,
            Err(invalid) => report.invalid.push(invalid),
        }
    }
    Ok(report)
}
