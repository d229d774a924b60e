//! Tracing with OpenTelemetry.
//!
//! Logs go to stderr (text or JSON). Spans always carry OpenTelemetry trace ids, so W3C
//! `traceparent` propagates over gRPC, HTTP and events even when nothing is exported; when
//! `telemetry.otlp_endpoint` is set, spans are exported over OTLP/gRPC to that collector.

use std::collections::HashMap;

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use serde::{Deserialize, Serialize};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::{Error, Result};

/// Log output format.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line (for log shippers).
    Json,
}

/// Telemetry settings (`[telemetry]`, `SHAREDCARE_TELEMETRY__*`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// Log filter in `RUST_LOG` syntax, e.g. `info` or `info,sharedcare_kit=debug`.
    pub log: String,
    /// `text` or `json`.
    pub log_format: LogFormat,
    /// OTLP/gRPC collector, e.g. `http://127.0.0.1:4317`. Empty = do not export.
    pub otlp_endpoint: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            log: "info".into(),
            log_format: LogFormat::Text,
            otlp_endpoint: String::new(),
        }
    }
}

/// Keeps the tracer provider alive; call [`Telemetry::shutdown`] on exit to flush spans.
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl Telemetry {
    /// Flushes pending spans and stops exporting.
    pub fn shutdown(self) {
        if let Err(e) = self.provider.shutdown() {
            eprintln!("telemetry: flushing spans failed: {e}");
        }
    }
}

/// Initialises logging and tracing for the process, as `service_name` (the OTel resource's
/// `service.name`). Must run inside the tokio runtime when exporting.
pub fn init(service_name: &str, config: &TelemetryConfig) -> Result<Telemetry> {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service_name.to_string())
        .build();
    let mut builder = SdkTracerProvider::builder().with_resource(resource);
    if !config.otlp_endpoint.is_empty() {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(&config.otlp_endpoint)
            .build()
            .map_err(|e| Error::Telemetry(format!("OTLP exporter for {}: {e}", config.otlp_endpoint)))?;
        builder = builder.with_batch_exporter(exporter);
    }
    let provider = builder.build();
    let tracer = provider.tracer("sharedcare");
    opentelemetry::global::set_tracer_provider(provider.clone());

    let filter = tracing_subscriber::EnvFilter::try_new(&config.log)
        .map_err(|e| Error::Config(format!("`telemetry.log`: {:?} is not a valid filter: {e}", config.log)))?;
    // Spans and events at INFO and above only: without a filter the OpenTelemetry layer would
    // turn every debug/trace event of hyper, h2 and sqlx into span events on the hot path.
    let otel = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(tracing_subscriber::filter::LevelFilter::INFO);
    let registry = tracing_subscriber::registry().with(otel);
    // Colours only on a terminal: a log file or collector gets plain text.
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    let res = match config.log_format {
        LogFormat::Text => registry.with(fmt.with_filter(filter)).try_init(),
        LogFormat::Json => registry.with(fmt.json().with_filter(filter)).try_init(),
    };
    // A second init in the same process (tests) keeps the first subscriber.
    let _ = res;
    Ok(Telemetry { provider })
}

/// The W3C `traceparent` of the current span ("" when there is none).
pub fn current_traceparent() -> String {
    let cx = tracing::Span::current().context();
    let mut carrier: HashMap<String, String> = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove("traceparent").unwrap_or_default()
}

/// The current trace id as 32 hex digits ("" when there is none).
pub fn current_trace_id() -> String {
    let cx = tracing::Span::current().context();
    let sc = cx.span().span_context().clone();
    if sc.is_valid() {
        sc.trace_id().to_string()
    } else {
        String::new()
    }
}

/// The trace id (32 hex digits) in a W3C `traceparent`; "" when it is not a valid one.
pub fn trace_id_of(traceparent: &str) -> String {
    let cx = context_of(traceparent);
    let sc = cx.span().span_context().clone();
    if sc.is_valid() {
        sc.trace_id().to_string()
    } else {
        String::new()
    }
}

/// The remote context a W3C `traceparent` describes (an empty context if it is invalid).
pub fn context_of(traceparent: &str) -> opentelemetry::Context {
    let mut carrier = HashMap::new();
    carrier.insert("traceparent".to_string(), traceparent.to_string());
    TraceContextPropagator::new().extract(&carrier)
}

/// Makes `span` a child of the remote span described by `traceparent` (ignored if invalid).
pub fn set_parent(span: &tracing::Span, traceparent: &str) {
    if traceparent.is_empty() {
        return;
    }
    let _ = span.set_parent(context_of(traceparent));
}

/// Makes `span`, the span of work done at once for several callers (a batch), a child of the
/// first caller's span, so that a lone caller's trace runs on through it, and links it to every
/// other caller's (OpenTelemetry's way of showing one operation serving several traces).
pub fn serve_callers(span: &tracing::Span, callers: impl IntoIterator<Item = opentelemetry::Context>) {
    let mut callers = callers.into_iter().filter(|cx| cx.span().span_context().is_valid());
    if let Some(first) = callers.next() {
        let _ = span.set_parent(first);
    }
    for cx in callers {
        span.add_link(cx.span().span_context().clone());
    }
}

/// Reads trace context from HTTP (and gRPC) headers.
pub struct HeaderExtractor<'a>(pub &'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// Makes `span` a child of the trace context in `headers`, if any.
pub fn set_parent_from_headers(span: &tracing::Span, headers: &http::HeaderMap) {
    if headers.contains_key("traceparent") {
        let cx = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
        let _ = span.set_parent(cx);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_trace_id_of_a_traceparent_and_of_nonsense() {
        assert_eq!(
            super::trace_id_of("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(super::trace_id_of(""), "");
        assert_eq!(
            super::trace_id_of("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
            ""
        );
        assert_eq!(super::trace_id_of("not a traceparent"), "");
    }
}
