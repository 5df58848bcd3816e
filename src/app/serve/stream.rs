//! The WebSocket stream of `neurograph serve` (`/ws`): tick summaries, and a
//! 2D projection of the positions coloured by level-1 group, each at a rate
//! the client chooses.
//!
//! Parameters (query string at connect, or a JSON text message later with the
//! same keys): `ticks_hz` (tick summaries per second, 0–60, default 10),
//! `projection_hz` (frames per second, 0–30, default 0) and `points` (tokens
//! per frame, 1–[`MAX_POINTS`], default 5,000). The summaries come from a
//! `watch` channel (the latest only), so a slow client skips ticks instead of
//! queueing them; a client whose socket does not take a message within
//! [`SEND_TIMEOUT`] is dropped.

use super::api::{ApiError, AppState};
use super::engine::Engine;
use crate::geometry::hierarchy::principal_axes;
use crate::model::components::Position;
use crate::model::math::Vec8;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

/// The most tokens in one projection frame.
pub const MAX_POINTS: usize = 100_000;
/// Tokens the projection's principal axes are computed from (evenly spaced).
const AXES_SAMPLE: usize = 4096;
/// The longest a message may wait for the client's socket.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(5);

/// What a client asks the stream for.
#[derive(Clone, Copy, Debug)]
pub struct StreamParams {
    /// Tick summaries per second (0: none).
    pub ticks_hz: f64,
    /// Projection frames per second (0: none).
    pub projection_hz: f64,
    /// Tokens per projection frame.
    pub points: usize,
}

impl StreamParams {
    fn check(&self) -> Result<(), String> {
        // 0 turns a stream off; else at least one message a minute.
        let ok = |hz: f64, max: f64| hz == 0.0 || (1.0 / 60.0..=max).contains(&hz);
        if !ok(self.ticks_hz, 60.0) {
            return Err(format!(
                "ticks_hz = {}: must be 0 or in [1/60, 60]",
                self.ticks_hz
            ));
        }
        if !ok(self.projection_hz, 30.0) {
            return Err(format!(
                "projection_hz = {}: must be 0 or in [1/60, 30]",
                self.projection_hz
            ));
        }
        if !(1..=MAX_POINTS).contains(&self.points) {
            return Err(format!(
                "points = {}: must be in [1, {MAX_POINTS}]",
                self.points
            ));
        }
        Ok(())
    }
}

/// The stream's parameters as given; `access_token` is the router's.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawParams {
    ticks_hz: Option<f64>,
    projection_hz: Option<f64>,
    points: Option<usize>,
    #[serde(rename = "access_token")]
    _access_token: Option<String>,
}

impl RawParams {
    fn over(self, mut p: StreamParams) -> StreamParams {
        p.ticks_hz = self.ticks_hz.unwrap_or(p.ticks_hz);
        p.projection_hz = self.projection_hz.unwrap_or(p.projection_hz);
        p.points = self.points.unwrap_or(p.points);
        p
    }
}

const DEFAULTS: StreamParams = StreamParams {
    ticks_hz: 10.0,
    projection_hz: 0.0,
    points: 5000,
};

/// `GET /ws`: upgrades to the stream (503 when [`super::ServeLimits::max_streams`]
/// are open).
pub(super) async fn websocket(
    State(s): State<AppState>,
    q: Result<Query<RawParams>, axum::extract::rejection::QueryRejection>,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let params = match q {
        Ok(Query(raw)) => raw.over(DEFAULTS),
        Err(e) => return ApiError::bad_request(e.body_text()).into_response(),
    };
    if let Err(e) = params.check() {
        return ApiError::unprocessable(e).into_response();
    }
    let ws = match ws {
        Ok(ws) => ws,
        Err(e) => return ApiError::bad_request(e.body_text()).into_response(),
    };
    let Ok(slot) = s.ws_slots.clone().try_acquire_owned() else {
        return ApiError::unavailable(format!(
            "{} streams are open (the limit)",
            s.limits.max_streams
        ))
        .into_response();
    };
    ws.max_message_size(64 * 1024)
        .on_upgrade(move |socket| async move {
            let _slot = slot;
            run(socket, s, params).await;
        })
}

fn every(hz: f64) -> tokio::time::Interval {
    let period = if hz > 0.0 {
        Duration::from_secs_f64(1.0 / hz)
    } else {
        Duration::from_secs(3600)
    };
    let mut i = tokio::time::interval(period);
    i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    i
}

async fn send(socket: &mut WebSocket, text: String) -> bool {
    matches!(
        tokio::time::timeout(SEND_TIMEOUT, socket.send(Message::Text(text.into()))).await,
        Ok(Ok(()))
    )
}

async fn run(mut socket: WebSocket, s: AppState, mut params: StreamParams) {
    let mut live = s.live.clone();
    let mut ticks = every(params.ticks_hz);
    let mut frames = every(params.projection_hz);
    let mut last_sent = None;
    loop {
        tokio::select! {
            msg = socket.recv() => match msg {
                Some(Ok(Message::Text(t))) => {
                    let next = serde_json::from_str::<RawParams>(&t)
                        .map_err(|e| format!("bad stream parameters: {e}"))
                        .map(|raw| raw.over(params))
                        .and_then(|p| p.check().map(|()| p));
                    match next {
                        Ok(p) => {
                            params = p;
                            ticks = every(p.ticks_hz);
                            frames = every(p.projection_hz);
                        }
                        Err(e) => {
                            let msg = json!({ "type": "error", "error": e }).to_string();
                            if !send(&mut socket, msg).await { break; }
                        }
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
            _ = ticks.tick(), if params.ticks_hz > 0.0 => {
                let info = live.borrow_and_update().clone();
                if last_sent.as_ref().is_some_and(|l| Arc::ptr_eq(l, &info)) {
                    continue;
                }
                let mut v = serde_json::to_value(&*info).unwrap_or_default();
                v["type"] = json!("tick");
                if !send(&mut socket, v.to_string()).await { break; }
                last_sent = Some(info);
            },
            _ = frames.tick(), if params.projection_hz > 0.0 => {
                let points = params.points;
                let frame = s.ask_raw(move |e| projection(e, points)).await;
                let text = match frame {
                    Ok(f) => f,
                    Err(e) => Arc::new(json!({ "type": "error", "error": e.message }).to_string()),
                };
                if !send(&mut socket, (*text).clone()).await { break; }
            },
        }
    }
}

/// A projection frame: `{"type": "projection", "tick", "tokens", "x": [..],
/// "y": [..], "group": [..]}` for at most `points` tokens (evenly spaced in
/// id order), on the two leading principal axes of the positions; `group` is
/// the level-1 group id or -1. Cached until the next tick or command.
pub fn projection(e: &mut Engine, points: usize) -> Arc<String> {
    let sim = e.session.sim();
    let key = (sim.tick(), sim.command_log().applied_total, points);
    if let Some((k, frame)) = &e.projection
        && *k == key
    {
        return frame.clone();
    }
    let groups = e.group_of();
    let sim = e.session.sim_mut();
    let ids = sim.ids();
    let pos = sim.column::<Position, f32, 8>(|p| p.0.to_array());
    let n = ids.len();
    let at = |j: usize| Vec8::from_array(pos[j * 8..j * 8 + 8].try_into().expect("8 values"));
    let sample: Vec<Vec8> = (0..n.min(AXES_SAMPLE))
        .map(|k| at(k * n / n.clamp(1, AXES_SAMPLE)))
        .collect();
    let (mean, [a, b]) = principal_axes(&sample);
    let shown = n.min(points);
    let (mut x, mut y, mut g) = (
        Vec::with_capacity(shown),
        Vec::with_capacity(shown),
        Vec::with_capacity(shown),
    );
    for k in 0..shown {
        let j = k * n / shown;
        let d = at(j) - mean;
        x.push(d.dot(a));
        y.push(d.dot(b));
        g.push(groups.get(&ids[j]).map_or(-1, |&id| id as i64));
    }
    let frame = Arc::new(
        json!({ "type": "projection", "tick": sim.tick(), "tokens": n, "x": x, "y": y, "group": g })
            .to_string(),
    );
    e.projection = Some((key, frame.clone()));
    frame
}
