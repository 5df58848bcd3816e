//! `neurograph serve`: a live engine behind one HTTP listener: a JSON API,
//! a WebSocket stream, `/metrics`, `/health` and a live page at `/`.
//!
//! Three parts: the engine thread ([`engine`]) owns the simulation and ticks
//! it; the tokio runtime serves connections (axum on hyper, one task per
//! connection); they meet only through a bounded job queue and a `watch`
//! channel of tick summaries. See `docs/serve.md` for the endpoints.

pub mod api;
pub mod engine;
pub mod load;
#[cfg(feature = "otel")]
pub mod otel;
pub mod stream;

use crate::app::runner::{RunError, RunOptions, RunSummary, Session};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// The live page served at `/`.
pub const PAGE: &str = include_str!("page.html");

/// The default `--listen` address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7878";

/// Bounds on what clients can ask; see `docs/serve.md` ("Bounds").
#[derive(Clone, Copy, Debug)]
pub struct ServeLimits {
    /// The largest request body, in bytes (413 beyond).
    pub max_body_bytes: usize,
    /// Tokens in one `batch` command (413 beyond).
    pub max_batch: usize,
    /// Tokens or members in one page, and groups per level.
    pub max_page: usize,
    /// `k` of a nearest query and results of a radius query.
    pub max_results: usize,
    /// Ticks one `step` may ask for.
    pub max_step: u64,
    /// Jobs waiting for the engine (503 beyond).
    pub queue: usize,
    /// Connections open at once (more are closed at once).
    pub max_connections: usize,
    /// WebSocket streams open at once (503 beyond).
    pub max_streams: usize,
    /// Time a client has to send a request's headers.
    pub header_timeout: Duration,
    /// The longest a request waits for the engine (504 beyond).
    pub request_timeout: Duration,
    /// The longest a `step` request waits for its ticks.
    pub step_timeout: Duration,
}

impl Default for ServeLimits {
    fn default() -> Self {
        Self {
            max_body_bytes: 4 << 20,
            max_batch: 10_000,
            max_page: 10_000,
            max_results: 100_000,
            max_step: 1_000_000,
            queue: 1024,
            max_connections: 256,
            max_streams: 32,
            header_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            step_timeout: Duration::from_secs(600),
        }
    }
}

/// What to serve.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// The run: world, WAL, observability.
    pub run: RunOptions,
    /// The address to listen on (`host:port`; port 0 picks a free one).
    pub listen: String,
    /// At most this many ticks per second (`None`: as fast as it goes).
    pub rate: Option<f64>,
    /// Start paused.
    pub paused: bool,
    /// The bearer token every request but `/` must carry; required when
    /// `listen` is not a loopback address.
    pub auth_token: Option<String>,
    /// The bounds.
    pub limits: ServeLimits,
    /// `/metrics`' renderer (the process's Prometheus recorder).
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
}

/// Why `serve` did not start or did not end cleanly.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A setting is wrong (the message names it and the limit).
    #[error("{0}")]
    Config(String),
    /// The listener could not be opened.
    #[error("--listen {addr}: cannot listen: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// The world could not be opened or closed.
    #[error(transparent)]
    Run(#[from] RunError),
    /// The engine thread or the runtime failed.
    #[error("serve: {0}")]
    Internal(String),
}

/// A running server. [`Server::stop`] ends it: the engine finishes its tick,
/// closes the run (the WAL with a final snapshot) and returns the summary.
pub struct Server {
    addr: SocketAddr,
    live: tokio::sync::watch::Receiver<Arc<api::TickInfo>>,
    shutdown: Arc<AtomicBool>,
    runtime: Option<tokio::runtime::Runtime>,
    engine: Option<std::thread::JoinHandle<Result<RunSummary, RunError>>>,
}

/// Checks the settings that need no world: the rate, and that a listener
/// beyond loopback has a token.
fn check(opts: &ServeOptions) -> Result<Vec<SocketAddr>, ServeError> {
    if let Some(r) = opts.rate
        && !(r.is_finite() && (engine::MIN_RATE..=1e6).contains(&r))
    {
        return Err(ServeError::Config(format!(
            "--rate {r}: ticks per second in [{}, 1e6] (leave it out for no limit)",
            engine::MIN_RATE
        )));
    }
    if let Some(t) = &opts.auth_token
        && t.len() < 16
    {
        return Err(ServeError::Config(format!(
            "--auth-token: {} bytes; use at least 16 (e.g. `openssl rand -hex 32`)",
            t.len()
        )));
    }
    let addrs: Vec<SocketAddr> = opts
        .listen
        .to_socket_addrs()
        .map_err(|source| ServeError::Bind {
            addr: opts.listen.clone(),
            source,
        })?
        .collect();
    if opts.auth_token.is_none()
        && let Some(open) = addrs.iter().find(|a| !a.ip().is_loopback())
    {
        return Err(ServeError::Config(format!(
            "--listen {}: {} is not a loopback address; serving beyond this machine needs \
             --auth-token (or NEUROGRAPH_AUTH_TOKEN)",
            opts.listen,
            open.ip()
        )));
    }
    Ok(addrs)
}

impl Server {
    /// Binds the listener, opens the world (as `neurograph run` does: a
    /// scenario, an input, or a WAL to resume) on the engine thread, and
    /// starts serving.
    ///
    /// # Errors
    /// [`ServeError::Config`] for a bad setting (a non-loopback address
    /// without a token, a short token, a bad rate); [`ServeError::Bind`] when
    /// the address cannot be bound; [`ServeError::Run`] when the world cannot
    /// be opened; [`ServeError::Internal`] when a thread cannot start.
    pub fn start(opts: ServeOptions) -> Result<Self, ServeError> {
        let addrs = check(&opts)?;
        let bind_err = |source| ServeError::Bind {
            addr: opts.listen.clone(),
            source,
        };
        let listener = std::net::TcpListener::bind(&addrs[..]).map_err(bind_err)?;
        listener.set_nonblocking(true).map_err(bind_err)?;
        let addr = listener.local_addr().map_err(bind_err)?;
        let health = opts.run.live.clone().unwrap_or_default();
        let mut run = opts.run.clone();
        run.live = Some(health.clone());
        let (jobs_tx, jobs_rx) = std::sync::mpsc::sync_channel(opts.limits.queue);
        let (live_tx, live_rx) = tokio::sync::watch::channel(Arc::default());
        let shutdown = Arc::new(AtomicBool::new(false));
        let (opened_tx, opened_rx) = std::sync::mpsc::channel();
        let (paused, rate, stop) = (opts.paused, opts.rate, shutdown.clone());
        let engine = std::thread::Builder::new()
            .name("neurograph-engine".into())
            .spawn(move || {
                let session = match Session::open(run) {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = opened_tx.send(Err(e));
                        return Err(RunError::Config("not opened".into()));
                    }
                };
                let _ = opened_tx.send(Ok(()));
                let mut e = engine::Engine::new(session, paused, rate, live_tx);
                e.run(&jobs_rx, &stop);
                e.finish()
            })
            .map_err(|e| ServeError::Internal(e.to_string()))?;
        match opened_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let _ = engine.join();
                return Err(ServeError::Run(e));
            }
            Err(_) => {
                let why = match engine.join() {
                    Err(p) => crate::schedule::panic_message(&*p),
                    Ok(_) => "stopped".into(),
                };
                return Err(ServeError::Internal(format!(
                    "the engine thread failed: {why}"
                )));
            }
        }
        let state = api::AppState {
            jobs: jobs_tx,
            live: live_rx.clone(),
            limits: opts.limits,
            auth: opts.auth_token.map(Into::into),
            metrics: opts.metrics,
            health,
            ws_slots: Arc::new(tokio::sync::Semaphore::new(opts.limits.max_streams)),
        };
        // From here a failure stops the engine thread before returning.
        let stop_engine = |e: ServeError| {
            shutdown.store(true, Ordering::Relaxed);
            e
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("neurograph-serve")
            .enable_all()
            .build()
            .map_err(|e| stop_engine(ServeError::Internal(e.to_string())))?;
        let listener = {
            let _guard = runtime.enter();
            tokio::net::TcpListener::from_std(listener).map_err(|e| stop_engine(bind_err(e)))?
        };
        runtime.spawn(accept_loop(listener, api::router(state), opts.limits));
        Ok(Self {
            addr,
            live: live_rx,
            shutdown,
            runtime: Some(runtime),
            engine: Some(engine),
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The last tick completed.
    pub fn tick(&self) -> u64 {
        self.live.borrow().tick
    }

    /// Whether the engine thread is still running.
    pub fn running(&self) -> bool {
        self.engine.as_ref().is_some_and(|e| !e.is_finished())
    }

    /// Stops: no new connections; the engine ends its tick, journals the
    /// commands applied since (one more tick when there are any), closes the
    /// run and returns its summary.
    ///
    /// # Errors
    /// [`ServeError::Run`] when the WAL cannot be closed;
    /// [`ServeError::Internal`] when the engine thread panicked.
    pub fn stop(mut self) -> Result<RunSummary, ServeError> {
        self.shutdown.store(true, Ordering::Relaxed);
        // The engine first: its last tick answers the acknowledgements that
        // wait for it, while the connections are still there to carry them.
        let engine = self.engine.take().expect("stopped once");
        let joined = engine.join();
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(1));
        }
        match joined {
            Ok(r) => r.map_err(ServeError::Run),
            Err(p) => Err(ServeError::Internal(format!(
                "the engine thread panicked: {}",
                crate::schedule::panic_message(&*p)
            ))),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.store(true, Ordering::Relaxed);
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
        if let Some(e) = self.engine.take() {
            let _ = e.join();
        }
    }
}

async fn accept_loop(listener: tokio::net::TcpListener, router: axum::Router, limits: ServeLimits) {
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "serve: accept failed");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(
                limit = limits.max_connections,
                "serve: too many connections"
            );
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .max_buf_size(64 * 1024);
            let conn = http
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .with_upgrades();
            let _ = conn.await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_public_listener_needs_a_token() {
        let mut o = ServeOptions {
            run: RunOptions::default(),
            listen: "0.0.0.0:0".into(),
            rate: None,
            paused: false,
            auth_token: None,
            limits: ServeLimits::default(),
            metrics: None,
        };
        let e = check(&o).unwrap_err().to_string();
        assert!(
            e.contains("not a loopback address") && e.contains("--auth-token"),
            "{e}"
        );
        o.auth_token = Some("short".into());
        assert!(check(&o).unwrap_err().to_string().contains("at least 16"));
        o.auth_token = Some("0123456789abcdef".into());
        assert!(check(&o).is_ok());
        o.listen = "127.0.0.1:0".into();
        o.auth_token = None;
        o.rate = Some(f64::NAN);
        assert!(check(&o).unwrap_err().to_string().contains("--rate NaN"));
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(api::token_matches("0123456789abcdef", "0123456789abcdef"));
        assert!(!api::token_matches("0123456789abcdef", "0123456789abcdeF"));
        assert!(!api::token_matches("0123456789abcdef", "0123456789abcde"));
        assert!(!api::token_matches("0123456789abcdef", ""));
    }
}
