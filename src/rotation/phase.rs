//! The types of a rotation's phases that every procedure shares: the phase asked for on the
//! command line (`all` or one of the procedure's own phases, which derive `clap::ValueEnum`
//! themselves), the path of a run, and how a phase ended.
//!
//! The serialized names are those of the journal, report and plan documents
//! (docs/rotations.md): they never change without a new `apiVersion`.

use std::marker::PhantomData;

use clap::ValueEnum;
use clap::builder::{PossibleValue, TypedValueParser};
use serde::{Deserialize, Serialize};

/// `--phase`: every phase not yet done (`all`), or one of procedure phase type `P`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PhaseChoice<P> {
    All,
    One(P),
}

impl<P: Copy> PhaseChoice<P> {
    /// The phase asked for, `None` for `all`.
    pub fn phase(self) -> Option<P> {
        match self {
            Self::All => None,
            Self::One(p) => Some(p),
        }
    }
}

/// Parses `--phase` for phases `P`: `all` (with `all_help`) and then `P`'s own values, with
/// their help texts, in order.
#[derive(Clone)]
pub struct PhaseParser<P> {
    all_help: &'static str,
    phases: PhantomData<fn() -> P>,
}

impl<P> PhaseParser<P> {
    pub fn new(all_help: &'static str) -> Self {
        Self { all_help, phases: PhantomData }
    }
}

impl<P: ValueEnum + Copy + Send + Sync + 'static> TypedValueParser for PhaseParser<P> {
    type Value = PhaseChoice<P>;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<Self::Value, clap::Error> {
        let text = value.to_str().unwrap_or_default();
        if text == "all" {
            return Ok(PhaseChoice::All);
        }
        if let Ok(phase) = P::from_str(text, false) {
            return Ok(PhaseChoice::One(phase));
        }
        let mut err = clap::Error::new(clap::error::ErrorKind::InvalidValue).with_cmd(cmd);
        use clap::error::{ContextKind, ContextValue};
        if let Some(arg) = arg {
            err.insert(ContextKind::InvalidArg, ContextValue::String(arg.to_string()));
        }
        err.insert(ContextKind::InvalidValue, ContextValue::String(text.to_string()));
        let valid = self
            .possible_values()
            .into_iter()
            .flatten()
            .map(|v| v.get_name().to_string())
            .collect();
        err.insert(ContextKind::ValidValue, ContextValue::Strings(valid));
        Err(err)
    }

    fn possible_values(&self) -> Option<Box<dyn Iterator<Item = PossibleValue> + '_>> {
        let all = PossibleValue::new("all").help(self.all_help);
        let phases = P::value_variants().iter().filter_map(ValueEnum::to_possible_value);
        Some(Box::new(std::iter::once(all).chain(phases)))
    }
}

/// The path of a run, picked when it starts (by the certificate's expiry or `--expired`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunPath {
    NotExpired,
    Expired,
}

impl RunPath {
    pub fn of(expired: bool) -> Self {
        if expired { Self::Expired } else { Self::NotExpired }
    }

    pub fn expired(self) -> bool {
        self == Self::Expired
    }

    /// As the journal, report and plan spell it.
    pub fn name(self) -> &'static str {
        match self {
            Self::NotExpired => "not-expired",
            Self::Expired => "expired",
        }
    }
}

/// Where a phase stands in the journal (`outcome` of a phase record).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PhaseOutcome {
    Running,
    Done,
    Failed,
    Interrupted,
}

/// How a phase ended, in a report (`result`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PhaseResult {
    Done,
    /// The real state (or the journal) showed it done.
    AlreadyDone,
    Failed,
    Interrupted,
}

impl PhaseResult {
    pub fn name(self) -> &'static str {
        match self {
            Self::Done => "done",
            Self::AlreadyDone => "already-done",
            Self::Failed => "failed",
            Self::Interrupted => "interrupted",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_those_of_the_documents() {
        for path in [RunPath::NotExpired, RunPath::Expired] {
            assert_eq!(serde_json::to_value(path).unwrap(), path.name());
            assert_eq!(RunPath::of(path.expired()), path);
        }
        for result in [
            PhaseResult::Done,
            PhaseResult::AlreadyDone,
            PhaseResult::Failed,
            PhaseResult::Interrupted,
        ] {
            assert_eq!(serde_json::to_value(result).unwrap(), result.name());
        }
    }

    /// A phase's name in the journal and reports is its `--phase` spelling and its serde name.
    #[test]
    fn phase_names_are_their_cli_and_serde_names() {
        fn check<P: ValueEnum + Serialize>(name: impl Fn(&P) -> &'static str) {
            for phase in P::value_variants() {
                let cli = phase.to_possible_value().unwrap();
                assert_eq!(cli.get_name(), name(phase));
                assert_eq!(serde_json::to_value(phase).unwrap(), name(phase));
            }
        }
        check::<crate::aggregation::Phase>(|p| p.name());
        check::<crate::webhook::Phase>(|p| p.name());
        check::<crate::renew::Phase>(|p| p.name());
    }

    #[test]
    fn phase_parses_all_and_each_phase() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[arg(long, value_parser = PhaseParser::<crate::webhook::Phase>::new("every"), default_value = "all")]
            phase: PhaseChoice<crate::webhook::Phase>,
        }
        let parse = |args: &[&str]| Cli::try_parse_from(args).map(|c| c.phase);
        assert_eq!(parse(&["x"]).unwrap(), PhaseChoice::All);
        assert_eq!(parse(&["x", "--phase", "all"]).unwrap().phase(), None);
        assert_eq!(
            parse(&["x", "--phase", "unhook"]).unwrap().phase(),
            Some(crate::webhook::Phase::Unhook)
        );
        let err = parse(&["x", "--phase", "cleanup"]).err().unwrap();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("all, backup, unhook"), "{err}");
    }
}
