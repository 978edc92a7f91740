//! `control-plane`: every release a killed helm or lokoctl left `pending-*` rolled back (the
//! seed's way, the step the other rotations take), then `lokoctl cluster apply --confirm
//! --skip-pre-update-health-check --upgrade-kubelets`, which upgrades every control-plane
//! chart with the values Terraform renders from the new certificates (the kubelet chart too:
//! its `kubernetesCACert`, which the nodes' `ca-syncer` writes into their kubeconfigs). Then
//! the proof: each control-plane release's values, and the Secrets its chart makes, hold the
//! asset dir's new certificates and keys.

use base64::Engine as _;

use super::renewed;
use crate::assets::LOKOMOTIVE_VALUES;
use crate::error::{Error, Result};
use crate::k8s::objects;
use crate::pki::{self, CertInfo};
use crate::renew::Phase;
use crate::rotation::context::Ctx;
use crate::rotation::engine::{Needs, PhaseUnit};
use crate::rotation::plan::StepKind;
use crate::rotation::step::{Action, Planned, RecoverReleases, Running};
use crate::tools::Command;
use crate::tools::lokoctl::ApplyFlags;

/// lokoctl's own `cluster certificate rotate` upgrades the kubelets too.
pub const FLAGS: ApplyFlags = ApplyFlags { skip_health_check: true, upgrade_kubelets: true };

/// How often the Secrets are read again while kube-apiserver restarts for its new Secret.
const POLL: std::time::Duration = std::time::Duration::from_secs(2);

/// Where a value's certificate or key comes from in the asset dir.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A certificate file of `cluster-assets/`.
    Cert(&'static str),
    /// A private key file of `cluster-assets/` (compared by its public half, never shown).
    Key(&'static str),
    /// The admission webhook's serving certificate, inside `lokomotive.yaml`.
    WebhookCert,
}

/// One value of a release that holds a certificate or key (base64 of PEM, as Lokomotive
/// renders them).
#[derive(Debug, Clone, Copy)]
pub struct Value {
    pub path: &'static [&'static str],
    pub source: Source,
    /// Only when aggregation is on (rendered `""` otherwise).
    pub aggregation: bool,
}

/// A key of a Secret, where its content comes from, and whether only with aggregation on.
pub type SecretKey = (&'static str, Source, bool);

/// One control-plane release and what its values and Secret must hold. Keys are compared
/// in the Secrets only: what helm prints of the values is redacted (keys never leave a
/// child's output), so the values' keys cannot be read back.
#[derive(Debug, Clone, Copy)]
pub struct Release {
    pub name: &'static str,
    pub namespace: &'static str,
    pub values: &'static [Value],
    /// The Secret its chart makes and its keys: `(secret, [(key, source, aggregation)])`.
    pub secret: Option<(&'static str, &'static [SecretKey])>,
}

const fn v(path: &'static [&'static str], source: Source) -> Value {
    Value { path, source, aggregation: false }
}

const fn agg(path: &'static [&'static str], source: Source) -> Value {
    Value { path, source, aggregation: true }
}

/// The control-plane releases whose charts carry certificates (lokomotive-pki.md §3), in
/// lokoctl's order of upgrade.
pub const RELEASES: [Release; 4] = [
    Release {
        name: "kube-apiserver",
        namespace: "kube-system",
        values: &[
            v(&["apiserver", "apiserverCert"], Source::Cert("tls/apiserver.crt")),
            v(&["apiserver", "caCert"], Source::Cert("tls/ca.crt")),
            v(&["apiserver", "etcdClientCaCert"], Source::Cert("tls/etcd-client-ca.crt")),
            v(&["apiserver", "etcdClientCert"], Source::Cert("tls/etcd-client.crt")),
            agg(&["apiserver", "aggregationCaCert"], Source::Cert("tls/aggregation-ca.crt")),
            agg(
                &["apiserver", "aggregationClientCert"],
                Source::Cert("tls/aggregation-client.crt"),
            ),
        ],
        secret: Some((
            "kube-apiserver",
            &[
                ("apiserver.crt", Source::Cert("tls/apiserver.crt"), false),
                ("apiserver.key", Source::Key("tls/apiserver.key"), false),
                ("ca.crt", Source::Cert("tls/ca.crt"), false),
                ("etcd-client-ca.crt", Source::Cert("tls/etcd-client-ca.crt"), false),
                ("etcd-client.crt", Source::Cert("tls/etcd-client.crt"), false),
                ("etcd-client.key", Source::Key("tls/etcd-client.key"), false),
                ("aggregation-ca.crt", Source::Cert("tls/aggregation-ca.crt"), true),
                ("aggregation-client.crt", Source::Cert("tls/aggregation-client.crt"), true),
                ("aggregation-client.key", Source::Key("tls/aggregation-client.key"), true),
            ],
        )),
    },
    Release {
        name: "kubernetes",
        namespace: "kube-system",
        values: &[v(&["controllerManager", "caCert"], Source::Cert("tls/ca.crt"))],
        secret: Some(("kube-controller-manager", &[("ca.crt", Source::Cert("tls/ca.crt"), false)])),
    },
    Release {
        name: "lokomotive",
        namespace: "lokomotive-system",
        values: &[v(&["webhook", "servingCert"], Source::WebhookCert)],
        secret: Some(("admission-webhook-server", &[("cert.pem", Source::WebhookCert, false)])),
    },
    Release {
        name: "kubelet",
        namespace: "kube-system",
        values: &[v(&["kubernetesCACert"], Source::Cert("tls/ca.crt"))],
        secret: None,
    },
];

pub struct ControlPlane;

impl PhaseUnit for ControlPlane {
    fn needs(&self) -> Needs {
        Needs { terraform: true, helm: true, lokoctl: true }
    }

    fn steps(&self, ctx: &Ctx) -> Vec<Planned> {
        let names: Vec<String> =
            RELEASES.iter().map(|r| format!("{}/{}", r.namespace, r.name)).collect();
        vec![
            RecoverReleases::planned(ctx),
            Planned::command(
                &ctx.plan_lokoctl(FLAGS),
                " (terraform apply, then helm upgrade of every control-plane chart with the new certificates, the kubelet chart included)",
                Step::Lokoctl,
            ),
            Planned::new(
                StepKind::Check,
                format!(
                    "the values of releases {} and secrets kube-system/kube-apiserver, kube-system/kube-controller-manager, lokomotive-system/admission-webhook-server hold the asset dir's new certificates and keys (a release the cluster does not have is said)",
                    names.join(", ")
                ),
                Step::Verify,
            ),
        ]
    }

    fn found_done<'a>(&'a self, ctx: &'a Ctx) -> Running<'a, Option<String>> {
        Box::pin(async move {
            // Before the certificates are renewed, the releases hold the files already.
            if !renewed(ctx)? {
                return Ok(None);
            }
            Ok(match releases_hold_the_files(ctx).await? {
                Ok(said) => {
                    Some(format!("every control-plane release holds the new certificates ({said})"))
                }
                Err(_) => None,
            })
        })
    }
}

enum Step {
    Lokoctl,
    Verify,
}

impl Action for Step {
    fn command(&self, ctx: &Ctx) -> Result<Option<Command>> {
        Ok(match self {
            Self::Lokoctl => Some(ctx.lokoctl()?.apply_command(FLAGS)?),
            Self::Verify => None,
        })
    }

    fn run<'a>(&'a self, ctx: &'a mut Ctx) -> Running<'a, String> {
        match self {
            Self::Lokoctl => Box::pin(async move {
                // lokoctl's terraform apply changes the state too.
                ctx.terraform()?.keep_state().await?;
                ctx.lokoctl()?.apply(FLAGS).await?;
                Ok("applied".into())
            }),
            Self::Verify => Box::pin(async move {
                releases_hold_the_files(ctx).await?.map_err(|reason| Error::Verification {
                    phase: Phase::ControlPlane.name(),
                    reason,
                })
            }),
        }
    }
}

/// What a value or Secret key must hold, read from the asset dir.
enum Want {
    Cert(Box<CertInfo>),
    Key(pki::PublicHalf),
}

fn want(ctx: &Ctx, source: Source) -> Result<Want> {
    Ok(match source {
        Source::Cert(file) => Want::Cert(Box::new(ctx.file_cert(file)?)),
        Source::Key(file) => {
            let pem = ctx.read_asset(file)?;
            Want::Key(
                pki::private_key_half(&pem)
                    .map_err(|p| Error::BadInputFile { path: ctx.asset(file), reason: p.0 })?,
            )
        }
        Source::WebhookCert => Want::Cert(Box::new(crate::webhook::phases::values_pair(ctx)?.0)),
    })
}

fn shown(source: Source) -> String {
    match source {
        Source::Cert(file) | Source::Key(file) => file.to_string(),
        Source::WebhookCert => format!("the serving certificate of {LOKOMOTIVE_VALUES}"),
    }
}

/// Whether `pem` (a value's or a Secret's bytes) holds what `want` is: a certificate equal to
/// it (first of a bundle, or any of a CA bundle), a key with its public half.
fn holds(pem: &[u8], want: &Want) -> bool {
    match want {
        Want::Cert(cert) => {
            pki::parse_certs(pem).is_ok_and(|certs| certs.iter().any(|c| c.sha256 == cert.sha256))
        }
        Want::Key(half) => pki::private_key_half(pem).is_ok_and(|h| &h == half),
    }
}

/// `Ok(summary)` when every release the cluster has holds the asset dir's certificates and
/// keys in its values and Secret; `Err(what is not)` otherwise; an error when the cluster or
/// helm cannot be read.
async fn releases_hold_the_files(ctx: &Ctx) -> Result<std::result::Result<String, String>> {
    let aggregation = ctx.assets.aggregation_enabled();
    let mut wrong = Vec::new();
    let mut checked = Vec::new();
    let mut absent = Vec::new();
    for release in RELEASES {
        let Some(values) = ctx.helm()?.values_if_installed(release.name, release.namespace).await?
        else {
            absent.push(format!("{}/{}", release.namespace, release.name));
            continue;
        };
        for value in release.values.iter().filter(|v| aggregation || !v.aggregation) {
            let at = value.path.iter().fold(&values, |node, key| &node[*key]);
            let name = format!("release {} value {}", release.name, value.path.join("."));
            let decoded = at
                .as_str()
                .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64.trim()).ok());
            match decoded {
                None => wrong.push(format!("{name} is missing or not base64")),
                Some(pem) if !holds(&pem, &want(ctx, value.source)?) => {
                    wrong.push(format!("{name} is not {}", shown(value.source)))
                }
                Some(_) => {}
            }
        }
        if let Some((secret, keys)) = release.secret {
            for &(key, source, needs_aggregation) in keys.iter() {
                if needs_aggregation && !aggregation {
                    continue;
                }
                let bytes = secret_bytes(ctx, release.namespace, secret, key).await?;
                if !holds(&bytes, &want(ctx, source)?) {
                    wrong.push(format!(
                        "secret {}/{secret} {key} is not {}",
                        release.namespace,
                        shown(source)
                    ));
                }
            }
        }
        checked.push(release.name);
    }
    if !wrong.is_empty() {
        return Ok(Err(format!(
            "{}: lokoctl applied other values than this asset dir's new files (does a lokocfg in {} name another asset dir?); run this phase again once it applies {}",
            wrong.join("; "),
            ctx.config_dir.display(),
            ctx.assets.root().display()
        )));
    }
    let mut said = format!("releases {} hold the new certificates", checked.join(", "));
    if !absent.is_empty() {
        said.push_str(&format!("; not installed in this cluster, skipped: {}", absent.join(", ")));
    }
    Ok(Ok(said))
}

/// A Secret's key, read again while the API does not answer (kube-apiserver restarts for the
/// new Secret), within `--timeout`.
async fn secret_bytes(ctx: &Ctx, namespace: &str, name: &str, key: &str) -> Result<Vec<u8>> {
    let client = &ctx.conn()?.client;
    let mut last = None;
    let read = crate::duration::poll(ctx.timeout, POLL, async || {
        match objects::secret_bytes(client, namespace, name, key).await {
            Err(e) if e.is_api_outage() => {
                let said = e.to_string();
                last = Some(e);
                Err(said)
            }
            other => Ok(other),
        }
    })
    .await;
    match read {
        Ok(result) => result,
        Err(said) => Err(last.unwrap_or(Error::KubeTimeout {
            action: format!("read secret {namespace}/{name}: {said}"),
            secs: ctx.timeout.as_secs(),
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every certificate of the rendered values lokomotive-pki.md §3 lists is checked, the
    /// aggregation ones only with aggregation on; no key is compared as a certificate.
    #[test]
    fn the_releases_are_lokomotives_control_plane_charts() {
        let names: Vec<&str> = RELEASES.iter().map(|r| r.name).collect();
        assert_eq!(names, ["kube-apiserver", "kubernetes", "lokomotive", "kubelet"]);
        let apiserver = &RELEASES[0];
        assert_eq!(apiserver.values.len(), 6);
        assert_eq!(apiserver.values.iter().filter(|v| v.aggregation).count(), 2);
        for value in RELEASES.iter().flat_map(|r| r.values.iter()) {
            assert!(!matches!(value.source, Source::Key(_)), "a key read from helm's values");
        }
        let (_, keys) = apiserver.secret.unwrap();
        let keys: Vec<&str> =
            keys.iter().filter(|k| matches!(k.1, Source::Key(_))).map(|k| k.0).collect();
        assert_eq!(keys, ["apiserver.key", "etcd-client.key", "aggregation-client.key"]);
        const { assert!(FLAGS.skip_health_check && FLAGS.upgrade_kubelets) };
    }
}
