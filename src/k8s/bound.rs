//! The request bound: every API request the client sends must be answered within
//! `--request-timeout` (kubectl's flag and meaning; [`DEFAULT_REQUEST_TIMEOUT`] when it is not
//! given, `0` for no limit), so an API server that accepts the connection and never answers
//! cannot hang a command.
//!
//! It is a layer of the client's request stack, so it holds for every request, whoever sends
//! it. A plain request must be complete (headers and body) within the bound. A watch only has
//! to be accepted within it: the API server sends a watch's headers at once and its events
//! whenever they happen, so its stream is bounded by the wait that reads it (`--timeout`) and
//! by its own `timeoutSeconds` (see `watch.rs`), never by the request bound.
//!
//! Failures that never reached the API (no answer in time, connection refused, TLS) are
//! reported as [`Transport`] errors, which name the server.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};
use tower::{BoxError, Layer, Service};

use crate::error::Transport;

/// The bound when `--request-timeout` is not given: long enough for a large list from a loaded
/// API server, short enough that a hung one is noticed; the same bound kube-rs and Go's dialer
/// put on connecting.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Bounds each request of a client to `limit`, naming `server` when it is exceeded.
#[derive(Clone)]
pub struct RequestBound {
    limit: Option<Duration>,
    server: String,
}

impl RequestBound {
    /// `limit: None` bounds nothing (`--request-timeout 0`) but still names the server in
    /// transport errors.
    pub fn new(limit: Option<Duration>, server: String) -> Self {
        Self { limit, server }
    }

    fn timed_out(&self) -> Transport {
        Transport::TimedOut { server: self.server.clone(), limit: self.limit.unwrap_or_default() }
    }

    /// A request that failed before any answer: the connection or TLS failed. Errors of
    /// kube's own layers (authentication) are kube errors already and stay as they are.
    fn unreachable(&self, err: BoxError) -> BoxError {
        if err.is::<kube::Error>() {
            return err;
        }
        let mut cause: &(dyn std::error::Error + 'static) = &*err;
        while let Some(next) = cause.source() {
            cause = next;
        }
        let reason = cause.to_string();
        Box::new(Transport::Unreachable { server: self.server.clone(), reason })
    }
}

impl<S> Layer<S> for RequestBound {
    type Service = Bounded<S>;

    fn layer(&self, inner: S) -> Bounded<S> {
        Bounded { inner, bound: self.clone() }
    }
}

#[derive(Clone)]
pub struct Bounded<S> {
    inner: S,
    bound: RequestBound,
}

/// Whether a request is a watch (`?watch=true`, which is how kube and kubectl ask for one).
fn is_watch<B>(request: &Request<B>) -> bool {
    let query = request.uri().query().unwrap_or_default();
    query.split('&').any(|pair| pair == "watch=true" || pair == "watch=1")
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Bounded<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = Response<BoundedBody<ResBody>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let watch = is_watch(&request);
        let bound = self.bound.clone();
        let deadline = bound.limit.and_then(|limit| Instant::now().checked_add(limit));
        let answer = self.inner.call(request);
        Box::pin(async move {
            let answered = match deadline {
                Some(deadline) => tokio::time::timeout_at(deadline, answer).await,
                None => Ok(answer.await),
            };
            let response = match answered {
                Ok(Ok(response)) => response,
                Ok(Err(err)) => return Err(bound.unreachable(err.into())),
                Err(_) => return Err(Box::new(bound.timed_out())),
            };
            let deadline =
                deadline.filter(|_| !watch).map(|d| Box::pin(tokio::time::sleep_until(d)));
            Ok(response.map(|inner| BoundedBody { inner, deadline, bound }))
        })
    }
}

/// A response body that must be complete by the request's deadline (none for a watch).
pub struct BoundedBody<B> {
    inner: B,
    deadline: Option<Pin<Box<Sleep>>>,
    bound: RequestBound,
}

impl<B> Body for BoundedBody<B>
where
    B: Body + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, BoxError>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        match self.deadline.as_mut().map(|d| d.as_mut().poll(cx)) {
            Some(Poll::Ready(())) => Poll::Ready(Some(Err(Box::new(self.bound.timed_out())))),
            _ => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watches_are_told_by_their_query() {
        let request = |uri: &str| Request::get(uri).body(()).unwrap();
        assert!(is_watch(&request("/apis/apps/v1/deployments?watch=true&resourceVersion=5")));
        assert!(is_watch(&request("/api/v1/pods?fieldSelector=x&watch=1")));
        assert!(!is_watch(&request("/api/v1/pods?limit=500")));
        assert!(!is_watch(&request("/api/v1/namespaces/default/pods/watch-me")));
    }
}
