//! Where the tracking subscriber connects: the primaries behind a URL, and how to notice that
//! they changed.
//!
//! - **Single server**: the server. Its topology never changes; a restart or a kill ends the
//!   tracking connection, which is enough.
//! - **Cluster**: every primary. Broadcast tracking is per node (a node reports writes to the
//!   keys it holds), so one connection per primary is the only way to hear of every write
//!   (fred 10.1 sends `CLIENT TRACKING … BCAST` to one node only: in a test, 7 of 30 keys over 3 primaries were invalidated). The slot map is
//!   read with `CLUSTER NODES` from a seed, and polled; any change (a slot migrated, a
//!   failover, a node added) is a topology change.
//! - **Sentinel**: the primary the sentinels name for the service, polled with
//!   `SENTINEL GET-MASTER-ADDR-BY-NAME`; a new address is a topology change (a failover).
//!
//! On a topology change the subscriber flushes every L1, marks it untrusted and tracks the new
//! primaries before fills resume: an L1 is only trusted while every primary that may hold its
//! keys is tracked.
//!
//! Sentinels are contacted with the URL's credentials, like fred does without its
//! `sentinel-auth` feature.

use std::fmt;
use std::time::Duration;

use fred::types::config::ServerConfig;
use redis_protocol::resp3::types::OwnedFrame;

use std::sync::Arc;

use crate::config::{RedisConfig, RedisUrl};
use crate::connect_failure::ConnectDiagnostics;
use crate::connection::RedisConnection;
use crate::error::{Error, Result};
use crate::tls::TlsClient;
use crate::tracking::connection::{TrackingConnection, TrackingTarget};

/// The primaries behind a Redis URL, as the tracking subscriber needs them.
#[derive(Clone)]
pub enum TrackingSource {
    /// One server.
    Single(TrackingTarget),
    /// A cluster, discovered from any of its seeds.
    Cluster {
        /// Seed nodes (`host`, `port`), tried in order.
        seeds: Vec<(String, u16)>,
        /// NodeAccess for every node.
        auth: NodeAccess,
    },
    /// A primary named by sentinels.
    Sentinel {
        /// The sentinels (`host`, `port`), tried in order.
        sentinels: Vec<(String, u16)>,
        /// The service (`sentinelServiceName`).
        service: String,
        /// NodeAccess for the data nodes and the sentinels.
        auth: NodeAccess,
    },
}

/// How every node is reached: credentials (the password never printed), the TLS client when
/// the deployment uses TLS, and where connection failures are reported.
#[derive(Clone, Default)]
pub struct NodeAccess {
    /// ACL user (`default` when only a password is given).
    pub username: Option<String>,
    /// Password.
    pub password: Option<String>,
    /// The deployment's TLS client: every tracking and topology connection is encrypted
    /// when the pool's are.
    pub tls: Option<TlsClient>,
    /// Shared with the pool: a failed handshake here names the cause there too.
    pub diagnostics: Option<Arc<ConnectDiagnostics>>,
}

impl fmt::Debug for NodeAccess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeAccess")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl fmt::Debug for TrackingSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrackingSource::Single(t) => f.debug_tuple("Single").field(t).finish(),
            TrackingSource::Cluster { seeds, auth } => f
                .debug_struct("Cluster")
                .field("seeds", seeds)
                .field("auth", auth)
                .finish(),
            TrackingSource::Sentinel {
                sentinels,
                service,
                auth,
            } => f
                .debug_struct("Sentinel")
                .field("sentinels", sentinels)
                .field("service", service)
                .field("auth", auth)
                .finish(),
        }
    }
}

/// The primaries to track now, and a fingerprint of what they were resolved from: when a poll
/// returns another fingerprint, the topology changed.
#[derive(Debug, Clone)]
pub struct Topology {
    /// One target per primary.
    pub primaries: Vec<TrackingTarget>,
    /// The slot map (cluster) or the primary's address (sentinel, single server).
    pub fingerprint: String,
}

/// A connection that answers topology polls (a seed of the cluster or a sentinel), kept open
/// between polls.
#[derive(Debug)]
pub struct TopologyWatch {
    conn: TrackingConnection,
    /// The address this watch is connected to, for a cluster host reported empty.
    host: String,
}

impl TrackingSource {
    /// The source for the deployment `redis`, reached with the pool's TLS client and
    /// reporting to its diagnostics (both from [`RedisConnection`]). Unix sockets are refused:
    /// tracking needs TCP for now.
    pub fn new(redis: &RedisConfig, conn: &RedisConnection) -> Result<Self> {
        Self::with_access(
            &redis.url,
            conn.tls().cloned(),
            Some(conn.diagnostics().clone()),
        )
    }

    fn with_access(
        url: &RedisUrl,
        tls: Option<TlsClient>,
        diagnostics: Option<Arc<ConnectDiagnostics>>,
    ) -> Result<Self> {
        let cfg = url.to_fred_config()?;
        let auth = NodeAccess {
            username: cfg.username.clone(),
            password: cfg.password.clone(),
            tls,
            diagnostics,
        };
        let hosts = |hosts: &[fred::types::config::Server]| {
            hosts
                .iter()
                .map(|s| (s.host.to_string(), s.port))
                .collect::<Vec<_>>()
        };
        match &cfg.server {
            ServerConfig::Centralized { server } => Ok(TrackingSource::Single(
                TrackingTarget::new(&server.host, server.port, auth),
            )),
            ServerConfig::Clustered { hosts: h, .. } => Ok(TrackingSource::Cluster {
                seeds: hosts(h),
                auth,
            }),
            ServerConfig::Sentinel {
                hosts: h,
                service_name,
                ..
            } => Ok(TrackingSource::Sentinel {
                sentinels: hosts(h),
                service: service_name.clone(),
                auth,
            }),
            #[allow(unreachable_patterns)]
            _ => Err(Error::config(
                "redis.url",
                "client-side caching needs a TCP URL (single server, cluster or sentinel)",
            )),
        }
    }

    /// Whether the primaries can change while connections stay up (cluster, sentinel): then
    /// the subscriber polls [`TrackingSource::poll`].
    pub fn is_dynamic(&self) -> bool {
        !matches!(self, TrackingSource::Single(_))
    }

    /// Resolve the primaries now, and open the connection later polls use (`None` for a
    /// single server). Every network step is bounded by `timeout`.
    pub async fn resolve(
        &self,
        client_name: &str,
        timeout: Duration,
    ) -> Result<(Topology, Option<TopologyWatch>)> {
        match self {
            TrackingSource::Single(t) => Ok((
                Topology {
                    primaries: vec![t.clone()],
                    fingerprint: t.addr(),
                },
                None,
            )),
            TrackingSource::Cluster { seeds, auth }
            | TrackingSource::Sentinel {
                sentinels: seeds,
                auth,
                ..
            } => {
                let mut last = Error::unavailable("cache.tracking.topology");
                for (host, port) in seeds {
                    let target = TrackingTarget::new(host, *port, auth.clone());
                    let mut watch =
                        match TrackingConnection::connect(&target, client_name, timeout).await {
                            Ok(conn) => TopologyWatch {
                                conn,
                                host: host.clone(),
                            },
                            Err(e) => {
                                last = e;
                                continue;
                            }
                        };
                    match self.poll(&mut watch, timeout).await {
                        Ok(topology) => return Ok((topology, Some(watch))),
                        Err(e) => last = e,
                    }
                }
                Err(last)
            }
        }
    }

    /// Read the topology again on `watch`.
    pub async fn poll(&self, watch: &mut TopologyWatch, timeout: Duration) -> Result<Topology> {
        let fut = async {
            match self {
                TrackingSource::Single(t) => Ok(Topology {
                    primaries: vec![t.clone()],
                    fingerprint: t.addr(),
                }),
                TrackingSource::Cluster { auth, .. } => {
                    let reply = watch.conn.request(&[b"CLUSTER", b"NODES"]).await?;
                    parse_cluster_nodes(&reply, &watch.host, auth)
                }
                TrackingSource::Sentinel { service, auth, .. } => {
                    let reply = watch
                        .conn
                        .request(&[b"SENTINEL", b"GET-MASTER-ADDR-BY-NAME", service.as_bytes()])
                        .await?;
                    parse_sentinel_primary(&reply, auth)
                }
            }
        };
        match tokio::time::timeout(timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout {
                op: "cache.tracking.topology".into(),
                after: timeout,
            }),
        }
    }
}

fn bad(what: &str) -> Error {
    Error::internal(
        "cache.tracking.topology",
        format!("unexpected {what} reply"),
    )
}

fn text(f: &OwnedFrame) -> Option<String> {
    match f {
        OwnedFrame::BlobString { data, .. } | OwnedFrame::SimpleString { data, .. } => {
            Some(String::from_utf8_lossy(data).into_owned())
        }
        _ => None,
    }
}

fn int(f: &OwnedFrame) -> Option<i64> {
    match f {
        OwnedFrame::Number { data, .. } => Some(*data),
        other => text(other)?.parse().ok(),
    }
}

fn items(f: &OwnedFrame) -> Option<&[OwnedFrame]> {
    match f {
        OwnedFrame::Array { data, .. } => Some(data),
        _ => None,
    }
}

/// `CLUSTER NODES` → one target per primary, and the primaries with their slots as the
/// fingerprint. Every primary is tracked, also one that holds no slot yet: during a slot
/// migration the keys already moved live on the importing node (often a new, empty one), and
/// clients that follow `ASK` write them there; only the node you ask shows its own migration
/// state, so the importing node must be tracked before any slot is given to it. Primaries
/// marked `fail`, `noaddr` or `handshake` are left out. A primary reported without a host is
/// reached at the host the poll went to.
pub fn parse_cluster_nodes(reply: &OwnedFrame, via: &str, auth: &NodeAccess) -> Result<Topology> {
    let text = match reply {
        OwnedFrame::VerbatimString { data, .. } => String::from_utf8_lossy(data).into_owned(),
        other => self::text(other).ok_or_else(|| bad("CLUSTER NODES"))?,
    };
    let mut primaries: Vec<(String, u16, String, Option<String>)> = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(addr), Some(flags)) = (fields.get(1), fields.get(2)) else {
            return Err(bad("CLUSTER NODES"));
        };
        let flags: Vec<&str> = flags.split(',').collect();
        if !flags.contains(&"master")
            || flags
                .iter()
                .any(|f| matches!(*f, "fail" | "noaddr" | "handshake"))
        {
            continue;
        }
        // `host:port@bus[,hostname]`; the host may be empty (a node that does not know it).
        let hostport = addr.split('@').next().unwrap_or("");
        // A node that announces a host name is verified as that name (its certificate is
        // made for it), as the pool verifies it.
        let announced = addr
            .split_once(',')
            .map(|(_, name)| name)
            .filter(|name| !name.is_empty())
            .map(str::to_string);
        let (host, port) = hostport
            .rsplit_once(':')
            .ok_or_else(|| bad("CLUSTER NODES"))?;
        let port: u16 = port.parse().map_err(|_| bad("CLUSTER NODES"))?;
        if port == 0 {
            continue;
        }
        let host = if host.is_empty() || host == "?" {
            via
        } else {
            host
        };
        // Owned slots only: `[slot->-id]` / `[slot-<-id]` migration marks are shown by the
        // node asked for its own slots only, so they would make the fingerprint depend on
        // which seed answered.
        let slots: Vec<&str> = fields
            .iter()
            .skip(8)
            .copied()
            .filter(|f| !f.starts_with('['))
            .collect();
        primaries.push((host.to_string(), port, slots.join(" "), announced));
    }
    if primaries.is_empty() {
        return Err(Error::unavailable("cache.tracking.topology"));
    }
    primaries.sort();
    primaries.dedup();
    let fingerprint = primaries
        .iter()
        .map(|(h, p, slots, _)| format!("{h}:{p}={slots}"))
        .collect::<Vec<_>>()
        .join(";");
    Ok(Topology {
        primaries: primaries
            .into_iter()
            .map(|(h, p, _, announced)| {
                TrackingTarget::new(&h, p, auth.clone()).announced_as(announced)
            })
            .collect(),
        fingerprint,
    })
}

/// `SENTINEL GET-MASTER-ADDR-BY-NAME` → the primary. A null reply (unknown service) is
/// `Unavailable`.
pub fn parse_sentinel_primary(reply: &OwnedFrame, auth: &NodeAccess) -> Result<Topology> {
    let addr = match reply {
        OwnedFrame::Null => return Err(Error::unavailable("cache.tracking.topology")),
        other => items(other).ok_or_else(|| bad("SENTINEL GET-MASTER-ADDR-BY-NAME"))?,
    };
    let (Some(host), Some(port)) = (
        addr.first().and_then(text),
        addr.get(1)
            .and_then(int)
            .and_then(|p| u16::try_from(p).ok()),
    ) else {
        return Err(bad("SENTINEL GET-MASTER-ADDR-BY-NAME"));
    };
    Ok(Topology {
        fingerprint: format!("{host}:{port}"),
        primaries: vec![TrackingTarget::new(&host, port, auth.clone())],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    impl TrackingSource {
        /// The source for `url`, reached in clear.
        fn plain(url: &RedisUrl) -> Result<Self> {
            Self::with_access(url, None, None)
        }
    }

    fn blob(s: &str) -> OwnedFrame {
        OwnedFrame::BlobString {
            data: s.as_bytes().to_vec(),
            attributes: None,
        }
    }
    fn num(n: i64) -> OwnedFrame {
        OwnedFrame::Number {
            data: n,
            attributes: None,
        }
    }
    fn arr(v: Vec<OwnedFrame>) -> OwnedFrame {
        OwnedFrame::Array {
            data: v,
            attributes: None,
        }
    }

    #[test]
    fn a_node_announcing_a_host_name_is_verified_as_it() {
        let reply = blob(
            "a1 10.0.0.1:7000@17000,redis-a.internal myself,master - 0 0 1 connected 0-8000\n\
             b2 10.0.0.2:7001@17001 master - 0 0 2 connected 8001-16383",
        );
        let t = parse_cluster_nodes(&reply, "10.0.0.9", &NodeAccess::default()).unwrap();
        let named: Vec<(String, Option<&str>)> = t
            .primaries
            .iter()
            .map(|p| (p.addr(), p.announced_name()))
            .collect();
        assert_eq!(
            named,
            [
                ("10.0.0.1:7000".to_string(), Some("redis-a.internal")),
                ("10.0.0.2:7001".to_string(), None)
            ]
        );
    }

    #[test]
    fn cluster_nodes_give_every_live_primary_and_a_fingerprint_of_its_slots() {
        let nodes = |lines: &[&str]| blob(&lines.join("\n"));
        let base = [
            "a1 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460 [5460->-b2]",
            "b2 127.0.0.1:7001@17001 master - 0 0 2 connected 5461-10922",
            "c3 :7002@17002 master - 0 0 3 connected 10923-16383",
            "d4 127.0.0.1:7003@17003 master - 0 0 4 connected",
            "e5 127.0.0.1:7004@17004 slave a1 0 0 1 connected",
            "f6 127.0.0.1:7005@17005 master,fail - 0 0 5 disconnected",
        ];
        let auth = NodeAccess::default();
        let t = parse_cluster_nodes(&nodes(&base), "10.0.0.9", &auth).unwrap();
        let addrs: Vec<String> = t.primaries.iter().map(|p| p.addr()).collect();
        // Every live primary, the empty one included; no replica, no failed node.
        assert_eq!(
            addrs,
            [
                "10.0.0.9:7002",
                "127.0.0.1:7000",
                "127.0.0.1:7001",
                "127.0.0.1:7003"
            ]
        );
        // Line order and migration marks do not matter; a moved slot does.
        let mut reordered = base;
        reordered.swap(0, 2);
        reordered[2] = "a1 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460";
        assert_eq!(
            parse_cluster_nodes(&nodes(&reordered), "10.0.0.9", &auth)
                .unwrap()
                .fingerprint,
            t.fingerprint
        );
        let mut moved = base;
        moved[0] = "a1 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5459";
        moved[1] = "b2 127.0.0.1:7001@17001 master - 0 0 2 connected 5460-10922";
        assert_ne!(
            parse_cluster_nodes(&nodes(&moved), "10.0.0.9", &auth)
                .unwrap()
                .fingerprint,
            t.fingerprint
        );
        assert!(parse_cluster_nodes(&blob(""), "h", &auth).is_err());
        assert!(parse_cluster_nodes(&blob("x y"), "h", &auth).is_err());
        assert!(parse_cluster_nodes(&num(1), "h", &auth).is_err());
    }

    #[test]
    fn sentinel_replies_name_the_primary() {
        let auth = NodeAccess::default();
        let t = parse_sentinel_primary(&arr(vec![blob("127.0.0.1"), blob("7003")]), &auth).unwrap();
        assert_eq!(t.fingerprint, "127.0.0.1:7003");
        assert_eq!(t.primaries[0].addr(), "127.0.0.1:7003");
        assert!(parse_sentinel_primary(&OwnedFrame::Null, &auth).is_err());
        assert!(parse_sentinel_primary(&arr(vec![blob("h")]), &auth).is_err());
    }

    #[test]
    fn sources_follow_the_url_scheme_and_hide_passwords() {
        let s = TrackingSource::plain(&RedisUrl::new(
            "redis-cluster://u:hunter2@127.0.0.1:7000?node=127.0.0.1:7001",
        ))
        .unwrap();
        assert!(matches!(&s, TrackingSource::Cluster { seeds, .. } if seeds.len() == 2));
        assert!(s.is_dynamic());
        assert!(!format!("{s:?}").contains("hunter2"));
        let s = TrackingSource::plain(&RedisUrl::new(
            "redis-sentinel://127.0.0.1:26379?sentinelServiceName=svc",
        ))
        .unwrap();
        assert!(matches!(&s, TrackingSource::Sentinel { service, .. } if service == "svc"));
        let s = TrackingSource::plain(&RedisUrl::new("redis://127.0.0.1:7000")).unwrap();
        assert!(!s.is_dynamic());
    }
}
