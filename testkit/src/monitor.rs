//! [`Monitor`]: counts the commands a server executes, by command and (for `EVALSHA`) by
//! script, from the server's own `MONITOR` feed. What `INFO commandstats` cannot tell apart
//! (which script an `EVALSHA` ran) this can: each contract's executions can be compared with
//! the calls made.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::resp::encode_command;

/// A `MONITOR` connection read on a thread of its own until dropped.
pub struct Monitor {
    stream: TcpStream,
    counts: Arc<Mutex<HashMap<String, u64>>>,
    reader: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Monitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Monitor").finish_non_exhaustive()
    }
}

/// The key a monitored line counts under: the command in lower case, and for `evalsha` and
/// `eval` the script (`evalsha <sha>`, `eval <sha of the source is not known: first 24 chars>`).
/// Commands that scripts run (`[0 lua]`) are not counted. `None` for lines that are not
/// commands.
fn key_of(line: &str) -> Option<String> {
    let (_, rest) = line.split_once("] ")?;
    if line.contains(" lua]") {
        return None;
    }
    let mut args = quoted(rest);
    let cmd = args.next()?.to_ascii_lowercase();
    Some(match cmd.as_str() {
        "evalsha" => format!(
            "evalsha {}",
            args.next().unwrap_or_default().to_ascii_lowercase()
        ),
        "eval" => {
            let src: String = args.next().unwrap_or_default().chars().take(24).collect();
            format!("eval {src}")
        }
        _ => cmd,
    })
}

/// The quoted arguments of a `MONITOR` line (escapes kept as written).
fn quoted(s: &str) -> impl Iterator<Item = String> + '_ {
    let mut chars = s.chars().peekable();
    std::iter::from_fn(move || {
        while chars.peek().is_some_and(|c| *c != '"') {
            chars.next();
        }
        chars.next()?;
        let mut out = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => {
                    if let Some(n) = chars.next() {
                        out.push('\\');
                        out.push(n);
                    }
                }
                '"' => return Some(out),
                c => out.push(c),
            }
        }
        Some(out)
    })
}

impl Monitor {
    /// Start monitoring the server at `addr`.
    ///
    /// # Panics
    ///
    /// When the connection or `MONITOR` fails.
    pub fn start(addr: SocketAddr) -> Monitor {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
            .unwrap_or_else(|e| panic!("forze-redis-testkit: MONITOR connect {addr}: {e}"));
        (&stream)
            .write_all(&encode_command(&["MONITOR"]))
            .expect("MONITOR");
        let mut reader = BufReader::new(stream.try_clone().expect("clone"));
        let mut first = String::new();
        reader.read_line(&mut first).expect("MONITOR reply");
        assert!(first.starts_with("+OK"), "MONITOR refused: {first}");
        let counts: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
        let sink = counts.clone();
        let thread = std::thread::spawn(move || {
            let mut line = String::new();
            loop {
                line.clear();
                match reader.read_line(&mut line) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        if let Some(k) = line.strip_prefix('+').and_then(key_of) {
                            *sink
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .entry(k)
                                .or_default() += 1;
                        }
                    }
                }
            }
        });
        Monitor {
            stream,
            counts,
            reader: Some(thread),
        }
    }

    /// Executions counted so far for `key` (`"incrby"`, `"evalsha <sha1>"`…).
    pub fn count(&self, key: &str) -> u64 {
        self.counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .copied()
            .unwrap_or(0)
    }

    /// Every count so far.
    pub fn counts(&self) -> HashMap<String, u64> {
        self.counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Stop reading (the counts stay readable).
    pub fn stop(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Both);
        if let Some(t) = self.reader.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_counted_by_command_and_script() {
        assert_eq!(
            key_of(r#"1700000000.1 [0 127.0.0.1:5000] "EVALSHA" "ABC123" "1" "k""#).as_deref(),
            Some("evalsha abc123")
        );
        assert_eq!(
            key_of(r#"1700000000.1 [0 127.0.0.1:5000] "incrby" "a \"b\"" "1""#).as_deref(),
            Some("incrby")
        );
        assert_eq!(key_of(r#"1700000000.1 [0 lua] "incr" "k""#), None);
        assert_eq!(key_of("OK"), None);
    }
}
