//! Command-line interface: every flag and subcommand, parsed by clap derive.
//!
//! Parsing stays here; turning flags into validated settings happens in the command modules.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::duration::HumanDuration;
use crate::rotation::phase::{PhaseChoice, PhaseParser};

/// How the help texts name the program: operators run it through kubectl.
pub const DISPLAY_NAME: &str = "kubectl certrotate";

/// Rotate the control-plane certificates of Lokomotive-style Kubernetes clusters.
///
/// Shows where every certificate of a cluster stands, and rotates the aggregation CA and client
/// certificate and the admission webhook certificate step by step (Terraform for the PKI, Helm
/// for the control plane, the Kubernetes API for the rest), keeping the old CA until you drop
/// it.
#[derive(Debug, Parser)]
#[command(
    name = DISPLAY_NAME,
    bin_name = DISPLAY_NAME,
    version = crate::version::SHORT,
    long_version = crate::version::LONG,
    propagate_version = true,
    max_term_width = 100,
    after_help = "Exit codes: 0 fine, 1 error, 2 usage, 3 something expires within the window, \
                  4 something has expired or is invalid, 130 a rotation was interrupted (Ctrl-C, \
                  SIGTERM or SIGHUP; run it again to go on)."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalOpts,

    #[command(subcommand)]
    pub command: Command,
}

/// Flags every command takes.
#[derive(Debug, Args)]
pub struct GlobalOpts {
    /// The Lokomotive asset dir (holds terraform/ and cluster-assets/). Repeat it, or give a
    /// glob, to look at a fleet of clusters. [default: $ASSET_DIR, else the current folder]
    #[arg(long = "assets-dir", value_name = "DIR", global = true)]
    pub assets_dirs: Vec<String>,

    /// Output format: a table for people, JSON (a documented, stable schema), or for `status`
    /// the Prometheus text exposition format.
    #[arg(short, long, value_enum, default_value_t = OutputFormat::Table, global = true)]
    pub output: OutputFormat,

    /// More detail on stderr (repeatable).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    /// Print the plan (every command line and API call, in order) and change nothing.
    #[arg(long, global = true)]
    pub dry_run: bool,

    /// Do not ask before changing the cluster. Without it a terminal asks and anything else
    /// refuses.
    #[arg(short = 'y', long, global = true)]
    pub yes: bool,

    /// Bound for each wait (a rollout, helm's --wait, an APIService becoming available); 0 means
    /// no limit, as for `kubectl rollout status --timeout`.
    #[arg(long, value_name = "DURATION", default_value = "10m", global = true)]
    pub timeout: HumanDuration,

    #[command(flatten)]
    pub kube: KubeOpts,

    #[command(flatten)]
    pub tools: ToolOpts,
}

/// Where the external programs and the cluster's Terraform and lokoctl config are.
#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "Terraform, Helm and lokoctl")]
pub struct ToolOpts {
    /// Where `lokoctl cluster apply` runs (the folder with the *.lokocfg). [default:
    /// $CONFIG_DIR, else the parent of the asset dir]
    #[arg(long, value_name = "DIR", global = true)]
    pub config_dir: Option<PathBuf>,

    /// The terraform program. [default: $TERRAFORM, else terraform on PATH]
    #[arg(long, value_name = "PATH", global = true)]
    pub terraform: Option<PathBuf>,

    /// The helm program (helm 3 or 4). [default: $HELM, else helm on PATH]
    #[arg(long, value_name = "PATH", global = true)]
    pub helm: Option<PathBuf>,

    /// The lokoctl program. [default: $LOKOCTL, else lokoctl on PATH]
    #[arg(long, value_name = "PATH", global = true)]
    pub lokoctl: Option<PathBuf>,

    /// The bootkube module address, e.g. module.aws-mycluster.module.bootkube. [default: the
    /// only one in the Terraform state]
    #[arg(long, value_name = "ADDR", global = true)]
    pub module: Option<String>,
}

/// The kubectl connection flags, with kubectl's names and meaning.
#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "Kubernetes connection")]
pub struct KubeOpts {
    /// Path to the kubeconfig file. [default: $KUBECONFIG, else the asset dir's
    /// cluster-assets/auth/kubeconfig, else ~/.kube/config; with several asset dirs, each
    /// one's own]
    #[arg(long, value_name = "FILE", global = true)]
    pub kubeconfig: Option<PathBuf>,

    /// The kubeconfig context to use.
    #[arg(long, value_name = "NAME", global = true)]
    pub context: Option<String>,

    /// The kubeconfig cluster to use.
    #[arg(long, value_name = "NAME", global = true)]
    pub cluster: Option<String>,

    /// The kubeconfig user to use.
    #[arg(long, value_name = "NAME", global = true)]
    pub user: Option<String>,

    /// How long to wait for one API request before giving up (e.g. 5s, 1m; 0 means no limit).
    /// Waits that watch (rollouts, APIServices) are bounded by --timeout instead. [default: 30s]
    #[arg(long, value_name = "DURATION", global = true)]
    pub request_timeout: Option<HumanDuration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
    /// Metrics with x509-certificate-exporter's names (status only).
    Prometheus,
}

impl Cli {
    /// Refuses what clap cannot: `-o prometheus` is global like every `-o`, but only `status`
    /// has metrics to give.
    pub fn check(&self) -> Result<(), String> {
        let status = matches!(self.command, Command::Status(_));
        if self.global.output == OutputFormat::Prometheus && !status {
            return Err("-o prometheus is only for `kubectl certrotate status`; use -o table or \
                        -o json here"
                .into());
        }
        Ok(())
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Where every certificate stands: the asset dir's files and, when the cluster answers,
    /// what the cluster serves and trusts; what to run for each problem. Also as metrics for
    /// Prometheus (-o prometheus, --textfile).
    Status(StatusArgs),
    /// List the extension API servers (APIServices backed by a Service), their workloads and
    /// pods; restart them after the aggregation CA changed, or check which CA they loaded.
    ExtensionServers(ExtensionServersArgs),
    /// Rotate the aggregation (front-proxy) CA and client certificate, phase by phase, keeping
    /// the old CA trusted until the cleanup; re-run the same command after any interruption.
    Aggregation(AggregationArgs),
    /// Rotate the admission webhook server's serving certificate (inside lokomotive.yaml),
    /// restart the webhook server and prove the API server trusts the new certificate.
    Webhook(WebhookArgs),
    /// Renew every certificate of the cluster but the aggregation and webhook ones (which have
    /// their own commands), the way `lokoctl cluster certificate rotate` does it: the CA keys are
    /// kept, so certificates of the old and the new CA certificates verify under each other.
    ///
    /// Phases: `backup` keeps tls/, auth/, the chart values holding certificates or keys and the
    /// Terraform state in the run's folder; `taint` taints lokoctl's list (every leaf
    /// certificate and non-CA key, the three CA certificates; never a CA key, never the
    /// service-account key); `certificates` runs `terraform apply -parallelism=1` and proves the
    /// new certificates from the files and the state (these three need the asset dir and the
    /// state only); `etcd` waits until every etcd member serves and accepts the new etcd
    /// certificates; `control-plane` rolls back releases left pending and runs `lokoctl cluster
    /// apply --confirm --skip-pre-update-health-check --upgrade-kubelets`, then checks every
    /// control-plane release and Secret; `tokens` waits for every ServiceAccount token to carry
    /// the new kube CA; `restart` restarts lokoctl's list and the extension API servers as
    /// `kubectl rollout restart` (kube-apiserver only when the upgrade did not already roll
    /// it); `verify` proves the cluster serves and accepts the new certificates and `status`
    /// finds every row OK and issued in this run.
    ///
    /// Lokomotive v0.5-v0.7, whose Terraform pushes no new etcd certificates to the controllers
    /// and re-syncs no node's CA copy, is refused before any change with the steps to take by
    /// hand, unless --nodes-updated-by-hand. See docs/renew.md.
    Renew(RenewArgs),
    /// Print a shell completion script (bash, zsh or fish).
    Completion(CompletionArgs),
    /// Print the version and the git commit it was built from.
    Version,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Report certificates that expire within this window as EXPIRING (exit code 3).
    #[arg(long, value_name = "DURATION", default_value = "30d")]
    pub expiring_within: HumanDuration,

    /// Only look at the asset dir; do not contact the cluster.
    #[arg(long)]
    pub local: bool,

    /// Also write the metrics of `-o prometheus` to this file, atomically, for node_exporter's
    /// textfile collector (name it *.prom inside its --collector.textfile.directory). The exit
    /// code is the same as without it.
    #[arg(long, value_name = "PATH")]
    pub textfile: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ExtensionServersArgs {
    /// Restart every workload behind them, all at once, exactly as `kubectl rollout restart`
    /// does, wait for each as `kubectl rollout status` does, then for the APIServices to be
    /// Available again.
    #[arg(long)]
    pub restart: bool,

    /// Read each pod's log for the "loaded client CA" lines and report whether the CA in this
    /// PEM file is loaded.
    #[arg(long, value_name = "FILE")]
    pub check_ca: Option<PathBuf>,
}

#[derive(Debug, Args)]
#[command(after_help = "Phases, not yet expired: backup, ca, bundle, restart, client, apply, \
                  [cleanup]. Already expired: backup, ca, apply, restart. The journal and backups \
                  are in <assets>/certrotate/<run>/. Exit codes: 0 done, 1 error, 2 usage, 130 \
                  interrupted by Ctrl-C, SIGTERM or SIGHUP (run the same command again to go \
                  on).")]
pub struct AggregationArgs {
    /// Which phase to run; a single phase needs its predecessors done.
    #[arg(
        long,
        value_parser = PhaseParser::<crate::aggregation::Phase>::new(
            "Every phase not yet done, in order (and cleanup with --cleanup)"
        ),
        default_value = "all"
    )]
    pub phase: PhaseChoice<crate::aggregation::Phase>,

    /// Also run the cleanup at the end (drop the old CA from the trusted bundle).
    #[arg(long)]
    pub cleanup: bool,

    /// Take the already-expired path even if the CA certificate has not expired yet.
    #[arg(long)]
    pub expired: bool,

    /// Start a new rotation after the last one finished (never while one is in progress).
    #[arg(long)]
    pub new_run: bool,
}

#[derive(Debug, Args)]
#[command(after_help = "Phases, not yet expired: backup, certificate, restart, verify. Already \
                  expired: backup, unhook, certificate, restart, verify. A rotation stopped after \
                  unhook is completed by running the same command again, or undone with \
                  --restore-webhook. Exit codes: 0 done, 1 error, 2 usage, 130 interrupted (Ctrl-C, \
                  SIGTERM or SIGHUP).")]
pub struct WebhookArgs {
    /// Which phase to run; a single phase needs its predecessors done.
    #[arg(
        long,
        value_parser = PhaseParser::<crate::webhook::Phase>::new("Every phase not yet done, in order"),
        default_value = "all"
    )]
    pub phase: PhaseChoice<crate::webhook::Phase>,

    /// Take the already-expired path even if the certificate has not expired yet.
    #[arg(long)]
    pub expired: bool,

    /// Start a new rotation after the last one finished (never while one is in progress).
    #[arg(long)]
    pub new_run: bool,

    /// Undo an abandoned expired-path rotation: create the webhook configuration again from
    /// the manifest kept in the journal (nothing else changes).
    #[arg(long, conflicts_with_all = ["phase", "new_run"])]
    pub restore_webhook: bool,
}

// `renew`'s help is the doc comment of `Command::Renew`.
#[derive(Debug, Args)]
#[command(after_help = "Phases: backup, taint, certificates, etcd, control-plane, tokens, \
                  restart, verify. The journal and backups are in \
                  <assets>/certrotate/<run>/. Exit codes: 0 done, 1 error, 2 usage, 130 \
                  interrupted (Ctrl-C, SIGTERM or SIGHUP; run the same command again to go on).")]
pub struct RenewArgs {
    /// Which phase to run; a single phase needs its predecessors done.
    #[arg(
        long,
        value_parser = PhaseParser::<crate::renew::Phase>::new("Every built phase not yet done, in order"),
        default_value = "all"
    )]
    pub phase: PhaseChoice<crate::renew::Phase>,

    /// Start a new renewal after the last one finished (never while one is in progress).
    #[arg(long)]
    pub new_run: bool,

    /// The client URL of each etcd member as this machine reaches it (repeat, in the order of
    /// the kube-apiserver values' etcdServers), when not under the names the cluster uses.
    #[arg(long = "etcd-endpoint", value_name = "URL")]
    pub etcd_endpoints: Vec<String>,

    /// The peer URL of each etcd member as this machine reaches it (repeat, same order);
    /// required with --etcd-endpoint. Without either: each member's host on port 2380.
    #[arg(long = "etcd-peer-endpoint", value_name = "URL")]
    pub etcd_peer_endpoints: Vec<String>,

    /// Lokomotive v0.5-v0.7 (whose Terraform neither pushes new etcd certificates to the
    /// controllers nor re-syncs the nodes' CA copies): you take those steps by hand, which the
    /// refusal without this flag lists; the etcd phase then waits for every member to serve
    /// the new certificates.
    #[arg(long)]
    pub nodes_updated_by_hand: bool,
}

#[derive(Debug, Args)]
pub struct CompletionArgs {
    /// The shell to generate the completion script for.
    #[arg(value_enum)]
    pub shell: CompletionShell,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CompletionShell {
    Bash,
    Zsh,
    Fish,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn valid_command_lines_parse() {
        for line in [
            "kubectl-certrotate status",
            "kubectl-certrotate status -o json --expiring-within 720h",
            "kubectl-certrotate status -o prometheus --textfile /var/lib/node/certrotate.prom",
            "kubectl-certrotate --assets-dir a --assets-dir b status --local",
            "kubectl-certrotate status --kubeconfig k --context c --cluster x --user u --request-timeout 5s",
            "kubectl-certrotate -vv status",
            "kubectl-certrotate completion zsh",
            "kubectl-certrotate extension-servers --restart -y --timeout 2m",
            "kubectl-certrotate extension-servers --check-ca ca.crt -o json",
            "kubectl-certrotate extension-servers --restart --dry-run",
            "kubectl-certrotate version",
            "kubectl-certrotate aggregation",
            "kubectl-certrotate aggregation --phase bundle --helm /x/helm --module m -y",
            "kubectl-certrotate aggregation --phase all --cleanup --dry-run -o json",
            "kubectl-certrotate --config-dir c aggregation --expired --new-run",
            "kubectl-certrotate webhook --phase restart -y",
            "kubectl-certrotate webhook --restore-webhook",
            "kubectl-certrotate renew --phase taint -y -o json",
            "kubectl-certrotate renew --dry-run --new-run",
        ] {
            if let Err(err) = Cli::try_parse_from(line.split_whitespace()) {
                panic!("{line:?} should parse: {err}");
            }
        }
    }

    /// `renew` is listed, and its own help names every phase and the refusal of Lokomotive
    /// v0.5-v0.7.
    #[test]
    fn renew_is_listed_and_its_help_names_every_phase() {
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains("renew "), "{help}");
        let mut cli = Cli::command();
        let renew = cli.find_subcommand_mut("renew").expect("the renew subcommand");
        let help = renew.render_long_help().to_string();
        for needed in [
            "backup, taint, certificates, etcd, control-plane, tokens, restart, verify",
            "--upgrade-kubelets",
            "--nodes-updated-by-hand",
            "--etcd-endpoint",
            "--etcd-peer-endpoint",
            "v0.5-v0.7",
        ] {
            let flat = |t: &str| t.split_whitespace().collect::<Vec<_>>().join(" ");
            assert!(flat(&help).contains(&flat(needed)), "{needed:?} not in:\n{help}");
        }
        let parsed = Cli::try_parse_from(["kubectl-certrotate", "renew", "--phase", "etcd"]);
        assert!(parsed.is_ok(), "etcd is a phase");
    }

    #[test]
    fn request_timeout_help_gives_the_default_in_force() {
        let help = Cli::command().render_long_help().to_string();
        let default = crate::k8s::DEFAULT_REQUEST_TIMEOUT.as_secs();
        assert!(help.contains(&format!("[default: {default}s]")), "{help}");
    }

    #[test]
    fn invalid_command_lines_are_usage_errors() {
        for line in [
            "kubectl-certrotate",
            "kubectl-certrotate status --expiring-within soon",
            "kubectl-certrotate status -o yaml",
            "kubectl-certrotate completion powershell",
            "kubectl-certrotate status --request-timeout -1s",
            "kubectl-certrotate extension-servers --timeout forever",
            "kubectl-certrotate extension-servers --check-ca",
            "kubectl-certrotate aggregation --phase later",
        ] {
            let err = Cli::try_parse_from(line.split_whitespace()).expect_err(line);
            assert_eq!(err.exit_code(), 2, "{line:?}: {err}");
        }
    }
}
