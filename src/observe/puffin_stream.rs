//! A TCP stream of puffin frames, for `puffin_viewer --url ADDR`.
//!
//! It speaks puffin_http's protocol (each message: the protocol version as a
//! little-endian `u16`, then one frame as [`puffin::FrameData::write_into`]
//! writes it, with every scope known so far in the first frame a client gets),
//! so `puffin_viewer` and `puffin_http::Client` read it unchanged.
//!
//! Why not `puffin_http::Server`: it serves any number of clients (a thread and
//! a 30-frame queue each), and dropping it joins every client's thread, so a
//! viewer that stops reading keeps the process from exiting. This server bounds
//! the clients, gives each write a timeout, drops frames for a slow client
//! instead of queueing them (and disconnects one that falls
//! [`MAX_DROPPED_IN_A_ROW`] frames behind), keeps every scope definition even
//! when it drops a frame, and never waits for a client when it stops.

use std::io::Write as _;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The puffin_http protocol version this server speaks.
pub const PROTOCOL_VERSION: u16 = 2;

/// Viewers served at once; another one is disconnected at once.
pub const MAX_CLIENTS: usize = 8;

/// Frames queued for one viewer before later frames are dropped for it.
const QUEUE_FRAMES: usize = 4;

/// The longest one write to a viewer may block; a viewer that reads nothing
/// for this long is disconnected.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Frames waiting to be encoded before the profiler's frames are dropped.
const ENCODE_QUEUE: usize = 16;

type Packet = Arc<[u8]>;

/// Frames dropped in a row for one viewer before it is disconnected: a viewer
/// that reads, but slower than frames come, would otherwise hold its slot for
/// good.
pub const MAX_DROPPED_IN_A_ROW: u32 = 64;

struct Client {
    addr: SocketAddr,
    queue: SyncSender<Packet>,
    dropped_in_a_row: u32,
    thread: std::thread::JoinHandle<()>,
}

#[derive(Default)]
struct Clients {
    list: Vec<Client>,
    /// A client joined since the last frame: send it every scope known.
    send_all_scopes: bool,
}

/// Every scope seen, kept by the profiler's sink itself, so that a frame
/// dropped before encoding loses no scope definition.
#[derive(Default)]
struct Scopes {
    known: Mutex<puffin::ScopeCollection>,
    /// A frame with new scopes was dropped: the next one carries them all.
    resend: AtomicBool,
}

/// Why the puffin server did not start.
#[derive(Debug, thiserror::Error)]
pub enum PuffinServerError {
    /// The address could not be bound.
    #[error("--puffin {addr}: cannot listen: {source}")]
    Bind {
        /// The address asked for.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// A thread could not start.
    #[error("cannot start the puffin server: {0}")]
    Thread(std::io::Error),
}

/// Serves the global profiler's frames to up to [`MAX_CLIENTS`] viewers; stops
/// (without waiting for any viewer) when dropped.
pub struct PuffinServer {
    addr: SocketAddr,
    sink: puffin::FrameSinkId,
    stop: Arc<AtomicBool>,
}

impl PuffinServer {
    /// Binds `addr` (port 0 picks a free one) and starts serving frames.
    ///
    /// # Errors
    /// [`PuffinServerError::Bind`] when `addr` cannot be bound,
    /// [`PuffinServerError::Thread`] when a thread cannot start.
    pub fn start(addr: &str) -> Result<Self, PuffinServerError> {
        let bind_err = |source| PuffinServerError::Bind {
            addr: addr.to_string(),
            source,
        };
        let listener = TcpListener::bind(addr).map_err(bind_err)?;
        listener.set_nonblocking(true).map_err(bind_err)?;
        let bound = listener.local_addr().map_err(bind_err)?;
        let clients = Arc::new(Mutex::new(Clients::default()));
        let stop = Arc::new(AtomicBool::new(false));
        {
            let (clients, stop) = (clients.clone(), stop.clone());
            std::thread::Builder::new()
                .name("neurograph-puffin-accept".into())
                .spawn(move || accept_loop(&listener, &clients, &stop))
                .map_err(PuffinServerError::Thread)?;
        }
        let scopes = Arc::new(Scopes::default());
        let (frames, encoder_rx) = sync_channel::<Arc<puffin::FrameData>>(ENCODE_QUEUE);
        let encoder = {
            let scopes = scopes.clone();
            std::thread::Builder::new()
                .name("neurograph-puffin-encode".into())
                .spawn(move || encode_loop(&encoder_rx, &clients, &scopes))
        };
        if let Err(e) = encoder {
            stop.store(true, Ordering::Relaxed);
            return Err(PuffinServerError::Thread(e));
        }
        // The sink runs on the thread that ends a frame (the tick's thread):
        // it records new scopes and hands the frame on, or drops it if the
        // encoder is behind.
        let sink = puffin::GlobalProfiler::lock().add_sink(Box::new(move |frame| {
            let new_scopes = !frame.scope_delta.is_empty();
            if new_scopes {
                let mut known = scopes.known.lock().unwrap_or_else(|e| e.into_inner());
                for s in &frame.scope_delta {
                    known.insert(s.clone());
                }
            }
            if frames.try_send(frame).is_err() && new_scopes {
                scopes.resend.store(true, Ordering::Relaxed);
            }
        }));
        Ok(Self {
            addr: bound,
            sink,
            stop,
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for PuffinServer {
    fn drop(&mut self) {
        // Removing the sink drops the encoder's sender: the encoder ends, and
        // with it every client's queue; a client blocked in a write ends within
        // WRITE_TIMEOUT on its own. Nothing here waits for a client.
        puffin::GlobalProfiler::lock().remove_sink(self.sink);
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn lock(m: &Mutex<Clients>) -> std::sync::MutexGuard<'_, Clients> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn accept_loop(listener: &TcpListener, clients: &Mutex<Clients>, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, addr)) => admit(stream, addr, clients),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => {
                tracing::warn!(error = %e, "puffin server: accept failed");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

fn admit(stream: TcpStream, addr: SocketAddr, clients: &Mutex<Clients>) {
    let mut c = lock(clients);
    // Viewers that went away free their slots.
    c.list.retain(|client| !client.thread.is_finished());
    if c.list.len() >= MAX_CLIENTS {
        tracing::warn!(%addr, limit = MAX_CLIENTS, "puffin server: too many viewers; closing");
        return;
    }
    if stream.set_nonblocking(false).is_err()
        || stream.set_write_timeout(Some(WRITE_TIMEOUT)).is_err()
    {
        return;
    }
    let (queue, rx) = sync_channel::<Packet>(QUEUE_FRAMES);
    let spawned = std::thread::Builder::new()
        .name("neurograph-puffin-client".into())
        .spawn(move || client_loop(&rx, stream, addr));
    if let Ok(thread) = spawned {
        c.list.push(Client {
            addr,
            queue,
            dropped_in_a_row: 0,
            thread,
        });
        c.send_all_scopes = true;
    }
}

fn encode_loop(
    frames: &Receiver<Arc<puffin::FrameData>>,
    clients: &Mutex<Clients>,
    scopes: &Scopes,
) {
    while let Ok(frame) = frames.recv() {
        // Encoded under the lock, so a viewer that joins meanwhile waits for
        // the next frame, which carries every scope.
        let mut c = lock(clients);
        if c.list.is_empty() {
            continue;
        }
        let all_scopes = c.send_all_scopes | scopes.resend.swap(false, Ordering::Relaxed);
        let known = all_scopes.then(|| {
            scopes
                .known
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
        });
        let mut packet = PROTOCOL_VERSION.to_le_bytes().to_vec();
        if let Err(e) = frame.write_into(known.as_ref(), &mut packet) {
            tracing::warn!(error = %e, "puffin server: cannot encode a frame");
            continue;
        }
        c.send_all_scopes = false;
        let packet: Packet = packet.into();
        c.list.retain_mut(|client| match client.queue.try_send(packet.clone()) {
            Ok(()) => {
                client.dropped_in_a_row = 0;
                true
            }
            Err(TrySendError::Full(_)) => {
                client.dropped_in_a_row += 1;
                let keep = client.dropped_in_a_row < MAX_DROPPED_IN_A_ROW;
                if !keep {
                    tracing::info!(addr = %client.addr, "puffin viewer too slow; disconnecting it");
                }
                keep
            }
            Err(TrySendError::Disconnected(_)) => false,
        });
    }
}

fn client_loop(queue: &Receiver<Packet>, mut stream: TcpStream, addr: SocketAddr) {
    loop {
        match queue.recv_timeout(Duration::from_secs(1)) {
            Ok(packet) => {
                if let Err(e) = stream.write_all(&packet) {
                    tracing::info!(%addr, error = %e, "puffin viewer disconnected");
                    return;
                }
            }
            // No frame for a while: notice a viewer that has gone, so that
            // its slot frees up.
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                if peer_closed(&stream) {
                    return;
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// Whether the viewer closed its end (a viewer sends nothing; a read that
/// returns 0 bytes means it is gone).
fn peer_closed(stream: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    stream
        .set_read_timeout(Some(Duration::from_millis(1)))
        .is_ok()
        && matches!(stream.peek(&mut byte), Ok(0))
}
