//! `conclaved`, the Conclave daemon: serves client groups over a Unix socket and TCP.
//!
//! With no `--config` it runs the embedded default (daemon `local`, TCP 127.0.0.1:4803,
//! Unix socket `/tmp/conclave-4803.sock`). Once listening it prints
//! `conclaved ready: unix=<path> tcp=<addr>` on stdout. SIGTERM or SIGINT: every client
//! gets a Goodbye, the socket file is removed, exit 0. SIGHUP re-checks the configuration
//! files and logs the outcome; the daemon goes on unchanged. Logs go to stderr
//! (`RUST_LOG`), without colour codes unless stderr is a terminal.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use conclave_engine::config::{Config, DEFAULT_CONFIG_NAME, Overrides, Profile};
use conclave_engine::daemon::Daemon;
use conclave_tools::exit;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// The Conclave daemon.
#[derive(Debug, Parser)]
#[command(
    name = "conclaved",
    version,
    about = "The Conclave daemon: serves client groups over a Unix socket and TCP",
    after_help = exit::HELP
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
        // Colour codes are noise in a log file or a journal.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::from(exit::OK),
        Err((code, e)) => {
            eprintln!("{e}");
            ExitCode::from(code)
        }
    }
}

/// A failure and its exit code (docs/exit-codes.md).
type Failure = (u8, Box<dyn std::error::Error>);

/// Tags an error with an exit code.
fn code<E: Into<Box<dyn std::error::Error>>>(code: u8) -> impl FnOnce(E) -> Failure {
    move |e| (code, e.into())
}

/// Reads the configuration and profile the command line names, with its overrides.
fn load(args: &Args) -> Result<(Config, Profile, String), Box<dyn std::error::Error>> {
    let overrides = Overrides {
        name: args.name.clone(),
        profile: args.profile.clone(),
        socket: args.socket.clone(),
        port: args.port,
    };
    // Overrides go in before validation: `--name` replaces a missing `me`.
    let (config, file) = match &args.config {
        Some(path) => (
            Config::load_with(path, &overrides)?,
            path.display().to_string(),
        ),
        None => {
            let mut config = Config::embedded();
            config.apply_overrides(&overrides, DEFAULT_CONFIG_NAME)?;
            (config, DEFAULT_CONFIG_NAME.to_owned())
        }
    };
    config.check_endpoints(&file)?;
    let profile = config.load_profile()?;
    Ok((config, profile, file))
}

/// SIGHUP: the files are read and checked again, so an operator learns at once whether
/// the edited configuration would start; nothing is applied to the running daemon yet
/// (that is the reload work of issue 10), and the daemon keeps running either way.
fn on_hangup(args: &Args) {
    match load(args) {
        Ok((_, _, file)) => tracing::warn!(
            "SIGHUP: {file} re-read and valid, but reload is not supported yet: \
             the running configuration is unchanged (restart to apply changes)"
        ),
        Err(e) => tracing::error!(
            "SIGHUP: reload is not supported yet, and the configuration would not load: \
             {e}; the running configuration is unchanged"
        ),
    }
}

/// Runs the daemon: FAILED for a configuration that does not load, LOST for a daemon
/// that cannot start or fails while running.
fn run(args: Args) -> Result<(), Failure> {
    let (config, profile, file) = load(&args).map_err(code(exit::FAILED))?;
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
    // SIGHUP too: its default action would kill the daemon without goodbyes and leave
    // the socket file behind.
    let lost = code(exit::LOST);
    let mut signals = Signals::new([SIGTERM, SIGINT, SIGHUP]).map_err(code(exit::LOST))?;
    let signal_handle = signals.handle();
    let handle = Daemon::start(config, profile).map_err(code(exit::LOST))?;
    tracing::info!(daemon = handle.name(), "{}", handle.ready_line());
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{}", handle.ready_line())
        .and_then(|()| stdout.flush())
        .map_err(code(exit::LOST))?;
    drop(stdout);

    // The signal thread only asks the daemon's control plane to stop; that thread tells
    // every data-plane worker.
    let stopper = handle.stopper();
    let signal_thread = std::thread::Builder::new()
        .name("conclave-signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                if signal == SIGHUP {
                    on_hangup(&args);
                    continue;
                }
                tracing::info!(signal, "signal received; shutting down");
                stopper.stop();
                break;
            }
        })
        .map_err(code(exit::LOST))?;
    let result = handle.wait();
    // The worker may have stopped on its own (an error): release the signal thread.
    signal_handle.close();
    let _ = signal_thread.join();
    result.map_err(lost)?;
    tracing::info!("stopped");
    Ok(())
}
