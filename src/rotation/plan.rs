//! A phase's plan: the steps (commands, API calls, checks, file writes) it will take, built
//! before it runs. `--dry-run` prints the same list the real run executes.

use std::io::Write;

use serde::Serialize;

pub use super::step::{Step, StepKind};

/// One phase of a plan, and whether the journal already has it done.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PhasePlan {
    pub name: &'static str,
    pub already_done: bool,
    pub steps: Vec<Step>,
}

/// The plan as a person reads it.
pub fn render(
    out: &mut impl Write,
    phases: &[PhasePlan],
    unresolved: &[String],
) -> std::io::Result<()> {
    writeln!(out, "plan (dry run, nothing is changed):")?;
    for phase in phases {
        let done = if phase.already_done { " (already done: will be skipped)" } else { "" };
        writeln!(out, "phase {}{done}", phase.name)?;
        for (i, step) in phase.steps.iter().enumerate() {
            writeln!(out, "  {:>2}. {:<5} {}", i + 1, step.kind.label(), step.description)?;
        }
    }
    for note in unresolved {
        writeln!(out, "not resolved: {note}")?;
    }
    Ok(())
}
