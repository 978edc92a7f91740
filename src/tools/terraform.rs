//! terraform, run in the asset dir's `terraform/` folder with the caller's environment
//! (backends, `TF_CLI_CONFIG_FILE`, credentials pass through).
//!
//! Only commands and flags that terraform 0.13 (what Lokomotive pins) also has: `taint` (not
//! `-replace`), `apply -target`, `state pull`, `plan -out` and `show -json`.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::process::Unredacted;
use super::{Command, Outcome, Program, Runner};
use crate::error::{Error, Result};

/// The bootkube module's name inside whatever module the platform uses.
const BOOTKUBE_SUFFIX: &str = ".module.bootkube";
/// The folder of the run that keeps the state before each change.
pub const STATE_BACKUPS: &str = "terraform-state";

#[derive(Clone)]
pub struct Terraform {
    program: Program,
    dir: PathBuf,
    runner: Runner,
}

/// The resources of the state that a rotation reads (from `terraform state pull`).
#[derive(Debug, Default)]
pub struct State {
    pub serial: u64,
    instances: Vec<Instance>,
}

/// One resource instance of the state; private keys in it were redacted on the way in.
#[derive(Debug, Clone)]
pub struct Instance {
    pub address: String,
    pub tainted: bool,
    pub attributes: serde_json::Value,
}

impl Instance {
    /// Its `id`: a new one whenever terraform re-creates it (a certificate's serial number,
    /// a key's hash of its public half).
    pub fn id(&self) -> Option<&str> {
        self.attributes.get("id")?.as_str()
    }
}

impl State {
    /// Reads the text of a state (`terraform state pull`, or a kept copy of it).
    pub fn parse(json: &str) -> std::result::Result<State, String> {
        parse_state(json)
    }

    /// The instance at `address` (a full address, `module.….tls_private_key.x[0]`).
    pub fn instance(&self, address: &str) -> Option<&Instance> {
        self.instances.iter().find(|i| i.address == address)
    }

    /// Every instance of resource `kind.name` (`null_resource.copy-controller-secrets`), in any
    /// module, with any index.
    pub fn instances_of<'a>(&'a self, resource: &'a str) -> impl Iterator<Item = &'a Instance> {
        self.instances.iter().filter(move |i| {
            let base = i.address.split('[').next().unwrap_or_default();
            base == resource || base.ends_with(&format!(".{resource}"))
        })
    }

    /// A string attribute of the instance at `address`.
    pub fn attribute(&self, address: &str, name: &str) -> Option<&str> {
        self.instance(address)?.attributes.get(name)?.as_str()
    }

    /// Every bootkube module the state holds (`module.aws-x.module.bootkube`).
    pub fn bootkube_modules(&self) -> Vec<String> {
        let mut modules: Vec<String> = self
            .instances
            .iter()
            .filter_map(|i| {
                let end = i.address.find(BOOTKUBE_SUFFIX)? + BOOTKUBE_SUFFIX.len();
                Some(i.address[..end].to_string())
            })
            .collect();
        modules.sort();
        modules.dedup();
        modules
    }

    /// The module to work on: `given` when the state has it, else the only one there is.
    pub fn choose_module(&self, given: Option<&str>, dir: &Path) -> Result<String> {
        let found = self.bootkube_modules();
        let listed = if found.is_empty() { "none".to_string() } else { found.join(", ") };
        match given {
            Some(module) if found.iter().any(|m| m == module) => Ok(module.to_string()),
            Some(module) => Err(Error::TerraformState {
                dir: dir.to_path_buf(),
                reason: format!(
                    "has no module {module} (from --module): it holds {listed}; pass one of those"
                ),
            }),
            None => match found.as_slice() {
                [only] => Ok(only.clone()),
                [] => Err(Error::TerraformState {
                    dir: dir.to_path_buf(),
                    reason: "holds no module.*.module.bootkube resources: is this the asset \
                             dir of a Lokomotive cluster that was created?"
                        .into(),
                }),
                _ => Err(Error::TerraformState {
                    dir: dir.to_path_buf(),
                    reason: format!(
                        "holds several bootkube modules ({listed}): pick one with --module"
                    ),
                }),
            },
        }
    }
}

#[derive(Deserialize)]
struct RawState {
    #[serde(default)]
    serial: u64,
    #[serde(default)]
    resources: Vec<RawResource>,
}

#[derive(Deserialize)]
struct RawResource {
    module: Option<String>,
    mode: String,
    #[serde(rename = "type")]
    kind: String,
    name: String,
    #[serde(default)]
    instances: Vec<RawInstance>,
}

#[derive(Deserialize)]
struct RawInstance {
    index_key: Option<serde_json::Value>,
    status: Option<String>,
    #[serde(default)]
    attributes: serde_json::Value,
}

fn parse_state(json: &str) -> std::result::Result<State, String> {
    let raw: RawState = serde_json::from_str(json).map_err(|e| format!("not a state ({e})"))?;
    let mut instances = Vec::new();
    for r in raw.resources.into_iter().filter(|r| r.mode == "managed") {
        let base = match &r.module {
            Some(module) => format!("{module}.{}.{}", r.kind, r.name),
            None => format!("{}.{}", r.kind, r.name),
        };
        for i in r.instances {
            let address = match &i.index_key {
                Some(serde_json::Value::Number(n)) => format!("{base}[{n}]"),
                Some(serde_json::Value::String(s)) => format!("{base}[{s:?}]"),
                _ => base.clone(),
            };
            let tainted = i.status.as_deref() == Some("tainted");
            instances.push(Instance { address, tainted, attributes: i.attributes });
        }
    }
    Ok(State { serial: raw.serial, instances })
}

impl Terraform {
    pub fn new(program: Program, terraform_dir: PathBuf, runner: Runner) -> Self {
        Self { program, dir: terraform_dir, runner }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn command(&self, args: &[&str]) -> Command {
        self.runner
            .command(&self.program)
            .dir(&self.dir)
            .env("TF_IN_AUTOMATION", "1")
            .env("TF_INPUT", "0")
            .args(args.iter().copied())
    }

    /// `-no-color` last: terraform takes it anywhere (it strips it before parsing flags), and
    /// the plan line reads `terraform taint <address>` as the manual procedure writes it.
    pub fn taint_command(&self, address: &str) -> Command {
        self.command(&["taint", address, "-no-color"])
    }

    /// `terraform apply` of everything, one resource at a time (`-parallelism=1`, as
    /// lokoctl's certificate rotation does it: only one etcd member can break at a time).
    pub fn apply_one_at_a_time_command(&self) -> Command {
        self.command(&["apply", "-auto-approve", "-input=false", "-parallelism=1", "-no-color"])
    }

    pub fn apply_command(&self, targets: &[String]) -> Command {
        let mut cmd = self.command(&["apply", "-auto-approve", "-input=false", "-no-color"]);
        for target in targets {
            cmd = cmd.arg(format!("-target={target}"));
        }
        cmd
    }

    /// Runs a command that changes the state, after keeping the state as it is (terraform
    /// 0.13's local backend rewrites `terraform.tfstate` in place, so a kill inside that write
    /// leaves it cut); a lock held by someone else is its own error.
    pub async fn change(&self, cmd: Command) -> Result<()> {
        let kept = self.keep_state().await?;
        self.change_kept(cmd, kept).await
    }

    /// [`Terraform::change`] when the state as it is now was kept already (`kept`, from
    /// [`Terraform::read_and_keep_state`]).
    pub async fn change_kept(&self, cmd: Command, kept: PathBuf) -> Result<()> {
        let outcome = match cmd.run().await {
            Ok(outcome) => outcome,
            Err(e) => return Err(self.state_kept(e, kept)),
        };
        if outcome.success() {
            return Ok(());
        }
        if outcome.output.contains("Error acquiring the state lock") {
            return Err(self.locked(&outcome.output));
        }
        Err(self.state_kept(cmd.failed(&outcome), kept))
    }

    /// Keeps `terraform state pull` in the run's folder (0600: it holds every private key),
    /// one file per state serial, before something changes the state. As terraform wrote it,
    /// not redacted: it is what `terraform state push` puts back.
    pub async fn keep_state(&self) -> Result<PathBuf> {
        let (serial, state) = self.pull_to_keep().await?;
        self.runner.keep_private(
            STATE_BACKUPS,
            &format!("before-serial-{serial}.tfstate"),
            state.bytes(),
        )
    }

    /// The state as it is now, read and kept (as [`Terraform::keep_state`]) by one `terraform
    /// state pull`: for a change decided from the state, whose own pull is then the one kept
    /// before it ([`Terraform::change_kept`]).
    pub async fn read_and_keep_state(&self) -> Result<(State, PathBuf)> {
        let pulled = self.pull().await?;
        let state = parse_state(&pulled.stdout)
            .map_err(|reason| Error::TerraformState { dir: self.dir.clone(), reason })?;
        let name = format!("before-serial-{}.tfstate", state.serial);
        let kept =
            self.runner.keep_private(STATE_BACKUPS, &name, pulled.unredacted_stdout.bytes())?;
        Ok((state, kept))
    }

    /// The state to keep in a private file: its serial, and `terraform state pull` as
    /// terraform wrote it (not redacted: what `terraform state push` puts back).
    pub async fn pull_to_keep(&self) -> Result<(u64, Unredacted)> {
        let pulled = self.pull().await?;
        let serial = parse_state(&pulled.stdout).map(|s| s.serial).unwrap_or_default();
        Ok((serial, pulled.unredacted_stdout))
    }

    fn state_kept(&self, error: Error, kept: PathBuf) -> Error {
        Error::TerraformChange { source: Box::new(error), kept, dir: self.dir.clone() }
    }

    fn locked(&self, output: &str) -> Error {
        let info: Vec<&str> = output
            .lines()
            .map(str::trim)
            .filter(|l| {
                ["ID:", "Path:", "Operation:", "Who:", "Created:"].iter().any(|k| l.starts_with(k))
            })
            .collect();
        Error::TerraformLocked { dir: self.dir.clone(), holder: info.join("; ") }
    }

    /// Puts back the latest state this run kept when the state is empty (or not a state): a terraform whose
    /// caller was killed dies of SIGPIPE at its next output, and one killed while writing a
    /// local state leaves it empty, which the next apply would take for "create everything",
    /// CA keys included. Everything the bootkube module holds is local (keys, certificates,
    /// files, the SSH copy), so the apply that follows makes again what the kept state lacks.
    /// Returns the file pushed, if any.
    pub async fn restore_emptied_state(&self) -> Result<Option<PathBuf>> {
        if parse_state(&self.pull().await?.stdout).is_ok() {
            return Ok(None);
        }
        let serial = |p: &Path| {
            let name = p.file_name()?.to_str()?;
            name.strip_prefix("before-serial-")?.strip_suffix(".tfstate")?.parse::<u64>().ok()
        };
        let kept = std::fs::read_dir(self.runner.kept_folder(STATE_BACKUPS))
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter_map(|p| serial(&p).map(|n| (n, p)))
            .max_by_key(|(n, _)| *n);
        let Some((_, latest)) = kept else { return Ok(None) };
        let push = self.command(&["state", "push"]).arg(latest.display().to_string());
        let outcome = push.run().await?;
        if !outcome.success() {
            return Err(push.failed(&outcome));
        }
        Ok(Some(latest))
    }

    /// The state as `terraform state pull` gives it (the configured backend's, local or not).
    pub async fn state(&self) -> Result<State> {
        parse_state(&self.pull().await?.stdout)
            .map_err(|reason| Error::TerraformState { dir: self.dir.clone(), reason })
    }

    /// `terraform state pull` as it runs: never streamed, its stdout also kept as written.
    pub fn pull_command(&self) -> Command {
        self.command(&["state", "pull"]).echo(false).unredacted_stdout()
    }

    /// `terraform state pull`, never streamed (the state holds every private key); its
    /// stdout is what is parsed, redacted, and, unredacted, what a backup keeps.
    async fn pull(&self) -> Result<Outcome> {
        let cmd = self.pull_command();
        let outcome = cmd.run().await?;
        if !outcome.success() {
            return Err(cmd.failed(&outcome));
        }
        Ok(outcome)
    }

    /// Addresses a plain `terraform apply` would change now (`plan -out`, then `show -json`;
    /// the plan file holds secrets, so it lives in a private temp dir that is removed).
    pub async fn pending_changes(&self) -> Result<Vec<String>> {
        let private = self.runner.private_temp("plan-")?;
        let plan = private.path().join("plan");
        let plan_arg = format!("-out={}", plan.display());
        let cmd = self.command(&["plan", "-input=false", "-no-color", &plan_arg]);
        let outcome = cmd.run().await?;
        if !outcome.success() {
            return Err(cmd.failed(&outcome));
        }
        let plan_path = plan.display().to_string();
        let show = self.command(&["show", "-json", &plan_path]).echo(false);
        let shown = show.run().await?;
        if !shown.success() {
            return Err(show.failed(&shown));
        }
        #[derive(Deserialize)]
        struct Plan {
            #[serde(default)]
            resource_changes: Vec<Change>,
        }
        #[derive(Deserialize)]
        struct Change {
            address: String,
            change: Actions,
        }
        #[derive(Deserialize)]
        struct Actions {
            actions: Vec<String>,
        }
        let plan: Plan =
            serde_json::from_str(&shown.stdout).map_err(|e| Error::TerraformState {
                dir: self.dir.clone(),
                reason: format!("unreadable plan ({e})"),
            })?;
        Ok(plan
            .resource_changes
            .into_iter()
            .filter(|c| c.change.actions.iter().any(|a| a != "no-op" && a != "read"))
            .map(|c| c.address)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATE: &str = r#"{"version":4,"serial":7,"resources":[
      {"module":"module.aws-x.module.bootkube","mode":"managed","type":"tls_private_key","name":"aggregation-ca","instances":[{"index_key":0,"status":"tainted","attributes":{"algorithm":"RSA"}}]},
      {"module":"module.aws-x.module.bootkube","mode":"managed","type":"tls_self_signed_cert","name":"kube-ca","instances":[{"attributes":{"cert_pem":"PEM"}}]},
      {"module":"module.aws-x.module.bootkube","mode":"data","type":"template_file","name":"t","instances":[{"attributes":{}}]}
    ]}"#;

    #[test]
    fn addresses_taint_and_modules_come_from_the_state() {
        let state = parse_state(STATE).unwrap();
        assert_eq!(state.serial, 7);
        let key = state.instance("module.aws-x.module.bootkube.tls_private_key.aggregation-ca[0]");
        assert!(key.unwrap().tainted);
        let pem = state
            .attribute("module.aws-x.module.bootkube.tls_self_signed_cert.kube-ca", "cert_pem");
        assert_eq!(pem, Some("PEM"));
        assert_eq!(state.bootkube_modules(), ["module.aws-x.module.bootkube"]);
        let dir = Path::new("/a/terraform");
        assert_eq!(state.choose_module(None, dir).unwrap(), "module.aws-x.module.bootkube");
        let wrong = state.choose_module(Some("module.y.module.bootkube"), dir).unwrap_err();
        assert!(wrong.to_string().contains("module.aws-x.module.bootkube"), "{wrong}");
    }
}
