//! `neurograph serve` end to end: the real binary on loopback, driven over
//! HTTP (a plain HTTP/1.1 client on a TcpStream) and WebSocket (tungstenite).
//! Every endpoint and refusal, the bearer token, hostile clients, and
//! commands acknowledged under a `sync` WAL surviving a SIGKILL right after
//! the acknowledgement.
#![cfg(all(unix, feature = "cli"))]

use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Serve {
    child: Child,
    addr: String,
}

impl Serve {
    fn start(args: &[&str]) -> Serve {
        Self::start_env(args, &[])
    }

    fn start_env(args: &[&str], env: &[(&str, &str)]) -> Serve {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_neurograph"));
        cmd.arg("serve")
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .env("NEUROGRAPH_LOG", "error")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start neurograph serve");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening on http://")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        Serve { child, addr }
    }

    fn get(&self, path: &str) -> (u16, Value) {
        request(&self.addr, "GET", path, None, None)
    }

    fn post(&self, path: &str, body: Value) -> (u16, Value) {
        request(&self.addr, "POST", path, Some(&body.to_string()), None)
    }

    fn ok(&self, method: &str, path: &str, body: Value) -> Value {
        let b = body.to_string();
        let (code, v) = request(
            &self.addr,
            method,
            path,
            (method == "POST").then_some(&*b),
            None,
        );
        assert_eq!(code, 200, "{method} {path}: {v}");
        v
    }

    fn tick(&self) -> u64 {
        self.ok("GET", "/api/status", Value::Null)["tick"]
            .as_u64()
            .unwrap()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request on a fresh connection; the status and the JSON body
/// (or the body as a JSON string when it is not JSON).
fn request(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
    auth: Option<&str>,
) -> (u16, Value) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let body = body.unwrap_or("");
    let auth = auth.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    // A server that refuses a body by its Content-Length (413) answers and
    // closes before the body is sent: the write may then fail (a broken
    // pipe) while the answer is already there to read.
    let sent = write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{auth}\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut raw = Vec::new();
    let read = s.read_to_end(&mut raw);
    assert!(
        !raw.is_empty(),
        "{method} {path}: no answer (write: {sent:?}, read: {read:?})"
    );
    let text = String::from_utf8_lossy(&raw);
    let (head, rest) = text.split_once("\r\n\r\n").expect("a response head");
    let code: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    let v = serde_json::from_str(rest).unwrap_or_else(|_| Value::String(rest.to_string()));
    (code, v)
}

fn err_of(v: &Value) -> &str {
    v["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error message in {v}"))
}

#[test]
fn every_endpoint_and_refusal() {
    let s = Serve::start(&[
        "--scenario",
        "clusters",
        "--tokens",
        "600",
        "--seed",
        "3",
        "--paused",
    ]);
    // Paused: the tick stands still; step moves it exactly.
    let t0 = s.tick();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(s.tick(), t0);
    assert_eq!(
        s.ok("POST", "/api/control/step", json!({"n": 25}))["tick"],
        t0 + 25
    );
    let st = s.ok("GET", "/api/status", Value::Null);
    assert_eq!(st["tokens"], 600);
    assert_eq!(st["paused"], true);
    assert!(st["digest"].as_str().unwrap().len() == 16, "{st}");
    assert_eq!(st["wal"], Value::Null);
    let summary = s.ok("GET", "/api/summary", Value::Null);
    assert_eq!(summary["scenario"], "clusters");
    assert_eq!(summary["final_tick"], t0 + 25);

    // Tokens, paged, and one by id.
    let page = s.ok("GET", "/api/tokens?offset=590&limit=50", Value::Null);
    assert_eq!(page["total"], 600);
    assert_eq!(page["tokens"].as_array().unwrap().len(), 10);
    assert_eq!(page["tokens"][0]["id"], 590);
    let all = s.ok("GET", "/api/tokens?limit=10000", Value::Null);
    let all = all["tokens"].as_array().unwrap().clone();
    assert_eq!(all.len(), 600);
    let one = s.ok("GET", "/api/tokens/17", Value::Null);
    assert_eq!(one["position"], all[17]["position"]);
    let (code, v) = s.get("/api/tokens/6000");
    assert_eq!((code, err_of(&v)), (404, "unknown token 6000"));
    let (code, v) = s.get("/api/tokens?limit=20000");
    assert_eq!(code, 422);
    assert!(err_of(&v).contains("at most 10000"), "{v}");
    let (code, _) = s.get("/api/tokens?limit=-1");
    assert_eq!(code, 400);

    // Query: exact against a brute-force scan of the positions.
    let q = [0.3, -0.2, 0.1, 0.0, 0.5, -0.4, 0.2, 0.1];
    let mut brute: Vec<(f64, u64)> = all
        .iter()
        .map(|t| {
            let p = t["position"].as_array().unwrap();
            let d2: f64 = p
                .iter()
                .zip(q)
                .map(|(a, b)| (a.as_f64().unwrap() as f32 - b as f32) as f64)
                .map(|d| d * d)
                .sum();
            (d2.sqrt(), t["id"].as_u64().unwrap())
        })
        .collect();
    brute.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let near = s.ok("POST", "/api/query", json!({"point": q, "k": 10}));
    let ids: Vec<u64> = near["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, brute[..10].iter().map(|b| b.1).collect::<Vec<_>>());
    let r = brute[40].0 + 1e-4;
    let within = s.ok(
        "POST",
        "/api/query",
        json!({"point": q, "radius": r, "limit": 5}),
    );
    let expect = brute.iter().filter(|b| b.0 <= r).count();
    assert_eq!(within["count"].as_u64().unwrap() as usize, expect);
    assert_eq!(within["results"].as_array().unwrap().len(), 5);
    assert_eq!(within["truncated"], true);
    for (body, status, needle) in [
        (json!({"point": [0, 0, 0]}), 422, "exactly 8"),
        (
            json!({"point": q, "k": 200000}),
            422,
            "k = 200000: at most 100000",
        ),
        (json!({"point": q, "k": 3, "radius": 1.0}), 422, "not both"),
        (json!({"point": q, "radius": -1.0}), 422, "radius = -1"),
        (
            json!({"point": [1e39, 0, 0, 0, 0, 0, 0, 0]}),
            422,
            "point[0]",
        ),
        (json!({"point": q, "kk": 3}), 400, "unknown field"),
    ] {
        let (code, v) = s.post("/api/query", body.clone());
        assert_eq!(code, status, "{body}: {v}");
        assert!(err_of(&v).contains(needle), "{body}: {v}");
    }
    // A k query returns its k (beyond the radius query's default 1,000).
    let many = s.ok("POST", "/api/query", json!({"point": q, "k": 1500}));
    assert_eq!(many["results"].as_array().unwrap().len(), 600);

    // The hierarchy and one group with its members.
    let h = s.ok("GET", "/api/hierarchy", Value::Null);
    let level1 = &h["levels"][0];
    assert!(level1["count"].as_u64().unwrap() > 0, "{h}");
    let g = &level1["groups"][0];
    let group = s.ok("GET", &format!("/api/groups/{}", g["id"]), Value::Null);
    assert_eq!(group["member_count"], g["children"]);
    assert_eq!(group["members_are"], "tokens");
    let member = group["members"][0].as_u64().unwrap();
    assert_eq!(
        s.ok("GET", &format!("/api/tokens/{member}"), Value::Null)["group"],
        g["id"]
    );
    assert_eq!(s.get("/api/groups/999999").0, 404);

    // Commands: applied at once (no WAL), refused with the engine's message.
    let spawned = s.ok(
        "POST",
        "/api/commands/spawn",
        json!({"position": [9, 9, 9, 9, 9, 9, 9, 9], "mass": 2.0}),
    );
    let id = spawned["first_id"].as_u64().unwrap();
    assert_eq!(spawned["durable"], false);
    let tok = s.ok("GET", &format!("/api/tokens/{id}"), Value::Null);
    assert_eq!(
        (tok["mass"].as_f64(), tok["position"][0].as_f64()),
        (Some(2.0), Some(9.0))
    );
    let (code, v) = s.post(
        "/api/commands/spawn",
        json!({"position": [0, 0, 0, 0, 0, 0, 0, 0], "charge": 3}),
    );
    assert_eq!(code, 422);
    assert!(err_of(&v).starts_with("charge = 3"), "{v}");
    let batch: Vec<Value> = (0..5)
        .map(|k| json!({"position": [k, 0, 0, 0, 0, 0, 0, 0]}))
        .collect();
    let b = s.ok("POST", "/api/commands/batch", json!({ "tokens": batch }));
    assert_eq!(b["count"], 5);
    let mut bad = batch.clone();
    bad[3]["radius"] = json!(-1);
    let (code, v) = s.post("/api/commands/batch", json!({ "tokens": bad }));
    assert_eq!(code, 422);
    assert!(err_of(&v).contains("batch item 3"), "{v}");
    assert_eq!(s.ok("GET", "/api/status", Value::Null)["tokens"], 606);
    let (code, v) = s.post(
        "/api/commands/batch",
        json!({ "tokens": vec![json!({"position": [0, 0, 0, 0, 0, 0, 0, 0]}); 10_001] }),
    );
    assert_eq!(code, 413);
    assert!(err_of(&v).contains("at most 10000"), "{v}");
    // A body beyond --max-body (6.4 MB > 4 MiB), announced with `Expect:
    // 100-continue` as a careful client does: refused by its length before
    // a byte of it is sent (a client that sends it anyway may see the
    // connection close under it).
    let huge = 200_000 * 32;
    let mut c = TcpStream::connect(&s.addr).unwrap();
    write!(
        c,
        "POST /api/commands/batch HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
         Content-Length: {huge}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
        s.addr
    )
    .unwrap();
    let mut raw = String::new();
    c.read_to_string(&mut raw).unwrap();
    assert!(
        raw.starts_with("HTTP/1.1 413"),
        "a body beyond --max-body: {raw}"
    );
    s.ok(
        "POST",
        "/api/commands/link",
        json!({"a": 0, "b": id, "weight": 0.5}),
    );
    let (code, v) = s.post("/api/commands/link", json!({"a": 0, "b": id}));
    assert_eq!(code, 409);
    assert!(err_of(&v).contains("already linked"), "{v}");
    s.ok(
        "POST",
        "/api/commands/set_link",
        json!({"a": 0, "b": id, "weight": 0.7}),
    );
    s.ok("POST", "/api/commands/unlink", json!({"a": 0, "b": id}));
    assert_eq!(
        s.post("/api/commands/unlink", json!({"a": 0, "b": id})).0,
        409
    );
    assert_eq!(s.post("/api/commands/link", json!({"a": 1, "b": 1})).0, 422);
    s.ok(
        "POST",
        "/api/commands/set",
        json!({"id": id, "charge": -0.5}),
    );
    assert_eq!(
        s.ok("GET", &format!("/api/tokens/{id}"), Value::Null)["charge"],
        -0.5
    );
    let (code, v) = s.post(
        "/api/commands/set",
        json!({"id": id, "charge": 0.1, "mass": 1.0}),
    );
    assert_eq!(code, 422);
    assert!(err_of(&v).contains("exactly one"), "{v}");
    s.ok(
        "POST",
        "/api/commands/impulse",
        json!({"id": id, "impulse": [2, 0, 0, 0, 0, 0, 0, 0]}),
    );
    assert_eq!(
        s.ok("GET", &format!("/api/tokens/{id}"), Value::Null)["velocity"][0],
        1.0
    );
    s.ok("POST", "/api/commands/despawn", json!({"id": id}));
    assert_eq!(s.post("/api/commands/despawn", json!({"id": id})).0, 404);
    let mut cdna = s.ok("GET", "/api/cdna", Value::Null);
    cdna["physics"]["damping"] = json!(0.2);
    assert_eq!(
        s.ok("POST", "/api/commands/cdna_update", cdna.clone())["cdna_version"],
        2
    );
    cdna["physics"]["damping"] = json!(-3);
    let (code, v) = s.post("/api/commands/cdna_update", cdna);
    assert_eq!(code, 422, "{v}");
    assert_eq!(
        s.ok("POST", "/api/commands/cdna_revert", json!({}))["cdna_version"],
        1
    );
    let (code, v) = s.post("/api/commands/cdna_revert", json!({}));
    assert_eq!(
        (code, err_of(&v)),
        (409, "no earlier CDNA version to revert to")
    );
    assert_eq!(s.post("/api/commands/teleport", json!({})).0, 404);
    let (code, v) = request(
        &s.addr,
        "POST",
        "/api/commands/spawn",
        Some("{\"position\": [1,"),
        None,
    );
    assert_eq!(code, 400);
    assert!(err_of(&v).starts_with("bad JSON body"), "{v}");

    // Control: snapshot needs a WAL; rate; resume makes ticks go.
    let (code, v) = s.post("/api/control/snapshot", json!({}));
    assert_eq!(code, 409);
    assert!(err_of(&v).contains("no WAL"), "{v}");
    assert_eq!(s.post("/api/control/rate", json!({"rate": 0})).0, 422);
    assert_eq!(s.post("/api/control/step", json!({"n": 2_000_000})).0, 422);
    s.ok("POST", "/api/control/rate", json!({"rate": 50}));
    let before = s.tick();
    s.ok("POST", "/api/control/resume", json!({}));
    std::thread::sleep(Duration::from_millis(600));
    let moved = s.tick() - before;
    assert!(
        (5..=45).contains(&moved),
        "{moved} ticks in 0.6 s at --rate 50"
    );

    // /health, /metrics, the page, unknown paths.
    assert_eq!(s.get("/health").1["status"], "ok");
    let (code, m) = s.get("/metrics");
    assert_eq!(code, 200);
    assert!(
        m.as_str().unwrap().contains("neurograph_ticks_total"),
        "{m}"
    );
    let (code, page) = s.get("/");
    assert_eq!(code, 200);
    assert!(page.as_str().unwrap().contains("<canvas"));
    assert_eq!(s.get("/api/nothing").0, 404);
}

#[test]
fn bearer_token_and_public_addresses() {
    let token = "0123456789abcdef0123";
    let s = Serve::start_env(
        &["--scenario", "uniform", "--tokens", "200", "--rate", "20"],
        &[("NEUROGRAPH_AUTH_TOKEN", token)],
    );
    for path in ["/api/status", "/health", "/metrics", "/ws"] {
        let (code, v) = request(&s.addr, "GET", path, None, None);
        assert_eq!(code, 401, "{path} without a token: {v}");
        let (code, _) = request(&s.addr, "GET", path, None, Some("0123456789abcdef0124"));
        assert_eq!(code, 401, "{path} with a wrong token");
    }
    let (code, v) = request(&s.addr, "GET", "/api/status", None, Some(token));
    assert_eq!(code, 200, "{v}");
    assert_eq!(
        request(&s.addr, "GET", "/", None, None).0,
        200,
        "the page itself holds no data"
    );
    let url = format!("ws://{}/ws?access_token={token}", s.addr);
    let (mut ws, _) = tungstenite::connect(url).expect("the stream with access_token");
    let msg: Value = serde_json::from_str(ws.read().unwrap().to_text().unwrap()).unwrap();
    assert_eq!(msg["type"], "tick");
    assert!(tungstenite::connect(format!("ws://{}/ws?access_token=nope", s.addr)).is_err());

    // Beyond loopback without a token: refused before anything starts.
    let out = Command::new(env!("CARGO_BIN_EXE_neurograph"))
        .args(["serve", "--listen", "0.0.0.0:0", "--tokens", "10"])
        .env_remove("NEUROGRAPH_AUTH_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not a loopback address") && err.contains("--auth-token"),
        "{err}"
    );
}

#[test]
fn websocket_streams_ticks_and_projection() {
    let s = Serve::start(&["--scenario", "clusters", "--tokens", "800", "--rate", "100"]);
    let (mut ws, _) = tungstenite::connect(format!("ws://{}/ws?ticks_hz=20", s.addr)).unwrap();
    let mut ticks = Vec::new();
    while ticks.len() < 5 {
        let m: Value = serde_json::from_str(ws.read().unwrap().to_text().unwrap()).unwrap();
        assert_eq!(m["type"], "tick", "{m}");
        assert_eq!(m["tokens"], 800);
        ticks.push(m["tick"].as_u64().unwrap());
    }
    assert!(
        ticks.windows(2).all(|w| w[1] > w[0]),
        "ticks advance: {ticks:?}"
    );
    // Until the hierarchy stage has found groups (it runs every few ticks).
    loop {
        let m: Value = serde_json::from_str(ws.read().unwrap().to_text().unwrap()).unwrap();
        if !m["groups"].as_array().unwrap().is_empty() {
            break;
        }
    }
    // A bad parameter is answered on the stream, which goes on.
    ws.send(tungstenite::Message::text("{\"points\": 0}"))
        .unwrap();
    ws.send(tungstenite::Message::text(
        "{\"projection_hz\": 10, \"points\": 300, \"ticks_hz\": 0}",
    ))
    .unwrap();
    let (mut saw_error, mut frame) = (false, None);
    let deadline = Instant::now() + Duration::from_secs(30);
    while frame.is_none() && Instant::now() < deadline {
        let m: Value = serde_json::from_str(ws.read().unwrap().to_text().unwrap()).unwrap();
        match m["type"].as_str() {
            Some("error") => {
                assert!(m["error"].as_str().unwrap().contains("points = 0"), "{m}");
                saw_error = true;
            }
            Some("projection") => frame = Some(m),
            _ => {}
        }
    }
    assert!(saw_error);
    let f = frame.expect("a projection frame");
    assert_eq!(f["x"].as_array().unwrap().len(), 300);
    assert_eq!(f["group"].as_array().unwrap().len(), 300);
    assert_eq!(f["tokens"], 800);
    assert!(
        f["group"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g.as_i64().unwrap() >= 0),
        "some points are grouped"
    );
    match tungstenite::connect(format!("ws://{}/ws?points=0", s.addr)) {
        Err(tungstenite::Error::Http(r)) => assert_eq!(r.status().as_u16(), 422),
        other => panic!("points=0 accepted: {:?}", other.map(|_| ())),
    }
    let (code, v) = request(&s.addr, "GET", "/ws", None, None);
    assert_eq!(code, 400, "not an upgrade: {v}");
}

#[test]
fn hostile_clients_do_not_stall_the_tick() {
    let s = Serve::start(&["--scenario", "uniform", "--tokens", "3000", "--rate", "20"]);
    // Half-sent requests, a stream that is never read, and a flood of
    // connections that send nothing.
    let mut idle = Vec::new();
    for _ in 0..50 {
        let mut c = TcpStream::connect(&s.addr).unwrap();
        c.write_all(b"GET /api/status HTTP/1.1\r\nHost: x\r\n")
            .unwrap();
        idle.push(c);
    }
    let (unread, _) = tungstenite::connect(format!(
        "ws://{}/ws?ticks_hz=60&projection_hz=30&points=100000",
        s.addr
    ))
    .unwrap();
    let t0 = s.tick();
    // Long enough for the unread stream to fill its socket and hit the send
    // timeout (3,000-point frames at 30 per second).
    std::thread::sleep(Duration::from_millis(7000));
    let moved = s.tick() - t0;
    // Half the rate at least: the other tests run beside this one on CI's
    // two cores; a stalled tick loop would show as a handful.
    assert!(
        moved >= 70,
        "only {moved} ticks in 7 s at --rate 20 with hostile clients (140 expected)"
    );
    drop(unread);
    drop(idle);
}

/// A spawn acknowledged under `--durability sync` survives `kill -9` right
/// after the acknowledgement: 20 trials on one WAL, each resumed by the next.
#[test]
fn acknowledged_commands_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let wal = dir.path().join("wal");
    let wal = wal.to_str().unwrap();
    let args = [
        "--scenario",
        "uniform",
        "--tokens",
        "300",
        "--wal",
        wal,
        "--durability",
        "sync",
        "--rate",
        "200",
    ];
    let mut acked: Vec<(u64, f64)> = Vec::new();
    for trial in 0..20u32 {
        // Odd trials are paused: the acknowledgement waits for the one tick
        // the engine runs to journal the command.
        let mut s = if trial % 2 == 1 {
            Serve::start(&[&args[..], &["--paused"]].concat())
        } else {
            Serve::start(&args)
        };
        // Every earlier acknowledged token is there, with its mass.
        for &(id, mass) in &acked {
            let t = s.ok("GET", &format!("/api/tokens/{id}"), Value::Null);
            assert_eq!(
                t["mass"].as_f64().unwrap() as f32,
                mass as f32,
                "trial {trial}: token {id}"
            );
        }
        let mass = 1.0 + f64::from(trial) * 0.01;
        let ack = s.ok(
            "POST",
            "/api/commands/spawn",
            json!({"position": [0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1], "mass": mass}),
        );
        assert_eq!(ack["durable"], true, "{ack}");
        s.child.kill().unwrap(); // SIGKILL, at once
        s.child.wait().unwrap();
        acked.push((ack["first_id"].as_u64().unwrap(), mass));
    }
    let s = Serve::start(&args);
    for &(id, mass) in &acked {
        let t = s.ok("GET", &format!("/api/tokens/{id}"), Value::Null);
        assert_eq!(
            t["mass"].as_f64().unwrap() as f32,
            mass as f32,
            "token {id}"
        );
    }
}

/// The refusals a web page elsewhere could provoke through a browser, the
/// control endpoints' edge cases, and a snapshot and a durable command on a
/// paused engine.
#[test]
fn controls_and_cross_site_requests() {
    let dir = tempfile::tempdir().unwrap();
    let wal = dir.path().join("wal");
    let s = Serve::start(&[
        "--tokens",
        "200",
        "--paused",
        "--wal",
        wal.to_str().unwrap(),
        "--durability",
        "sync",
    ]);
    let t0 = s.tick();
    // An empty body steps one tick; `{}` too.
    let (code, v) = request(&s.addr, "POST", "/api/control/step", None, None);
    assert_eq!((code, v["tick"].as_u64()), (200, Some(t0 + 1)), "{v}");
    assert_eq!(s.ok("POST", "/api/control/step", json!({}))["tick"], t0 + 2);
    // A durable command while paused runs exactly one tick.
    let ack = s.ok(
        "POST",
        "/api/commands/spawn",
        json!({"position": [0.2, 0, 0, 0, 0, 0, 0, 0]}),
    );
    assert_eq!(
        (ack["durable"].as_bool(), ack["durable_tick"].as_u64()),
        (Some(true), Some(t0 + 3)),
        "{ack}"
    );
    assert_eq!(s.tick(), t0 + 3);
    // A snapshot of the tick, then again (written once).
    assert_eq!(
        s.ok("POST", "/api/control/snapshot", json!({}))["snapshot_tick"],
        t0 + 3
    );
    assert_eq!(
        s.ok("POST", "/api/control/snapshot", json!({}))["snapshot_tick"],
        t0 + 3
    );
    // Rates too small to tick, and stream rates likewise.
    for r in [1e-300, 0.0, -1.0, 2e6] {
        let (code, v) = s.post("/api/control/rate", json!({"rate": r}));
        assert_eq!(code, 422, "rate {r}: {v}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_neurograph"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--tokens",
            "10",
            "--rate",
            "1e-300",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("ticks per second in [0.001, 1e6]"));
    match tungstenite::connect(format!("ws://{}/ws?ticks_hz=1e-300", s.addr)) {
        Err(tungstenite::Error::Http(r)) => assert_eq!(r.status().as_u16(), 422),
        other => panic!("ticks_hz=1e-300 accepted: {:?}", other.map(|_| ())),
    }
    // A rate set after a slow one takes effect at once.
    s.ok("POST", "/api/control/rate", json!({"rate": 0.001}));
    s.ok("POST", "/api/control/resume", json!({}));
    s.ok("POST", "/api/control/rate", json!({"rate": 100}));
    let t1 = s.tick();
    std::thread::sleep(Duration::from_millis(500));
    assert!(s.tick() > t1 + 10, "the new rate applies at once");
    // Bad path segments and methods answer JSON.
    let (code, v) = s.get("/api/tokens/abc");
    assert_eq!(code, 400);
    assert!(v["error"].is_string(), "{v}");
    let (code, v) = request(&s.addr, "DELETE", "/api/status", None, None);
    assert_eq!(code, 405);
    assert!(v["error"].is_string(), "{v}");

    // Cross-site: a foreign Origin, a DNS name as Host (rebinding).
    let mut c = TcpStream::connect(&s.addr).unwrap();
    let body = "{\"n\": 1}";
    write!(
        c,
        "POST /api/control/pause HTTP/1.1\r\nHost: {}\r\nOrigin: http://evil.example\r\n\
               Connection: close\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        s.addr,
        body.len()
    )
    .unwrap();
    let mut raw = String::new();
    c.read_to_string(&mut raw).unwrap();
    assert!(raw.starts_with("HTTP/1.1 403"), "{raw}");
    let mut c = TcpStream::connect(&s.addr).unwrap();
    let port = s.addr.rsplit_once(':').unwrap().1;
    write!(
        c,
        "GET /api/status HTTP/1.1\r\nHost: rebind.example:{port}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    c.read_to_string(&mut raw).unwrap();
    assert!(raw.starts_with("HTTP/1.1 403"), "{raw}");
    assert!(raw.contains("rebinding"), "{raw}");
    // The same origin is fine (the live page's own requests).
    let mut c = TcpStream::connect(&s.addr).unwrap();
    write!(
        c,
        "GET /api/status HTTP/1.1\r\nHost: {0}\r\nOrigin: http://{0}\r\nConnection: close\r\n\r\n",
        s.addr
    )
    .unwrap();
    let mut raw = String::new();
    c.read_to_string(&mut raw).unwrap();
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    assert_eq!(
        s.ok("GET", "/api/status", Value::Null)["paused"],
        false,
        "the cross-site pause was refused"
    );
}
