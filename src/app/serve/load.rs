//! `neurograph bench serve`: a bounded load test of `serve` on loopback.
//!
//! One process: a [`Server`] on `127.0.0.1:0` with no rate limit, first
//! measured alone (its tick rate), then under `clients` concurrent
//! keep-alive HTTP/1.1 clients (hyper) for `seconds`, each looping over a
//! fixed mix of reads, queries and commands at random tokens. Reports, per
//! endpoint, requests, errors (transport errors and any status but 200), and
//! the p50/p99 latency; and the tick rate alone and under the load.

use super::{ServeError, ServeLimits, ServeOptions, Server};
use crate::app::runner::{RunConfig, RunOptions};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use rand::{RngExt, SeedableRng};
use serde::Serialize;
use std::time::{Duration, Instant};

/// What to run.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Scenario.
    pub scenario: String,
    /// Tokens.
    pub tokens: usize,
    /// Concurrent clients.
    pub clients: usize,
    /// Seconds under load.
    pub seconds: f64,
    /// Seconds of the tick rate alone (before the load).
    pub baseline_seconds: f64,
    /// Ticks run before anything is measured (the field settles: steady
    /// state is measured, not the first ticks).
    pub warmup_ticks: u64,
    /// Seed of the world and of the clients' choices.
    pub seed: u64,
    /// Keep the engine paused (no warm-up, no ticks): the requests' own cost,
    /// without the wait for the tick in progress.
    pub paused: bool,
    /// `quotas.memory_budget_bytes` (default: the quota's default, 1 GiB).
    pub memory_budget: Option<u64>,
}

/// One endpoint's figures.
#[derive(Clone, Debug, Serialize)]
pub struct EndpointLoad {
    /// The request, e.g. `POST /api/query (k=10)`.
    pub endpoint: String,
    /// Requests answered.
    pub requests: u64,
    /// Transport errors and answers other than 200.
    pub errors: u64,
    /// Median latency, ms.
    pub p50_ms: f64,
    /// 99th percentile latency, ms.
    pub p99_ms: f64,
}

/// The report.
#[derive(Clone, Debug, Serialize)]
pub struct LoadReport {
    /// Tokens in the world.
    pub tokens: u64,
    /// Whether the engine was paused.
    pub paused: bool,
    /// Ticks run before the measurements.
    pub warmup_ticks: u64,
    /// Clients.
    pub clients: usize,
    /// Seconds under load.
    pub seconds: f64,
    /// Ticks per second with no client.
    pub ticks_per_s_alone: f64,
    /// Ticks per second under the load.
    pub ticks_per_s_loaded: f64,
    /// Requests per second, all endpoints.
    pub requests_per_s: f64,
    /// Errors, all endpoints.
    pub errors: u64,
    /// Per endpoint.
    pub endpoints: Vec<EndpointLoad>,
    /// The first few errors, as seen.
    pub error_samples: Vec<String>,
}

const ENDPOINTS: [&str; 6] = [
    "GET /api/status",
    "GET /api/tokens/{id}",
    "GET /api/tokens?offset&limit=100",
    "POST /api/query (k=10)",
    "POST /api/query (radius)",
    "POST /api/commands/impulse",
];

/// One request of kind `kind` at random tokens: method, path, body.
fn pick(kind: usize, n: u64, rng: &mut rand_chacha::ChaCha8Rng) -> (&'static str, String, String) {
    let id = rng.random_range(0..n);
    let point: Vec<String> = (0..8)
        .map(|_| format!("{:.3}", rng.random_range(-1.0f32..1.0)))
        .collect();
    let point = point.join(",");
    match kind {
        0 => ("GET", "/api/status".into(), String::new()),
        1 => ("GET", format!("/api/tokens/{id}"), String::new()),
        2 => (
            "GET",
            format!("/api/tokens?offset={}&limit=100", id.saturating_sub(100)),
            String::new(),
        ),
        3 => (
            "POST",
            "/api/query".into(),
            format!("{{\"point\":[{point}],\"k\":10}}"),
        ),
        4 => (
            "POST",
            "/api/query".into(),
            format!("{{\"point\":[{point}],\"radius\":0.3,\"limit\":100}}"),
        ),
        _ => (
            "POST",
            "/api/commands/impulse".into(),
            format!("{{\"id\":{id},\"impulse\":[0.001,0,0,0,0,0,0,0]}}"),
        ),
    }
}

type Sample = (usize, Duration, Result<(), String>);

async fn client(addr: std::net::SocketAddr, n: u64, seed: u64, until: Instant) -> Vec<Sample> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut out = Vec::new();
    let mut sender = None;
    // Clients start at different places in the mix.
    let mut k: usize = rng.random_range(0..ENDPOINTS.len());
    while Instant::now() < until {
        k += 1;
        let kind = k % ENDPOINTS.len();
        let (method, path, body) = pick(kind, n, &mut rng);
        let t0 = Instant::now();
        if sender.is_none() {
            sender = connect(addr).await.ok();
        }
        let r = match sender.as_mut() {
            None => Err("cannot connect".to_string()),
            Some(s) => send(s, addr, method, &path, body).await,
        };
        if r.is_err() {
            sender = None;
        }
        out.push((kind, t0.elapsed(), r));
    }
    out
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(addr: std::net::SocketAddr) -> Result<Sender, String> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    Ok(sender)
}

async fn send(
    s: &mut Sender,
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: String,
) -> Result<(), String> {
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, addr.to_string())
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    s.ready().await.map_err(|e| e.to_string())?;
    let resp = s.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    if status != hyper::StatusCode::OK {
        return Err(format!(
            "{method} {path}: {status}: {}",
            String::from_utf8_lossy(&bytes)
        ));
    }
    Ok(())
}

fn percentile(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

/// Ticks per second of a running server over `seconds` (read off its tick
/// summaries).
fn tick_rate(server: &Server, seconds: f64) -> f64 {
    let t0 = (Instant::now(), server.tick());
    std::thread::sleep(Duration::from_secs_f64(seconds));
    (server.tick() - t0.1) as f64 / t0.0.elapsed().as_secs_f64()
}

/// Runs the load test.
///
/// # Errors
/// [`ServeError`] when the server cannot start (a bad scenario or size) or
/// stop, or the clients' runtime cannot start.
pub fn load(o: &LoadOptions) -> Result<LoadReport, ServeError> {
    let mut config = RunConfig {
        scenario: Some(o.scenario.clone()),
        tokens: Some(o.tokens),
        seed: Some(o.seed),
        ..Default::default()
    };
    if let Some(b) = o.memory_budget {
        config.quotas.memory_budget_bytes = b;
    }
    let server = Server::start(ServeOptions {
        run: RunOptions {
            config,
            ..Default::default()
        },
        listen: "127.0.0.1:0".into(),
        rate: None,
        paused: o.paused,
        auth_token: None,
        limits: ServeLimits::default(),
        metrics: None,
    })?;
    let addr = server.addr();
    let n = o.tokens as u64;
    while !o.paused && server.tick() < o.warmup_ticks && server.running() {
        std::thread::sleep(Duration::from_millis(100));
    }
    let alone = tick_rate(&server, o.baseline_seconds);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| ServeError::Internal(e.to_string()))?;
    let until = Instant::now() + Duration::from_secs_f64(o.seconds);
    let tick0 = (Instant::now(), server.tick());
    let samples: Vec<Sample> = rt.block_on(async {
        let tasks: Vec<_> = (0..o.clients)
            .map(|c| tokio::spawn(client(addr, n, o.seed ^ (c as u64 + 1), until)))
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap_or_default());
        }
        all
    });
    let loaded = (server.tick() - tick0.1) as f64 / tick0.0.elapsed().as_secs_f64();
    drop(rt);
    server.stop()?;
    let mut endpoints = Vec::new();
    let mut error_samples = Vec::new();
    for (kind, name) in ENDPOINTS.iter().enumerate() {
        let mut times: Vec<Duration> = Vec::new();
        let mut errors = 0;
        for (k, d, r) in &samples {
            if *k != kind {
                continue;
            }
            times.push(*d);
            if let Err(e) = r {
                errors += 1;
                if error_samples.len() < 5 {
                    error_samples.push(e.clone());
                }
            }
        }
        times.sort();
        endpoints.push(EndpointLoad {
            endpoint: (*name).into(),
            requests: times.len() as u64,
            errors,
            p50_ms: percentile(&times, 0.5),
            p99_ms: percentile(&times, 0.99),
        });
    }
    Ok(LoadReport {
        tokens: n,
        paused: o.paused,
        warmup_ticks: if o.paused { 0 } else { o.warmup_ticks },
        clients: o.clients,
        seconds: o.seconds,
        ticks_per_s_alone: alone,
        ticks_per_s_loaded: loaded,
        requests_per_s: samples.len() as f64 / o.seconds,
        errors: endpoints.iter().map(|e| e.errors).sum(),
        endpoints,
        error_samples,
    })
}

impl LoadReport {
    /// The report as a table.
    pub fn to_text(&self) -> String {
        let mut s = format!(
            "{} clients for {:.0} s on {} tokens (after {} ticks{}): {:.0} requests/s, {} errors\n\
             ticks/s alone {:.2}, under load {:.2}\n\
             {:<36} {:>9} {:>7} {:>9} {:>9}\n",
            self.clients,
            self.seconds,
            self.tokens,
            self.warmup_ticks,
            if self.paused { ", paused" } else { "" },
            self.requests_per_s,
            self.errors,
            self.ticks_per_s_alone,
            self.ticks_per_s_loaded,
            "endpoint",
            "requests",
            "errors",
            "p50 ms",
            "p99 ms"
        );
        for e in &self.endpoints {
            s += &format!(
                "{:<36} {:>9} {:>7} {:>9.2} {:>9.2}\n",
                e.endpoint, e.requests, e.errors, e.p50_ms, e.p99_ms
            );
        }
        for e in &self.error_samples {
            s += &format!("error: {e}\n");
        }
        s
    }
}
