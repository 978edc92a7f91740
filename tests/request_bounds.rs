//! Every API request is bounded by `--request-timeout` (default 30 s, `0` for no limit): an API
//! server that accepts the connection and never answers — before TLS, or after it, never
//! sending a response — makes `status` and `extension-servers` give up within the bound, with a
//! message naming the server.

mod common;

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::sample_assets::{SampleOptions, write_sample_assets};
use common::{BIN, Run, run};

/// How a listener fails to answer.
#[derive(Clone, Copy, Debug)]
enum Silence {
    /// Accepts the TCP connection and never says a word (no TLS handshake).
    BeforeTls,
    /// Completes TLS with the asset dir's apiserver certificate, reads the request, never
    /// answers it.
    AfterTls,
}

/// Serves `listener` without ever answering, until the test process ends; returns whether it
/// has read an HTTP request (over TLS: the client got that far).
fn silent_server(listener: TcpListener, silence: Silence, assets: &Path) -> Arc<AtomicBool> {
    let tls = matches!(silence, Silence::AfterTls).then(|| {
        let tls = assets.join("cluster-assets/tls");
        let mut acceptor =
            openssl::ssl::SslAcceptor::mozilla_intermediate_v5(openssl::ssl::SslMethod::tls())
                .unwrap();
        acceptor.set_certificate_chain_file(tls.join("apiserver.crt")).unwrap();
        acceptor
            .set_private_key_file(tls.join("apiserver.key"), openssl::ssl::SslFiletype::PEM)
            .unwrap();
        acceptor.set_alpn_select_callback(|_, _| Ok(b"http/1.1"));
        acceptor.build()
    });
    let request_read = Arc::new(AtomicBool::new(false));
    let read = request_read.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let (tls, read) = (tls.clone(), read.clone());
            std::thread::spawn(move || hold(stream, tls, &read));
        }
    });
    request_read
}

/// Keeps one connection open without ever answering.
fn hold(stream: TcpStream, tls: Option<openssl::ssl::SslAcceptor>, request_read: &AtomicBool) {
    let mut buf = [0u8; 4096];
    match tls {
        None => {
            let mut stream = stream;
            while matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
        }
        Some(acceptor) => {
            let Ok(mut stream) = acceptor.accept(stream) else { return };
            while let Ok(n) = stream.read(&mut buf)
                && n > 0
            {
                if buf[..n].starts_with(b"GET ") {
                    request_read.store(true, Ordering::SeqCst);
                }
            }
        }
    }
}

/// An asset dir whose kubeconfig points at a silent server, and that server.
fn silent_cluster(dir: &Path, silence: Silence) -> (String, Arc<AtomicBool>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    let opts = SampleOptions { api_server: Some(url.clone()), ..Default::default() };
    write_sample_assets(dir, &opts).unwrap();
    (url, silent_server(listener, silence, dir))
}

fn timed(args: &[&str], home: &Path) -> (Run, Duration) {
    let started = Instant::now();
    let run = run(args, home);
    (run, started.elapsed())
}

fn assert_within(elapsed: Duration, bound: Duration, what: &str) {
    assert!(
        elapsed >= bound && elapsed < bound + Duration::from_secs(3),
        "{what}: returned after {elapsed:?}, the bound is {bound:?}"
    );
}

/// `status` and `extension-servers` (listing and `--restart`), run side by side against one
/// silent server with `extra` flags: each returns within `bound` and names the server.
fn check(silence: Silence, extra: &[&str], bound: Duration) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("assets");
    let (url, request_read) = silent_cluster(&dir, silence);
    let assets = dir.to_str().unwrap();
    let said = format!("{url} did not answer within {bound:?}");
    let commands: [&[&str]; 3] = [
        &["status", "-o", "json"],
        &["extension-servers"],
        &["extension-servers", "--restart", "-y"],
    ];
    let home = tmp.path();
    let runs: Vec<(Run, Duration)> = std::thread::scope(|scope| {
        let handles: Vec<_> = commands
            .iter()
            .map(|command| {
                let mut args = command.to_vec();
                args.extend(["--assets-dir", assets]);
                args.extend_from_slice(extra);
                scope.spawn(move || timed(&args, home))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (command, (run, elapsed)) in commands.iter().zip(&runs) {
        let case = format!("{silence:?} {extra:?} {command:?}");
        assert_within(*elapsed, bound, &case);
        let said_it = if command[0] == "status" {
            assert_eq!(run.code, 0, "{case}: the local rows are fine: {}", run.all());
            let cluster = &run.json()["reports"][0]["cluster"];
            assert_eq!(cluster["reached"], false, "{case}: {cluster:#}");
            cluster["error"].as_str().unwrap().to_string()
        } else {
            assert_eq!(run.code, 1, "{case}: {}", run.all());
            run.stderr.trim().to_string()
        };
        assert!(said_it.contains(&said), "{case}: {said_it}");
        eprintln!("{case}: returned after {elapsed:?}: {said_it}");
    }
    if matches!(silence, Silence::AfterTls) {
        assert!(request_read.load(Ordering::SeqCst), "the client sent its request over TLS");
    }
}

#[test]
fn a_server_that_never_answers_is_given_up_within_the_request_timeout() {
    for silence in [Silence::BeforeTls, Silence::AfterTls] {
        check(silence, &["--request-timeout", "2s"], Duration::from_secs(2));
    }
}

#[test]
fn the_default_request_timeout_is_30s() {
    check(Silence::AfterTls, &[], Duration::from_secs(30));
}

#[test]
fn request_timeout_0_means_no_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("assets");
    silent_cluster(&dir, Silence::AfterTls);
    let mut child = Command::new(BIN)
        .args(["status", "--assets-dir", dir.to_str().unwrap(), "--request-timeout", "0"])
        .env_remove("KUBECONFIG")
        .env("HOME", tmp.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Longer than any bound the tests above exercise, far shorter than forever.
    std::thread::sleep(Duration::from_secs(5));
    let still_waiting = child.try_wait().unwrap().is_none();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(still_waiting, "with --request-timeout 0, status waits for the server");
}
