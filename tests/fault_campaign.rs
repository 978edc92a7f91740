//! Random-moment kill campaigns, one per rotation (PRODUCT.md: "a run cut off at any point …
//! is completed by running the same command again"; chosen moments miss what operators hit).
//!
//! Each test starts a real control plane and first runs the rotation once, uninterrupted,
//! timing its phases: the reference, which says how long a whole run takes and when each
//! phase starts, on a control plane of its own; then, on a fresh one, the same rotation runs
//! under fire: K moments
//! drawn from a seed, one in each K-th of the reference's duration, each a signal to the tool
//! (mostly SIGKILL, some SIGINT or SIGTERM) sent as far into the phase it falls in as it is
//! into that phase in the reference, and after each the same command again, at once. The run after the last
//! moment goes to the end. Then the end state must be that of the uninterrupted run: the
//! checks of the rotation's own end-to-end tests (new certificates in files, state and
//! cluster, the old ones in the run's backup, the cluster trusting what it should, the run
//! finished), exactly one new CA or certificate, the same journal outcomes and helm release
//! statuses as the reference, and no process of the tool left.
//!
//! A re-run that fails on its own is a finding: the campaign says which moment preceded it
//! and what it printed, runs the command again (10 s later, up to 3 times in a row, as an
//! operator would) and fails the test at the end with every finding.
//!
//! Replay: the seed is printed first; `CERTROTATE_CAMPAIGN_SEED=<seed>` draws the same
//! moments (as fractions of the reference's duration) and signals, `CERTROTATE_CAMPAIGN_KILLS=<K>` changes their number. Where a moment
//! lands inside a phase moves with the machine's load: every moment is printed with the
//! phase and step the journal says it hit.

mod common;
mod support;

#[path = "aggregation/helpers.rs"]
mod aggregation;
#[path = "renew/helpers.rs"]
mod renew;
#[path = "webhook/helpers.rs"]
mod webhook;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::process::deaths_here;
use support::{Cmd, Output, Spawned, TestEnv};

/// Moments per campaign unless `CERTROTATE_CAMPAIGN_KILLS` says otherwise, kept few since CI
/// runs every test file: the aggregation's kube-apiserver rollouts make each of its moments
/// cost a minute or more, the webhook's a few seconds. One aggregation moment per suite run
/// (a new seed each time): with two, the campaign took 454-669 s and the suite its 30 minutes.
const AGGREGATION_KILLS: usize = 1;
const WEBHOOK_KILLS: usize = 4;
/// One renew moment per suite run too: a renewal restarts kube-apiserver twice (lokoctl's
/// upgrade, the restart phase), and the campaign needs two control planes with four charts.
const RENEW_KILLS: usize = 1;
/// A re-run failing on its own this many times in a row ends the campaign.
const FAILURES_IN_A_ROW: usize = 3;
/// Between a failed re-run and the next (an operator reads the error first).
const AFTER_A_FAILURE: Duration = Duration::from_secs(10);
/// SIGINT and SIGTERM stop children with SIGINT and SIGKILL them after 10 s: the tool must be
/// gone well before this.
const STOP_BOUND: Duration = Duration::from_secs(60);
/// The tool's bound for each wait: after the kube-apiserver restarts a campaign piles up,
/// kube-controller-manager was seen to move a kube-apiserver rollout on only every 1-2 minutes
/// (nothing in its log in between), and a killed run's rollouts stack up; a rollback that
/// completed later exceeded 3 minutes. The test's bound for an invocation: a resumed run
/// may wait three times or more (a rollback, lokoctl's upgrades, the cleanup's restart).
const WAIT: &str = "5m";
const INVOCATION: Duration = Duration::from_secs(900);

// ---------------------------------------------------------------------------------------
// Seeded draws

/// splitmix64: a seed gives the same sequence on every machine.
struct Draw(u64);

impl Draw {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn seed() -> u64 {
    match std::env::var("CERTROTATE_CAMPAIGN_SEED") {
        Ok(s) => s.trim().parse().unwrap_or_else(|e| {
            panic!("CERTROTATE_CAMPAIGN_SEED={s:?} is not an unsigned integer: {e}")
        }),
        Err(_) => {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
            Draw(now.as_nanos() as u64 ^ (u64::from(std::process::id()) << 40)).next()
        }
    }
}

fn kills(default: usize) -> usize {
    std::env::var("CERTROTATE_CAMPAIGN_KILLS").map_or(default, |k| {
        k.trim().parse().unwrap_or_else(|e| panic!("CERTROTATE_CAMPAIGN_KILLS={k:?}: {e}"))
    })
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Signal {
    Kill,
    Int,
    Term,
}

impl Signal {
    fn name(self) -> &'static str {
        match self {
            Signal::Kill => "KILL",
            Signal::Int => "INT",
            Signal::Term => "TERM",
        }
    }
}

/// A moment of the campaign: `at` seconds into an uninterrupted run, and the signal.
#[derive(Debug, Clone, Copy)]
struct Moment {
    at: f64,
    signal: Signal,
}

/// One moment in each `kills`-th of `seconds`, so the moments cover the whole run; two in
/// three are SIGKILL, the others SIGINT or SIGTERM.
fn moments(seed: u64, kills: usize, seconds: f64) -> Vec<Moment> {
    let mut draw = Draw(seed);
    (0..kills)
        .map(|i| {
            let at = (i as f64 + draw.unit()) / kills as f64 * seconds;
            let signal = match draw.unit() {
                u if u < 2.0 / 3.0 => Signal::Kill,
                u if u < 5.0 / 6.0 => Signal::Int,
                _ => Signal::Term,
            };
            Moment { at, signal }
        })
        .collect()
}

/// No cluster: a seed gives the same moments again (replay), one in each K-th of the run, and
/// every signal kind comes up.
#[test]
fn moments_replay_and_cover_the_whole_run() {
    let mut kinds = Vec::new();
    for seed in 0..200u64 {
        let a = moments(seed, 4, 80.0);
        let b = moments(seed, 4, 80.0);
        assert_eq!(format!("{a:?}"), format!("{b:?}"), "seed {seed} replays");
        for (i, m) in a.iter().enumerate() {
            let stratum = (i as f64 * 20.0)..((i + 1) as f64 * 20.0);
            assert!(stratum.contains(&m.at), "seed {seed}: moment {i} at {} in {stratum:?}", m.at);
            kinds.push(m.signal);
        }
    }
    let share = |s: Signal| kinds.iter().filter(|&&k| k == s).count() as f64 / kinds.len() as f64;
    assert!((0.55..0.78).contains(&share(Signal::Kill)), "mostly SIGKILL: {}", share(Signal::Kill));
    assert!(share(Signal::Int) > 0.08 && share(Signal::Term) > 0.08, "some SIGINT and SIGTERM");
}

// ---------------------------------------------------------------------------------------
// The rotation under test and its reference run

struct Rotation<'e> {
    env: &'e TestEnv,
    name: &'static str,
    /// The operator's command, the same for every invocation, `-o json`.
    command: Box<dyn Fn() -> Cmd + 'e>,
    /// The rotation's run folders, oldest first.
    runs: fn(&TestEnv) -> Vec<PathBuf>,
    /// How many moments, unless `CERTROTATE_CAMPAIGN_KILLS` says.
    kills: usize,
}

impl Rotation<'_> {
    fn journal(&self) -> Option<Value> {
        let run = (self.runs)(self.env).pop()?;
        let text = std::fs::read_to_string(run.join("journal.json")).ok()?;
        serde_json::from_str(&text).ok()
    }
}

/// The uninterrupted run: its duration and where each phase starts, in seconds from the
/// start of the invocation (the first phase starts after the tool's start-up).
struct Reference {
    seconds: f64,
    phases: Vec<(String, f64)>,
}

/// Where a moment falls in the reference: `within` seconds into phase `phase` (an index of
/// [`Reference::phases`]; `None`: the start-up, before the first phase).
#[derive(Debug, Clone, Copy)]
struct Anchor {
    phase: Option<usize>,
    within: f64,
}

impl Reference {
    fn measure(rot: &Rotation) -> Reference {
        rot.env.step(&format!("reference: {} uninterrupted", rot.name));
        let started = Instant::now();
        let out = (rot.command)().run();
        let seconds = started.elapsed().as_secs_f64();
        assert_eq!(out.code(), Some(0), "the uninterrupted reference run failed: {out}");
        let listed = phase_seconds(&out);
        // A phase may find its work done by the cluster itself (renew's tokens: the
        // controller-manager republishes them as soon as it runs on the new CA).
        for (name, result, _) in &listed {
            assert!(
                ["done", "already-done"].contains(&result.as_str()),
                "the reference run did {name}: {out}"
            );
        }
        let mut at = seconds - listed.iter().map(|(_, _, s)| s).sum::<f64>();
        let mut phases = Vec::new();
        for (name, _, took) in listed {
            phases.push((name, at));
            at += took;
        }
        let reference = Reference { seconds, phases };
        let starts: Vec<String> =
            reference.phases.iter().map(|(n, s)| format!("{n} {s:.1}")).collect();
        rot.env.step(&format!("reference: {seconds:.1} s; phases start at {}", starts.join(", ")));
        reference
    }

    fn anchor(&self, t: f64) -> Anchor {
        match self.phases.iter().rposition(|(_, s)| *s <= t) {
            Some(i) => Anchor { phase: Some(i), within: t - self.phases[i].1 },
            None => Anchor { phase: None, within: t },
        }
    }

    fn show(&self, a: Anchor) -> String {
        format!("{} +{:.1} s", a.phase.map_or("start-up", |i| self.phases[i].0.as_str()), a.within)
    }

    /// The first phase the journal does not have done: where the next invocation resumes.
    fn resumes_at(&self, journal: Option<&Value>) -> usize {
        let outcomes = journal.map(webhook::phase_outcomes).unwrap_or_default();
        let done = |n: &str| outcomes.iter().any(|(p, o)| p == n && o == "done");
        self.phases.iter().position(|(n, _)| !done(n)).unwrap_or(0)
    }
}

/// `(name, result, seconds)` of each phase in a `-o json` summary.
fn phase_seconds(out: &Output) -> Vec<(String, String, f64)> {
    let summary: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not the JSON summary ({e}): {out}"));
    summary["phases"]
        .as_array()
        .unwrap_or_else(|| panic!("no phases: {summary:#}"))
        .iter()
        .map(|p| {
            let text = |k: &str| p[k].as_str().unwrap_or_default().to_string();
            (text("name"), text("result"), p["seconds"].as_f64().unwrap_or_default())
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// The campaign

/// How a campaign went: every line it printed, the findings, and whether its last run
/// completed the rotation.
struct Outcome {
    log: Vec<String>,
    findings: Vec<String>,
    completed: bool,
}

impl Outcome {
    fn say(&mut self, env: &TestEnv, line: String) {
        env.step(&line);
        self.log.push(line);
    }

    fn report(&self, seed: u64) -> String {
        format!(
            "campaign seed {seed} (replay: CERTROTATE_CAMPAIGN_SEED={seed})\n{}\n\n{} finding(s):\n\n{}",
            self.log.join("\n"),
            self.findings.len(),
            self.findings.join("\n\n")
        )
    }
}

/// The phase records and events an invocation added to the journal (`before`: how many
/// there were when it started).
fn added(journal: Option<&Value>, before: (usize, usize)) -> (Vec<Value>, Vec<Value>) {
    let list = |k: &str, from: usize| {
        let all = journal.and_then(|j| j[k].as_array()).cloned().unwrap_or_default();
        all.get(from..).map(<[Value]>::to_vec).unwrap_or_default()
    };
    (list("phases", before.0), list("events", before.1))
}

fn counts(journal: Option<&Value>) -> (usize, usize) {
    let len = |k: &str| journal.and_then(|j| j[k].as_array()).map_or(0, Vec::len);
    (len("phases"), len("events"))
}

/// Where in the journal an invocation was when it ended: its last phase record and step.
fn hit(journal: Option<&Value>, before: (usize, usize)) -> String {
    if journal.is_none() {
        return "no journal yet".into();
    }
    let (phases, events) = added(journal, before);
    let phase = phases.last().map_or_else(
        || "no phase begun (start-up)".to_string(),
        |p| format!("phase {} {}", p["name"].as_str().unwrap_or("?"), p["outcome"]),
    );
    let step = events.last().map_or_else(
        || "no step".to_string(),
        |e| {
            let what: String = e["what"].as_str().unwrap_or_default().chars().take(140).collect();
            format!("last step {} `{what}` {}", e["kind"], e["outcome"])
        },
    );
    format!("{phase}, {step}")
}

/// The end of an invocation's output, for a finding.
fn tail(out: &Output) -> String {
    let lines: Vec<&str> = out.stderr.lines().collect();
    let from = lines.len().saturating_sub(30);
    format!(
        "exit {:?}; stdout:\n{}\nlast lines of stderr:\n{}",
        out.code(),
        out.stdout.trim(),
        lines[from..].join("\n")
    )
}

/// Processes of the tool's runs (the plugin and its descendants) alive now.
fn running(env: &TestEnv) -> String {
    let left = aggregation::tagged(&aggregation::tag(env));
    if left.is_empty() {
        return "none".into();
    }
    left.iter().map(|p| format!("{} ({})", p.comm, p.pid)).collect::<Vec<_>>().join(", ")
}

/// Waits for the moment `at` in a running invocation: `within` seconds after its journal
/// shows the anchor's phase begun (or as that phase ends, if sooner: the kill lands in it);
/// counted from the invocation's start for the start-up, or when the phase was done before
/// the invocation began. False when the invocation ended first.
fn reach(
    rot: &Rotation,
    reference: &Reference,
    child: &mut Spawned,
    started: Instant,
    at: Anchor,
    before: (usize, usize),
    resumes: usize,
) -> bool {
    let phase = at.phase.filter(|&i| i >= resumes).map(|i| reference.phases[i].0.clone());
    let mut begun: Option<Instant> = None;
    while child.is_running() {
        if let Some(report) = deaths_here() {
            panic!("{report}");
        }
        let from = match &phase {
            None => Some(started),
            Some(name) => {
                let (records, _) = added(rot.journal().as_ref(), before);
                let mine = records.iter().position(|r| r["name"] == name.as_str());
                if let Some(i) = mine
                    && (records[i]["outcome"] != "running" || i + 1 < records.len())
                {
                    return child.is_running();
                }
                if mine.is_some() {
                    begun.get_or_insert_with(Instant::now);
                }
                begun
            }
        };
        if from.is_some_and(|t| t.elapsed().as_secs_f64() >= at.within) {
            return child.is_running();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn campaign(rot: &Rotation, reference: &Reference, seed: u64) -> Outcome {
    let env = rot.env;
    let planned = moments(seed, kills(rot.kills), reference.seconds);
    let mut o = Outcome { log: Vec::new(), findings: Vec::new(), completed: false };
    o.say(
        env,
        format!("campaign seed {seed}: {} moments over {:.1} s", planned.len(), reference.seconds),
    );
    for (i, m) in planned.iter().enumerate() {
        let line = format!(
            "  moment {}: {:.1} s (reference: {}), SIG{}",
            i + 1,
            m.at,
            reference.show(reference.anchor(m.at)),
            m.signal.name()
        );
        o.say(env, line);
    }
    let (mut next, mut failed, mut invocation) = (0, 0, 0);
    let mut last_moment = "none yet (the first invocation)".to_string();
    while failed < FAILURES_IN_A_ROW {
        invocation += 1;
        let journal = rot.journal();
        let before = counts(journal.as_ref());
        let resumes = reference.resumes_at(journal.as_ref());
        let from = &reference.phases[resumes].0;
        let moment = planned.get(next).copied();
        let mut child = (rot.command)().spawn();
        let started = Instant::now();
        let reached = moment.is_some_and(|m| {
            reach(rot, reference, &mut child, started, reference.anchor(m.at), before, resumes)
        });
        let (Some(m), true) = (moment, reached) else {
            let out = child.wait();
            let took = started.elapsed().as_secs_f64();
            if out.code() == Some(0) {
                let phases: Vec<String> = phase_seconds(&out)
                    .iter()
                    .map(|(n, r, s)| format!("{n} {r} {s:.1} s"))
                    .collect();
                o.say(env, format!("invocation {invocation} (from {from}) completed the rotation in {took:.1} s: {}", phases.join(", ")));
                if next < planned.len() {
                    o.say(
                        env,
                        format!(
                            "  moments {}..{} not reached: the rotation finished first",
                            next + 1,
                            planned.len()
                        ),
                    );
                }
                o.completed = true;
                break;
            }
            failed += 1;
            let finding = format!(
                "seed {seed}: invocation {invocation} (resuming at {from}, after moment {last_moment}) failed on its own after {took:.1} s ({}): {}",
                hit(rot.journal().as_ref(), before),
                tail(&out)
            );
            o.say(env, format!("invocation {invocation} FAILED on its own (exit {:?}); the same command again in {AFTER_A_FAILURE:?}", out.code()));
            o.findings.push(finding);
            std::thread::sleep(AFTER_A_FAILURE);
            continue;
        };
        failed = 0;
        next += 1;
        let pid = child.id();
        aggregation::signal(pid, m.signal.name());
        let sent = started.elapsed().as_secs_f64();
        if m.signal != Signal::Kill {
            let bound = Instant::now() + STOP_BOUND;
            while child.is_running() && Instant::now() < bound {
                std::thread::sleep(Duration::from_millis(20));
            }
            if child.is_running() {
                o.findings.push(format!(
                    "seed {seed}: moment {next}: SIG{} did not stop the tool within {STOP_BOUND:?}; SIGKILLed ({})",
                    m.signal.name(),
                    hit(rot.journal().as_ref(), before)
                ));
                aggregation::signal(pid, "KILL");
            }
        }
        let out = child.wait();
        std::thread::sleep(Duration::from_millis(300));
        last_moment = format!("{next} ({:.1} s, SIG{})", m.at, m.signal.name());
        let line = format!(
            "moment {next}: {:.1} s = SIG{} to invocation {invocation} (from {from}) {sent:.1} s after its start: {}; exit {}; still running: {}",
            m.at,
            m.signal.name(),
            hit(rot.journal().as_ref(), before),
            out.code().map_or_else(|| "by signal".to_string(), |c| c.to_string()),
            running(env)
        );
        o.say(env, line);
    }
    if let Err(left) = aggregation::wait_all_gone(env, Duration::from_secs(15)) {
        aggregation::kill_leftovers(env);
        o.findings.push(format!("seed {seed}: processes of the tool still ran at the end: {left}"));
    }
    o
}

/// What an uninterrupted run leaves and the campaign must leave too, said relative to the
/// asset dir (so two rotations compare): the journal's outcomes, the control-plane releases'
/// statuses, and `facts` of the rotation.
fn end_state(rot: &Rotation, facts: Vec<(&'static str, String)>) -> BTreeMap<String, String> {
    let mut state: BTreeMap<String, String> =
        facts.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    let j = rot.journal().expect("the run's journal");
    state.insert("journal state".into(), j["state"].to_string());
    for (phase, outcome) in webhook::phase_outcomes(&j) {
        state.insert(format!("journal phase {phase}"), outcome);
    }
    for (release, ns) in [("kube-apiserver", "kube-system"), ("lokomotive", "lokomotive-system")] {
        let history = aggregation::helm_history(rot.env, release, ns);
        let status = history.last().map_or("no release".into(), |r| r.1.clone());
        state.insert(format!("release {ns}/{release}"), status);
    }
    state
}

/// `fps` said relative to the certificate of a file: "the file's" when they are just that.
fn relative(fps: &[String], file: &str, file_fp: &str) -> String {
    if fps == [file_fp] { format!("= {file}") } else { format!("{fps:?} (not {file} {file_fp})") }
}

/// The verdict on a campaign: it completed the rotation, `checks` (of the end state) pass, and
/// nothing was found on the way; every failure carries the campaign's report (seed, moments,
/// what each hit).
fn judge(env: &TestEnv, outcome: &Outcome, seed: u64, checks: impl FnOnce()) {
    let report = outcome.report(seed);
    assert!(outcome.completed, "the campaign never completed the rotation\n{report}");
    env.step(&format!("campaign seed {seed} completed; checking the end state"));
    if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(checks)) {
        let why = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        panic!("the end state is not an uninterrupted run's: {why}\n\n{report}");
    }
    assert!(outcome.findings.is_empty(), "{report}");
}

// ---------------------------------------------------------------------------------------
// The campaigns

/// The reference and the campaign each on a control plane of their own: a second rotation on
/// the same one meets kube-controller-manager's backed-off watches (it took 205 s instead of
/// 77 s), which made the campaign slow and its moments fall elsewhere than in the reference.
fn reference_on_its_own_cluster(
    start: impl Fn(&str) -> TestEnv,
    name: &str,
    rotation: for<'e> fn(&'e TestEnv) -> Rotation<'e>,
    facts: fn(&TestEnv) -> Vec<(&'static str, String)>,
) -> (Reference, BTreeMap<String, String>) {
    let env = start(&format!("{name}-reference"));
    let rot = rotation(&env);
    let reference = Reference::measure(&rot);
    let want = end_state(&rot, facts(&env));
    (reference, want)
}

fn aggregation_rotation(env: &TestEnv) -> Rotation<'_> {
    Rotation {
        env,
        name: "aggregation --cleanup -y",
        command: Box::new(move || {
            aggregation::agg(env)
                .args(["--cleanup", "-y", "-o", "json", "--timeout", WAIT])
                .timeout(INVOCATION)
        }),
        runs: aggregation::run_dirs,
        kills: AGGREGATION_KILLS,
    }
}

fn aggregation_facts(env: &TestEnv) -> Vec<(&'static str, String)> {
    let ca = aggregation::fp(&aggregation::read(&env.assets.tls("aggregation-ca.crt")));
    let client = aggregation::fp(&aggregation::read(&env.assets.tls("aggregation-client.crt")));
    vec![
        (
            "ConfigMap requestheader CAs",
            relative(&aggregation::configmap_cas(env), "tls/aggregation-ca.crt", &ca),
        ),
        (
            "Secret aggregation-ca.crt",
            relative(
                &aggregation::secret_cas(env, "aggregation-ca.crt"),
                "tls/aggregation-ca.crt",
                &ca,
            ),
        ),
        (
            "Secret aggregation-client.crt",
            relative(
                &aggregation::secret_cas(env, "aggregation-client.crt"),
                "tls/aggregation-client.crt",
                &client,
            ),
        ),
    ]
}

/// `aggregation --cleanup -y`, not expired.
#[test]
fn aggregation_cleanup_survives_random_kills() {
    let seed = seed();
    eprintln!("aggregation campaign: seed {seed}");
    let name = "campaign-aggregation";
    let (reference, want) = reference_on_its_own_cluster(
        aggregation::cluster,
        name,
        aggregation_rotation,
        aggregation_facts,
    );
    let env = aggregation::cluster(name);
    env.step(&format!("campaign seed {seed}"));
    let module = env.assets.bootkube_module();
    let rot = aggregation_rotation(&env);
    let orig = aggregation::Original::of(&env);
    let watch = aggregation::CaWatch::start(env.assets.tls("aggregation-ca.crt"));
    let outcome = campaign(&rot, &reference, seed);
    judge(&env, &outcome, seed, || {
        let new = aggregation::check_rotated(&env, &orig, &module, true);
        assert_eq!(watch.generations(), vec![orig.ca_fp.clone(), new], "exactly one new CA");
        assert_eq!(
            end_state(&rot, aggregation_facts(&env)),
            want,
            "the uninterrupted run's end state"
        );
    });
}

/// `webhook -y`, not expired.
#[test]
fn webhook_survives_random_kills() {
    webhook_campaign("campaign-webhook", false);
}

/// `webhook -y --expired`: the expired path (the webhook configuration deleted first, lokoctl
/// with --skip-pre-update-health-check) forced, as its phases are what matters here.
#[test]
fn webhook_expired_path_survives_random_kills() {
    webhook_campaign("campaign-webhook-expired", true);
}

fn webhook_rotation(env: &TestEnv, expired: bool) -> Rotation<'_> {
    let flags: &'static [&'static str] = if expired { &["-y", "--expired"] } else { &["-y"] };
    Rotation {
        env,
        name: if expired { "webhook -y --expired" } else { "webhook -y" },
        command: Box::new(move || {
            webhook::webhook(env)
                .env(aggregation::TAG_VAR, aggregation::tag(env))
                .args(flags)
                .args(["-o", "json", "--timeout", WAIT])
                .timeout(INVOCATION)
        }),
        runs: webhook::runs,
        kills: WEBHOOK_KILLS,
    }
}

fn webhook_facts(env: &TestEnv) -> Vec<(&'static str, String)> {
    let (cert, _) = webhook::values_pair(env);
    let file = webhook::fp(&cert);
    let state = aggregation::state_attr(
        &aggregation::state(env),
        &env.assets.bootkube_module(),
        webhook::CERT_RESOURCE,
        "cert_pem",
    );
    let (served, _) = webhook::secret_pair(env);
    let bundle = webhook::ca_bundle(env).map(|b| support::fingerprints(&b)).unwrap_or_default();
    vec![
        (
            "Terraform state certificate",
            relative(&[webhook::fp(state.as_bytes())], webhook::VALUES, &file),
        ),
        ("Secret cert.pem", relative(&[webhook::fp(&served)], webhook::VALUES, &file)),
        ("caBundle", relative(&bundle, webhook::VALUES, &file)),
    ]
}

fn webhook_campaign(name: &str, expired: bool) {
    let seed = seed();
    eprintln!("{name}: seed {seed}");
    let rotation: for<'e> fn(&'e TestEnv) -> Rotation<'e> = if expired {
        |env| webhook_rotation(env, true)
    } else {
        |env| webhook_rotation(env, false)
    };
    let (reference, want) =
        reference_on_its_own_cluster(webhook::cluster, name, rotation, webhook_facts);
    let env = webhook::cluster(name);
    env.step(&format!("campaign seed {seed}"));
    let rot = rotation(&env);
    let before = webhook::Before::take(&env);
    let values = env.assets.dir.join(webhook::VALUES);
    let watch = aggregation::CaWatch::start_with(values, webhook::serving_cert_fp);
    let outcome = campaign(&rot, &reference, seed);
    judge(&env, &outcome, seed, || {
        let path = if expired { "expired" } else { "not-expired" };
        let new = webhook::check_rotated(&env, &before, path, "after-campaign");
        assert_eq!(watch.generations(), vec![before.fp.clone(), new], "one new certificate");
        assert_eq!(end_state(&rot, webhook_facts(&env)), want, "the uninterrupted run's end state");
    });
}

fn renew_rotation(env: &TestEnv) -> Rotation<'_> {
    Rotation {
        env,
        name: "renew -y",
        command: Box::new(move || {
            renew::renew_reaching_etcd(env)
                .env(aggregation::TAG_VAR, aggregation::tag(env))
                .args(["-y", "-o", "json", "--timeout", WAIT])
                .timeout(INVOCATION)
        }),
        runs: renew::run_dirs,
        kills: RENEW_KILLS,
    }
}

/// Where the cluster's copies of the renewed certificates stand, relative to the files.
fn renew_facts(env: &TestEnv) -> Vec<(&'static str, String)> {
    let tls = |file: &str| aggregation::fp(&aggregation::read(&env.assets.tls(file)));
    let secret = |namespace: &str, name: &str, key: &str| {
        support::fingerprints(&renew::secret_key(env, namespace, name, key))
    };
    let (ca, apiserver) = (tls("ca.crt"), tls("apiserver.crt"));
    vec![
        (
            "Secret kube-apiserver apiserver.crt",
            relative(
                &secret("kube-system", "kube-apiserver", "apiserver.crt"),
                "tls/apiserver.crt",
                &apiserver,
            ),
        ),
        (
            "Secret kube-apiserver ca.crt",
            relative(&secret("kube-system", "kube-apiserver", "ca.crt"), "tls/ca.crt", &ca),
        ),
        (
            "Secret kube-controller-manager ca.crt",
            relative(
                &secret("kube-system", "kube-controller-manager", "ca.crt"),
                "tls/ca.crt",
                &ca,
            ),
        ),
        (
            "served by kube-apiserver",
            relative(
                &[env.apiserver_serving_fingerprint().unwrap_or_else(|e| e)],
                "tls/apiserver.crt",
                &apiserver,
            ),
        ),
        (
            "served by etcd",
            relative(
                &[env.etcd_serving_fingerprint().unwrap_or_else(|e| e)],
                "tls/etcd/server.crt",
                &tls("etcd/server.crt"),
            ),
        ),
    ]
}

/// `renew -y` on a cluster with the control-plane charts and metrics-server.
#[test]
fn renew_survives_random_kills() {
    let seed = seed();
    eprintln!("renew campaign: seed {seed}");
    let name = "campaign-renew";
    let (reference, want) =
        reference_on_its_own_cluster(renew::renewal_cluster, name, renew_rotation, renew_facts);
    let env = renew::renewal_cluster(name);
    env.step(&format!("campaign seed {seed}"));
    let rot = renew_rotation(&env);
    let mut needles = common::leaks::Needles::new();
    renew::add_keys(&mut needles, &env);
    let ca = env.assets.tls("ca.crt");
    let old_ca = aggregation::fp(&aggregation::read(&ca));
    let watch = aggregation::CaWatch::start(ca.clone());
    let outcome = campaign(&rot, &reference, seed);
    judge(&env, &outcome, seed, || {
        renew::add_keys(&mut needles, &env);
        renew::check_renewal_finished(&env, &needles);
        let new_ca = aggregation::fp(&aggregation::read(&ca));
        assert_eq!(
            watch.generations(),
            vec![old_ca, new_ca],
            "exactly one new kube CA certificate"
        );
        assert_eq!(end_state(&rot, renew_facts(&env)), want, "the uninterrupted run's end state");
    });
}
