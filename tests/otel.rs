//! `neurograph serve --otlp` against an OTLP/HTTP receiver started here: it
//! accepts `POST /v1/traces`, decodes each body as the protobuf
//! `ExportTraceServiceRequest` (the OpenTelemetry project's own generated
//! types, `opentelemetry-proto`), and keeps the spans. Checked: the HTTP
//! request spans (one parented by an incoming W3C `traceparent`), the tick
//! spans with their per-system children, and the resource's service name.
#![cfg(all(unix, feature = "otel"))]

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Default)]
struct Received {
    spans: Vec<Span>,
    services: Vec<String>,
    content_types: Vec<String>,
}

/// Serves one connection: HTTP/1.1 requests with a Content-Length body, kept
/// alive, each answered 200 with an empty protobuf body.
fn serve_connection(stream: TcpStream, got: &Mutex<Received>) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let path = line.split(' ').nth(1).unwrap_or("").to_string();
        let (mut len, mut ctype) = (0usize, String::new());
        loop {
            let mut h = String::new();
            reader.read_line(&mut h)?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (k, v) = h.split_once(':').unwrap_or((h, ""));
            match k.to_ascii_lowercase().as_str() {
                "content-length" => len = v.trim().parse().unwrap_or(0),
                "content-type" => ctype = v.trim().to_string(),
                _ => {}
            }
        }
        let mut body = vec![0; len];
        reader.read_exact(&mut body)?;
        let status = if path == "/v1/traces" {
            match ExportTraceServiceRequest::decode(body.as_slice()) {
                Ok(req) => {
                    let mut g = got.lock().unwrap();
                    g.content_types.push(ctype);
                    for rs in req.resource_spans {
                        let service = rs
                            .resource
                            .iter()
                            .flat_map(|r| &r.attributes)
                            .find(|kv| kv.key == "service.name")
                            .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                                AnyValue::StringValue(s) => Some(s.clone()),
                                _ => None,
                            });
                        g.services.extend(service);
                        for ss in rs.scope_spans {
                            g.spans.extend(ss.spans);
                        }
                    }
                    "200 OK"
                }
                Err(_) => "400 Bad Request",
            }
        } else {
            "404 Not Found"
        };
        write!(
            out,
            "HTTP/1.1 {status}\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n"
        )?;
    }
}

fn receiver() -> (String, Arc<Mutex<Received>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let got = Arc::new(Mutex::new(Received::default()));
    let shared = got.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let g = shared.clone();
            std::thread::spawn(move || serve_connection(stream, &g));
        }
    });
    (url, got)
}

fn get(addr: &str, path: &str, extra: &str) -> u16 {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{extra}\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    raw.split(' ').nth(1).unwrap().parse().unwrap()
}

fn attr_i64(s: &Span, key: &str) -> Option<i64> {
    s.attributes.iter().find(|kv| kv.key == key).and_then(|kv| {
        match kv.value.as_ref()?.value.as_ref()? {
            AnyValue::IntValue(v) => Some(*v),
            // A u64 field arrives as text (tracing-opentelemetry's choice).
            AnyValue::StringValue(v) => v.parse().ok(),
            _ => None,
        }
    })
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn spans_reach_a_real_otlp_receiver() {
    let (url, got) = receiver();
    let mut child = Command::new(env!("CARGO_BIN_EXE_neurograph"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--tokens",
            "300",
            "--rate",
            "50",
        ])
        .args(["--otlp", &url, "--otlp-tick-rate", "1"])
        .env("NEUROGRAPH_LOG", "error")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on http://")
        .unwrap()
        .to_string();
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let parent = "b7ad6b7169203331";
    let tp = format!("traceparent: 00-{trace}-{parent}-01\r\n");
    assert_eq!(get(&addr, "/api/status", &tp), 200);
    assert_eq!(get(&addr, "/api/tokens/3", ""), 200);
    assert_eq!(get(&addr, "/api/tokens/99999", ""), 404);
    std::thread::sleep(Duration::from_millis(500));
    // SIGTERM: the server stops and flushes its spans.
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "serve did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
    let g = got.lock().unwrap();
    assert!(g.services.iter().all(|s| s == "neurograph") && !g.services.is_empty());
    assert!(
        g.content_types
            .iter()
            .all(|c| c == "application/x-protobuf"),
        "{:?}",
        g.content_types
    );
    let named = |n: &str| g.spans.iter().filter(|s| s.name == n).collect::<Vec<_>>();

    let status = named("GET /api/status");
    assert_eq!(
        status.len(),
        1,
        "{:?}",
        g.spans.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    assert_eq!(hex(&status[0].trace_id), trace, "the traceparent's trace");
    assert_eq!(
        hex(&status[0].parent_span_id),
        parent,
        "the traceparent's span is the parent"
    );
    assert_eq!(attr_i64(status[0], "http.response.status_code"), Some(200));
    let token = named("GET /api/tokens/{id}");
    assert_eq!(token.len(), 2);
    assert!(
        token
            .iter()
            .all(|s| s.parent_span_id.is_empty() && hex(&s.trace_id) != trace)
    );
    let mut codes: Vec<_> = token
        .iter()
        .map(|s| attr_i64(s, "http.response.status_code"))
        .collect();
    codes.sort();
    assert_eq!(codes, [Some(200), Some(404)]);

    let ticks = named("tick");
    assert!(ticks.len() >= 5, "{} tick spans", ticks.len());
    let mut numbers: Vec<i64> = ticks.iter().filter_map(|s| attr_i64(s, "tick")).collect();
    numbers.sort();
    numbers.dedup();
    assert_eq!(
        numbers.len(),
        ticks.len(),
        "one span per tick, each with its number"
    );
    let children = g
        .spans
        .iter()
        .filter(|s| {
            ticks
                .iter()
                .any(|t| t.span_id == s.parent_span_id && t.trace_id == s.trace_id)
        })
        .count();
    assert!(
        children >= ticks.len(),
        "the systems' spans are the ticks' children ({children})"
    );
}
