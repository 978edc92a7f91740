//! Service ports, played the way kube-proxy plays them: each connection goes to one Ready pod
//! whose process backs the Service (round robin), so during a rollout both generations
//! answer, and a pod that stops being a backend gets no new connections.
//!
//! Two kinds:
//! - a **local port** (127.0.0.1, a free port) for the `ExternalName` Services of extension API
//!   servers, which the aggregator resolves to `localhost:<port>`. It listens all the time (its
//!   port is written into the Service and APIService); with no Ready pod a connection is closed
//!   at once;
//! - a **ClusterIP port** (`<clusterIP>:<port>`, the ClusterIP from the harness's loopback
//!   service range) for Services the kube-apiserver dials itself, such as admission webhooks. It
//!   listens only while a Ready pod backs it, so without one a connection is refused, as with
//!   kube-proxy's reject rule for a Service without endpoints.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

use super::process::EventLog;

/// One Service port.
pub struct ServiceProxy {
    namespace: String,
    selector: BTreeMap<String, String>,
    addr: SocketAddr,
    /// Listen only while there are backends (ClusterIP ports).
    on_demand: bool,
    /// `(pod uid, process port)` of the Ready pods.
    backends: Mutex<Vec<(String, u16)>>,
    next: AtomicUsize,
    task: Mutex<Option<AbortHandle>>,
}

impl ServiceProxy {
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    fn selects(&self, pod: &Pod) -> bool {
        pod.namespace().as_deref() == Some(self.namespace.as_str())
            && self.selector.iter().all(|(k, v)| pod.labels().get(k) == Some(v))
    }

    fn pick(&self) -> Option<u16> {
        let backends = self.backends.lock().unwrap();
        if backends.is_empty() {
            return None;
        }
        Some(backends[self.next.fetch_add(1, Ordering::SeqCst) % backends.len()].1)
    }

    /// Accepts on `listener` until aborted, forwarding to a backend's process on 127.0.0.1.
    fn serve(self: &Arc<Self>, listener: TcpListener) {
        let proxy = Arc::clone(self);
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let Some(port) = proxy.pick() else { continue };
                tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", port)).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        *self.task.lock().unwrap() = Some(task.abort_handle());
    }

    fn close(&self) {
        if let Some(task) = self.task.lock().unwrap().take() {
            task.abort();
        }
    }
}

/// Every Service port of one environment; the runtimes of process-backed pods add and
/// remove their backends.
pub struct ServiceProxies {
    events: Arc<EventLog>,
    proxies: Mutex<Vec<Arc<ServiceProxy>>>,
}

impl ServiceProxies {
    pub fn new(events: Arc<EventLog>) -> Arc<Self> {
        Arc::new(ServiceProxies { events, proxies: Mutex::new(Vec::new()) })
    }

    fn add(
        &self,
        addr: SocketAddr,
        namespace: &str,
        selector: &BTreeMap<String, String>,
        on_demand: bool,
    ) -> Arc<ServiceProxy> {
        let proxy = Arc::new(ServiceProxy {
            namespace: namespace.to_string(),
            selector: selector.clone(),
            addr,
            on_demand,
            backends: Mutex::new(Vec::new()),
            next: AtomicUsize::new(0),
            task: Mutex::new(None),
        });
        self.proxies.lock().unwrap().push(Arc::clone(&proxy));
        proxy
    }

    /// Opens a local port for a Service selecting `selector` in `namespace` (must run inside
    /// the environment's runtime).
    pub async fn open_local(
        &self,
        namespace: &str,
        selector: &BTreeMap<String, String>,
    ) -> Arc<ServiceProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binding a Service port");
        let addr = listener.local_addr().expect("a bound port's address");
        let proxy = self.add(addr, namespace, selector, false);
        proxy.serve(listener);
        proxy
    }

    /// The ClusterIP port `addr` of a Service selecting `selector` in `namespace`; made on
    /// first use (a Service seen again, e.g. by the next pod, keeps its port).
    pub fn cluster_ip(
        &self,
        addr: SocketAddr,
        namespace: &str,
        selector: &BTreeMap<String, String>,
    ) {
        let known = self.proxies.lock().unwrap().iter().any(|p| p.addr == addr);
        if !known {
            self.add(addr, namespace, selector, true);
            self.events.line(format!("service: {namespace} ClusterIP port {addr} backed by pods"));
        }
    }

    /// Whether a local or ClusterIP port selects `pod`.
    pub fn selects(&self, pod: &Pod) -> bool {
        self.proxies.lock().unwrap().iter().any(|p| p.selects(pod))
    }

    /// `pod` is Ready and its process listens on 127.0.0.1:`port`: every port selecting it
    /// forwards to it (a ClusterIP port starts listening).
    pub fn add_backend(&self, pod: &Pod, port: u16) {
        let uid = pod.uid().unwrap_or_default();
        for proxy in self.proxies.lock().unwrap().iter().filter(|p| p.selects(pod)) {
            let first = {
                let mut backends = proxy.backends.lock().unwrap();
                backends.push((uid.clone(), port));
                backends.len() == 1
            };
            if first && proxy.on_demand {
                match std::net::TcpListener::bind(proxy.addr)
                    .and_then(|l| l.set_nonblocking(true).map(|()| l))
                    .and_then(TcpListener::from_std)
                {
                    Ok(listener) => proxy.serve(listener),
                    Err(e) => {
                        self.events.line(format!("service: cannot listen on {}: {e}", proxy.addr))
                    }
                }
            }
        }
    }

    /// The pod with this uid is no backend any more (a ClusterIP port without backends stops
    /// listening; connections already forwarded go on).
    pub fn remove_backend(&self, uid: &str) {
        for proxy in self.proxies.lock().unwrap().iter() {
            let mut backends = proxy.backends.lock().unwrap();
            let before = backends.len();
            backends.retain(|(u, _)| u != uid);
            if proxy.on_demand && before > 0 && backends.is_empty() {
                proxy.close();
            }
        }
    }

    /// Closes every port.
    pub fn shutdown(&self) {
        self.proxies.lock().unwrap().iter().for_each(|p| p.close());
    }
}
