//! Private, throw-away Redis / Valkey server processes.
//!
//! [`TestServer::start`] launches one server process per call, bound to
//! `127.0.0.1` on a free ephemeral port (never 6379), with persistence
//! disabled and its working directory and log in a fresh temporary
//! directory. Each test gets its own server, so tests can flush, kill, pause
//! and restart servers without interfering with each other.
//!
//! Besides lifecycle control ([`stop`](TestServer::stop),
//! [`restart`](TestServer::restart) on the same port,
//! [`pause`](TestServer::pause) / [`resume`](TestServer::resume) with
//! `SIGSTOP` / `SIGCONT`), a server offers an *admin channel*,
//! [`TestServer::cmd`], that speaks raw RESP2 over a fresh `std` TCP
//! connection. Tests use it for setup and assertions (`FLUSHALL`,
//! `CLIENT KILL`, `INFO`, `DEBUG SLEEP`, `SCRIPT FLUSH`, ...) independently
//! of the client library under test.
//!
//! Dropping a [`TestServer`] kills the process and removes its directory.
//! Setup failures panic with the tail of the server log in the message.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::binaries::{ServerBinary, ServerKind};
use crate::resp::{encode_command, read_resp, Resp};
use crate::signals::send_signal;

/// How long a freshly spawned server may take to answer `PING`.
const READY_TIMEOUT: Duration = Duration::from_secs(5);
/// Interval between two readiness probes.
const READY_POLL: Duration = Duration::from_millis(20);
/// How many fresh ports [`TestServer::start`] tries before giving up.
const START_ATTEMPTS: usize = 5;
/// How long [`TestServer::restart`] / [`TestServer::start_on`] keep retrying a busy port.
const SAME_PORT_TIMEOUT: Duration = Duration::from_secs(5);
/// Connect timeout of the admin channel.
const CMD_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Read / write timeout of the admin channel.
const CMD_IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Lines of server log included in panic messages.
const LOG_TAIL_LINES: usize = 30;
/// The port the kit must never use.
const FORBIDDEN_PORT: u16 = 6379;

/// Reserves a free loopback port: binds `127.0.0.1:0`, reads the port the
/// kernel picked and releases it.
///
/// Useful for tests that want to know a server's address before the server
/// exists (see [`TestServer::start_on`]). Another process could grab the
/// port in between; [`TestServer::start_on`] retries for a few seconds.
///
/// # Panics
///
/// Panics if no loopback port can be bound.
pub fn reserve_port() -> u16 {
    for _ in 0..16 {
        let listener = TcpListener::bind("127.0.0.1:0")
            .unwrap_or_else(|e| panic!("forze-redis-testkit: cannot bind 127.0.0.1:0: {e}"));
        let port = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("forze-redis-testkit: local_addr of 127.0.0.1:0: {e}"))
            .port();
        if port != FORBIDDEN_PORT {
            return port;
        }
    }
    panic!("forze-redis-testkit: the kernel kept handing out port {FORBIDDEN_PORT}");
}

/// Why one attempt to bring a server up failed.
enum SpawnFailure {
    /// The process exited (or another process owns the port): try another
    /// port / try again later.
    PortProblem(String),
    /// Anything else (cannot spawn, never became ready): give up.
    Fatal(String),
}

/// A private server process on `127.0.0.1`, killed when dropped.
///
/// See the [module documentation](self) for an overview.
pub struct TestServer {
    binary: ServerBinary,
    port: u16,
    dir: PathBuf,
    child: Mutex<Option<Child>>,
    paused: AtomicBool,
    /// A configuration file written to the server's directory and passed first (Sentinel
    /// needs one it can rewrite), and extra command-line arguments; both kept for restarts.
    config_file: Option<String>,
    extra_args: Vec<String>,
}

impl std::fmt::Debug for TestServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestServer")
            .field("kind", &self.binary.kind)
            .field("version", &self.binary.version)
            .field("port", &self.port)
            .field("pid", &self.pid())
            .field("dir", &self.dir)
            .finish()
    }
}

impl TestServer {
    /// Starts a server from `bin` on a free loopback port and waits until it
    /// answers `PING`.
    ///
    /// Blocks for at most a few seconds (usually a few milliseconds), so it
    /// may also be called from async tests.
    ///
    /// # Panics
    ///
    /// Panics with the tail of the server log if the server cannot be
    /// started after 5 attempts on fresh ports.
    pub fn start(bin: &ServerBinary) -> TestServer {
        Self::start_with(bin, None, &[])
    }

    /// Like [`TestServer::start`], with a configuration file (written to the server's own
    /// directory, passed as the first argument; `port` and `bind` lines are added) and extra
    /// arguments such as `["--cluster-enabled", "yes"]` or `["--sentinel"]`.
    ///
    /// # Panics
    ///
    /// As [`TestServer::start`].
    pub fn start_with(bin: &ServerBinary, config_file: Option<&str>, args: &[&str]) -> TestServer {
        let mut last_error = String::new();
        for _ in 0..START_ATTEMPTS {
            let port = reserve_port();
            let mut server = TestServer::unstarted(bin, port);
            server.config_file = config_file.map(str::to_string);
            server.extra_args = args.iter().map(|a| a.to_string()).collect();
            match server.spawn_once() {
                Ok(()) => return server,
                Err(SpawnFailure::PortProblem(msg)) => last_error = msg,
                Err(SpawnFailure::Fatal(msg)) => panic!("{msg}"),
            }
        }
        panic!(
            "forze-redis-testkit: could not start {} after {START_ATTEMPTS} attempts on fresh ports; \
             last failure: {last_error}",
            bin
        );
    }

    /// Starts a server from `bin` on the given `port` (typically obtained
    /// from [`reserve_port`]), retrying for up to 5 s while the port is busy.
    ///
    /// # Panics
    ///
    /// Panics if `port` is 6379, or with the tail of the server log if the
    /// server cannot be started on that port.
    pub fn start_on(bin: &ServerBinary, port: u16) -> TestServer {
        assert_ne!(
            port, FORBIDDEN_PORT,
            "forze-redis-testkit: port {FORBIDDEN_PORT} is reserved for real servers; never used by tests"
        );
        Self::start_on_with(bin, port, None, &[])
    }

    /// One attempt to start a server on `port` with a configuration file and extra
    /// arguments; `Err` (with the reason) when the port, or a port the server derives from
    /// it such as the cluster bus port, is taken, so the caller can try another.
    ///
    /// # Panics
    ///
    /// When the server cannot be spawned at all or never answers.
    pub fn try_start_on_with(
        bin: &ServerBinary,
        port: u16,
        config_file: Option<&str>,
        args: &[&str],
    ) -> Result<TestServer, String> {
        assert_ne!(
            port, FORBIDDEN_PORT,
            "forze-redis-testkit: port {FORBIDDEN_PORT} is reserved for real servers; never used by tests"
        );
        let mut server = TestServer::unstarted(bin, port);
        server.config_file = config_file.map(str::to_string);
        server.extra_args = args.iter().map(|a| a.to_string()).collect();
        match server.spawn_once() {
            Ok(()) => Ok(server),
            Err(SpawnFailure::PortProblem(msg)) => Err(msg),
            Err(SpawnFailure::Fatal(msg)) => panic!("{msg}"),
        }
    }

    /// [`TestServer::start_on`] with a configuration file and extra arguments, as
    /// [`TestServer::start_with`].
    ///
    /// # Panics
    ///
    /// As [`TestServer::start_on`].
    pub fn start_on_with(
        bin: &ServerBinary,
        port: u16,
        config_file: Option<&str>,
        args: &[&str],
    ) -> TestServer {
        assert_ne!(
            port, FORBIDDEN_PORT,
            "forze-redis-testkit: port {FORBIDDEN_PORT} is reserved for real servers; never used by tests"
        );
        let mut server = TestServer::unstarted(bin, port);
        server.config_file = config_file.map(str::to_string);
        server.extra_args = args.iter().map(|a| a.to_string()).collect();
        server.spawn_on_same_port();
        server
    }

    /// The TCP port the server listens on (stable across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `"127.0.0.1:<port>"`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The address as a [`SocketAddr`].
    pub fn socket_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `"redis://127.0.0.1:<port>"`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Which server kind this is.
    pub fn kind(&self) -> ServerKind {
        self.binary.kind
    }

    /// The binary this server was started from.
    pub fn binary(&self) -> &ServerBinary {
        &self.binary
    }

    /// The process id, or `None` when the server is not running.
    pub fn pid(&self) -> Option<u32> {
        let mut child = self.lock_child();
        let c = child.as_mut()?;
        matches!(c.try_wait(), Ok(None)).then(|| c.id())
    }

    /// `true` while the server process is alive (a paused server is alive).
    pub fn is_running(&self) -> bool {
        self.pid().is_some()
    }

    /// Kills the server with `SIGKILL` and reaps it. All data is lost (there
    /// is no persistence). Does nothing if it is not running.
    pub fn stop(&mut self) {
        self.kill_child();
    }

    /// Kills the server if it is running, then starts a new one on the
    /// **same port**. The new server is empty and its script cache is empty.
    ///
    /// # Panics
    ///
    /// Panics with the tail of the server log if the port stays busy for 5 s
    /// or the server does not become ready.
    pub fn restart(&mut self) {
        self.kill_child();
        self.append_log_marker("restart");
        self.spawn_on_same_port();
    }

    /// Freezes the server with `SIGSTOP`: connections stay open, nothing is
    /// answered. Undo with [`resume`](Self::resume); a paused server is
    /// resumed automatically before it is stopped or dropped.
    ///
    /// # Panics
    ///
    /// Panics if the server is not running.
    pub fn pause(&self) {
        let pid = self.expect_pid("pause");
        if let Err(e) = send_signal(pid, libc::SIGSTOP) {
            panic!(
                "forze-redis-testkit: SIGSTOP to {} (pid {pid}) failed: {e}",
                self.describe()
            );
        }
        self.paused.store(true, Ordering::SeqCst);
    }

    /// Resumes a server frozen by [`pause`](Self::pause) with `SIGCONT`.
    ///
    /// # Panics
    ///
    /// Panics if the server is not running.
    pub fn resume(&self) {
        let pid = self.expect_pid("resume");
        if let Err(e) = send_signal(pid, libc::SIGCONT) {
            panic!(
                "forze-redis-testkit: SIGCONT to {} (pid {pid}) failed: {e}",
                self.describe()
            );
        }
        self.paused.store(false, Ordering::SeqCst);
    }

    /// `true` between [`pause`](Self::pause) and [`resume`](Self::resume).
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    /// Admin channel: sends one command over a fresh TCP connection and
    /// returns the parsed reply.
    ///
    /// The connection uses a 2 s connect timeout and 5 s read/write
    /// timeouts. `Err` carries a description of an I/O or protocol failure,
    /// **or of an error reply**: a top-level `-ERR ...` reply is returned as
    /// `Err("<addr>: server replied with error: ERR ...")` so that
    /// `server.cmd(..).expect(..)` fails on error replies too. Error replies
    /// nested inside arrays (for example in `EXEC` results) stay
    /// [`Resp::Error`] values.
    ///
    /// ```no_run
    /// # use forze_redis_testkit::{server_binaries, TestServer};
    /// let server = TestServer::start(&server_binaries()[0]);
    /// server.cmd(&["SET", "k", "v"]).expect("SET");
    /// let v = server.cmd(&["GET", "k"]).expect("GET");
    /// assert_eq!(v.as_str().as_deref(), Some("v"));
    /// ```
    pub fn cmd(&self, args: &[&str]) -> Result<Resp, String> {
        let addr = self.socket_addr();
        let context = |what: &str, e: &dyn std::fmt::Display| {
            format!("{addr} ({}): {what} for {:?}: {e}", self.binary.kind, args)
        };
        let stream = TcpStream::connect_timeout(&addr, CMD_CONNECT_TIMEOUT)
            .map_err(|e| context("connect", &e))?;
        stream
            .set_read_timeout(Some(CMD_IO_TIMEOUT))
            .and_then(|()| stream.set_write_timeout(Some(CMD_IO_TIMEOUT)))
            .and_then(|()| stream.set_nodelay(true))
            .map_err(|e| context("socket setup", &e))?;
        (&stream)
            .write_all(&encode_command(args))
            .map_err(|e| context("write", &e))?;
        let mut reader = BufReader::new(&stream);
        match read_resp(&mut reader).map_err(|e| context("read", &e))? {
            Resp::Error(msg) => Err(format!("{addr}: server replied with error: {msg}")),
            reply => Ok(reply),
        }
    }

    /// Admin channel for several commands on **one** connection, sent in order (for
    /// commands that modify the next one, such as `ASKING`). Returns every reply; error
    /// replies are [`Resp::Error`] values, not `Err`.
    pub fn cmd_pipeline(&self, commands: &[&[&str]]) -> Result<Vec<Resp>, String> {
        let addr = self.socket_addr();
        let stream = TcpStream::connect_timeout(&addr, CMD_CONNECT_TIMEOUT)
            .map_err(|e| format!("{addr}: connect: {e}"))?;
        stream
            .set_read_timeout(Some(CMD_IO_TIMEOUT))
            .and_then(|()| stream.set_write_timeout(Some(CMD_IO_TIMEOUT)))
            .map_err(|e| format!("{addr}: socket setup: {e}"))?;
        let mut out = Vec::new();
        for args in commands {
            out.extend_from_slice(&encode_command(args));
        }
        (&stream)
            .write_all(&out)
            .map_err(|e| format!("{addr}: write: {e}"))?;
        let mut reader = BufReader::new(&stream);
        commands
            .iter()
            .map(|_| read_resp(&mut reader).map_err(|e| format!("{addr}: read: {e}")))
            .collect()
    }

    /// Runs `CLIENT LIST` and parses each line into a `key=value` map
    /// (`id`, `addr`, `name`, `cmd`, `flags`, ...).
    ///
    /// # Panics
    ///
    /// Panics if the command fails.
    pub fn client_list(&self) -> Vec<HashMap<String, String>> {
        let reply = self
            .cmd(&["CLIENT", "LIST"])
            .unwrap_or_else(|e| panic!("forze-redis-testkit: CLIENT LIST failed: {e}"));
        let text = reply.as_str().unwrap_or_else(|| {
            panic!("forze-redis-testkit: unexpected CLIENT LIST reply {reply:?}")
        });
        parse_client_list(&text)
    }

    /// How many times `command` has been called since start (or the last
    /// `CONFIG RESETSTAT`), from `INFO commandstats`. Returns 0 when the
    /// command has not been called. Case-insensitive; subcommands are
    /// written `client|list` as in the server's output.
    ///
    /// # Panics
    ///
    /// Panics if `INFO commandstats` fails.
    pub fn command_calls(&self, command: &str) -> u64 {
        let reply = self
            .cmd(&["INFO", "commandstats"])
            .unwrap_or_else(|e| panic!("forze-redis-testkit: INFO commandstats failed: {e}"));
        let text = reply.as_str().unwrap_or_else(|| {
            panic!("forze-redis-testkit: unexpected INFO commandstats reply {reply:?}")
        });
        parse_command_calls(&text, command)
    }

    /// The last `lines` lines of the server log (stdout and stderr of every
    /// process started for this server, restarts included).
    pub fn log_tail(&self, lines: usize) -> String {
        tail_of(&self.log_path(), lines)
    }

    /// The private working directory of this server (removed on drop).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    // ----- internals -------------------------------------------------------

    /// Creates the bookkeeping (and temp dir) without spawning anything.
    fn unstarted(bin: &ServerBinary, port: u16) -> TestServer {
        TestServer {
            binary: bin.clone(),
            port,
            dir: make_temp_dir(),
            child: Mutex::new(None),
            paused: AtomicBool::new(false),
            config_file: None,
            extra_args: Vec::new(),
        }
    }

    fn lock_child(&self) -> MutexGuard<'_, Option<Child>> {
        // A poisoned lock only means another thread panicked mid-operation;
        // the `Option<Child>` inside is still meaningful.
        self.child.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn describe(&self) -> String {
        format!("{} on {}", self.binary, self.addr())
    }

    fn expect_pid(&self, what: &str) -> u32 {
        self.pid().unwrap_or_else(|| {
            panic!(
                "forze-redis-testkit: cannot {what} {}: not running",
                self.describe()
            )
        })
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("server.log")
    }

    fn append_log_marker(&self, what: &str) {
        if let Ok(mut f) = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
        {
            let _ = writeln!(f, "--- forze-redis-testkit: {what} ---");
        }
    }

    /// SIGCONT (if paused), SIGKILL and reap. Never panics.
    fn kill_child(&self) {
        let mut guard = self.lock_child();
        if let Some(mut child) = guard.take() {
            if self.paused.swap(false, Ordering::SeqCst) {
                let _ = send_signal(child.id(), libc::SIGCONT);
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        self.paused.store(false, Ordering::SeqCst);
    }

    /// Spawns on `self.port`, retrying for [`SAME_PORT_TIMEOUT`] while the
    /// port is busy. Panics on failure.
    fn spawn_on_same_port(&mut self) {
        let deadline = Instant::now() + SAME_PORT_TIMEOUT;
        let mut attempts = 0usize;
        loop {
            attempts += 1;
            match self.spawn_once() {
                Ok(()) => return,
                Err(SpawnFailure::Fatal(msg)) => panic!("{msg}"),
                Err(SpawnFailure::PortProblem(msg)) => {
                    // Bounded both by time and (generously) by count.
                    if Instant::now() >= deadline || attempts >= 100 {
                        panic!(
                            "forze-redis-testkit: could not start {} on port {} within {SAME_PORT_TIMEOUT:?} \
                             ({attempts} attempts); last failure: {msg}",
                            self.binary, self.port
                        );
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }

    /// One attempt: spawn the process on `self.port` and wait for readiness.
    fn spawn_once(&mut self) -> Result<(), SpawnFailure> {
        let log_path = self.log_path();
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| {
                SpawnFailure::Fatal(format!(
                    "forze-redis-testkit: cannot open log file {}: {e}",
                    log_path.display()
                ))
            })?;
        let log_err = log.try_clone().map_err(|e| {
            SpawnFailure::Fatal(format!(
                "forze-redis-testkit: cannot clone log file handle: {e}"
            ))
        })?;
        let port = self.port.to_string();
        let mut command = Command::new(&self.binary.path);
        if let Some(text) = &self.config_file {
            let path = self.dir.join("server.conf");
            // Written once: Sentinel rewrites it with what it learned, kept across restarts.
            if !path.exists() {
                let text = format!("port {port}\nbind 127.0.0.1\n{text}\n");
                std::fs::write(&path, text).map_err(|e| {
                    SpawnFailure::Fatal(format!("forze-redis-testkit: cannot write config: {e}"))
                })?;
            }
            command.arg(&path);
        }
        command
            .args(["--port", port.as_str()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--daemonize", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(["--enable-debug-command", "yes"])
            .args(["--loglevel", "warning"])
            .args(["--protected-mode", "no"])
            .args(&self.extra_args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err));
        let child = command.spawn().map_err(|e| {
            SpawnFailure::Fatal(format!(
                "forze-redis-testkit: cannot spawn {}: {e}",
                self.binary
            ))
        })?;
        let pid = child.id();
        *self.lock_child() = Some(child);

        match self.wait_ready(pid) {
            Ok(()) => Ok(()),
            Err(failure) => {
                self.kill_child();
                Err(failure)
            }
        }
    }

    /// Polls `PING` every 20 ms for up to 5 s, then checks that the process
    /// answering is ours (`INFO server` → `process_id`).
    fn wait_ready(&self, pid: u32) -> Result<(), SpawnFailure> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let max_rounds = (READY_TIMEOUT.as_millis() / READY_POLL.as_millis()) as usize + 2;
        for _ in 0..max_rounds {
            if let Some(status) = self.exit_status() {
                return Err(SpawnFailure::PortProblem(format!(
                    "{} exited during startup on port {} ({status}); log tail:\n{}",
                    self.binary,
                    self.port,
                    self.log_tail(LOG_TAIL_LINES)
                )));
            }
            if ping(self.socket_addr()) {
                return self.check_owner(pid);
            }
            if Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(READY_POLL);
        }
        Err(SpawnFailure::Fatal(format!(
            "forze-redis-testkit: {} did not answer PING on {} within {READY_TIMEOUT:?}; log tail:\n{}",
            self.binary,
            self.addr(),
            self.log_tail(LOG_TAIL_LINES)
        )))
    }

    /// Guards against a port race in which some *other* server answered.
    fn check_owner(&self, pid: u32) -> Result<(), SpawnFailure> {
        let info = self
            .cmd(&["INFO", "server"])
            .ok()
            .and_then(|r| r.as_str())
            .unwrap_or_default();
        let owner = info
            .lines()
            .find_map(|l| l.trim().strip_prefix("process_id:"))
            .and_then(|v| v.trim().parse::<u32>().ok());
        if owner == Some(pid) && self.exit_status().is_none() {
            Ok(())
        } else {
            Err(SpawnFailure::PortProblem(format!(
                "port {} is answered by another process (pid {owner:?}, ours {pid}); log tail:\n{}",
                self.port,
                self.log_tail(LOG_TAIL_LINES)
            )))
        }
    }

    fn exit_status(&self) -> Option<std::process::ExitStatus> {
        let mut child = self.lock_child();
        match child.as_mut() {
            Some(c) => c.try_wait().ok().flatten(),
            None => None,
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill_child();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One raw `PING` with short timeouts; `true` on `+PONG`.
fn ping(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    if stream
        .set_read_timeout(Some(Duration::from_secs(1)))
        .is_err()
        || stream
            .set_write_timeout(Some(Duration::from_secs(1)))
            .is_err()
        || stream.write_all(b"PING\r\n").is_err()
    {
        return false;
    }
    let mut buf = [0u8; 7];
    let mut got = 0;
    // At most a handful of short reads; each is bounded by the read timeout.
    for _ in 0..buf.len() {
        match stream.read(&mut buf[got..]) {
            Ok(0) | Err(_) => return false,
            Ok(n) => got += n,
        }
        if got >= buf.len() {
            break;
        }
    }
    &buf[..got] == b"+PONG\r\n"
}

/// Parses `CLIENT LIST` output: one client per line, space-separated `k=v`.
fn parse_client_list(text: &str) -> Vec<HashMap<String, String>> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            line.split_whitespace()
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
        .collect()
}

/// Finds `cmdstat_<name>:calls=N,...` in `INFO commandstats` output.
fn parse_command_calls(info: &str, command: &str) -> u64 {
    let key = format!("cmdstat_{}:", command.to_ascii_lowercase());
    info.lines()
        .find_map(|line| line.trim().strip_prefix(key.as_str()))
        .and_then(|fields| {
            fields
                .split(',')
                .find_map(|f| f.strip_prefix("calls="))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

/// Last `lines` lines of a file (empty string if unreadable).
fn tail_of(path: &Path, lines: usize) -> String {
    let mut content = Vec::new();
    if File::open(path)
        .and_then(|mut f| f.read_to_end(&mut content))
        .is_err()
    {
        return format!("<log {} unreadable>", path.display());
    }
    let text = String::from_utf8_lossy(&content);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Creates `$TMPDIR/forze-testkit-<pid>-<counter>-<nanos>`.
pub(crate) fn make_temp_dir() -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let base = std::env::temp_dir();
    let mut last_err = None;
    for _ in 0..16 {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = base.join(format!("forze-testkit-{}-{n}-{nanos}", std::process::id()));
        match std::fs::create_dir(&dir) {
            Ok(()) => return dir,
            Err(e) => last_err = Some(e),
        }
    }
    panic!(
        "forze-redis-testkit: cannot create a temporary directory under {}: {last_err:?}",
        base.display()
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::binaries::server_binaries;

    #[test]
    fn start_ping_restart_same_port_is_empty() {
        for bin in server_binaries() {
            let mut server = TestServer::start(&bin);
            assert_eq!(server.kind(), bin.kind);
            assert_ne!(server.port(), FORBIDDEN_PORT);
            assert_eq!(server.addr(), format!("127.0.0.1:{}", server.port()));
            assert_eq!(server.url(), format!("redis://127.0.0.1:{}", server.port()));
            assert!(server.is_running());

            let pong = server.cmd(&["PING"]).expect("PING");
            assert_eq!(pong, Resp::Simple("PONG".into()), "{bin}");

            server.cmd(&["SET", "k", "v"]).expect("SET");
            let sha = server
                .cmd(&["SCRIPT", "LOAD", "return 1"])
                .expect("SCRIPT LOAD")
                .as_str()
                .expect("sha");
            assert_eq!(
                server.cmd(&["GET", "k"]).expect("GET").as_str().as_deref(),
                Some("v")
            );

            let port = server.port();
            let pid_before = server.pid().expect("pid");
            server.restart();
            assert_eq!(server.port(), port, "{bin}: restart must keep the port");
            assert_ne!(server.pid(), Some(pid_before), "{bin}: new process");
            assert_eq!(
                server.cmd(&["PING"]).expect("PING"),
                Resp::Simple("PONG".into())
            );
            assert!(
                server.cmd(&["GET", "k"]).expect("GET").is_nil(),
                "{bin}: data must be gone after restart"
            );
            let exists = server
                .cmd(&["SCRIPT", "EXISTS", &sha])
                .expect("SCRIPT EXISTS");
            assert_eq!(exists, Resp::Array(Some(vec![Resp::Integer(0)])), "{bin}");
        }
    }

    #[test]
    fn error_replies_are_err() {
        for bin in server_binaries() {
            let server = TestServer::start(&bin);
            let err = server.cmd(&["NOSUCHCOMMAND"]).unwrap_err();
            assert!(err.contains("server replied with error"), "{err}");
            let err = server.cmd(&["EVALSHA", &"0".repeat(40), "0"]).unwrap_err();
            assert!(err.contains("NOSCRIPT"), "{err}");
        }
    }

    #[test]
    fn stop_and_start_on_reserved_port() {
        for bin in server_binaries() {
            let port = reserve_port();
            let mut server = TestServer::start_on(&bin, port);
            assert_eq!(server.port(), port);
            server.stop();
            assert!(!server.is_running());
            assert_eq!(server.pid(), None);
            assert!(server.cmd(&["PING"]).is_err());
            server.stop(); // idempotent
            server.restart();
            assert!(server.is_running());
            assert_eq!(
                server.cmd(&["PING"]).expect("PING").as_str().as_deref(),
                Some("PONG")
            );
        }
    }

    #[test]
    fn pause_and_resume() {
        for bin in server_binaries() {
            let server = TestServer::start(&bin);
            server.pause();
            assert!(server.is_paused());
            assert!(server.is_running());
            // Connect succeeds (kernel backlog) but no reply arrives.
            let mut s = TcpStream::connect(server.socket_addr()).expect("connect to paused server");
            s.set_read_timeout(Some(Duration::from_millis(200)))
                .expect("timeout");
            s.write_all(b"PING\r\n").expect("write");
            let mut buf = [0u8; 16];
            assert!(s.read(&mut buf).is_err(), "{bin}: paused server answered");
            server.resume();
            assert!(!server.is_paused());
            s.set_read_timeout(Some(Duration::from_secs(5)))
                .expect("timeout");
            let n = s.read(&mut buf).expect("reply after resume");
            assert_eq!(&buf[..n], b"+PONG\r\n");
        }
    }

    #[test]
    fn drop_while_paused_kills_and_cleans_up() {
        let bin = server_binaries().remove(0);
        let server = TestServer::start(&bin);
        let pid = server.pid().expect("pid");
        let dir = server.dir().to_path_buf();
        server.pause();
        drop(server);
        assert!(!dir.exists(), "temp dir must be removed");
        assert!(
            send_signal(pid, 0).is_err(),
            "process {pid} must be gone after drop"
        );
    }

    #[test]
    fn client_list_and_command_calls() {
        for bin in server_binaries() {
            let server = TestServer::start(&bin);
            assert_eq!(server.command_calls("incr"), 0);
            for _ in 0..3 {
                server.cmd(&["INCR", "n"]).expect("INCR");
            }
            assert_eq!(server.command_calls("INCR"), 3, "{bin}");
            let _held = TcpStream::connect(server.socket_addr()).expect("connect");
            let mut named = TcpStream::connect(server.socket_addr()).expect("connect");
            named
                .write_all(&encode_command(&["CLIENT", "SETNAME", "probe"]))
                .expect("write");
            let mut ok = [0u8; 5];
            named.read_exact(&mut ok).expect("+OK");
            let clients = server.client_list();
            assert!(clients.len() >= 3, "{bin}: {clients:?}");
            assert!(clients
                .iter()
                .all(|c| c.contains_key("id") && c.contains_key("addr")));
            assert!(
                clients
                    .iter()
                    .any(|c| c.get("name").map(String::as_str) == Some("probe")),
                "{bin}: {clients:?}"
            );
        }
    }

    #[test]
    fn parses_info_and_client_list() {
        let info = "# Commandstats\r\ncmdstat_get:calls=12,usec=3,usec_per_call=0.25\r\n\
                    cmdstat_client|list:calls=2,usec=1\r\n";
        assert_eq!(parse_command_calls(info, "GET"), 12);
        assert_eq!(parse_command_calls(info, "client|list"), 2);
        assert_eq!(parse_command_calls(info, "set"), 0);
        assert_eq!(parse_command_calls(info, "ge"), 0);
        let list =
            "id=3 addr=127.0.0.1:5000 name= cmd=client|list\nid=4 addr=127.0.0.1:5001 name=x\n";
        let parsed = parse_client_list(list);
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[0]["name"], "");
        assert_eq!(parsed[1]["name"], "x");
        assert_eq!(parsed[0]["cmd"], "client|list");
    }
}
