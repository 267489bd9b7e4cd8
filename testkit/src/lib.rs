//! # forze-redis-testkit
//!
//! The one place where the tests, benches and examples of `forze-redis` get
//! real Redis / Valkey servers and network faults. Nothing here is meant for
//! production use.
//!
//! ## Orientation
//!
//! | Module | Concept |
//! |--------|---------|
//! | [`binaries`] | Finding `redis-server` / `valkey-server` executables ([`server_binaries`]). |
//! | [`server`] | [`TestServer`]: a private, throw-away server process on a loopback port, with an admin channel ([`TestServer::cmd`]). |
//! | [`resp`] | A tiny RESP2 encoder / parser ([`Resp`]) used by the admin channel. |
//! | [`monitor`] | [`Monitor`]: counts what a server executes, by command and by script, from its `MONITOR` feed. |
//! | [`proxy`] | [`FaultProxy`]: an in-process TCP proxy that can refuse, black-hole, cut, delay or lose replies. |
//! | [`tls`] | [`TestPki`] (a CA made at run time, certificates for servers and clients) and [`TlsServer`] (a server with a TLS port beside its plain admin port). |
//! | [`topology`] | [`TestCluster`] (primaries, slots assigned by hand, slot migration) and [`TestSentinels`] (primary, replica, three sentinels, failover). |
//! | [`signals`] | `SIGSTOP` / `SIGCONT` helpers for freezing processes. |
//! | [`wait`] | Bounded polling helpers ([`wait_until`], [`wait_until_async`]) to use instead of fixed sleeps. |
//!
//! ## Typical use
//!
//! ```no_run
//! use forze_redis_testkit::{server_binaries, FaultProxy, ProxyMode, TestServer};
//!
//! # async fn demo() {
//! for bin in server_binaries() {
//!     let server = TestServer::start(&bin);
//!     let proxy = FaultProxy::start(server.addr()).await;
//!     // point the client under test at `proxy.url()` ...
//!     proxy.set_mode(ProxyMode::Refuse);
//!     // ... and assert how it behaves while the "server" is down.
//! }
//! # }
//! ```
//!
//! All traffic stays on `127.0.0.1`; port 6379 is never used. Setup failures
//! panic with a descriptive message: tests never skip silently.

#![warn(missing_docs)]

pub mod binaries;
pub mod monitor;
pub mod proxy;
pub mod resp;
pub mod server;
pub mod signals;
pub mod tls;
pub mod topology;
pub mod wait;

pub use binaries::{find_server_binaries, server_binaries, ServerBinary, ServerKind};
pub use monitor::Monitor;
pub use proxy::{FaultProxy, ProxyMode};
pub use resp::Resp;
pub use server::{reserve_port, TestServer};
pub use signals::{sigcont, sigstop};
pub use tls::{supports_tls, CertFiles, TestPki, TlsServer};
pub use topology::{key_slot, TestCluster, TestSentinels};
pub use wait::{wait_until, wait_until_async};
