//! What to run: for every row that is not OK the command that makes it OK, and for each asset
//! dir (and for the fleet) the one command to run next.

use std::path::Path;

use crate::aggregation::Aggregation;
use crate::assets;
use crate::k8s;
use crate::pki;
use crate::rotation::engine::Procedure as _;

use super::report::{
    CertFacts, Check, ClusterCertRow, ClusterReport, LocalRow, RotationRow, StatusDocument,
    Validity,
};
use super::rotations::rotation_of;
use crate::rotation::journal::RunState;

/// What an operator can do for a certificate no rotation command covers (none today: kept for
/// a credential the model gains before its command).
const RENEW_TODAY: &str = "lokoctl cluster certificate rotate, in the cluster's config dir \
    (Lokomotive v0.8 and later: re-issues every certificate, CA keys kept)";

/// Fixes that finish what a rotation started; they come before anything else.
const RESUME: &str = "resume the rotation in progress: ";

/// How to name the asset dir in the commands: `--assets-dir DIR` unless it is the current
/// folder, so that each command can be pasted as it is.
struct Target<'a> {
    dir: &'a str,
    flag: String,
    rotations: &'a [RotationRow],
}

impl<'a> Target<'a> {
    fn of(report: &'a ClusterReport) -> Self {
        let dir = report.assets_dir.as_str();
        let here = std::path::absolute(".").is_ok_and(|cwd| cwd == Path::new(dir));
        let flag = if here { String::new() } else { format!(" --assets-dir {}", shell_word(dir)) };
        Self { dir, flag, rotations: &report.rotations }
    }

    fn command(&self, rotation: &str, extra: &str) -> String {
        format!("kubectl certrotate {rotation}{extra}{}", self.flag)
    }

    /// The in-progress run of the rotation that replaces `credential`, as a command.
    fn resume(&self, credential: &str) -> Option<String> {
        let rotation = rotation_of(credential)?;
        self.in_progress().find(|r| r.rotation == rotation).map(|run| self.resume_run(run))
    }

    fn in_progress(&self) -> impl Iterator<Item = &'a RotationRow> + use<'a> {
        self.rotations.iter().filter(|r| r.state == Some(RunState::InProgress))
    }

    fn resume_run(&self, run: &RotationRow) -> String {
        let done = match run.phases_done.last() {
            Some(phase) => format!("done up to phase {phase}"),
            None => "no phase done yet".into(),
        };
        format!("{RESUME}{} (run {}, {done})", self.command(run.rotation, ""), run.run)
    }

    /// The command that replaces `credential` with a new certificate.
    fn replace(&self, credential: &str) -> String {
        rotation_of(credential)
            .map(|rotation| self.command(rotation, ""))
            .unwrap_or_else(|| RENEW_TODAY.into())
    }

    fn terraform(&self, commands: &str) -> String {
        format!(
            "in {}/terraform: {commands} (MODULE: the module.*.module.bootkube that `terraform \
             state list` shows)",
            shell_word(self.dir)
        )
    }
}

/// Sets `fix` on every row that is not OK and the report's `next`.
pub fn add_fixes(report: &mut ClusterReport) {
    if report.error.is_some() {
        return;
    }
    let target = Target::of(report);
    let local: Vec<Option<String>> =
        report.certificates.iter().map(|row| local_fix(row, &target)).collect();
    let status_of = |name: &str| report.certificates.iter().find(|r| r.name == name);
    let cluster: Vec<Option<String>> = report
        .cluster
        .iter()
        .flat_map(|c| &c.certificates)
        .map(|row| cluster_fix(row, status_of(row.compared_with).map(|r| r.status), &target))
        .collect();
    for (row, fix) in report.certificates.iter_mut().zip(local) {
        row.fix = fix;
    }
    for (row, fix) in report.cluster.iter_mut().flat_map(|c| &mut c.certificates).zip(cluster) {
        row.fix = fix;
    }
    report.next = most_urgent(candidates(report));
}

/// The one next command over the fleet.
pub fn fleet_next(doc: &StatusDocument) -> Option<String> {
    most_urgent(doc.reports.iter().flat_map(candidates))
}

/// How urgent a fix is: finishing a rotation in progress first, then by the row's status,
/// worst first (INVALID, MISSING, EXPIRED, NOT-YET-VALID, EXPIRING).
type Urgency = (bool, Validity);

/// Every fix of a report with its urgency, in report order: its rows (asset dir, then cluster),
/// then its rotations in progress, which need finishing even when every row is OK.
fn candidates(report: &ClusterReport) -> Vec<(Urgency, String)> {
    let local = report.certificates.iter().map(|r| (r.status, &r.fix));
    let cluster = report.cluster.iter().flat_map(|c| &c.certificates).map(|r| (r.status, &r.fix));
    let rows = local.chain(cluster).filter_map(|(status, fix)| {
        fix.as_ref().map(|f| ((f.starts_with(RESUME), status), f.clone()))
    });
    let target = Target::of(report);
    let runs = target.in_progress().map(|run| ((true, Validity::Ok), target.resume_run(run)));
    rows.chain(runs).collect()
}

/// The first of the most urgent.
fn most_urgent(candidates: impl IntoIterator<Item = (Urgency, String)>) -> Option<String> {
    let mut best: Option<(Urgency, String)> = None;
    for (urgency, fix) in candidates {
        if best.as_ref().is_none_or(|(b, _)| urgency > *b) {
            best = Some((urgency, fix));
        }
    }
    best.map(|(_, fix)| fix)
}

fn local_fix(row: &LocalRow, target: &Target) -> Option<String> {
    if row.status == Validity::Ok {
        return None;
    }
    target.resume(row.name).or_else(|| local_repair(row, target))
}

fn local_repair(row: &LocalRow, target: &Target) -> Option<String> {
    let credential = assets::credential(row.name)?;
    Some(match row.status {
        Validity::Ok => return None,
        Validity::Expiring | Validity::Expired => target.replace(row.name),
        Validity::NotYetValid => clock(row.cert.as_ref()),
        Validity::Missing | Validity::Invalid => {
            let files = targets(credential.terraform.files);
            let signed_by_another = row.chain == Check::Fail && credential.issuer.is_some();
            // renew re-issues everything: a lone certificate of another CA is re-issued alone.
            let rotation = rotation_of(row.name).filter(|r| *r != crate::renew::Renew::NAME);
            match (credential.terraform.cert, rotation) {
                // Its CA changed under it: the rotation command re-issues it in the order that
                // keeps the cluster trusting it (a bare re-issue would not).
                (Some(_), Some(rotation)) if signed_by_another => target.command(rotation, ""),
                (Some(cert), None) if signed_by_another => target.terraform(&format!(
                    "terraform taint MODULE.{cert} && terraform apply {files} (re-issues it from \
                     its CA)"
                )),
                _ => target.terraform(&format!(
                    "terraform apply {files} (writes the files again from the Terraform state)"
                )),
            }
        }
    })
}

fn cluster_fix(row: &ClusterCertRow, local: Option<Validity>, target: &Target) -> Option<String> {
    if row.status == Validity::Ok {
        return None;
    }
    target.resume(row.compared_with).or_else(|| cluster_repair(row, local, target))
}

fn cluster_repair(
    row: &ClusterCertRow,
    local: Option<Validity>,
    target: &Target,
) -> Option<String> {
    let newer_in_assets = row.current == Some(false) && local == Some(Validity::Ok);
    Some(match row.status {
        Validity::Ok => return None,
        // An old CA the cluster still trusts next to the new one, as a rotation leaves it.
        Validity::Expiring | Validity::Expired
            if newer_in_assets && row.compared_with == "aggregation-ca" =>
        {
            format!(
                "drop the old CA from the trust bundle: {}",
                target.command(Aggregation::NAME, " --phase cleanup")
            )
        }
        Validity::Expiring | Validity::Expired if newer_in_assets => {
            "deploy the asset dir's newer certificate: lokoctl cluster apply --confirm, in the \
             cluster's config dir"
                .into()
        }
        Validity::Expiring | Validity::Expired => target.replace(row.compared_with),
        Validity::NotYetValid => clock(row.cert.as_ref()),
        Validity::Missing | Validity::Invalid if row.object == k8s::AUTH_CONFIGMAP => {
            "restart kube-apiserver, which writes it when it starts: kubectl -n kube-system \
             rollout restart daemonset/kube-apiserver (deployment/kube-apiserver when the chart \
             runs one replica)"
                .into()
        }
        Validity::Missing | Validity::Invalid => {
            "install the control-plane charts again: lokoctl cluster apply --confirm, in the \
             cluster's config dir"
                .into()
        }
    })
}

fn clock(cert: Option<&CertFacts>) -> String {
    let from = cert.map(|c| pki::human_date(c.not_before_unix)).unwrap_or_else(|| "later".into());
    format!(
        "check the clocks of this machine and of the one that ran terraform (`date -u`): the \
         certificate becomes valid on {from}"
    )
}

/// `-target=MODULE.local_file.a -target=MODULE.local_file.b`
fn targets(files: &[&str]) -> String {
    files.iter().map(|f| format!("-target='MODULE.{f}'")).collect::<Vec<_>>().join(" ")
}

/// `path` as one shell word: as it is when it is plain, else single-quoted.
fn shell_word(path: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "/._-+=:,@%".contains(c);
    if !path.is_empty() && path.chars().all(plain) {
        path.to_string()
    } else {
        format!("'{}'", path.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_become_one_shell_word() {
        assert_eq!(shell_word("/srv/l8e-mat/assets"), "/srv/l8e-mat/assets");
        assert_eq!(shell_word("/srv/my cluster/assets"), "'/srv/my cluster/assets'");
        assert_eq!(shell_word("/srv/it's/assets"), r"'/srv/it'\''s/assets'");
    }

    #[test]
    fn targets_name_every_file_of_the_credential() {
        let apiserver = assets::credential("apiserver").unwrap();
        assert_eq!(
            targets(apiserver.terraform.files),
            "-target='MODULE.local_file.apiserver-key' -target='MODULE.local_file.apiserver-crt'"
        );
    }
}
