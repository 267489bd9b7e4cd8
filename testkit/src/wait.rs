//! Bounded polling helpers for asynchronous tests.
//!
//! Tests should wait for *conditions* ("the proxy has 0 connections", "the
//! server saw 3 EVALSHA calls") rather than sleep for fixed durations. These
//! helpers poll a predicate every 10 ms and panic with a readable message
//! once the timeout has passed, so a broken test fails fast and says what it
//! was waiting for.

use std::future::Future;
use std::time::Duration;

/// Interval between two evaluations of the predicate.
const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// Polls `f` every 10 ms until it returns `true`.
///
/// # Panics
///
/// Panics with `"timed out after {timeout:?} waiting for {what}"` if `f`
/// has not returned `true` within `timeout`.
pub async fn wait_until<F: FnMut() -> bool>(timeout: Duration, what: &str, mut f: F) {
    wait_until_async(timeout, what, move || std::future::ready(f())).await
}

/// Like [`wait_until`], but the predicate is asynchronous.
///
/// Each evaluation is itself bounded by the remaining time, so a predicate
/// that hangs cannot stall the test beyond `timeout`.
///
/// # Panics
///
/// Panics with `"timed out after {timeout:?} waiting for {what}"` if `f`
/// has not resolved to `true` within `timeout`.
pub async fn wait_until_async<F, Fut>(timeout: Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    // Bounded in count as well as in time (one extra round for the final check).
    let max_rounds = timeout.as_millis() / POLL_INTERVAL.as_millis() + 2;
    for _ in 0..max_rounds {
        match tokio::time::timeout_at(deadline, f()).await {
            Ok(true) => return,
            Ok(false) => {}
            Err(_) => break,
        }
        if tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    #[tokio::test]
    async fn returns_once_true() {
        let mut n = 0;
        wait_until(Duration::from_secs(5), "three polls", || {
            n += 1;
            n >= 3
        })
        .await;
        assert_eq!(n, 3);
    }

    #[tokio::test]
    async fn async_variant() {
        let n = Arc::new(AtomicU32::new(0));
        wait_until_async(Duration::from_secs(5), "two polls", || {
            let n = n.clone();
            async move { n.fetch_add(1, Ordering::SeqCst) + 1 >= 2 }
        })
        .await;
        assert_eq!(n.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    #[should_panic(expected = "timed out after 50ms waiting for never")]
    async fn panics_on_timeout() {
        wait_until(Duration::from_millis(50), "never", || false).await;
    }

    #[tokio::test]
    #[should_panic(expected = "waiting for a hung predicate")]
    async fn hung_predicate_is_bounded() {
        wait_until_async(Duration::from_millis(50), "a hung predicate", || {
            std::future::pending::<bool>()
        })
        .await;
    }
}
