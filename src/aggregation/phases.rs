//! The phases of the aggregation rotation, as the steps each takes. One list serves both the
//! dry run (described) and the real run (executed), so the plan printed is the plan run.

use std::time::Duration;

use base64::Engine as _;
use serde_json::json;

use super::Phase;
use crate::assets::{self, TerraformResources};
use crate::error::{Error, Result};
use crate::k8s::objects;
use crate::k8s::rollout;
use crate::pki::{self, CertInfo};
use crate::rotation::context::Ctx;
use crate::rotation::engine::Planned;
use crate::rotation::plan::StepKind;
use crate::tools::Command;
use crate::tools::helm::Release;

pub const CA_CERT: &str = "tls/aggregation-ca.crt";
pub const CA_KEY: &str = "tls/aggregation-ca.key";
pub const CLIENT_CERT: &str = "tls/aggregation-client.crt";
pub const CLIENT_KEY: &str = "tls/aggregation-client.key";
const RELEASE: &str = "kube-apiserver";
/// The chart lokoctl unpacked into the asset dir, inside `cluster-assets/`.
const CHART: &str = "charts/kube-system/kube-apiserver";
pub const NAMESPACE: &str = "kube-system";
pub const SECRET: &str = "kube-apiserver";
const AUTH_CONFIGMAP: &str = "extension-apiserver-authentication";
const AUTH_KEY: &str = "requestheader-client-ca-file";
/// How often a wait for kube-apiserver to republish its ConfigMap looks again.
const POLL: Duration = Duration::from_secs(1);

/// The Terraform resources of the aggregation CA and client certificate, from the asset dir
/// model (whose addresses a test checks against real state).
fn resources(credential: &str) -> &'static TerraformResources {
    &assets::credential(credential)
        .expect("the asset dir model has the aggregation credentials")
        .terraform
}

fn ca_key() -> &'static str {
    resources("aggregation-ca").key
}

fn ca_cert() -> &'static str {
    resources("aggregation-ca").cert.expect("the aggregation CA has a certificate")
}

fn client_key() -> &'static str {
    resources("aggregation-client").key
}

fn client_cert() -> &'static str {
    resources("aggregation-client").cert.expect("the aggregation client has a certificate")
}

/// The `local_file` that writes the CA key.
fn ca_key_file() -> &'static str {
    let files = resources("aggregation-ca").files;
    files.iter().find(|f| f.contains("-key")).expect("the CA key has a local_file")
}

/// The `local_file` that writes the client certificate (not its key).
fn client_cert_file() -> &'static str {
    let files = resources("aggregation-client").files;
    files.iter().find(|f| f.contains("-crt")).expect("the client certificate has a local_file")
}

/// What one step does when it runs.
#[derive(Debug, Clone)]
pub enum Action {
    /// Copy the CA (and client) certificate and key into the run's backup folder.
    Backup,
    /// `terraform taint` the CA key, unless the state already holds a new or tainted one.
    TaintCaKey,
    /// `terraform taint` the client certificate, unless the state's is already new.
    TaintClientCert,
    /// `terraform apply -target …`.
    Apply(Vec<&'static str>),
    /// `helm upgrade kube-apiserver` with one value set from the asset dir.
    HelmUpgrade(ChartValue),
    /// Wait for the kube-apiserver rollout the upgrade started.
    WaitKubeApiserver,
    RestartExtensionServers,
    /// Every release a killed helm or lokoctl left `pending-*` rolled back to its latest
    /// revision: lokoctl, run with `--skip-pre-update-health-check`, would not.
    RecoverReleases,
    Lokoctl,
    DeleteAuthConfigMap,
    RestartKubeApiserver,
    Verify(Check),
}

#[derive(Debug, Clone, Copy)]
pub enum ChartValue {
    /// `apiserver.aggregationCaCert` = base64(old CA + new CA).
    CaBundle,
    /// `apiserver.aggregationClientCert` = base64(the new client certificate).
    ClientCert,
}

impl ChartValue {
    /// What the values file sets, as plans and command lines show it.
    fn shown(self) -> String {
        match self {
            Self::CaBundle => "apiserver.aggregationCaCert = base64(old CA + new CA)".into(),
            Self::ClientCert => format!("apiserver.aggregationClientCert = base64({CLIENT_CERT})"),
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub enum Check {
    BackupReadsBack,
    /// The state holds a new CA; `files`: the asset dir's files hold it too.
    NewCa {
        files: bool,
    },
    /// Secret and ConfigMap trust old and new CA.
    BundleServed,
    /// The Secret serves a client certificate of the new CA.
    ClientServed,
    /// Secret and ConfigMap trust the new CA (the expired path replaces, not bundles).
    NewCaServed,
    /// `terraform plan` has no aggregation change left, the files equal the state, and the
    /// Secret holds what lokoctl applied from them.
    NothingPending,
    /// The ConfigMap trusts only the new CA.
    OnlyNewCaTrusted,
}

/// The steps of `phase`, described for this asset dir (what cannot be resolved is named).
pub fn steps(ctx: &Ctx, phase: Phase) -> Vec<Planned<Action>> {
    let expired = ctx.expired;
    use Action as A;
    use StepKind as K;
    let ca_targets =
        if expired { vec![ca_cert()] } else { resources("aggregation-ca").files.to_vec() };
    match phase {
        Phase::Backup => vec![
            Planned::new(
                K::File,
                format!(
                    "copy the CA the cluster trusts and its key ({CA_CERT} and {CA_KEY}, or where a rotation begun by hand left them), {CLIENT_CERT} and {CLIENT_KEY} into the run's backup folder (0600)"
                ),
                A::Backup,
            ),
            Planned::new(
                K::Check,
                "the copies read back equal to what was kept".into(),
                A::Verify(Check::BackupReadsBack),
            ),
        ],
        Phase::Ca => vec![
            Planned::command(
                &ctx.taint_command(ca_key()),
                " (skipped when the state already holds a new or tainted CA key)",
                A::TaintCaKey,
            ),
            Planned::command(&ctx.apply_command(&ca_targets), "", A::Apply(ca_targets.clone())),
            Planned::new(
                K::Check,
                if expired {
                    "the state holds a new CA certificate, not the backed-up one".into()
                } else {
                    format!(
                        "{CA_CERT} and {CA_KEY} hold a new CA, equal to the state, key matching"
                    )
                },
                A::Verify(Check::NewCa { files: !expired }),
            ),
        ],
        Phase::Bundle => [
            upgrade_steps(ctx, ChartValue::CaBundle),
            vec![Planned::new(
                K::Check,
                format!(
                    "secret {NAMESPACE}/{SECRET} and configmap {NAMESPACE}/{AUTH_CONFIGMAP} ({AUTH_KEY}) trust the old and the new CA"
                ),
                A::Verify(Check::BundleServed),
            )],
        ]
        .into_iter()
        .flatten()
        .collect(),
        Phase::Restart => vec![Planned::new(
            K::Api,
            format!(
                "restart every extension API server ({}) as kubectl rollout restart, wait as kubectl rollout status, then for their APIServices to be Available and answer through the aggregator; read which CA each pod loaded",
                servers(ctx)
            ),
            A::RestartExtensionServers,
        )],
        Phase::Client => [
            vec![
                Planned::command(
                    &ctx.taint_command(client_cert()),
                    " (skipped when the state's certificate is already signed by the new CA)",
                    A::TaintClientCert,
                ),
                Planned::command(
                    &ctx.apply_command(&[client_cert_file()]),
                    "",
                    A::Apply(vec![client_cert_file()]),
                ),
            ],
            upgrade_steps(ctx, ChartValue::ClientCert),
            vec![Planned::new(
                K::Check,
                format!(
                    "secret {NAMESPACE}/{SECRET} serves the new client certificate, signed by the new CA; APIServices Available"
                ),
                A::Verify(Check::ClientServed),
            )],
        ]
        .into_iter()
        .flatten()
        .collect(),
        Phase::Apply => {
            let (recover, then) = ctx.recover_releases_command();
            let mut steps = vec![
                Planned::command(&recover, &then, A::RecoverReleases),
                Planned::command(&ctx.plan_lokoctl(true), "", A::Lokoctl),
            ];
            if expired {
                steps.push(Planned::new(
                    K::Check,
                    format!("the files equal the state; secret {NAMESPACE}/{SECRET} holds the files' CA and client certificate (what lokoctl applied); configmap {AUTH_CONFIGMAP} trusts the new CA"),
                    A::Verify(Check::NewCaServed),
                ));
            } else {
                steps.push(Planned::new(
                    K::Check,
                    format!("terraform plan shows no change left to the aggregation resources; the files equal the state; secret {NAMESPACE}/{SECRET} holds the new CA and serves the new client certificate (what lokoctl applied)"),
                    A::Verify(Check::NothingPending),
                ));
            }
            steps
        }
        Phase::Cleanup => vec![
            Planned::new(
                K::Api,
                format!(
                    "DELETE configmap {NAMESPACE}/{AUTH_CONFIGMAP} (kube-apiserver only ever adds CAs to it)"
                ),
                A::DeleteAuthConfigMap,
            ),
            Planned::new(
                K::Api,
                format!(
                    "restart kube-apiserver in {NAMESPACE} (kubectl rollout restart) and wait for it, riding through the API outage"
                ),
                A::RestartKubeApiserver,
            ),
            Planned::new(
                K::Check,
                format!("configmap {AUTH_CONFIGMAP} is back and trusts only the new CA"),
                A::Verify(Check::OnlyNewCaTrusted),
            ),
            Planned::new(
                K::Api,
                format!(
                    "restart every extension API server again ({}), wait for their APIServices to be Available",
                    servers(ctx)
                ),
                A::RestartExtensionServers,
            ),
        ],
    }
}

/// A helm upgrade of kube-apiserver setting one value, and the wait for the rollout it starts.
fn upgrade_steps(ctx: &Ctx, value: ChartValue) -> Vec<Planned<Action>> {
    let chart = ctx.asset(CHART);
    let release = Release { name: RELEASE, namespace: NAMESPACE, chart: &chart };
    vec![
        Planned::command(
            &ctx.plan_helm().plan_upgrade(&release, &value.shown()),
            " (a release left pending is rolled back to its latest revision first; a failed upgrade is retried)",
            Action::HelmUpgrade(value),
        ),
        Planned::new(
            StepKind::Api,
            format!("watch the kube-apiserver rollout in {NAMESPACE} until complete"),
            Action::WaitKubeApiserver,
        ),
    ]
}

/// Whether the real state shows `phase` done already (a run killed before it could record
/// it); `Some(why)` if so.
pub async fn found_done(ctx: &Ctx, phase: Phase) -> Result<Option<String>> {
    match phase {
        Phase::Backup => Ok(None),
        Phase::Ca => {
            let state = ctx.terraform()?.state().await?;
            let new = state_ca(ctx, &state)?;
            let old = old_ca(ctx).await?;
            let key_tainted = state.instance(&ctx.addr(ca_key())).is_some_and(|i| i.tainted);
            if new.sha256 == old.sha256 || key_tainted {
                return Ok(None);
            }
            if ctx.expired {
                return Ok(Some("the state already holds a new CA".into()));
            }
            let file = ctx.file_cert(CA_CERT)?;
            if file.sha256 != new.sha256 {
                return Ok(None);
            }
            if ctx.key_matches(CA_KEY, &file) {
                return Ok(Some("the state and the files already hold a new CA".into()));
            }
            // Asked before a run exists (a phase after `ca` with no run in progress): the
            // manual procedure's targeted apply leaves the key file stale, which the new run's
            // backup re-writes from the state; within a run a stale key file means `ca`'s
            // apply did not finish.
            let state_key =
                state.attribute(&ctx.addr(ca_key()), "public_key_pem").unwrap_or_default();
            let by_hand = ctx.run.is_none()
                && pki::public_key_half(state_key.as_bytes()).ok() == pki::certificate_half(&file);
            Ok(by_hand.then(|| {
                format!("the state and {CA_CERT} hold a new CA (its key file is re-written by the backup)")
            }))
        }
        Phase::Bundle => {
            // A release left pending (helm killed during --wait) goes through the recovery.
            if !release_deployed(ctx).await? {
                return Ok(None);
            }
            let (old, new) = (old_ca(ctx).await?, new_ca(ctx).await?);
            Ok(bundle_served(ctx, &old, &new)
                .await?
                .is_ok()
                .then(|| "the cluster already trusts both CAs".into()))
        }
        Phase::Client => {
            if !release_deployed(ctx).await? {
                return Ok(None);
            }
            let new = new_ca(ctx).await?;
            let served = client_served(ctx, &new).await?;
            Ok(served
                .is_ok()
                .then(|| "the cluster already serves a client certificate of the new CA".into()))
        }
        Phase::Cleanup => {
            let new = new_ca(ctx).await?;
            let trusted = trusted_cas(ctx).await?;
            if !(trusted.len() == 1 && trusted[0].sha256 == new.sha256) {
                return Ok(None);
            }
            // The cleanup ends with the extension servers' restart: done only once every one
            // of their pods is younger than the ConfigMap they must load.
            let client = &ctx.conn()?.client;
            let Some(created) =
                objects::configmap_created(client, NAMESPACE, AUTH_CONFIGMAP).await?
            else {
                return Ok(None);
            };
            let found = crate::k8s::discovery::discover(client).await?;
            let restarted = found
                .servers
                .iter()
                .flat_map(|s| &s.pods)
                .all(|pod| pod.created.is_some_and(|at| at >= created));
            Ok(restarted.then(|| {
                format!(
                    "{AUTH_CONFIGMAP} already trusts only the new CA, and every extension server was restarted after it"
                )
            }))
        }
        Phase::Restart | Phase::Apply => Ok(None),
    }
}

/// Whether the kube-apiserver release's latest revision is deployed (not left pending).
async fn release_deployed(ctx: &Ctx) -> Result<bool> {
    let chart = ctx.asset(CHART);
    let release = Release { name: RELEASE, namespace: NAMESPACE, chart: &chart };
    let history = ctx.helm()?.history(&release).await?;
    Ok(history.iter().max_by_key(|r| r.revision).is_some_and(|r| r.status == "deployed"))
}

/// The command a command step runs, built as the real run builds it (with the verified
/// cluster's kubeconfig; `helm upgrade`'s values file shown as what it sets); `None`
/// for a step that runs none. The plan renders each of these from the same builders.
pub fn run_command(ctx: &Ctx, action: &Action) -> Result<Option<Command>> {
    Ok(Some(match action {
        Action::TaintCaKey => ctx.terraform()?.taint_command(&ctx.addr(ca_key())),
        Action::TaintClientCert => ctx.terraform()?.taint_command(&ctx.addr(client_cert())),
        Action::Apply(targets) => {
            let targets: Vec<String> = targets.iter().map(|t| ctx.addr(t)).collect();
            ctx.terraform()?.apply_command(&targets)
        }
        Action::HelmUpgrade(value) => {
            let chart = ctx.asset(CHART);
            let release = Release { name: RELEASE, namespace: NAMESPACE, chart: &chart };
            // The real file is written by the upgrade itself; every line shows it as what it
            // sets, so any path stands for it here (and nothing is written).
            ctx.helm()?.upgrade_command(&release, "values.json", &value.shown())?
        }
        Action::RecoverReleases => ctx.helm()?.list_pending_command()?,
        Action::Lokoctl => ctx.lokoctl()?.apply_command(true)?,
        _ => return Ok(None),
    }))
}

/// Runs one step; returns what to record of it.
pub async fn execute(ctx: &mut Ctx, phase: Phase, action: &Action) -> Result<String> {
    match action {
        Action::Backup => backup(ctx).await,
        Action::TaintCaKey => {
            let state = ctx.terraform()?.state().await?;
            let address = ctx.addr(ca_key());
            let Some(key) = state.instance(&address) else {
                return Ok(destroyed_not_created(&address));
            };
            if key.tainted {
                return Ok("skipped: the CA key is already tainted (an earlier run stopped before applying)".into());
            }
            let state_key =
                key.attributes.get("public_key_pem").and_then(|v| v.as_str()).unwrap_or_default();
            let old = old_ca(ctx).await?;
            let same_key =
                pki::public_key_half(state_key.as_bytes()).ok() == pki::certificate_half(&old);
            if !same_key {
                return Ok("skipped: the state already holds a new CA key".into());
            }
            let taint = run_command(ctx, action)?.expect("a taint runs a command");
            ctx.terraform()?.change(taint).await?;
            Ok("tainted".into())
        }
        Action::TaintClientCert => {
            let state = ctx.terraform()?.state().await?;
            let address = ctx.addr(client_cert());
            let Some(instance) = state.instance(&address) else {
                return Ok(destroyed_not_created(&address));
            };
            if instance.tainted {
                return Ok("skipped: already tainted".into());
            }
            let pem =
                instance.attributes.get("cert_pem").and_then(|v| v.as_str()).unwrap_or_default();
            let cert =
                pki::parse_one_cert(pem.as_bytes()).map_err(|p| state_problem(ctx, &address, p))?;
            if pki::issued_by(&cert, &new_ca(ctx).await?) {
                return Ok(
                    "skipped: the state's client certificate is already signed by the new CA"
                        .into(),
                );
            }
            let taint = run_command(ctx, action)?.expect("a taint runs a command");
            ctx.terraform()?.change(taint).await?;
            Ok("tainted".into())
        }
        Action::Apply(_) => {
            let apply = run_command(ctx, action)?.expect("an apply runs a command");
            ctx.terraform()?.change(apply).await?;
            Ok("applied".into())
        }
        Action::HelmUpgrade(value) => helm_upgrade(ctx, *value).await,
        Action::WaitKubeApiserver => {
            let conn = ctx.conn()?;
            let report = ctx.reporter();
            let workload = rollout::wait_kube_apiserver(&conn.client, ctx.timeout, &report).await?;
            Ok(format!("{workload} rolled out"))
        }
        Action::RestartExtensionServers => {
            let new = new_ca(ctx).await?;
            let conn = ctx.conn()?;
            let done =
                crate::extension_servers::restart_for_rotation(conn, ctx.timeout, &new).await?;
            if !done.problems.is_empty() {
                return Err(Error::Verification {
                    phase: phase.name(),
                    reason: done.problems.join("; "),
                });
            }
            let loaded = if done.loaded_ca.is_empty() {
                String::new()
            } else {
                format!("; {}", done.loaded_ca.join(", "))
            };
            Ok(format!("restarted {} workload(s), APIServices Available{loaded}", done.restarted))
        }
        Action::RecoverReleases => ctx.helm()?.recover_pending_releases().await,
        Action::Lokoctl => {
            // lokoctl's terraform apply changes the state too.
            ctx.terraform()?.keep_state().await?;
            ctx.lokoctl()?.apply(true).await?;
            Ok("applied".into())
        }
        Action::DeleteAuthConfigMap => {
            let deleted =
                objects::delete_configmap(&ctx.conn()?.client, NAMESPACE, AUTH_CONFIGMAP).await?;
            Ok(format!("{deleted:?}"))
        }
        Action::RestartKubeApiserver => {
            let conn = ctx.conn()?;
            let report = ctx.reporter();
            let workload =
                rollout::restart_kube_apiserver(&conn.client, ctx.timeout, &report).await?;
            Ok(format!("{workload} restarted"))
        }
        Action::Verify(check) => verify(ctx, phase, *check).await,
    }
}

/// A taint step's outcome when its resource is missing from the state: terraform was killed
/// between destroying the tainted instance and creating the new one, and the apply that
/// follows creates it.
fn destroyed_not_created(address: &str) -> String {
    format!(
        "skipped: the state has no {address} (destroyed by an interrupted apply); the apply creates it"
    )
}

/// The extension servers' workloads, as the plan names them.
fn servers(ctx: &Ctx) -> String {
    match &ctx.extension_servers {
        Some(found) if found.is_empty() => "none found now".into(),
        Some(found) => found.join(", "),
        None => "not resolved".into(),
    }
}

/// The CA the run started from (its backup); before the backup exists (a phase asked for
/// with no run in progress, whose predecessors the real state must show done), the CA the
/// cluster trusts.
async fn old_ca(ctx: &Ctx) -> Result<CertInfo> {
    match &ctx.run {
        Some(run) if run.backup_path(backup_name(CA_CERT)).exists() => {
            ctx.backup_cert(backup_name(CA_CERT))
        }
        _ => Ok(super::old_ca::find(ctx).await?.cert),
    }
}

/// The CA the `ca` phase made; on the expired path the files hold it only after `apply`.
async fn new_ca(ctx: &Ctx) -> Result<CertInfo> {
    let cert = ctx.file_cert(CA_CERT)?;
    if !ctx.expired && cert.sha256 == old_ca(ctx).await?.sha256 {
        return Err(Error::Precondition {
            phase: "ca",
            reason: format!(
                "{} still holds the old CA: run --phase ca",
                ctx.asset(CA_CERT).display()
            ),
        });
    }
    Ok(cert)
}

fn state_ca(ctx: &Ctx, state: &crate::tools::terraform::State) -> Result<CertInfo> {
    let address = ctx.addr(ca_cert());
    let unusable =
        |reason: String| Error::TerraformState { dir: ctx.terraform_dir.clone(), reason };
    let pem = state.attribute(&address, "cert_pem").ok_or_else(|| {
        unusable(format!("has no {address}: is aggregation enabled, and --module right?"))
    })?;
    pki::parse_one_cert(pem.as_bytes())
        .map_err(|p| unusable(format!("holds an unusable certificate at {address} ({})", p.0)))
}

fn state_problem(ctx: &Ctx, address: &str, p: pki::PemProblem) -> Error {
    Error::TerraformState {
        dir: ctx.terraform_dir.clone(),
        reason: format!("holds an unusable certificate at {address} ({})", p.0),
    }
}

/// Keeps the CA the cluster trusts (from wherever the real state has it: see [`old_ca`]) and
/// the client certificate and key, and, when the key file is neither the old CA's nor the
/// files' CA's (stale), that file too before the `ca` phase re-writes it from the state.
async fn backup(ctx: &mut Ctx) -> Result<String> {
    let old = super::old_ca::find(ctx).await?;
    let files_ca = ctx.file_cert(CA_CERT)?;
    if old.is_the_files(ctx)? && !ctx.key_matches(CA_KEY, &files_ca) {
        return Err(Error::Precondition {
            phase: "backup",
            reason: format!(
                "{} does not match {}: restore the CA's own key before rotating",
                ctx.asset(CA_KEY).display(),
                ctx.asset(CA_CERT).display()
            ),
        });
    }
    let client = ctx.file_cert(CLIENT_CERT)?;
    let mut kept = vec![(backup_name(CA_CERT).to_string(), old.pem.clone())];
    if let Some((key, _)) = &old.key {
        kept.push((backup_name(CA_KEY).to_string(), key.clone()));
    }
    let key_file = ctx.read_asset(CA_KEY)?;
    let stale = !ctx.key_matches(CA_KEY, &old.cert) && !ctx.key_matches(CA_KEY, &files_ca);
    if stale {
        kept.push((format!("{}.found", backup_name(CA_KEY)), key_file));
    }
    for file in [CLIENT_CERT, CLIENT_KEY] {
        kept.push((backup_name(file).to_string(), ctx.read_asset(file)?));
    }
    for (name, bytes) in &kept {
        ctx.run_mut().write_backup(name, bytes)?;
    }
    ctx.fingerprint("oldCa", &old.cert.sha256)?;
    ctx.fingerprint("oldClient", &client.sha256)?;
    let origin = old.origin();
    ctx.run_mut().note_origin("oldCa", &origin)?;
    if old.is_the_files(ctx)? {
        return Ok("backed up".into());
    }
    if ctx.key_matches(CA_KEY, &files_ca) {
        return Ok(format!("backed up; {origin}"));
    }
    // The manual procedure's apply targets only the certificate's file: its key file still
    // holds the old key (kept above), and the state the new one.
    let key_file = ctx.addr(ca_key_file());
    let terraform = ctx.terraform()?;
    terraform.change(terraform.apply_command(&[key_file])).await?;
    Ok(format!("backed up; {origin}; {CA_KEY} re-written from the state (it held the old key)"))
}

pub fn backup_name(file: &str) -> &str {
    file.rsplit('/').next().unwrap_or(file)
}

async fn helm_upgrade(ctx: &mut Ctx, value: ChartValue) -> Result<String> {
    let (key, data) = match value {
        ChartValue::CaBundle => {
            let old = ctx.read_backup(backup_name(CA_CERT))?;
            let new = ctx.read_asset(CA_CERT)?;
            let mut bundle = old;
            if !bundle.ends_with(b"\n") {
                bundle.push(b'\n');
            }
            bundle.extend_from_slice(&new);
            ("aggregationCaCert", bundle)
        }
        ChartValue::ClientCert => ("aggregationClientCert", ctx.read_asset(CLIENT_CERT)?),
    };
    let encoded = base64::engine::general_purpose::STANDARD.encode(&data);
    let values = json!({"apiserver": {key: encoded}});
    let chart = ctx.asset(CHART);
    let release = Release { name: RELEASE, namespace: NAMESPACE, chart: &chart };
    let shown = &value.shown();
    let in_place =
        |current: &serde_json::Value| current["apiserver"][key].as_str() == Some(encoded.as_str());
    let notes = std::sync::Mutex::new(Vec::new());
    let note = |line: &str, outcome: &str| {
        notes.lock().expect("notes").push((line.to_string(), outcome.to_string()))
    };
    let result = ctx.helm()?.upgrade_with_recovery(&release, &values, shown, in_place, &note).await;
    let notes = notes.into_inner().expect("notes");
    let summary = notes.iter().map(|(l, o)| format!("{l}: {o}")).collect::<Vec<_>>().join("; ");
    result?;
    Ok(summary)
}

async fn trusted_cas(ctx: &Ctx) -> Result<Vec<CertInfo>> {
    let client = &ctx.conn()?.client;
    Ok(objects::configmap_certificates(client, NAMESPACE, AUTH_CONFIGMAP, AUTH_KEY)
        .await?
        .unwrap_or_default())
}

fn holds(certs: &[CertInfo], cert: &CertInfo) -> bool {
    certs.iter().any(|c| c.sha256 == cert.sha256)
}

/// `Ok(Ok)` when the Secret and the ConfigMap trust both CAs, `Ok(Err(what is missing))` if not.
async fn bundle_served(
    ctx: &Ctx,
    old: &CertInfo,
    new: &CertInfo,
) -> Result<std::result::Result<(), String>> {
    let secret =
        objects::secret_certificates(&ctx.conn()?.client, NAMESPACE, SECRET, "aggregation-ca.crt")
            .await?;
    if !(holds(&secret, old) && holds(&secret, new)) {
        return Ok(Err(format!("secret {NAMESPACE}/{SECRET} does not hold both CAs")));
    }
    let trusted = trusted_cas(ctx).await?;
    if !holds(&trusted, new) {
        return Ok(Err(format!(
            "configmap {AUTH_CONFIGMAP} ({AUTH_KEY}) does not hold the new CA yet"
        )));
    }
    Ok(Ok(()))
}

async fn client_served(ctx: &Ctx, new: &CertInfo) -> Result<std::result::Result<(), String>> {
    let served = objects::secret_certificates(
        &ctx.conn()?.client,
        NAMESPACE,
        SECRET,
        "aggregation-client.crt",
    )
    .await?;
    let file = ctx.file_cert(CLIENT_CERT)?;
    match served.first() {
        Some(cert) if cert.sha256 == file.sha256 && pki::issued_by(cert, new) => Ok(Ok(())),
        _ => Ok(Err(format!(
            "secret {NAMESPACE}/{SECRET} does not serve {CLIENT_CERT} signed by the new CA"
        ))),
    }
}

/// Polls `check` until it holds or `--timeout` ends (kube-apiserver republishes its ConfigMap
/// only once it has restarted).
async fn until(
    ctx: &Ctx,
    phase: Phase,
    what: &str,
    check: impl AsyncFn() -> Result<std::result::Result<(), String>>,
) -> Result<()> {
    crate::duration::poll(ctx.timeout, POLL, async || match check().await {
        Ok(result) => result,
        // The API drops while kube-apiserver restarts: look again.
        Err(e) => Err(e.to_string()),
    })
    .await
    .map_err(|last| Error::Verification {
        phase: phase.name(),
        reason: format!("{what}: still not so after {}s: {last}", ctx.timeout.as_secs()),
    })
}

async fn verify(ctx: &mut Ctx, phase: Phase, check: Check) -> Result<String> {
    let fail = |reason: String| Error::Verification { phase: phase.name(), reason };
    match check {
        Check::BackupReadsBack => {
            // The CA kept is the one the cluster trusts, not always the files' (a rotation
            // begun by hand): it must read back as the recorded old CA, its key (when kept)
            // matching; the client's files are kept as they are.
            let old = ctx.backup_cert(backup_name(CA_CERT))?;
            let recorded = ctx.run()?.journal.fingerprints.get("oldCa").cloned();
            if recorded.as_deref() != Some(old.sha256.as_str()) {
                return Err(fail("the backup of the old CA does not read back as it".into()));
            }
            let key = ctx.run()?.backup_path(backup_name(CA_KEY));
            if key.exists() {
                let half = std::fs::read(&key).ok().and_then(|k| pki::private_key_half(&k).ok());
                if half.is_none() || half != pki::certificate_half(&old) {
                    return Err(fail("the backup of the old CA key does not match it".into()));
                }
            }
            for file in [CLIENT_CERT, CLIENT_KEY] {
                if ctx.read_backup(backup_name(file))? != ctx.read_asset(file)? {
                    return Err(fail(format!("the backup of {file} differs from the original")));
                }
            }
            Ok("backups read back equal".into())
        }
        Check::NewCa { files } => {
            let state = ctx.terraform()?.state().await?;
            let new = state_ca(ctx, &state)?;
            let old = old_ca(ctx).await?;
            if new.sha256 == old.sha256 {
                return Err(fail("the state still holds the backed-up CA".into()));
            }
            if files {
                let file = ctx.file_cert(CA_CERT)?;
                if file.sha256 != new.sha256 {
                    return Err(fail(format!("{CA_CERT} is not the state's CA")));
                }
                if !ctx.key_matches(CA_KEY, &file) {
                    return Err(fail(format!("{CA_KEY} does not match the new CA")));
                }
            }
            ctx.fingerprint("newCa", &new.sha256)?;
            Ok(format!("new CA {}", new.sha256))
        }
        Check::BundleServed => {
            let (old, new) = (old_ca(ctx).await?, new_ca(ctx).await?);
            until(ctx, phase, "the cluster trusting both CAs", async || {
                bundle_served(ctx, &old, &new).await
            })
            .await?;
            Ok("secret and configmap trust old and new CA".into())
        }
        Check::ClientServed => {
            let new = new_ca(ctx).await?;
            until(ctx, phase, "the new client certificate served", async || {
                client_served(ctx, &new).await
            })
            .await?;
            let client = &ctx.conn()?.client;
            let served = crate::k8s::discovery::discover(client).await?.restarted_api_services();
            crate::k8s::discovery::probe_until(client, &served, ctx.timeout)
                .await
                .map_err(|why| Error::Verification { phase: phase.name(), reason: why })?;
            let client = ctx.file_cert(CLIENT_CERT)?;
            ctx.fingerprint("newClient", &client.sha256)?;
            Ok("new client certificate served".into())
        }
        Check::NewCaServed => {
            files_equal_state(ctx, phase).await?;
            lokoctl_applied_the_files(ctx, phase).await?;
            let new = ctx.file_cert(CA_CERT)?;
            ctx.fingerprint("newCa", &new.sha256)?;
            until(ctx, phase, "the cluster trusting the new CA", async || {
                let secret = objects::secret_certificates(
                    &ctx.conn()?.client,
                    NAMESPACE,
                    SECRET,
                    "aggregation-ca.crt",
                )
                .await?;
                if !holds(&secret, &new) {
                    return Ok(Err(format!(
                        "secret {NAMESPACE}/{SECRET} does not hold the new CA"
                    )));
                }
                let trusted = trusted_cas(ctx).await?;
                Ok(if holds(&trusted, &new) {
                    Ok(())
                } else {
                    Err(format!("{AUTH_CONFIGMAP} does not hold the new CA yet"))
                })
            })
            .await?;
            Ok("the cluster trusts the new CA".into())
        }
        Check::NothingPending => {
            let pending: Vec<String> = ctx
                .terraform()?
                .pending_changes()
                .await?
                .into_iter()
                .filter(|a| a.contains("aggregation"))
                .collect();
            if !pending.is_empty() {
                return Err(fail(format!("terraform plan still changes {}", pending.join(", "))));
            }
            files_equal_state(ctx, phase).await?;
            lokoctl_applied_the_files(ctx, phase).await?;
            // Again here: a `ca` or `client` phase found done skipped its own record.
            let (ca, client) = (ctx.file_cert(CA_CERT)?, ctx.file_cert(CLIENT_CERT)?);
            ctx.fingerprint("newCa", &ca.sha256)?;
            ctx.fingerprint("newClient", &client.sha256)?;
            Ok("no aggregation change pending; files equal the state; the secret serves them"
                .into())
        }
        Check::OnlyNewCaTrusted => {
            let new = new_ca(ctx).await?;
            until(ctx, phase, "configmap trusting only the new CA", async || {
                let trusted = trusted_cas(ctx).await?;
                Ok(match trusted.as_slice() {
                    [only] if only.sha256 == new.sha256 => Ok(()),
                    [] => Err(format!("{AUTH_CONFIGMAP} is not back yet")),
                    more => Err(format!("{AUTH_CONFIGMAP} trusts {} CAs", more.len())),
                })
            })
            .await?;
            Ok("only the new CA is trusted".into())
        }
    }
}

/// Secret kube-system/kube-apiserver holds the asset dir's CA (alone or in a bundle) and its
/// client certificate: lokoctl applies the values of the asset dir its lokocfg names, so other
/// values mean it applied another one, and the checks of the files alone would not see it.
/// Read once the API answers (kube-apiserver restarts for the new Secret), judged at once.
async fn lokoctl_applied_the_files(ctx: &Ctx, phase: Phase) -> Result<()> {
    let fail = |reason: String| Error::Verification { phase: phase.name(), reason };
    let (ca, client) = (ctx.file_cert(CA_CERT)?, ctx.file_cert(CLIENT_CERT)?);
    let read = async |key: &str| {
        objects::secret_certificates(&ctx.conn()?.client, NAMESPACE, SECRET, key).await
    };
    let (cas, served) = crate::duration::poll(ctx.timeout, POLL, async || {
        match (read("aggregation-ca.crt").await, read("aggregation-client.crt").await) {
            (Ok(cas), Ok(served)) => Ok((cas, served)),
            (Err(e), _) | (_, Err(e)) => Err(e.to_string()),
        }
    })
    .await
    .map_err(|last| {
        fail(format!("secret {NAMESPACE}/{SECRET} unreadable until --timeout: {last}"))
    })?;
    let mut wrong = Vec::new();
    if !holds(&cas, &ca) {
        wrong.push(format!("its aggregation-ca.crt does not hold the CA of {CA_CERT}"));
    }
    if served.first().map(|c| &c.sha256) != Some(&client.sha256) {
        wrong.push(format!("its aggregation-client.crt is not {CLIENT_CERT}"));
    }
    if wrong.is_empty() {
        return Ok(());
    }
    Err(fail(format!(
        "secret {NAMESPACE}/{SECRET}: {}: lokoctl applied other values than this asset dir's \
         (does a lokocfg in {} name another asset dir?); run this phase again once lokoctl \
         applies {}",
        wrong.join(" and "),
        ctx.config_dir.display(),
        ctx.assets.root().display()
    )))
}

/// The asset dir's aggregation files hold what the state holds.
async fn files_equal_state(ctx: &Ctx, phase: Phase) -> Result<()> {
    let fail = |reason: String| Error::Verification { phase: phase.name(), reason };
    let state = ctx.terraform()?.state().await?;
    let ca = state_ca(ctx, &state)?;
    let file = ctx.file_cert(CA_CERT)?;
    if file.sha256 != ca.sha256 {
        return Err(fail(format!("{CA_CERT} differs from the state's CA")));
    }
    if !ctx.key_matches(CA_KEY, &file) {
        return Err(fail(format!("{CA_KEY} does not match {CA_CERT}")));
    }
    let client_address = ctx.addr(client_cert());
    let client_pem = state.attribute(&client_address, "cert_pem").unwrap_or_default();
    let client = ctx.file_cert(CLIENT_CERT)?;
    let state_client = pki::parse_one_cert(client_pem.as_bytes())
        .map_err(|p| state_problem(ctx, &client_address, p))?;
    if client.sha256 != state_client.sha256 || !pki::issued_by(&client, &ca) {
        return Err(fail(format!(
            "{CLIENT_CERT} is not the state's client certificate of the new CA"
        )));
    }
    let key_address = ctx.addr(client_key());
    let key_pem = state.attribute(&key_address, "public_key_pem").unwrap_or_default();
    if pki::public_key_half(key_pem.as_bytes()).ok() != pki::certificate_half(&client) {
        return Err(fail(format!("{CLIENT_CERT} does not match the state's client key")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::rotation::engine::Procedure as _;
    use crate::rotation::step::testing;
    use crate::tools::Recorder;

    /// Every step of every phase, on both paths and with and without a `--timeout`: a
    /// command step's plan line, argv and folder are those of the command the real run builds
    /// (for a recording runner), so `--dry-run` shows what runs.
    #[tokio::test]
    async fn every_command_step_is_planned_as_it_runs() {
        for expired in [false, true] {
            for timeout in [Duration::ZERO, Duration::from_secs(600)] {
                let tmp = tempfile::tempdir().unwrap();
                let recorder = Recorder::default();
                let ctx = testing::ctx(tmp.path(), expired, timeout, &recorder);
                let finale = super::super::Aggregation::finale();
                let phases = super::super::Aggregation::path(expired).iter().chain(finale.iter());
                let mut commands = 0;
                for &phase in phases {
                    for planned in steps(&ctx, phase) {
                        let cmd = run_command(&ctx, &planned.action).unwrap();
                        assert_eq!(
                            cmd.is_some(),
                            planned.step.kind == StepKind::Command,
                            "{phase:?}: {:?}",
                            planned.step
                        );
                        if let Some(cmd) = cmd {
                            testing::assert_runs_as_planned(&planned.step, &cmd, &recorder).await;
                            commands += 1;
                        }
                    }
                }
                assert_eq!(commands, if expired { 4 } else { 8 });
                // The drifts the plan once had: terraform's -no-color, helm's timeout under
                // `--timeout 0`, the kubeconfig helm gets.
                let ran: Vec<String> = recorder.calls().into_iter().map(|c| c.line).collect();
                let taint = ran.iter().find(|l| l.contains(" taint ")).unwrap();
                assert!(taint.contains("-no-color"), "{taint}");
                if expired {
                    continue;
                }
                let upgrade = ran.iter().find(|l| l.contains(" upgrade ")).unwrap();
                let helm_timeout = if timeout.is_zero() { "876000h" } else { "600s" };
                assert!(upgrade.contains(&format!("--timeout {helm_timeout} ")), "{upgrade}");
                assert!(upgrade.contains("--kubeconfig <0600 kubeconfig"), "{upgrade}");
                assert!(upgrade.contains("context c (cluster s, user u)"), "{upgrade}");
            }
        }
    }
}
