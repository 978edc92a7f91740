//! How every rotation runs: pick the run (resume the one in progress, never a finished one),
//! the phases asked for, check the cluster and find every program before anything changes,
//! then run phase by phase with the journal, stop cleanly on Ctrl-C, and report.
//!
//! A rotation procedure (aggregation, webhook) says only what its phases are and what each
//! step does ([`Procedure`]).

use std::io::{IsTerminal as _, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use super::context::Ctx;
use super::journal::{RunDir, RunState};
use super::lock::RotationLock;
use super::phase::{PhaseOutcome, PhaseResult, RunPath};
use super::plan::{self, PhasePlan};
use super::runs_root;
use super::step::{Planned, Running};
use crate::assets::{AssetDir, KUBECONFIG};
use crate::cli::{GlobalOpts, KubeOpts, OutputFormat};
use crate::error::{Error, Result, exit};
use crate::k8s::Connection;
use crate::output::{self, Progress, Table};
use crate::tools::cluster_env::ClusterEnv;
use crate::tools::helm::Helm;
use crate::tools::lokocfg;
use crate::tools::lokoctl::Lokoctl;
use crate::tools::terraform::Terraform;
use crate::tools::{Program, Runner, process};

/// The external programs a phase runs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Needs {
    pub terraform: bool,
    pub helm: bool,
    pub lokoctl: bool,
}

/// One phase of a procedure, as its own module implements it: what it needs, its steps, and
/// whether the real state shows it done.
pub trait PhaseUnit {
    /// The external programs its steps run.
    fn needs(&self) -> Needs {
        Needs::default()
    }

    /// Its steps, described for this asset dir (what cannot be resolved is named): one list
    /// for the dry run, which prints them, and the real run, which runs them.
    fn steps(&self, ctx: &Ctx) -> Vec<Planned>;

    /// Whether the real state shows the phase done already (a run killed before it could
    /// record it, or a rotation begun by hand); `Some(why)` if so.
    fn found_done<'a>(&'a self, _ctx: &'a Ctx) -> Running<'a, Option<String>> {
        Box::pin(async { Ok(None) })
    }
}

/// One rotation procedure: its phases and their steps.
pub trait Procedure {
    type Phase: Copy + Eq + std::fmt::Debug + 'static;

    /// The run folder prefix and the name in messages (`aggregation`).
    const NAME: &'static str;
    /// The JSON `kind` of the report (`AggregationRotation`) and of the plan.
    const REPORT_KIND: &'static str;
    const PLAN_KIND: &'static str;

    /// The phases of a path, in order.
    fn path(expired: bool) -> &'static [Self::Phase];
    /// A phase run only when asked for (the aggregation cleanup).
    fn finale() -> Option<Self::Phase>;
    fn phase_name(phase: Self::Phase) -> &'static str;
    /// The module of `phase`: its steps, its "already done?" check, what it needs.
    fn unit(phase: Self::Phase) -> &'static dyn PhaseUnit;
    /// Whether the certificate has expired already (picks the path of a new run).
    fn has_expired(assets: &AssetDir) -> Result<bool>;
    /// What must hold before anything at all is done (the asset dir has what is rotated).
    fn check_assets(assets: &AssetDir) -> Result<()>;

    /// Reads from the cluster what the plan names (the extension servers a restart covers),
    /// which also proves the cluster answers before anything changes.
    fn resolve(ctx: &mut Ctx) -> impl Future<Output = Result<()>>;
    /// What the report's `next` says once every phase is done: nothing, unless the
    /// procedure leaves steps to the operator (`renew`, whose later phases are not built).
    fn when_done() -> &'static str {
        "nothing: the rotation is complete"
    }
}

/// What the operator asked for.
#[derive(Debug, Clone, Copy)]
pub struct Request<Phase> {
    /// One phase, or `None` for every phase not yet done.
    pub phase: Option<Phase>,
    /// Also run the finale.
    pub finale: bool,
    pub expired: bool,
    pub new_run: bool,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct PhaseReport {
    name: &'static str,
    result: PhaseResult,
    seconds: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Report<'a> {
    api_version: &'static str,
    kind: &'static str,
    run: String,
    journal: String,
    path: RunPath,
    phases: &'a [PhaseReport],
    fingerprints: std::collections::BTreeMap<String, String>,
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    origins: std::collections::BTreeMap<String, String>,
    next: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct PlanReport<'a> {
    api_version: &'static str,
    kind: &'static str,
    path: RunPath,
    phases: &'a [PhasePlan],
    unresolved: &'a [String],
}

fn path_name(expired: bool) -> RunPath {
    RunPath::of(expired)
}

/// Runs procedure `P` as asked: prepares it, then prints its plan (a dry run) or executes it.
pub async fn run<P: Procedure>(global: &GlobalOpts, request: Request<P::Phase>) -> Result<u8> {
    match prepare::<P>(global, &request).await? {
        Prepared::Plan { ctx, wanted, unresolved } => {
            print_plan::<P>(&ctx, &wanted, global.output, &unresolved)
        }
        Prepared::Execute(execution) => execute::<P>(global, execution).await,
    }
}

/// What preparing a run yields.
enum Prepared<P: Procedure> {
    /// `--dry-run`: every phase asked for, to describe, and what could not be resolved.
    Plan { ctx: Ctx, wanted: Vec<P::Phase>, unresolved: Vec<String> },
    /// A real run, resolved: the lock held, the cluster verified and answering, every program
    /// its phases need found (a dry run only names what it could not resolve), the module
    /// chosen.
    Execute(Execution<P>),
}

/// A real run, prepared: what [`execute`] needs and nothing it must still look for.
struct Execution<P: Procedure> {
    ctx: Ctx,
    /// The phases asked for, and those of them the journal does not have done.
    wanted: Vec<P::Phase>,
    todo: Vec<P::Phase>,
    /// `<assets>/certrotate/`, and the name of the run (new or resumed).
    root: PathBuf,
    run_name: String,
    /// Held until the run ends: one rotation at a time per asset dir.
    _lock: RotationLock,
}

fn in_progress(latest: &Option<RunDir>) -> Option<&RunDir> {
    latest.as_ref().filter(|r| r.journal.state == RunState::InProgress)
}

/// The first half of a run: the asset dir, the lock, a killed run's leftovers, the run and
/// the phases to work on, the verified connection, the programs, the module; a dry run goes
/// on past what it cannot resolve and names it, a real run stops there, before any change.
async fn prepare<P: Procedure>(
    global: &GlobalOpts,
    request: &Request<P::Phase>,
) -> Result<Prepared<P>> {
    let dir = &crate::assets::single_asset_dir(&global.assets_dirs, P::NAME)?;
    let assets = AssetDir::open(dir)?;
    let root = runs_root(&assets);
    // Before the lock, so that an asset dir this rotation cannot work on is left as it was. A
    // run in progress passed this check when it began; a killed child of it may have left the
    // files mid-change (terraform replaces a `local_file` by deleting it first), and its phases,
    // not this check, bring them back.
    if in_progress(&RunDir::latest(&root, P::NAME)?).is_none() {
        P::check_assets(&assets)?;
    }
    // A dry run changes nothing, not even the lock file.
    let lock = if global.dry_run { None } else { Some(RotationLock::acquire(&root)?) };
    let latest = RunDir::latest(&root, P::NAME)?;
    if let Some(run) = in_progress(&latest)
        && !global.dry_run
    {
        // Nothing of a killed run may still write while this one decides what is done.
        process::stop_leftovers(&child_marker(&assets, &run.journal.run)).await;
        run.remove_scratch();
    }
    let (run, expired) = choose_run::<P>(&assets, latest, request)?;
    let wanted = wanted_phases::<P>(run.as_ref(), expired, request)?;
    let todo: Vec<P::Phase> = wanted
        .iter()
        .copied()
        .filter(|&p| !run.as_ref().is_some_and(|r| r.phase_done(P::phase_name(p))))
        .collect();
    let mut unresolved = Vec::new();
    let resuming = run.as_ref().filter(|r| r.journal.state == RunState::InProgress);
    let conn = connect(global, &assets, resuming, &mut unresolved).await?;
    // Named before anything runs, so even the children of a run's first invocation carry the
    // marker a re-run looks for.
    let run_name =
        run.as_ref().map_or_else(|| RunDir::new_name(&root, P::NAME), |r| r.journal.run.clone());
    let runner = Runner::new(
        &child_marker(&assets, &run_name),
        &root.join(&run_name),
        global.verbose,
        global.timeout.duration,
    );
    let config_dir = config_dir(global, &assets);
    let mut ctx = Ctx {
        module: global.tools.module.clone(),
        conn,
        terraform: None,
        helm: None,
        lokoctl: None,
        run,
        expired,
        timeout: global.timeout.duration,
        progress: None,
        progress_index: 0,
        terraform_dir: assets.root().join("terraform"),
        config_dir,
        runner: runner.clone(),
        extension_servers: None,
        assets,
    };
    // A dry run describes every phase asked for; a real run needs what its phases to run need.
    let described: &[P::Phase] = if global.dry_run { &wanted } else { &todo };
    find_programs::<P>(global, &mut ctx, described, &runner, &mut unresolved)?;
    resolve_module(&mut ctx, global.dry_run, &mut unresolved).await?;
    if ctx.run.is_none() && !global.dry_run {
        predecessors_done_by_hand::<P>(&ctx, request).await?;
    }
    let resuming = !global.dry_run
        && ctx.run.as_ref().is_some_and(|r| r.journal.state == RunState::InProgress);
    match resolve_once_answering::<P>(&mut ctx, resuming).await {
        Ok(()) => {}
        Err(e) if global.dry_run => unresolved.push(e.to_string()),
        // The cluster must answer before anything changes, not only when a phase needs it.
        Err(e) => return Err(e),
    }
    // Only a dry run goes without the lock, and only it may leave anything unresolved.
    let Some(lock) = lock else { return Ok(Prepared::Plan { ctx, wanted, unresolved }) };
    Ok(Prepared::Execute(Execution { ctx, wanted, todo, root, run_name, _lock: lock }))
}

/// The second half of a run: the confirmation on the plan, the run folder, the phases with
/// the journal, Ctrl-C (SIGTERM, SIGHUP), the report.
async fn execute<P: Procedure>(global: &GlobalOpts, execution: Execution<P>) -> Result<u8> {
    let Execution { mut ctx, wanted, todo, root, run_name, _lock } = execution;
    // Phases the journal has done are reported as such, so every invocation accounts for
    // every phase it was asked for.
    let mut results = done_earlier::<P>(&wanted, &todo);
    if todo.is_empty() {
        finish_if_path_done::<P>(&mut ctx)?;
        let note = if ctx.run.as_ref().is_some_and(|r| r.journal.state == RunState::Finished) {
            "nothing to do: this rotation finished (start another with --new-run)"
        } else {
            "nothing to do: every phase asked for is done"
        };
        return report::<P>(&ctx, &results, global.output, note);
    }
    if !global.yes && std::io::stdin().is_terminal() {
        // The operator decides on the plan itself, not on a list of phase names.
        let _ = plan::render(&mut std::io::stderr(), &plans::<P>(&ctx, &todo), &[]);
    }
    let names: Vec<&str> = todo.iter().map(|&p| P::phase_name(p)).collect();
    output::confirm(
        global.yes,
        &format!(
            "rotate the {} certificates of {} ({}): phases {}?",
            P::NAME,
            ctx.assets.root().display(),
            ctx.conn.as_ref().map_or("", |c| c.server.as_str()),
            names.join(", ")
        ),
    )?;
    // SIGTERM and SIGHUP (a dropped SSH session) stop the run as Ctrl-C does; listening
    // starts before the run folder exists, so no signal finds the run half made.
    let stop_signal = super::signals::stop_requested()?;
    if ctx.run.is_none() {
        let run =
            RunDir::create(&root, ctx.assets.root(), P::NAME, &run_name, path_name(ctx.expired))?;
        eprintln!(
            "rotation run {} started (journal {})",
            run.journal.run,
            run.journal_path().display()
        );
        ctx.run = Some(run);
    }
    if let Some(stale) = ctx.run_mut().running_phase() {
        ctx.run_mut().end_phase(
            &stale,
            PhaseOutcome::Interrupted,
            Some("the run stopped during this phase".into()),
        )?;
    }
    ctx.progress = Some(Progress::new(names.iter().map(|n| format!("{}/{n}", P::NAME)).collect()));
    let outcome = {
        let work = run_phases::<P>(&mut ctx, &todo, &mut results);
        tokio::pin!(work);
        tokio::select! {
            done = &mut work => Ok(done),
            signal = stop_signal => Err(signal),
        }
    };
    // Finished once its path is done, whatever the finale did: a failed cleanup can be run
    // again with --phase cleanup, or left, and --new-run starts the next rotation.
    finish_if_path_done::<P>(&mut ctx)?;
    match outcome {
        Ok(Ok(())) => report::<P>(&ctx, &results, global.output, ""),
        Ok(Err(e)) => {
            let _ = report::<P>(&ctx, &results, global.output, "");
            Err(e)
        }
        Err(signal) => {
            let stopped = process::stop_all().await;
            let phase = ctx.run()?.running_phase().unwrap_or_default();
            if !phase.is_empty() {
                ctx.run_mut().end_phase(
                    &phase,
                    PhaseOutcome::Interrupted,
                    Some(format!("interrupted ({signal})")),
                )?;
            }
            let name = P::path(ctx.expired)
                .iter()
                .chain(P::finale().iter())
                .map(|&p| P::phase_name(p))
                .find(|n| *n == phase);
            results.push(PhaseReport {
                name: name.unwrap_or("-"),
                result: PhaseResult::Interrupted,
                seconds: 0.0,
                message: None,
            });
            let _ = report::<P>(&ctx, &results, global.output, "");
            Err(Error::Interrupted { signal, phase, stopped })
        }
    }
}

/// The report's lines of the phases asked for that the journal has done already.
fn done_earlier<P: Procedure>(wanted: &[P::Phase], todo: &[P::Phase]) -> Vec<PhaseReport> {
    wanted
        .iter()
        .filter(|p| !todo.contains(p))
        .map(|&p| PhaseReport {
            name: P::phase_name(p),
            result: PhaseResult::AlreadyDone,
            seconds: 0.0,
            message: Some("done by an earlier invocation (journal)".into()),
        })
        .collect()
}

/// `--phase P` with no run in progress (a rotation an operator began by hand): every phase
/// before P but the first (the backup, which the new run takes itself) must be found done in
/// the real state, else the first that is not is named and nothing changes.
async fn predecessors_done_by_hand<P: Procedure>(
    ctx: &Ctx,
    request: &Request<P::Phase>,
) -> Result<()> {
    let order = P::path(ctx.expired);
    let Some(phase) = request.phase else { return Ok(()) };
    let Some(at) = order.iter().position(|&p| p == phase) else { return Ok(()) };
    for &before in order.iter().take(at).skip(1) {
        if P::unit(before).found_done(ctx).await?.is_none() {
            let missing = P::phase_name(before);
            return Err(Error::Precondition {
                phase: P::phase_name(phase),
                reason: format!(
                    "no {} rotation is in progress for this asset dir, and the real state does not show phase {missing} done (by hand): run --phase {missing} first, or --phase all",
                    P::NAME
                ),
            });
        }
    }
    Ok(())
}

/// Marks the run finished when every phase of its path is done.
fn finish_if_path_done<P: Procedure>(ctx: &mut Ctx) -> Result<()> {
    let Some(run) = ctx.run.as_mut() else { return Ok(()) };
    let path_done = P::path(ctx.expired).iter().all(|&p| run.phase_done(P::phase_name(p)));
    if path_done && run.journal.state == RunState::InProgress {
        run.finish()?;
    }
    Ok(())
}

/// How a phase found done is said to be, when this run never began it.
const BY_HAND: &str = "done by hand (real state)";

/// How often a re-run looks again at an API server that does not answer yet.
const API_RETRY: std::time::Duration = std::time::Duration::from_secs(2);

/// [`Procedure::resolve`], which is the first request to the cluster. A rotation in progress
/// restarts kube-apiserver several times, so a re-run may meet it restarting: then an API
/// that does not answer yet (refused, 5xx, a handshake cut) is waited for, within
/// `--timeout`, saying so; a refusal (401, 403) or anything else still fails at once.
async fn resolve_once_answering<P: Procedure>(ctx: &mut Ctx, resuming: bool) -> Result<()> {
    let first = match P::resolve(ctx).await {
        Err(e) if resuming && e.is_api_outage() => e,
        other => return other,
    };
    let server = ctx.conn.as_ref().map_or("", |c| c.server.as_str()).to_string();
    eprintln!(
        "waiting for the API server {server} to answer (a rotation is in progress and kube-apiserver may be restarting; --timeout bounds the wait): {first}"
    );
    let timeout = ctx.timeout;
    let mut last = first;
    // The bound every wait of a rotation has: --timeout around the whole wait.
    let answered =
        crate::duration::poll(timeout, API_RETRY, async || match P::resolve(ctx).await {
            Err(e) if e.is_api_outage() => {
                let said = e.to_string();
                last = e;
                Err(said)
            }
            other => Ok(other),
        })
        .await;
    answered.unwrap_or_else(|_| {
        Err(Error::ApiDown { server, secs: timeout.as_secs(), last: Box::new(last) })
    })
}

/// What every child of run `run` of this asset dir carries (`KUBECTL_CERTROTATE_RUN`): the
/// asset dir is part of it, so a re-run never stops another asset dir's rotation. The path is
/// canonical: two spellings of one asset dir (a symlink) share the lock, and so the marker.
fn child_marker(assets: &AssetDir, run: &str) -> String {
    let root = std::fs::canonicalize(assets.root()).unwrap_or_else(|_| assets.root().into());
    format!("{run}@{}", root.display())
}

/// Where a run's backup keeps `tls/ca.crt` and `auth/kubeconfig` (renew's, which re-writes
/// them; the other rotations never touch them).
const KEPT_KUBE_CA: &str = "cluster-assets/tls/ca.crt";
const KEPT_KUBECONFIG: &str = "cluster-assets/auth/kubeconfig";

/// The cluster, proven to be the asset dir's before anything changes; a dry run goes on
/// without it and says so. A run in progress (`resuming`) may find `tls/ca.crt` and
/// `auth/kubeconfig` deleted by a terraform killed mid-replace: it then uses the copies its
/// backup kept.
async fn connect(
    global: &GlobalOpts,
    assets: &AssetDir,
    resuming: Option<&RunDir>,
    unresolved: &mut Vec<String>,
) -> Result<Option<Connection>> {
    let kept_ca = resuming.map(|r| r.backup_path(KEPT_KUBE_CA));
    let kept_kubeconfig = resuming.map(|r| r.backup_path(KEPT_KUBECONFIG));
    let opts = match kept_kubeconfig.filter(|kept| kept.is_file()) {
        Some(kept) if asset_kubeconfig_deleted(&global.kube, assets) => {
            eprintln!(
                "{} is missing (a terraform cut off while re-writing it): using the copy this run kept, {}",
                assets.asset(KUBECONFIG).display(),
                kept.display()
            );
            KubeOpts { kubeconfig: Some(kept), ..global.kube.clone() }
        }
        _ => global.kube.clone(),
    };
    let opened = Connection::open(&opts, Some(assets), false, global.verbose).await;
    let checked = opened.and_then(|conn| {
        conn.verify_identity_resuming(assets, kept_ca.as_deref())
            .map(|()| conn)
            .map_err(Error::WrongCluster)
    });
    match checked {
        Ok(conn) => Ok(Some(conn)),
        Err(e) if global.dry_run => {
            unresolved.push(format!("the cluster: {e}"));
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Whether the kubeconfig the flags choose is the asset dir's `auth/kubeconfig` (by default,
/// or named by `--kubeconfig` or `$KUBECONFIG`) and that file does not exist.
fn asset_kubeconfig_deleted(opts: &KubeOpts, assets: &AssetDir) -> bool {
    let own = assets.asset(KUBECONFIG);
    if own.exists() {
        return false;
    }
    let named = opts
        .kubeconfig
        .clone()
        .or_else(|| std::env::var_os("KUBECONFIG").filter(|v| !v.is_empty()).map(PathBuf::from));
    let Some(named) = named else { return true };
    // The folders exist (only the file went): compare them resolved, for a symlinked asset dir.
    let folder = |p: &Path| p.parent().and_then(|d| d.canonicalize().ok());
    named.file_name() == own.file_name()
        && folder(&named).is_some()
        && folder(&named) == folder(&own)
}

fn config_dir(global: &GlobalOpts, assets: &AssetDir) -> PathBuf {
    global
        .tools
        .config_dir
        .clone()
        .or_else(|| std::env::var_os("CONFIG_DIR").filter(|v| !v.is_empty()).map(PathBuf::from))
        .unwrap_or_else(|| assets.root().parent().map(Path::to_path_buf).unwrap_or_default())
}

/// Where [`config_dir`] took the config dir from, for messages.
fn config_dir_source(global: &GlobalOpts) -> &'static str {
    if global.tools.config_dir.is_some() {
        "--config-dir"
    } else if std::env::var_os("CONFIG_DIR").is_some_and(|v| !v.is_empty()) {
        "$CONFIG_DIR"
    } else {
        "the asset dir's parent"
    }
}

/// Finds every program the phases need, and checks that lokoctl would apply this asset dir's
/// cluster, before anything changes. helm and lokoctl get the verified cluster alone.
fn find_programs<P: Procedure>(
    global: &GlobalOpts,
    ctx: &mut Ctx,
    phases: &[P::Phase],
    runner: &Runner,
    unresolved: &mut Vec<String>,
) -> Result<()> {
    let needs = |f: fn(Needs) -> bool| phases.iter().any(|&p| f(P::unit(p).needs()));
    let mut find =
        |needed: bool, name, flag: &Option<PathBuf>, var, flag_name| -> Result<Option<Program>> {
            if !needed {
                return Ok(None);
            }
            match Program::find(name, flag.as_deref(), var, flag_name) {
                Ok(program) => Ok(Some(program)),
                Err(e) if global.dry_run => {
                    unresolved.push(e.to_string());
                    Ok(None)
                }
                Err(e) => Err(e),
            }
        };
    let tools = &global.tools;
    let terraform =
        find(needs(|n| n.terraform), "terraform", &tools.terraform, "TERRAFORM", "--terraform")?;
    let helm = find(needs(|n| n.helm), "helm", &tools.helm, "HELM", "--helm")?;
    let lokoctl = find(needs(|n| n.lokoctl), "lokoctl", &tools.lokoctl, "LOKOCTL", "--lokoctl")?;
    if needs(|n| n.lokoctl) {
        let source = config_dir_source(global);
        match lokocfg::check_names(&ctx.config_dir, source, ctx.assets.root()) {
            Ok(_) => {}
            Err(e) if global.dry_run => unresolved.push(e.to_string()),
            Err(e) => return Err(e),
        }
    }
    // Without a verified cluster (a dry run) nothing runs helm or lokoctl.
    let cluster = ctx.conn.as_ref().map(|c| Arc::new(ClusterEnv::new(c, runner.clone())));
    ctx.terraform = terraform.map(|p| Terraform::new(p, ctx.terraform_dir.clone(), runner.clone()));
    // A real run always has the cluster; a dry run's plan names it only.
    ctx.helm = helm.map(|p| Helm::new(p, runner.clone(), cluster.clone()));
    ctx.lokoctl = lokoctl.map(|p| Lokoctl::new(p, runner.clone(), &ctx.config_dir, cluster));
    Ok(())
}

/// The bootkube module: `--module` when the state has it, else the only one there.
async fn resolve_module(ctx: &mut Ctx, dry_run: bool, unresolved: &mut Vec<String>) -> Result<()> {
    let Some(terraform) = &ctx.terraform else {
        if ctx.module.is_none() && dry_run {
            unresolved.push("the bootkube module address (pass --module)".into());
        }
        return Ok(());
    };
    let mut state = terraform.state().await;
    if state.is_err()
        && ctx.run.as_ref().is_some_and(|r| r.journal.state == RunState::InProgress)
        && let Some(pushed) = terraform.restore_emptied_state().await?
    {
        eprintln!(
            "the Terraform state in {} was empty (a terraform cut off while writing it): pushed back the state this run kept, {}",
            terraform.dir().display(),
            pushed.display()
        );
        state = terraform.state().await;
    }
    let chosen = match state {
        Ok(state) => state.choose_module(ctx.module.as_deref(), terraform.dir()),
        Err(e) => Err(e),
    };
    match chosen {
        Ok(module) => ctx.module = Some(module),
        Err(e) if dry_run => unresolved.push(e.to_string()),
        Err(e) => return Err(e),
    }
    Ok(())
}

/// The run to work on and its path: the one in progress; the latest finished one unless
/// `--new-run` (a finished run is never resumed: its phases report done, the finale may
/// follow); a new one when there is none.
fn choose_run<P: Procedure>(
    assets: &AssetDir,
    latest: Option<RunDir>,
    request: &Request<P::Phase>,
) -> Result<(Option<RunDir>, bool)> {
    match latest {
        Some(run) if run.journal.state == RunState::InProgress && request.new_run => {
            Err(Error::Usage(format!(
                "rotation {} is still in progress: finish it (run the same command without --new-run); --new-run starts a rotation only after the last one finished",
                run.journal.run
            )))
        }
        Some(run) if run.journal.state == RunState::InProgress || !request.new_run => {
            let expired = run.journal.path.expired();
            Ok((Some(run), expired))
        }
        // A phase asked for with no run in progress starts one when the real state shows its
        // predecessors done (by hand): see [`predecessors_done_by_hand`].
        _ => Ok((None, request.expired || P::has_expired(assets)?)),
    }
}

/// The phases this invocation covers, in order; a single phase needs its predecessors done.
fn wanted_phases<P: Procedure>(
    run: Option<&RunDir>,
    expired: bool,
    request: &Request<P::Phase>,
) -> Result<Vec<P::Phase>> {
    let order = P::path(expired);
    let done = |p: &P::Phase| run.is_some_and(|r| r.phase_done(P::phase_name(*p)));
    let names = || order.iter().map(|&p| P::phase_name(p)).collect::<Vec<_>>().join(", ");
    let finale_asked = request.finale || (request.phase.is_some() && request.phase == P::finale());
    let mut wanted = match request.phase {
        None => order.to_vec(),
        Some(phase) if Some(phase) == P::finale() => {
            if let Some(missing) = order.iter().find(|p| !done(p)) {
                return Err(Error::Precondition {
                    phase: P::phase_name(phase),
                    reason: format!(
                        "phase {} is not done yet: this may only run once the rotation is complete (--phase all)",
                        P::phase_name(*missing)
                    ),
                });
            }
            Vec::new()
        }
        Some(phase) => {
            let Some(at) = order.iter().position(|&p| p == phase) else {
                return Err(Error::Usage(format!(
                    "phase {} is not part of the {} path ({})",
                    P::phase_name(phase),
                    path_name(expired).name(),
                    names()
                )));
            };
            if run.is_none() {
                // A new run: its first phase (the backup), then what the real state must show
                // done by hand, then the phase asked for.
                return Ok(order[..=at].to_vec());
            }
            if let Some(missing) = order[..at].iter().find(|p| !done(p)) {
                let missing = P::phase_name(*missing);
                return Err(Error::Precondition {
                    phase: P::phase_name(phase),
                    reason: format!(
                        "phase {missing} is not done yet: run --phase {missing} first (or --phase all)"
                    ),
                });
            }
            vec![phase]
        }
    };
    if let Some(finale) = P::finale().filter(|_| finale_asked) {
        wanted.push(finale);
    }
    Ok(wanted)
}

async fn run_phases<P: Procedure>(
    ctx: &mut Ctx,
    todo: &[P::Phase],
    results: &mut Vec<PhaseReport>,
) -> Result<()> {
    for (i, &phase) in todo.iter().enumerate() {
        ctx.progress_index = i;
        let started = Instant::now();
        let outcome = run_phase::<P>(ctx, phase).await;
        let seconds = started.elapsed().as_secs_f64();
        let progress = ctx.progress.as_ref().expect("progress is set before phases run");
        let name = P::phase_name(phase);
        match outcome {
            Ok((result, message)) => {
                progress.finish(i, true, &message);
                results.push(PhaseReport { name, result, seconds, message: Some(message) });
            }
            Err(e) => {
                progress.finish(i, false, &e.to_string());
                results.push(PhaseReport {
                    name,
                    result: PhaseResult::Failed,
                    seconds,
                    message: Some(e.to_string()),
                });
                return Err(e);
            }
        }
    }
    Ok(())
}

/// Runs one phase: detects from the real state that it is done already, else runs its steps,
/// each recorded in the journal before and after.
async fn run_phase<P: Procedure>(ctx: &mut Ctx, phase: P::Phase) -> Result<(PhaseResult, String)> {
    let name = P::phase_name(phase);
    // Found done without this run having begun it before: someone did it by hand.
    let by_hand = ctx.run()?.phase_first_began(name).is_none();
    ctx.run_mut().begin_phase(name)?;
    if let Some(why) = P::unit(phase).found_done(ctx).await.unwrap_or(None) {
        let why = if by_hand { format!("{BY_HAND}: {why}") } else { why };
        ctx.run_mut().end_phase(name, PhaseOutcome::Done, Some(format!("found done: {why}")))?;
        return Ok((PhaseResult::AlreadyDone, why));
    }
    let steps = P::unit(phase).steps(ctx);
    let mut last = String::new();
    for (n, planned) in steps.iter().enumerate() {
        ctx.reporter()(&format!("step {}/{}: {}", n + 1, steps.len(), planned.step.description));
        let index =
            ctx.run_mut().begin_event(name, planned.step.kind, &planned.step.description)?;
        match planned.action.run(ctx).await {
            Ok(outcome) => {
                ctx.run_mut().end_event(index, &outcome)?;
                last = outcome;
            }
            Err(e) => {
                ctx.run_mut().end_event(index, &format!("failed: {e}"))?;
                ctx.run_mut().end_phase(name, PhaseOutcome::Failed, Some(e.to_string()))?;
                return Err(e);
            }
        }
    }
    ctx.run_mut().end_phase(name, PhaseOutcome::Done, None)?;
    Ok((PhaseResult::Done, last))
}

/// The plan of `phases` as the dry run prints it.
fn plans<P: Procedure>(ctx: &Ctx, phases: &[P::Phase]) -> Vec<PhasePlan> {
    phases
        .iter()
        .map(|&phase| PhasePlan {
            name: P::phase_name(phase),
            already_done: ctx.run.as_ref().is_some_and(|r| r.phase_done(P::phase_name(phase))),
            steps: P::unit(phase).steps(ctx).into_iter().map(|p| p.step).collect(),
        })
        .collect()
}

fn print_plan<P: Procedure>(
    ctx: &Ctx,
    wanted: &[P::Phase],
    format: OutputFormat,
    unresolved: &[String],
) -> Result<u8> {
    let phases = plans::<P>(ctx, wanted);
    let doc = PlanReport {
        api_version: crate::output::JSON_API_VERSION,
        kind: P::PLAN_KIND,
        path: path_name(ctx.expired),
        phases: &phases,
        unresolved,
    };
    write(format, &doc, |out| plan::render(out, &phases, unresolved))
}

fn next_step<P: Procedure>(ctx: &Ctx) -> String {
    let Some(run) = &ctx.run else { return String::new() };
    let pending = P::path(ctx.expired).iter().find(|&&p| !run.phase_done(P::phase_name(p)));
    match (pending, P::finale()) {
        (Some(&p), _) => {
            format!("kubectl certrotate {} --phase {} (or --phase all)", P::NAME, P::phase_name(p))
        }
        (None, Some(finale)) if !ctx.expired && !run.phase_done(P::phase_name(finale)) => {
            format!("optionally: kubectl certrotate {} --phase {}", P::NAME, P::phase_name(finale))
        }
        _ => P::when_done().into(),
    }
}

fn report<P: Procedure>(
    ctx: &Ctx,
    phases: &[PhaseReport],
    format: OutputFormat,
    note: &str,
) -> Result<u8> {
    let run = ctx.run.as_ref();
    let doc = Report {
        api_version: crate::output::JSON_API_VERSION,
        kind: P::REPORT_KIND,
        run: run.map(|r| r.journal.run.clone()).unwrap_or_default(),
        journal: run.map(|r| r.journal_path().display().to_string()).unwrap_or_default(),
        path: path_name(ctx.expired),
        phases,
        fingerprints: run.map(|r| r.journal.fingerprints.clone()).unwrap_or_default(),
        origins: run.map(|r| r.journal.origins.clone()).unwrap_or_default(),
        next: next_step::<P>(ctx),
    };
    write(format, &doc, |out| render(out, &doc, note))?;
    Ok(exit::OK)
}

/// Writes `doc` as JSON, or as `table` renders it, to stdout.
fn write(
    format: OutputFormat,
    doc: &impl Serialize,
    table: impl FnOnce(&mut std::io::StdoutLock) -> std::io::Result<()>,
) -> Result<u8> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let written = match format {
        OutputFormat::Json => output::write_json(&mut out, doc),
        // Cli::check refuses -o prometheus for every command but status.
        OutputFormat::Table | OutputFormat::Prometheus => table(&mut out).map_err(Error::Output),
    };
    output::ignore_broken_pipe(written)?;
    Ok(exit::OK)
}

fn render(out: &mut impl Write, doc: &Report, note: &str) -> std::io::Result<()> {
    if !note.is_empty() {
        writeln!(out, "{note}")?;
    }
    if !doc.run.is_empty() {
        writeln!(out, "rotation {} ({} path), journal {}", doc.run, doc.path.name(), doc.journal)?;
    }
    if !doc.phases.is_empty() {
        let mut table = Table::new(&["PHASE", "RESULT", "SECONDS", "DETAIL"]);
        for p in doc.phases {
            table.row(vec![
                p.name.into(),
                p.result.name().into(),
                format!("{:.1}", p.seconds),
                p.message.clone().unwrap_or_default(),
            ]);
        }
        table.write(out)?;
    }
    for (name, value) in &doc.fingerprints {
        writeln!(out, "{name}: sha256 {value}")?;
    }
    for (name, origin) in &doc.origins {
        writeln!(out, "{name}: {origin}")?;
    }
    if !doc.next.is_empty() {
        writeln!(out, "next: {}", doc.next)?;
    }
    Ok(())
}

/// The engine's decisions, in-process: a fake procedure whose phases record what they do, a
/// recording runner, no cluster.
#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use super::*;
    use crate::rotation::phase::{PhaseOutcome, RunPath};
    use crate::rotation::plan::StepKind;
    use crate::rotation::step::testing;
    use crate::tools::Recorder;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum F {
        Backup,
        Change,
        Unhook,
        Check,
        Finale,
    }

    /// What the fake phases did, and which the real state shows done.
    static LOG: Mutex<Vec<String>> = Mutex::new(Vec::new());
    static FOUND_DONE: Mutex<Vec<F>> = Mutex::new(Vec::new());
    static FAIL_IN: Mutex<Option<F>> = Mutex::new(None);
    /// The tests share the statics: one at a time.
    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

    struct Fake;

    /// Each fake phase is its own unit, and its one step runs as that phase.
    impl PhaseUnit for F {
        fn steps(&self, _: &Ctx) -> Vec<Planned> {
            vec![Planned::new(StepKind::Api, format!("do {self:?}"), *self)]
        }
        fn found_done<'a>(&'a self, _: &'a Ctx) -> Running<'a, Option<String>> {
            let done = FOUND_DONE.lock().unwrap().contains(self);
            Box::pin(async move { Ok(done.then(|| "the real state shows it".into())) })
        }
    }

    impl crate::rotation::step::Action for F {
        fn run<'a>(&'a self, _: &'a mut Ctx) -> Running<'a, String> {
            LOG.lock().unwrap().push(Fake::phase_name(*self).into());
            let failed = *FAIL_IN.lock().unwrap() == Some(*self);
            Box::pin(async move {
                if failed {
                    return Err(Error::Verification { phase: "x", reason: "killed here".into() });
                }
                Ok("did it".into())
            })
        }
    }

    impl Procedure for Fake {
        type Phase = F;
        const NAME: &'static str = "fake";
        const REPORT_KIND: &'static str = "FakeRotation";
        const PLAN_KIND: &'static str = "FakePlan";

        fn path(expired: bool) -> &'static [F] {
            if expired {
                &[F::Backup, F::Unhook, F::Change, F::Check]
            } else {
                &[F::Backup, F::Change, F::Check]
            }
        }
        fn finale() -> Option<F> {
            Some(F::Finale)
        }
        fn phase_name(phase: F) -> &'static str {
            match phase {
                F::Backup => "backup",
                F::Change => "change",
                F::Unhook => "unhook",
                F::Check => "check",
                F::Finale => "finale",
            }
        }
        fn unit(phase: F) -> &'static dyn PhaseUnit {
            match phase {
                F::Backup => &F::Backup,
                F::Change => &F::Change,
                F::Unhook => &F::Unhook,
                F::Check => &F::Check,
                F::Finale => &F::Finale,
            }
        }
        fn has_expired(_: &AssetDir) -> Result<bool> {
            Ok(false)
        }
        fn check_assets(_: &AssetDir) -> Result<()> {
            Ok(())
        }
        async fn resolve(_: &mut Ctx) -> Result<()> {
            Ok(())
        }
    }

    fn request(phase: Option<F>) -> Request<F> {
        Request { phase, finale: false, expired: false, new_run: false }
    }

    /// A run of `Fake` on `path` with `done` phases done, and `running` left running (killed).
    fn run_with(root: &Path, path: RunPath, done: &[F], running: Option<F>) -> RunDir {
        let name = RunDir::new_name(root, Fake::NAME);
        let mut run = RunDir::create(root, root, Fake::NAME, &name, path).unwrap();
        for &p in done {
            run.begin_phase(Fake::phase_name(p)).unwrap();
            run.end_phase(Fake::phase_name(p), PhaseOutcome::Done, None).unwrap();
        }
        if let Some(p) = running {
            run.begin_phase(Fake::phase_name(p)).unwrap();
        }
        run
    }

    fn names(phases: &[F]) -> Vec<&'static str> {
        phases.iter().map(|&p| Fake::phase_name(p)).collect()
    }

    #[test]
    fn which_run_is_chosen() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("certrotate");
        std::fs::create_dir_all(tmp.path().join("cluster-assets")).unwrap();
        let assets = AssetDir::open(tmp.path()).unwrap();
        let new_run = Request { new_run: true, ..request(None) };
        // None: a new run, its path from the certificate (or --expired).
        let (run, expired) = choose_run::<Fake>(&assets, None, &request(None)).unwrap();
        assert!(run.is_none() && !expired);
        let asked = Request { expired: true, ..request(None) };
        assert!(choose_run::<Fake>(&assets, None, &asked).unwrap().1);
        // In progress: resumed on its own path, whatever is asked; --new-run is refused.
        let mut in_progress = run_with(&root, RunPath::Expired, &[F::Backup], None);
        let (run, expired) =
            choose_run::<Fake>(&assets, Some(in_progress.clone()), &request(None)).unwrap();
        assert_eq!(run.unwrap().journal.run, in_progress.journal.run);
        assert!(expired, "the run's own path");
        let refused = choose_run::<Fake>(&assets, Some(in_progress.clone()), &new_run);
        assert!(matches!(refused, Err(Error::Usage(_))), "{refused:?}");
        // Finished: reported (never resumed) unless --new-run, which starts a new one.
        in_progress.finish().unwrap();
        let finished = in_progress;
        let (run, _) = choose_run::<Fake>(&assets, Some(finished.clone()), &request(None)).unwrap();
        assert_eq!(run.unwrap().journal.state, RunState::Finished);
        let (run, expired) = choose_run::<Fake>(&assets, Some(finished), &new_run).unwrap();
        assert!(run.is_none() && !expired, "a new run, on the path the certificate says");
    }

    #[test]
    fn which_phases_a_request_covers() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("certrotate");
        let with_finale = Request { finale: true, ..request(None) };
        let half = run_with(&root, RunPath::NotExpired, &[F::Backup], None);
        let whole = run_with(&root, RunPath::NotExpired, &[F::Backup, F::Change, F::Check], None);
        type Case<'a> =
            (&'a str, Option<&'a RunDir>, bool, Request<F>, Result<Vec<&'a str>, &'a str>);
        let cases: Vec<Case> = vec![
            ("all, no run", None, false, request(None), Ok(vec!["backup", "change", "check"])),
            (
                "all, expired path",
                None,
                true,
                request(None),
                Ok(vec!["backup", "unhook", "change", "check"]),
            ),
            (
                "all and the finale",
                None,
                false,
                with_finale,
                Ok(vec!["backup", "change", "check", "finale"]),
            ),
            (
                "all of a run half done (the engine skips what is done)",
                Some(&half),
                false,
                request(None),
                Ok(vec!["backup", "change", "check"]),
            ),
            (
                "one phase, predecessors done",
                Some(&half),
                false,
                request(Some(F::Change)),
                Ok(vec!["change"]),
            ),
            (
                "one phase, a predecessor not done",
                Some(&half),
                false,
                request(Some(F::Check)),
                Err("phase change is not done yet"),
            ),
            // Issue 18: without a run, the new run's first phase, the predecessors the real
            // state must show done by hand, then the phase.
            (
                "one phase, no run",
                None,
                false,
                request(Some(F::Check)),
                Ok(vec!["backup", "change", "check"]),
            ),
            (
                "a phase off the path",
                None,
                false,
                request(Some(F::Unhook)),
                Err("not part of the not-expired path"),
            ),
            (
                "the finale before the path is done",
                Some(&half),
                false,
                request(Some(F::Finale)),
                Err("may only run once the rotation is complete"),
            ),
            (
                "the finale once it is",
                Some(&whole),
                false,
                request(Some(F::Finale)),
                Ok(vec!["finale"]),
            ),
        ];
        for (case, run, expired, request, want) in cases {
            let got = wanted_phases::<Fake>(run, expired, &request);
            match (got, want) {
                (Ok(got), Ok(want)) => assert_eq!(names(&got), want, "{case}"),
                (Err(e), Err(want)) => assert!(e.to_string().contains(want), "{case}: {e}"),
                (got, want) => panic!("{case}: got {got:?}, want {want:?}"),
            }
        }
    }

    /// A context of the fake procedure on run `run`, path `expired`.
    fn ctx(tmp: &Path, run: Option<RunDir>, expired: bool) -> Ctx {
        let mut ctx = testing::ctx(tmp, expired, Duration::from_secs(5), &Recorder::default());
        ctx.run = run;
        ctx
    }

    #[tokio::test]
    async fn a_phase_asked_for_without_a_run_needs_its_predecessors_found_done() {
        let _serial = SERIAL.lock().await;
        let tmp = tempfile::tempdir().unwrap();
        let ctx = ctx(tmp.path(), None, true);
        FOUND_DONE.lock().unwrap().clear();
        // The backup is the new run's own; unhook must be found done before change.
        let err = predecessors_done_by_hand::<Fake>(&ctx, &request(Some(F::Change))).await;
        assert!(err.unwrap_err().to_string().contains("does not show phase unhook done"));
        FOUND_DONE.lock().unwrap().push(F::Unhook);
        predecessors_done_by_hand::<Fake>(&ctx, &request(Some(F::Change))).await.unwrap();
        predecessors_done_by_hand::<Fake>(&ctx, &request(Some(F::Backup))).await.unwrap();
        predecessors_done_by_hand::<Fake>(&ctx, &request(None)).await.unwrap();
        FOUND_DONE.lock().unwrap().clear();
    }

    /// Killed in each phase in turn, the re-run goes on from that phase (marked interrupted
    /// by the run), never redoes one done, and finishes the run once its path is done.
    #[tokio::test]
    async fn resume_after_a_kill_in_each_phase() {
        let _serial = SERIAL.lock().await;
        let path = Fake::path(false);
        for (at, &killed) in path.iter().enumerate() {
            let tmp = tempfile::tempdir().unwrap();
            let root = tmp.path().join("certrotate");
            let run = run_with(&root, RunPath::NotExpired, &path[..at], Some(killed));
            let mut ctx = ctx(tmp.path(), Some(run), false);
            ctx.progress = Some(Progress::new(names(path).iter().map(|n| n.to_string()).collect()));
            LOG.lock().unwrap().clear();
            let todo: Vec<F> = path
                .iter()
                .copied()
                .filter(|&p| !ctx.run().unwrap().phase_done(Fake::phase_name(p)))
                .collect();
            assert_eq!(todo, path[at..], "killed in {killed:?}");
            let stale = ctx.run_mut().running_phase().unwrap();
            ctx.run_mut().end_phase(&stale, PhaseOutcome::Interrupted, None).unwrap();
            let mut results = Vec::new();
            run_phases::<Fake>(&mut ctx, &todo, &mut results).await.unwrap();
            assert_eq!(*LOG.lock().unwrap(), names(&path[at..]), "killed in {killed:?}");
            assert!(results.iter().all(|r| r.result == PhaseResult::Done));
            finish_if_path_done::<Fake>(&mut ctx).unwrap();
            let journal = &ctx.run().unwrap().journal;
            assert_eq!(journal.state, RunState::Finished, "killed in {killed:?}");
            let interrupted: Vec<&str> = journal
                .phases
                .iter()
                .filter(|p| p.outcome == PhaseOutcome::Interrupted)
                .map(|p| p.name.as_str())
                .collect();
            assert_eq!(interrupted, [Fake::phase_name(killed)]);
        }
    }

    /// A phase the real state shows done is recorded as such, and as done by hand when this
    /// run never began it; a failing phase stops the run, the rest untouched.
    #[tokio::test]
    async fn found_done_by_hand_and_failures() {
        let _serial = SERIAL.lock().await;
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("certrotate");
        let run = run_with(&root, RunPath::NotExpired, &[F::Backup], None);
        let mut ctx = ctx(tmp.path(), Some(run), false);
        ctx.progress = Some(Progress::new(vec!["change".into(), "check".into()]));
        LOG.lock().unwrap().clear();
        *FOUND_DONE.lock().unwrap() = vec![F::Change];
        *FAIL_IN.lock().unwrap() = Some(F::Check);
        let mut results = Vec::new();
        let outcome = run_phases::<Fake>(&mut ctx, &[F::Change, F::Check], &mut results).await;
        FOUND_DONE.lock().unwrap().clear();
        *FAIL_IN.lock().unwrap() = None;
        assert!(outcome.is_err());
        assert_eq!(*LOG.lock().unwrap(), ["check"], "change was found done, not run");
        let got: Vec<(&str, PhaseResult)> = results.iter().map(|r| (r.name, r.result)).collect();
        assert_eq!(got, [("change", PhaseResult::AlreadyDone), ("check", PhaseResult::Failed)]);
        assert!(results[0].message.as_deref().unwrap().starts_with(BY_HAND), "{:?}", results[0]);
        finish_if_path_done::<Fake>(&mut ctx).unwrap();
        assert_eq!(ctx.run().unwrap().journal.state, RunState::InProgress);
        assert_eq!(
            next_step::<Fake>(&ctx),
            "kubectl certrotate fake --phase check (or --phase all)"
        );
    }

    #[test]
    fn phases_done_earlier_are_reported_as_such() {
        let wanted = [F::Backup, F::Change, F::Check, F::Finale];
        let report = done_earlier::<Fake>(&wanted, &[F::Check, F::Finale]);
        let got: Vec<(&str, PhaseResult)> = report.iter().map(|r| (r.name, r.result)).collect();
        assert_eq!(
            got,
            [("backup", PhaseResult::AlreadyDone), ("change", PhaseResult::AlreadyDone)]
        );
        let json = serde_json::to_value(&report[0]).unwrap();
        assert_eq!(json["result"], "already-done");
        assert_eq!(json["message"], "done by an earlier invocation (journal)");
    }

    /// A run whose path is done is finished even when nothing ran (the phases were done by
    /// an earlier invocation), and then says the finale is optional.
    #[tokio::test]
    async fn a_run_whose_path_is_done_is_finished() {
        let _serial = SERIAL.lock().await;
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("certrotate");
        let run = run_with(&root, RunPath::NotExpired, Fake::path(false), None);
        let mut ctx = ctx(tmp.path(), Some(run), false);
        assert_eq!(ctx.run().unwrap().journal.state, RunState::InProgress);
        finish_if_path_done::<Fake>(&mut ctx).unwrap();
        assert_eq!(ctx.run().unwrap().journal.state, RunState::Finished);
        assert_eq!(next_step::<Fake>(&ctx), "optionally: kubectl certrotate fake --phase finale");
    }

    /// A run in progress falls back on its kept kubeconfig only when the one chosen is the
    /// asset dir's own and it is gone; through a symlinked asset dir too.
    #[test]
    fn only_the_asset_dirs_own_deleted_kubeconfig_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("assets");
        std::fs::create_dir_all(real.join("cluster-assets/auth")).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let assets = AssetDir::open(&link).unwrap();
        let named = |path: PathBuf| KubeOpts { kubeconfig: Some(path), ..Default::default() };
        let own = real.join("cluster-assets/auth/kubeconfig");
        assert!(asset_kubeconfig_deleted(&named(own.clone()), &assets), "named by its real path");
        let elsewhere = dir.path().join("kubeconfig");
        std::fs::write(&elsewhere, "").unwrap();
        assert!(!asset_kubeconfig_deleted(&named(elsewhere), &assets), "another kubeconfig");
        std::fs::write(&own, "").unwrap();
        assert!(!asset_kubeconfig_deleted(&named(own), &assets), "it exists");
    }
}
