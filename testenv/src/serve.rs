//! What the test servers (`ext-apiserver`, `admission-webhook`) share: flag parsing, klog-style
//! logging, exit on SIGTERM, and HTTPS/1.1 with keep-alive over openssl (the kube-apiserver's
//! Go client reuses connections; no HTTP/2 is offered, so it speaks 1.1).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use openssl::ssl::{SslAcceptor, SslStream};

use crate::klog_header;

/// `--flag value` and `--flag=value` pairs of the command line (every flag of these servers
/// takes a value), in order.
pub fn flags() -> Result<Vec<(String, String)>> {
    let mut args = std::env::args().skip(1);
    let mut pairs = Vec::new();
    while let Some(arg) = args.next() {
        let pair = match arg.split_once('=') {
            Some((name, value)) => (name.to_string(), value.to_string()),
            None => {
                let value = args.next().with_context(|| format!("{arg} needs a value"))?;
                (arg, value)
            }
        };
        pairs.push(pair);
    }
    Ok(pairs)
}

/// One klog-style line on stderr (the pod log).
pub fn log(severity: char, file_line: &str, msg: &str) {
    eprintln!("{}{msg}", klog_header(severity, file_line));
}

/// SIGTERM/SIGINT: log and exit 0 at once, as a pod's process stopped by the kubelet.
pub fn exit_on_signal() -> Result<()> {
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])?;
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            log('I', "secure_serving.go:241", &format!("Stopped listening (signal {sig})"));
            std::process::exit(0);
        }
    });
    Ok(())
}

/// Accepts TLS connections, one thread each, and hands every finished handshake to `serve`.
/// Errors of a connection are logged like Go's http server does, never fatal.
pub fn serve_tls<F>(listener: TcpListener, acceptor: SslAcceptor, serve: F) -> Result<()>
where
    F: Fn(SslStream<TcpStream>) -> Result<()> + Send + Sync + 'static,
{
    log('I', "secure_serving.go:197", &format!("Serving securely on {}", listener.local_addr()?));
    let (acceptor, serve) = (Arc::new(acceptor), Arc::new(serve));
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let (acceptor, serve) = (Arc::clone(&acceptor), Arc::clone(&serve));
        std::thread::spawn(move || {
            let peer = conn.peer_addr().map(|a| a.to_string()).unwrap_or_default();
            let outcome = conn
                .set_read_timeout(Some(Duration::from_secs(120)))
                .context("setting a read timeout")
                .and_then(|()| {
                    acceptor.accept(conn).map_err(|e| anyhow::anyhow!("TLS handshake error: {e}"))
                })
                .and_then(|stream| serve(stream));
            if let Err(e) = outcome {
                log('I', "log.go:184", &format!("http: connection from {peer}: {e:#}"));
            }
        });
    }
    Ok(())
}

/// One HTTP request, body included.
pub struct Request {
    pub method: String,
    /// The path without the query.
    pub path: String,
    pub body: Vec<u8>,
}

/// Serves HTTP/1.1 requests on one connection until the client closes it (or asks to):
/// `handle` answers each with a status and a body (JSON if it starts with `{`).
pub fn serve_http<S: Read + Write>(
    stream: S,
    mut handle: impl FnMut(&Request) -> (u16, String),
) -> Result<()> {
    let mut reader = BufReader::new(stream);
    loop {
        // An idle keep-alive connection that times out or is dropped by the client is a
        // normal end, not worth a log line.
        let Ok(Some((head, close))) = read_head(&mut reader) else {
            return Ok(());
        };
        let mut body = vec![0; head.body_len];
        reader.read_exact(&mut body).context("reading the request body")?;
        let request = Request { method: head.method, path: head.path, body };
        let (status, body) = handle(&request);
        let ctype =
            if body.starts_with('{') { "application/json" } else { "text/plain; charset=utf-8" };
        let head = format!(
            "HTTP/1.1 {status} {}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n{}\r\n",
            reason(status),
            body.len(),
            if close { "Connection: close\r\n" } else { "" }
        );
        let s = reader.get_mut();
        s.write_all(head.as_bytes())?;
        s.write_all(body.as_bytes())?;
        s.flush()?;
        if close {
            return Ok(());
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Error",
    }
}

struct Head {
    method: String,
    path: String,
    body_len: usize,
}

/// Reads one request head; `None` at a clean end of the connection. The flag says whether to
/// close after replying.
fn read_head<R: BufRead>(r: &mut R) -> Result<Option<(Head, bool)>> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("/");
    let path = target.split('?').next().unwrap_or(target).to_string();
    let http10 = parts.next() == Some("HTTP/1.0");
    let (mut body_len, mut close) = (0usize, http10);
    for _ in 0..200 {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 || h.trim().is_empty() {
            return Ok(Some((Head { method, path, body_len }, close)));
        }
        if let Some((k, v)) = h.split_once(':') {
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
            match k.as_str() {
                "content-length" => body_len = v.parse().context("bad Content-Length")?,
                "connection" => close = v.eq_ignore_ascii_case("close"),
                // Go sends bodies of known length with Content-Length; nothing here needs more.
                "transfer-encoding" => bail!("Transfer-Encoding {v} is not supported"),
                _ => {}
            }
        }
    }
    bail!("too many header lines")
}
