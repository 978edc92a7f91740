//! The external programs a rotation drives: terraform (the PKI), helm (the control plane) and
//! lokoctl (the whole cluster), all through one subprocess wrapper.

pub mod helm;
pub mod lokoctl;
pub mod process;
pub mod redact;
pub mod terraform;

use std::time::Duration;

pub use process::{Command, Outcome, Program};

/// Margin over `--timeout` for a child's own bound: helm's `--wait --timeout` must end first
/// and report why.
const CHILD_TIMEOUT_MARGIN: Duration = Duration::from_secs(120);

/// What every child of one rotation run shares: the run marker, `-v` streaming, the bound.
#[derive(Debug, Clone)]
pub struct Runner {
    run: String,
    echo: bool,
    timeout: Duration,
}

impl Runner {
    pub fn new(run: &str, verbose: u8, timeout: Duration) -> Self {
        Self { run: run.to_string(), echo: verbose > 0, timeout }
    }

    /// `--timeout` (zero: no limit).
    pub fn wait_limit(&self) -> Duration {
        self.timeout
    }

    /// `--timeout` as helm's `--timeout` value; helm has no "no limit", so `0` becomes a
    /// century.
    pub fn helm_timeout(&self) -> String {
        if self.timeout.is_zero() {
            "876000h".into()
        } else {
            format!("{}s", self.timeout.as_secs())
        }
    }

    pub fn command(&self, program: &Program) -> Command {
        // `--timeout 0` means no limit, for the children too.
        let bound = if self.timeout.is_zero() {
            Duration::MAX
        } else {
            self.timeout.saturating_add(CHILD_TIMEOUT_MARGIN)
        };
        Command::new(program, bound).env(process::RUN_ENV, &self.run).echo(self.echo)
    }
}
