//! Logs and traces. JSON logs by default (`LOG_FORMAT=text` for people), filtered by
//! `RUST_LOG`; OpenTelemetry traces exported over OTLP/HTTP when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set; `traceparent` carried in NATS headers.
//!
//! A guard layer watches every log event for what looks like a mainland mobile number
//! or ID number and counts it (`log_pii_suspect_total`): personal data must never be
//! logged, and this is how we notice if it ever is; the log writer redacts it from the
//! line before it leaves the process.

use std::sync::atomic::{AtomicU64, Ordering};

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::field::{Field, Visit};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("OTEL_EXPORTER_OTLP_ENDPOINT is set but the exporter cannot be built: {0}")]
    Exporter(String),
    #[error("LOG_FORMAT must be json or text (got {0:?})")]
    Format(String),
    #[error("RUST_LOG is not a valid filter: {0}")]
    Filter(String),
}

/// Keeps the trace pipeline alive; call [`Telemetry::shutdown`] last on exit so
/// buffered spans are flushed.
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl Telemetry {
    pub fn shutdown(self) {
        if let Err(e) = self.provider.shutdown() {
            eprintln!("telemetry: flushing traces failed: {e}");
        }
    }
}

/// Installs the global subscriber. `default_filter` applies when `RUST_LOG` is unset.
/// Calling it twice in one process keeps the first subscriber (tests do this).
pub fn init(service: &'static str, default_filter: &str) -> Result<Telemetry, TelemetryError> {
    init_with(service, default_filter, "json")
}

/// Where log lines go instead of standard error (a terminal program that draws a
/// progress bar prints them above it); set once, before the lines come.
static LINES: std::sync::OnceLock<fn(&[u8])> = std::sync::OnceLock::new();

/// Sends every log line (already redacted) to `write` instead of standard error.
pub fn write_lines_through(write: fn(&[u8])) {
    let _ = LINES.set(write);
}

/// As [`init`], with `default_format` (`json` or `text`) where `LOG_FORMAT` is unset:
/// people at a terminal read text.
pub fn init_with(
    service: &'static str,
    default_filter: &str,
    default_format: &str,
) -> Result<Telemetry, TelemetryError> {
    // The OTLP exporter's HTTP client needs the process's TLS provider chosen first.
    crate::install_crypto_provider();
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.trim().is_empty() => {
            EnvFilter::try_new(spec).map_err(|e| TelemetryError::Filter(e.to_string()))?
        }
        _ => EnvFilter::new(default_filter),
    };
    let format = std::env::var("LOG_FORMAT").unwrap_or_else(|_| default_format.into());
    let fmt_layer = match format.as_str() {
        "json" => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            // The current span's fields: an HTTP request's `request_id` on every line
            // it logs.
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(RedactingStderr)
            .boxed(),
        "text" => tracing_subscriber::fmt::layer()
            // Colours for a terminal, plain text for a file.
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_writer(RedactingStderr)
            .boxed(),
        other => return Err(TelemetryError::Format(other.to_owned())),
    };

    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service)
        .build();
    let mut builder = SdkTracerProvider::builder().with_resource(resource);
    if std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").is_ok_and(|v| !v.trim().is_empty()) {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()
            .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
        builder = builder.with_batch_exporter(exporter);
    }
    let provider = builder.build();
    let tracer = provider.tracer(service);
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());

    // RUST_LOG filters what is logged (and what the PII guard reads); traces are recorded
    // at INFO whatever the log level, so a quiet process still propagates its traces.
    let logs = fmt_layer.and_then(PiiGuard).with_filter(filter);
    let traces = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(tracing_subscriber::filter::LevelFilter::INFO);
    let _ = tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .try_init();
    Ok(Telemetry { provider })
}

struct HeaderInjector<'a>(&'a mut async_nats::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, value.as_str());
    }
}

struct HeaderExtractor<'a>(&'a async_nats::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|v| v.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_ref()).collect()
    }
}

/// The W3C `traceparent` of the current span, if it belongs to a trace.
pub fn current_traceparent() -> Option<String> {
    let cx = tracing::Span::current().context();
    let mut headers = async_nats::HeaderMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(&mut headers));
    headers
        .get("traceparent")
        .map(|v| v.as_str().to_owned())
        .filter(|v| !v.is_empty())
}

/// Makes the trace in `headers` (if any) the parent of `span`.
pub fn adopt_parent(span: &tracing::Span, headers: Option<&async_nats::HeaderMap>) {
    if let Some(headers) = headers {
        let cx = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
        let _ = span.set_parent(cx);
    }
}

/// A span that continues the trace in `traceparent` (work picked up later from a table,
/// such as a timer firing or an SMS being sent, stays in the trace that created it).
pub fn continue_trace(traceparent: Option<&str>) -> tracing::Span {
    let span = tracing::info_span!("continue_trace");
    adopt_traceparent(&span, traceparent);
    span
}

/// Makes the trace in `traceparent` (if any) the parent of `span`.
pub fn adopt_traceparent(span: &tracing::Span, traceparent: Option<&str>) {
    if let Some(tp) = traceparent {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("traceparent", tp);
        adopt_parent(span, Some(&headers));
    }
}

static PII_SUSPECTS: AtomicU64 = AtomicU64::new(0);

/// How many log events in this process looked like they carried a mobile number or
/// an ID number.
pub fn pii_suspect_log_events() -> u64 {
    PII_SUSPECTS.load(Ordering::Relaxed)
}

struct PiiGuard;

impl<S: tracing::Subscriber> Layer<S> for PiiGuard {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        let mut scan = PiiScan(false);
        event.record(&mut scan);
        if scan.0 {
            PII_SUSPECTS.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("log_pii_suspect_total").increment(1);
        }
    }
}

struct PiiScan(bool);

impl Visit for PiiScan {
    fn record_str(&mut self, _field: &Field, value: &str) {
        self.0 |= looks_like_pii(value);
    }

    fn record_debug(&mut self, _field: &Field, value: &dyn std::fmt::Debug) {
        self.0 |= looks_like_pii(&format!("{value:?}"));
    }
}

/// True if `text` holds a mainland mobile (11 digits starting 1[3-9], with or without
/// the 86 country code) or an 18-character resident ID (17 digits and a digit or X).
pub fn looks_like_pii(text: &str) -> bool {
    !pii_spans(text).is_empty()
}

/// `text` with every mobile and ID number [`looks_like_pii`] finds replaced by
/// `[redacted]`.
pub fn redact_pii(text: &str) -> std::borrow::Cow<'_, str> {
    let spans = pii_spans(text);
    if spans.is_empty() {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for span in spans {
        out.push_str(&text[at..span.start]);
        out.push_str("[redacted]");
        at = span.end;
    }
    out.push_str(&text[at..]);
    std::borrow::Cow::Owned(out)
}

/// Where in `text` the mobiles and ID numbers are (byte ranges on ASCII boundaries).
fn pii_spans(text: &str) -> Vec<std::ops::Range<usize>> {
    let bytes = text.as_bytes();
    let mut spans = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if !bytes[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        let run = &bytes[start..i];
        let id_tail = i < bytes.len() && (bytes[i] == b'X' || bytes[i] == b'x');
        let mobile = |m: &[u8]| m.len() == 11 && m[0] == b'1' && (b'3'..=b'9').contains(&m[1]);
        // A national mobile, or one with the country code (+86 / 0086 / 86).
        if mobile(run)
            || (run.len() == 13 && run.starts_with(b"86") && mobile(&run[2..]))
            || (run.len() == 15 && run.starts_with(b"0086") && mobile(&run[4..]))
            || run.len() == 18
        {
            spans.push(start..i);
        } else if run.len() == 17 && id_tail {
            spans.push(start..i + 1);
        }
    }
    spans
}

/// The log writer: each event's line with mobiles and ID numbers redacted before it
/// reaches stderr. tracing-subscriber asks for one writer per event and drops it after
/// the event is written, so a writer holds exactly one line.
struct RedactingStderr;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for RedactingStderr {
    type Writer = RedactedLine;

    fn make_writer(&'a self) -> Self::Writer {
        RedactedLine(Vec::with_capacity(256))
    }
}

struct RedactedLine(Vec<u8>);

impl std::io::Write for RedactedLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for RedactedLine {
    fn drop(&mut self) {
        use std::io::Write;
        let line = String::from_utf8_lossy(&self.0);
        let line = redact_pii(&line);
        match LINES.get() {
            Some(write) => write(line.as_bytes()),
            None => {
                let _ = std::io::stderr().write_all(line.as_bytes());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{looks_like_pii, redact_pii};

    #[test]
    fn spots_mobiles_and_id_numbers_but_not_ordinary_numbers() {
        assert!(looks_like_pii("calling 13812345678 now"));
        assert!(looks_like_pii("+8613812345678"));
        assert!(looks_like_pii("008613812345678"));
        assert!(looks_like_pii("id=11010519491231002X"));
        assert!(looks_like_pii("110105194912310021"));
        assert!(!looks_like_pii("policy P2026000123 case 42"));
        assert!(!looks_like_pii("elapsed_ms=12345678901234"));
        assert!(!looks_like_pii("ts 1764000000000"));
    }

    #[test]
    fn redacts_mobiles_and_id_numbers_and_leaves_the_rest() {
        assert_eq!(
            redact_pii(r#"{"msg":"to +8613812345678","id":"11010519491231002X","n":42}"#),
            r#"{"msg":"to +[redacted]","id":"[redacted]","n":42}"#
        );
        assert_eq!(redact_pii("policy P2026000123"), "policy P2026000123");
    }
}
