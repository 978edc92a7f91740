//! Typed errors that carry what an operator needs to act (the path, the object, the command),
//! and the documented exit codes they map to.

use std::path::PathBuf;
use std::time::Duration;

/// Documented exit codes (README, `--help`).
pub mod exit {
    /// Everything is fine.
    pub const OK: u8 = 0;
    /// The tool could not do its job (bad asset dir, unreachable tool, failed step).
    pub const ERROR: u8 = 1;
    /// The command line is wrong.
    pub const USAGE: u8 = 2;
    /// Something expires within the `--expiring-within` window.
    pub const EXPIRING: u8 = 3;
    /// Something has expired, is not yet valid, is missing or is invalid.
    pub const EXPIRED_OR_INVALID: u8 = 4;
    /// A rotation was interrupted (Ctrl-C); running it again goes on where it stopped.
    pub const INTERRUPTED: u8 = 130;
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "asset dir {path} does not exist: pass the Lokomotive asset dir with --assets-dir DIR \
         or set ASSET_DIR"
    )]
    AssetDirMissing { path: PathBuf },

    #[error(
        "{path} is not a Lokomotive asset dir: it has no {missing}; pass the folder that holds \
         terraform/ and cluster-assets/ with --assets-dir DIR"
    )]
    NotAnAssetDir { path: PathBuf, missing: &'static str },

    #[error("no asset dir matches {pattern:?}: check the path or the glob")]
    NoAssetDirMatches { pattern: String },

    #[error("invalid glob {pattern:?} for --assets-dir: {source}")]
    BadGlob {
        pattern: String,
        #[source]
        source: glob::PatternError,
    },

    #[error("cannot read kubeconfig {path}: {reason}")]
    Kubeconfig { path: PathBuf, reason: String },

    #[error(
        "no kubeconfig found: pass --kubeconfig, set KUBECONFIG, or keep the asset dir's \
         cluster-assets/auth/kubeconfig"
    )]
    NoKubeconfig,

    #[error("failed to {action}: {}", describe_kube(source))]
    Kube {
        action: String,
        #[source]
        source: Box<kube::Error>,
    },

    #[error("timed out after {secs}s while trying to {action}")]
    KubeTimeout { action: String, secs: u64 },

    #[error("{0}")]
    Usage(String),

    /// A bug of this tool's wiring (a phase met a tool its preparation did not set up), not
    /// the operator's usage.
    #[error("internal error (please report it): {0}")]
    Wiring(String),

    #[error("refusing to change the cluster: {0}")]
    WrongCluster(String),

    #[error(
        "refusing to change the cluster without confirmation: pass -y/--yes, or --dry-run to \
         see the plan"
    )]
    NotConfirmed,

    #[error("{}: {reason}", path.display())]
    BadInputFile { path: PathBuf, reason: String },

    /// An input file that could not be read at all (what it holds is [`Error::BadInputFile`]).
    #[error("{}: {source}", path.display())]
    Unreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{object} {reason}")]
    ClusterObject { object: String, reason: String },

    #[error("{workload}: {reason}")]
    Rollout { workload: String, reason: String },

    #[error("timed out after {secs}s waiting for {workload}: {waiting_for}")]
    RolloutTimeout { workload: String, secs: u64, waiting_for: String },

    #[error("{program} not found: {tried}; {hint}")]
    ProgramMissing { program: &'static str, tried: String, hint: String },

    #[error("`{line}` failed ({status}){}", tail_block(tail))]
    CommandFailed { line: String, status: String, tail: String },

    #[error("`{line}` did not finish within {secs}s and was stopped{}", tail_block(tail))]
    CommandTimeout { line: String, secs: u64, tail: String },

    #[error(
        "the Terraform state in {} is locked by another process ({holder}): wait for it to \
         finish; if nothing runs any more, `terraform force-unlock <ID>` there frees it. \
         Nothing was changed",
        dir.display()
    )]
    TerraformLocked { dir: PathBuf, holder: String },

    #[error(
        "lokocfg {}: {reason}. Nothing was changed: fix it, or pass --config-dir DIR, the \
         folder whose *.lokocfg names this asset dir",
        path.display()
    )]
    Lokocfg { path: PathBuf, reason: String },

    #[error(
        "refusing to run lokoctl in the config dir {} (from {from}): its lokocfg ({at}) names \
         the asset dir {named}, not {}, so `lokoctl cluster apply` there would change another \
         cluster. Nothing was changed: pass --config-dir DIR, the folder whose *.lokocfg names \
         {}",
        config_dir.display(),
        assets.display(),
        assets.display()
    )]
    OtherCluster {
        config_dir: PathBuf,
        from: &'static str,
        at: String,
        named: String,
        assets: PathBuf,
    },

    #[error(
        "{source}\nthe Terraform state from before this command is kept in {} (0600: it holds \
         every private key); if {}/terraform.tfstate is now empty or cut, put it back with \
         `terraform state push -force {}` there",
        kept.display(), dir.display(), kept.display()
    )]
    TerraformChange {
        #[source]
        source: Box<Error>,
        kept: PathBuf,
        dir: PathBuf,
    },

    #[error("the Terraform state in {} {reason}", dir.display())]
    TerraformState { dir: PathBuf, reason: String },

    #[error("cannot write a private temp file: {place}: {source}")]
    TempFile {
        /// `in <folder>`, or the file's path.
        place: String,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "another rotation of this asset dir is running ({holder}; lock {}): wait for it to \
         finish, or stop it; a rotation that was killed frees the lock by itself",
        path.display()
    )]
    RotationLocked { path: PathBuf, holder: String },

    #[error("rotation journal {}: {reason}", path.display())]
    Journal { path: PathBuf, reason: String },

    /// A file of a run's folder (journal, lock, backup) that could not be read or written.
    #[error("rotation journal {}: {source}", path.display())]
    JournalIo {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("phase {phase} cannot run: {reason}")]
    Precondition { phase: &'static str, reason: String },

    #[error("phase {phase} stopped: {reason}")]
    PhaseStopped { phase: &'static str, reason: String },

    #[error("phase {phase} did not verify: {reason}")]
    Verification { phase: &'static str, reason: String },

    #[error(
        "interrupted ({signal}) during phase {phase}{}; run the same command again to go on from there",
        if stopped.is_empty() { String::new() } else { format!(" (stopped: {})", stopped.join(", ")) }
    )]
    Interrupted { signal: &'static str, phase: String, stopped: Vec<String> },

    #[error(
        "the API server {server} did not answer within {secs}s (--timeout): {last}; once \
         kube-apiserver runs again, run the same command again to go on"
    )]
    ApiDown {
        server: String,
        secs: u64,
        #[source]
        last: Box<Error>,
    },

    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),

    #[error("cannot listen for SIGINT, SIGTERM and SIGHUP: {0}")]
    Signals(#[source] std::io::Error),

    #[error("cannot write output: {0}")]
    Output(#[source] std::io::Error),

    #[error(
        "cannot write --textfile {}: {reason}; its folder must exist and be writable (point it \
         into node_exporter's --collector.textfile.directory)",
        path.display()
    )]
    Textfile { path: PathBuf, reason: String },
}

/// A request that got no answer from the API server. Made by the client's request bound
/// (`k8s/bound.rs`), which knows the server, so that the message names it.
#[derive(Debug, thiserror::Error)]
pub enum Transport {
    #[error(
        "{server} did not answer within {limit:?} (--request-timeout sets the bound; 0 means \
         no limit)"
    )]
    TimedOut { server: String, limit: Duration },

    #[error("cannot reach {server}: {reason}")]
    Unreachable { server: String, reason: String },
}

/// A kube error as an operator reads it: the API's own message for a refusal, the server and
/// the cause for a request that got no answer; kube's texts carry debug dumps and wrappers.
pub fn describe_kube(err: &kube::Error) -> String {
    if let kube::Error::Api(status) = err {
        return match (status.message.is_empty(), status.reason.is_empty()) {
            (false, false) => format!("{} ({})", status.message, status.reason),
            (false, true) => format!("{} (HTTP {})", status.message, status.code),
            _ => format!("HTTP {} {}", status.code, status.reason),
        };
    }
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cause {
        if let Some(transport) = e.downcast_ref::<Transport>() {
            return transport.to_string();
        }
        cause = e.source();
    }
    err.to_string()
}

impl Error {
    pub fn kube(action: impl Into<String>, source: kube::Error) -> Self {
        Self::Kube { action: action.into(), source: Box::new(source) }
    }

    /// Whether the API server did not answer (down, restarting, overloaded), as opposed to
    /// answering with a refusal: waiting can heal the first, never the second.
    pub fn is_api_outage(&self) -> bool {
        match self {
            Self::Kube { source, .. } => match source.as_ref() {
                kube::Error::Api(status) => status.code >= 500,
                // The transport: refused, reset, a cut handshake, no answer in time.
                kube::Error::HyperError(_)
                | kube::Error::Service(_)
                | kube::Error::ReadEvents(_) => true,
                _ => false,
            },
            Self::KubeTimeout { .. } => true,
            _ => false,
        }
    }

    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) => exit::USAGE,
            Self::Interrupted { .. } => exit::INTERRUPTED,
            _ => exit::ERROR,
        }
    }
}

/// The tail of a child's output under an error line, indented.
fn tail_block(tail: &str) -> String {
    if tail.trim().is_empty() {
        return String::new();
    }
    let lines: String = tail.lines().map(|l| format!("\n    {l}")).collect();
    format!("; its last output:{lines}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: u16) -> Error {
        let status = kube::core::Status::failure("m", "r").with_code(code);
        Error::kube("list things", kube::Error::Api(Box::new(status)))
    }

    /// A variant wrapping another error carries it as its source (for whoever walks the
    /// chain) and its message says the source's text once.
    #[test]
    fn wrapped_errors_are_sources_said_once() {
        let io = || std::io::Error::other("disk on fire");
        let wrapped = || Box::new(Error::Output(io()));
        let cases = [
            Error::Unreadable { path: "/a".into(), source: io() },
            Error::JournalIo { path: "/a".into(), source: io() },
            Error::TempFile { place: "in /a".into(), source: io() },
            Error::Runtime(io()),
            Error::Signals(io()),
            Error::Output(io()),
            Error::TerraformChange { source: wrapped(), kept: "/k".into(), dir: "/d".into() },
            Error::ApiDown { server: "https://s".into(), secs: 1, last: wrapped() },
        ];
        for err in cases {
            let source = std::error::Error::source(&err).expect("the wrapped error");
            assert!(source.to_string().contains("disk on fire"), "{err:?}");
            assert_eq!(err.to_string().matches("disk on fire").count(), 1, "{err}");
        }
        let glob =
            Error::BadGlob { pattern: "[".into(), source: glob::Pattern::new("[").unwrap_err() };
        let source = std::error::Error::source(&glob).expect("the pattern error").to_string();
        assert_eq!(glob.to_string().matches(&source).count(), 1, "{glob}");
    }

    #[test]
    fn only_an_api_that_does_not_answer_is_an_outage() {
        assert!(api(503).is_api_outage(), "kube-apiserver starting: 503");
        assert!(!api(401).is_api_outage(), "a refusal never heals by waiting");
        assert!(!api(403).is_api_outage());
        assert!(!api(404).is_api_outage());
        let refused = kube::Error::Service(Box::new(Transport::Unreachable {
            server: "https://127.0.0.1:6443".into(),
            reason: "Connection refused".into(),
        }));
        assert!(Error::kube("list things", refused).is_api_outage());
        assert!(Error::KubeTimeout { action: "x".into(), secs: 1 }.is_api_outage());
        assert!(!Error::Usage("x".into()).is_api_outage());
        let auth = kube::Error::Auth(kube::client::AuthError::InvalidBasicAuth(
            http::HeaderValue::from_bytes(b"\n").unwrap_err(),
        ));
        assert!(!Error::kube("auth", auth).is_api_outage(), "credentials are not an outage");
    }
}
