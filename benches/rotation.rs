//! Benchmark: `kubectl certrotate aggregation --cleanup -y` against the seed's manual procedure
//! ("Rotating Aggregation CA private key" -> "If certificate did not expire yet", with the
//! optional cleanup), whose commands `benches/seed-rotation.sh` runs as written. Two
//! environments, one after the other and never at once, each set up the same way: a real
//! control plane, `lokoctl cluster apply --confirm` (the test double: terraform, then helm
//! installs kube-apiserver and lokomotive), and extension API servers (metrics-server and
//! more), all Available. Prints per phase the tool's seconds (from its `-o json`) and the
//! script's (timed around each section), the totals and the ratio; asserts only that both
//! sides rotated (the ConfigMap trusts only a new CA).
//!
//! Run: `source ~/.cache/kubectl-certrotate/testenv.env && cargo bench --bench rotation`
//! (scripts/provision.sh writes that file); `-- --servers N` deploys N extension servers
//! (default 3), `-- --script-first` runs the script's environment first.

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use support::{Cmd, ExtApiServer, Helm, TestEnv, Tools, file_fingerprints, wait_for};

const PHASES: [&str; 7] = ["backup", "ca", "bundle", "restart", "client", "apply", "cleanup"];
const NAMESPACES: [&str; 2] = ["monitoring", "observability"];
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/seed-rotation.sh");

/// What one side did, in seconds.
#[derive(Default)]
struct Side {
    phases: BTreeMap<String, f64>,
    wall: f64,
    /// Seconds after the side ended until every APIService was Available and answered a
    /// request through the aggregator again (the tool waits for that itself; the script not).
    until_served: f64,
    load: (String, String),
    notes: Vec<String>,
    /// The tool's commands the script does not run, timed alone (tool side only).
    extra: Vec<Extra>,
}

/// metrics-server, then `ext-N` serving `extN.example.com/v1` in the other namespaces.
fn servers(n: usize) -> Vec<ExtApiServer> {
    let mut servers = vec![ExtApiServer::metrics_server()];
    servers.extend((1..n).map(|i| ExtApiServer {
        namespace: NAMESPACES[(i - 1) % NAMESPACES.len()].into(),
        name: format!("ext-{i}"),
        group: format!("ext{i}.example.com"),
        version: "v1".into(),
        replicas: 1,
    }));
    servers
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// The same start for both sides: control plane, charts installed by the lokoctl double,
/// the extension servers Available.
fn setup(name: &str, servers: &[ExtApiServer]) -> TestEnv {
    let env = TestEnv::start(name);
    env.step(
        "lokoctl cluster apply --confirm (test double: terraform apply, helm installs the charts)",
    );
    env.lokoctl().args(["cluster", "apply", "--confirm"]).ok();
    for ns in NAMESPACES {
        env.kubectl().args(["create", "namespace", ns]).ok();
    }
    for server in servers {
        env.deploy_ext_apiserver(server);
    }
    for server in servers {
        env.wait_apiservice(&server.apiservice(), true, Duration::from_secs(300));
    }
    env.step(&format!("{} extension servers Available", servers.len()));
    env
}

/// Waits until every APIService is Available and answers through the aggregator; seconds.
fn until_served(env: &TestEnv, servers: &[ExtApiServer]) -> f64 {
    let started = Instant::now();
    for server in servers {
        env.wait_apiservice(&server.apiservice(), true, Duration::from_secs(300));
        let path = format!("/apis/{}/{}", server.group, server.version);
        wait_for(&format!("GET {path}"), Duration::from_secs(300), || {
            let out = env.kubectl().args(["get", "--raw", &path]).run();
            if out.success() { Ok(()) } else { Err(out.stderr) }
        });
    }
    started.elapsed().as_secs_f64()
}

/// Both sides must end where the seed's procedure ends: the ConfigMap trusting only the new
/// CA, which is the asset dir's.
fn check_rotated(env: &TestEnv, old_ca: &[String]) {
    let new_ca = file_fingerprints(&env.assets.tls("aggregation-ca.crt"));
    assert_ne!(new_ca, old_ca, "{}: tls/aggregation-ca.crt still holds the old CA", env.name);
    let trusted =
        wait_for("the ConfigMap trusting only the new CA", Duration::from_secs(120), || match env
            .auth_configmap_cas("requestheader-client-ca-file")
        {
            Ok(cas) if cas == new_ca => Ok(cas),
            Ok(cas) => Err(format!("trusts {} CA(s), not only the new one", cas.len())),
            Err(e) => Err(e),
        });
    assert_eq!(trusted, new_ca);
}

fn tool_side(servers: &[ExtApiServer]) -> Side {
    let env = setup("bench-rot-tool", servers);
    let old_ca = file_fingerprints(&env.assets.tls("aggregation-ca.crt"));
    let before = loadavg();
    env.step("kubectl certrotate aggregation --cleanup -y -o json");
    let started = Instant::now();
    let out = env.certrotate().args(["aggregation", "--cleanup", "-y", "-o", "json"]).run();
    let wall = started.elapsed().as_secs_f64();
    let after = loadavg();
    assert!(out.success(), "kubectl certrotate aggregation failed: {out}");
    let report: serde_json::Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("the tool's -o json is not JSON ({e}): {out}"));
    let mut side = Side { wall, load: (before, after), ..Default::default() };
    for phase in report["phases"].as_array().expect("phases[]") {
        let name = phase["name"].as_str().unwrap_or("?").to_string();
        let result = phase["result"].as_str().unwrap_or("?");
        assert_eq!(result, "done", "phase {name}: {phase}");
        side.phases.insert(name.clone(), phase["seconds"].as_f64().unwrap_or(f64::NAN));
        if let Some(message) = phase["message"].as_str() {
            side.notes.push(format!("{name}: {message}"));
        }
    }
    if let Some(journal) = report["journal"].as_str() {
        side.notes.extend(journal_steps(Path::new(journal)));
    }
    side.until_served = until_served(&env, servers);
    check_rotated(&env, &old_ca);
    side.extra = extra_commands(&env);
    env.step("tool side done");
    side
}

/// Median seconds of 3 runs of a command that must succeed. A failure shows its stderr
/// only: stdout is a state, a plan or values, with keys in them.
fn median_seconds(make: impl Fn() -> Cmd) -> f64 {
    let mut runs: Vec<f64> = (0..3)
        .map(|_| {
            let started = Instant::now();
            let out = make().run();
            assert!(out.success(), "`{}` exited with {}: {}", out.line, out.status, out.stderr);
            started.elapsed().as_secs_f64()
        })
        .collect();
    runs.sort_by(f64::total_cmp);
    runs[1]
}

/// The commands the tool runs and the seed's procedure does not, timed alone on the rotated
/// cluster right after the tool's run (median of 3), and how often each phase runs them:
/// what the tool's checks cost next to the script. Output is captured, never printed (the
/// state, the plan and the values hold keys).
fn extra_commands(env: &TestEnv) -> Vec<Extra> {
    let state_pull = median_seconds(|| env.terraform().args(["state", "pull"]));
    let history = median_seconds(|| {
        env.helm(Helm::V3).args([
            "history",
            "kube-apiserver",
            "-n",
            "kube-system",
            "-o",
            "json",
            "--max",
            "20",
        ])
    });
    let values = median_seconds(|| {
        env.helm(Helm::V3).args([
            "get",
            "values",
            "kube-apiserver",
            "-n",
            "kube-system",
            "-o",
            "json",
        ])
    });
    let plan_file = env.dir().join("bench-plan");
    let plan_arg = format!("-out={}", plan_file.display());
    let plan =
        median_seconds(|| env.terraform().args(["plan", "-input=false", "-no-color", &plan_arg]));
    let show = median_seconds(|| env.terraform().arg("show").arg("-json").arg(&plan_file));
    let _ = std::fs::remove_file(&plan_file);
    let helm_checks = history + values;
    vec![
        Extra {
            phase: "ca",
            what: "3 x terraform state pull (done? taint? check)".into(),
            seconds: 3.0 * state_pull,
        },
        Extra {
            phase: "bundle",
            what: "helm history + helm get values (pending release? values in place?)".into(),
            seconds: helm_checks,
        },
        Extra {
            phase: "client",
            what: "terraform state pull + helm history + helm get values".into(),
            seconds: state_pull + helm_checks,
        },
        Extra {
            phase: "apply",
            what: "terraform plan -out + show -json + state pull (nothing pending? files = state?)"
                .into(),
            seconds: plan + show + state_pull,
        },
    ]
}

/// One kind of extra command of the tool in a phase.
struct Extra {
    phase: &'static str,
    what: String,
    seconds: f64,
}

/// Each step of the journal with its seconds: from its start to the next step's start (or
/// its phase's end). The journal keeps whole seconds, so each figure is +-1 s.
fn journal_steps(path: &Path) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return vec![format!("(journal {} unreadable)", path.display())];
    };
    let journal: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    let at = |v: &serde_json::Value| {
        v.as_str().and_then(|s| s.parse::<jiff::Timestamp>().ok()).map(|t| t.as_second())
    };
    let phase_end: BTreeMap<String, i64> = journal["phases"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| Some((p["name"].as_str()?.to_string(), at(&p["finishedAt"])?)))
        .collect();
    let events = journal["events"].as_array().cloned().unwrap_or_default();
    let mut lines = vec!["steps (journal, whole seconds):".to_string()];
    for (i, event) in events.iter().enumerate() {
        let phase = event["phase"].as_str().unwrap_or("?");
        let start = at(&event["at"]);
        let next = events
            .get(i + 1)
            .filter(|n| n["phase"].as_str() == Some(phase))
            .and_then(|n| at(&n["at"]))
            .or_else(|| phase_end.get(phase).copied());
        let seconds = match (start, next) {
            (Some(a), Some(b)) => format!("{:>3}", b - a),
            _ => "  ?".into(),
        };
        let what: String = event["what"].as_str().unwrap_or("").chars().take(110).collect();
        lines.push(format!("  {phase:<8} {seconds} s  {what}"));
    }
    lines
}

fn script_side(servers: &[ExtApiServer]) -> Side {
    let env = setup("bench-rot-script", servers);
    let old_ca = file_fingerprints(&env.assets.tls("aggregation-ca.crt"));
    let module = env.assets.bootkube_module();
    let log = env.dir().join("seed-rotation.log");
    let tools = Tools::get();
    let helm_home = env.dir().join("helm3");
    // What env.certrotate() gives the tool (an operator's environment), for the script.
    let cmd = Cmd::new("bash")
        .arg(SCRIPT)
        .args(servers.iter().map(|s| format!("{}/{}", s.namespace, s.name)))
        .env("KUBECONFIG", env.kubeconfig())
        .env("ASSET_DIR", &env.assets.dir)
        .env("CONFIG_DIR", &env.assets.config_dir)
        .env("TERRAFORM", &tools.terraform)
        .env("HELM", Helm::V3.path())
        .env("LOKOCTL", &tools.lokoctl_double)
        .env("TF_CLI_CONFIG_FILE", &tools.tf_cli_config)
        .env("HELM_CONFIG_HOME", helm_home.join("config"))
        .env("HELM_CACHE_HOME", helm_home.join("cache"))
        .env("HELM_DATA_HOME", helm_home.join("data"))
        .env("KUBECTL", &tools.kubectl)
        .env("MODULE", &module)
        .env("SEED_LOG", &log)
        .timeout(Duration::from_secs(1200));
    let before = loadavg();
    env.step("benches/seed-rotation.sh (the seed's commands)");
    let started = Instant::now();
    let out = cmd.run();
    let wall = started.elapsed().as_secs_f64();
    let after = loadavg();
    assert!(out.success(), "the seed's procedure failed:\n{}\n{}", out.stderr, log_tail(&log));
    let mut side = Side { wall, load: (before, after), ..Default::default() };
    for line in out.stdout.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["phase", name, seconds] => {
                side.phases.insert(name.to_string(), seconds.parse().unwrap_or(f64::NAN));
            }
            ["retried", what, n] => side.notes.push(format!("{what} was run again {n} time(s)")),
            _ => side.notes.push(line.to_string()),
        }
    }
    side.until_served = until_served(&env, servers);
    check_rotated(&env, &old_ca);
    env.step("script side done");
    side
}

/// The last lines of the script's log, for a failure, without what could be key material
/// (helm --debug prints the release's values: long base64 lines, PEM blocks).
fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let keep: Vec<&str> = text
        .lines()
        .filter(|l| l.len() < 160 && !l.contains("PRIVATE KEY") && !l.contains("-----"))
        .collect();
    let tail = &keep[keep.len().saturating_sub(40)..];
    format!("--- {} (last lines, long lines left out) ---\n{}", log.display(), tail.join("\n"))
}

fn ratio(tool: f64, script: f64) -> String {
    if script >= 0.05 { format!("{:.2}x", tool / script) } else { "-".into() }
}

fn main() {
    // `cargo test --all-targets` runs bench targets too, without `--bench`: a benchmark is not
    // a test, so it only says how to run it there.
    if !std::env::args().any(|a| a == "--bench") {
        println!("rotation benchmark: run it with `cargo bench --bench rotation`");
        return;
    }
    let args: Vec<String> = std::env::args().collect();
    let count = args
        .iter()
        .position(|a| a == "--servers")
        .and_then(|i| args.get(i + 1))
        .map_or(3, |v| v.parse().expect("--servers takes a number"));
    assert!(count >= 1, "--servers must be at least 1");
    let script_first = args.iter().any(|a| a == "--script-first");
    let servers = servers(count);

    let (tool, script) = if script_first {
        let script = script_side(&servers);
        (tool_side(&servers), script)
    } else {
        let tool = tool_side(&servers);
        (tool, script_side(&servers))
    };

    println!();
    println!(
        "aggregation CA rotation with cleanup: kubectl certrotate vs. the seed's commands, {count} extension servers, {}",
        if script_first { "script first" } else { "tool first" }
    );
    println!("{:<10} {:>9} {:>9} {:>12}", "phase", "tool s", "script s", "tool/script");
    let (mut tool_sum, mut script_sum) = (0.0, 0.0);
    for phase in PHASES {
        let t = tool.phases.get(phase).copied().unwrap_or(f64::NAN);
        let s = script.phases.get(phase).copied().unwrap_or(f64::NAN);
        tool_sum += t;
        script_sum += s;
        println!("{phase:<10} {t:>9.2} {s:>9.2} {:>12}", ratio(t, s));
    }
    println!(
        "{:<10} {tool_sum:>9.2} {script_sum:>9.2} {:>12}",
        "phases",
        ratio(tool_sum, script_sum)
    );
    println!(
        "{:<10} {:>9.2} {:>9.2} {:>12}",
        "total",
        tool.wall,
        script.wall,
        ratio(tool.wall, script.wall)
    );
    println!(
        "outside the phases (process start, checks before the first change, journal): tool {:.2} s, script {:.2} s",
        tool.wall - tool_sum,
        script.wall - script_sum
    );
    println!(
        "then, until every APIService was Available and answered through the aggregator: tool +{:.1} s, script +{:.1} s",
        tool.until_served, script.until_served
    );
    let verdict = if tool.wall <= 1.1 * script.wall { "met" } else { "NOT met" };
    println!("target tool <= 1.1 x script: {verdict} ({})", ratio(tool.wall, script.wall));
    println!(
        "load average (1/5/15 min) before -> after: tool {} -> {}; script {} -> {}",
        tool.load.0, tool.load.1, script.load.0, script.load.1
    );
    if !tool.extra.is_empty() {
        println!();
        println!(
            "the tool's commands that the script does not run, each timed alone after the rotation (median of 3):"
        );
        for extra in &tool.extra {
            let (t, sc) = (tool.phases.get(extra.phase), script.phases.get(extra.phase));
            let gap = match (t, sc) {
                (Some(t), Some(sc)) => format!("{:+.2}", t - sc),
                _ => "?".into(),
            };
            println!(
                "  {:<8} {:>5.2} s  (tool - script in this phase: {gap} s)  {}",
                extra.phase, extra.seconds, extra.what
            );
        }
    }
    println!();
    println!("tool, per phase:");
    for note in &tool.notes {
        println!("  {note}");
    }
    if !script.notes.is_empty() {
        println!("script:");
        for note in &script.notes {
            println!("  {note}");
        }
    }
}
