//! Bounded waits: every wait in a test names what it waits for and gives up with the last
//! reason it saw, instead of hanging or sampling a condition once. A wait also gives up at
//! once when a component of the test's environment died (see `process::Death`): what it waits
//! for would then only time out.

use std::future::Future;
use std::time::{Duration, Instant};

use super::process::deaths_here;

const POLL: Duration = Duration::from_millis(250);

/// Panics with the report of the components that died, if any did.
fn fail_on_deaths(what: &str) {
    if let Some(report) = deaths_here() {
        panic!("gave up waiting for {what}: {report}");
    }
}

/// Calls `probe` until it returns `Ok`, at most for `timeout`; panics with `what` and the
/// probe's last `Err` reason otherwise.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> Result<T, String>,
) -> T {
    let start = Instant::now();
    loop {
        fail_on_deaths(what);
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
        fail_on_deaths(what);
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
