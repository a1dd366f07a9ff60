//! The `dbox` command.

mod cli;
mod commands;
mod error;
mod ui;

fn main() -> std::process::ExitCode {
    cli::run()
}
