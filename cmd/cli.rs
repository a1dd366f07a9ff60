//! Command-line definitions and dispatch.

use clap::Parser;

/// Version control for whole folders whose remotes are peers
#[derive(Debug, Parser)]
#[command(name = "dbox", version, about, long_about = None)]
pub struct Cli {}

/// Parses the command line and runs it.
pub fn run() -> std::process::ExitCode {
    match Cli::try_parse() {
        Ok(Cli {}) => {
            let _ = <Cli as clap::CommandFactory>::command().print_help();
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            std::process::ExitCode::from(code)
        }
    }
}
