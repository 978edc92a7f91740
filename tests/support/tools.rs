//! The external programs of the test environment, found through the variables that
//! `scripts/provision.sh` writes to its `testenv.env`.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Absolute paths of every program the harness and the tests run.
#[derive(Debug)]
pub struct Tools {
    pub etcd: PathBuf,
    pub kube_apiserver: PathBuf,
    pub kube_controller_manager: PathBuf,
    pub helm3: PathBuf,
    pub helm4: PathBuf,
    pub terraform: PathBuf,
    /// The terraform CLI config that serves hashicorp/tls, hashicorp/local and hashicorp/null
    /// offline.
    pub tf_cli_config: PathBuf,
    pub ext_apiserver: PathBuf,
    /// The stand-in for Lokomotive's admission webhook server.
    pub admission_webhook: PathBuf,
    /// `testenv/lokoctl`: a test double of `lokoctl cluster apply`, not the real lokoctl.
    pub lokoctl_double: PathBuf,
    /// The `testenv/` folder: `make-assets.sh`, the fixture charts and terraform module.
    pub testenv_dir: PathBuf,
    pub kubectl: PathBuf,
    /// Debian's `/usr/sbin/sshd`: the controller node each environment runs on loopback.
    pub sshd: PathBuf,
    pub ssh_keygen: PathBuf,
}

impl Tools {
    /// The tools of this machine. Panics, naming `scripts/provision.sh`, when a variable is
    /// missing or points at nothing: a test must fail, never skip, without its environment.
    pub fn get() -> &'static Tools {
        static TOOLS: OnceLock<Tools> = OnceLock::new();
        TOOLS.get_or_init(|| Tools {
            etcd: var("CERTROTATE_ETCD"),
            kube_apiserver: var("CERTROTATE_KUBE_APISERVER"),
            kube_controller_manager: var("CERTROTATE_KUBE_CONTROLLER_MANAGER"),
            helm3: var("CERTROTATE_HELM3"),
            helm4: var("CERTROTATE_HELM4"),
            terraform: var("CERTROTATE_TERRAFORM"),
            tf_cli_config: var("CERTROTATE_TF_CLI_CONFIG"),
            ext_apiserver: var("CERTROTATE_EXT_APISERVER"),
            admission_webhook: var("CERTROTATE_ADMISSION_WEBHOOK"),
            lokoctl_double: var("CERTROTATE_LOKOCTL_DOUBLE"),
            testenv_dir: var("CERTROTATE_TESTENV_DIR"),
            kubectl: var("CERTROTATE_KUBECTL"),
            sshd: var("CERTROTATE_SSHD"),
            ssh_keygen: var("CERTROTATE_SSH_KEYGEN"),
        })
    }

    /// `testenv/make-assets.sh`.
    pub fn make_assets_script(&self) -> PathBuf {
        existing(self.testenv_dir.join("make-assets.sh"), "CERTROTATE_TESTENV_DIR")
    }
}

const HOW_TO_FIX: &str = "run `scripts/test.sh` (it runs scripts/provision.sh and sources the \
     testenv.env it writes), or run scripts/provision.sh yourself and `source` the file it prints";

fn var(name: &str) -> PathBuf {
    match std::env::var_os(name) {
        Some(value) if !value.is_empty() => existing(PathBuf::from(value), name),
        _ => panic!("{name} is not set: the test environment is not provisioned; {HOW_TO_FIX}"),
    }
}

fn existing(path: PathBuf, from: &str) -> PathBuf {
    assert!(
        Path::new(&path).exists(),
        "{} (from {from}) does not exist: the test environment is stale or incomplete; {HOW_TO_FIX}",
        path.display()
    );
    path
}
