//! One resumable watch, shared by every wait: it resumes from the last resourceVersion after
//! a drop (an API server restart included) and, when that version is too old to resume from
//! (410 Gone), starts again from a fresh read.
//!
//! Failures are of two kinds. Those that cannot heal while we wait — the API refuses the
//! request (401, 403), does not know the kind (404), or rejects it as malformed — end the watch
//! at once with the API's message. The others — connection refused or reset while the API
//! server restarts, 5xx, 429, a dead connection — are retried with a capped backoff, each
//! logged at `-v`, and the last one is kept for the message of the wait's own timeout.

use std::ops::ControlFlow;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::api::{Api, WatchEvent, WatchParams};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;

use crate::error::{Error, Result, describe_kube};
use crate::output;

/// How long the API server keeps one watch open (`timeoutSeconds`) before it ends it and we
/// re-open it from the last resourceVersion. Long enough to cost nothing, short enough that a
/// connection that died without a word (no FIN, no RST) is noticed within about a minute: a
/// stream that has been silent for this long plus [`SILENCE_MARGIN`] is given up.
const WATCH_SECONDS: u32 = 60;
const SILENCE_MARGIN: Duration = Duration::from_secs(5);

/// A change the watch saw.
pub enum Change<K> {
    Applied(K),
    Deleted(K),
}

/// What the last failed attempt of a watch said, cleared when an attempt succeeds: a wait
/// that runs out of time says why its watch was not getting anywhere.
#[derive(Debug, Default)]
pub struct LastError(Mutex<Option<String>>);

impl LastError {
    pub fn get(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set(&self, value: Option<String>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = value;
    }
}

/// Follows the objects `params` selects from `version` on, handing every change to `seen`
/// until it breaks with a value. `resync` reads the present state (objects and the version to
/// go on from) after a 410. `what` names the watched objects in logs and errors.
///
/// Returns an error only for a failure that cannot heal; transient ones are retried forever,
/// so callers bound the wait (`--timeout`) and read `last_error` when it runs out.
pub async fn follow<K, T, R, F>(
    api: &Api<K>,
    what: &str,
    params: &WatchParams,
    mut version: String,
    resync: R,
    last_error: &LastError,
    mut seen: impl FnMut(Change<K>) -> ControlFlow<T>,
) -> Result<T>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
    R: Fn() -> F,
    F: Future<Output = kube::Result<(Vec<K>, String)>>,
{
    let params = WatchParams { timeout: Some(WATCH_SECONDS), ..params.clone() };
    let mut retry = Retry { what, last_error, backoff: Backoff::default() };
    // Set when our version is too old to watch from: the present state must be read first.
    let mut stale = false;
    loop {
        if stale {
            match resync().await {
                Ok((objects, fresh)) => {
                    stale = false;
                    version = fresh;
                    for obj in objects {
                        if let ControlFlow::Break(done) = seen(Change::Applied(obj)) {
                            return Ok(done);
                        }
                    }
                }
                Err(err) => {
                    retry.failed("re-read", err).await?;
                    continue;
                }
            }
        }
        let opened = Instant::now();
        let stream = match api.watch(&params, &version).await {
            Ok(stream) => stream,
            Err(kube::Error::Api(status)) if status.code == 410 => {
                retry.gone(&version);
                stale = true;
                continue;
            }
            Err(err) => {
                retry.failed("watch", err).await?;
                continue;
            }
        };
        last_error.set(None);
        futures::pin_mut!(stream);
        let silence = Duration::from_secs(WATCH_SECONDS.into()) + SILENCE_MARGIN;
        loop {
            let event = match tokio::time::timeout(silence, stream.next()).await {
                Ok(Some(event)) => event,
                // The server ended the watch (its timeoutSeconds): re-open it from `version`.
                Ok(None) => {
                    if opened.elapsed() < Duration::from_secs(1) {
                        // Ended as soon as it began: do not hammer a server doing that.
                        retry.backoff.sleep().await;
                    }
                    break;
                }
                Err(_) => {
                    let silent = format!(
                        "the watch stream was silent for {}s, longer than the server keeps it \
                         open: the connection is dead",
                        silence.as_secs()
                    );
                    retry.note("watch", &silent);
                    break;
                }
            };
            let change = match event {
                Ok(WatchEvent::Added(obj) | WatchEvent::Modified(obj)) => {
                    retry.backoff.reset();
                    version = obj.resource_version().unwrap_or(version);
                    Change::Applied(obj)
                }
                Ok(WatchEvent::Deleted(obj)) => {
                    version = obj.resource_version().unwrap_or(version);
                    Change::Deleted(obj)
                }
                Ok(WatchEvent::Bookmark(b)) => {
                    version = b.metadata.resource_version;
                    continue;
                }
                Ok(WatchEvent::Error(status)) if status.code == 410 => {
                    retry.gone(&version);
                    stale = true;
                    break;
                }
                Ok(WatchEvent::Error(status)) => {
                    retry.failed("watch", kube::Error::Api(status)).await?;
                    break;
                }
                Err(err) => {
                    retry.failed("watch", err).await?;
                    break;
                }
            };
            if let ControlFlow::Break(done) = seen(change) {
                return Ok(done);
            }
        }
    }
}

/// Whether waiting can make a failed request succeed: not when the API refused it (401, 403),
/// does not serve the kind (404) or rejected the request itself (400, 405, 406, 415, 422).
fn heals(err: &kube::Error) -> bool {
    match err {
        kube::Error::Api(status) => !matches!(status.code, 400..=404 | 405 | 406 | 415 | 422),
        _ => true,
    }
}

/// The failures of one watch: classified, logged, remembered, waited out.
struct Retry<'a> {
    what: &'a str,
    last_error: &'a LastError,
    backoff: Backoff,
}

impl Retry<'_> {
    /// A failed request: an error that cannot heal ends the watch; any other is remembered,
    /// logged, and waited out before the next attempt.
    async fn failed(&mut self, doing: &str, err: kube::Error) -> Result<()> {
        if !heals(&err) {
            return Err(Error::kube(format!("{doing} {}", self.what), err));
        }
        self.note(doing, &describe_kube(&err));
        self.backoff.sleep().await;
        Ok(())
    }

    fn note(&self, doing: &str, reason: &str) {
        let message = format!("cannot {doing} {}: {reason}", self.what);
        output::note(1, || format!("{message}; retrying in {:?}", self.backoff.delay()));
        self.last_error.set(Some(message));
    }

    fn gone(&self, version: &str) {
        output::note(1, || {
            format!(
                "watch {}: resourceVersion {version} is too old to resume from (410 Gone); \
                 reading the present state",
                self.what
            )
        });
    }
}

/// Reconnect delays: short at first (a dropped watch), longer while the API server is down,
/// never more than 2 s so that the wait notices soon when it is back.
#[derive(Default)]
struct Backoff {
    attempts: u32,
}

impl Backoff {
    fn delay(&self) -> Duration {
        Duration::from_millis((200u64 << self.attempts.min(4)).min(2_000))
    }

    async fn sleep(&mut self) {
        let delay = self.delay();
        self.attempts += 1;
        tokio::time::sleep(delay).await;
    }

    fn reset(&mut self) {
        self.attempts = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error(code: u16) -> kube::Error {
        kube::Error::Api(Box::new(kube::core::Status {
            code,
            message: "m".into(),
            ..Default::default()
        }))
    }

    #[test]
    fn refusals_do_not_heal_and_outages_do() {
        for code in [400, 401, 403, 404, 405, 422] {
            assert!(!heals(&api_error(code)), "{code}");
        }
        for code in [408, 409, 429, 500, 502, 503, 504] {
            assert!(heals(&api_error(code)), "{code}");
        }
    }

    #[test]
    fn backoff_is_capped() {
        let mut b = Backoff::default();
        let delays: Vec<u64> = (0..7)
            .map(|_| {
                let d = b.delay().as_millis() as u64;
                b.attempts += 1;
                d
            })
            .collect();
        assert_eq!(delays, [200, 400, 800, 1600, 2000, 2000, 2000]);
        b.reset();
        assert_eq!(b.delay(), Duration::from_millis(200));
    }
}
