//! `backup`: keep the CA the cluster trusts (and its key), the client certificate and key in
//! the run's backup folder, and check that the copies read back.

use super::state::backup_name;
use super::{CA_CERT, CA_KEY, CLIENT_CERT, CLIENT_KEY};
use crate::aggregation::Phase;
use crate::error::{Error, Result};
use crate::pki;
use crate::rotation::context::Ctx;
use crate::rotation::engine::{Needs, PhaseUnit};
use crate::rotation::plan::StepKind;
use crate::rotation::step::{Action, Planned, Running};

pub struct Backup;

impl PhaseUnit for Backup {
    fn needs(&self) -> Needs {
        // The backup re-writes a key file a targeted apply typed by hand left stale.
        Needs { terraform: true, ..Needs::default() }
    }

    fn steps(&self, _: &Ctx) -> Vec<Planned> {
        vec![
            Planned::new(
                StepKind::File,
                format!(
                    "copy the CA the cluster trusts and its key ({CA_CERT} and {CA_KEY}, or where a rotation begun by hand left them), {CLIENT_CERT} and {CLIENT_KEY} into the run's backup folder (0600)"
                ),
                Step::Copy,
            ),
            Planned::new(
                StepKind::Check,
                "the copies read back equal to what was kept",
                Step::ReadsBack,
            ),
        ]
    }
}

enum Step {
    Copy,
    ReadsBack,
}

impl Action for Step {
    fn run<'a>(&'a self, ctx: &'a mut Ctx) -> Running<'a, String> {
        match self {
            Self::Copy => Box::pin(copy(ctx)),
            Self::ReadsBack => Box::pin(async move { reads_back(ctx) }),
        }
    }
}

/// Keeps the CA the cluster trusts (from wherever the real state has it: see
/// [`crate::aggregation::old_ca`]) and the client certificate and key, and, when the key file
/// is neither the old CA's nor the files' CA's (stale), that file too before the `ca` phase
/// re-writes it from the state.
async fn copy(ctx: &mut Ctx) -> Result<String> {
    let old = crate::aggregation::old_ca::find(ctx).await?;
    let files_ca = ctx.file_cert(CA_CERT)?;
    if old.is_the_files(ctx)? && !ctx.key_matches(CA_KEY, &files_ca) {
        return Err(Error::Precondition {
            phase: Phase::Backup.name(),
            reason: format!(
                "{} does not match {}: restore the CA's own key before rotating",
                ctx.asset(CA_KEY).display(),
                ctx.asset(CA_CERT).display()
            ),
        });
    }
    let client = ctx.file_cert(CLIENT_CERT)?;
    let mut kept = vec![(backup_name(CA_CERT).to_string(), old.pem.clone())];
    if let Some((key, _)) = &old.key {
        kept.push((backup_name(CA_KEY).to_string(), key.clone()));
    }
    let key_file = ctx.read_asset(CA_KEY)?;
    let stale = !ctx.key_matches(CA_KEY, &old.cert) && !ctx.key_matches(CA_KEY, &files_ca);
    if stale {
        kept.push((format!("{}.found", backup_name(CA_KEY)), key_file));
    }
    for file in [CLIENT_CERT, CLIENT_KEY] {
        kept.push((backup_name(file).to_string(), ctx.read_asset(file)?));
    }
    for (name, bytes) in &kept {
        ctx.run_mut().write_backup(name, bytes)?;
    }
    ctx.fingerprint("oldCa", &old.cert.sha256)?;
    ctx.fingerprint("oldClient", &client.sha256)?;
    let origin = old.origin();
    ctx.run_mut().note_origin("oldCa", &origin)?;
    if old.is_the_files(ctx)? {
        return Ok("backed up".into());
    }
    if ctx.key_matches(CA_KEY, &files_ca) {
        return Ok(format!("backed up; {origin}"));
    }
    // The manual procedure's apply targets only the certificate's file: its key file still
    // holds the old key (kept above), and the state the new one.
    let key_file = ctx.addr(ca_key_file());
    let terraform = ctx.terraform()?;
    terraform.change(terraform.apply_command(&[key_file])).await?;
    Ok(format!("backed up; {origin}; {CA_KEY} re-written from the state (it held the old key)"))
}

/// The `local_file` that writes the CA key.
fn ca_key_file() -> &'static str {
    let files = super::resources("aggregation-ca").files;
    files.iter().find(|f| f.contains("-key")).expect("the CA key has a local_file")
}

/// The CA kept is the one the cluster trusts, not always the files' (a rotation begun by
/// hand): it must read back as the recorded old CA, its key (when kept) matching; the
/// client's files are kept as they are.
fn reads_back(ctx: &Ctx) -> Result<String> {
    let fail = |reason: String| Error::Verification { phase: Phase::Backup.name(), reason };
    let old = ctx.backup_cert(backup_name(CA_CERT))?;
    let recorded = ctx.run()?.journal.fingerprints.get("oldCa").cloned();
    if recorded.as_deref() != Some(old.sha256.as_str()) {
        return Err(fail("the backup of the old CA does not read back as it".into()));
    }
    let key = ctx.run()?.backup_path(backup_name(CA_KEY));
    if key.exists() {
        let half = std::fs::read(&key).ok().and_then(|k| pki::private_key_half(&k).ok());
        if half.is_none() || half != pki::certificate_half(&old) {
            return Err(fail("the backup of the old CA key does not match it".into()));
        }
    }
    for file in [CLIENT_CERT, CLIENT_KEY] {
        if ctx.read_backup(backup_name(file))? != ctx.read_asset(file)? {
            return Err(fail(format!("the backup of {file} differs from the original")));
        }
    }
    Ok("backups read back equal".into())
}
