//! A fault-injecting TCP proxy for network failure tests.
//!
//! [`FaultProxy`] sits between the client under test and a real server:
//!
//! ```text
//!  client ──► FaultProxy (127.0.0.1:random) ──► TestServer
//! ```
//!
//! Each accepted client connection gets its own upstream connection and two
//! pumps (client → server, server → client). The proxy can then simulate
//! the failures a networked client must survive:
//!
//! | Fault | How |
//! |-------|-----|
//! | Server down (connection refused / reset) | [`ProxyMode::Refuse`] |
//! | Hung peer, half-open connection | [`ProxyMode::BlackHole`] |
//! | Connections dropped by the network | [`FaultProxy::cut_all`] |
//! | Request executed but reply lost | [`FaultProxy::lose_next_reply`] |
//! | Slow network | [`FaultProxy::set_delay`] |
//!
//! The proxy lives inside the tokio runtime of the test: create it with
//! [`FaultProxy::start`] from async code. Dropping it stops the listener and
//! closes every proxied connection.

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinHandle};
use tokio::time::Instant;

/// Size of one read from either side.
const CHUNK: usize = 16 * 1024;
/// Chunks buffered per direction while a delay is applied.
const QUEUE: usize = 1024;
/// Upper bound for connecting to the upstream.
const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What the proxy does with connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ProxyMode {
    /// Forward bytes normally (the initial mode).
    #[default]
    Pass,
    /// The server is "down": new connections are accepted and dropped at
    /// once; switching to this mode also cuts every existing connection.
    Refuse,
    /// The server "hangs": connections stay open but every byte in both
    /// directions is silently discarded. Switching back to
    /// [`Pass`](ProxyMode::Pass) resumes forwarding (discarded bytes are lost).
    BlackHole,
}

impl ProxyMode {
    fn to_u8(self) -> u8 {
        match self {
            ProxyMode::Pass => 0,
            ProxyMode::Refuse => 1,
            ProxyMode::BlackHole => 2,
        }
    }

    fn from_u8(v: u8) -> ProxyMode {
        match v {
            1 => ProxyMode::Refuse,
            2 => ProxyMode::BlackHole,
            _ => ProxyMode::Pass,
        }
    }
}

/// State shared between the handle and the proxy tasks.
struct Shared {
    upstream: SocketAddr,
    mode: AtomicU8,
    delay_nanos: AtomicU64,
    lose_next_reply: AtomicBool,
    accepted: AtomicU64,
    /// Live connections (id → abort handle of the connection task), plus a
    /// shutdown flag, under one lock so registration and shutdown cannot race.
    conns: Mutex<Registry>,
    /// What crossed the proxy (see [`FaultProxy::recorded`]).
    recording: Mutex<Vec<u8>>,
}

/// The most bytes [`FaultProxy::recorded`] keeps.
pub const RECORDING_LIMIT: usize = 16 * 1024 * 1024;

#[derive(Default)]
struct Registry {
    next_id: u64,
    shutdown: bool,
    live: HashMap<u64, AbortHandle>,
}

impl Shared {
    fn mode(&self) -> ProxyMode {
        ProxyMode::from_u8(self.mode.load(Ordering::SeqCst))
    }

    fn delay(&self) -> Duration {
        Duration::from_nanos(self.delay_nanos.load(Ordering::SeqCst))
    }

    fn registry(&self) -> MutexGuard<'_, Registry> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keep a copy of forwarded bytes (both directions), up to [`RECORDING_LIMIT`].
    fn record(&self, bytes: &[u8]) {
        let mut rec = self.recording.lock().unwrap_or_else(|p| p.into_inner());
        let room = RECORDING_LIMIT.saturating_sub(rec.len());
        rec.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    /// Aborts every live connection task (closing both sockets).
    fn cut_all(&self) {
        let handles: Vec<AbortHandle> = self.registry().live.values().cloned().collect();
        for h in handles {
            h.abort();
        }
    }
}

/// Removes a connection from the registry when its task ends or is aborted.
struct ConnGuard {
    id: u64,
    shared: Arc<Shared>,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.shared.registry().live.remove(&self.id);
    }
}

/// An in-process TCP proxy on `127.0.0.1` in front of one upstream server,
/// with switchable faults.
///
/// See the [module documentation](self) for an overview.
///
/// ```no_run
/// # use forze_redis_testkit::{server_binaries, FaultProxy, ProxyMode, TestServer};
/// # async fn demo() {
/// let server = TestServer::start(&server_binaries()[0]);
/// let proxy = FaultProxy::start(server.addr()).await;
/// // connect the client under test to proxy.url() ...
/// proxy.lose_next_reply(); // the next command executes but its reply is lost
/// proxy.set_mode(ProxyMode::BlackHole); // everything hangs from now on
/// # }
/// ```
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept_task: JoinHandle<()>,
}

impl std::fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultProxy")
            .field("addr", &self.addr)
            .field("upstream", &self.shared.upstream)
            .field("mode", &self.mode())
            .field("connections", &self.connection_count())
            .finish()
    }
}

impl FaultProxy {
    /// Starts a proxy listening on `127.0.0.1:<random port>` that forwards
    /// to `upstream` (for example `server.addr()` or a [`SocketAddr`]).
    ///
    /// Must be called inside a tokio runtime; the proxy's tasks run on it.
    ///
    /// # Panics
    ///
    /// Panics if `upstream` does not resolve or the listener cannot be bound.
    pub async fn start(upstream: impl ToSocketAddrs) -> FaultProxy {
        let upstream = upstream
            .to_socket_addrs()
            .unwrap_or_else(|e| {
                panic!("forze-redis-testkit: FaultProxy upstream does not resolve: {e}")
            })
            .next()
            .unwrap_or_else(|| {
                panic!("forze-redis-testkit: FaultProxy upstream resolved to no address")
            });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| {
            panic!("forze-redis-testkit: FaultProxy cannot bind 127.0.0.1:0: {e}")
        });
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("forze-redis-testkit: FaultProxy local_addr: {e}"));
        let shared = Arc::new(Shared {
            upstream,
            mode: AtomicU8::new(ProxyMode::Pass.to_u8()),
            delay_nanos: AtomicU64::new(0),
            lose_next_reply: AtomicBool::new(false),
            accepted: AtomicU64::new(0),
            conns: Mutex::new(Registry::default()),
            recording: Mutex::new(Vec::new()),
        });
        let accept_task = tokio::spawn(accept_loop(listener, shared.clone()));
        FaultProxy {
            addr,
            shared,
            accept_task,
        }
    }

    /// Every byte forwarded so far, both directions interleaved in arrival order (the
    /// first [`RECORDING_LIMIT`] bytes): what an observer on the wire would see.
    pub fn recorded(&self) -> Vec<u8> {
        self.shared
            .recording
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The proxy's listening address (`127.0.0.1:<port>`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The proxy's listening port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `"redis://127.0.0.1:<port>"`: give this to the client under test.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.addr.port())
    }

    /// The upstream address the proxy forwards to.
    pub fn upstream(&self) -> SocketAddr {
        self.shared.upstream
    }

    /// The current mode.
    pub fn mode(&self) -> ProxyMode {
        self.shared.mode()
    }

    /// Switches the mode. Switching to [`ProxyMode::Refuse`] also cuts every
    /// existing connection.
    pub fn set_mode(&self, mode: ProxyMode) {
        self.shared.mode.store(mode.to_u8(), Ordering::SeqCst);
        if mode == ProxyMode::Refuse {
            self.shared.cut_all();
        }
    }

    /// Closes every currently proxied connection (client and upstream side)
    /// now. New connections still follow the mode. The connection count
    /// drops asynchronously; use [`wait_until`](crate::wait_until) on
    /// [`connection_count`](Self::connection_count) if a test needs it at 0.
    pub fn cut_all(&self) {
        self.shared.cut_all();
    }

    /// Arms a one-shot fault: the next chunk of bytes coming *from the
    /// upstream* (a reply), on any connection, is discarded and that
    /// connection is closed on both sides. The request already reached the
    /// server, so this simulates "executed, reply lost".
    ///
    /// Bytes discarded by [`ProxyMode::BlackHole`] do not consume the
    /// one-shot. Replies of the same connection that were still queued
    /// behind a [`set_delay`](Self::set_delay) are lost with it.
    pub fn lose_next_reply(&self) {
        self.shared.lose_next_reply.store(true, Ordering::SeqCst);
    }

    /// Delays every forwarded chunk, in both directions, by `delay`
    /// (`Duration::ZERO` disables). Ordering per direction is preserved.
    /// Applies to chunks read after the call.
    pub fn set_delay(&self, delay: Duration) {
        let nanos = u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX);
        self.shared.delay_nanos.store(nanos, Ordering::SeqCst);
    }

    /// Number of currently open proxied connections.
    pub fn connection_count(&self) -> usize {
        self.shared.registry().live.len()
    }

    /// Total number of client connections accepted so far (including those
    /// dropped by [`ProxyMode::Refuse`]).
    pub fn accepted_count(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept_task.abort();
        let handles: Vec<AbortHandle> = {
            let mut reg = self.shared.registry();
            reg.shutdown = true;
            reg.live.values().cloned().collect()
        };
        for h in handles {
            h.abort();
        }
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let client = match listener.accept().await {
            Ok((stream, _peer)) => stream,
            Err(_) => {
                // Typically EMFILE / ECONNABORTED: back off instead of spinning.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        if shared.mode() == ProxyMode::Refuse {
            drop(client);
            continue;
        }
        let mut reg = shared.registry();
        if reg.shutdown {
            return;
        }
        let id = reg.next_id;
        reg.next_id += 1;
        let guard = ConnGuard {
            id,
            shared: shared.clone(),
        };
        // Registered while holding the lock, so the task's guard cannot
        // remove the entry before it exists.
        let task = tokio::spawn(run_connection(client, shared.clone(), guard));
        reg.live.insert(id, task.abort_handle());
    }
}

/// Result of reading one chunk in a pump.
enum ReadEnd {
    /// EOF or error: flush what is queued, then close.
    Finished,
    /// A lost reply: close immediately without flushing.
    Kill,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    ToUpstream,
    ToClient,
}

async fn run_connection(client: TcpStream, shared: Arc<Shared>, guard: ConnGuard) {
    let _guard = guard;
    let upstream = match tokio::time::timeout(
        UPSTREAM_CONNECT_TIMEOUT,
        TcpStream::connect(shared.upstream),
    )
    .await
    {
        Ok(Ok(s)) => s,
        _ => return, // upstream unreachable: the client sees the connection close
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (client_rd, client_wr) = client.into_split();
    let (up_rd, up_wr) = upstream.into_split();
    // The connection ends as soon as either direction ends; dropping the
    // halves closes both sockets.
    tokio::select! {
        _ = pump(client_rd, up_wr, Direction::ToUpstream, shared.clone()) => {}
        _ = pump(up_rd, client_wr, Direction::ToClient, shared.clone()) => {}
    }
}

/// Forwards one direction: a reader stage (applies mode / one-shot faults
/// and stamps each chunk with its due time) and a writer stage (sleeps until
/// the due time, then writes), connected by a bounded queue so ordering is
/// preserved.
async fn pump(mut rd: OwnedReadHalf, mut wr: OwnedWriteHalf, dir: Direction, shared: Arc<Shared>) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(QUEUE);
    let reader = {
        let shared = shared.clone();
        async move {
            let mut buf = vec![0u8; CHUNK];
            loop {
                let n = match rd.read(&mut buf).await {
                    Ok(0) | Err(_) => return ReadEnd::Finished,
                    Ok(n) => n,
                };
                match shared.mode() {
                    ProxyMode::BlackHole => continue,
                    ProxyMode::Refuse => return ReadEnd::Kill,
                    ProxyMode::Pass => {}
                }
                if dir == Direction::ToClient
                    && shared
                        .lose_next_reply
                        .compare_exchange(true, false, Ordering::SeqCst, Ordering::SeqCst)
                        .is_ok()
                {
                    return ReadEnd::Kill;
                }
                shared.record(&buf[..n]);
                let due = Instant::now() + shared.delay();
                if tx.send((due, buf[..n].to_vec())).await.is_err() {
                    return ReadEnd::Finished;
                }
            }
            // `tx` is dropped here, letting the writer drain and finish.
        }
    };
    let writer = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if wr.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = wr.shutdown().await;
    };
    tokio::pin!(reader, writer);
    tokio::select! {
        end = &mut reader => {
            if let ReadEnd::Finished = end {
                (&mut writer).await;
            }
        }
        () = &mut writer => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wait::wait_until;

    const SHORT: Duration = Duration::from_millis(200);
    const LONG: Duration = Duration::from_secs(5);

    /// A local echo server; returns its address. Ends with the runtime.
    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind echo");
        let addr = listener.local_addr().expect("echo addr");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    loop {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                if s.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        addr
    }

    async fn connect(proxy: &FaultProxy) -> TcpStream {
        let s = TcpStream::connect(proxy.addr())
            .await
            .expect("connect proxy");
        s.set_nodelay(true).expect("nodelay");
        s
    }

    /// Sends `msg` and reads exactly `msg.len()` bytes back within `LONG`.
    async fn roundtrip(s: &mut TcpStream, msg: &[u8]) {
        s.write_all(msg).await.expect("write");
        let mut buf = vec![0u8; msg.len()];
        tokio::time::timeout(LONG, s.read_exact(&mut buf))
            .await
            .expect("echo timed out")
            .expect("echo read");
        assert_eq!(buf, msg);
    }

    /// `true` if the peer closed (EOF or reset) within `LONG`.
    async fn closed(s: &mut TcpStream) -> bool {
        let mut buf = [0u8; 64];
        match tokio::time::timeout(LONG, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => true,
            Ok(Ok(_)) | Err(_) => false,
        }
    }

    /// `true` if nothing arrives within `SHORT` (and the socket stays open).
    async fn silent(s: &mut TcpStream) -> bool {
        let mut buf = [0u8; 64];
        tokio::time::timeout(SHORT, s.read(&mut buf)).await.is_err()
    }

    #[tokio::test]
    async fn pass_forwards_both_ways() {
        let proxy = FaultProxy::start(echo_server().await).await;
        assert_eq!(proxy.url(), format!("redis://127.0.0.1:{}", proxy.port()));
        assert_eq!(proxy.mode(), ProxyMode::Pass);
        let mut a = connect(&proxy).await;
        let mut b = connect(&proxy).await;
        roundtrip(&mut a, b"hello").await;
        roundtrip(&mut b, b"world").await;
        roundtrip(&mut a, &vec![7u8; 100_000]).await;
        assert_eq!(proxy.accepted_count(), 2);
        wait_until(LONG, "2 open connections", || proxy.connection_count() == 2).await;
        drop(a);
        wait_until(LONG, "1 open connection", || proxy.connection_count() == 1).await;
    }

    #[tokio::test]
    async fn refuse_drops_new_and_existing() {
        let proxy = FaultProxy::start(echo_server().await).await;
        let mut existing = connect(&proxy).await;
        roundtrip(&mut existing, b"x").await;
        proxy.set_mode(ProxyMode::Refuse);
        assert!(
            closed(&mut existing).await,
            "existing connection must be cut"
        );
        let mut fresh = connect(&proxy).await;
        assert!(closed(&mut fresh).await, "new connection must be dropped");
        wait_until(LONG, "no open connections", || {
            proxy.connection_count() == 0
        })
        .await;
        assert_eq!(proxy.accepted_count(), 2);
        proxy.set_mode(ProxyMode::Pass);
        let mut again = connect(&proxy).await;
        roundtrip(&mut again, b"back").await;
    }

    #[tokio::test]
    async fn blackhole_discards_then_pass_resumes() {
        let proxy = FaultProxy::start(echo_server().await).await;
        let mut s = connect(&proxy).await;
        roundtrip(&mut s, b"before").await;
        proxy.set_mode(ProxyMode::BlackHole);
        s.write_all(b"lost").await.expect("write");
        assert!(silent(&mut s).await, "black hole must not answer");
        let mut fresh = connect(&proxy).await;
        fresh.write_all(b"lost too").await.expect("write");
        assert!(
            silent(&mut fresh).await,
            "new connections are black-holed too"
        );
        assert_eq!(proxy.connection_count(), 2, "connections stay open");
        proxy.set_mode(ProxyMode::Pass);
        roundtrip(&mut s, b"after").await;
        roundtrip(&mut fresh, b"after").await;
    }

    #[tokio::test]
    async fn lose_next_reply_loses_exactly_one() {
        let proxy = FaultProxy::start(echo_server().await).await;
        let mut a = connect(&proxy).await;
        roundtrip(&mut a, b"warm").await;
        proxy.lose_next_reply();
        a.write_all(b"request").await.expect("write");
        let mut buf = [0u8; 64];
        match tokio::time::timeout(LONG, a.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {}
            other => panic!("expected close without reply, got {other:?}"),
        }
        // The one-shot is consumed: the next connection works normally.
        let mut b = connect(&proxy).await;
        roundtrip(&mut b, b"next").await;
        roundtrip(&mut b, b"and next").await;
    }

    #[tokio::test]
    async fn cut_all_closes_existing_only() {
        let proxy = FaultProxy::start(echo_server().await).await;
        let mut a = connect(&proxy).await;
        let mut b = connect(&proxy).await;
        roundtrip(&mut a, b"a").await;
        roundtrip(&mut b, b"b").await;
        proxy.cut_all();
        assert!(closed(&mut a).await);
        assert!(closed(&mut b).await);
        wait_until(LONG, "no open connections", || {
            proxy.connection_count() == 0
        })
        .await;
        let mut c = connect(&proxy).await;
        roundtrip(&mut c, b"c").await;
    }

    #[tokio::test]
    async fn delay_delays_each_direction() {
        let proxy = FaultProxy::start(echo_server().await).await;
        let mut s = connect(&proxy).await;
        roundtrip(&mut s, b"warm").await;
        let delay = Duration::from_millis(100);
        proxy.set_delay(delay);
        let started = std::time::Instant::now();
        roundtrip(&mut s, b"slow").await;
        // Delayed once on the way in and once on the way out.
        assert!(started.elapsed() >= delay * 2, "{:?}", started.elapsed());
        proxy.set_delay(Duration::ZERO);
        // Ordering is preserved under delay.
        proxy.set_delay(Duration::from_millis(20));
        for i in 0..20u8 {
            s.write_all(&[i]).await.expect("write");
        }
        let mut got = [0u8; 20];
        tokio::time::timeout(LONG, s.read_exact(&mut got))
            .await
            .expect("timed out")
            .expect("read");
        assert_eq!(got.to_vec(), (0..20u8).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn real_server_executed_but_reply_lost() {
        use crate::{server_binaries, TestServer};
        for bin in server_binaries() {
            let server = TestServer::start(&bin);
            let proxy = FaultProxy::start(server.addr()).await;
            let mut s = connect(&proxy).await;
            proxy.lose_next_reply();
            s.write_all(&crate::resp::encode_command(&["INCR", "n"]))
                .await
                .expect("write");
            assert!(closed(&mut s).await, "{bin}: connection must close");
            let n = server.cmd(&["GET", "n"]).expect("GET");
            assert_eq!(n.as_str().as_deref(), Some("1"), "{bin}: INCR was executed");
        }
    }

    #[tokio::test]
    async fn drop_closes_everything() {
        let proxy = FaultProxy::start(echo_server().await).await;
        let addr = proxy.addr();
        let mut s = connect(&proxy).await;
        roundtrip(&mut s, b"x").await;
        drop(proxy);
        assert!(
            closed(&mut s).await,
            "proxied connection must close on drop"
        );
        // The listener is gone too (connect refused, or accepted-then-closed
        // if the abort has not been processed yet).
        let mut refused = false;
        for _ in 0..100 {
            match TcpStream::connect(addr).await {
                Err(_) => {
                    refused = true;
                    break;
                }
                Ok(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
        assert!(refused, "listener must stop after drop");
    }
}
