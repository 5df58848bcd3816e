//! The HTTP and WebSocket API of `neurograph serve` (axum). Every handler
//! either reads the published tick summary or sends a job to the engine
//! thread ([`super::engine`]) and awaits its answer. Errors are JSON,
//! `{"error": message, "status": code}`, with the engine's own message for a
//! refused command. The endpoints are listed in `docs/serve.md`.

use super::ServeLimits;
use super::engine::{Engine, Job, Reply};
use crate::model::commands::{SetValue, SimCommand};
use crate::model::components::{LinkKind, LinkSpec, TokenId, TokenKind, TokenSpec};
use crate::model::math::Vec8;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::mpsc::{SyncSender, TrySendError};
use std::time::Duration;
use tokio::sync::{Semaphore, oneshot, watch};

/// A refusal: an HTTP status and a message that names the value and the limit.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// The status code.
    pub status: StatusCode,
    /// Why.
    pub message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
    /// 400: a malformed request.
    pub fn bad_request(m: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, m)
    }
    /// 404: no such token, group or route.
    pub fn not_found(m: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, m)
    }
    /// 409: refused because of the world's state.
    pub fn conflict(m: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, m)
    }
    /// 413: a body or batch beyond its bound.
    pub fn too_large(m: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, m)
    }
    /// 422: a value out of its range.
    pub fn unprocessable(m: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, m)
    }
    /// 503: the engine is busy, over, or shutting down.
    pub fn unavailable(m: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, m)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": self.message, "status": self.status.as_u16() });
        (self.status, Json(body)).into_response()
    }
}

/// What the tick stream sends after each tick (and `/api/status` starts from).
#[derive(Clone, Debug, Default, Serialize)]
pub struct TickInfo {
    /// Ticks completed.
    pub tick: u64,
    /// Live tokens.
    pub tokens: u64,
    /// Links.
    pub links: u64,
    /// Groups per level, from level 1.
    pub groups: Vec<u64>,
    /// Ticks per second over the last few seconds.
    pub ticks_per_s: f64,
    /// Whether ticking is paused.
    pub paused: bool,
    /// The rate limit in ticks/s (`null`: none).
    pub rate: Option<f64>,
    /// The WAL's durable tick (`null`: no WAL).
    pub durable_tick: Option<u64>,
    /// Why the run is over, if it is.
    pub ended: Option<String>,
}

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    /// The engine's job queue.
    pub jobs: SyncSender<Job>,
    /// The latest tick summary.
    pub live: watch::Receiver<Arc<TickInfo>>,
    /// The bounds.
    pub limits: ServeLimits,
    /// The bearer token, if any.
    pub auth: Option<Arc<str>>,
    /// `/metrics`' renderer.
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// `/health`'s figures.
    pub health: Arc<crate::observe::LiveStatus>,
    /// WebSocket streams open at once.
    pub ws_slots: Arc<Semaphore>,
}

type ApiResult = Result<Json<Value>, ApiError>;

impl AppState {
    /// Runs `f` on the engine thread and awaits its answer (at most `wait`).
    async fn ask_for(
        &self,
        wait: Duration,
        f: impl FnOnce(&mut Engine, Reply) + Send + 'static,
    ) -> ApiResult {
        self.enqueue(wait, f).await?.map(Json)
    }

    /// Runs `f` on the engine thread and returns what it returns.
    pub(super) async fn ask_raw<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Engine) -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        self.enqueue(
            self.limits.request_timeout,
            move |e, r: oneshot::Sender<T>| {
                let _ = r.send(f(e));
            },
        )
        .await
    }

    async fn enqueue<T: Send + 'static>(
        &self,
        wait: Duration,
        f: impl FnOnce(&mut Engine, oneshot::Sender<T>) + Send + 'static,
    ) -> Result<T, ApiError> {
        let (tx, rx) = oneshot::channel();
        self.jobs
            .try_send(Box::new(move |e: &mut Engine| f(e, tx)))
            .map_err(|e| match e {
                TrySendError::Full(_) => ApiError::unavailable(format!(
                    "the engine is busy: {} requests are queued (the limit); retry later",
                    self.limits.queue
                )),
                TrySendError::Disconnected(_) => {
                    ApiError::unavailable("the server is shutting down")
                }
            })?;
        match tokio::time::timeout(wait, rx).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(_)) => Err(ApiError::unavailable("the engine stopped before answering")),
            Err(_) => Err(ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                format!("no answer from the engine within {wait:?}"),
            )),
        }
    }

    /// Runs `f` on the engine thread; its result is the answer.
    async fn ask(
        &self,
        f: impl FnOnce(&mut Engine) -> Result<Value, ApiError> + Send + 'static,
    ) -> ApiResult {
        self.ask_for(self.limits.request_timeout, move |e, r| {
            let _ = r.send(f(e));
        })
        .await
    }
}

/// The router: every endpoint, behind the bearer check when a token is set.
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/api/status", get(status))
        .route("/api/summary", get(summary))
        .route("/api/tokens", get(tokens))
        .route("/api/tokens/{id}", get(token))
        .route("/api/query", post(query))
        .route("/api/hierarchy", get(hierarchy))
        .route("/api/groups/{id}", get(group))
        .route("/api/cdna", get(cdna))
        .route("/api/commands/{name}", post(command))
        .route("/api/control/{action}", post(control))
        .route("/ws", get(super::stream::websocket))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_token,
        ));
    Router::new()
        .route("/", get(|| async { Html(super::PAGE) }))
        .merge(api)
        .fallback(|| async { ApiError::not_found("no such endpoint; see docs/serve.md") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed here; see docs/serve.md",
            )
        })
        .layer(axum::extract::DefaultBodyLimit::max(
            state.limits.max_body_bytes,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            announced_length,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            same_origin,
        ))
        .layer(axum::middleware::from_fn(request_span))
        .with_state(state)
}

/// The route of a path for a span's name: numeric segments become `{id}`.
fn route_of(path: &str) -> String {
    path.split('/')
        .map(|seg| {
            if !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()) {
                "{id}"
            } else {
                seg
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Every request runs in a span (target `neurograph::http`), named
/// `METHOD route`, with OpenTelemetry's HTTP attributes; with the `otel`
/// feature an incoming `traceparent` is its parent.
async fn request_span(req: Request, next: Next) -> Response {
    use tracing::Instrument;
    let name = format!("{} {}", req.method(), route_of(req.uri().path()));
    let span = tracing::info_span!(
        target: "neurograph::http",
        "http.request",
        otel.name = %name,
        otel.kind = "server",
        http.request.method = %req.method(),
        url.path = %req.uri().path(),
        http.response.status_code = tracing::field::Empty,
    );
    #[cfg(feature = "otel")]
    super::otel::parent_from_headers(&span, req.headers());
    let response = next.run(req).instrument(span.clone()).await;
    span.record("http.response.status_code", response.status().as_u16());
    response
}

/// Whether `given` is the configured token, in time that does not depend on
/// where they differ (`subtle`).
pub fn token_matches(expected: &str, given: &str) -> bool {
    use subtle::ConstantTimeEq;
    expected.as_bytes().ct_eq(given.as_bytes()).into()
}

/// Whether `host` (a Host header: name or address, optional port) names this
/// machine by an address or as `localhost`: not a name an attacker's DNS
/// could point here (DNS rebinding).
fn local_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok()
}

/// Refuses what a web page elsewhere could send through a visitor's browser:
/// a request whose `Origin` is not this server (cross-site POSTs, WebSocket
/// upgrades), and, without a token, a `Host` that is a DNS name (rebinding).
async fn same_origin(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if s.auth.is_none() && !local_host(host) {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "Host {host:?}: without --auth-token only an address or localhost is served \
                 (a DNS name could be rebinding)"
            ),
        )
        .into_response();
    }
    if let Some(origin) = req.headers().get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        let same = origin
            .split_once("://")
            .is_some_and(|(_, rest)| rest.eq_ignore_ascii_case(host));
        if !same {
            return ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "Origin {origin:?} is not this server ({host}): cross-site requests are refused"
                ),
            )
            .into_response();
        }
    }
    next.run(req).await
}

/// Refuses a body announced beyond the bound before reading any of it (a
/// client that sent `Expect: 100-continue` never sends it).
async fn announced_length(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let announced = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let max = s.limits.max_body_bytes;
    if let Some(n) = announced
        && n > max as u64
    {
        return ApiError::too_large(format!("a body of {n} bytes: at most {max} (--max-body)"))
            .into_response();
    }
    next.run(req).await
}

async fn require_token(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let Some(expected) = &s.auth else {
        return next.run(req).await;
    };
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    // Browsers cannot set headers on a WebSocket: the stream may carry the
    // token as `access_token` (RFC 6750 §2.3).
    let from_query = (req.uri().path() == "/ws")
        .then(|| Query::<std::collections::HashMap<String, String>>::try_from_uri(req.uri()).ok())
        .flatten()
        .and_then(|Query(mut q)| q.remove("access_token"));
    let ok = bearer.is_some_and(|b| token_matches(expected, b))
        || from_query.is_some_and(|q| token_matches(expected, &q));
    if ok {
        next.run(req).await
    } else {
        let mut r = ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token (Authorization: Bearer TOKEN)",
        )
        .into_response();
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            "Bearer".parse().expect("a header value"),
        );
        r
    }
}

async fn health(State(s): State<AppState>) -> Response {
    let (code, body) = s.health.health();
    let code = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (code, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn metrics(State(s): State<AppState>) -> Response {
    match &s.metrics {
        Some(h) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            h.render(),
        )
            .into_response(),
        None => ApiError::not_found("metrics are not recorded by this process").into_response(),
    }
}

async fn status(State(s): State<AppState>) -> ApiResult {
    s.ask(|e| {
        let tps = e.ticks_per_s();
        let digest = e.digest();
        let wal = e.durability();
        let (paused, rate, ended) = (e.paused, e.rate, e.ended.clone());
        let sim = e.session.sim_mut();
        let journal = sim.world().get_resource::<crate::wal::Journal>();
        let wal = wal.map(|d| {
            let st = journal.map(|j| j.stats()).unwrap_or_default();
            json!({ "durability": d.name(), "records": st.records, "durable_tick": st.durable_tick,
                    "snapshots": st.snapshots })
        });
        let log = sim.command_log();
        let commands = json!({ "applied": log.applied_total, "rejected": log.rejected_total,
                               "pending_journal": log.applied.len() });
        Ok(json!({
            "tick": sim.tick(),
            "tokens": sim.token_count(),
            "links": sim.link_count(),
            "groups": sim.hierarchy().groups_per_level(),
            "digest": digest,
            "ticks_per_s": tps,
            "paused": paused,
            "rate": rate,
            "ended": ended,
            "backend": sim.backend().active().name(),
            "gpu_tick": sim.backend().active_tick().map(|t| t.name()),
            "cdna_version": sim.cdna().version,
            "commands": commands,
            "wal": wal,
        }))
    })
    .await
}

async fn summary(State(s): State<AppState>) -> ApiResult {
    s.ask(|e| {
        serde_json::to_value(e.session.summary()).map_err(|x| ApiError::unavailable(x.to_string()))
    })
    .await
}

fn query_params<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(t)| t)
        .map_err(|e| ApiError::bad_request(e.body_text()))
}

/// Parses a JSON body; a body beyond the bound is 413, bad JSON 400.
fn body<T: DeserializeOwned>(b: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    let b = b.map_err(|e| ApiError::new(e.status(), e.body_text()))?;
    serde_json::from_slice(&b).map_err(|e| ApiError::bad_request(format!("bad JSON body: {e}")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Page {
    #[serde(default)]
    offset: u64,
    limit: Option<u64>,
}

fn token_json(t: &crate::sim::TokenState, group: Option<u64>) -> Value {
    json!({
        "id": t.id.0, "position": t.position, "velocity": t.velocity, "charge": t.charge,
        "mass": t.mass, "radius": t.field.radius, "strength": t.field.strength,
        "kind": t.kind, "level": t.level, "group": group,
    })
}

async fn tokens(State(s): State<AppState>, q: Result<Query<Page>, QueryRejection>) -> ApiResult {
    let p = query_params(q)?;
    let max = s.limits.max_page as u64;
    let limit = p.limit.unwrap_or(100);
    if limit > max {
        return Err(ApiError::unprocessable(format!(
            "limit = {limit}: at most {max} tokens a page"
        )));
    }
    s.ask(move |e| {
        let groups = e.group_of();
        let sim = e.session.sim();
        let registry = sim
            .world()
            .resource::<crate::model::registry::TokenRegistry>();
        let ids: Vec<TokenId> = registry
            .iter()
            .skip(usize::try_from(p.offset).unwrap_or(usize::MAX))
            .take(limit as usize)
            .map(|(id, _)| id)
            .collect();
        let page: Vec<Value> = ids
            .iter()
            .filter_map(|&id| sim.token(id))
            .map(|t| token_json(&t, groups.get(&t.id.0).copied()))
            .collect();
        Ok(
            json!({ "tick": sim.tick(), "total": sim.token_count(), "offset": p.offset,
                   "limit": limit, "tokens": page }),
        )
    })
    .await
}

/// A numeric path segment; a bad one is a JSON 400.
fn path_id(p: Result<Path<u64>, PathRejection>) -> Result<u64, ApiError> {
    p.map(|Path(id)| id)
        .map_err(|e| ApiError::bad_request(e.body_text()))
}

async fn token(State(s): State<AppState>, p: Result<Path<u64>, PathRejection>) -> ApiResult {
    let id = path_id(p)?;
    s.ask(move |e| {
        let groups = e.group_of();
        let sim = e.session.sim();
        let t = sim
            .token(TokenId(id))
            .ok_or_else(|| ApiError::not_found(format!("unknown token {id}")))?;
        let mut v = token_json(&t, groups.get(&id).copied());
        v["tick"] = json!(sim.tick());
        Ok(v)
    })
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QueryBody {
    point: Vec<f64>,
    k: Option<u64>,
    radius: Option<f64>,
    limit: Option<u64>,
}

/// An 8D point from JSON numbers: exactly 8, each finite as an `f32`.
fn point8(v: &[f64], what: &str) -> Result<Vec8, ApiError> {
    if v.len() != 8 {
        return Err(ApiError::unprocessable(format!(
            "{what} has {} components: it needs exactly 8",
            v.len()
        )));
    }
    let mut a = [0f32; 8];
    for (k, &x) in v.iter().enumerate() {
        a[k] = x as f32;
        if !a[k].is_finite() {
            return Err(ApiError::unprocessable(format!(
                "{what}[{k}] = {x}: beyond the f32 range (±3.4e38)"
            )));
        }
    }
    Ok(Vec8::from_array(a))
}

async fn query(State(s): State<AppState>, b: Result<Bytes, BytesRejection>) -> ApiResult {
    let q: QueryBody = body(b)?;
    let point = point8(&q.point, "point")?;
    let max = s.limits.max_results as u64;
    // A nearest query returns its k; a radius query the first 1,000 unless
    // `limit` says otherwise.
    let limit = q.limit.unwrap_or_else(|| q.k.unwrap_or(1000).min(max));
    if limit > max {
        return Err(ApiError::unprocessable(format!(
            "limit = {limit}: at most {max} results"
        )));
    }
    enum Ask {
        Nearest(usize),
        Within(f32),
    }
    let ask = match (q.k, q.radius) {
        (Some(k), None) if k <= max => Ask::Nearest(k as usize),
        (Some(k), None) => {
            return Err(ApiError::unprocessable(format!("k = {k}: at most {max}")));
        }
        (None, Some(r)) => Ask::Within(r as f32),
        (None, None) => Ask::Nearest(10),
        (Some(_), Some(_)) => {
            return Err(ApiError::unprocessable(
                "give k (nearest) or radius (within), not both",
            ));
        }
    };
    s.ask(move |e| {
        let sim = e.session.sim_mut();
        let found = match ask {
            Ask::Nearest(k) => sim.nearest(point, k),
            Ask::Within(r) => sim.within(point, r),
        }
        .map_err(|x| ApiError::unprocessable(x.0))?;
        let count = found.len();
        let results: Vec<Value> = found
            .iter()
            .take(limit as usize)
            .map(|(id, d)| json!({ "id": id.0, "distance": d }))
            .collect();
        Ok(
            json!({ "tick": sim.tick(), "count": count, "truncated": count > results.len(),
                   "results": results }),
        )
    })
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupsPage {
    max_groups: Option<u64>,
}

async fn hierarchy(
    State(s): State<AppState>,
    q: Result<Query<GroupsPage>, QueryRejection>,
) -> ApiResult {
    let max = query_params(q)?
        .max_groups
        .unwrap_or(1000)
        .min(s.limits.max_page as u64) as usize;
    s.ask(move |e| {
        let sim = e.session.sim();
        let h = sim.hierarchy();
        // Each group's parent: the group of the level above that lists it.
        let mut parent = std::collections::HashMap::new();
        for level in h.levels.iter().skip(1) {
            for g in level {
                for &m in &g.members {
                    parent.insert(m, g.id.0);
                }
            }
        }
        let levels: Vec<Value> = h
            .levels
            .iter()
            .enumerate()
            .map(|(k, groups)| {
                let shown: Vec<Value> = groups
                    .iter()
                    .take(max)
                    .map(|g| {
                        json!({ "id": g.id.0, "size": g.size, "children": g.members.len(),
                                "parent": parent.get(&g.id.0), "centre": g.centre,
                                "radius": g.radius, "mass": g.mass, "charge": g.charge,
                                "since": g.since })
                    })
                    .collect();
                json!({ "level": k + 1, "count": groups.len(), "truncated": groups.len() > max,
                        "groups": shown })
            })
            .collect();
        Ok(
            json!({ "tick": sim.tick(), "last_organized": h.last_organized, "events": h.events,
                   "levels": levels }),
        )
    })
    .await
}

async fn group(
    State(s): State<AppState>,
    id: Result<Path<u64>, PathRejection>,
    q: Result<Query<Page>, QueryRejection>,
) -> ApiResult {
    let id = path_id(id)?;
    let p = query_params(q)?;
    let max = s.limits.max_page as u64;
    let limit = p.limit.unwrap_or(max);
    if limit > max {
        return Err(ApiError::unprocessable(format!(
            "limit = {limit}: at most {max} members a page"
        )));
    }
    s.ask(move |e| {
        let sim = e.session.sim();
        let h = sim.hierarchy();
        let g = h
            .levels
            .iter()
            .flatten()
            .find(|g| g.id.0 == id)
            .ok_or_else(|| ApiError::not_found(format!("unknown group {id}")))?;
        let parent = h
            .levels
            .get(usize::from(g.level))
            .and_then(|above| above.iter().find(|p| p.members.binary_search(&id).is_ok()))
            .map(|p| p.id.0);
        let members: Vec<u64> = g
            .members
            .iter()
            .skip(usize::try_from(p.offset).unwrap_or(usize::MAX))
            .take(limit as usize)
            .copied()
            .collect();
        Ok(json!({
            "id": id, "level": g.level, "size": g.size, "parent": parent, "centre": g.centre,
            "radius": g.radius, "mass": g.mass, "charge": g.charge, "since": g.since,
            "members_are": if g.level == 1 { "tokens" } else { "groups" },
            "member_count": g.members.len(), "offset": p.offset, "members": members,
            "tick": sim.tick(),
        }))
    })
    .await
}

async fn cdna(State(s): State<AppState>) -> ApiResult {
    s.ask(|e| {
        serde_json::to_value(e.session.sim().cdna())
            .map_err(|x| ApiError::unavailable(x.to_string()))
    })
    .await
}

/// A token to spawn; the defaults are [`TokenSpec::at`]'s.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SpawnBody {
    position: Vec<f64>,
    velocity: Option<Vec<f64>>,
    #[serde(default = "one")]
    charge: f32,
    #[serde(default = "one")]
    mass: f32,
    #[serde(default = "one")]
    radius: f32,
    #[serde(default = "one")]
    strength: f32,
    #[serde(default)]
    kind: TokenKind,
}

fn one() -> f32 {
    1.0
}

impl SpawnBody {
    fn spec(&self, what: &str) -> Result<TokenSpec, ApiError> {
        let velocity = match &self.velocity {
            Some(v) => point8(v, &format!("{what}velocity"))?,
            None => Vec8::ZERO,
        };
        Ok(TokenSpec {
            position: point8(&self.position, &format!("{what}position"))?,
            velocity,
            charge: self.charge,
            mass: self.mass,
            radius: self.radius,
            strength: self.strength,
            kind: self.kind,
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LinkBody {
    a: u64,
    b: u64,
    #[serde(default = "one")]
    weight: f32,
    #[serde(default = "half")]
    rest_length: f32,
    #[serde(default = "half")]
    rigidity: f32,
}

fn half() -> f32 {
    0.5
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetBody {
    id: u64,
    position: Option<Vec<f64>>,
    velocity: Option<Vec<f64>>,
    charge: Option<f32>,
    mass: Option<f32>,
    radius: Option<f32>,
    strength: Option<f32>,
    kind: Option<TokenKind>,
}

impl SetBody {
    fn value(self) -> Result<SetValue, ApiError> {
        let mut v = Vec::new();
        if let Some(p) = &self.position {
            v.push(SetValue::Position(point8(p, "position")?));
        }
        if let Some(p) = &self.velocity {
            v.push(SetValue::Velocity(point8(p, "velocity")?));
        }
        v.extend(self.charge.map(SetValue::Charge));
        v.extend(self.mass.map(SetValue::Mass));
        v.extend(self.radius.map(SetValue::Radius));
        v.extend(self.strength.map(SetValue::Strength));
        v.extend(self.kind.map(SetValue::Kind));
        match v.as_slice() {
            [one] => Ok(*one),
            _ => Err(ApiError::unprocessable(format!(
                "set takes exactly one of position, velocity, charge, mass, radius, strength, kind; {} given",
                v.len()
            ))),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IdBody {
    id: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ImpulseBody {
    id: u64,
    impulse: Vec<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchBody {
    tokens: Vec<SpawnBody>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PairBody {
    a: u64,
    b: u64,
}

/// The engine command a `POST /api/commands/{name}` body asks for.
fn parse_command(
    name: &str,
    b: Result<Bytes, BytesRejection>,
    limits: &ServeLimits,
) -> Result<SimCommand, ApiError> {
    let link = |l: LinkBody| LinkSpec {
        weight: l.weight,
        rigidity: l.rigidity,
        rest_length: l.rest_length,
        kind: LinkKind::default(),
    };
    Ok(match name {
        "spawn" => SimCommand::Spawn(body::<SpawnBody>(b)?.spec("")?),
        "batch" => {
            let batch: BatchBody = body(b)?;
            if batch.tokens.len() > limits.max_batch {
                return Err(ApiError::too_large(format!(
                    "a batch of {} tokens: at most {} per request",
                    batch.tokens.len(),
                    limits.max_batch
                )));
            }
            let specs = batch
                .tokens
                .iter()
                .enumerate()
                .map(|(i, t)| t.spec(&format!("tokens[{i}].")))
                .collect::<Result<Vec<_>, _>>()?;
            SimCommand::SpawnBatch(specs)
        }
        "link" | "set_link" => {
            let l: LinkBody = body(b)?;
            let (a, bb) = (TokenId(l.a), TokenId(l.b));
            let spec = link(l);
            if name == "link" {
                SimCommand::Link { a, b: bb, spec }
            } else {
                SimCommand::SetLink { a, b: bb, spec }
            }
        }
        "unlink" => {
            let p: PairBody = body(b)?;
            SimCommand::Unlink {
                a: TokenId(p.a),
                b: TokenId(p.b),
            }
        }
        "set" => {
            let s: SetBody = body(b)?;
            SimCommand::Set {
                id: TokenId(s.id),
                value: s.value()?,
            }
        }
        "impulse" => {
            let i: ImpulseBody = body(b)?;
            SimCommand::Impulse {
                id: TokenId(i.id),
                impulse: point8(&i.impulse, "impulse")?,
            }
        }
        "despawn" => SimCommand::Despawn(TokenId(body::<IdBody>(b)?.id)),
        "cdna_update" => SimCommand::UpdateCdna(Box::new(body(b)?)),
        "cdna_revert" => SimCommand::RevertCdna,
        other => {
            return Err(ApiError::not_found(format!(
                "unknown command {other:?}: spawn, batch, link, set_link, unlink, set, impulse, \
                 despawn, cdna_update, cdna_revert"
            )));
        }
    })
}

async fn command(
    State(s): State<AppState>,
    Path(name): Path<String>,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let cmd = parse_command(&name, b, &s.limits)?;
    // Under a sync WAL the answer waits for the next tick's fsync.
    s.ask_for(s.limits.request_timeout, move |e, r| e.command(cmd, r))
        .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StepBody {
    #[serde(default = "one_u64")]
    n: u64,
}

/// An empty body steps one tick, as `{}` does.
impl Default for StepBody {
    fn default() -> Self {
        Self { n: 1 }
    }
}

fn one_u64() -> u64 {
    1
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RateBody {
    rate: Option<f64>,
}

async fn control(
    State(s): State<AppState>,
    Path(action): Path<String>,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult {
    match action.as_str() {
        "pause" | "resume" => {
            let paused = action == "pause";
            s.ask(move |e| {
                e.control(paused, e.rate);
                Ok(json!({ "paused": paused, "tick": e.session.tick() }))
            })
            .await
        }
        "step" => {
            let raw = b.map_err(|e| ApiError::new(e.status(), e.body_text()))?;
            let step: StepBody = if raw.is_empty() {
                StepBody::default()
            } else {
                body(Ok(raw))?
            };
            let max = s.limits.max_step;
            if step.n > max {
                return Err(ApiError::unprocessable(format!(
                    "n = {}: at most {max} ticks a step",
                    step.n
                )));
            }
            s.ask_for(s.limits.step_timeout, move |e, r| e.step(step.n, max, r))
                .await
        }
        "rate" => {
            let r: RateBody = body(b)?;
            let min = super::engine::MIN_RATE;
            if let Some(x) = r.rate
                && !(x.is_finite() && (min..=1e6).contains(&x))
            {
                return Err(ApiError::unprocessable(format!(
                    "rate = {x}: a number of ticks/s in [{min}, 1e6], or null for no limit"
                )));
            }
            s.ask(move |e| {
                e.control(e.paused, r.rate);
                Ok(json!({ "rate": e.rate }))
            })
            .await
        }
        "snapshot" => {
            s.ask_for(s.limits.request_timeout, |e, r| e.snapshot(r))
                .await
        }
        other => Err(ApiError::not_found(format!(
            "unknown control {other:?}: pause, resume, step, rate, snapshot"
        ))),
    }
}
