//! One resumable watch, shared by every wait: it resumes from the last resourceVersion after
//! a drop (an API server restart included) and, when that version is too old to resume from
//! (410 Gone), starts again from a fresh read.

use std::ops::ControlFlow;
use std::time::Duration;

use futures::StreamExt;
use kube::api::{Api, WatchEvent, WatchParams};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;

/// A change the watch saw.
pub enum Change<K> {
    Applied(K),
    Deleted(K),
}

/// Follows the objects `params` selects from `version` on, handing every change to `seen`
/// until it breaks with a value. `resync` reads the present state (objects and the version to
/// go on from) after a 410. Never gives up by itself: callers bound it with a timeout.
pub async fn follow<K, T, R, F>(
    api: &Api<K>,
    params: &WatchParams,
    mut version: String,
    resync: R,
    mut seen: impl FnMut(Change<K>) -> ControlFlow<T>,
) -> T
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
    R: Fn() -> F,
    F: Future<Output = kube::Result<(Vec<K>, String)>>,
{
    let mut backoff = Backoff::default();
    loop {
        // Unreachable means the API server may be restarting: try again shortly.
        let Ok(stream) = api.watch(params, &version).await else {
            backoff.sleep().await;
            continue;
        };
        futures::pin_mut!(stream);
        while let Some(event) = stream.next().await {
            let change = match event {
                Ok(WatchEvent::Added(obj) | WatchEvent::Modified(obj)) => {
                    backoff.reset();
                    version = obj.resource_version().unwrap_or(version);
                    Change::Applied(obj)
                }
                Ok(WatchEvent::Deleted(obj)) => Change::Deleted(obj),
                Ok(WatchEvent::Bookmark(b)) => {
                    version = b.metadata.resource_version;
                    continue;
                }
                Ok(WatchEvent::Error(status)) if status.code == 410 => {
                    // History compacted past our version: take the present and go on from it.
                    if let Ok((objects, fresh)) = resync().await {
                        version = fresh;
                        for obj in objects {
                            if let ControlFlow::Break(done) = seen(Change::Applied(obj)) {
                                return done;
                            }
                        }
                    }
                    break;
                }
                Ok(WatchEvent::Error(_)) | Err(_) => {
                    backoff.sleep().await;
                    break;
                }
            };
            if let ControlFlow::Break(done) = seen(change) {
                return done;
            }
        }
    }
}

/// Reconnect delays: short at first (a dropped watch), longer while the API server is down.
#[derive(Default)]
struct Backoff {
    attempts: u32,
}

impl Backoff {
    async fn sleep(&mut self) {
        let millis = (200u64 << self.attempts.min(4)).min(2_000);
        self.attempts += 1;
        tokio::time::sleep(Duration::from_millis(millis)).await;
    }

    fn reset(&mut self) {
        self.attempts = 0;
    }
}
