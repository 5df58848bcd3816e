//! OpenTelemetry for `neurograph serve --otlp URL` (feature `otel`): the
//! engine's tick spans (with their per-system children) and the HTTP request
//! spans, exported over OTLP/HTTP with protobuf bodies to `URL/v1/traces` by
//! the SDK's batch processor (its own thread; a full queue drops spans, never
//! blocks a tick).
//!
//! Sampling ([`TickSampler`]): a span with a parent follows the parent's
//! decision (an incoming W3C `traceparent` is the parent of its request's
//! span, see [`parent_from_headers`]); a root `tick` span is kept when a hash
//! of its tick number falls below the rate (the same ticks on every run, and
//! the same ones `--trace` samples at that rate: [`crate::observe::sampler::tick_draw`]); any other root (a request without
//! `traceparent`) is kept.
//!
//! The crates are the OpenTelemetry project's own (`opentelemetry`,
//! `opentelemetry_sdk`, `opentelemetry-otlp`) and `tracing-opentelemetry`,
//! which turns the `tracing` spans the engine already has into OTel spans.

use opentelemetry::trace::{Link, SpanKind, TraceContextExt, TraceId, TracerProvider as _};
use opentelemetry::{Context, KeyValue, Value};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::trace::{SamplingDecision, SamplingResult, SdkTracerProvider, ShouldSample};
use std::time::Duration;

/// Samples root tick spans by a hash of the tick number; see the module docs.
#[derive(Clone, Debug)]
pub struct TickSampler {
    /// Fraction of root tick spans kept, in `[0, 1]`.
    pub rate: f64,
}

impl ShouldSample for TickSampler {
    fn should_sample(
        &self,
        parent_context: Option<&Context>,
        _trace_id: TraceId,
        name: &str,
        _span_kind: &SpanKind,
        attributes: &[KeyValue],
        _links: &[Link],
    ) -> SamplingResult {
        let parent = parent_context
            .map(|c| c.span().span_context().clone())
            .filter(|sc| sc.is_valid());
        let keep = match (&parent, name) {
            (Some(sc), _) => sc.is_sampled(),
            (None, "tick") => {
                let tick = attributes
                    .iter()
                    .find(|kv| kv.key.as_str() == "tick")
                    // tracing-opentelemetry hands a u64 field over as text.
                    .and_then(|kv| match &kv.value {
                        Value::I64(t) => Some(*t as u64),
                        Value::String(t) => t.as_str().parse().ok(),
                        _ => None,
                    });
                crate::observe::sampler::tick_draw(tick.unwrap_or(0)) < self.rate
            }
            (None, _) => true,
        };
        SamplingResult {
            decision: if keep {
                SamplingDecision::RecordAndSample
            } else {
                SamplingDecision::Drop
            },
            attributes: Vec::new(),
            trace_state: parent
                .map(|sc| sc.trace_state().clone())
                .unwrap_or_default(),
        }
    }
}

/// The exporter's pipeline; [`Otel::shutdown`] flushes what is queued.
pub struct Otel {
    provider: SdkTracerProvider,
    /// The endpoint spans go to.
    pub endpoint: String,
}

/// The OTLP trace endpoint of a `--otlp` URL: `URL/v1/traces` unless the URL
/// names that path already.
///
/// # Errors
/// A message naming the URL when it is not `http://…` or `https://…`.
pub fn endpoint(url: &str) -> Result<String, String> {
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(format!(
            "--otlp {url}: an http:// or https:// URL of an OTLP/HTTP receiver (e.g. http://localhost:4318)"
        ));
    }
    let base = url.trim_end_matches('/');
    Ok(if base.ends_with("/v1/traces") {
        base.to_string()
    } else {
        format!("{base}/v1/traces")
    })
}

/// A `tracing` layer exporting to `url` with tick spans sampled at `tick_rate`,
/// and the pipeline behind it. Sets the W3C trace-context propagator.
///
/// # Errors
/// A message naming the URL or the rate when either is invalid, or why the
/// exporter could not be built.
pub fn layer<S>(
    url: &str,
    tick_rate: f64,
) -> Result<
    (
        tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::SdkTracer>,
        Otel,
    ),
    String,
>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    if !(0.0..=1.0).contains(&tick_rate) {
        return Err(format!("--otlp-tick-rate {tick_rate}: must be in [0, 1]"));
    }
    let endpoint = endpoint(url)?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(endpoint.clone())
        .with_timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| format!("--otlp {url}: {e}"))?;
    let provider = SdkTracerProvider::builder()
        .with_sampler(TickSampler { rate: tick_rate })
        .with_batch_exporter(exporter)
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name("neurograph")
                .build(),
        )
        .build();
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    let tracer = provider.tracer("neurograph");
    Ok((
        tracing_opentelemetry::layer().with_tracer(tracer),
        Otel { provider, endpoint },
    ))
}

impl Otel {
    /// Exports what is queued and stops the pipeline (at most a few seconds).
    ///
    /// # Errors
    /// Why the last export failed (e.g. the receiver is gone).
    pub fn shutdown(self) -> Result<(), String> {
        self.provider
            .shutdown_with_timeout(Duration::from_secs(5))
            .map_err(|e| e.to_string())
    }
}

struct Headers<'a>(&'a axum::http::HeaderMap);

impl opentelemetry::propagation::Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// Makes `span` the child of the request's `traceparent`, if it has one.
pub fn parent_from_headers(span: &tracing::Span, headers: &axum::http::HeaderMap) {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    if !headers.contains_key("traceparent") {
        return;
    }
    let cx = opentelemetry::global::get_text_map_propagator(|p| p.extract(&Headers(headers)));
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decide(s: &TickSampler, name: &str, attrs: &[KeyValue]) -> bool {
        let r = s.should_sample(
            None,
            TraceId::from(1u128),
            name,
            &SpanKind::Internal,
            attrs,
            &[],
        );
        r.decision == SamplingDecision::RecordAndSample
    }

    #[test]
    fn tick_spans_are_kept_by_a_hash_of_the_tick() {
        let s = TickSampler { rate: 0.1 };
        let kept: Vec<i64> = (1..=10_000)
            .filter(|&t| decide(&s, "tick", &[KeyValue::new("tick", t)]))
            .collect();
        assert!(
            (800..1200).contains(&kept.len()),
            "{} of 10000 kept at 0.1",
            kept.len()
        );
        // The same ticks every time.
        assert!(
            kept.iter()
                .all(|&t| decide(&s, "tick", &[KeyValue::new("tick", t)]))
        );
        assert!(!decide(
            &TickSampler { rate: 0.0 },
            "tick",
            &[KeyValue::new("tick", 5)]
        ));
        assert!(decide(
            &TickSampler { rate: 1.0 },
            "tick",
            &[KeyValue::new("tick", 5)]
        ));
        // As tracing-opentelemetry hands a u64 field over: text.
        let text: Vec<i64> = (1..=10_000)
            .filter(|&t| decide(&s, "tick", &[KeyValue::new("tick", t.to_string())]))
            .collect();
        assert_eq!(text, kept);
        // Any other root span (a request) is kept.
        assert!(decide(&TickSampler { rate: 0.0 }, "http.request", &[]));
    }

    #[test]
    fn endpoints() {
        assert_eq!(
            endpoint("http://h:4318").unwrap(),
            "http://h:4318/v1/traces"
        );
        assert_eq!(
            endpoint("http://h:4318/").unwrap(),
            "http://h:4318/v1/traces"
        );
        assert_eq!(
            endpoint("https://h/v1/traces").unwrap(),
            "https://h/v1/traces"
        );
        assert!(endpoint("h:4318").unwrap_err().contains("http://"));
    }
}
