//! The Prometheus side of the metrics (feature `cli`): a recorder with our
//! buckets, and the HTTP server for `/metrics` and `/health`.

use super::{INFO, LiveStatus, SECONDS_BUCKETS, describe};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A Prometheus recorder with our histogram buckets (not installed).
pub fn prometheus_recorder() -> metrics_exporter_prometheus::PrometheusRecorder {
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS_BUCKETS)
        .expect("the bucket list is not empty")
        .build_recorder()
}

/// Installs a Prometheus recorder as the process's global recorder and returns
/// the handle that renders it.
///
/// # Errors
/// A global recorder is installed already ([`RecorderTaken`]).
pub fn install_prometheus() -> Result<PrometheusHandle, RecorderTaken> {
    let recorder = prometheus_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|e| RecorderTaken(e.to_string()))?;
    describe();
    metrics::gauge!(INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    Ok(handle)
}

/// The process already has a global metrics recorder (one per process); holds
/// the `metrics` crate's message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("cannot install the Prometheus recorder: {0}")]
pub struct RecorderTaken(pub String);

/// Bounds that keep one scraper from stalling another or the process.
///
/// Every server the process opens for observers (`--metrics`, `--puffin`)
/// applies bounds like these; see `docs/observability.md` ("Hostile clients").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerLimits {
    /// Connections served at once; a connection beyond this is closed at once.
    pub max_connections: usize,
    /// Requests answered on one connection; the last one carries
    /// `Connection: close`.
    pub requests_per_connection: u32,
    /// Time a client has to send a request's headers (a half-sent request is
    /// dropped after this).
    pub header_timeout: Duration,
    /// The longest a connection lives, reading and writing included: a client
    /// that never reads its answers is dropped after this.
    pub connection_lifetime: Duration,
    /// The largest request head accepted, in bytes.
    pub max_request_bytes: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            max_connections: 64,
            requests_per_connection: 100,
            header_timeout: Duration::from_secs(5),
            connection_lifetime: Duration::from_secs(30),
            max_request_bytes: 16 * 1024,
        }
    }
}

/// Why the metrics server did not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The address could not be bound (in use, not local, not an address…).
    #[error("--metrics {addr}: cannot listen: {source}")]
    Bind {
        /// The address asked for.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// The server's thread or runtime could not start.
    #[error("cannot start the metrics server: {0}")]
    Runtime(std::io::Error),
}

/// An HTTP/1.1 server for `/metrics` and `/health` (hyper on a one-thread tokio
/// runtime). It also runs the recorder's upkeep every few seconds, so
/// histograms stay bounded when nobody scrapes.
///
/// Each connection is its own task, so a client that sends half a request or
/// never reads its answers holds only its own connection, and only until the
/// [`ServerLimits`] drop it. Dropping the server stops it at once: it never
/// waits for a client.
pub struct MetricsServer {
    addr: SocketAddr,
    runtime: Option<tokio::runtime::Runtime>,
}

impl MetricsServer {
    /// Binds `addr` (port 0 picks a free one) and serves with the default
    /// [`ServerLimits`].
    ///
    /// # Errors
    /// [`ServerError::Bind`] when `addr` cannot be bound, [`ServerError::Runtime`]
    /// when the server's thread cannot start.
    pub fn start(
        addr: &str,
        handle: PrometheusHandle,
        live: Arc<LiveStatus>,
    ) -> Result<Self, ServerError> {
        Self::start_with(addr, handle, live, ServerLimits::default())
    }

    /// [`MetricsServer::start`] with the given limits.
    ///
    /// # Errors
    /// As [`MetricsServer::start`].
    pub fn start_with(
        addr: &str,
        handle: PrometheusHandle,
        live: Arc<LiveStatus>,
        limits: ServerLimits,
    ) -> Result<Self, ServerError> {
        let bind_err = |source| ServerError::Bind {
            addr: addr.to_string(),
            source,
        };
        let listener = std::net::TcpListener::bind(addr).map_err(bind_err)?;
        listener.set_nonblocking(true).map_err(bind_err)?;
        let bound = listener.local_addr().map_err(bind_err)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(1)
            .thread_name("neurograph-metrics")
            .enable_io()
            .enable_time()
            .build()
            .map_err(ServerError::Runtime)?;
        let listener = {
            let _guard = runtime.enter();
            tokio::net::TcpListener::from_std(listener).map_err(bind_err)?
        };
        let upkeep = handle.clone();
        runtime.spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(5));
            loop {
                every.tick().await;
                upkeep.run_upkeep();
            }
        });
        runtime.spawn(accept_loop(listener, handle, live, limits));
        Ok(Self {
            addr: bound,
            runtime: Some(runtime),
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            // Connections still open (a client that never reads) are dropped,
            // not waited for.
            rt.shutdown_background();
        }
    }
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    handle: PrometheusHandle,
    live: Arc<LiveStatus>,
    limits: ServerLimits,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // E.g. out of file descriptors: do not spin on it.
                tracing::warn!(error = %e, "metrics server: accept failed");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(
                limit = limits.max_connections,
                "metrics server: too many connections"
            );
            drop(stream);
            continue;
        };
        let (handle, live) = (handle.clone(), live.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let served = AtomicU64::new(0);
            let service = hyper::service::service_fn(|req| {
                let n = served.fetch_add(1, Ordering::Relaxed) + 1;
                let last = n >= u64::from(limits.requests_per_connection);
                std::future::ready(Ok::<_, std::convert::Infallible>(respond(
                    &req, &handle, &live, last,
                )))
            });
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .max_buf_size(limits.max_request_bytes.max(8192));
            let conn = http.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            // Past its lifetime the connection is dropped, answers unsent.
            let _ = tokio::time::timeout(limits.connection_lifetime, conn).await;
        });
    }
}

type Body = http_body_util::Full<hyper::body::Bytes>;

fn respond(
    req: &hyper::Request<hyper::body::Incoming>,
    handle: &PrometheusHandle,
    live: &LiveStatus,
    last: bool,
) -> hyper::Response<Body> {
    let get = matches!(*req.method(), hyper::Method::GET | hyper::Method::HEAD);
    let (code, kind, body) = match (get, req.uri().path()) {
        (true, "/metrics") => (
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            handle.render(),
        ),
        (true, "/health") => {
            let (code, body) = live.health();
            (code, "application/json", body)
        }
        _ => (
            404,
            "text/plain; charset=utf-8",
            "not found: try /metrics or /health\n".to_string(),
        ),
    };
    let mut response = hyper::Response::builder()
        .status(code)
        .header(hyper::header::CONTENT_TYPE, kind);
    if last {
        response = response.header(hyper::header::CONNECTION, "close");
    }
    response
        .body(Body::new(body.into()))
        .unwrap_or_else(|_| hyper::Response::new(Body::default()))
}
