//! helm 3 and helm 4, pointed at the cluster the tool verified alone: `--kubeconfig` names a
//! kubeconfig holding only the verified context, cluster and user, and the caller's
//! `HELM_KUBE*` variables are cleared ([`ClusterEnv`]).
//!
//! Values never go on a command line: they are written to a 0600 file in a private temp dir,
//! passed with `-f`, and removed afterwards.

use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;

use super::cluster_env::ClusterEnv;
use super::{Command, Program, Runner};
use crate::error::{Error, Result};

/// What helm says when a release is locked by an upgrade, install or rollback that never
/// finished (helm 3 and 4 word it the same).
const IN_PROGRESS: &str = "another operation (install/upgrade/rollback) is in progress";
/// Rollbacks of one pending release while the API goes away under helm's `--wait`.
const ROLLBACK_ATTEMPTS: usize = 3;
/// Upgrade attempts before giving up: the seed's "try again", plus one after a rollback.
const UPGRADE_ATTEMPTS: usize = 3;

#[derive(Clone)]
pub struct Helm {
    program: Program,
    runner: Runner,
    /// `None` only for a dry run's plan (nothing runs without the verified cluster).
    cluster: Option<Arc<ClusterEnv>>,
}

/// One row of `helm history -o json`.
#[derive(Debug, Clone, Deserialize)]
pub struct Revision {
    pub revision: u32,
    pub status: String,
}

/// One row of `helm list -o json` (helm prints the revision as a string).
#[derive(Debug, Clone, Deserialize)]
struct Listed {
    name: String,
    namespace: String,
    revision: serde_json::Value,
    status: String,
}

impl Listed {
    fn revision(&self) -> u32 {
        match &self.revision {
            serde_json::Value::String(s) => s.parse().unwrap_or_default(),
            other => other.as_u64().and_then(|n| u32::try_from(n).ok()).unwrap_or_default(),
        }
    }
}

/// What `helm status -o json` says of a release's latest revision.
#[derive(Debug, Deserialize)]
struct Status {
    info: StatusInfo,
}

#[derive(Debug, Deserialize)]
struct StatusInfo {
    status: String,
}

/// A release to upgrade: name, namespace and chart folder.
#[derive(Debug, Clone)]
pub struct Release<'a> {
    pub name: &'a str,
    pub namespace: &'a str,
    pub chart: &'a Path,
}

impl Helm {
    pub fn new(program: Program, runner: Runner, cluster: Option<Arc<ClusterEnv>>) -> Self {
        Self { program, runner, cluster }
    }

    /// `helm <args> --kubeconfig <the verified cluster alone>`; the flag (not only
    /// `KUBECONFIG`) so that every command line shown says which kubeconfig it used.
    fn command(&self, args: &[&str]) -> Result<Command> {
        self.command_with(|cmd| cmd.args(args.iter().copied()))
    }

    fn command_with(&self, args: impl FnOnce(Command) -> Command) -> Result<Command> {
        let cluster = self.cluster.as_ref().ok_or_else(|| {
            Error::Wiring("helm set up without the verified cluster ran a command".into())
        })?;
        let cmd = args(cluster.confine(self.runner.command(&self.program))?);
        let kubeconfig = cluster.kubeconfig()?.display().to_string();
        Ok(self.with_kubeconfig(cmd, kubeconfig))
    }

    /// [`Helm::command_with`] as a plan shows it: the same program and arguments, nothing
    /// written, the kubeconfig named for what it holds.
    fn plan_command_with(&self, args: impl FnOnce(Command) -> Command) -> Command {
        self.with_kubeconfig(args(self.runner.command(&self.program)), "")
    }

    fn with_kubeconfig(&self, cmd: Command, path: impl Into<String>) -> Command {
        cmd.arg("--kubeconfig").arg_shown(path, kubeconfig_in_plan(self.cluster.as_deref()))
    }

    /// `helm upgrade … --reuse-values -f <values file> --wait --timeout …`, the file given;
    /// `values` says what the file sets (plans and lines show that instead of its path).
    pub fn upgrade_command(
        &self,
        release: &Release,
        values_file: &str,
        values: &str,
    ) -> Result<Command> {
        let timeout = self.runner.helm_timeout();
        self.command_with(|cmd| upgrade_args(cmd, release, values_file, values, &timeout))
    }

    /// [`Helm::upgrade_command`] as the plan shows it.
    pub fn plan_upgrade(&self, release: &Release, values: &str) -> Command {
        let timeout = self.runner.helm_timeout();
        self.plan_command_with(|cmd| upgrade_args(cmd, release, "", values, &timeout))
    }

    pub fn rollback_command(&self, release: &Release, revision: u32) -> Result<Command> {
        let timeout = self.runner.helm_timeout();
        let revision = revision.to_string();
        self.command(&[
            "rollback",
            release.name,
            &revision,
            "-n",
            release.namespace,
            "--wait",
            "--timeout",
            &timeout,
        ])
    }

    /// The release's revisions, oldest first.
    pub async fn history(&self, release: &Release<'_>) -> Result<Vec<Revision>> {
        let cmd = self.command(&[
            "history",
            release.name,
            "-n",
            release.namespace,
            "-o",
            "json",
            "--max",
            "20",
        ])?;
        cmd.json("history").await
    }

    /// The release's user-supplied values (`helm get values -o json`); never streamed, since
    /// they hold keys.
    pub async fn values(&self, release: &Release<'_>) -> Result<serde_json::Value> {
        self.command(&["get", "values", release.name, "-n", release.namespace, "-o", "json"])?
            .echo(false)
            .json("values")
            .await
    }

    /// The values of release `name` in `namespace` ([`Helm::values`]), `None` when the cluster
    /// has no such release (a chart a cluster does without, as the self-hosted kubelet's).
    pub async fn values_if_installed(
        &self,
        name: &str,
        namespace: &str,
    ) -> Result<Option<serde_json::Value>> {
        let release = Release { name, namespace, chart: Path::new("") };
        match self.values(&release).await {
            Ok(values) => Ok(Some(values)),
            Err(Error::CommandFailed { tail, .. }) if tail.contains("not found") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Upgrades `release` with `values` until `in_place` holds for its values, recovering as
    /// the manual procedure does: a failed upgrade is tried again; a release left pending by
    /// an earlier upgrade, install or rollback (helm killed during `--wait`, helm 4 losing the
    /// API while kube-apiserver restarts) is rolled back to its latest revision first.
    /// `note` hears every command line run, for the journal and the progress.
    pub async fn upgrade_with_recovery(
        &self,
        release: &Release<'_>,
        values: &serde_json::Value,
        shown: &str,
        in_place: impl Fn(&serde_json::Value) -> bool,
        note: &(dyn Fn(&str, &str) + Sync),
    ) -> Result<()> {
        let file = PrivateValues::write(&self.runner, values)?;
        let mut last_error = None;
        for _ in 0..UPGRADE_ATTEMPTS {
            self.recover_pending(release, note).await?;
            let cmd = self.upgrade_command(release, &file.path_str(), shown)?;
            let outcome = cmd.run().await?;
            if outcome.success() {
                note(&cmd.line(), "ok");
                // Read through the recovery's wait: the API may still be coming back.
                self.history_once_reachable(release).await?;
                let current = self.values(release).await?;
                if in_place(&current) {
                    return Ok(());
                }
                last_error = Some(Error::CommandFailed {
                    line: cmd.line(),
                    status: "succeeded, but the release's values do not hold the new data".into(),
                    tail: String::new(),
                });
                continue;
            }
            let error = cmd.failed(&outcome);
            note(&cmd.line(), &format!("failed: {}", first_line(&outcome.tail())));
            last_error = Some(error);
        }
        Err(last_error.expect("at least one attempt"))
    }

    /// [`Helm::history`], waiting (within `--timeout`) while the API is unreachable: an
    /// upgrade that failed because kube-apiserver restarted under it is recovered once the API
    /// is back, not given up on.
    async fn history_once_reachable(&self, release: &Release<'_>) -> Result<Vec<Revision>> {
        let line = format!("helm history {} -n {}", release.name, release.namespace);
        self.once_reachable(&line, async || self.history(release).await).await
    }

    /// Runs `read` until it does not fail for an unreachable API, within `--timeout`.
    async fn once_reachable<T>(&self, line: &str, read: impl AsyncFn() -> Result<T>) -> Result<T> {
        let polled =
            crate::duration::poll(self.runner.wait_limit(), API_RETRY, async || {
                match read().await {
                    Err(e) if is_unreachable(&e) => Err(e.to_string()),
                    other => Ok(other),
                }
            })
            .await;
        polled.unwrap_or_else(|last| {
            Err(Error::CommandFailed {
                line: line.to_string(),
                status: "the cluster stayed unreachable until --timeout".into(),
                tail: last,
            })
        })
    }

    /// `helm list --all-namespaces --pending -o json`: the releases whose latest revision is
    /// `pending-install`, `pending-upgrade` or `pending-rollback`.
    pub fn list_pending_command(&self) -> Result<Command> {
        self.command(&LIST_PENDING)
    }

    /// [`Helm::list_pending_command`] as the plan shows it.
    pub fn plan_list_pending(&self) -> Command {
        self.plan_command_with(|cmd| cmd.args(LIST_PENDING))
    }

    /// Recovers every release that a killed helm or lokoctl left pending, as the manual
    /// procedure says (roll back to the latest revision, `--wait`), then proves with
    /// `helm status` that each is deployed. lokoctl, run with
    /// `--skip-pre-update-health-check`, would otherwise fail on them for ever.
    pub async fn recover_pending_releases(&self) -> Result<String> {
        let list = self.list_pending_command()?;
        let pending: Vec<Listed> =
            self.once_reachable(&list.line(), async || list.json("release list").await).await?;
        if pending.is_empty() {
            return Ok("no release is left pending".into());
        }
        let mut recovered = Vec::new();
        for listed in &pending {
            let release =
                Release { name: &listed.name, namespace: &listed.namespace, chart: Path::new("") };
            let revision = listed.revision();
            let rollback = self.roll_back_through_restarts(&release, revision).await?;
            let status = self.command(&[
                "status",
                listed.name.as_str(),
                "-n",
                listed.namespace.as_str(),
                "-o",
                "json",
            ])?;
            let shown: Status =
                self.once_reachable(&status.line(), async || status.json("status").await).await?;
            if shown.info.status != "deployed" {
                return Err(Error::CommandFailed {
                    line: status.line(),
                    status: format!(
                        "release {}/{} is {} after `{}`",
                        listed.namespace,
                        listed.name,
                        shown.info.status,
                        rollback.line()
                    ),
                    tail: String::new(),
                });
            }
            recovered.push(format!(
                "{}/{} was {} at revision {revision}: rolled back, deployed",
                listed.namespace, listed.name, listed.status
            ));
        }
        Ok(recovered.join("; "))
    }

    /// `helm rollback` of `release` to `revision`, again while it fails because the API went
    /// away under its `--wait` (rolling back kube-apiserver's release restarts kube-apiserver):
    /// once the API is back, a release still not deployed is rolled back to its latest
    /// revision again. Returns the last rollback run.
    async fn roll_back_through_restarts(
        &self,
        release: &Release<'_>,
        revision: u32,
    ) -> Result<Command> {
        let mut revision = revision;
        for attempt in 1..=ROLLBACK_ATTEMPTS {
            let rollback = self.rollback_command(release, revision)?;
            let outcome = rollback.run().await?;
            if outcome.success() {
                return Ok(rollback);
            }
            let failed = rollback.failed(&outcome);
            if attempt == ROLLBACK_ATTEMPTS || !is_unreachable(&failed) {
                return Err(failed);
            }
            let history = self.history_once_reachable(release).await?;
            match history.iter().max_by_key(|r| r.revision) {
                Some(latest) if latest.status == "deployed" => return Ok(rollback),
                Some(latest) => revision = latest.revision,
                None => return Err(failed),
            }
        }
        unreachable!("the last attempt returns")
    }

    /// A release whose latest revision is pending (or a lock reported by helm) is rolled back
    /// to that revision, as the manual procedure says.
    async fn recover_pending(
        &self,
        release: &Release<'_>,
        note: &(dyn Fn(&str, &str) + Sync),
    ) -> Result<()> {
        let history = self.history_once_reachable(release).await?;
        let Some(latest) = history.iter().max_by_key(|r| r.revision) else {
            return Err(Error::CommandFailed {
                line: format!("helm history {} -n {}", release.name, release.namespace),
                status: "found no release: is the control plane installed with helm?".into(),
                tail: String::new(),
            });
        };
        if !latest.status.starts_with("pending") {
            return Ok(());
        }
        let cmd = self.rollback_command(release, latest.revision)?;
        let outcome = cmd.run().await?;
        if !outcome.success() && !outcome.output.contains(IN_PROGRESS) {
            return Err(cmd.failed(&outcome));
        }
        note(
            &cmd.line(),
            &format!("release was {} at revision {}", latest.status, latest.revision),
        );
        Ok(())
    }
}

fn upgrade_args(
    cmd: Command,
    release: &Release,
    values_file: &str,
    values: &str,
    timeout: &str,
) -> Command {
    cmd.args(["upgrade", "-n", release.namespace, release.name])
        .arg(release.chart.display().to_string())
        .args(["--reuse-values", "-f"])
        // The file exists only while the upgrade runs: shown as what it sets.
        .arg_shown(values_file, format!("<0600 values file: {values}>"))
        .args(["--wait", "--timeout", timeout])
}

const LIST_PENDING: [&str; 5] = ["list", "--all-namespaces", "--pending", "-o", "json"];

/// How long to wait between looks at an API that is down (kube-apiserver restarting).
const API_RETRY: std::time::Duration = std::time::Duration::from_secs(2);

/// helm's words for an API server it could not reach.
fn is_unreachable(e: &Error) -> bool {
    let text = e.to_string();
    ["cluster unreachable", "connection refused", "EOF", "i/o timeout", "TLS handshake timeout"]
        .iter()
        .any(|m| text.contains(m))
}

fn first_line(text: &str) -> &str {
    text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("")
}

/// A values file only this user can read, in a private temp dir removed on drop.
struct PrivateValues {
    dir: tempfile::TempDir,
}

impl PrivateValues {
    fn write(runner: &Runner, values: &serde_json::Value) -> Result<Self> {
        // JSON is YAML: helm reads it as a values file.
        let dir = runner.private_file("values-", "values.json", values.to_string().as_bytes())?;
        Ok(Self { dir })
    }

    fn path_str(&self) -> String {
        self.dir.path().join("values.json").display().to_string()
    }
}

/// How a plan shows the kubeconfig helm gets: the file exists only while a run does.
fn kubeconfig_in_plan(cluster: Option<&ClusterEnv>) -> String {
    let only = cluster.map_or("the verified context, cluster and user", ClusterEnv::selection);
    format!("<0600 kubeconfig in the run folder: only {only}>")
}
