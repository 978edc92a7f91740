//! `kubectl certrotate status`: where every certificate stands, in the asset dir and in the
//! cluster, for one cluster or a fleet.
//!
//! `report` is the model (table, JSON and metrics), `local` the checks of the asset dir's
//! files, `cluster` the comparison with what the cluster holds, `rotations` the rotation runs
//! from the journals, `fix` what to run for each problem, `render` the table, `metrics` the
//! Prometheus exposition; this module runs them for each asset dir of the command line.

pub mod cluster;
mod fix;
pub mod local;
mod metrics;
mod render;
pub mod report;
mod rotations;

use std::io::Write as _;
use std::path::{Path, PathBuf};

use futures::StreamExt;

use crate::assets::{AssetDir, resolve_asset_dirs};
use crate::cli::{GlobalOpts, OutputFormat, StatusArgs};
use crate::error::{Error, Result, exit};
use crate::k8s::Connection;
use crate::output::{self, JSON_API_VERSION};
use crate::pki;

use cluster::cluster_section;
use local::local_rows;
use report::{ClusterReport, ClusterSection, StatusDocument, report_exit_code, summarize};

/// Runs `status` and returns the exit code.
pub async fn run(global: &GlobalOpts, args: &StatusArgs) -> Result<u8> {
    let dirs = resolve_asset_dirs(&global.assets_dirs)?;
    let fleet = dirs.len() > 1;
    if fleet && global.kube.kubeconfig.is_some() {
        return Err(Error::Usage(
            "--kubeconfig names one cluster, but several asset dirs were given: with a fleet, \
             each asset dir uses its own cluster-assets/auth/kubeconfig"
                .into(),
        ));
    }
    if !fleet {
        // A single asset dir that is missing or wrong is an error for the whole command.
        AssetDir::open(&dirs[0])?;
    }
    let now = jiff::Timestamp::now().as_second();
    let window = i64::try_from(args.expiring_within.as_secs()).unwrap_or(i64::MAX);

    let mut reports = local_reports(&dirs, now, window);
    if !args.local {
        add_cluster_sections(&mut reports, &dirs, global, fleet, now, window).await;
    }
    for report in &mut reports {
        report.exit_code = report_exit_code(report);
        fix::add_fixes(report);
    }
    let summary = summarize(&reports);
    let mut document = StatusDocument {
        api_version: JSON_API_VERSION,
        kind: "CertificateStatus",
        generated_at: pki::rfc3339(now),
        expiring_within_seconds: args.expiring_within.as_secs(),
        reports,
        summary,
        next: None,
    };
    document.next = fix::fleet_next(&document);
    let wanted = global.output == OutputFormat::Prometheus || args.textfile.is_some();
    let exposition = if wanted { metrics::exposition(&document, now) } else { String::new() };
    if let Some(path) = &args.textfile {
        metrics::write_textfile(path, &exposition)?;
    }
    // Buffered: stdout alone writes each line with its own system call (5,300 for the JSON of
    // 20 asset dirs).
    let mut out = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
    let written = match global.output {
        OutputFormat::Json => output::write_json(&mut out, &document),
        OutputFormat::Prometheus => out.write_all(exposition.as_bytes()).map_err(Error::Output),
        OutputFormat::Table => {
            render::render_table(&mut out, &document, fleet).map_err(Error::Output)
        }
    };
    output::ignore_broken_pipe(written.and_then(|()| out.flush().map_err(Error::Output)))?;
    Ok(document.summary.exit_code)
}

/// Local rows for every asset dir, spread over the machine's cores: the work is CPU-bound
/// parsing and each dir is independent.
fn local_reports(dirs: &[PathBuf], now: i64, window: i64) -> Vec<ClusterReport> {
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).min(dirs.len());
    if workers <= 1 {
        return dirs.iter().map(|d| local_report(d, now, window)).collect();
    }
    let chunk = dirs.len().div_ceil(workers);
    std::thread::scope(|scope| {
        let handles: Vec<_> = dirs
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter().map(|d| local_report(d, now, window)).collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().expect("status worker panicked")).collect()
    })
}

fn local_report(dir: &Path, now: i64, window: i64) -> ClusterReport {
    match AssetDir::open(dir) {
        Ok(assets) => ClusterReport {
            assets_dir: assets.root().display().to_string(),
            error: None,
            aggregation_enabled: assets.aggregation_enabled(),
            certificates: local_rows(&assets, now, window),
            cluster: None,
            rotations: rotations::rotation_rows(&assets),
            next: None,
            exit_code: exit::OK,
        },
        Err(err) => ClusterReport {
            assets_dir: dir.display().to_string(),
            error: Some(err.to_string()),
            aggregation_enabled: false,
            certificates: Vec::new(),
            cluster: None,
            rotations: Vec::new(),
            next: None,
            exit_code: exit::ERROR,
        },
    }
}

/// The report `status` makes of one asset dir, read through a connection already verified to
/// be its cluster: `renew`'s `verify` holds the cluster to it.
pub async fn assess(assets: &AssetDir, conn: &Connection, now: i64, window: i64) -> ClusterReport {
    let mut report = local_report(assets.root(), now, window);
    if report.error.is_none() {
        let mut section = ClusterSection {
            server: Some(conn.server.clone()),
            kubeconfig: Some(conn.kubeconfig_description()),
            ..Default::default()
        };
        cluster::read_cluster_rows(&mut section, conn, &report, now, window).await;
        report.cluster = Some(section);
    }
    report.exit_code = report_exit_code(&report);
    fix::add_fixes(&mut report);
    report
}

async fn add_cluster_sections(
    reports: &mut [ClusterReport],
    dirs: &[PathBuf],
    global: &GlobalOpts,
    fleet: bool,
    now: i64,
    window: i64,
) {
    // Independent clusters are probed concurrently; a slow one does not hold up the others.
    let sections: Vec<(usize, ClusterSection)> =
        futures::stream::iter(reports.iter().enumerate().filter(|(_, r)| r.error.is_none()))
            .map(|(i, report)| {
                let dir = &dirs[i];
                async move {
                    let section = cluster_section(dir, report, global, fleet, now, window).await;
                    (i, section)
                }
            })
            .buffer_unordered(8)
            .collect()
            .await;
    for (i, section) in sections {
        reports[i].cluster = Some(section);
    }
}
