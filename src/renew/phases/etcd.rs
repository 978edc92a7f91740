//! `etcd`: the new etcd certificates are in use on every member. Lokomotive v0.8+ pushes them
//! to the controllers in the `certificates` phase's apply (`copy-controller-secrets`, which
//! restarts etcd); v0.5-v0.7 leave it to the operator (`--nodes-updated-by-hand`). Either way
//! this phase changes nothing: one member at a time, within `--timeout`, it waits until the
//! member presents the new server certificate on its client port and the new peer certificate
//! on its peer port (TLS handshakes), and answers `/health` to the new client certificate.
//!
//! The members are the kube-apiserver values' `etcdServers`; a workstation that reaches them
//! under other addresses names them with `--etcd-endpoint` and `--etcd-peer-endpoint`.

use super::KUBE_APISERVER_VALUES;
use crate::error::{Error, Result};
use crate::pki::CertInfo;
use crate::renew::probe::{self, ClientCert};
use crate::renew::{Phase, nodes, options};
use crate::rotation::context::Ctx;
use crate::rotation::engine::PhaseUnit;
use crate::rotation::plan::StepKind;
use crate::rotation::step::{Action, Planned, Running};

const SERVER_CERT: &str = "tls/etcd/server.crt";
const PEER_CERT: &str = "tls/etcd/peer.crt";
const PEER_KEY: &str = "tls/etcd/peer.key";
const CLIENT_CERT: &str = "tls/etcd-client.crt";
const CLIENT_KEY: &str = "tls/etcd-client.key";
/// etcd's peer port, where the values name only the client URLs.
const PEER_PORT: u16 = 2380;
const POLL: std::time::Duration = std::time::Duration::from_secs(2);

/// One member: its client and peer URLs as this machine reaches them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub client: String,
    pub peer: String,
}

/// The members: the values' `etcdServers` (comma-separated client URLs), or the endpoints
/// given, which must name every member, client and peer.
pub fn members(
    etcd_servers: &str,
    clients: &[String],
    peers: &[String],
) -> std::result::Result<Vec<Member>, String> {
    let listed: Vec<&str> =
        etcd_servers.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
    if listed.is_empty() && clients.is_empty() {
        return Err("the kube-apiserver values name no etcdServers: pass --etcd-endpoint".into());
    }
    if clients.is_empty() {
        if !peers.is_empty() {
            return Err("--etcd-peer-endpoint needs --etcd-endpoint for each member".into());
        }
        return listed
            .iter()
            .map(|url| {
                let (host, _) = probe::host_port(url)?;
                let host = if host.contains(':') { format!("[{host}]") } else { host };
                Ok(Member { client: url.to_string(), peer: format!("https://{host}:{PEER_PORT}") })
            })
            .collect();
    }
    if !listed.is_empty() && clients.len() != listed.len() {
        return Err(format!(
            "{} --etcd-endpoint given for the {} members of etcdServers ({})",
            clients.len(),
            listed.len(),
            listed.join(", ")
        ));
    }
    if peers.len() != clients.len() {
        return Err(format!(
            "{} --etcd-peer-endpoint given for {} --etcd-endpoint: name each member's peer URL too",
            peers.len(),
            clients.len()
        ));
    }
    for url in clients.iter().chain(peers) {
        probe::host_port(url)?;
    }
    Ok(clients
        .iter()
        .zip(peers)
        .map(|(c, p)| Member { client: c.clone(), peer: p.clone() })
        .collect())
}

/// The members of this asset dir, with the endpoints given on the command line.
pub fn resolve_members(ctx: &Ctx) -> Result<Vec<Member>> {
    let (path, bytes) = super::backup::kept_or_current(ctx, KUBE_APISERVER_VALUES)?;
    let text = String::from_utf8(bytes).map_err(|_| Error::BadInputFile {
        path: path.clone(),
        reason: "is not UTF-8 text".into(),
    })?;
    let values: serde_json::Value = serde_saphyr::from_str(&text).map_err(|e| {
        Error::BadInputFile { path: path.clone(), reason: crate::secret_text::yaml_error(&e) }
    })?;
    let servers = values["apiserver"]["etcdServers"].as_str().unwrap_or_default();
    let given = options();
    members(servers, &given.etcd_endpoints, &given.etcd_peer_endpoints).map_err(Error::Usage)
}

pub struct Etcd;

impl PhaseUnit for Etcd {
    fn steps(&self, ctx: &Ctx) -> Vec<Planned> {
        let members = match resolve_members(ctx) {
            Ok(m) => m
                .iter()
                .map(|m| format!("{} (peer {})", m.client, m.peer))
                .collect::<Vec<_>>()
                .join(", "),
            Err(e) => format!("not resolved: {e}"),
        };
        let how = if options().nodes_updated_by_hand {
            "copied by you (--nodes-updated-by-hand)"
        } else {
            "pushed by the certificates phase's terraform apply (copy-controller-secrets)"
        };
        vec![Planned::new(
            StepKind::Check,
            format!(
                "one member at a time ({members}), within --timeout: a TLS handshake on its client port presents the new {SERVER_CERT}, /health answers true to the new {CLIENT_CERT}, a handshake on its peer port presents the new {PEER_CERT} (the new certificates {how})"
            ),
            Step,
        )]
    }

    // Never found done: it changes nothing, so its check is the phase (a few handshakes).
}

struct Step;

impl Action for Step {
    fn run<'a>(&'a self, ctx: &'a mut Ctx) -> Running<'a, String> {
        Box::pin(async move {
            let members = resolve_members(ctx)?;
            let report = ctx.reporter();
            for (n, member) in members.iter().enumerate() {
                report(&format!("member {} of {}: {}", n + 1, members.len(), member.client));
                let waited =
                    crate::duration::poll(ctx.timeout, POLL, async || check(ctx, member).await)
                        .await;
                if let Err(last) = waited {
                    return Err(not_served(ctx, member, &last));
                }
            }
            Ok(format!(
                "{} etcd member(s) serve the new server and peer certificates and accept the new client certificate",
                members.len()
            ))
        })
    }
}

/// What to do when a member still serves another certificate after `--timeout`.
fn not_served(ctx: &Ctx, member: &Member, last: &str) -> Error {
    let what = if options().nodes_updated_by_hand {
        format!(
            "take the steps for etcd now, then run the same command again: {}",
            nodes::steps(&[nodes::Missing::EtcdPush])
        )
    } else {
        "the certificates phase's terraform apply should have copied them (copy-controller-secrets, over SSH) and restarted etcd: look at its output in the journal, fix the SSH access to the controllers, and run `terraform apply -parallelism=1` in the terraform folder, then the same command again".into()
    };
    Error::PhaseStopped {
        phase: Phase::Etcd.name(),
        reason: format!(
            "after {}s, etcd member {} does not use the new certificates ({last}); {what}",
            ctx.timeout.as_secs(),
            member.client
        ),
    }
}

fn pair(ctx: &Ctx, cert: &str, key: &str) -> Result<ClientCert> {
    Ok(ClientCert { cert: ctx.read_asset(cert)?, key: ctx.read_asset(key)? })
}

fn is(served: &CertInfo, want: &CertInfo) -> bool {
    served.sha256 == want.sha256
}

/// One look at `member`: `Ok` when it presents and accepts the new certificates.
pub(super) async fn check(ctx: &Ctx, member: &Member) -> std::result::Result<(), String> {
    let load = |e: Error| e.to_string();
    let (server, peer) =
        (ctx.file_cert(SERVER_CERT).map_err(load)?, ctx.file_cert(PEER_CERT).map_err(load)?);
    let client = pair(ctx, CLIENT_CERT, CLIENT_KEY).map_err(load)?;
    let served = probe::probe(&member.client, Some(client), Some("/health")).await?;
    if !is(&served.cert, &server) {
        return Err(format!(
            "{} presents certificate serial {}, not the new {SERVER_CERT}",
            member.client, served.cert.serial
        ));
    }
    let health = served.response.unwrap_or_default();
    if !health.contains("\"health\":\"true\"") {
        let status = health.lines().next().unwrap_or("no answer").to_string();
        return Err(format!("{}/health to the new client certificate: {status}", member.client));
    }
    let peer_client = pair(ctx, PEER_CERT, PEER_KEY).map_err(load)?;
    let served = probe::probe(&member.peer, Some(peer_client), None).await?;
    if !is(&served.cert, &peer) {
        return Err(format!(
            "{} presents certificate serial {}, not the new {PEER_CERT}",
            member.peer, served.cert.serial
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(list: &[&str]) -> Vec<String> {
        list.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn members_come_from_etcd_servers_or_the_endpoints_given() {
        let servers = "https://c-etcd0.example:2379,https://c-etcd1.example:2379";
        let found = members(servers, &[], &[]).unwrap();
        assert_eq!(
            found,
            [
                Member {
                    client: "https://c-etcd0.example:2379".into(),
                    peer: "https://c-etcd0.example:2380".into()
                },
                Member {
                    client: "https://c-etcd1.example:2379".into(),
                    peer: "https://c-etcd1.example:2380".into()
                },
            ]
        );
        let given = members(
            "https://c-etcd0.example:2379",
            &s(&["https://127.0.0.1:41234"]),
            &s(&["https://127.0.0.1:41235"]),
        )
        .unwrap();
        assert_eq!(given[0].peer, "https://127.0.0.1:41235");
        for (clients, peers, want) in [
            (s(&["https://a:1", "https://b:1"]), vec![], "--etcd-peer-endpoint"),
            (
                s(&["https://a:1", "https://b:1", "https://c:1"]),
                s(&["https://a:2"; 3]),
                "3 --etcd-endpoint given for the 2 members",
            ),
            (vec![], s(&["https://a:2"]), "needs --etcd-endpoint"),
            (
                s(&["http://a:1", "https://b:1"]),
                s(&["https://a:2", "https://b:2"]),
                "not an https URL",
            ),
        ] {
            let err = members(servers, &clients, &peers).unwrap_err();
            assert!(err.contains(want), "{want:?} not in {err}");
        }
        assert!(members("", &[], &[]).unwrap_err().contains("no etcdServers"));
    }
}
