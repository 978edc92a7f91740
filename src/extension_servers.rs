//! `kubectl certrotate extension-servers`: the extension API servers that must be restarted
//! after the aggregation CA changes, restarting them all at once, and checking which CA they
//! loaded.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use futures::future::join_all;
use serde::Serialize;

use crate::assets::{AssetDir, single_asset_dir};
use crate::cli::{ExtensionServersArgs, GlobalOpts, OutputFormat};
use crate::error::{Error, Result, exit};
use crate::k8s::Connection;
use crate::k8s::discovery::{self, Discovery, ExtensionServer};
use crate::k8s::rollout::{FIELD_MANAGER, RESTARTED_AT, WorkloadRef};
use crate::output::{self, Progress, Table};
use crate::pki;

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Report {
    api_version: &'static str,
    kind: &'static str,
    cluster: ClusterRead,
    servers: Vec<ExtensionServer>,
    #[serde(skip_serializing_if = "Option::is_none")]
    restarts: Option<Vec<RestartResult>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    available_after_restart: Option<BTreeMap<String, String>>,
    /// Why `available_after_restart` may not be current (the APIService watch was refused, or
    /// kept failing).
    #[serde(skip_serializing_if = "Option::is_none")]
    availability_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ca_checks: Option<Vec<CaCheck>>,
}

/// The cluster the report describes. Listing and `--check-ca` read whatever cluster the
/// kubeconfig names, so the report says which one, and whether it is the asset dir's.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ClusterRead {
    server: String,
    /// The kubeconfig file and how it was chosen.
    kubeconfig: String,
    /// The asset dir it was compared with (null when there is none).
    assets_dir: Option<String>,
    /// Whether it is that asset dir's cluster (its kubeconfig trusts the asset dir's
    /// `tls/ca.crt`); null when there is no asset dir to compare with.
    assets_dir_cluster: Option<bool>,
    /// Why it is not, or could not be compared.
    reason: Option<String>,
}

impl ClusterRead {
    fn new(conn: &Connection, assets: &Result<AssetDir>) -> Self {
        let (assets_dir, assets_dir_cluster, reason) = match assets {
            Ok(assets) => {
                let verified = conn.verify_identity(assets);
                (Some(assets.root().display().to_string()), Some(verified.is_ok()), verified.err())
            }
            Err(err) => (None, None, Some(err.to_string())),
        };
        Self {
            server: conn.server.clone(),
            kubeconfig: conn.kubeconfig_description(),
            assets_dir,
            assets_dir_cluster,
            reason,
        }
    }

    /// The table's first line.
    fn header(&self) -> String {
        let read = format!("cluster: {} ({})", self.server, self.kubeconfig);
        let reason = self.reason.as_deref().unwrap_or_default();
        match (self.assets_dir_cluster, &self.assets_dir) {
            (Some(true), Some(dir)) => format!("{read}: the cluster of asset dir {dir}"),
            (Some(false), _) => format!("{read}: NOT the asset dir's cluster: {reason}"),
            _ => format!("{read}: no asset dir to compare it with ({reason})"),
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct RestartResult {
    workload: WorkloadRef,
    ok: bool,
    message: String,
    seconds: f64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct CaCheck {
    api_service: String,
    pod: String,
    namespace: String,
    ca: String,
    loaded: bool,
    error: Option<String>,
}

pub async fn run(global: &GlobalOpts, args: &ExtensionServersArgs) -> Result<u8> {
    let dir = &single_asset_dir(&global.assets_dirs, "extension-servers")?;
    // Listing works with any kubeconfig; changing the cluster needs the asset dir to prove
    // it is the right cluster.
    let assets = AssetDir::open(dir);
    let conn = Connection::open(&global.kube, assets.as_ref().ok(), false, global.verbose).await?;
    let check_ca = match &args.check_ca {
        Some(path) => Some(read_ca_file(path)?),
        None => None,
    };
    let cluster = ClusterRead::new(&conn, &assets);
    if args.restart {
        assets?;
        if cluster.assets_dir_cluster == Some(false) {
            return Err(Error::WrongCluster(cluster.reason.clone().unwrap_or_default()));
        }
    }
    let discovery = discovery::discover(&conn.client).await?;
    let mut report = Report {
        api_version: output::JSON_API_VERSION,
        kind: "ExtensionServers",
        cluster,
        servers: discovery.servers.clone(),
        restarts: None,
        available_after_restart: None,
        availability_error: None,
        ca_checks: None,
    };
    let mut code = exit::OK;
    if args.restart {
        let workloads = discovery.workloads();
        if global.dry_run {
            print_plan(&discovery, &workloads);
            return Ok(exit::OK);
        }
        output::confirm(
            global.yes,
            &format!("restart {} workload(s) on {}?", workloads.len(), conn.server),
        )?;
        let (results, available) =
            restart_and_wait_available(&conn, &discovery, None, global.timeout.duration).await;
        if results.iter().any(|r| !r.ok) || report.servers.iter().any(|s| !s.problems.is_empty()) {
            code = exit::ERROR;
        }
        if available.problem.is_some() || available.status.values().any(|s| s != "True") {
            code = exit::ERROR;
        }
        report.restarts = Some(results);
        report.available_after_restart = Some(available.status);
        report.availability_error = available.problem;
    }
    if let Some(cas) = &check_ca {
        let checks = check_loaded_ca(&conn, &discovery, cas).await;
        if checks.iter().any(|c| !c.loaded) {
            code = exit::ERROR;
        }
        report.ca_checks = Some(checks);
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let written = match global.output {
        OutputFormat::Json => output::write_json(&mut out, &report),
        // Cli::check refuses -o prometheus for every command but status.
        OutputFormat::Table | OutputFormat::Prometheus => {
            render(&mut out, &report).map_err(Error::Output)
        }
    };
    output::ignore_broken_pipe(written)?;
    Ok(code)
}

fn read_ca_file(path: &Path) -> Result<Vec<pki::CertInfo>> {
    let pem = std::fs::read(path)
        .map_err(|e| Error::Unreadable { path: path.to_path_buf(), source: e })?;
    pki::parse_certs(&pem)
        .map_err(|p| Error::BadInputFile { path: path.to_path_buf(), reason: p.0 })
}

fn print_plan(discovery: &Discovery, workloads: &BTreeSet<WorkloadRef>) {
    println!("plan (dry run, nothing is changed):");
    for (i, w) in workloads.iter().enumerate() {
        println!(
            "{}. PATCH {}/{} in {} (strategic merge, field manager {FIELD_MANAGER}): set pod \
             template annotation {RESTARTED_AT} to the current time",
            i + 1,
            w.kind.resource(),
            w.name,
            w.namespace
        );
    }
    println!(
        "{}. WATCH each of them until `kubectl rollout status` would report it rolled out",
        workloads.len() + 1
    );
    let names: Vec<String> = discovery.restarted_api_services().into_iter().collect();
    println!(
        "{}. WATCH apiservices until Available=True: {}",
        workloads.len() + 2,
        names.join(", ")
    );
    for server in &discovery.servers {
        for problem in &server.problems {
            println!("note: {}: {problem}", server.api_service);
        }
    }
}

/// Restarts every workload behind an APIService, all at once, then waits (within `timeout`)
/// for those APIServices to be Available again; the availability watch starts before the
/// restarts, so no change in between is missed.
async fn restart_and_wait_available(
    conn: &Connection,
    discovery: &Discovery,
    ours_since: Option<jiff::Timestamp>,
    timeout: Duration,
) -> (Vec<RestartResult>, discovery::Available) {
    let workloads = discovery.workloads();
    let availability = discovery::Availability::new(discovery);
    let follow = availability.follow(&conn.client, &discovery.api_services_version);
    futures::pin_mut!(follow);
    tokio::select! {
        done = async {
            let results = restart_all(conn, discovery, &workloads, ours_since, timeout).await;
            (results, availability.until_available(timeout).await)
        } => done,
        never = &mut follow => match never {},
    }
}

/// What a rotation's restart of the extension API servers ended with.
#[derive(Debug)]
pub struct ServersRestarted {
    pub restarted: usize,
    /// Problems: failed restarts, APIServices not tied to a workload or not Available.
    pub problems: Vec<String>,
    /// Per pod and CA: `loaded`, `NOT loaded` or `unknown (…)`.
    pub loaded_ca: Vec<String>,
}

/// Restarts every extension API server (as `--restart`; one restarted at or after
/// `ours_since`, by the rotation's phase before it was cut off, is waited for, not restarted
/// again) and reads, per pod, whether it loaded `new_ca` (reported, not required: servers
/// below `-v=2` do not log it).
pub async fn restart_for_rotation(
    conn: &Connection,
    ours_since: Option<jiff::Timestamp>,
    timeout: Duration,
    new_ca: &pki::CertInfo,
) -> Result<ServersRestarted> {
    let found = discovery::discover(&conn.client).await?;
    let (results, available) = restart_and_wait_available(conn, &found, ours_since, timeout).await;
    let mut problems: Vec<String> = results
        .iter()
        .filter(|r| !r.ok)
        .map(|r| format!("{}: {}", r.workload, r.message))
        .collect();
    for server in &found.servers {
        problems.extend(server.problems.iter().map(|p| format!("{}: {p}", server.api_service)));
    }
    problems.extend(
        available
            .status
            .iter()
            .filter(|(_, status)| *status != "True")
            .map(|(name, status)| format!("apiservice {name} is Available={status}")),
    );
    problems.extend(available.problem);
    if problems.is_empty()
        && let Err(why) =
            discovery::probe_until(&conn.client, &found.restarted_api_services(), timeout).await
    {
        problems.push(why);
    }
    // The pods now serving, not the ones the restart replaced.
    let serving = discovery::discover(&conn.client).await?;
    let checks = check_loaded_ca(conn, &serving, std::slice::from_ref(new_ca)).await;
    let loaded_ca = checks
        .iter()
        .map(|c| {
            let state = match (&c.error, c.loaded) {
                (_, true) => "loaded".to_string(),
                (Some(err), false) => format!("unknown ({err})"),
                (None, false) => "NOT loaded".to_string(),
            };
            format!("{}/{}: new CA {state}", c.namespace, c.pod)
        })
        .collect();
    Ok(ServersRestarted { restarted: results.len(), problems, loaded_ca })
}

async fn restart_all(
    conn: &Connection,
    discovery: &Discovery,
    workloads: &BTreeSet<WorkloadRef>,
    ours_since: Option<jiff::Timestamp>,
    timeout: Duration,
) -> Vec<RestartResult> {
    let progress = Progress::new(workloads.iter().map(|w| w.to_string()).collect());
    // Independent workloads restart concurrently; each failure is reported, none stops the rest.
    let runs = workloads.iter().enumerate().map(|(i, workload)| {
        let progress = &progress;
        async move {
            let started = Instant::now();
            let report = |message: &str| progress.update(i, message);
            let result = discovery
                .restart_and_wait(&conn.client, workload, ours_since, timeout, &report)
                .await;
            let (ok, message) = match result {
                Ok(()) => (true, "rolled out".to_string()),
                Err(err) => (false, err.to_string()),
            };
            progress.finish(i, ok, &message);
            RestartResult {
                workload: workload.clone(),
                ok,
                message,
                seconds: started.elapsed().as_secs_f64(),
            }
        }
    });
    join_all(runs).await
}

/// One "loaded client CA" line of an extension API server's log: the CA's CN and validity.
#[derive(Debug, PartialEq, Eq)]
struct LoadedCa {
    cn: String,
    not_before: String,
    not_after: String,
}

/// Parses klog's `loaded client CA [i/"…"]: "CN" […] issuer="…" (FROM to TO (now=…))`.
fn parse_loaded_ca(line: &str) -> Option<LoadedCa> {
    let rest = &line[line.find("loaded client CA [")?..];
    let rest = &rest[rest.find("]: \"")? + 4..];
    let cn = &rest[..rest.find('"')?];
    let dates = &rest[rest.find(" (")? + 2..];
    let (not_before, tail) = dates.split_once(" to ")?;
    let not_after = &tail[..tail.find(" (now=")?];
    Some(LoadedCa { cn: cn.into(), not_before: not_before.into(), not_after: not_after.into() })
}

/// How klog prints a certificate for comparison: Go's `time.Time.String()` in UTC.
fn loaded_form(cert: &pki::CertInfo) -> LoadedCa {
    let date = |unix: i64| {
        jiff::Timestamp::from_second(unix)
            .map(|t| t.strftime("%Y-%m-%d %H:%M:%S +0000 UTC").to_string())
            .unwrap_or_default()
    };
    let cn = cert
        .x509
        .subject_name()
        .entries_by_nid(openssl::nid::Nid::COMMONNAME)
        .next()
        .and_then(|e| e.data().to_string().ok())
        .unwrap_or_default();
    LoadedCa { cn, not_before: date(cert.not_before), not_after: date(cert.not_after) }
}

async fn check_loaded_ca(
    conn: &Connection,
    discovery: &Discovery,
    cas: &[pki::CertInfo],
) -> Vec<CaCheck> {
    let wanted: Vec<LoadedCa> = cas.iter().map(loaded_form).collect();
    let wanted = &wanted;
    let pods = discovery.servers.iter().flat_map(|s| s.pods.iter().map(move |p| (s, p)));
    let checks = pods.map(|(server, pod)| async move {
        let mut logs = String::new();
        let mut error = None;
        for container in &pod.containers {
            match discovery::pod_logs(&conn.client, &pod.namespace, &pod.name, container).await {
                Ok(text) => logs.push_str(&text),
                Err(err) => error = Some(err.to_string()),
            }
        }
        let loaded: Vec<LoadedCa> = logs.lines().filter_map(parse_loaded_ca).collect();
        cas.iter()
            .zip(wanted)
            .map(|(ca, want)| CaCheck {
                api_service: server.api_service.clone(),
                pod: pod.name.clone(),
                namespace: pod.namespace.clone(),
                ca: format!("{} (until {})", ca.subject, pki::human_date(ca.not_after)),
                loaded: loaded.contains(want),
                error: error.clone(),
            })
            .collect::<Vec<_>>()
    });
    join_all(checks).await.into_iter().flatten().collect()
}

fn render(out: &mut impl Write, report: &Report) -> std::io::Result<()> {
    writeln!(out, "{}", report.cluster.header())?;
    if report.servers.is_empty() {
        writeln!(out, "no APIService is backed by a service: there is nothing to restart")?;
    } else {
        let mut table = Table::new(&["APISERVICE", "SERVICE", "WORKLOADS", "READY", "AVAILABLE"]);
        for s in &report.servers {
            let workloads: Vec<String> =
                s.workloads.iter().map(|w| format!("{}/{}", w.kind.resource(), w.name)).collect();
            let ready = s.pods.iter().filter(|p| p.ready).count();
            table.row(vec![
                s.api_service.clone(),
                s.service.clone(),
                if workloads.is_empty() { "-".into() } else { workloads.join(",") },
                format!("{ready}/{}", s.pods.len()),
                s.available.clone(),
            ]);
        }
        table.write(out)?;
        for s in &report.servers {
            for problem in &s.problems {
                writeln!(out, "{}: {problem}", s.api_service)?;
            }
        }
    }
    if let Some(restarts) = &report.restarts {
        writeln!(out)?;
        let mut table = Table::new(&["WORKLOAD", "RESULT", "SECONDS", "MESSAGE"]);
        for r in restarts {
            table.row(vec![
                r.workload.to_string(),
                if r.ok { "ok".into() } else { "FAILED".into() },
                format!("{:.1}", r.seconds),
                r.message.clone(),
            ]);
        }
        table.write(out)?;
        let failed = restarts.iter().filter(|r| !r.ok).count();
        writeln!(out, "restarted {} workload(s), {failed} failed", restarts.len() - failed)?;
    }
    if let Some(available) = &report.available_after_restart {
        for (name, status) in available {
            writeln!(out, "apiservice {name}: Available={status}")?;
        }
    }
    if let Some(problem) = &report.availability_error {
        writeln!(out, "apiservices: {problem}")?;
    }
    if let Some(checks) = &report.ca_checks {
        writeln!(out)?;
        let mut table = Table::new(&["APISERVICE", "POD", "CA", "LOADED"]);
        for c in checks {
            let loaded = match (&c.error, c.loaded) {
                (_, true) => "yes".to_string(),
                (Some(err), false) => format!("unknown ({err})"),
                (None, false) => "NO".to_string(),
            };
            table.row(vec![
                c.api_service.clone(),
                format!("{}/{}", c.namespace, c.pod),
                c.ca.clone(),
                loaded,
            ]);
        }
        table.write(out)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_seed_documents_log_line() {
        let line = r#"I1119 09:40:10.092116       1 tlsconfig.go:178] loaded client CA [2/"client-ca::kube-system::extension-apiserver-authentication::client-ca-file,client-ca::kube-system::extension-apiserver-authentication::requestheader-client-ca-file"]: "kubernetes-front-proxy-ca" [] issuer="<self>" (2020-11-19 09:36:58 +0000 UTC to 2021-11-19 09:36:58 +0000 UTC (now=2020-11-19 09:40:10.092099451 +0000 UTC))"#;
        assert_eq!(
            parse_loaded_ca(line),
            Some(LoadedCa {
                cn: "kubernetes-front-proxy-ca".into(),
                not_before: "2020-11-19 09:36:58 +0000 UTC".into(),
                not_after: "2021-11-19 09:36:58 +0000 UTC".into(),
            })
        );
        assert_eq!(parse_loaded_ca("I1119 something else"), None);
    }
}
