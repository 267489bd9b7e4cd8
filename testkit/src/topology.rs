//! Multi-server topologies on loopback: a [`TestCluster`] of primaries (Redis Cluster or Valkey
//! Cluster, slots assigned by hand with `CLUSTER ADDSLOTSRANGE`, no `redis-cli` needed) and a
//! [`TestSentinels`] group (a primary, a replica and three sentinels).
//!
//! Both are built from [`TestServer`]s, so every node has its own directory and log, and is
//! killed when dropped. Set-up waits are bounded and panic with what they were waiting for.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use crate::binaries::ServerBinary;
use crate::resp::Resp;
use crate::server::{reserve_port, TestServer};
use crate::tls::{tls_server_args, TestPki};

/// Hash slots in a Redis Cluster.
pub const SLOTS: u16 = 16384;

/// The Sentinel service name of a [`TestSentinels`] group.
pub const SERVICE: &str = "forze-primary";

const SETUP_TIMEOUT: Duration = Duration::from_secs(20);

fn poll<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "forze-redis-testkit: timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn text(r: &Resp) -> String {
    r.as_str().unwrap_or_default()
}

/// An `INFO`-style field (`name:value` lines).
fn info_field(info: &str, name: &str) -> Option<String> {
    info.lines()
        .find_map(|l| l.trim().strip_prefix(&format!("{name}:")))
        .map(|v| v.trim().to_string())
}

/// The CRC16 hash slot of `key` (hash tags honoured), as `CLUSTER KEYSLOT` computes it.
pub fn key_slot(key: &[u8]) -> u16 {
    let tagged = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            let close = rest.iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(key);
    crc16(tagged) % SLOTS
}

fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in data {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// A port whose cluster bus port (port + 10000) is free too.
fn reserve_cluster_port() -> u16 {
    for _ in 0..64 {
        let p = reserve_port();
        if p < 55_000 && TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok() {
            return p;
        }
    }
    panic!("forze-redis-testkit: no port with a free cluster bus port");
}

/// A Redis/Valkey Cluster of primaries on loopback, every slot assigned and the cluster `ok`.
pub struct TestCluster {
    nodes: Vec<TestServer>,
    ids: Vec<String>,
    /// The TLS port of each node (empty unless started with [`TestCluster::start_tls`]).
    tls_ports: Vec<u16>,
    /// The host name clients are told to use, if the nodes announce one.
    announced: Option<&'static str>,
}

impl std::fmt::Debug for TestCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCluster")
            .field(
                "ports",
                &self.nodes.iter().map(|n| n.port()).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl TestCluster {
    /// Start `primaries` nodes (at least 1), split the slots evenly between them, join them
    /// and wait until every node reports `cluster_state:ok` and knows every other node.
    ///
    /// # Panics
    ///
    /// When a node cannot start or the cluster does not form within 20 s.
    pub fn start(bin: &ServerBinary, primaries: usize) -> TestCluster {
        Self::start_with_spares(bin, primaries, 0)
    }

    /// [`TestCluster::start`] plus `spares` primaries that hold no slot (nodes added to grow
    /// the cluster, before any slot is migrated to them). They come last in [`Self::nodes`].
    pub fn start_with_spares(bin: &ServerBinary, primaries: usize, spares: usize) -> TestCluster {
        Self::start_nodes(bin, primaries, spares, None, None)
    }

    /// [`TestCluster::start`] with TLS everywhere (`--tls-cluster yes`): every node listens
    /// with TLS on a port of its own ([`TestCluster::tls_url`]) beside its plain admin port,
    /// presents a certificate for `127.0.0.1` signed by `pki`, and the cluster bus runs over
    /// TLS too. Client certificates are not required.
    ///
    /// # Panics
    ///
    /// As [`TestCluster::start`], and when `bin` has no TLS support.
    pub fn start_tls(bin: &ServerBinary, primaries: usize, pki: &TestPki) -> TestCluster {
        Self::start_nodes(bin, primaries, 0, Some(pki), None)
    }

    /// [`TestCluster::start_tls`] where every node announces the host name `localhost`
    /// (`cluster-announce-hostname`, with `cluster-preferred-endpoint-type hostname`) and its
    /// certificate is made for that name only, not for its address: a client must verify each
    /// node as the name it announces. [`TestCluster::tls_url`] then names the seeds by it.
    ///
    /// # Panics
    ///
    /// As [`TestCluster::start_tls`], and when `bin` predates host name announcement (7.0).
    pub fn start_tls_announcing_hostnames(
        bin: &ServerBinary,
        primaries: usize,
        pki: &TestPki,
    ) -> TestCluster {
        Self::start_nodes(bin, primaries, 0, Some(pki), Some("localhost"))
    }

    fn start_nodes(
        bin: &ServerBinary,
        primaries: usize,
        spares: usize,
        tls: Option<&TestPki>,
        announced: Option<&'static str>,
    ) -> TestCluster {
        assert!(primaries >= 1, "a cluster needs a primary");
        let cert = tls.map(|pki| match announced {
            Some(name) => pki.issue(&[name]),
            None => pki.issue(&["localhost", "127.0.0.1"]),
        });
        let mut tls_ports = Vec::new();
        let nodes: Vec<TestServer> = (0..primaries + spares)
            .map(|_| {
                // The bus port (port + 10000) was free when reserved, but another process may
                // take it before the node binds it: then try a fresh pair.
                let mut last = String::new();
                for _ in 0..5 {
                    let mut args: Vec<String> = [
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        "--cluster-node-timeout",
                        "3000",
                    ]
                    .iter()
                    .map(|s| s.to_string())
                    .collect();
                    let port = reserve_cluster_port();
                    let tls_port = reserve_port();
                    if let (Some(pki), Some(cert)) = (tls, &cert) {
                        args.extend(tls_server_args(tls_port, cert, pki.ca_file(), false));
                        // With TLS on the bus, the bus port would follow the TLS port: keep it
                        // at the plain port + 10000, which was checked free (and which
                        // `CLUSTER MEET <plain port>` expects).
                        args.extend(
                            ["--tls-cluster", "yes", "--cluster-port"]
                                .iter()
                                .map(|s| s.to_string()),
                        );
                        args.push((port + 10_000).to_string());
                    }
                    if let Some(name) = announced {
                        args.extend(
                            [
                                "--cluster-announce-hostname",
                                name,
                                "--cluster-preferred-endpoint-type",
                                "hostname",
                            ]
                            .iter()
                            .map(|s| s.to_string()),
                        );
                    }
                    let args: Vec<&str> = args.iter().map(String::as_str).collect();
                    match TestServer::try_start_on_with(bin, port, None, &args) {
                        Ok(node) => {
                            if tls.is_some() {
                                tls_ports.push(tls_port);
                            }
                            return node;
                        }
                        Err(e) => last = e,
                    }
                }
                panic!("forze-redis-testkit: no cluster node could start: {last}");
            })
            .collect();
        let ids: Vec<String> = nodes
            .iter()
            .map(|n| text(&n.cmd(&["CLUSTER", "MYID"]).expect("CLUSTER MYID")))
            .collect();
        let per = SLOTS as usize / primaries;
        for (i, n) in nodes.iter().enumerate().take(primaries) {
            let start = i * per;
            let end = if i + 1 == primaries {
                SLOTS as usize - 1
            } else {
                (i + 1) * per - 1
            };
            n.cmd(&[
                "CLUSTER",
                "ADDSLOTSRANGE",
                &start.to_string(),
                &end.to_string(),
            ])
            .expect("CLUSTER ADDSLOTSRANGE");
        }
        for n in &nodes[1..] {
            nodes[0]
                .cmd(&["CLUSTER", "MEET", "127.0.0.1", &n.port().to_string()])
                .expect("CLUSTER MEET");
        }
        let cluster = TestCluster {
            nodes,
            ids,
            tls_ports,
            announced,
        };
        cluster.wait_consistent();
        cluster
    }

    /// `rediss-cluster://` URL naming every node's TLS port as a seed (clusters from
    /// [`TestCluster::start_tls`] only).
    ///
    /// # Panics
    ///
    /// When the cluster has no TLS ports.
    pub fn tls_url(&self) -> String {
        assert!(!self.tls_ports.is_empty(), "not a TLS cluster");
        let host = self.announced.unwrap_or("127.0.0.1");
        let mut url = format!("rediss-cluster://{host}:{}", self.tls_ports[0]);
        for (i, p) in self.tls_ports.iter().enumerate().skip(1) {
            url.push(if i == 1 { '?' } else { '&' });
            url.push_str(&format!("node={host}:{p}"));
        }
        url
    }

    /// Wait until every node says `cluster_state:ok`, knows all nodes, and agrees on the owner
    /// of every slot.
    pub fn wait_consistent(&self) {
        poll("the cluster to agree", SETUP_TIMEOUT, || {
            let first = self.slot_owners_seen_by(0)?;
            for i in 0..self.nodes.len() {
                let info = text(&self.nodes[i].cmd(&["CLUSTER", "INFO"]).ok()?);
                if info_field(&info, "cluster_state").as_deref() != Some("ok")
                    || info_field(&info, "cluster_known_nodes")?
                        .parse::<usize>()
                        .ok()?
                        != self.nodes.len()
                {
                    return None;
                }
                if self.slot_owners_seen_by(i)? != first {
                    return None;
                }
            }
            Some(())
        })
    }

    /// (start, end, port) for every slot range, as node `i` sees it; `None` when not all
    /// slots are covered.
    fn slot_owners_seen_by(&self, i: usize) -> Option<Vec<(i64, i64, i64)>> {
        let slots = self.nodes[i].cmd(&["CLUSTER", "SLOTS"]).ok()?;
        let mut ranges: Vec<(i64, i64, i64)> = slots
            .as_array()?
            .iter()
            .filter_map(|r| {
                let r = r.as_array()?;
                let primary = r.get(2)?.as_array()?;
                Some((r[0].as_int()?, r[1].as_int()?, primary.get(1)?.as_int()?))
            })
            .collect();
        ranges.sort();
        let covered: i64 = ranges.iter().map(|(s, e, _)| e - s + 1).sum();
        (covered == i64::from(SLOTS)).then_some(ranges)
    }

    /// The nodes.
    pub fn nodes(&self) -> &[TestServer] {
        &self.nodes
    }

    /// Kill node `i` (`SIGKILL`); its slots stay assigned to it, so the cluster fails once the
    /// others notice (`cluster-node-timeout`, 3 s here).
    pub fn stop_node(&mut self, i: usize) {
        self.nodes[i].stop();
    }

    /// Start node `i` again on its port with its `nodes.conf` (same slots, same peers) and wait
    /// until the cluster agrees again.
    pub fn restart_node(&mut self, i: usize) {
        self.nodes[i].restart();
        self.wait_consistent();
    }

    /// `redis-cluster://` URL naming every node as a seed.
    pub fn url(&self) -> String {
        let mut url = format!("redis-cluster://127.0.0.1:{}", self.nodes[0].port());
        for (i, n) in self.nodes.iter().enumerate().skip(1) {
            url.push(if i == 1 { '?' } else { '&' });
            url.push_str(&format!("node=127.0.0.1:{}", n.port()));
        }
        url
    }

    /// The index of the node that owns `slot` now.
    pub fn owner_of_slot(&self, slot: u16) -> usize {
        let ranges = self.slot_owners_seen_by(0).expect("every slot covered");
        let (_, _, port) = ranges
            .iter()
            .find(|(s, e, _)| i64::from(slot) >= *s && i64::from(slot) <= *e)
            .expect("slot covered");
        self.nodes
            .iter()
            .position(|n| i64::from(n.port()) == *port)
            .expect("owner is one of ours")
    }

    /// The index of the node that owns `key`.
    pub fn owner_of(&self, key: &str) -> usize {
        self.owner_of_slot(key_slot(key.as_bytes()))
    }

    /// Run a command on the node that owns `key`.
    pub fn cmd_for_key(&self, key: &str, args: &[&str]) -> Result<Resp, String> {
        self.nodes[self.owner_of(key)].cmd(args)
    }

    /// Move `slot` with its keys to node `to`: [`TestCluster::begin_migration`],
    /// [`TestCluster::move_keys`], [`TestCluster::finish_migration`].
    pub fn migrate_slot(&self, slot: u16, to: usize) {
        let from = self.begin_migration(slot, to);
        self.move_keys(slot, from, to, usize::MAX);
        self.finish_migration(slot, from, to);
    }

    /// Mark `slot` importing on `to` and migrating on its owner (returned). From now on the
    /// owner answers `ASK` for keys of the slot it no longer holds.
    pub fn begin_migration(&self, slot: u16, to: usize) -> usize {
        let from = self.owner_of_slot(slot);
        assert_ne!(from, to, "slot {slot} is already on node {to}");
        let s = slot.to_string();
        self.nodes[to]
            .cmd(&["CLUSTER", "SETSLOT", &s, "IMPORTING", &self.ids[from]])
            .expect("SETSLOT IMPORTING");
        self.nodes[from]
            .cmd(&["CLUSTER", "SETSLOT", &s, "MIGRATING", &self.ids[to]])
            .expect("SETSLOT MIGRATING");
        from
    }

    /// `MIGRATE` up to `max` keys of `slot` from `from` to `to`; how many moved.
    pub fn move_keys(&self, slot: u16, from: usize, to: usize, max: usize) -> usize {
        let s = slot.to_string();
        let (src, dst) = (&self.nodes[from], &self.nodes[to]);
        let mut moved = 0;
        for _ in 0..10_000 {
            let batch = (max - moved).min(100);
            if batch == 0 {
                break;
            }
            let keys = src
                .cmd(&["CLUSTER", "GETKEYSINSLOT", &s, &batch.to_string()])
                .expect("GETKEYSINSLOT");
            let keys: Vec<String> = keys
                .as_array()
                .unwrap_or_default()
                .iter()
                .map(text)
                .collect();
            if keys.is_empty() {
                break;
            }
            let port = dst.port().to_string();
            let mut args = vec!["MIGRATE", "127.0.0.1", &port, "", "0", "5000", "KEYS"];
            args.extend(keys.iter().map(String::as_str));
            src.cmd(&args).expect("MIGRATE");
            moved += keys.len();
        }
        moved
    }

    /// Give `slot` to `to` on every node (the new owner first, then the old one, then the
    /// rest: the documented order) and wait until the cluster agrees.
    pub fn finish_migration(&self, slot: u16, from: usize, to: usize) {
        let s = slot.to_string();
        for i in std::iter::once(to)
            .chain(std::iter::once(from))
            .chain((0..self.nodes.len()).filter(|&i| i != to && i != from))
        {
            self.nodes[i]
                .cmd(&["CLUSTER", "SETSLOT", &s, "NODE", &self.ids[to]])
                .expect("SETSLOT NODE");
        }
        poll("the slot's new owner to be agreed", SETUP_TIMEOUT, || {
            (0..self.nodes.len())
                .all(|i| {
                    self.slot_owners_seen_by(i).is_some_and(|r| {
                        r.iter().any(|(st, e, p)| {
                            i64::from(slot) >= *st
                                && i64::from(slot) <= *e
                                && *p == i64::from(self.nodes[to].port())
                        })
                    })
                })
                .then_some(())
        });
    }
}

/// A primary, one replica and three sentinels (quorum 2) watching them as [`SERVICE`].
pub struct TestSentinels {
    data: Vec<TestServer>,
    sentinels: Vec<TestServer>,
    /// The sentinels' TLS ports (empty unless started with [`TestSentinels::start_tls`]).
    sentinel_tls_ports: Vec<u16>,
    /// The data servers' TLS ports, in the order of `data` (empty without TLS).
    data_tls_ports: Vec<u16>,
}

impl std::fmt::Debug for TestSentinels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestSentinels")
            .field(
                "data",
                &self.data.iter().map(|n| n.port()).collect::<Vec<_>>(),
            )
            .field(
                "sentinels",
                &self.sentinels.iter().map(|n| n.port()).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl TestSentinels {
    /// Start the group and wait until every sentinel knows the replica and the other two
    /// sentinels (so a failover can be agreed at once).
    ///
    /// # Panics
    ///
    /// When a process cannot start or the group does not settle within 20 s.
    pub fn start(bin: &ServerBinary) -> TestSentinels {
        Self::start_inner(bin, None)
    }

    /// [`TestSentinels::start`] with TLS everywhere: the data servers and the sentinels listen
    /// with TLS on ports of their own beside their plain admin ports, replication and the
    /// sentinels' links run over TLS (`tls-replication yes`), and the sentinels announce the
    /// primary's TLS port. Certificates for `127.0.0.1` signed by `pki`; client certificates
    /// are not required. Clients use [`TestSentinels::tls_url`].
    ///
    /// # Panics
    ///
    /// As [`TestSentinels::start`], and when `bin` has no TLS support.
    pub fn start_tls(bin: &ServerBinary, pki: &TestPki) -> TestSentinels {
        Self::start_inner(bin, Some(pki))
    }

    fn start_inner(bin: &ServerBinary, tls: Option<&TestPki>) -> TestSentinels {
        let cert = tls.map(|pki| pki.issue(&["localhost", "127.0.0.1"]));
        // TLS arguments for one more process, and the TLS port it listens on.
        let tls_args = |extra: &[&str]| -> (Vec<String>, Option<u16>) {
            match (tls, &cert) {
                (Some(pki), Some(cert)) => {
                    let port = reserve_port();
                    let mut args = tls_server_args(port, cert, pki.ca_file(), false);
                    args.extend(["--tls-replication".to_string(), "yes".to_string()]);
                    args.extend(extra.iter().map(|s| s.to_string()));
                    (args, Some(port))
                }
                _ => (extra.iter().map(|s| s.to_string()).collect(), None),
            }
        };
        let start = |config: Option<&str>, extra: &[&str]| -> (TestServer, Option<u16>) {
            let (args, port) = tls_args(extra);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            (TestServer::start_with(bin, config, &args), port)
        };
        let (primary, primary_tls) = start(None, &[]);
        // Replication and monitoring go through the TLS port when there is one.
        let primary_port = primary_tls.unwrap_or(primary.port()).to_string();
        let (replica, replica_tls) = start(None, &["--replicaof", "127.0.0.1", &primary_port]);
        poll("the replica's link to the primary", SETUP_TIMEOUT, || {
            let info = text(&replica.cmd(&["INFO", "replication"]).ok()?);
            (info_field(&info, "master_link_status").as_deref() == Some("up")).then_some(())
        });
        let conf = format!(
            "sentinel monitor {SERVICE} 127.0.0.1 {primary_port} 2\n\
             sentinel down-after-milliseconds {SERVICE} 1000\n\
             sentinel failover-timeout {SERVICE} 5000\n\
             sentinel parallel-syncs {SERVICE} 1\n"
        );
        let mut sentinel_tls_ports = Vec::new();
        let sentinels: Vec<TestServer> = (0..3)
            .map(|_| {
                let (s, port) = start(Some(&conf), &["--sentinel"]);
                sentinel_tls_ports.extend(port);
                s
            })
            .collect();
        let group = TestSentinels {
            data: vec![primary, replica],
            sentinels,
            sentinel_tls_ports,
            data_tls_ports: primary_tls.into_iter().chain(replica_tls).collect(),
        };
        poll(
            "sentinels to know each other and the replica",
            SETUP_TIMEOUT,
            || {
                group
                    .sentinels
                    .iter()
                    .all(|s| {
                        let known = |what: &str| {
                            s.cmd(&["SENTINEL", what, SERVICE])
                                .ok()
                                .and_then(|r| r.as_array().map(<[Resp]>::len))
                                .unwrap_or(0)
                        };
                        known("REPLICAS") >= 1 && known("SENTINELS") >= 2
                    })
                    .then_some(())
            },
        );
        group
    }

    /// `redis-sentinel://` URL naming the three sentinels and the service.
    pub fn url(&self) -> String {
        let mut url = format!("redis-sentinel://127.0.0.1:{}", self.sentinels[0].port());
        for s in &self.sentinels[1..] {
            url.push_str(if url.contains('?') { "&" } else { "?" });
            url.push_str(&format!("node=127.0.0.1:{}", s.port()));
        }
        url.push_str(&format!("&sentinelServiceName={SERVICE}"));
        url
    }

    /// `rediss-sentinel://` URL naming the three sentinels' TLS ports and the service
    /// (groups from [`TestSentinels::start_tls`] only).
    ///
    /// # Panics
    ///
    /// When the group has no TLS ports.
    pub fn tls_url(&self) -> String {
        assert!(!self.sentinel_tls_ports.is_empty(), "not a TLS group");
        let mut url = format!("rediss-sentinel://127.0.0.1:{}", self.sentinel_tls_ports[0]);
        for (i, p) in self.sentinel_tls_ports.iter().enumerate().skip(1) {
            url.push(if i == 1 { '?' } else { '&' });
            url.push_str(&format!("node=127.0.0.1:{p}"));
        }
        url.push_str(&format!("&sentinelServiceName={SERVICE}"));
        url
    }

    /// The port of the primary as the sentinels announce it.
    pub fn primary_port(&self) -> u16 {
        let r = self.sentinels[0]
            .cmd(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE])
            .expect("GET-MASTER-ADDR-BY-NAME");
        let addr = r.as_array().expect("an address");
        text(&addr[1]).parse().expect("a port")
    }

    /// The data server (primary or replica) listening on `port`.
    pub fn data_server(&self, port: u16) -> &TestServer {
        let i = self
            .data
            .iter()
            .position(|s| s.port() == port)
            .or_else(|| self.data_tls_ports.iter().position(|&p| p == port))
            .expect("one of ours");
        &self.data[i]
    }

    /// The current primary.
    pub fn primary(&self) -> &TestServer {
        self.data_server(self.primary_port())
    }

    /// The data servers (the first started as primary).
    pub fn data_servers(&self) -> &[TestServer] {
        &self.data
    }

    /// The sentinels.
    pub fn sentinels(&self) -> &[TestServer] {
        &self.sentinels
    }

    /// Kill the primary (`SIGKILL`), then wait until the sentinels announce the replica as
    /// primary and it says `role:master`. Returns the new primary's port.
    ///
    /// # Panics
    ///
    /// When no failover completes within 20 s.
    pub fn kill_primary(&mut self) -> u16 {
        let (old, i) = self.primary_index();
        self.data[i].stop();
        self.await_new_primary(old)
    }

    /// Freeze the primary (`SIGSTOP`: its connections stay open, nothing is answered), then
    /// wait until the sentinels announce the replica as primary and it says `role:master`.
    /// Returns the new primary's port. The old primary stays frozen until the group is
    /// dropped (a frozen server is resumed before it is stopped).
    ///
    /// # Panics
    ///
    /// When no failover completes within 20 s.
    pub fn freeze_primary(&mut self) -> u16 {
        let (old, i) = self.primary_index();
        self.data[i].pause();
        self.await_new_primary(old)
    }

    /// The port of the primary the sentinels announce, and its index in the data servers.
    fn primary_index(&self) -> (u16, usize) {
        let port = self.primary_port();
        let i = self
            .data
            .iter()
            .position(|s| s.port() == port)
            .expect("one of ours");
        (port, i)
    }

    /// Wait until the sentinels name a primary other than `old` and it says `role:master`.
    fn await_new_primary(&self, old: u16) -> u16 {
        let new = poll("the sentinels to name a new primary", SETUP_TIMEOUT, || {
            let p = self.primary_port();
            (p != old).then_some(p)
        });
        poll("the new primary to say role:master", SETUP_TIMEOUT, || {
            let info = text(&self.data_server(new).cmd(&["INFO", "replication"]).ok()?);
            (info_field(&info, "role").as_deref() == Some("master")).then_some(())
        });
        new
    }

    /// `SENTINEL FAILOVER`, then wait until the sentinels announce the replica as primary and
    /// it says `role:master`. Returns the new primary's port.
    ///
    /// # Panics
    ///
    /// When the failover does not complete within 20 s.
    pub fn failover(&self) -> u16 {
        let old = self.primary_port();
        poll("SENTINEL FAILOVER to be accepted", SETUP_TIMEOUT, || {
            self.sentinels[0]
                .cmd(&["SENTINEL", "FAILOVER", SERVICE])
                .ok()
        });
        self.await_new_primary(old)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_slots_match_the_reference_values() {
        // Values from the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(key_slot(b"123456789"), 0x31C3 % SLOTS);
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        assert_eq!(key_slot(b"{}x"), key_slot(b"{}x"));
        assert_ne!(key_slot(b"{}x"), key_slot(b"x"));
    }
}
