//! The controller node: what Lokomotive's Terraform reaches over SSH and what the node's own
//! services read from its disk.
//!
//! A real `sshd` (Debian's openssh-server) on a free loopback port with its own config, a host
//! key and a test user key made for this environment, `UsePAM no`: it works as root (CI) and
//! as a normal user, who can then log in only as themselves. The node's filesystem is a folder
//! of the test (`work/node/`, the node's `/`): `etc/ssl/etcd/…` (what etcd serves),
//! `etc/kubernetes/kubeconfig` and `ca.crt` (what the kubelet uses), `home/<user>` (where
//! Terraform uploads). Its sessions get `NODE_ROOT` (the folder; empty on a real node, so the
//! fixture's paths are the real ones) and three stand-ins first in `PATH`:
//! - `sudo`: runs its command (the test user is the node's only user);
//! - `chown`: does nothing (no `etcd` user here; the files stay the test user's, whose etcd
//!   reads them);
//! - `systemctl ACTION UNIT`: asks the harness, which plays systemd: the request is a file in
//!   `work/node/run/systemd/`, answered by a thread of the harness that runs the handler of the
//!   unit (etcd: stop, start, restart of the supervised etcd on the node's files), then the
//!   answer file; the stand-in waits for it (120 s at most) and exits with its status.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::assets::{NodeSsh, free_port};
use super::cmd::Cmd;
use super::process::{EventLog, ProcSpec, Supervisor};
use super::tools::Tools;

/// What the harness does for `systemctl ACTION UNIT` on the node (`Err`: the command fails
/// with that message).
pub type UnitHandler = Arc<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// How often the harness looks for `systemctl` requests.
const POLL: Duration = Duration::from_millis(50);

/// The test environment's one controller node (see the module doc).
pub struct ControllerNode {
    /// The node's `/`.
    pub root: PathBuf,
    /// What Terraform's connection needs (port, user, home, keys).
    pub ssh: NodeSsh,
    units: Arc<Mutex<Vec<(String, UnitHandler)>>>,
    done: Arc<AtomicBool>,
    systemd: Option<JoinHandle<()>>,
}

impl ControllerNode {
    /// Makes the node's folder, keys and config under `work/node*`, starts sshd (supervised:
    /// it dies with the test, and dying on its own fails it) and the harness's systemd.
    pub fn start(sup: &Arc<Supervisor>, work: &Path, logs: &Path, events: &Arc<EventLog>) -> Self {
        let tools = Tools::get();
        let root = work.join("node");
        let ssh_dir = work.join("node-ssh");
        let user = current_user();
        let home = root.join("home").join(&user);
        let bin = root.join("usr").join("local").join("sbin");
        let requests = root.join("run").join("systemd");
        for dir in [&home, &bin, &requests, &ssh_dir] {
            std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        }
        write_script(
            &bin.join("sudo"),
            "#!/bin/sh\n# The node's sudo: the test user is its only user.\nexec \"$@\"\n",
        );
        write_script(
            &bin.join("chown"),
            "#!/bin/sh\n# No etcd user on this node: the files stay the test user's.\nexit 0\n",
        );
        write_script(&bin.join("systemctl"), &systemctl_script(&requests));
        let keygen = |name: &str, comment: &str| {
            let path = ssh_dir.join(name);
            Cmd::new(&tools.ssh_keygen)
                .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
                .arg(&path)
                .ok();
            path
        };
        let host_key = keygen("host_key", "certrotate-test-node");
        let user_key = keygen("user_key", "certrotate-test-user");
        let authorized = ssh_dir.join("authorized_keys");
        std::fs::copy(ssh_dir.join("user_key.pub"), &authorized).unwrap();
        // sshd started as root needs its privilege separation folder (the service's
        // RuntimeDirectory on a real system).
        if user == "root" {
            std::fs::create_dir_all("/run/sshd").expect("creating /run/sshd for sshd as root");
        }
        let log = logs.join("sshd.log");
        let mut port = 0;
        for attempt in 1..=3 {
            let candidate = free_port();
            let config = ssh_dir.join("sshd_config");
            std::fs::write(
                &config,
                sshd_config(candidate, &host_key, &authorized, &user, &home, &root, &bin),
            )
            .unwrap();
            let spec =
                ProcSpec::new("sshd", &tools.sshd, &log).args(["-D", "-e", "-f"]).arg(&config);
            let id = sup.spawn_unwatched(&spec).expect("starting sshd");
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && sup.exit_status(id).is_none() {
                if std::net::TcpStream::connect(("127.0.0.1", candidate)).is_ok() {
                    sup.watch(id);
                    port = candidate;
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if port != 0 {
                break;
            }
            sup.stop(id);
            events.line(format!(
                "node: sshd did not serve 127.0.0.1:{candidate} (attempt {attempt})"
            ));
        }
        assert!(port != 0, "sshd did not start in 3 attempts; see {}", log.display());
        events.line(format!("node: sshd serving 127.0.0.1:{port}, user {user}"));

        let units: Arc<Mutex<Vec<(String, UnitHandler)>>> = Arc::default();
        let done = Arc::new(AtomicBool::new(false));
        let systemd = {
            let (units, done, events) = (Arc::clone(&units), Arc::clone(&done), Arc::clone(events));
            std::thread::Builder::new()
                .name("certrotate-test-node-systemd".into())
                .spawn(move || play_systemd(&requests, &units, &done, &events))
                .expect("starting the node's systemd thread")
        };
        ControllerNode {
            ssh: NodeSsh {
                port,
                user,
                home,
                key: user_key,
                host_key: ssh_dir.join("host_key.pub"),
            },
            root,
            units,
            done,
            systemd: Some(systemd),
        }
    }

    /// From now on `systemctl ACTION unit` on the node runs `handler(ACTION)`. Before a
    /// handler is set (the install's copy, before the harness has started etcd) every action
    /// succeeds and does nothing: the harness starts the unit itself.
    pub fn on_unit(&self, unit: &str, handler: UnitHandler) {
        let mut units = self.units.lock().unwrap();
        units.retain(|(name, _)| name != unit);
        units.push((unit.to_string(), handler));
    }

    /// A path on the node, e.g. `path("etc/ssl/etcd/etcd/server.crt")`.
    pub fn path(&self, relative: &str) -> PathBuf {
        self.root.join(relative)
    }
}

impl Drop for ControllerNode {
    fn drop(&mut self) {
        self.done.store(true, Ordering::SeqCst);
        if let Some(thread) = self.systemd.take() {
            let _ = thread.join();
        }
    }
}

/// The user the tests run as (sshd lets a non-root sshd log in only as that user).
fn current_user() -> String {
    let out = Cmd::new("id").arg("-un").ok();
    out.stdout.trim().to_string()
}

fn write_script(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn sshd_config(
    port: u16,
    host_key: &Path,
    authorized: &Path,
    user: &str,
    home: &Path,
    root: &Path,
    bin: &Path,
) -> String {
    format!(
        "# The test environment's controller node (tests/support/node.rs).\n\
         ListenAddress 127.0.0.1:{port}\n\
         HostKey {host_key}\n\
         AuthorizedKeysFile {authorized}\n\
         AllowUsers {user}\n\
         PubkeyAuthentication yes\n\
         PasswordAuthentication no\n\
         KbdInteractiveAuthentication no\n\
         UsePAM no\n\
         StrictModes no\n\
         PidFile none\n\
         LogLevel VERBOSE\n\
         SetEnv PATH={bin}:/usr/local/bin:/usr/bin:/bin HOME={home} NODE_ROOT={root}\n",
        host_key = host_key.display(),
        authorized = authorized.display(),
        home = home.display(),
        root = root.display(),
        bin = bin.display(),
    )
}

/// The node's `systemctl`: one request file per call, then the harness's answer.
fn systemctl_script(requests: &Path) -> String {
    format!(
        r#"#!/bin/sh
# systemctl of the test environment's node: the test harness plays systemd
# (tests/support/node.rs). Usage: systemctl ACTION UNIT
set -eu
[ $# -eq 2 ] || {{ echo "systemctl (test node): usage: systemctl ACTION UNIT" >&2; exit 2; }}
dir={requests}
req=$dir/$(date +%s%N)-$$
printf '%s %s\n' "$1" "${{2%.service}}" >"$req.tmp"
mv "$req.tmp" "$req.req"
i=0
while [ ! -e "$req.done" ]; do
	i=$((i + 1))
	if [ $i -gt 1200 ]; then
		echo "systemctl (test node): no answer from the harness after 120 s" >&2
		exit 1
	fi
	sleep 0.1
done
read -r rc message <"$req.done" || true
rm -f "$req.done"
if [ "$rc" != 0 ]; then
	echo "systemctl $1 $2: $message" >&2
fi
exit "$rc"
"#,
        requests = requests.display()
    )
}

/// Answers the node's `systemctl` requests until the node is dropped.
fn play_systemd(
    requests: &Path,
    units: &Mutex<Vec<(String, UnitHandler)>>,
    done: &AtomicBool,
    events: &EventLog,
) {
    while !done.load(Ordering::SeqCst) {
        let mut pending: Vec<PathBuf> = std::fs::read_dir(requests)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        pending.retain(|p| p.extension().is_some_and(|e| e == "req"));
        pending.sort();
        for request in pending {
            let text = std::fs::read_to_string(&request).unwrap_or_default();
            let (action, unit) = text.trim().split_once(' ').unwrap_or((text.trim(), ""));
            let handler = units
                .lock()
                .unwrap()
                .iter()
                .find(|(name, _)| name == unit)
                .map(|(_, h)| Arc::clone(h));
            let started = Instant::now();
            let result = match handler {
                Some(handler) => handler(action),
                None => Ok(()),
            };
            events.line(format!(
                "node: systemctl {action} {unit}: {} in {:?}",
                match &result {
                    Ok(()) => "done".to_string(),
                    Err(e) => format!("failed: {e}"),
                },
                started.elapsed()
            ));
            let answer = match result {
                Ok(()) => "0\n".to_string(),
                Err(e) => format!("1 {}\n", e.replace('\n', " ")),
            };
            let answered = request.with_extension("done");
            let tmp = request.with_extension("answer");
            let _ = std::fs::write(&tmp, answer);
            let _ = std::fs::rename(&tmp, &answered);
            let _ = std::fs::remove_file(&request);
        }
        std::thread::sleep(POLL);
    }
}

/// The node's kubeconfig (`/etc/kubernetes/kubeconfig`), relative to the node's root.
pub const NODE_KUBECONFIG: &str = "etc/kubernetes/kubeconfig";
/// The kubeconfig a TLS-bootstrapped kubelet writes (`/var/lib/kubelet/kubeconfig`); absent
/// here (no TLS bootstrap), so the `ca-syncer` has only the other one to rewrite.
pub const KUBELET_KUBECONFIG: &str = "var/lib/kubelet/kubeconfig";
/// The node's CA copy (`/etc/kubernetes/ca.crt`), the kubelet's `--client-ca-file`.
pub const NODE_CA: &str = "etc/kubernetes/ca.crt";
/// The line the kubelet chart's `ca-syncer` rewrites (its sed matches it at the line start).
const CA_LINE: &str = "    certificate-authority-data:";

impl ControllerNode {
    /// What `kubelet.service`'s `ExecStartPre` does before every kubelet start: rebuilds
    /// `/etc/kubernetes/ca.crt` from the `certificate-authority-data` of
    /// `/etc/kubernetes/kubeconfig`.
    pub fn rebuild_ca_copy(&self) -> Result<(), String> {
        use base64::Engine as _;
        let kubeconfig = self.path(NODE_KUBECONFIG);
        let text = std::fs::read_to_string(&kubeconfig)
            .map_err(|e| format!("{}: {e}", kubeconfig.display()))?;
        let data = text
            .lines()
            .find_map(|l| l.trim_start().strip_prefix("certificate-authority-data:"))
            .map(str::trim)
            .ok_or_else(|| format!("{} has no certificate-authority-data", kubeconfig.display()))?;
        let pem = base64::engine::general_purpose::STANDARD
            .decode(data)
            .map_err(|e| format!("certificate-authority-data of {}: {e}", kubeconfig.display()))?;
        super::pki::write_private(&self.path(NODE_CA), &pem)
            .map_err(|e| format!("{}: {e}", self.path(NODE_CA).display()))
    }

    /// SHA-256 fingerprints of the node's CA copy, `/etc/kubernetes/ca.crt`.
    pub fn ca_copy(&self) -> Vec<String> {
        super::pki::file_fingerprints(&self.path(NODE_CA))
    }

    /// The kubelet starting: `ExecStartPre` (the CA copy), then a client from the node's
    /// kubeconfig, as the kubelet reads it at start.
    pub async fn kubelet_client(&self) -> Result<kube::Client, String> {
        self.rebuild_ca_copy()?;
        kubeconfig_client(&self.path(NODE_KUBECONFIG)).await
    }
}

/// A client from a kubeconfig as the kubelet reads it: Lokomotive's `kubeconfig-kubelet` has
/// one unnamed context and no `current-context`, which kube-rs refuses, so the one context is
/// named here (the file stays as it is).
pub async fn kubeconfig_client(path: &Path) -> Result<kube::Client, String> {
    use kube::config::{KubeConfigOptions, Kubeconfig};
    use serde_json::{Value, json};
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut doc: Value = serde_saphyr::from_str(&text)
        .map_err(|e| format!("{} is not YAML: {e}", path.display()))?;
    if let Some(Value::Object(context)) = doc["contexts"].get_mut(0) {
        context.insert("name".into(), json!("node"));
    }
    doc["current-context"] = json!("node");
    let kc: Kubeconfig = serde_json::from_value(doc)
        .map_err(|e| format!("{} is not a kubeconfig: {e}", path.display()))?;
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|e| format!("loading {}: {e}", path.display()))?;
    kube::Client::try_from(config).map_err(|e| format!("the node's kube client: {e}"))
}

/// The kubelet chart's pods (`kube-system`, `k8s-app: kubelet`): each start is the node's
/// kubelet starting again. Its init container `ca-syncer` (Lokomotive v0.8+) rewrites the
/// `certificate-authority-data` line of the node's kubeconfigs with the chart's
/// `kubernetesCACert`, the value its sed command carries in the pod spec; `kubelet.service`'s
/// `ExecStartPre` rebuilds `/etc/kubernetes/ca.crt` from it; then the kubelet reads
/// `/etc/kubernetes/kubeconfig` (client certificate and CA) and uses it from then on. A pod
/// without `ca-syncer` (a v0.7 chart) restarts the kubelet on the files as they are. One node
/// folder stands for every node; a pod going away stops nothing.
pub struct KubeletChartPods {
    node: Arc<ControllerNode>,
    client: super::kubelet::NodeClient,
    events: Arc<EventLog>,
}

impl KubeletChartPods {
    pub fn new(
        node: Arc<ControllerNode>,
        client: super::kubelet::NodeClient,
        events: Arc<EventLog>,
    ) -> Arc<Self> {
        Arc::new(KubeletChartPods { node, client, events })
    }

    /// The `ca-syncer`'s sed, applied to each of the node's kubeconfigs that exists.
    fn sync_ca(&self, value: &str) -> Result<(), String> {
        for file in [NODE_KUBECONFIG, KUBELET_KUBECONFIG] {
            let path = self.node.path(file);
            let Ok(text) = std::fs::read_to_string(&path) else { continue };
            let synced: Vec<String> = text
                .lines()
                .map(|l| {
                    if l.starts_with(CA_LINE) {
                        format!("{CA_LINE} {value}")
                    } else {
                        l.to_string()
                    }
                })
                .collect();
            super::pki::write_private(&path, (synced.join("\n") + "\n").as_bytes())
                .map_err(|e| format!("{}: {e}", path.display()))?;
        }
        Ok(())
    }
}

/// The `kubernetesCACert` in the `ca-syncer` init container's command (`None`: no such init
/// container). Its sed replaces up to the next `/`, the delimiter: base64 of a PEM text (ASCII
/// without `?`) never holds one.
fn ca_syncer_value(pod: &k8s_openapi::api::core::v1::Pod) -> Option<String> {
    let init = pod.spec.as_ref()?.init_containers.as_ref()?;
    let syncer = init.iter().find(|c| c.name == "ca-syncer")?;
    let script: Vec<&String> =
        syncer.command.iter().flatten().chain(syncer.args.iter().flatten()).collect();
    let script = script.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" ");
    let marker = "certificate-authority-data: ";
    let at = script.rfind(marker)? + marker.len();
    Some(script[at..].split('/').next()?.trim().to_string())
}

impl super::kubelet::PodRuntime for KubeletChartPods {
    fn matches(&self, pod: &k8s_openapi::api::core::v1::Pod) -> bool {
        use kube::ResourceExt;
        pod.namespace().as_deref() == Some("kube-system")
            && pod.labels().get("k8s-app").is_some_and(|v| v == "kubelet")
    }

    fn start<'a>(
        &'a self,
        pod: &'a k8s_openapi::api::core::v1::Pod,
    ) -> futures::future::BoxFuture<'a, Result<(), String>> {
        use kube::ResourceExt;
        Box::pin(async move {
            let name = pod.name_any();
            match ca_syncer_value(pod) {
                Some(value) if !value.is_empty() => self.sync_ca(&value)?,
                Some(_) => return Err("ca-syncer: kubernetesCACert can't be empty".into()),
                None => {}
            }
            let client = self.node.kubelet_client().await?;
            *self.client.write().unwrap() = client;
            let ca = self.node.ca_copy();
            self.events.line(format!(
                "kubelet: pod kube-system/{name} started: the node's kubelet restarted on \
                 /etc/kubernetes/kubeconfig, CA copy {}",
                ca.first().map(|f| &f[..16]).unwrap_or("?")
            ));
            Ok(())
        })
    }

    fn ready(&self, _pod: &k8s_openapi::api::core::v1::Pod) {}

    fn stop(&self, _pod: &k8s_openapi::api::core::v1::Pod) {}

    fn log_file(&self, _pod: &k8s_openapi::api::core::v1::Pod) -> Option<PathBuf> {
        None
    }
}
