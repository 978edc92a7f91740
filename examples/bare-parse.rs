//! The floor `scripts/bench-status.sh` measures `status` against: one process that reads every
//! `*.crt` file under the folders given and parses it with OpenSSL, the library `status` uses,
//! and does nothing else (no keys, chains, webhook values, output). It prints how many
//! certificates it parsed, the earliest notAfter (so the work cannot be optimised away) and the
//! seconds the reading and parsing took inside the process: the floor, without process start
//! and without OpenSSL's one-time set-up (a first parse before the clock starts).
//!
//! Usage: bare-parse DIR...

use std::path::{Path, PathBuf};

fn crt_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            crt_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "crt") {
            out.push(path);
        }
    }
}

fn main() {
    let mut files = Vec::new();
    for dir in std::env::args().skip(1) {
        crt_files(Path::new(&dir), &mut files);
    }
    let parse = |file: &PathBuf| {
        let pem = std::fs::read(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        openssl::x509::X509::from_pem(&pem).unwrap_or_else(|e| panic!("{}: {e}", file.display()))
    };
    let epoch = openssl::asn1::Asn1Time::from_unix(0).expect("epoch is a valid time");
    if let Some(first) = files.first() {
        parse(first);
    }
    let start = std::time::Instant::now();
    let mut earliest = i64::MAX;
    for file in &files {
        let cert = parse(file);
        let diff = epoch.diff(cert.not_after()).expect("readable notAfter");
        earliest = earliest.min(i64::from(diff.days) * 86_400 + i64::from(diff.secs));
    }
    let seconds = start.elapsed().as_secs_f64();
    println!(
        "{} certificates, earliest notAfter {earliest}, parsed in {seconds:.6} s",
        files.len()
    );
}
