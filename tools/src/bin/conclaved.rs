//! `conclaved`, the Conclave daemon: serves client groups over a Unix socket and TCP.
//!
//! With no `--config` it runs the embedded default (daemon `local`, TCP 127.0.0.1:4803,
//! Unix socket `/tmp/conclave-4803.sock`). Once listening it prints
//! `conclaved ready: unix=<path> tcp=<addr>` on stdout. SIGTERM or SIGINT: every client
//! gets a Goodbye, the socket file is removed, exit 0. Logs go to stderr (`RUST_LOG`).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use conclave_engine::config::{Config, DEFAULT_CONFIG_NAME, Overrides};
use conclave_engine::daemon::Daemon;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// The Conclave daemon.
#[derive(Debug, Parser)]
#[command(
    name = "conclaved",
    version,
    about = "The Conclave daemon: serves client groups over a Unix socket and TCP"
)]
struct Args {
    /// Configuration file (TOML); the embedded default when absent.
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Which daemon of the configuration this process is (overrides `me`).
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// Tuning profile: default, throughput, low-latency, wan, debug-loss, or a file path.
    #[arg(long, value_name = "NAME")]
    profile: Option<String>,
    /// Unix socket path for clients (overrides `clients.unix_socket`).
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// TCP port for clients (overrides this daemon's `client_port`).
    #[arg(long, value_name = "N")]
    port: Option<u16>,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    print_config: bool,
    /// Check the configuration and profile; exit 0 if valid, else print why and exit 1.
    #[arg(long)]
    check_config: bool,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let (mut config, file) = match &args.config {
        Some(path) => (Config::load(path)?, path.display().to_string()),
        None => (Config::embedded(), DEFAULT_CONFIG_NAME.to_owned()),
    };
    let overrides = Overrides {
        name: args.name.clone(),
        profile: args.profile.clone(),
        socket: args.socket.clone(),
        port: args.port,
    };
    config.apply_overrides(&overrides, &file)?;
    let profile = config.load_profile()?;
    if args.check_config {
        println!(
            "{file}: ok (daemon {:?}, profile {:?})",
            config.me, config.profile
        );
        return Ok(());
    }
    if args.print_config {
        print!("{}", config.to_toml());
        println!();
        println!("# profile {:?}:", config.profile);
        for line in profile.to_toml().lines() {
            println!("# {line}");
        }
        return Ok(());
    }

    // Handlers go in before the ready line, so a signal sent right after it is caught.
    let mut signals = Signals::new([SIGTERM, SIGINT])?;
    let signal_handle = signals.handle();
    let handle = Daemon::start(config, profile)?;
    tracing::info!(daemon = handle.name(), "{}", handle.ready_line());
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{}", handle.ready_line())?;
    stdout.flush()?;
    drop(stdout);

    // The signal thread only asks the daemon's control plane to stop; that thread tells
    // every data-plane worker.
    let stopper = handle.stopper();
    let signal_thread = std::thread::Builder::new()
        .name("conclave-signals".into())
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                tracing::info!(signal, "signal received; shutting down");
                stopper.stop();
            }
        })?;
    let result = handle.wait();
    // The worker may have stopped on its own (an error): release the signal thread.
    signal_handle.close();
    let _ = signal_thread.join();
    result?;
    tracing::info!("stopped");
    Ok(())
}
