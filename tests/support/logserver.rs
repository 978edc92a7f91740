//! The simulated kubelet's HTTPS endpoint: `kubectl logs` and the `pods/log` API reach it
//! through the apiserver at the node's InternalIP and `kubeletEndpoint` port, path
//! `/containerLogs/<namespace>/<pod>/<container>`.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use openssl::ssl::{SslAcceptor, SslFiletype, SslMethod};

use super::pki::CertFiles;

/// Finds the log text of `(namespace, pod, container)`; `None` is a 404.
pub type LogLookup = Arc<dyn Fn(&str, &str, &str) -> Option<String> + Send + Sync>;

pub struct LogServer {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl LogServer {
    /// Listens on a free port of 127.0.0.1 with `cert` (the apiserver does not verify it: no
    /// `--kubelet-certificate-authority`).
    pub fn start(cert: &CertFiles, lookup: LogLookup) -> LogServer {
        let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server()).unwrap();
        b.set_certificate_chain_file(&cert.cert).unwrap();
        b.set_private_key_file(&cert.key, SslFiletype::PEM).unwrap();
        let acceptor = Arc::new(b.build());
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the kubelet log port");
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (acceptor, lookup) = (Arc::clone(&acceptor), Arc::clone(&lookup));
                std::thread::spawn(move || serve(&acceptor, conn, &lookup));
            }
        });
        LogServer { port, stop, thread: Some(thread) }
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for LogServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept so the thread sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(acceptor: &SslAcceptor, conn: TcpStream, lookup: &LogLookup) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let Ok(stream) = acceptor.accept(conn) else { return };
    let mut reader = BufReader::new(stream);
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    // Skip the headers; there is no body on a GET.
    loop {
        let mut header = String::new();
        match reader.read_line(&mut header) {
            Ok(0) | Err(_) => break,
            Ok(_) if header.trim().is_empty() => break,
            Ok(_) => {}
        }
    }
    let target = request_line.split_whitespace().nth(1).unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let found = match parts.as_slice() {
        ["containerLogs", ns, pod, container] => lookup(ns, pod, container),
        _ => None,
    };
    let (status, body) = match found {
        Some(text) => ("200 OK", tail(&text, query)),
        None => ("404 Not Found", format!("no logs for {path}\n")),
    };
    let stream = reader.get_mut();
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.flush();
    let _ = stream.shutdown();
}

/// Honours `tailLines=N`, the one log option a CA check would use.
fn tail(text: &str, query: &str) -> String {
    let n = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("tailLines="))
        .and_then(|v| v.parse::<usize>().ok());
    match n {
        Some(n) => {
            let lines: Vec<&str> = text.lines().collect();
            let mut out = lines[lines.len().saturating_sub(n)..].join("\n");
            if !out.is_empty() {
                out.push('\n');
            }
            out
        }
        None => text.to_string(),
    }
}
