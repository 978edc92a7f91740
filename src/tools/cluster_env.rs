//! The verified cluster as the children that act on it (helm, lokoctl) get it: a kubeconfig
//! holding only the context, cluster and user the tool verified, and an environment without
//! the caller's variables that would send helm elsewhere.
//!
//! helm reads `HELM_KUBECONTEXT`, `HELM_KUBEAPISERVER`, `HELM_KUBETOKEN`, `HELM_KUBEASUSER`, …
//! on top of any kubeconfig, so a caller's `HELM_KUBECONTEXT=prod` beside a kubeconfig whose
//! current context is staging would verify staging and upgrade prod.

use std::ffi::OsStr;
use std::path::PathBuf;
use std::sync::Mutex;

use super::{Command, Runner};
use crate::error::Result;
use crate::k8s::Connection;

/// The prefix of the run folder's temp dir that holds the kubeconfig (removed after; a killed
/// run's is removed by the next invocation, see `RunDir::remove_scratch`).
const TEMP_PREFIX: &str = "kubeconfig-";
const FILE_NAME: &str = "kubeconfig";

pub struct ClusterEnv {
    /// The kubeconfig's bytes: they hold the user's credentials.
    kubeconfig: Vec<u8>,
    selection: String,
    runner: Runner,
    /// The private temp dir once written (children run only after the run folder exists).
    written: Mutex<Option<tempfile::TempDir>>,
}

impl ClusterEnv {
    pub fn new(conn: &Connection, runner: Runner) -> Self {
        Self {
            kubeconfig: conn.child_kubeconfig(),
            selection: conn.selection().to_string(),
            runner,
            written: Mutex::new(None),
        }
    }

    /// A verified cluster given as its kubeconfig's bytes (the engine's tests).
    #[cfg(test)]
    pub fn from_parts(kubeconfig: &[u8], selection: &str, runner: Runner) -> Self {
        Self {
            kubeconfig: kubeconfig.to_vec(),
            selection: selection.into(),
            runner,
            written: Mutex::new(None),
        }
    }

    /// `context C (cluster S, user U)`.
    pub fn selection(&self) -> &str {
        &self.selection
    }

    /// The kubeconfig file (0600, in a 0700 temp dir of the run folder), written on first use
    /// and removed when this is dropped.
    pub fn kubeconfig(&self) -> Result<PathBuf> {
        let mut written = self.written.lock().expect("kubeconfig file");
        if let Some(dir) = written.as_ref() {
            return Ok(dir.path().join(FILE_NAME));
        }
        let dir = self.runner.private_file(TEMP_PREFIX, FILE_NAME, &self.kubeconfig)?;
        let path = dir.path().join(FILE_NAME);
        *written = Some(dir);
        Ok(path)
    }

    /// `cmd` with `KUBECONFIG` naming only the verified cluster, and none of the caller's
    /// variables that override it.
    pub fn confine(&self, cmd: Command) -> Result<Command> {
        let path = self.kubeconfig()?;
        let cmd = std::env::vars_os()
            .map(|(name, _)| name)
            .filter(|name| overrides_kubeconfig(name))
            .fold(cmd, Command::env_remove);
        Ok(cmd.env("KUBECONFIG", path))
    }
}

/// Whether helm (or a program on helm's library, as lokoctl) reading variable `name` would talk
/// to another API server, context, user or namespace than the kubeconfig says, or read its
/// releases from another store than the one lokoctl keeps them in.
pub fn overrides_kubeconfig(name: &OsStr) -> bool {
    let name = name.to_string_lossy();
    name.starts_with("HELM_KUBE")
        || ["HELM_NAMESPACE", "HELM_DRIVER", "HELM_DRIVER_SQL_CONNECTION_STRING"]
            .contains(&name.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helm_kube_variables_namespace_and_driver_are_overrides_and_homes_are_not() {
        for name in [
            "HELM_KUBECONTEXT",
            "HELM_KUBEAPISERVER",
            "HELM_KUBETOKEN",
            "HELM_KUBEASUSER",
            "HELM_KUBEASGROUPS",
            "HELM_KUBECAFILE",
            "HELM_KUBEINSECURE_SKIP_TLS_VERIFY",
            "HELM_KUBETLS_SERVER_NAME",
            "HELM_NAMESPACE",
            "HELM_DRIVER",
        ] {
            assert!(overrides_kubeconfig(OsStr::new(name)), "{name}");
        }
        for name in ["HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DEBUG", "KUBECONFIG", "HOME"] {
            assert!(!overrides_kubeconfig(OsStr::new(name)), "{name}");
        }
    }
}
