//! Benchmark: `kubectl certrotate renew -y` against the same renewal typed by hand, the way
//! lokoctl's `cluster certificate rotate` does it (`support::renewal::by_hand`: lokoctl's 19
//! taints, `terraform apply -parallelism=1`, `lokoctl cluster apply --upgrade-kubelets`, the
//! wait for the tokens, the restarts one by one). Two environments, one after the other and
//! never at once, set up alike: a real control plane with the kube-apiserver, kubernetes,
//! kubelet and lokomotive charts and metrics-server as an extension API server. On both, a
//! prober asks `GET /readyz` every 100 ms with the observer's token (which the renewal does
//! not change) and records when the API did not answer. Prints per group the tool's seconds
//! (its `-o json`) and the typed ones, the totals, the outages and the load average; asserts
//! only that both sides renewed (kube-apiserver serves the new apiserver.crt, every token
//! holds the new CA).
//!
//! Run: `source ~/.cache/kubectl-certrotate/testenv.env && cargo bench --bench renew`
//! (scripts/provision.sh writes that file); `-- --typed-first` runs the typed side first.

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
use support::renewal::{self, Timed};
use support::{ExtApiServer, TestEnv, file_fingerprints};

const PHASES: [&str; 8] =
    ["backup", "taint", "certificates", "etcd", "control-plane", "tokens", "restart", "verify"];
/// How often the prober asks, and how long one answer may take before it counts as none.
const PROBE_EVERY: Duration = Duration::from_millis(100);
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// One `GET /readyz`: when it was sent and whether the API answered 200.
struct Probe {
    at: Instant,
    ok: bool,
}

/// A thread asking `GET /readyz` every [`PROBE_EVERY`] until stopped.
struct Prober {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Vec<Probe>>,
}

impl Prober {
    /// Probes the API at `port` with the bearer token of the observer kubeconfig (TLS not
    /// verified: the serving certificate changes during the renewal).
    fn start(port: u16, token: String) -> Prober {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let mut builder = SslConnector::builder(SslMethod::tls_client()).unwrap();
        builder.set_verify(SslVerifyMode::NONE);
        let connector = builder.build();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let thread = std::thread::spawn(move || {
            let mut probes = Vec::new();
            let mut next = Instant::now();
            while !stopped.load(Ordering::SeqCst) {
                let at = Instant::now();
                let ok = readyz(&connector, addr, &token).is_ok_and(|status| status == 200);
                probes.push(Probe { at, ok });
                next += PROBE_EVERY;
                // A probe that took longer than the period is followed by the next at once.
                next = next.max(Instant::now());
                std::thread::sleep(next - Instant::now());
            }
            probes
        });
        Prober { stop, thread }
    }

    fn stop(self) -> Vec<Probe> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().expect("the prober thread")
    }
}

/// The HTTP status of one `GET /readyz`, each step bounded by [`PROBE_TIMEOUT`].
fn readyz(connector: &SslConnector, addr: SocketAddr, token: &str) -> Result<u16, String> {
    let tcp = TcpStream::connect_timeout(&addr, PROBE_TIMEOUT).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(PROBE_TIMEOUT)).map_err(|e| e.to_string())?;
    tcp.set_write_timeout(Some(PROBE_TIMEOUT)).map_err(|e| e.to_string())?;
    let mut tls = connector.connect("127.0.0.1", tcp).map_err(|e| e.to_string())?;
    let request = format!(
        "GET /readyz HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    );
    tls.write_all(request.as_bytes()).map_err(|e| e.to_string())?;
    let mut head = [0u8; 12];
    tls.read_exact(&mut head).map_err(|e| e.to_string())?;
    // "HTTP/1.1 200"
    std::str::from_utf8(&head[9..12]).ok().and_then(|s| s.parse().ok()).ok_or("no status".into())
}

/// The token of the observer kubeconfig (JSON, written by the harness).
fn observer_token(env: &TestEnv) -> String {
    let text = std::fs::read_to_string(env.observer_kubeconfig()).unwrap();
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    doc["users"][0]["user"]["token"].as_str().expect("the observer's token").to_string()
}

/// A time the API did not answer: from the first failed probe to the next answered one.
struct Outage {
    /// Seconds after the side began.
    from: f64,
    seconds: f64,
    /// The group it began in.
    group: String,
}

/// What one side did.
struct Side {
    /// Per group: seconds and start (seconds after the side began).
    groups: BTreeMap<String, (f64, f64)>,
    wall: f64,
    outages: Vec<Outage>,
    probes: usize,
    apiserver_restarts: u32,
    etcd_restarts: u32,
    load: (String, String),
}

impl Side {
    fn down(&self) -> f64 {
        self.outages.iter().map(|o| o.seconds).sum()
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// The same start for both sides.
fn setup(name: &str) -> TestEnv {
    let env = TestEnv::start(name);
    renewal::install_control_plane(&env);
    env
}

/// The outages in `probes`, each placed in the group (`groups`: name, start seconds) it
/// began in.
fn outages(probes: &[Probe], began: Instant, groups: &BTreeMap<String, (f64, f64)>) -> Vec<Outage> {
    let group_at = |from: f64| {
        groups
            .iter()
            .filter(|(_, (_, start))| *start <= from)
            .max_by(|a, b| a.1.1.total_cmp(&b.1.1))
            .map_or("before the first".to_string(), |(name, _)| name.clone())
    };
    let mut found = Vec::new();
    let mut down_since: Option<Instant> = None;
    for probe in probes {
        match (probe.ok, down_since) {
            (false, None) => down_since = Some(probe.at),
            (true, Some(since)) => {
                let from = since.duration_since(began).as_secs_f64();
                found.push(Outage {
                    from,
                    seconds: probe.at.duration_since(since).as_secs_f64(),
                    group: group_at(from),
                });
                down_since = None;
            }
            _ => {}
        }
    }
    assert!(down_since.is_none(), "the API did not answer at the end of the side");
    found
}

/// Runs `renewal` on `env` with the prober beside it and the restart counters around it.
fn measure(env: &TestEnv, renewal: impl FnOnce(Instant) -> BTreeMap<String, (f64, f64)>) -> Side {
    let token = observer_token(env);
    let old_ca = std::fs::read(env.assets.tls("ca.crt")).unwrap();
    let (apiserver, etcd) = (env.apiserver.restarts(), env.etcd.restarts());
    let before = loadavg();
    let prober = Prober::start(env.assets.api_port, token);
    // A second of answers first, so an outage at the start shows.
    std::thread::sleep(Duration::from_secs(1));
    let began = Instant::now();
    let groups = renewal(began);
    let wall = began.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(1));
    let probes = prober.stop();
    let after = loadavg();
    check_renewed(env, &old_ca);
    Side {
        outages: outages(&probes, began, &groups),
        groups,
        wall,
        probes: probes.len(),
        apiserver_restarts: env.apiserver.restarts() - apiserver,
        etcd_restarts: env.etcd.restarts() - etcd,
        load: (before, after),
    }
}

/// Both sides must end renewed: a new kube CA certificate, kube-apiserver serving the new
/// apiserver.crt, every token holding the new CA.
fn check_renewed(env: &TestEnv, old_ca: &[u8]) {
    let new_ca = std::fs::read(env.assets.tls("ca.crt")).unwrap();
    assert_ne!(new_ca, old_ca, "{}: tls/ca.crt was not renewed", env.name);
    assert_eq!(
        env.apiserver_serving_fingerprint().unwrap(),
        file_fingerprints(&env.assets.tls("apiserver.crt"))[0],
        "{}: kube-apiserver does not serve the new apiserver.crt",
        env.name
    );
    let left = renewal::tokens_without(env, &new_ca).unwrap();
    assert!(left.is_empty(), "{}: tokens without the new CA: {left:?}", env.name);
}

fn tool_side() -> Side {
    let env = setup("bench-renew-tool");
    let side = measure(&env, |began| {
        env.step("kubectl certrotate renew -y -o json");
        let out = env
            .certrotate()
            .arg("renew")
            .args(env.renew_etcd_flags())
            .args(["-y", "-o", "json"])
            .timeout(Duration::from_secs(900))
            .run();
        assert!(out.success(), "kubectl certrotate renew failed: {out}");
        let report: serde_json::Value = serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("the tool's -o json is not JSON ({e}): {out}"));
        // The phases run one after the other; what the tool does before the first (start,
        // checks, lock) is the wall time they leave over.
        let phases = report["phases"].as_array().expect("phases[]");
        let seconds = |p: &serde_json::Value| p["seconds"].as_f64().unwrap_or(f64::NAN);
        let mut start = began.elapsed().as_secs_f64() - phases.iter().map(seconds).sum::<f64>();
        let mut groups = BTreeMap::new();
        for phase in phases {
            let name = phase["name"].as_str().unwrap_or("?").to_string();
            // `tokens` is found done when kube-controller-manager republished every token
            // before the phase looked.
            let result = phase["result"].as_str().unwrap_or("?");
            assert!(["done", "already-done"].contains(&result), "phase {name}: {phase}");
            groups.insert(name, (seconds(phase), start));
            start += seconds(phase);
        }
        groups
    });
    env.step("tool side done");
    side
}

fn typed_side() -> Side {
    let env = setup("bench-renew-typed");
    let side = measure(&env, |began| {
        renewal::by_hand(&env, &[ExtApiServer::metrics_server()])
            .into_iter()
            .map(|Timed { group, started, seconds }| {
                (group.to_string(), (seconds, started.duration_since(began).as_secs_f64()))
            })
            .collect()
    });
    env.step("typed side done");
    side
}

fn ratio(tool: f64, typed: f64) -> String {
    if typed >= 0.05 { format!("{:.2}x", tool / typed) } else { "-".into() }
}

fn print_outages(name: &str, side: &Side) {
    let list: Vec<String> = side
        .outages
        .iter()
        .map(|o| format!("{:.1} s at {:.1} s ({})", o.seconds, o.from, o.group))
        .collect();
    println!(
        "{name}: API down {:.1} s in {} outage(s) [{}]; {} probes; kube-apiserver restarted {} time(s), etcd {}",
        side.down(),
        side.outages.len(),
        list.join(", "),
        side.probes,
        side.apiserver_restarts,
        side.etcd_restarts
    );
}

fn main() {
    // `cargo test --all-targets` runs bench targets too, without `--bench`: a benchmark is not
    // a test, so it only says how to run it there.
    if !std::env::args().any(|a| a == "--bench") {
        println!("renew benchmark: run it with `cargo bench --bench renew`");
        return;
    }
    let typed_first = std::env::args().any(|a| a == "--typed-first");
    let (tool, typed) = if typed_first {
        let typed = typed_side();
        (tool_side(), typed)
    } else {
        let tool = tool_side();
        (tool, typed_side())
    };

    println!();
    println!(
        "renew: kubectl certrotate renew -y vs. the steps typed by hand, {}",
        if typed_first { "typed first" } else { "tool first" }
    );
    println!("{:<14} {:>9} {:>9}", "group", "tool s", "typed s");
    let (mut tool_sum, mut typed_sum) = (0.0, 0.0);
    for phase in PHASES {
        let t = tool.groups.get(phase).map_or(f64::NAN, |g| g.0);
        let s = typed.groups.get(phase).map(|g| g.0);
        tool_sum += t;
        typed_sum += s.unwrap_or(0.0);
        let s = s.map_or("-".into(), |s| format!("{s:.2}"));
        println!("{phase:<14} {t:>9.2} {s:>9}");
    }
    println!("{:<14} {tool_sum:>9.2} {typed_sum:>9.2}", "groups");
    println!(
        "{:<14} {:>9.2} {:>9.2} {:>9}",
        "total (wall)",
        tool.wall,
        typed.wall,
        ratio(tool.wall, typed.wall)
    );
    println!(
        "outside the groups: tool {:.2} s, typed {:.2} s",
        tool.wall - tool_sum,
        typed.wall - typed_sum
    );
    print_outages("tool", &tool);
    print_outages("typed", &typed);
    let verdict = if tool.wall <= typed.wall { "met" } else { "NOT met" };
    println!("aim tool <= typed (wall): {verdict} ({})", ratio(tool.wall, typed.wall));
    // The harness runs one controller: one kube-apiserver restart is the aim's allowance.
    let verdict = if tool.apiserver_restarts <= 1 { "met" } else { "NOT met" };
    println!(
        "aim API down no longer than one kube-apiserver restart per controller (1 controller): {verdict} (tool {} restart(s), {:.1} s down; typed {}, {:.1} s)",
        tool.apiserver_restarts,
        tool.down(),
        typed.apiserver_restarts,
        typed.down()
    );
    println!(
        "load average (1/5/15 min) before -> after: tool {} -> {}; typed {} -> {}",
        tool.load.0, tool.load.1, typed.load.0, typed.load.1
    );
}
