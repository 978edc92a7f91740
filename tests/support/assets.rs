//! A real Lokomotive asset dir made by `testenv/make-assets.sh` (real `terraform apply` of the
//! fixture bootkube module), and the programs that act on it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::cmd::Cmd;
use super::tools::Tools;

/// Options passed to `make-assets.sh`.
#[derive(Debug, Clone, Default)]
pub struct AssetOptions {
    /// `--cluster NAME`: the cluster name (and so the terraform module `<platform>-<name>`).
    pub cluster: Option<String>,
    /// `--validity-hours H`: validity of every certificate (Lokomotive's default is 8760).
    pub validity_hours: Option<u32>,
    /// `--fake-now RFC3339`: the time the test provider takes as "now" when signing.
    pub fake_now: Option<String>,
    /// `--controllers N`: the kube-apiserver chart runs a Deployment for 1, else a DaemonSet.
    pub controllers: Option<u32>,
    /// `--lokomotive`: which Lokomotive's `copy-controller-secrets` the fixture plays (default
    /// v0.8+: new etcd certificates are pushed to the node).
    pub lokomotive: Lokomotive,
    /// `--ssh-*`: the controller node Terraform copies the etcd certificates to. A
    /// [`super::TestEnv`] sets it to its node; without it the asset dir has no
    /// `copy-controller-secrets` (no node to reach).
    pub node: Option<NodeSsh>,
}

/// The Lokomotive versions whose `null_resource.copy-controller-secrets` differ
/// (lokomotive-pki.md §2).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Lokomotive {
    /// v0.5.0 to v0.7.0: triggered by `controller_id` only, so new etcd certificates are not
    /// pushed to the node (it keeps what it got at install).
    V0_7,
    /// v0.8.0 and later: also triggered by the etcd CA, server and peer certificates; the copy
    /// stops etcd, keeps the old files in `/etc/ssl/etcd.old` and starts etcd again.
    #[default]
    V0_8,
}

impl Lokomotive {
    fn flag(self) -> &'static str {
        match self {
            Lokomotive::V0_7 => "v0.7",
            Lokomotive::V0_8 => "v0.8",
        }
    }
}

/// How Terraform reaches the controller node over SSH.
#[derive(Debug, Clone)]
pub struct NodeSsh {
    /// sshd's port on 127.0.0.1.
    pub port: u16,
    pub user: String,
    /// The user's home on the node (where the `file` provisioners upload).
    pub home: PathBuf,
    /// The test user's private key.
    pub key: PathBuf,
    /// The node's public host key, which the connection verifies.
    pub host_key: PathBuf,
}

impl AssetOptions {
    /// Every certificate of the asset dir (the CAs included) issued so that it expires
    /// `validity` from now: issued with Lokomotive's 8760 h (or `validity_hours`) at a fake
    /// "now" that many hours minus `validity` in the past (the test providers' clock, as
    /// `fake_now` does). The asset dir's terraform takes some seconds after this call: count
    /// them in `validity`.
    pub fn expiring_in(self, validity: Duration) -> AssetOptions {
        let hours = self.validity_hours.unwrap_or(8760);
        let lifetime = jiff::SignedDuration::from_hours(i64::from(hours));
        let left = jiff::SignedDuration::try_from(validity).expect("a short validity");
        let issued = jiff::Timestamp::now() - lifetime + left;
        let issued = jiff::Timestamp::from_second(issued.as_second()).unwrap_or(issued);
        AssetOptions { validity_hours: Some(hours), fake_now: Some(issued.to_string()), ..self }
    }
}

/// A config dir (`cluster.lokocfg`) with its asset dir in `assets/`.
#[derive(Debug, Clone)]
pub struct Assets {
    pub config_dir: PathBuf,
    /// `$ASSET_DIR`: holds `terraform/` and `cluster-assets/`.
    pub dir: PathBuf,
    /// The port of `https://127.0.0.1:<port>` in the admin kubeconfig.
    pub api_port: u16,
}

impl Assets {
    /// Runs `make-assets.sh config_dir --api-port api_port …`.
    pub fn make(config_dir: &Path, api_port: u16, opts: &AssetOptions) -> Assets {
        let tools = Tools::get();
        let mut cmd = Cmd::new(tools.make_assets_script())
            .arg(config_dir)
            .args(["--api-port", &api_port.to_string()])
            .env("TF_CLI_CONFIG_FILE", &tools.tf_cli_config)
            .timeout(Duration::from_secs(300));
        if let Some(cluster) = &opts.cluster {
            cmd = cmd.args(["--cluster", cluster]);
        }
        if let Some(hours) = opts.validity_hours {
            cmd = cmd.args(["--validity-hours", &hours.to_string()]);
        }
        if let Some(now) = &opts.fake_now {
            cmd = cmd.args(["--fake-now", now]);
        }
        if let Some(n) = opts.controllers {
            cmd = cmd.args(["--controllers", &n.to_string()]);
        }
        cmd = cmd.args(["--lokomotive", opts.lokomotive.flag()]);
        if let Some(node) = &opts.node {
            cmd = cmd
                .args(["--ssh-port", &node.port.to_string(), "--ssh-user", &node.user])
                .arg("--ssh-home")
                .arg(&node.home)
                .arg("--ssh-key")
                .arg(&node.key)
                .arg("--ssh-host-key")
                .arg(&node.host_key);
        }
        cmd.ok();
        let assets = Assets {
            config_dir: config_dir.to_path_buf(),
            dir: config_dir.join("assets"),
            api_port,
        };
        for must in [assets.kubeconfig(), assets.tls("ca.crt"), assets.tls("aggregation-ca.crt")] {
            assert!(must.is_file(), "make-assets.sh left no {}", must.display());
        }
        assets
    }

    /// `cluster-assets/`.
    pub fn cluster_assets(&self) -> PathBuf {
        self.dir.join("cluster-assets")
    }

    /// `cluster-assets/tls/<name>`, e.g. `tls("aggregation-ca.crt")`.
    pub fn tls(&self, name: &str) -> PathBuf {
        self.cluster_assets().join("tls").join(name)
    }

    /// The admin kubeconfig, `cluster-assets/auth/kubeconfig`.
    pub fn kubeconfig(&self) -> PathBuf {
        self.cluster_assets().join("auth").join("kubeconfig")
    }

    /// `cluster-assets/charts/<namespace>/<chart>`: the chart directory lokoctl upgrades from.
    pub fn chart(&self, namespace: &str, chart: &str) -> PathBuf {
        self.cluster_assets().join("charts").join(namespace).join(chart)
    }

    /// `cluster-assets/charts/<namespace>/<chart>.yaml`: the values terraform rendered.
    pub fn chart_values(&self, namespace: &str, chart: &str) -> PathBuf {
        self.cluster_assets().join("charts").join(namespace).join(format!("{chart}.yaml"))
    }

    /// The terraform root, `terraform/`.
    pub fn terraform_dir(&self) -> PathBuf {
        self.dir.join("terraform")
    }

    /// Real terraform in the terraform root, with the offline provider mirror.
    pub fn terraform(&self) -> Cmd {
        let tools = Tools::get();
        Cmd::new(&tools.terraform)
            .dir(self.terraform_dir())
            .env("TF_CLI_CONFIG_FILE", &tools.tf_cli_config)
            .env("TF_IN_AUTOMATION", "1")
            .timeout(Duration::from_secs(300))
    }

    /// The bootkube module address from `terraform state list`, e.g.
    /// `module.aws-mycluster.module.bootkube`.
    pub fn bootkube_module(&self) -> String {
        let out = self.terraform().args(["state", "list"]).ok();
        out.stdout
            .lines()
            .find_map(|l| {
                l.find(".module.bootkube.").map(|i| l[..i + ".module.bootkube".len()].to_string())
            })
            .unwrap_or_else(|| {
                panic!("no module.bootkube address in `terraform state list`:\n{}", out.stdout)
            })
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago (the kernel picked it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding 127.0.0.1:0")
}
