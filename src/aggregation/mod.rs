//! `kubectl certrotate aggregation`: the aggregation (front-proxy) CA and client certificate,
//! rotated phase by phase as the manual procedure does, resumable after any interruption.
//!
//! Not expired: backup, ca, bundle, restart, client, apply, and cleanup on request. Already
//! expired: backup, ca, apply, restart. Each phase's steps are in [`phases`]; this module
//! picks the run (journal), the phases to run, checks the cluster and the programs before
//! anything changes, and reports.

pub mod phases;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::assets::AssetDir;
use crate::cli::{AggregationArgs, GlobalOpts, OutputFormat, PhaseArg};
use crate::error::{Error, Result, exit};
use crate::k8s::Connection;
use crate::output::{self, Progress, Table};
use crate::pki::{self, CertInfo};
use crate::rotation::journal::{RunDir, RunState};
use crate::rotation::lock::RotationLock;
use crate::rotation::plan::{self, PhasePlan};
use crate::rotation::runs_root;
use crate::tools::helm::Helm;
use crate::tools::lokoctl::Lokoctl;
use crate::tools::terraform::{State, Terraform};
use crate::tools::{Program, Runner, process};

const ROTATION: &str = "aggregation";
const NOT_EXPIRED: &str = "not-expired";
const EXPIRED: &str = "expired";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Backup,
    Ca,
    Bundle,
    Restart,
    Client,
    Apply,
    Cleanup,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Self::Backup => "backup",
            Self::Ca => "ca",
            Self::Bundle => "bundle",
            Self::Restart => "restart",
            Self::Client => "client",
            Self::Apply => "apply",
            Self::Cleanup => "cleanup",
        }
    }

    fn of(arg: PhaseArg) -> Option<Self> {
        Some(match arg {
            PhaseArg::All => return None,
            PhaseArg::Backup => Self::Backup,
            PhaseArg::Ca => Self::Ca,
            PhaseArg::Bundle => Self::Bundle,
            PhaseArg::Restart => Self::Restart,
            PhaseArg::Client => Self::Client,
            PhaseArg::Apply => Self::Apply,
            PhaseArg::Cleanup => Self::Cleanup,
        })
    }

    fn needs_terraform(self) -> bool {
        matches!(self, Self::Ca | Self::Client | Self::Apply)
    }

    fn needs_helm(self) -> bool {
        matches!(self, Self::Bundle | Self::Client)
    }
}

/// The phases of a path, in order (cleanup is asked for separately).
fn path_phases(expired: bool) -> &'static [Phase] {
    if expired {
        &[Phase::Backup, Phase::Ca, Phase::Apply, Phase::Restart]
    } else {
        &[Phase::Backup, Phase::Ca, Phase::Bundle, Phase::Restart, Phase::Client, Phase::Apply]
    }
}

/// Everything a phase works with.
pub struct Ctx {
    assets: AssetDir,
    module: Option<String>,
    conn: Option<Connection>,
    terraform: Option<Terraform>,
    helm: Option<Helm>,
    lokoctl: Option<Lokoctl>,
    run: Option<RunDir>,
    expired: bool,
    timeout: Duration,
    progress: Option<Progress>,
    progress_index: usize,
    terraform_dir: PathBuf,
    helm_name: String,
    lokoctl_dir: PathBuf,
}

impl Ctx {
    fn asset(&self, relative: &str) -> PathBuf {
        self.assets.asset(relative)
    }

    fn expired(&self) -> bool {
        self.expired
    }

    fn terraform_dir(&self) -> PathBuf {
        self.terraform_dir.clone()
    }

    fn addr(&self, resource: &str) -> String {
        let module = self.module.as_deref().unwrap_or("module.<unresolved>.module.bootkube");
        format!("{module}.{resource}")
    }

    fn read_asset(&self, relative: &str) -> Result<Vec<u8>> {
        let path = self.asset(relative);
        std::fs::read(&path).map_err(|e| Error::BadInputFile { path, reason: e.to_string() })
    }

    fn read_backup(&self, relative: &str) -> Result<Vec<u8>> {
        let path = self.run()?.backup_path(phases::backup_name(relative));
        std::fs::read(&path)
            .map_err(|e| Error::Journal { path, reason: format!("backup unreadable: {e}") })
    }

    fn file_cert(&self, relative: &str) -> Result<CertInfo> {
        let bytes = self.read_asset(relative)?;
        pki::parse_one_cert(&bytes)
            .map_err(|p| Error::BadInputFile { path: self.asset(relative), reason: p.0 })
    }

    fn key_matches(&self, key: &str, cert: &CertInfo) -> bool {
        self.read_asset(key).ok().and_then(|pem| pki::private_key_half(&pem).ok())
            == pki::certificate_half(cert)
    }

    fn old_ca(&self) -> Result<CertInfo> {
        let bytes = self.read_backup(phases::CA_CERT)?;
        let path = self.run()?.backup_path(phases::backup_name(phases::CA_CERT));
        pki::parse_one_cert(&bytes).map_err(|p| Error::Journal { path, reason: p.0 })
    }

    /// The CA the `ca` phase made: the state's (the files may lag on the expired path).
    fn new_ca(&self) -> Result<CertInfo> {
        if self.expired {
            return self.file_cert(phases::CA_CERT);
        }
        let cert = self.file_cert(phases::CA_CERT)?;
        if cert.sha256 == self.old_ca()?.sha256 {
            return Err(Error::Precondition {
                phase: "ca",
                reason: format!(
                    "{} still holds the old CA: run --phase ca",
                    self.asset(phases::CA_CERT).display()
                ),
            });
        }
        Ok(cert)
    }

    fn state_ca(&self, state: &State) -> Result<CertInfo> {
        let address = self.addr("tls_self_signed_cert.aggregation-ca[0]");
        let pem = state.attribute(&address, "cert_pem").ok_or_else(|| Error::TerraformState {
            dir: self.terraform_dir(),
            reason: format!("has no {address}: is aggregation enabled, and --module right?"),
        })?;
        pki::parse_one_cert(pem.as_bytes()).map_err(|p| Error::TerraformState {
            dir: self.terraform_dir(),
            reason: format!("holds an unusable certificate at {address} ({})", p.0),
        })
    }

    fn run(&self) -> Result<&RunDir> {
        self.run.as_ref().ok_or_else(|| Error::Usage("no rotation run in progress".into()))
    }

    fn run_mut(&mut self) -> &mut RunDir {
        self.run.as_mut().expect("a real run has its journal")
    }

    fn conn(&self) -> Result<&Connection> {
        self.conn.as_ref().ok_or_else(|| Error::Usage("the cluster is not reachable".into()))
    }

    fn terraform(&self) -> Result<&Terraform> {
        self.terraform.as_ref().ok_or_else(|| Error::Usage("terraform is not set up".into()))
    }

    fn helm(&self) -> Result<&Helm> {
        self.helm.as_ref().ok_or_else(|| Error::Usage("helm is not set up".into()))
    }

    fn lokoctl(&self) -> Result<&Lokoctl> {
        self.lokoctl.as_ref().ok_or_else(|| Error::Usage("lokoctl is not set up".into()))
    }

    /// Progress messages of the phase running now.
    fn reporter(&self, _phase: Phase) -> impl Fn(&str) + Sync + '_ {
        move |message: &str| {
            if let Some(progress) = &self.progress {
                progress.update(self.progress_index, message);
            }
        }
    }

    fn taint_line(&self, resource: &str) -> String {
        format!("terraform taint {} (in {})", self.addr(resource), self.terraform_dir.display())
    }

    fn apply_line(&self, targets: &[&str]) -> String {
        let targets: Vec<String> =
            targets.iter().map(|t| format!("-target={}", self.addr(t))).collect();
        format!(
            "terraform apply -auto-approve -input=false {} (in {})",
            targets.join(" "),
            self.terraform_dir.display()
        )
    }

    fn upgrade_line(&self, value: &str) -> String {
        format!(
            "{} upgrade -n kube-system kube-apiserver {} --reuse-values -f <0600 values file: {value}> --wait --timeout {}s (a release left pending is rolled back to its latest revision first; a failed upgrade is retried)",
            self.helm_name,
            self.asset("charts/kube-system/kube-apiserver").display(),
            self.timeout.as_secs()
        )
    }

    fn lokoctl_line(&self) -> String {
        format!(
            "lokoctl cluster apply --confirm --skip-pre-update-health-check (in {})",
            self.lokoctl_dir.display()
        )
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct PhaseReport {
    name: &'static str,
    result: &'static str,
    seconds: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Report {
    api_version: &'static str,
    kind: &'static str,
    run: String,
    journal: String,
    path: String,
    phases: Vec<PhaseReport>,
    fingerprints: std::collections::BTreeMap<String, String>,
    next: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct PlanReport {
    api_version: &'static str,
    kind: &'static str,
    path: &'static str,
    phases: Vec<PhasePlan>,
    unresolved: Vec<String>,
}

pub async fn run(global: &GlobalOpts, args: &AggregationArgs) -> Result<u8> {
    let dirs = crate::status::resolve_asset_dirs(&global.assets_dirs)?;
    let [dir] = dirs.as_slice() else {
        return Err(Error::Usage("aggregation rotates one asset dir at a time".into()));
    };
    let assets = AssetDir::open(dir)?;
    if !assets.aggregation_enabled() {
        return Err(Error::Usage(format!(
            "{} has no aggregation CA (enable_aggregation = false): there is nothing to rotate",
            assets.root().display()
        )));
    }
    let root = runs_root(&assets);
    // A dry run changes nothing, not even the lock file.
    let _lock = if global.dry_run { None } else { Some(RotationLock::acquire(&root)?) };
    let latest = RunDir::latest(&root, ROTATION)?;
    if let Some(run) = &latest {
        // Nothing of a killed run may still write while this one decides what is done.
        if !global.dry_run && run.journal.state == RunState::InProgress {
            process::stop_leftovers(&run.journal.run).await;
        }
    }
    let requested = Phase::of(args.phase);
    let (run, expired) = choose_run(&assets, latest, args, requested)?;
    let wanted = wanted_phases(run.as_ref(), expired, args, requested)?;
    let mut unresolved = Vec::new();
    let conn = match Connection::open(&global.kube, Some(&assets), false, global.verbose).await {
        Ok(conn) => match conn.verify_identity(&assets) {
            Ok(()) => Some(conn),
            Err(why) if global.dry_run => {
                unresolved.push(format!("the cluster: {why}"));
                None
            }
            Err(why) => return Err(Error::WrongCluster(why)),
        },
        Err(e) if global.dry_run => {
            unresolved.push(format!("the cluster: {e}"));
            None
        }
        Err(e) => return Err(e),
    };
    let run_name = run.as_ref().map_or_else(|| "dry-run".to_string(), |r| r.journal.run.clone());
    let runner = Runner::new(&run_name, global.verbose, global.timeout.duration);
    let todo: Vec<Phase> = wanted
        .iter()
        .copied()
        .filter(|p| !run.as_ref().is_some_and(|r| r.phase_done(p.name())))
        .collect();
    let needs = |f: fn(Phase) -> bool| {
        todo.iter().any(|&p| f(p)) || (global.dry_run && wanted.iter().any(|&p| f(p)))
    };
    let terraform_dir = assets.root().join("terraform");
    let config_dir = global
        .tools
        .config_dir
        .clone()
        .or_else(|| std::env::var_os("CONFIG_DIR").filter(|v| !v.is_empty()).map(PathBuf::from))
        .unwrap_or_else(|| assets.root().parent().map(Path::to_path_buf).unwrap_or_default());
    let find = |name, flag: &Option<PathBuf>, var, flag_name| {
        Program::find(name, flag.as_deref(), var, flag_name)
    };
    let mut ctx = Ctx {
        terraform: None,
        helm: None,
        lokoctl: None,
        module: global.tools.module.clone(),
        conn,
        run,
        expired,
        timeout: global.timeout.duration,
        progress: None,
        progress_index: 0,
        helm_name: "helm".into(),
        lokoctl_dir: config_dir.clone(),
        terraform_dir: terraform_dir.clone(),
        assets,
    };
    // Every program a phase to run needs is found before anything changes.
    let tools_needed = [
        (needs(Phase::needs_terraform) || todo.contains(&Phase::Ca), "terraform"),
        (needs(Phase::needs_helm), "helm"),
        (needs(|p| p == Phase::Apply), "lokoctl"),
    ];
    for (needed, name) in tools_needed {
        if !needed {
            continue;
        }
        let found = match name {
            "terraform" => find("terraform", &global.tools.terraform, "TERRAFORM", "--terraform"),
            "helm" => find("helm", &global.tools.helm, "HELM", "--helm"),
            _ => find("lokoctl", &global.tools.lokoctl, "LOKOCTL", "--lokoctl"),
        };
        let program = match found {
            Ok(p) => p,
            Err(e) if global.dry_run => {
                unresolved.push(e.to_string());
                continue;
            }
            Err(e) => return Err(e),
        };
        let kubeconfig = ctx.conn.as_ref().map(|c| c.kubeconfig.clone()).unwrap_or_default();
        match name {
            "terraform" => {
                ctx.terraform = Some(Terraform::new(program, terraform_dir.clone(), runner.clone()))
            }
            "helm" => {
                ctx.helm_name = program.path.display().to_string();
                ctx.helm = Some(Helm::new(
                    program,
                    runner.clone(),
                    &kubeconfig,
                    global.kube.context.as_deref(),
                ));
            }
            _ => {
                ctx.lokoctl = Some(Lokoctl::new(program, runner.clone(), &config_dir, &kubeconfig))
            }
        }
    }
    if ctx.terraform.is_some() || !global.dry_run {
        resolve_module(&mut ctx, global.dry_run, &mut unresolved).await?;
    }
    if global.dry_run {
        return print_plan(&ctx, &wanted, global.output, &unresolved);
    }
    if todo.is_empty() {
        let note = if ctx.run.as_ref().is_some_and(|r| r.journal.state == RunState::Finished) {
            "nothing to do: this rotation finished (start another with --new-run)"
        } else {
            "nothing to do: every phase asked for is done"
        };
        return report(&ctx, &[], global.output, note);
    }
    output::confirm(
        global.yes,
        &format!(
            "rotate the aggregation CA of {} ({}): phases {}?",
            ctx.assets.root().display(),
            ctx.conn.as_ref().map_or("", |c| c.server.as_str()),
            todo.iter().map(|p| p.name()).collect::<Vec<_>>().join(", ")
        ),
    )?;
    let mut created = false;
    if ctx.run.is_none() {
        let path = if expired { EXPIRED } else { NOT_EXPIRED };
        ctx.run = Some(RunDir::create(&root, ctx.assets.root(), ROTATION, path)?);
        created = true;
    }
    if let Some(stale) = ctx.run_mut().running_phase() {
        ctx.run_mut().end_phase(
            &stale,
            "interrupted",
            Some("the run stopped during this phase".into()),
        )?;
    }
    if created {
        eprintln!(
            "rotation run {} started (journal {})",
            ctx.run()?.journal.run,
            ctx.run()?.journal_path().display()
        );
    }
    ctx.progress =
        Some(Progress::new(todo.iter().map(|p| format!("aggregation/{}", p.name())).collect()));
    let mut results = Vec::new();
    let outcome = {
        let work = run_phases(&mut ctx, &todo, &mut results);
        tokio::pin!(work);
        tokio::select! {
            done = &mut work => Some(done),
            _ = tokio::signal::ctrl_c() => None,
        }
    };
    match outcome {
        Some(Ok(())) => {
            let last = *path_phases(expired).last().expect("a path has phases");
            if ctx.run()?.phase_done(last.name())
                && ctx.run()?.journal.state == RunState::InProgress
            {
                ctx.run_mut().finish()?;
            }
            report(&ctx, &results, global.output, "")
        }
        Some(Err(e)) => {
            let _ = report(&ctx, &results, global.output, "");
            Err(e)
        }
        None => {
            let stopped = process::stop_all().await;
            let phase = ctx.run()?.running_phase().unwrap_or_default();
            if !phase.is_empty() {
                ctx.run_mut().end_phase(
                    &phase,
                    "interrupted",
                    Some("interrupted (Ctrl-C)".into()),
                )?;
            }
            results.push(PhaseReport {
                name: phase_static(&phase),
                result: "interrupted",
                seconds: 0.0,
                message: None,
            });
            let _ = report(&ctx, &results, global.output, "");
            Err(Error::Interrupted { phase, stopped })
        }
    }
}

fn phase_static(name: &str) -> &'static str {
    [
        Phase::Backup,
        Phase::Ca,
        Phase::Bundle,
        Phase::Restart,
        Phase::Client,
        Phase::Apply,
        Phase::Cleanup,
    ]
    .into_iter()
    .map(Phase::name)
    .find(|n| *n == name)
    .unwrap_or("?")
}

/// The run to work on and its path: the one in progress; the finished one for a phase asked
/// by name (it says "already done"); a new one when none is in progress.
fn choose_run(
    assets: &AssetDir,
    latest: Option<RunDir>,
    args: &AggregationArgs,
    requested: Option<Phase>,
) -> Result<(Option<RunDir>, bool)> {
    match latest {
        Some(run) if run.journal.state == RunState::InProgress => {
            if args.new_run {
                return Err(Error::Usage(format!(
                    "rotation {} is still in progress: finish it (run the same command without --new-run); --new-run starts a rotation only after the last one finished",
                    run.journal.run
                )));
            }
            let expired = run.journal.path == EXPIRED;
            Ok((Some(run), expired))
        }
        // A finished run is never resumed: its phases report done (cleanup may still follow).
        Some(run) if !args.new_run => {
            let expired = run.journal.path == EXPIRED;
            Ok((Some(run), expired))
        }
        _ => {
            if let Some(phase) = requested.filter(|&p| p != Phase::Backup) {
                return Err(Error::Precondition {
                    phase: phase.name(),
                    reason: "no rotation is in progress for this asset dir: start one with --phase backup (or --phase all)".into(),
                });
            }
            Ok((None, args.expired || ca_expired(assets)?))
        }
    }
}

fn ca_expired(assets: &AssetDir) -> Result<bool> {
    let path = assets.asset(phases::CA_CERT);
    let bytes = std::fs::read(&path)
        .map_err(|e| Error::BadInputFile { path: path.clone(), reason: e.to_string() })?;
    let cert =
        pki::parse_one_cert(&bytes).map_err(|p| Error::BadInputFile { path, reason: p.0 })?;
    Ok(cert.not_after <= jiff::Timestamp::now().as_second())
}

/// The phases this invocation covers, in order; a single phase needs its predecessors done.
fn wanted_phases(
    run: Option<&RunDir>,
    expired: bool,
    args: &AggregationArgs,
    requested: Option<Phase>,
) -> Result<Vec<Phase>> {
    let order = path_phases(expired);
    let mut wanted: Vec<Phase> = match requested {
        None => order.to_vec(),
        Some(Phase::Cleanup) => vec![],
        Some(phase) => {
            let Some(at) = order.iter().position(|&p| p == phase) else {
                return Err(Error::Usage(format!(
                    "phase {} is not part of the {} path ({})",
                    phase.name(),
                    if expired { EXPIRED } else { NOT_EXPIRED },
                    order.iter().map(|p| p.name()).collect::<Vec<_>>().join(", ")
                )));
            };
            if let Some(missing) =
                order[..at].iter().find(|p| !run.is_some_and(|r| r.phase_done(p.name())))
            {
                return Err(Error::Precondition {
                    phase: phase.name(),
                    reason: format!(
                        "phase {} is not done yet: run --phase {} first (or --phase all)",
                        missing.name(),
                        missing.name()
                    ),
                });
            }
            vec![phase]
        }
    };
    if args.cleanup || requested == Some(Phase::Cleanup) {
        if let Some(missing) = order
            .iter()
            .find(|p| !run.is_some_and(|r| r.phase_done(p.name())))
            .filter(|_| requested == Some(Phase::Cleanup))
        {
            return Err(Error::Precondition {
                phase: "cleanup",
                reason: format!(
                    "phase {} is not done yet: the old CA may only be dropped once the rotation is complete (--phase all)",
                    missing.name()
                ),
            });
        }
        wanted.push(Phase::Cleanup);
    }
    Ok(wanted)
}

async fn resolve_module(ctx: &mut Ctx, dry_run: bool, unresolved: &mut Vec<String>) -> Result<()> {
    let Some(terraform) = &ctx.terraform else {
        if ctx.module.is_none() {
            unresolved.push("the bootkube module address (pass --module)".into());
        }
        return Ok(());
    };
    match terraform.state().await {
        Ok(state) => match state.choose_module(ctx.module.as_deref(), terraform.dir()) {
            Ok(module) => ctx.module = Some(module),
            Err(e) if dry_run => unresolved.push(e.to_string()),
            Err(e) => return Err(e),
        },
        Err(e) if dry_run => unresolved.push(format!("the Terraform state: {e}")),
        Err(e) => return Err(e),
    }
    Ok(())
}

async fn run_phases(ctx: &mut Ctx, todo: &[Phase], results: &mut Vec<PhaseReport>) -> Result<()> {
    for (i, &phase) in todo.iter().enumerate() {
        ctx.progress_index = i;
        let started = Instant::now();
        let outcome = run_phase(ctx, phase).await;
        let seconds = started.elapsed().as_secs_f64();
        let progress = ctx.progress.as_ref().expect("progress");
        match outcome {
            Ok((result, message)) => {
                progress.finish(i, true, &message);
                results.push(PhaseReport {
                    name: phase.name(),
                    result,
                    seconds,
                    message: Some(message),
                });
            }
            Err(e) => {
                progress.finish(i, false, &e.to_string());
                results.push(PhaseReport {
                    name: phase.name(),
                    result: "failed",
                    seconds,
                    message: Some(e.to_string()),
                });
                return Err(e);
            }
        }
    }
    Ok(())
}

/// Runs one phase: detects from the real state that it is done already, else runs its steps
/// and records each in the journal.
async fn run_phase(ctx: &mut Ctx, phase: Phase) -> Result<(&'static str, String)> {
    ctx.run_mut().begin_phase(phase.name())?;
    if let Some(why) = phases::found_done(ctx, phase).await.unwrap_or(None) {
        ctx.run_mut().end_phase(phase.name(), "done", Some(format!("found done: {why}")))?;
        return Ok(("already-done", why));
    }
    let steps = phases::steps(ctx, phase, ctx.expired);
    let mut last = String::new();
    for (n, planned) in steps.iter().enumerate() {
        ctx.reporter(phase)(&format!(
            "step {}/{}: {}",
            n + 1,
            steps.len(),
            planned.step.description
        ));
        let index = ctx.run_mut().begin_event(
            phase.name(),
            planned.step.kind,
            &planned.step.description,
        )?;
        match phases::execute(ctx, phase, &planned.action).await {
            Ok(outcome) => {
                ctx.run_mut().end_event(index, &outcome)?;
                last = outcome;
            }
            Err(e) => {
                ctx.run_mut().end_event(index, &format!("failed: {e}"))?;
                ctx.run_mut().end_phase(phase.name(), "failed", Some(e.to_string()))?;
                return Err(e);
            }
        }
    }
    ctx.run_mut().end_phase(phase.name(), "done", None)?;
    Ok(("done", last))
}

fn print_plan(
    ctx: &Ctx,
    wanted: &[Phase],
    format: OutputFormat,
    unresolved: &[String],
) -> Result<u8> {
    let phases: Vec<PhasePlan> = wanted
        .iter()
        .map(|&phase| PhasePlan {
            name: phase.name(),
            already_done: ctx.run.as_ref().is_some_and(|r| r.phase_done(phase.name())),
            steps: phases::steps(ctx, phase, ctx.expired).into_iter().map(|p| p.step).collect(),
        })
        .collect();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let written = match format {
        OutputFormat::Json => output::write_json(
            &mut out,
            &PlanReport {
                api_version: crate::status::JSON_API_VERSION,
                kind: "AggregationPlan",
                path: if ctx.expired { EXPIRED } else { NOT_EXPIRED },
                phases,
                unresolved: unresolved.to_vec(),
            },
        ),
        OutputFormat::Table => plan::render(&mut out, &phases, unresolved).map_err(Error::Output),
    };
    output::ignore_broken_pipe(written)?;
    Ok(exit::OK)
}

fn next_step(ctx: &Ctx) -> String {
    let Some(run) = &ctx.run else { return String::new() };
    let order = path_phases(ctx.expired);
    match order.iter().find(|p| !run.phase_done(p.name())) {
        Some(p) => format!("kubectl certrotate aggregation --phase {} (or --phase all)", p.name()),
        None if !ctx.expired && !run.phase_done("cleanup") => {
            "optionally drop the old CA: kubectl certrotate aggregation --phase cleanup".into()
        }
        None => "nothing: the rotation is complete".into(),
    }
}

fn report(ctx: &Ctx, phases: &[PhaseReport], format: OutputFormat, note: &str) -> Result<u8> {
    let run = ctx.run.as_ref();
    let doc = Report {
        api_version: crate::status::JSON_API_VERSION,
        kind: "AggregationRotation",
        run: run.map(|r| r.journal.run.clone()).unwrap_or_default(),
        journal: run.map(|r| r.journal_path().display().to_string()).unwrap_or_default(),
        path: if ctx.expired { EXPIRED.into() } else { NOT_EXPIRED.into() },
        phases: phases
            .iter()
            .map(|p| PhaseReport {
                name: p.name,
                result: p.result,
                seconds: p.seconds,
                message: p.message.clone(),
            })
            .collect(),
        fingerprints: run.map(|r| r.journal.fingerprints.clone()).unwrap_or_default(),
        next: next_step(ctx),
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let written = match format {
        OutputFormat::Json => output::write_json(&mut out, &doc),
        OutputFormat::Table => render(&mut out, &doc, note).map_err(Error::Output),
    };
    output::ignore_broken_pipe(written)?;
    Ok(exit::OK)
}

fn render(out: &mut impl std::io::Write, doc: &Report, note: &str) -> std::io::Result<()> {
    if !note.is_empty() {
        writeln!(out, "{note}")?;
    }
    if !doc.run.is_empty() {
        writeln!(out, "rotation {} ({} path), journal {}", doc.run, doc.path, doc.journal)?;
    }
    if !doc.phases.is_empty() {
        let mut table = Table::new(&["PHASE", "RESULT", "SECONDS", "DETAIL"]);
        for p in &doc.phases {
            table.row(vec![
                p.name.into(),
                p.result.into(),
                format!("{:.1}", p.seconds),
                p.message.clone().unwrap_or_default(),
            ]);
        }
        table.write(out)?;
    }
    for (name, value) in &doc.fingerprints {
        writeln!(out, "{name}: sha256 {value}")?;
    }
    if !doc.next.is_empty() {
        writeln!(out, "next: {}", doc.next)?;
    }
    Ok(())
}
