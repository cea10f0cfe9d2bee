//! Runs many simulator seeds; a failure prints the command that replays it.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use conclave_sim::{SimConfig, run};

/// Deterministic ring simulator: N daemons, lossy network, invariant checks.
#[derive(Debug, Parser)]
struct Args {
    /// How many seeds to run.
    #[arg(long, default_value_t = 1000)]
    seeds: u64,
    /// First seed.
    #[arg(long, default_value_t = 0)]
    start: u64,
    /// Run exactly this seed (replay).
    #[arg(long)]
    seed: Option<u64>,
    /// Daemons per run (default: 2..=5 drawn from the seed).
    #[arg(long)]
    daemons: Option<usize>,
    /// Upper bound of per-link loss probability.
    #[arg(long, default_value_t = 0.1)]
    loss: f64,
    /// Upper bound of per-link duplication probability.
    #[arg(long, default_value_t = 0.05)]
    dup: f64,
    /// Force the Accelerated Ring variant on or off (default: drawn from the seed).
    #[arg(long)]
    accelerated: Option<bool>,
    /// Print each run's report.
    #[arg(long)]
    verbose: bool,
    /// Submissions per run.
    #[arg(long, default_value_t = 60)]
    messages: usize,
    /// Simulate daemon membership (crashes, restarts, partitions, merges) instead of a
    /// static ring: `conclave-sim membership --seeds N`.
    #[arg(value_parser = ["membership"])]
    mode: Option<String>,
    /// Faults per membership run.
    #[arg(long, default_value_t = 6)]
    faults: usize,
    /// Membership runs also drive every daemon's group table (clients join, leave and
    /// send; their views are checked).
    #[arg(long)]
    groups: bool,
}

/// Runs membership seeds; daemons default to 2..=6 drawn from the seed.
fn membership(args: &Args, seeds: std::ops::Range<u64>) -> ExitCode {
    use conclave_sim::membership::{MemberSimConfig, run_membership};
    let (mut runs, mut installs, mut faults, mut deliveries) = (0u64, 0u64, 0usize, 0u64);
    for seed in seeds.clone() {
        let daemons = args.daemons.unwrap_or(2 + (seed % 5) as usize);
        let cfg = MemberSimConfig {
            daemons,
            faults: args.faults,
            groups: args.groups,
            ..MemberSimConfig::default()
        };
        match run_membership(seed, cfg) {
            Ok(r) => {
                if args.verbose {
                    println!("seed {seed}: {r:?}");
                }
                runs += 1;
                installs += r.installs;
                faults += r.faults;
                deliveries += r.deliveries;
            }
            Err(v) => {
                eprintln!("seed {seed} ({daemons} daemons) failed: {v}");
                eprintln!(
                    "replay: cargo run --release -p conclave-sim -- membership --seed {seed} --daemons {daemons} --faults {}{}",
                    args.faults,
                    if args.groups { " --groups" } else { "" }
                );
                return ExitCode::FAILURE;
            }
        }
    }
    println!(
        "{runs} membership seeds ok ({}..{}): {installs} configuration installs, {faults} faults, {deliveries} deliveries checked",
        seeds.start, seeds.end
    );
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    let args = Args::parse();
    let seeds = match args.seed {
        Some(s) => s..s + 1,
        None => args.start..args.start.saturating_add(args.seeds),
    };
    if args.mode.is_some() {
        return membership(&args, seeds);
    }
    let mut totals = (0u64, 0usize, 0usize, 0u64);
    for seed in seeds.clone() {
        let daemons = args.daemons.unwrap_or(2 + (seed % 4) as usize);
        let cfg = SimConfig {
            daemons,
            loss: args.loss,
            duplication: args.dup,
            messages: args.messages,
            accelerated: args.accelerated,
            ..SimConfig::default()
        };
        match run(seed, cfg) {
            Ok(r) => {
                if args.verbose {
                    println!("seed {seed}: {r:?}");
                }
                totals.0 += 1;
                totals.1 += r.submitted;
                totals.2 += r.deliveries;
                totals.3 += r.lost;
            }
            Err(v) => {
                eprintln!("seed {seed} ({daemons} daemons) failed: {v}");
                let accel = args
                    .accelerated
                    .map(|a| format!(" --accelerated {a}"))
                    .unwrap_or_default();
                eprintln!(
                    "replay: cargo run -p conclave-sim -- --seed {seed} --daemons {daemons} --loss {} --dup {} --messages {}{accel}",
                    args.loss, args.dup, args.messages
                );
                return ExitCode::FAILURE;
            }
        }
    }
    println!(
        "{} seeds ok ({}..{}): {} messages submitted, {} deliveries checked, {} datagrams lost",
        totals.0, seeds.start, seeds.end, totals.1, totals.2, totals.3
    );
    ExitCode::SUCCESS
}
