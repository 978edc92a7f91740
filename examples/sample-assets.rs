//! Writes a sample Lokomotive asset dir for the demo and the benchmark.
//!
//! Usage: sample-assets DIR [--expired NAME]... [--expiring NAME]... [--not-yet-valid NAME]...
//!        [--no-aggregation] [--api-server URL]
//! NAME is a credential name as `kubectl certrotate status` prints it (e.g. aggregation-ca).

#[path = "../tests/common/sample_assets.rs"]
#[allow(dead_code)]
mod sample_assets;

use sample_assets::{SampleOptions, Window, write_sample_assets};

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(dir) = args.next() else {
        eprintln!(
            "usage: sample-assets DIR [--expired NAME]... [--expiring NAME]... [--not-yet-valid NAME]... [--no-aggregation] [--api-server URL]"
        );
        std::process::exit(2);
    };
    let mut opts = SampleOptions::default();
    while let Some(flag) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--expired" => opts = opts.with(&value(), Window::expired()),
            "--expiring" => opts = opts.with(&value(), Window::expiring()),
            "--not-yet-valid" => opts = opts.with(&value(), Window::not_yet_valid()),
            "--api-server" => opts.api_server = Some(value()),
            "--no-aggregation" => opts.aggregation = false,
            other => {
                eprintln!("unknown flag {other}");
                std::process::exit(2);
            }
        }
    }
    if let Err(err) = write_sample_assets(std::path::Path::new(&dir), &opts) {
        eprintln!("cannot write {dir}: {err}");
        std::process::exit(1);
    }
    println!("wrote sample asset dir {dir}");
}
