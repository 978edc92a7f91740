//! Bounded waits: every wait in a test names what it waits for and gives up with the last
//! reason it saw, instead of hanging or sampling a condition once.

use std::future::Future;
use std::time::{Duration, Instant};

const POLL: Duration = Duration::from_millis(250);

/// Calls `probe` until it returns `Ok`, at most for `timeout`; panics with `what` and the
/// probe's last `Err` reason otherwise.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> Result<T, String>,
) -> T {
    let start = Instant::now();
    loop {
        match probe() {
            Ok(value) => return value,
            Err(reason) if start.elapsed() >= timeout => {
                panic!("timed out after {timeout:?} waiting for {what}; last seen: {reason}")
            }
            Err(_) => std::thread::sleep(POLL),
        }
    }
}

/// [`wait_for`] for async probes.
pub async fn wait_for_async<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let start = Instant::now();
    loop {
        // A probe that hangs (an API call while the apiserver restarts) counts as a miss.
        let left = timeout.saturating_sub(start.elapsed()).max(POLL);
        let outcome = tokio::time::timeout(left, probe())
            .await
            .unwrap_or_else(|_| Err(format!("probe still running after {left:?}")));
        match outcome {
            Ok(value) => return value,
            Err(reason) if start.elapsed() >= timeout => {
                panic!("timed out after {timeout:?} waiting for {what}; last seen: {reason}")
            }
            Err(_) => tokio::time::sleep(POLL).await,
        }
    }
}
