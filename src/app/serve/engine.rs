//! The engine thread of `neurograph serve`: it owns the [`Session`], ticks it
//! at the chosen rate, and runs the HTTP handlers' jobs between ticks.
//!
//! Handlers never touch the world: they send a [`Job`] (a closure over the
//! [`Engine`]) through a bounded queue and await its answer on a oneshot
//! channel. The engine runs a bounded number of jobs between two ticks, so a
//! flood of requests slows the answers, not the tick, and a full queue is
//! answered `503` at once. Answers go back to the connection's own task, so a
//! client that reads slowly holds only that task.

use super::api::{ApiError, TickInfo};
use crate::app::runner::{RunError, RunSummary, Session};
use crate::model::commands::{CommandError, CommandOutcome, SimCommand};
use crate::wal::{Durability, Journal};
use serde_json::{Value, json};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch};

/// What a cached value was made for: a tick (or the last detection) and a
/// count that changes with the world between ticks.
type GroupsKey = (Option<u64>, u64);

/// Work for the engine thread, run between two ticks.
pub type Job = Box<dyn FnOnce(&mut Engine) + Send>;

/// A reply channel for a JSON answer or a refusal.
pub type Reply = oneshot::Sender<Result<Value, ApiError>>;

/// The lowest rate in ticks/s (`--rate`, `control/rate`): a tick at least
/// every 1,000 s.
pub const MIN_RATE: f64 = 1e-3;

/// Jobs run back to back before the engine ticks again (while ticking).
const JOBS_PER_GAP: usize = 256;
/// Time spent on jobs before the engine ticks again (while ticking): at
/// least this, or half the last tick's time when that is longer, so requests
/// get at most a third of the engine's time under load and never starve.
const JOB_TIME_PER_GAP: Duration = Duration::from_millis(20);

/// The engine: the session and the serving state around it.
pub struct Engine {
    /// The run.
    pub session: Session,
    /// Whether ticking is paused (`step` still ticks).
    pub paused: bool,
    /// At most this many ticks per second; `None`: as fast as the engine goes.
    pub rate: Option<f64>,
    /// Why the run is over (a tick failed); requests that need the world
    /// still read it, commands and ticks are refused.
    pub ended: Option<String>,
    /// Tick until this tick even while paused (`step`).
    step_until: u64,
    step_waiters: Vec<(u64, Reply)>,
    /// When the next tick is due (at the rate).
    due: Instant,
    last_snapshot: Option<u64>,
    /// Acknowledgements held until the next tick's record is durable (a WAL
    /// under `sync`).
    durable_waiters: Vec<(Value, Reply)>,
    snapshot_waiters: Vec<Reply>,
    recent: VecDeque<Instant>,
    last_tick: Duration,
    live: watch::Sender<Arc<TickInfo>>,
    groups: Option<(GroupsKey, Arc<HashMap<u64, u64>>)>,
    digest: Option<(GroupsKey, String)>,
    /// The last projection frame and the key it was made for.
    pub projection: Option<((u64, u64, usize), Arc<String>)>,
}

impl Engine {
    /// An engine over an open session.
    pub fn new(
        session: Session,
        paused: bool,
        rate: Option<f64>,
        live: watch::Sender<Arc<TickInfo>>,
    ) -> Self {
        let mut e = Self {
            session,
            paused,
            rate,
            ended: None,
            step_until: 0,
            due: Instant::now(),
            last_snapshot: None,
            step_waiters: Vec::new(),
            durable_waiters: Vec::new(),
            snapshot_waiters: Vec::new(),
            recent: VecDeque::new(),
            last_tick: Duration::ZERO,
            live,
            groups: None,
            digest: None,
            projection: None,
        };
        e.publish();
        e
    }

    /// Ticks per second over the last few seconds.
    pub fn ticks_per_s(&self) -> f64 {
        match (self.recent.front(), self.recent.back()) {
            (Some(a), Some(b)) if self.recent.len() > 1 => {
                let dt = b.duration_since(*a).as_secs_f64();
                if dt > 0.0 {
                    (self.recent.len() - 1) as f64 / dt
                } else {
                    0.0
                }
            }
            _ => 0.0,
        }
    }

    /// The WAL's durability policy, if the run has a WAL.
    pub fn durability(&self) -> Option<Durability> {
        self.session
            .sim()
            .world()
            .get_resource::<Journal>()
            .map(Journal::durability)
    }

    /// The level-1 group of every grouped token (token id → group id), cached
    /// until the hierarchy is detected again or a command changes the world.
    pub fn group_of(&mut self) -> Arc<HashMap<u64, u64>> {
        let sim = self.session.sim();
        let key = (
            sim.hierarchy().last_organized,
            sim.command_log().applied_total,
        );
        if let Some((k, map)) = &self.groups
            && *k == key
        {
            return map.clone();
        }
        let mut map = HashMap::new();
        if let Some(level1) = sim.hierarchy().levels.first() {
            for g in level1 {
                for &m in &g.members {
                    map.insert(m, g.id.0);
                }
            }
        }
        let map = Arc::new(map);
        self.groups = Some((key, map.clone()));
        map
    }

    /// The state digest, computed once per tick (and after commands): it
    /// hashes the whole state, which a busy `/api/status` should not repeat.
    pub fn digest(&mut self) -> String {
        let sim = self.session.sim_mut();
        let key = (Some(sim.tick()), sim.command_log().applied_total);
        if let Some((k, d)) = &self.digest
            && *k == key
        {
            return d.clone();
        }
        let d = sim.digest().to_string();
        self.digest = Some((key, d.clone()));
        d
    }

    /// Applies a command now (validated by the engine), then acknowledges it:
    /// at once, or, with a WAL under `sync`, once the next tick's record (which
    /// journals it) is durable. A paused engine runs that one tick.
    pub fn command(&mut self, cmd: SimCommand, reply: Reply) {
        if let Some(why) = &self.ended {
            let _ = reply.send(Err(ApiError::unavailable(format!(
                "the run is over ({why}); commands are refused"
            ))));
            return;
        }
        // The client gave up (timed out, disconnected): do not apply it.
        if reply.is_closed() {
            return;
        }
        let name = cmd.name();
        let outcome = match self.session.sim_mut().apply(cmd) {
            Ok(o) => o,
            Err(e) => {
                let _ = reply.send(Err(refusal(&e)));
                return;
            }
        };
        let tick = self.session.tick();
        let mut ack = json!({ "command": name, "applied": true, "applied_after_tick": tick });
        match outcome {
            CommandOutcome::Spawned { first, count } => {
                ack["first_id"] = json!(first.0);
                ack["count"] = json!(count);
            }
            CommandOutcome::Despawned { links_removed } => {
                ack["links_removed"] = json!(links_removed);
            }
            CommandOutcome::CdnaVersion(v) => ack["cdna_version"] = json!(v),
            CommandOutcome::Done => {}
        }
        match self.durability() {
            Some(Durability::Sync) => self.durable_waiters.push((ack, reply)),
            other => {
                ack["durable"] = json!(false);
                ack["wal"] = json!(other.map(Durability::name));
                let _ = reply.send(Ok(ack));
            }
        }
        self.publish();
    }

    /// Sets the rate and whether ticking is paused; the next tick is due now.
    pub fn control(&mut self, paused: bool, rate: Option<f64>) {
        self.paused = paused;
        self.rate = rate;
        self.due = Instant::now();
        self.publish();
    }

    /// Answers when the tick `n` ticks from now is done, ticking until then
    /// even while paused. Steps asked for at once overlap (two `step 5` run
    /// 5 ticks); at most `max` ticks may be outstanding.
    pub fn step(&mut self, n: u64, max: u64, reply: Reply) {
        if let Some(why) = &self.ended {
            let _ = reply.send(Err(ApiError::unavailable(format!(
                "the run is over ({why})"
            ))));
            return;
        }
        let tick = self.session.tick();
        let target = tick.saturating_add(n);
        if target.max(self.step_until) - tick > max {
            let _ = reply.send(Err(ApiError::unprocessable(format!(
                "n = {n}: at most {max} ticks may be outstanding ({} are)",
                self.step_until.saturating_sub(tick)
            ))));
            return;
        }
        if n == 0 {
            let _ = reply.send(Ok(json!({ "tick": tick })));
            return;
        }
        self.step_until = self.step_until.max(target);
        self.due = Instant::now();
        self.step_waiters.push((target, reply));
    }

    /// Writes a WAL snapshot now, or after the next tick when commands since
    /// the last one are not journaled yet.
    pub fn snapshot(&mut self, reply: Reply) {
        let pending = self.session.sim().command_log().applied.len();
        let has_wal = self.durability().is_some();
        if pending > 0 && has_wal && self.ended.is_none() && self.will_tick() {
            self.snapshot_waiters.push(reply);
            return;
        }
        let _ = reply.send(self.snapshot_result());
    }

    /// A snapshot of this tick, written once however often it is asked for.
    fn snapshot_result(&mut self) -> Result<Value, ApiError> {
        let tick = self.session.tick();
        let pending = self.session.sim().command_log().applied.len();
        if self.last_snapshot == Some(tick) && pending == 0 {
            return Ok(json!({ "snapshot_tick": tick }));
        }
        match Journal::snapshot_now(self.session.sim_mut().world_mut()) {
            Ok(tick) => {
                self.last_snapshot = Some(tick);
                Ok(json!({ "snapshot_tick": tick }))
            }
            Err(e) => Err(ApiError::conflict(e.to_string())),
        }
    }

    /// Whether the loop ticks: running, stepping, or holding answers that
    /// wait for the next tick (durable commands, snapshots).
    fn will_tick(&self) -> bool {
        self.ended.is_none()
            && (!self.paused
                || self.session.tick() < self.step_until
                || !self.durable_waiters.is_empty()
                || !self.snapshot_waiters.is_empty())
    }

    fn tick(&mut self) {
        let t0 = Instant::now();
        let before = self.session.tick();
        let result = self.session.step();
        self.last_tick = t0.elapsed();
        if result.is_ok() && self.session.tick() != before + 1 {
            // The tick panicked and the world was recovered from the WAL: the
            // commands applied since the last journaled tick are gone.
            self.recovered(before);
        }
        let now = Instant::now();
        self.recent.push_back(now);
        while self.recent.len() > 2 && now.duration_since(self.recent[0]) > Duration::from_secs(3) {
            self.recent.pop_front();
        }
        let tick = self.session.tick();
        if let Err(e) = result {
            let why = format!("tick {} failed: {e}", tick + 1);
            tracing::error!("{why}");
            self.ended = Some(why.clone());
            for (_, r) in self.durable_waiters.drain(..) {
                let _ = r.send(Err(ApiError::unavailable(format!(
                    "applied, but {why}: not known to be durable"
                ))));
            }
            for (_, r) in self.step_waiters.drain(..) {
                let _ = r.send(Err(ApiError::unavailable(why.clone())));
            }
        } else {
            for (mut ack, r) in self.durable_waiters.drain(..) {
                ack["durable"] = json!(true);
                ack["wal"] = json!("sync");
                ack["durable_tick"] = json!(tick);
                let _ = r.send(Ok(ack));
            }
            let (done, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.step_waiters)
                .into_iter()
                .partition(|(target, _)| *target <= tick);
            self.step_waiters = waiting;
            for (_, r) in done {
                let _ = r.send(Ok(json!({ "tick": tick })));
            }
        }
        for r in std::mem::take(&mut self.snapshot_waiters) {
            let _ = r.send(self.snapshot_result());
        }
        self.publish();
    }

    /// After a recovery from the WAL: refuse the acknowledgements that wait
    /// for a tick that never was, and drop the caches of the old world.
    fn recovered(&mut self, before: u64) {
        let now = self.session.tick();
        tracing::warn!(
            before,
            now,
            "a tick panicked; the world was recovered from the WAL"
        );
        for (_, r) in self.durable_waiters.drain(..) {
            let _ = r.send(Err(ApiError::unavailable(format!(
                "tick {} panicked and the world was recovered to tick {now} from the WAL; \
                 this command was not journaled: send it again",
                before + 1
            ))));
        }
        self.groups = None;
        self.digest = None;
        self.projection = None;
        self.last_snapshot = None;
    }

    /// Sends the tick summary to the WebSocket streams (and `/health`).
    pub fn publish(&mut self) {
        let sim = self.session.sim();
        let durable_tick = sim
            .world()
            .get_resource::<Journal>()
            .map(|j| j.stats().durable_tick);
        let info = TickInfo {
            tick: sim.tick(),
            tokens: sim.token_count(),
            links: sim.link_count(),
            groups: sim.hierarchy().groups_per_level(),
            ticks_per_s: self.ticks_per_s(),
            paused: self.paused,
            rate: self.rate,
            durable_tick,
            ended: self.ended.clone(),
        };
        self.live.send_replace(Arc::new(info));
    }

    /// The loop: jobs between ticks, ticks at the rate, until `shutdown` is
    /// set or every sender is gone.
    pub fn run(&mut self, jobs: &Receiver<Job>, shutdown: &AtomicBool) {
        self.due = Instant::now();
        while !shutdown.load(Ordering::Relaxed) {
            let started = Instant::now();
            let budget = JOB_TIME_PER_GAP.max(self.last_tick / 2);
            let mut ran = 0;
            loop {
                let job = match jobs.try_recv() {
                    Ok(job) => job,
                    Err(std::sync::mpsc::TryRecvError::Empty) => break,
                    // The server is gone: stop.
                    Err(std::sync::mpsc::TryRecvError::Disconnected) => return,
                };
                job(self);
                ran += 1;
                if self.will_tick() && (ran >= JOBS_PER_GAP || started.elapsed() > budget) {
                    break;
                }
            }
            let now = Instant::now();
            if self.will_tick() && now >= self.due {
                self.tick();
                // Steps asked for while paused run as fast as they go.
                let period = match self.rate {
                    Some(r) if !self.paused => Duration::from_secs_f64(1.0 / r.max(MIN_RATE)),
                    _ => Duration::ZERO,
                };
                // No catching up after a slow tick or a pause: the next one is
                // a period after this one at the earliest.
                self.due = (self.due + period).max(now);
                continue;
            }
            let wait = if self.will_tick() {
                self.due.saturating_duration_since(now)
            } else {
                Duration::from_millis(100)
            };
            match jobs.recv_timeout(wait) {
                Ok(job) => job(self),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
    }

    /// Ends the run: the commands applied since the last tick are journaled
    /// with one more tick (their acknowledgements then go out), and the run
    /// is closed (the WAL with a final snapshot).
    ///
    /// # Errors
    /// [`RunError::Wal`] when the WAL cannot be closed.
    pub fn finish(mut self) -> Result<RunSummary, RunError> {
        let pending = self.session.sim().command_log().applied.len();
        if self.ended.is_none() && self.durability().is_some() && pending > 0 {
            self.tick();
        }
        for (_, r) in self.durable_waiters.drain(..) {
            let _ = r.send(Err(ApiError::unavailable(
                "the server stopped before the tick that journals it",
            )));
        }
        if self.ended.is_none() {
            self.session.mark_interrupted();
        }
        self.session.close().map(|(summary, _)| summary)
    }
}

/// The HTTP status and message of a refused command: 404 for an unknown
/// token, 409 for a state conflict (linked already, not linked, no earlier
/// CDNA, a quota), 422 for a value out of its range.
pub fn refusal(e: &CommandError) -> ApiError {
    let msg = e.to_string();
    match e {
        CommandError::UnknownToken(_) => ApiError::not_found(msg),
        CommandError::AlreadyLinked(..)
        | CommandError::NotLinked(..)
        | CommandError::NoCdnaHistory
        | CommandError::DegreeLimit { .. }
        | CommandError::Quota(_) => ApiError::conflict(msg),
        CommandError::BatchItem { source, .. } if matches!(**source, CommandError::Quota(_)) => {
            ApiError::conflict(msg)
        }
        _ => ApiError::unprocessable(msg),
    }
}
