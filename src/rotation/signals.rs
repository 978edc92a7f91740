//! The signals that stop a rotation cleanly: Ctrl-C (SIGINT), SIGTERM (a service manager, `kill`)
//! and SIGHUP (the SSH session that ran it dropped). Each stops the children with SIGINT first
//! and marks the phase interrupted, so the same command goes on from there.

use tokio::signal::unix::{SignalKind, signal};

use crate::error::{Error, Result};

/// Starts listening now (from then on these signals no longer kill the process outright);
/// the future completes with the name of the first one that arrives.
pub fn stop_requested() -> Result<impl Future<Output = &'static str>> {
    let listen = |kind| signal(kind).map_err(Error::Signals);
    let mut int = listen(SignalKind::interrupt())?;
    let mut term = listen(SignalKind::terminate())?;
    let mut hup = listen(SignalKind::hangup())?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => "SIGINT",
            _ = term.recv() => "SIGTERM",
            _ = hup.recv() => "SIGHUP",
        }
    })
}
