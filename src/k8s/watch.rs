//! One list-and-watch, shared by every wait, with the semantics of kubectl's (client-go's
//! reflector, which `kubectl rollout status` runs): it watches from a version the caller read,
//! resumes from the last version seen after a drop (an API server restart included), and when
//! that version is too old to resume from (410 Gone) it LISTS the watched objects (the wait's
//! field selector) and watches again from the version of that list.
//!
//! Why the list's version and not an object's: an object's own resourceVersion is that of its
//! last change, which may be far older than anything a freshly started API server's watch
//! cache serves, so watching from it fails with 410 again at once, for as long as the object
//! does not change (measured: 6,002 times in 52 s during a kube-apiserver restart). A list's
//! version is the store's present one, which the cache serves.
//!
//! Failures are of two kinds. Those that cannot heal while we wait — the API refuses the
//! request (401, 403), does not know the kind (404), or rejects it as malformed — end the watch
//! at once with the API's message. The others — connection refused or reset while the API
//! server restarts, 5xx, 429, a dead connection, a 410 on the version a list has just given —
//! are retried after a bounded, jittered backoff, each logged at `-v`, and the last one is kept
//! for the message of the wait's own timeout.
//!
//! Not kube-runtime's `watcher`: it would need the same wrapper to end at once on refusals (it
//! yields every failure and retries it), and a watch whose start is answered with HTTP 410 keeps
//! it retrying the same version without listing (its `InitListed` state), the very loop this
//! module exists to avoid; its default backoff also waits up to 30 s, long after the API is back.
//! `kube::runtime::wait::await_condition` is that watcher underneath, so the same holds for it
//! (the test harness may use it: it never waits through a kube-apiserver restart).
//!
//! The rotations wait in one style, bounded the same way: `--timeout` around the whole wait
//! (`crate::duration::within`, tokio's timeout; zero means no limit). Around this watch for
//! objects that change (a rollout, APIServices becoming Available); around a poll
//! (`crate::duration::poll`) for what the API does not announce with a watch event (a ConfigMap
//! kube-apiserver republishes after its restart, a served certificate, an aggregated API
//! answering, a webhook's admission, an API server restarting under a resumed run).

use std::collections::BTreeSet;
use std::hash::BuildHasher;
use std::ops::ControlFlow;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::api::{Api, ListParams, WatchEvent, WatchParams};
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
/// A watch stream that lasted this long was a working one: the backoff starts over.
const HEALTHY_STREAM: Duration = Duration::from_secs(1);

/// A change the watch saw.
pub enum Change<K> {
    Applied(K),
    /// A followed object is gone ([`key`]): a watch event said so, or a list no longer has it.
    Deleted(String),
}

/// How [`follow`] names an object: `namespace/name`, or `name` for a cluster-scoped one.
pub fn key<K: Resource>(obj: &K) -> String {
    match obj.meta().namespace.as_deref() {
        Some(namespace) => format!("{namespace}/{}", obj.name_any()),
        None => obj.name_any(),
    }
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

/// Follows the objects `params` selects from `version` on (an empty one: list them first),
/// handing every change to `seen` until it breaks with a value. `known` are the [`key`]s of the
/// objects the caller read at `version`, so that one deleted before a re-list is reported.
/// `what` names the watched objects in logs and errors.
///
/// Returns an error only for a failure that cannot heal; transient ones are retried forever,
/// so callers bound the wait (`--timeout`) and read `last_error` when it runs out.
pub async fn follow<K, T>(
    api: &Api<K>,
    what: &str,
    params: &WatchParams,
    version: String,
    known: impl IntoIterator<Item = String>,
    last_error: &LastError,
    seen: impl FnMut(Change<K>) -> ControlFlow<T>,
) -> Result<T>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let mut follower = Follower {
        api,
        watch_params: WatchParams { timeout: Some(WATCH_SECONDS), ..params.clone() },
        // No resourceVersion: the most recent state, read from etcd, as kubectl relists.
        list_params: ListParams {
            label_selector: params.label_selector.clone(),
            field_selector: params.field_selector.clone(),
            ..Default::default()
        },
        known: known.into_iter().collect(),
        fresh_list: false,
        retry: Retry { what, last_error, backoff: Backoff::default() },
        seen,
    };
    let mut step = if version.is_empty() { Step::List } else { Step::Watch(version) };
    loop {
        step = match step {
            Step::Done(done) => return Ok(done),
            Step::List => follower.list().await?,
            Step::Watch(from) => follower.watch(from).await?,
        };
    }
}

/// What a [`Follower`] does next.
enum Step<T> {
    Done(T),
    List,
    /// Watch from this resourceVersion.
    Watch(String),
}

struct Follower<'a, K: Clone, S> {
    api: &'a Api<K>,
    watch_params: WatchParams,
    list_params: ListParams,
    /// Keys of the objects present as far as we know.
    known: BTreeSet<String>,
    /// Whether the next watch starts from the version a list has just given: a 410 on it, before
    /// any event, is not a stale version of ours but a server that cannot serve its present.
    fresh_list: bool,
    retry: Retry<'a>,
    seen: S,
}

impl<K, T, S> Follower<'_, K, S>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
    S: FnMut(Change<K>) -> ControlFlow<T>,
{
    /// Reads the present state, hands it over (and what is gone since), and returns the
    /// version to watch from.
    async fn list(&mut self) -> Result<Step<T>> {
        let list = match self.api.list(&self.list_params).await {
            Ok(list) => list,
            Err(err) => {
                self.retry.failed("list", err).await?;
                return Ok(Step::List);
            }
        };
        self.retry.last_error.set(None);
        let version = list.metadata.resource_version.unwrap_or_default();
        let present: BTreeSet<String> = list.items.iter().map(key).collect();
        let gone: Vec<String> = self.known.difference(&present).cloned().collect();
        self.known = present;
        let changes = list.items.into_iter().map(Change::Applied);
        for change in changes.chain(gone.into_iter().map(Change::Deleted)) {
            if let ControlFlow::Break(done) = (self.seen)(change) {
                return Ok(Step::Done(done));
            }
        }
        self.fresh_list = true;
        Ok(Step::Watch(version))
    }

    /// Watches from `version` until the stream ends or fails, handing over every change.
    async fn watch(&mut self, mut version: String) -> Result<Step<T>> {
        let mut from_list = std::mem::take(&mut self.fresh_list);
        let opened = Instant::now();
        let stream = match self.api.watch(&self.watch_params, &version).await {
            Ok(stream) => stream,
            Err(kube::Error::Api(status)) if status.code == 410 => {
                return Ok(self.gone(&version, from_list).await);
            }
            Err(err) => {
                self.retry.failed("watch", err).await?;
                return Ok(Step::Watch(version));
            }
        };
        self.retry.last_error.set(None);
        futures::pin_mut!(stream);
        let silence = Duration::from_secs(WATCH_SECONDS.into()) + SILENCE_MARGIN;
        loop {
            let event = match tokio::time::timeout(silence, stream.next()).await {
                Ok(Some(event)) => event,
                // The server ended the watch (its timeoutSeconds): re-open it from `version`.
                Ok(None) => {
                    if opened.elapsed() < HEALTHY_STREAM {
                        // Ended as soon as it began: do not hammer a server doing that.
                        self.retry.pause().await;
                    } else {
                        self.retry.backoff.reset();
                    }
                    return Ok(Step::Watch(version));
                }
                Err(_) => {
                    let silent = format!(
                        "the watch stream was silent for {}s, longer than the server keeps it \
                         open: the connection is dead",
                        silence.as_secs()
                    );
                    self.retry.note("watch", &silent, None);
                    return Ok(Step::Watch(version));
                }
            };
            let change = match event {
                Ok(WatchEvent::Added(obj) | WatchEvent::Modified(obj)) => {
                    from_list = false;
                    self.progressed(&mut version, obj.resource_version());
                    self.known.insert(key(&obj));
                    Change::Applied(obj)
                }
                Ok(WatchEvent::Deleted(obj)) => {
                    from_list = false;
                    self.progressed(&mut version, obj.resource_version());
                    let gone = key(&obj);
                    self.known.remove(&gone);
                    Change::Deleted(gone)
                }
                Ok(WatchEvent::Bookmark(b)) => {
                    from_list = false;
                    self.progressed(&mut version, Some(b.metadata.resource_version));
                    continue;
                }
                Ok(WatchEvent::Error(status)) if status.code == 410 => {
                    return Ok(self.gone(&version, from_list).await);
                }
                Ok(WatchEvent::Error(status)) => {
                    self.retry.failed("watch", kube::Error::Api(status)).await?;
                    return Ok(Step::Watch(version));
                }
                Err(err) => {
                    self.retry.failed("watch", err).await?;
                    return Ok(Step::Watch(version));
                }
            };
            if let ControlFlow::Break(done) = (self.seen)(change) {
                return Ok(Step::Done(done));
            }
        }
    }

    /// An event arrived: the watch works, and `version` moves on.
    fn progressed(&mut self, version: &mut String, next: Option<String>) {
        self.retry.backoff.reset();
        if let Some(next) = next {
            *version = next;
        }
    }

    /// `version` is too old to watch from: list again, at once (as kubectl), or after the
    /// backoff when it is the version a list has just given (`from_list`).
    async fn gone(&mut self, version: &str, from_list: bool) -> Step<T> {
        if from_list {
            let reason = format!(
                "resourceVersion {version} of a list made just before is too old to watch from \
                 (410 Gone)"
            );
            let delay = self.retry.backoff.next();
            self.retry.note("watch", &reason, Some(delay));
            tokio::time::sleep(delay).await;
        } else {
            output::note(1, || {
                format!(
                    "watch {}: resourceVersion {version} is too old to resume from (410 Gone); \
                     listing the present state",
                    self.retry.what
                )
            });
        }
        Step::List
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
        let delay = self.backoff.next();
        self.note(doing, &describe_kube(&err), Some(delay));
        tokio::time::sleep(delay).await;
        Ok(())
    }

    /// Waits out the backoff without a failure to report.
    async fn pause(&mut self) {
        tokio::time::sleep(self.backoff.next()).await;
    }

    /// Remembers and logs a failure; `delay` is how long we wait before trying again.
    fn note(&self, doing: &str, reason: &str, delay: Option<Duration>) {
        let message = format!("cannot {doing} {}: {reason}", self.what);
        output::note(1, || match delay {
            Some(delay) => format!("{message}; retrying in {delay:.1?}"),
            None => format!("{message}; retrying"),
        });
        self.last_error.set(Some(message));
    }
}

/// Delays between failed attempts: short at first (a dropped watch), longer while the API
/// server is down, never more than 2 s so that the wait notices soon when it is back; each is
/// jittered down by up to half, so that the concurrent waits of one restart (every extension
/// server's workload) do not knock on a returning API server in step.
#[derive(Default)]
struct Backoff {
    attempts: u32,
}

impl Backoff {
    /// The delay before jitter.
    fn ceiling(&self) -> Duration {
        Duration::from_millis((200u64 << self.attempts.min(4)).min(2_000))
    }

    /// The delay to wait now; the next one is longer.
    fn next(&mut self) -> Duration {
        let delay = jittered(self.ceiling(), random());
        self.attempts += 1;
        delay
    }

    fn reset(&mut self) {
        self.attempts = 0;
    }
}

/// `ceiling` scaled into `[ceiling / 2, ceiling]` by `random` (over the whole `u64` range).
fn jittered(ceiling: Duration, random: u64) -> Duration {
    let half = ceiling / 2;
    half + half.mul_f64(random as f64 / u64::MAX as f64)
}

/// A random number for the jitter: std's hasher keys are random, and differ on every call.
fn random() -> u64 {
    std::collections::hash_map::RandomState::new().hash_one(Instant::now())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

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

    /// A fake API server for one Deployment `ns/web`: `answer` gets each request's path and
    /// query and returns the status and body; every request is recorded.
    #[derive(Clone)]
    struct Fake {
        requests: Arc<Mutex<Vec<String>>>,
        answer: Arc<Answer>,
    }

    /// Status and body for a request's path and query.
    type Answer = dyn Fn(&str) -> (u16, String) + Send + Sync;

    impl tower::Service<http::Request<kube::client::Body>> for Fake {
        type Response = http::Response<kube::client::Body>;
        type Error = std::convert::Infallible;
        type Future = std::future::Ready<std::result::Result<Self::Response, Self::Error>>;

        fn poll_ready(
            &mut self,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::result::Result<(), Self::Error>> {
            std::task::Poll::Ready(Ok(()))
        }

        fn call(&mut self, request: http::Request<kube::client::Body>) -> Self::Future {
            let target = request.uri().path_and_query().map(|p| p.to_string()).unwrap_or_default();
            self.requests.lock().unwrap().push(target.clone());
            let (status, body) = (self.answer)(&target);
            let response = http::Response::builder().status(status).body(body.into_bytes().into());
            std::future::ready(Ok(response.unwrap()))
        }
    }

    /// What a request is: `list`, `watch <resourceVersion>`, or `get`.
    fn kind_of(target: &str) -> String {
        let query = target.split_once('?').map_or("", |(_, q)| q);
        let param = |name: &str| {
            query.split('&').find_map(|p| p.strip_prefix(name)?.strip_prefix('=')).unwrap_or("")
        };
        if param("watch") == "true" {
            format!("watch {}", param("resourceVersion"))
        } else if target.contains("/deployments?") {
            assert_eq!(param("fieldSelector"), "metadata.name%3Dweb", "{target}");
            "list".into()
        } else {
            "get".into()
        }
    }

    fn web(version: &str) -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "ns", "resourceVersion": version},
            "spec": {"selector": {}, "template": {}}
        })
    }

    fn list_of(items: Vec<serde_json::Value>) -> (u16, String) {
        let list = serde_json::json!({"apiVersion": "apps/v1", "kind": "DeploymentList",
                                      "metadata": {"resourceVersion": "100"}, "items": items});
        (200, list.to_string())
    }

    fn gone_event() -> (u16, String) {
        let status = serde_json::json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": "too old resource version: 5 (100)",
            "reason": "Expired", "code": 410});
        (200, format!("{}\n", serde_json::json!({"type": "ERROR", "object": status})))
    }

    /// Follows `ns/web` from version 5 on the fake until `seen` breaks or `limit` ends; returns
    /// the outcome (`None`: still following) and the requests made, by [`kind_of`].
    fn follow_web<T: Send + 'static>(
        answer: impl Fn(&str) -> (u16, String) + Send + Sync + 'static,
        limit: Duration,
        seen: impl FnMut(Change<k8s_openapi::api::apps::v1::Deployment>) -> ControlFlow<T>
        + Send
        + 'static,
    ) -> (Option<Result<T>>, Vec<String>, Option<String>) {
        let requests = Arc::new(Mutex::new(Vec::new()));
        let fake = Fake { requests: Arc::clone(&requests), answer: Arc::new(answer) };
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let last_error = LastError::default();
        let outcome = runtime.block_on(async {
            let api = Api::namespaced(kube::Client::new(fake, "ns"), "ns");
            let params = WatchParams::default().fields("metadata.name=web");
            let known = ["ns/web".to_string()];
            let follow =
                follow(&api, "deployment/web -n ns", &params, "5".into(), known, &last_error, seen);
            tokio::time::timeout(limit, follow).await.ok()
        });
        let requests = requests.lock().unwrap().iter().map(|t| kind_of(t)).collect();
        (outcome, requests, last_error.get())
    }

    #[test]
    fn a_410_lists_and_watches_from_the_lists_version_not_the_objects() {
        let answer = |target: &str| match kind_of(target).as_str() {
            "watch 5" => gone_event(),
            "list" => list_of(vec![web("5")]),
            "watch 100" => (
                200,
                format!("{}\n", serde_json::json!({"type": "MODIFIED", "object": web("101")})),
            ),
            other => panic!("unexpected request {other}: {target}"),
        };
        let (outcome, requests, _) =
            follow_web(answer, Duration::from_secs(10), |change| match change {
                Change::Applied(d) if d.resource_version().as_deref() == Some("101") => {
                    ControlFlow::Break(())
                }
                Change::Applied(_) => ControlFlow::Continue(()),
                Change::Deleted(_) => panic!("ns/web was not deleted"),
            });
        outcome.expect("done in time").unwrap();
        assert_eq!(requests, ["watch 5", "list", "watch 100"]);
    }

    #[test]
    fn an_object_missing_from_the_list_is_reported_deleted() {
        let answer = |target: &str| match kind_of(target).as_str() {
            "watch 5" => gone_event(),
            "list" => list_of(vec![]),
            other => panic!("unexpected request {other}: {target}"),
        };
        let (outcome, requests, _) =
            follow_web(answer, Duration::from_secs(10), |change| match change {
                Change::Deleted(_) => ControlFlow::Break(()),
                Change::Applied(d) => panic!("{d:?} is not there"),
            });
        outcome.expect("done in time").unwrap();
        assert_eq!(requests, ["watch 5", "list"]);
    }

    #[test]
    fn a_410_on_a_lists_version_backs_off_and_a_refused_list_ends_at_once() {
        // A server whose watches always answer 410: after the first re-list, each 410 is
        // waited out (at least 0.1 + 0.2 + 0.4 s by the third), so 1.5 s see a handful of
        // requests, not thousands.
        let answer = |target: &str| match kind_of(target).as_str() {
            "list" => list_of(vec![web("5")]),
            _ => gone_event(),
        };
        let (outcome, requests, last_error) =
            follow_web(answer, Duration::from_millis(1500), |_| ControlFlow::<()>::Continue(()));
        assert!(outcome.is_none(), "still following");
        eprintln!("{} requests in 1.5 s: {requests:?}", requests.len());
        assert!((4..=12).contains(&requests.len()), "{requests:?}");
        assert_eq!(&requests[..3], ["watch 5", "list", "watch 100"]);
        let last_error = last_error.unwrap();
        assert!(last_error.contains("too old to watch from (410 Gone)"), "{last_error}");

        let answer = |target: &str| match kind_of(target).as_str() {
            "list" => {
                let status = serde_json::json!({"kind": "Status", "apiVersion": "v1",
                    "metadata": {}, "status": "Failure", "reason": "Forbidden", "code": 403,
                    "message": "deployments.apps is forbidden: User \"u\" cannot list"});
                (403, status.to_string())
            }
            _ => gone_event(),
        };
        let (outcome, requests, _) =
            follow_web(answer, Duration::from_secs(10), |_| ControlFlow::<()>::Continue(()));
        let err = outcome.expect("ended at once").unwrap_err().to_string();
        assert!(
            err.starts_with("failed to list deployment/web -n ns: deployments.apps is forbidden"),
            "{err}"
        );
        assert_eq!(requests, ["watch 5", "list"]);
    }

    #[test]
    fn backoff_is_capped_and_jittered_down_by_at_most_half() {
        let mut b = Backoff::default();
        let mut ceilings = Vec::new();
        for _ in 0..7 {
            let ceiling = b.ceiling();
            let delay = b.next();
            assert!(delay >= ceiling / 2 && delay <= ceiling, "{delay:?} of {ceiling:?}");
            ceilings.push(ceiling.as_millis() as u64);
        }
        assert_eq!(ceilings, [200, 400, 800, 1600, 2000, 2000, 2000]);
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_millis(200));
        let second = Duration::from_secs(1);
        assert_eq!(jittered(second, 0), Duration::from_millis(500));
        assert_eq!(jittered(second, u64::MAX), second);
    }
}
