//! The adaptive trace sampler: a `tracing_subscriber` layer that buffers the
//! spans and events of each tick and decides, when the tick's span closes,
//! whether to write them out (as JSON lines) or drop them.
//!
//! A tick is kept when
//! - it logged a warning or an error, or a CDNA violation (an event of target
//!   [`VIOLATION_TARGET`]): reason `error`;
//! - else it was slow (longer than the configured threshold, or, without one,
//!   than the running p99 of the last [`WINDOW`] ticks, first computed after 32
//!   ticks and refreshed every 128), for half of such ticks: reason `slow`;
//! - else with probability `rate` (the CDNA's `evolution.trace_sample_rate`,
//!   adjustable at run time through [`SamplerHandle::set_rate`]): reason `sampled`.
//!
//! The draws are a hash of the tick number, not a random generator: the same run
//! keeps the same ticks, and nothing here touches the simulation's RNG.
//!
//! The tick is the span named `tick` of target [`TICK_TARGET`] (see
//! [`crate::schedule::run_tick`]); every span and event inside it belongs to it.
//! Spans and events outside a tick are ignored here (the log layer prints them).

use serde::Serialize;
use serde_json::{Map, Value};
use std::io::Write;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

/// Target of the tick span and the per-system spans (defined by the schedule).
pub use crate::schedule::TICK_TARGET;
/// Target of the events that report CDNA violations; a tick with one is kept.
pub const VIOLATION_TARGET: &str = "neurograph::cdna";
/// Ticks the running p99 is computed over.
pub const WINDOW: usize = 1024;
/// The p99 is recomputed every this many ticks…
const P99_EVERY: u64 = 128;
/// …and first once this many are seen.
const P99_FIRST: u64 = 32;

/// Why a tick's trace was written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeepReason {
    /// It logged a warning, an error or a CDNA violation.
    Error,
    /// It was slow (and drew the half of slow ticks that are kept).
    Slow,
    /// It drew the base rate.
    Sampled,
}

/// Counters of the sampler.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SamplerStats {
    /// Ticks seen.
    pub ticks: u64,
    /// Ticks kept because they logged an error, a warning or a violation.
    pub kept_error: u64,
    /// Ticks kept because they were slow.
    pub kept_slow: u64,
    /// Ticks kept by the base rate.
    pub kept_sampled: u64,
    /// Lines written.
    pub lines: u64,
    /// Writes that failed (the trace output is best-effort; the run goes on).
    pub write_errors: u64,
}

impl SamplerStats {
    /// Ticks kept, all reasons.
    pub fn kept(&self) -> u64 {
        self.kept_error + self.kept_slow + self.kept_sampled
    }
}

struct Durations {
    recent: Vec<u64>,
    next: usize,
    seen: u64,
    p99: Option<u64>,
}

struct Shared {
    rate_bits: AtomicU32,
    /// Slow threshold in ns; 0 = use the running p99.
    slow_ns: AtomicU64,
    durations: Mutex<Durations>,
    out: Mutex<Box<dyn Write + Send>>,
    stats: Mutex<SamplerStats>,
}

/// Controls a running [`SamplingLayer`]: its rate and its counters.
#[derive(Clone)]
pub struct SamplerHandle(Arc<Shared>);

impl std::fmt::Debug for SamplerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SamplerHandle")
            .field("rate", &self.rate())
            .field("stats", &self.stats())
            .finish()
    }
}

impl SamplerHandle {
    /// Sets the base rate; clamped to [0, 1] (NaN counts as 0).
    pub fn set_rate(&self, rate: f32) {
        let r = if rate.is_nan() {
            0.0
        } else {
            rate.clamp(0.0, 1.0)
        };
        self.0.rate_bits.store(r.to_bits(), Ordering::Relaxed);
    }

    /// The base rate.
    pub fn rate(&self) -> f32 {
        f32::from_bits(self.0.rate_bits.load(Ordering::Relaxed))
    }

    /// Sets the slow-tick threshold; `None` uses the running p99.
    pub fn set_slow_threshold(&self, t: Option<Duration>) {
        let ns = t.map_or(0, |d| (d.as_nanos() as u64).max(1));
        self.0.slow_ns.store(ns, Ordering::Relaxed);
    }

    /// The running p99 tick time, once enough ticks were seen.
    pub fn running_p99(&self) -> Option<Duration> {
        lock(&self.0.durations).p99.map(Duration::from_nanos)
    }

    /// The counters.
    pub fn stats(&self) -> SamplerStats {
        *lock(&self.0.stats)
    }

    /// Flushes the output.
    pub fn flush(&self) {
        let _ = lock(&self.0.out).flush();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The filter the sampler is meant to run behind: NeuroGraph's spans and events
/// from INFO, other crates' from WARN.
pub fn default_filter() -> tracing_subscriber::filter::Targets {
    tracing_subscriber::filter::Targets::new()
        .with_target("neurograph", Level::INFO)
        .with_default(Level::WARN)
}

/// The layer; build it with [`sampling_layer`].
pub struct SamplingLayer(Arc<Shared>);

/// A sampling layer writing JSON lines to `out`, with base rate `rate` and an
/// optional fixed slow-tick threshold, and the handle that controls it.
pub fn sampling_layer(
    out: Box<dyn Write + Send>,
    rate: f32,
    slow: Option<Duration>,
) -> (SamplingLayer, SamplerHandle) {
    let shared = Arc::new(Shared {
        rate_bits: AtomicU32::new(0),
        slow_ns: AtomicU64::new(0),
        durations: Mutex::new(Durations {
            recent: Vec::with_capacity(WINDOW),
            next: 0,
            seen: 0,
            p99: None,
        }),
        out: Mutex::new(out),
        stats: Mutex::new(SamplerStats::default()),
    });
    let handle = SamplerHandle(shared.clone());
    handle.set_rate(rate);
    handle.set_slow_threshold(slow);
    (SamplingLayer(shared), handle)
}

/// SplitMix64: a well-mixed hash of the tick for the keep draws.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// A tick's fixed draw in `[0, 1)` for sampling at a base rate: the low 53
/// bits of a SplitMix64 hash of the tick. A tick is sampled at rate `r` when its draw is below `r`,
/// so every sampler that uses it (this one, `serve --otlp`'s) keeps the same
/// ticks.
pub fn tick_draw(tick: u64) -> f64 {
    (mix(tick) & ((1 << 53) - 1)) as f64 / (1u64 << 53) as f64
}

impl Shared {
    /// Notes a tick's duration; returns whether it counts as slow.
    fn note_duration(&self, ns: u64) -> bool {
        let threshold = self.slow_ns.load(Ordering::Relaxed);
        let mut d = lock(&self.durations);
        let slow_by_p99 = d.p99.is_some_and(|p| ns > p);
        if d.recent.len() < WINDOW {
            d.recent.push(ns);
        } else {
            let i = d.next;
            d.recent[i] = ns;
        }
        d.next = (d.next + 1) % WINDOW;
        d.seen += 1;
        if d.seen == P99_FIRST || d.seen.is_multiple_of(P99_EVERY) {
            let mut v = d.recent.clone();
            let k = (v.len() * 99).div_ceil(100).saturating_sub(1);
            let (_, p, _) = v.select_nth_unstable(k);
            d.p99 = Some(*p);
        }
        if threshold > 0 {
            ns > threshold
        } else {
            slow_by_p99
        }
    }

    fn decide(&self, tick: u64, ns: u64, error: bool) -> Option<KeepReason> {
        let slow = self.note_duration(ns);
        let h = mix(tick);
        if error {
            Some(KeepReason::Error)
        } else if slow && h >> 63 == 0 {
            Some(KeepReason::Slow)
        } else {
            let u = tick_draw(tick);
            let rate = f32::from_bits(self.rate_bits.load(Ordering::Relaxed)) as f64;
            (u < rate).then_some(KeepReason::Sampled)
        }
    }
}

/// Fields of a span or event, as JSON.
#[derive(Default)]
struct Fields(Map<String, Value>);

impl Visit for Fields {
    fn record_f64(&mut self, f: &Field, v: f64) {
        self.0.insert(f.name().into(), v.into());
    }
    fn record_i64(&mut self, f: &Field, v: i64) {
        self.0.insert(f.name().into(), v.into());
    }
    fn record_u64(&mut self, f: &Field, v: u64) {
        self.0.insert(f.name().into(), v.into());
    }
    fn record_bool(&mut self, f: &Field, v: bool) {
        self.0.insert(f.name().into(), v.into());
    }
    fn record_str(&mut self, f: &Field, v: &str) {
        self.0.insert(f.name().into(), v.into());
    }
    fn record_debug(&mut self, f: &Field, v: &dyn std::fmt::Debug) {
        self.0.insert(f.name().into(), format!("{v:?}").into());
    }
}

/// What the layer keeps in a span's extensions.
struct SpanData {
    fields: Fields,
    start: Instant,
}

/// One line of a kept tick.
#[derive(Serialize)]
struct Line<'a> {
    tick: u64,
    keep: KeepReason,
    /// `span` or `event`.
    kind: &'static str,
    name: &'a str,
    /// The enclosing span's name (`null` for the tick).
    parent: Option<&'a str>,
    level: &'a str,
    target: &'a str,
    /// Microseconds since the tick began.
    start_us: f64,
    /// Span duration in microseconds (0 for events).
    duration_us: f64,
    fields: &'a Map<String, Value>,
}

/// A buffered record, written only if the tick is kept.
struct Buffered {
    kind: &'static str,
    name: &'static str,
    parent: Option<&'static str>,
    level: Level,
    target: &'static str,
    start: Instant,
    duration: Duration,
    fields: Map<String, Value>,
}

/// The tick's buffer, in the tick span's extensions.
#[derive(Default)]
struct TickBuffer {
    records: Vec<Buffered>,
    error: bool,
}

fn is_tick(meta: &tracing::Metadata<'_>) -> bool {
    meta.name() == "tick" && meta.target() == TICK_TARGET
}

impl<S> Layer<S> for SamplingLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let tick = is_tick(span.metadata());
        if !tick && !span.scope().skip(1).any(|s| is_tick(s.metadata())) {
            return;
        }
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        let mut ext = span.extensions_mut();
        ext.insert(SpanData {
            fields,
            start: Instant::now(),
        });
        if tick {
            ext.insert(TickBuffer::default());
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id)
            && let Some(data) = span.extensions_mut().get_mut::<SpanData>()
        {
            values.record(&mut data.fields);
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let Some(scope) = ctx.event_scope(event) else {
            return;
        };
        let mut parent = None;
        for span in scope {
            if parent.is_none() {
                parent = Some(span.name());
            }
            if !is_tick(span.metadata()) {
                continue;
            }
            let meta = event.metadata();
            let mut fields = Fields::default();
            event.record(&mut fields);
            let mut ext = span.extensions_mut();
            if let Some(buf) = ext.get_mut::<TickBuffer>() {
                buf.error |= *meta.level() <= Level::WARN || meta.target() == VIOLATION_TARGET;
                buf.records.push(Buffered {
                    kind: "event",
                    name: meta.name(),
                    parent,
                    level: *meta.level(),
                    target: meta.target(),
                    start: Instant::now(),
                    duration: Duration::ZERO,
                    fields: fields.0,
                });
            }
            return;
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else { return };
        let Some(data) = span.extensions_mut().remove::<SpanData>() else {
            return;
        };
        let meta = span.metadata();
        let duration = data.start.elapsed();
        if !is_tick(meta) {
            let parent = span.parent().map(|p| p.name());
            if let Some(root) = span.scope().skip(1).find(|s| is_tick(s.metadata()))
                && let Some(buf) = root.extensions_mut().get_mut::<TickBuffer>()
            {
                buf.records.push(Buffered {
                    kind: "span",
                    name: meta.name(),
                    parent,
                    level: *meta.level(),
                    target: meta.target(),
                    start: data.start,
                    duration,
                    fields: data.fields.0,
                });
            }
            return;
        }
        let Some(buf) = span.extensions_mut().remove::<TickBuffer>() else {
            return;
        };
        let tick = data
            .fields
            .0
            .get("tick")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        let keep = self.0.decide(tick, duration.as_nanos() as u64, buf.error);
        {
            let mut stats = lock(&self.0.stats);
            stats.ticks += 1;
            match keep {
                None => return,
                Some(KeepReason::Error) => stats.kept_error += 1,
                Some(KeepReason::Slow) => stats.kept_slow += 1,
                Some(KeepReason::Sampled) => stats.kept_sampled += 1,
            }
        }
        let Some(keep) = keep else { return };
        let origin = data.start;
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        let tick_line = Buffered {
            kind: "span",
            name: "tick",
            parent: None,
            level: *meta.level(),
            target: meta.target(),
            start: origin,
            duration,
            fields: data.fields.0,
        };
        let mut out = lock(&self.0.out);
        let mut written = 0u64;
        let mut failed = false;
        for r in std::iter::once(&tick_line).chain(buf.records.iter()) {
            let line = Line {
                tick,
                keep,
                kind: r.kind,
                name: r.name,
                parent: r.parent,
                level: r.level.as_str(),
                target: r.target,
                start_us: us(r.start.saturating_duration_since(origin)),
                duration_us: us(r.duration),
                fields: &r.fields,
            };
            let ok =
                serde_json::to_writer(&mut *out, &line).is_ok() && out.write_all(b"\n").is_ok();
            if ok {
                written += 1;
            } else {
                failed = true;
            }
        }
        if out.flush().is_err() {
            failed = true;
        }
        drop(out);
        let mut stats = lock(&self.0.stats);
        stats.lines += written;
        stats.write_errors += u64::from(failed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    /// A writer into shared memory.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            lock(&self.0).extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Sink {
        fn lines(&self) -> Vec<Value> {
            String::from_utf8(lock(&self.0).clone())
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect()
        }
        fn kept_ticks(&self, reason: &str) -> Vec<u64> {
            self.lines()
                .iter()
                .filter(|l| l["name"] == "tick" && l["keep"] == reason)
                .map(|l| l["tick"].as_u64().unwrap())
                .collect()
        }
    }

    /// Runs `ticks` fake ticks (a tick span with one system span inside) under
    /// a sampler; `during(tick)` runs inside the system span.
    fn drive(
        rate: f32,
        slow: Option<Duration>,
        ticks: u64,
        during: impl Fn(u64, &SamplerHandle),
    ) -> (Sink, SamplerHandle) {
        let sink = Sink::default();
        let (layer, handle) = sampling_layer(Box::new(sink.clone()), rate, slow);
        let sub = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(sub, || {
            for t in 1..=ticks {
                let span =
                    tracing::info_span!(target: TICK_TARGET, "tick", tick = t, tokens = 10u64);
                let _g = span.enter();
                let s = tracing::info_span!(target: TICK_TARGET, "forces");
                let _s = s.enter();
                during(t, &handle);
            }
        });
        (sink, handle)
    }

    #[test]
    fn base_rate_keeps_about_that_share_and_the_same_ticks_every_time() {
        let (sink, h) = drive(0.05, Some(Duration::from_secs(60)), 4000, |_, _| {});
        let kept = sink.kept_ticks("sampled");
        let st = h.stats();
        assert_eq!(st.ticks, 4000);
        assert_eq!(st.kept_sampled as usize, kept.len());
        // 5% of 4000 = 200; a binomial spread of ±4σ is ±55.
        assert!((145..=255).contains(&kept.len()), "kept {}", kept.len());
        let (again, _) = drive(0.05, Some(Duration::from_secs(60)), 4000, |_, _| {});
        assert_eq!(again.kept_ticks("sampled"), kept);
        // A kept tick carries its system span, with its parent.
        let lines = sink.lines();
        let forces = lines
            .iter()
            .find(|l| l["name"] == "forces" && l["tick"] == kept[0])
            .expect("the system span of a kept tick is written");
        assert_eq!(forces["parent"], "tick");
        assert_eq!(forces["kind"], "span");
    }

    #[test]
    fn ticks_with_errors_or_violations_are_always_kept() {
        let (sink, h) = drive(0.0, Some(Duration::from_secs(60)), 300, |t, _| {
            if t == 77 {
                tracing::error!(code = 3, "boom");
            }
            if t == 150 {
                tracing::info!(target: VIOLATION_TARGET, speed = 4u64, "cdna violations");
            }
            if t == 200 {
                tracing::info!("an ordinary event");
            }
        });
        assert_eq!(sink.kept_ticks("error"), [77, 150]);
        assert_eq!(h.stats().kept(), 2);
        let ev = sink
            .lines()
            .into_iter()
            .find(|l| l["kind"] == "event" && l["tick"] == 77)
            .unwrap();
        assert_eq!(ev["level"], "ERROR");
        assert_eq!(ev["fields"]["code"], 3);
        assert_eq!(ev["fields"]["message"], "boom");
        assert_eq!(ev["parent"], "forces");
    }

    #[test]
    fn half_of_slow_ticks_are_kept() {
        // Every tick is over a 1 ns threshold.
        let (sink, _) = drive(0.0, Some(Duration::from_nanos(1)), 2000, |_, _| {});
        let n = sink.kept_ticks("slow").len();
        assert!((900..=1100).contains(&n), "kept {n} of 2000 slow ticks");
    }

    #[test]
    fn running_p99_flags_the_outliers() {
        // No threshold: the p99 of the window decides. One tick in 25 sleeps
        // 30 ms, so the p99 is a sleeping tick and only the longest sleepers
        // beat it (a busy machine would have to stall an empty tick for 30 ms
        // to break this).
        let (sink, h) = drive(0.0, None, 2000, |t, _| {
            if t % 25 == 0 {
                std::thread::sleep(Duration::from_millis(30));
            }
        });
        assert!(h.running_p99().unwrap() >= Duration::from_millis(30));
        let slow = sink.kept_ticks("slow");
        assert!(!slow.is_empty());
        assert!(slow.iter().all(|t| t % 25 == 0), "{slow:?}");
    }

    #[test]
    fn the_rate_changes_at_run_time() {
        let (sink, _) = drive(0.0, Some(Duration::from_secs(60)), 400, |t, h| {
            if t == 200 {
                h.set_rate(1.0);
            }
        });
        // The change takes effect when tick 200 closes.
        let kept = sink.kept_ticks("sampled");
        assert_eq!(kept, (200..=400).collect::<Vec<_>>());
    }

    #[test]
    fn rate_is_clamped() {
        let (_, h) = drive(0.0, None, 0, |_, _| {});
        h.set_rate(7.0);
        assert_eq!(h.rate(), 1.0);
        h.set_rate(f32::NAN);
        assert_eq!(h.rate(), 0.0);
    }
}
