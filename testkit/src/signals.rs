//! Freezing and thawing processes with `SIGSTOP` / `SIGCONT`.
//!
//! A stopped server keeps its sockets open but answers nothing: from the
//! client's point of view it is a hung peer (TCP connects still succeed
//! because the kernel completes handshakes, but no reply ever arrives).
//! [`TestServer::pause`](crate::TestServer::pause) and
//! [`TestServer::resume`](crate::TestServer::resume) are built on these
//! helpers; they can also be used on any other child process a test owns.

use std::io;

/// Sends `SIGSTOP` to process `pid`.
///
/// # Panics
///
/// Panics with a descriptive message if the signal cannot be delivered
/// (for example the process does not exist), or if `pid` is 0 or does not
/// fit a positive `pid_t` (which would address a process group instead).
pub fn sigstop(pid: u32) {
    if let Err(e) = send_signal(pid, libc::SIGSTOP) {
        panic!("forze-redis-testkit: SIGSTOP to pid {pid} failed: {e}");
    }
}

/// Sends `SIGCONT` to process `pid`.
///
/// # Panics
///
/// Same conditions as [`sigstop`].
pub fn sigcont(pid: u32) {
    if let Err(e) = send_signal(pid, libc::SIGCONT) {
        panic!("forze-redis-testkit: SIGCONT to pid {pid} failed: {e}");
    }
}

/// Non-panicking core of the helpers above: `kill(pid, signal)`.
pub(crate) fn send_signal(pid: u32, signal: libc::c_int) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("refusing to signal pid {pid}: not a single positive process id"),
            )
        })?;
    // SAFETY: `kill` has no memory-safety preconditions; `pid` is a positive
    // process id, so only that single process is addressed.
    let rc = unsafe { libc::kill(pid, signal) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;
    use std::time::{Duration, Instant};

    #[test]
    fn stop_and_continue_a_child() {
        let mut child = Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn sleep");
        let pid = child.id();
        sigstop(pid);
        // The process state in /proc becomes 'T' (stopped).
        let deadline = Instant::now() + Duration::from_secs(5);
        let state = |pid: u32| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| s.rsplit(')').next().map(|r| r.trim().chars().next()))
                .flatten()
        };
        while state(pid) != Some('T') && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(state(pid), Some('T'));
        sigcont(pid);
        while state(pid) == Some('T') && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_ne!(state(pid), Some('T'));
        child.kill().expect("kill sleep");
        child.wait().expect("wait sleep");
    }

    #[test]
    fn refuses_process_groups() {
        assert!(send_signal(0, libc::SIGCONT).is_err());
        assert!(send_signal(u32::MAX, libc::SIGCONT).is_err());
    }
}
