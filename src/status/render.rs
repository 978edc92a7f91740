//! The status table, for people; the JSON document is the report model serialised.

use std::io::Write;

use crate::duration::short_residual;
use crate::output::Table;
use crate::pki;

use super::report::{CertFacts, Check, ClusterReport, ClusterSection, RotationRow, StatusDocument};
use crate::rotation::journal::RunState;

pub(super) fn render_table(
    out: &mut impl Write,
    doc: &StatusDocument,
    fleet: bool,
) -> std::io::Result<()> {
    for (i, report) in doc.reports.iter().enumerate() {
        if i > 0 {
            writeln!(out)?;
        }
        if fleet || report.error.is_some() {
            writeln!(out, "== {} ==", report.assets_dir)?;
        }
        if let Some(error) = &report.error {
            writeln!(out, "error: {error}")?;
            continue;
        }
        render_local(out, report)?;
        if let Some(cluster) = &report.cluster {
            writeln!(out)?;
            render_cluster(out, cluster)?;
        }
        render_rotations(out, &report.rotations)?;
    }
    if fleet {
        let s = &doc.summary;
        writeln!(out)?;
        writeln!(
            out,
            "SUMMARY: {} clusters, {} errors; certificates: {} ok, {} expiring, {} expired, \
             {} not yet valid, {} missing, {} invalid",
            s.clusters,
            s.errors,
            s.ok,
            s.expiring,
            s.expired,
            s.not_yet_valid,
            s.missing,
            s.invalid
        )?;
    }
    writeln!(out)?;
    match (&doc.next, doc.summary.errors) {
        (Some(next), _) => writeln!(out, "next: {next}"),
        (None, 0) => writeln!(out, "next: nothing to do, every certificate is OK"),
        (None, _) => writeln!(out, "next: make the asset dirs above checkable (see their errors)"),
    }
}

fn render_local(out: &mut impl Write, report: &ClusterReport) -> std::io::Result<()> {
    let mut table = Table::new(&[
        "NAME", "FILE", "SUBJECT", "CA", "EXPIRES", "RESIDUAL", "STATUS", "CHAIN", "KEY",
    ]);
    for row in &report.certificates {
        let no_expiry = row.chain == Check::NotApplicable && row.ca.is_none();
        let (subject, expires, residual) = cert_columns(row.cert.as_ref(), no_expiry);
        let ca = match (row.ca, &row.cert) {
            (Some(ca), _) => ca,
            (None, Some(_)) => "<self>",
            (None, None) => "-",
        };
        table.row(vec![
            row.name.to_string(),
            row.file.trim_start_matches("cluster-assets/").to_string(),
            subject,
            ca.to_string(),
            expires,
            residual,
            row.status.label().to_string(),
            row.chain.label().to_string(),
            row.key.label().to_string(),
        ]);
    }
    table.write(out)?;
    if !report.aggregation_enabled {
        writeln!(out, "aggregation: not enabled (no tls/aggregation-* files)")?;
    }
    for row in &report.certificates {
        for problem in &row.problems {
            writeln!(out, "{}: {problem}", row.name)?;
        }
        if let Some(fix) = &row.fix {
            writeln!(out, "{}: fix: {fix}", row.name)?;
        }
    }
    Ok(())
}

fn render_rotations(out: &mut impl Write, rotations: &[RotationRow]) -> std::io::Result<()> {
    if !rotations.is_empty() {
        writeln!(out)?;
    }
    for r in rotations {
        let when = |at: &Option<String>| at.clone().unwrap_or_else(|| "?".into());
        let done = if r.phases_done.is_empty() { "none".into() } else { r.phases_done.join(", ") };
        match (&r.error, r.state) {
            (Some(error), _) => writeln!(out, "rotation {}: run {}: {error}", r.rotation, r.run)?,
            (None, Some(RunState::InProgress)) => writeln!(
                out,
                "rotation {}: run {} IN PROGRESS since {} (phases done: {done})",
                r.rotation,
                r.run,
                when(&r.started_at)
            )?,
            (None, _) => writeln!(
                out,
                "rotation {}: run {} finished {}",
                r.rotation,
                r.run,
                when(&r.finished_at)
            )?,
        }
    }
    Ok(())
}

/// Subject, expiry date and residual time columns.
fn cert_columns(cert: Option<&CertFacts>, no_expiry: bool) -> (String, String, String) {
    match cert {
        Some(c) => (
            c.subject.clone(),
            pki::human_date(c.not_after_unix),
            short_residual(c.residual_seconds),
        ),
        None if no_expiry => ("-".into(), "never".into(), "-".into()),
        None => ("-".into(), "-".into(), "-".into()),
    }
}

fn render_cluster(out: &mut impl Write, cluster: &ClusterSection) -> std::io::Result<()> {
    let target = match (&cluster.server, &cluster.kubeconfig) {
        (Some(server), Some(kubeconfig)) => format!(" {server} ({kubeconfig})"),
        _ => String::new(),
    };
    if !cluster.reached {
        let reason = cluster.error.as_deref().unwrap_or("unknown reason");
        writeln!(out, "cluster:{target} not reached: {reason}")?;
        writeln!(out, "cluster: only the asset dir was checked")?;
        return Ok(());
    }
    writeln!(out, "cluster:{target}")?;
    let mut table =
        Table::new(&["OBJECT", "KEY", "SUBJECT", "EXPIRES", "RESIDUAL", "STATUS", "ASSET DIR"]);
    for row in &cluster.certificates {
        let (subject, expires, residual) = cert_columns(row.cert.as_ref(), false);
        let key = if row.index > 0 || row.key.ends_with("ca-file") || row.key.ends_with("ca.crt") {
            format!("{}[{}]", row.key, row.index)
        } else {
            row.key.clone()
        };
        let current = match row.current {
            Some(true) => format!("current {}", row.compared_with),
            Some(false) => format!("not current {}", row.compared_with),
            None => "?".into(),
        };
        table.row(vec![
            row.object.clone(),
            key,
            subject,
            expires,
            residual,
            row.status.label().to_string(),
            current,
        ]);
    }
    table.write(out)?;
    for row in &cluster.certificates {
        for problem in &row.problems {
            writeln!(out, "{} {}[{}]: {problem}", row.object, row.key, row.index)?;
        }
        if let Some(fix) = &row.fix {
            writeln!(out, "{} {}[{}]: fix: {fix}", row.object, row.key, row.index)?;
        }
    }
    if cluster.api_services.is_empty() {
        writeln!(out, "apiservices: none backed by a service")?;
        return Ok(());
    }
    writeln!(out)?;
    let mut table = Table::new(&["APISERVICE", "SERVICE", "AVAILABLE", "REASON"]);
    for svc in &cluster.api_services {
        table.row(vec![
            svc.name.clone(),
            svc.service.clone(),
            svc.available.clone(),
            svc.reason.clone().unwrap_or_default(),
        ]);
    }
    table.write(out)
}
