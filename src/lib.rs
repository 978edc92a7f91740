//! kubectl-certrotate: see where a Lokomotive cluster's certificates stand and rotate them.
//!
//! One module per concern: `cli` (flags), `assets` (the asset dir model), `pki` (certificate
//! facts), `k8s` (the Kubernetes API), `output` (tables and JSON), and one module per command.

pub mod aggregation;
pub mod assets;
pub mod cli;
pub mod duration;
pub mod error;
pub mod extension_servers;
pub mod k8s;
pub mod output;
pub mod pki;
pub mod renew;
pub mod rotation;
pub mod secret_text;
pub mod status;
pub mod tools;
pub mod version;
pub mod webhook;

use std::io::Write;
use std::process::ExitCode;

use clap::{CommandFactory, Parser};

use crate::cli::{Cli, Command, CompletionShell};
use crate::error::{Result, exit};

/// Parses the command line, runs the command and maps the outcome to a documented exit code.
pub fn main_entry() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            let _ = err.print();
            return ExitCode::from(u8::try_from(err.exit_code()).unwrap_or(exit::USAGE));
        }
    };
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::from(err.exit_code())
        }
    }
}

fn run(cli: Cli) -> Result<u8> {
    output::set_verbosity(cli.global.verbose);
    cli.check().map_err(error::Error::Usage)?;
    match &cli.command {
        Command::Status(args) => runtime()?.block_on(status::run(&cli.global, args)),
        Command::ExtensionServers(args) => {
            runtime()?.block_on(extension_servers::run(&cli.global, args))
        }
        Command::Aggregation(args) => runtime()?.block_on(aggregation::run(&cli.global, args)),
        Command::Webhook(args) => runtime()?.block_on(webhook::run(&cli.global, args)),
        Command::Renew(args) => runtime()?.block_on(renew::run(&cli.global, args)),
        Command::Completion(args) => {
            let shell = match args.shell {
                CompletionShell::Bash => clap_complete::Shell::Bash,
                CompletionShell::Zsh => clap_complete::Shell::Zsh,
                CompletionShell::Fish => clap_complete::Shell::Fish,
            };
            // Registered for the binary name; kubectl's plugin completion goes through
            // `kubectl_complete-certrotate` (docs/krew.md).
            let mut command = Cli::command();
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut command, "kubectl-certrotate", &mut script);
            if shell == clap_complete::Shell::Bash {
                // clap_complete 4.6 labels subcommand cases differently from its dispatch when
                // the binary name has a dash (clap issue 6421): options after a subcommand
                // would never complete.
                let text = String::from_utf8_lossy(&script);
                script = text.replace("kubectl__subcmd__certrotate", "kubectl__certrotate").into();
            }
            let written = std::io::stdout().lock().write_all(&script).map_err(error::Error::Output);
            output::ignore_broken_pipe(written)?;
            Ok(exit::OK)
        }
        Command::Version => {
            // The same first line as `--version`.
            let text = format!(
                "{} {}\ncommit: {}\n",
                cli::DISPLAY_NAME,
                version::VERSION,
                version::COMMIT
            );
            let written =
                std::io::stdout().lock().write_all(text.as_bytes()).map_err(error::Error::Output);
            output::ignore_broken_pipe(written)?;
            Ok(exit::OK)
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(error::Error::Runtime)
}
