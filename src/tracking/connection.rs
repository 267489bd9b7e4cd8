//! The tracking connection: one dedicated RESP3 connection per server with
//! `CLIENT TRACKING ON BCAST PREFIX …`, read by the tracking subscriber actor.
//!
//! Why not a fred client: fred drops the `invalidate` push whose payload is null, which is
//! how the server announces `FLUSHALL`/`FLUSHDB`, and it does not restore tracking after a
//! reconnect (both seen with fred 10.1: `docs/cache.md`). Owning the connection lets us see every
//! push, including the flush, and makes each loss explicit: the connection ends, the L1s are
//! flushed, and a new connection must confirm tracking before fills resume. Liveness is ours
//! too: a `PING` that is not answered within the deadline ends the connection.

use std::fmt;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use redis_protocol::resp3::decode::complete::decode;
use redis_protocol::resp3::types::OwnedFrame;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::connect_failure::ConnectFailure;
use crate::error::{Error, Result};
use crate::tracking::topology::NodeAccess;

/// Where and how the tracking connection connects: the node, its credentials and TLS.
#[derive(Clone, Debug)]
pub struct TrackingTarget {
    host: String,
    port: u16,
    /// The host name a cluster node announces beside its address: its TLS name, in place of
    /// the address and of a configured `server_name` (which names nodes announced by
    /// address only), as fred verifies the same node.
    announced: Option<String>,
    /// Credentials, TLS and diagnostics (`Debug` hides the password).
    access: NodeAccess,
}

impl TrackingTarget {
    /// The server at `host:port`, reached with `access`. An IPv6 address may come with or
    /// without its brackets (`[::1]` from a URL, `::1` from `CLUSTER NODES`).
    pub fn new(host: &str, port: u16, access: NodeAccess) -> Self {
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        TrackingTarget {
            host: host.to_string(),
            port,
            announced: None,
            access,
        }
    }

    /// This target, verified by TLS as the host name `announced` when there is one.
    pub fn announced_as(mut self, announced: Option<String>) -> Self {
        self.announced = announced;
        self
    }

    /// The name a TLS handshake verifies, when it is not the configured override or the
    /// address itself.
    pub(crate) fn announced_name(&self) -> Option<&str> {
        self.announced.as_deref()
    }

    /// A failure to open a connection to this target: reported to the deployment's
    /// diagnostics, and returned as `Unavailable` naming the cause.
    fn failed(&self, cause: ConnectFailure) -> Error {
        if let Some(d) = &self.access.diagnostics {
            d.record(cause);
        }
        tracing::debug!(%cause, addr = %self.addr(), "tracking connection failed");
        Error::unavailable_because("cache.tracking", Some(cause))
    }

    /// `host:port`, an IPv6 address in brackets (`[::1]:6379`).
    pub fn addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// What the server said on the tracking connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrackingEvent {
    /// These keys changed (written, deleted, expired or evicted).
    Invalidate(Vec<String>),
    /// The server flushed its data: every tracked key may have changed.
    Flush,
    /// The answer to our `PING`.
    Pong,
}

/// A byte stream to a server: plain TCP or TLS over TCP.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// An open tracking connection.
pub struct TrackingConnection {
    stream: Box<dyn Stream>,
    buf: BytesMut,
}

impl fmt::Debug for TrackingConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrackingConnection")
            .field("buffered", &self.buf.len())
            .finish_non_exhaustive()
    }
}

fn command(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

fn lost(what: impl fmt::Display) -> Error {
    tracing::debug!(%what, "tracking connection lost");
    Error::unavailable("cache.tracking")
}

impl TrackingConnection {
    /// Connect, switch to RESP3 (authenticating when the URL has credentials), name the
    /// connection, and turn on broadcast tracking for `prefixes` (which must not overlap;
    /// see [`deoverlap`]). Everything is bounded by `timeout`.
    pub async fn open(
        target: &TrackingTarget,
        client_name: &str,
        prefixes: &[String],
        timeout: Duration,
    ) -> Result<Self> {
        let fut = async {
            let mut conn = Self::handshake(target, client_name).await?;
            let mut tracking: Vec<&[u8]> = vec![b"CLIENT", b"TRACKING", b"ON", b"BCAST"];
            for p in prefixes {
                tracking.push(b"PREFIX");
                tracking.push(p.as_bytes());
            }
            conn.send(&tracking).await?;
            conn.expect_reply("CLIENT TRACKING").await?;
            Ok(conn)
        };
        match tokio::time::timeout(timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(lost("handshake timed out")),
        }
    }

    /// A RESP3 connection without tracking, for [`TrackingConnection::request`] (topology
    /// polls). Bounded by `timeout`.
    pub async fn connect(
        target: &TrackingTarget,
        client_name: &str,
        timeout: Duration,
    ) -> Result<Self> {
        match tokio::time::timeout(timeout, Self::handshake(target, client_name)).await {
            Ok(r) => r,
            Err(_) => Err(lost("handshake timed out")),
        }
    }

    /// Send one command and return its reply (pushes are skipped; error replies are errors).
    /// Only for connections without tracking, where every frame is a reply. Not
    /// cancel-safe: drop the connection if the future is dropped.
    pub async fn request(&mut self, args: &[&[u8]]) -> Result<OwnedFrame> {
        self.send(args).await?;
        self.read_reply("request").await
    }

    async fn handshake(target: &TrackingTarget, client_name: &str) -> Result<Self> {
        {
            let tcp = TcpStream::connect((target.host.as_str(), target.port))
                .await
                .map_err(|e| target.failed(ConnectFailure::of_io_kind(e.kind())))?;
            tcp.set_nodelay(true).map_err(lost)?;
            // With TLS on, the handshake must succeed: a failure is reported, never followed
            // by a plaintext attempt.
            let stream: Box<dyn Stream> = match &target.access.tls {
                Some(tls) => Box::new(
                    tls.connect(&target.host, target.announced_name(), tcp)
                        .await
                        .map_err(|cause| target.failed(cause))?,
                ),
                None => Box::new(tcp),
            };
            let mut conn = TrackingConnection {
                stream,
                buf: BytesMut::with_capacity(16 * 1024),
            };
            let access = &target.access;
            let mut hello: Vec<&[u8]> = vec![b"HELLO", b"3"];
            if let Some(password) = &access.password {
                hello.push(b"AUTH");
                hello.push(access.username.as_deref().unwrap_or("default").as_bytes());
                hello.push(password.as_bytes());
            }
            hello.push(b"SETNAME");
            hello.push(client_name.as_bytes());
            conn.send(&hello).await?;
            conn.expect_reply("HELLO").await?;
            if let Some(d) = &access.diagnostics {
                d.clear();
            }
            Ok(conn)
        }
    }

    async fn send(&mut self, args: &[&[u8]]) -> Result<()> {
        self.stream.write_all(&command(args)).await.map_err(lost)?;
        // A TLS stream may keep written bytes in its buffer until flushed.
        self.stream.flush().await.map_err(lost)
    }

    /// Send `PING`; its `Pong` arrives through [`TrackingConnection::next_event`].
    pub async fn ping(&mut self) -> Result<()> {
        self.send(&[b"PING"]).await
    }

    async fn next_frame(&mut self) -> Result<OwnedFrame> {
        loop {
            match decode(&self.buf) {
                Ok(Some((frame, used))) => {
                    self.buf.advance(used);
                    return Ok(frame);
                }
                Ok(None) => {}
                Err(e) => {
                    return Err(Error::internal(
                        "cache.tracking",
                        format!("bad frame: {e:?}"),
                    ))
                }
            }
            // `read_buf` is cancel-safe: bytes read stay in the buffer.
            let n = self.stream.read_buf(&mut self.buf).await.map_err(lost)?;
            if n == 0 {
                return Err(lost("closed by the server"));
            }
        }
    }

    async fn expect_reply(&mut self, what: &str) -> Result<()> {
        self.read_reply(what).await.map(drop)
    }

    /// The next reply (pushes skipped); an error reply is an error naming `what` and the
    /// error code only (the reply text may echo arguments).
    async fn read_reply(&mut self, what: &str) -> Result<OwnedFrame> {
        loop {
            match self.next_frame().await? {
                OwnedFrame::Push { .. } => continue,
                OwnedFrame::SimpleError { data, .. } => {
                    let code = data.split_whitespace().next().unwrap_or("").to_string();
                    return Err(Error::internal(
                        "cache.tracking",
                        format!("{what} refused ({code})"),
                    ));
                }
                OwnedFrame::BlobError { .. } => {
                    return Err(Error::internal("cache.tracking", format!("{what} refused")))
                }
                frame => return Ok(frame),
            }
        }
    }

    /// The next event. Cancel-safe: dropping the future loses nothing.
    pub async fn next_event(&mut self) -> Result<TrackingEvent> {
        loop {
            let frame = self.next_frame().await?;
            if let Some(event) = classify(frame)? {
                return Ok(event);
            }
        }
    }
}

/// Interpret one frame read on a tracking connection; `None` for frames to skip.
pub fn classify(frame: OwnedFrame) -> Result<Option<TrackingEvent>> {
    match frame {
        OwnedFrame::Push { data, .. } => {
            let mut it = data.into_iter();
            let kind = match it.next() {
                Some(
                    OwnedFrame::BlobString { data, .. } | OwnedFrame::SimpleString { data, .. },
                ) => data,
                _ => return Ok(None),
            };
            if kind != b"invalidate" {
                return Ok(None);
            }
            match it.next() {
                Some(OwnedFrame::Array { data, .. }) => Ok(Some(TrackingEvent::Invalidate(
                    data.into_iter()
                        .filter_map(|f| match f {
                            OwnedFrame::BlobString { data, .. }
                            | OwnedFrame::SimpleString { data, .. } => {
                                Some(String::from_utf8_lossy(&data).into_owned())
                            }
                            _ => None,
                        })
                        .collect(),
                ))),
                // Null payload: FLUSHALL / FLUSHDB. The frame fred drops.
                Some(OwnedFrame::Null) | None => Ok(Some(TrackingEvent::Flush)),
                Some(_) => Ok(Some(TrackingEvent::Flush)),
            }
        }
        OwnedFrame::SimpleString { data, .. } if data == b"PONG" => Ok(Some(TrackingEvent::Pong)),
        OwnedFrame::SimpleError { data, .. } => Err(Error::internal(
            "cache.tracking",
            format!(
                "server error on the tracking connection ({})",
                data.split_whitespace().next().unwrap_or("")
            ),
        )),
        _ => Ok(None),
    }
}

/// Remove every prefix that another prefix in the list already covers (Redis refuses
/// overlapping BCAST prefixes on one connection), keeping the shorter one; sorted, unique.
pub fn deoverlap(prefixes: &[String]) -> Vec<String> {
    let mut sorted: Vec<String> = prefixes.to_vec();
    sorted.sort();
    sorted.dedup();
    let mut out: Vec<String> = Vec::new();
    for p in sorted {
        // Sorted order puts a prefix right before the strings it prefixes.
        if out.last().is_some_and(|last| p.starts_with(last.as_str())) {
            continue;
        }
        out.push(p);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(s: &str) -> OwnedFrame {
        OwnedFrame::BlobString {
            data: s.as_bytes().to_vec(),
            attributes: None,
        }
    }

    #[test]
    fn invalidations_flushes_and_pongs_are_recognised() {
        let push = |payload| OwnedFrame::Push {
            data: vec![blob("invalidate"), payload],
            attributes: None,
        };
        assert_eq!(
            classify(push(OwnedFrame::Array {
                data: vec![blob("a"), blob("b")],
                attributes: None
            }))
            .unwrap(),
            Some(TrackingEvent::Invalidate(vec!["a".into(), "b".into()]))
        );
        assert_eq!(
            classify(push(OwnedFrame::Null)).unwrap(),
            Some(TrackingEvent::Flush)
        );
        assert_eq!(
            classify(OwnedFrame::SimpleString {
                data: b"PONG".to_vec(),
                attributes: None
            })
            .unwrap(),
            Some(TrackingEvent::Pong)
        );
        let other_push = OwnedFrame::Push {
            data: vec![blob("message"), blob("x")],
            attributes: None,
        };
        assert_eq!(classify(other_push).unwrap(), None);
    }

    #[test]
    fn overlapping_prefixes_keep_the_shorter_one() {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            deoverlap(&v(&["app:b", "app", "other", "app:a", "other"])),
            v(&["app", "other"])
        );
        assert_eq!(deoverlap(&v(&["a:{x:", "a:{xy:"])), v(&["a:{x:", "a:{xy:"]));
    }

    #[test]
    fn the_password_never_shows() {
        let t = TrackingTarget::new(
            "127.0.0.1",
            7000,
            NodeAccess {
                username: Some("u".into()),
                password: Some("hunter2".into()),
                ..NodeAccess::default()
            },
        );
        assert!(!format!("{t:?}").contains("hunter2"));
        assert_eq!(t.addr(), "127.0.0.1:7000");
        for host in ["::1", "[::1]"] {
            let t = TrackingTarget::new(host, 7000, NodeAccess::default());
            assert_eq!(t.addr(), "[::1]:7000");
            assert_eq!(t.host, "::1");
        }
    }
}
