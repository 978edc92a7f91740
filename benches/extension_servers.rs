//! Benchmark: `kubectl certrotate extension-servers --restart` against the loop an operator
//! would type (`kubectl rollout restart X && kubectl rollout status X`, one workload after the
//! other), on 20 extension API servers of a real control plane whose pods become Ready 1 s
//! after they start. Also counts the API requests our command makes, from the API server's
//! `apiserver_request_total`. Prints figures; asserts nothing.
//!
//! Run: `source ~/.cache/kubectl-certrotate/testenv.env && cargo bench --bench extension_servers`
//! (scripts/provision.sh writes that file); add `-- --controller-qps 200` to lift the
//! controller manager's default client rate of 20 requests/s.

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use support::{EnvOptions, ExtApiServer, KubeletConfig, TestEnv};

const SERVERS: usize = 20;
const NAMESPACES: [&str; 2] = ["kube-system", "monitoring"];

/// `(verb, resource)` -> requests, summed over codes and scopes, subresources excluded.
fn request_counts(env: &TestEnv) -> BTreeMap<(String, String), f64> {
    let text = env.kubectl().args(["get", "--raw", "/metrics"]).ok().stdout;
    let mut counts = BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with("apiserver_request_total{")) {
        let Some((labels, value)) = line.rsplit_once(' ') else { continue };
        let label = |name: &str| {
            let key = format!("{name}=\"");
            labels.find(&key).map(|at| {
                let rest = &labels[at + key.len()..];
                rest[..rest.find('"').unwrap_or(0)].to_string()
            })
        };
        if label("subresource").is_some_and(|s| !s.is_empty()) {
            continue;
        }
        let (Some(verb), Some(resource)) = (label("verb"), label("resource")) else { continue };
        *counts.entry((verb, resource)).or_insert(0.0) += value.parse::<f64>().unwrap_or(0.0);
    }
    counts
}

fn diff(
    after: &BTreeMap<(String, String), f64>,
    before: &BTreeMap<(String, String), f64>,
) -> BTreeMap<(String, String), f64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, v)| *v > 0.0)
        .collect()
}

fn main() {
    // `cargo test --all-targets` runs bench targets too, without `--bench`: a benchmark is not
    // a test, so it only says how to run it there.
    if !std::env::args().any(|a| a == "--bench") {
        println!(
            "extension_servers benchmark: run it with `cargo bench --bench extension_servers`"
        );
        return;
    }
    // `--controller-qps N` raises kube-controller-manager's client rate (default 20/s), which
    // paces how many rollouts the cluster itself can progress at once.
    let args: Vec<String> = std::env::args().collect();
    let controller_api_qps = args
        .iter()
        .position(|a| a == "--controller-qps")
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse().expect("--controller-qps takes a number"));
    let kubelet = KubeletConfig { ready_delay: Duration::from_secs(1), ..Default::default() };
    let options = EnvOptions { kubelet, controller_api_qps, ..Default::default() };
    let env = TestEnv::start_with("bench-ext", options);
    env.kubectl().args(["create", "namespace", "monitoring"]).ok();
    let servers: Vec<ExtApiServer> = (0..SERVERS)
        .map(|i| ExtApiServer {
            namespace: NAMESPACES[i % NAMESPACES.len()].into(),
            name: format!("ext-{i:02}"),
            group: format!("ext{i:02}.example.com"),
            version: "v1".into(),
            replicas: 1,
        })
        .collect();
    for server in &servers {
        env.deploy_ext_apiserver(server);
    }
    for server in &servers {
        env.wait_apiservice(&server.apiservice(), true, Duration::from_secs(300));
    }
    env.step("20 extension servers available");

    // What the rest of the control plane (controllers, simulated kubelet) asks for on its own
    // in a comparable quiet period, to tell its requests from ours.
    let quiet = Duration::from_secs(10);
    let before_idle = request_counts(&env);
    std::thread::sleep(quiet);
    let idle = diff(&request_counts(&env), &before_idle);

    let before = request_counts(&env);
    let started = Instant::now();
    let ours = env.certrotate().args(["extension-servers", "--restart", "-y", "-o", "json"]).run();
    let ours_time = started.elapsed();
    assert!(ours.success(), "our restart failed: {ours}");
    // Watches are counted when they end, which is when our process exits.
    std::thread::sleep(Duration::from_secs(2));
    let ours_requests = diff(&request_counts(&env), &before);
    let report: serde_json::Value = serde_json::from_str(&ours.stdout).unwrap();
    let slowest = report["restarts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["seconds"].as_f64().unwrap())
        .fold(0.0, f64::max);

    let started = Instant::now();
    for server in &servers {
        let workload = format!("deployment/{}", server.name);
        env.kubectl().args(["-n", &server.namespace, "rollout", "restart", &workload]).ok();
        env.kubectl()
            .args(["-n", &server.namespace, "rollout", "status", &workload, "--timeout=300s"])
            .ok();
    }
    let loop_time = started.elapsed();

    println!();
    println!("extension-servers --restart vs. sequential kubectl, {SERVERS} extension servers,");
    let qps = controller_api_qps.map_or("default 20".into(), |q| q.to_string());
    println!(
        "pods Ready 1 s after start, {} namespaces, 2 cores, controller-manager API rate {qps}/s",
        NAMESPACES.len()
    );
    println!("{:<44} {:>10}", "case", "seconds");
    println!(
        "{:<44} {:>10.1}",
        "kubectl certrotate extension-servers --restart",
        ours_time.as_secs_f64()
    );
    println!("{:<44} {:>10.1}", "  of which the slowest rollout", slowest);
    println!(
        "{:<44} {:>10.1}",
        "kubectl rollout restart + status, one by one",
        loop_time.as_secs_f64()
    );
    println!("speed-up: {:.1}x", loop_time.as_secs_f64() / ours_time.as_secs_f64());
    println!();
    println!("API requests during our run (apiserver_request_total), next to what the rest of");
    println!("the control plane made in a quiet {}s:", quiet.as_secs());
    println!("{:<8} {:<16} {:>6} {:>12}", "verb", "resource", "run", "quiet 10s");
    let interesting =
        ["apiservices", "services", "deployments", "daemonsets", "statefulsets", "pods"];
    for ((verb, resource), count) in &ours_requests {
        if !interesting.contains(&resource.as_str()) || verb == "UPDATE" {
            continue;
        }
        let quiet_count = idle.get(&(verb.clone(), resource.clone())).copied().unwrap_or(0.0);
        println!("{verb:<8} {resource:<16} {count:>6} {quiet_count:>12}");
    }
}
