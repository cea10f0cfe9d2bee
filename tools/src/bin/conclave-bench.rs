//! `conclave-bench`: measurement harnesses. `conclave-bench keys` measures group key
//! agreement (see `conclave_tools::keys_bench`).
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use conclave_tools::keys_bench::{self, KeysArgs};

/// Conclave benchmarks.
#[derive(Debug, Parser)]
#[command(name = "conclave-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Key agreement: serial time and total CPU per membership event vs group size, for
    /// every protocol and DH group; prints a table and writes an SVG plot.
    Keys(KeysArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Keys(args) => keys_bench::run(args).map(|_| ()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("conclave-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
