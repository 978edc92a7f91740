//! `kubectl-certrotate`: the binary is only the process boundary; everything lives in the library.

fn main() -> std::process::ExitCode {
    certrotate::main_entry()
}
