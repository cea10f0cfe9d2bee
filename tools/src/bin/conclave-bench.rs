//! `conclave-bench`: reproducible benchmarks against real daemon processes.
//!
//! `conclave-bench flood` starts a `conclaved` from the same target directory, then for
//! each transport x size runs one receiver and one sender process (`conclave flood`),
//! repeats each configuration, and reports medians (min-max) at the receiver as a table,
//! a CSV and an SVG plot. `conclave-bench ring` does the same for three daemons joined by the token ring, and
//! `conclave-bench keys` measures group key agreement (`conclave_tools::keys_bench`);
//! `conclave-bench membership` measures daemon membership (`conclave_tools::membership_bench`).

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{ChildStdout, Command as Process, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use conclave::Service;
use conclave_tools::bench_common::{PlotPoint, Reaped, fmt_range, throughput_svg};
use conclave_tools::flood::{Report, process_cpu_seconds};

#[derive(Parser)]
#[command(
    name = "conclave-bench",
    version,
    about = "Conclave benchmark harness",
    after_help = conclave_tools::exit::HELP
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Throughput (and latency) of one sender to one receiver through one daemon.
    Flood(FloodBench),
    /// Three daemons joined by the token ring: a receiver on each, 1 or 3 senders.
    Ring(conclave_tools::ring_bench::RingBench),
    /// Key agreement: serial time and total CPU per membership event vs group size, for
    /// every protocol and DH group; prints a table and writes an SVG plot.
    Keys(conclave_tools::keys_bench::KeysArgs),
    /// Daemon membership: kill -9 to the new view per profile, partition heal to the
    /// merged view, join latency, false membership changes under a flood, ring throughput.
    Membership(conclave_tools::membership_bench::MembershipBench),
}

#[derive(Args)]
struct FloodBench {
    /// Transports to measure (unix, tcp), comma separated.
    #[arg(long, value_delimiter = ',', default_value = "unix,tcp")]
    transports: Vec<String>,
    /// Payload sizes in bytes, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "100,1024,8192")]
    sizes: Vec<usize>,
    /// Service of every message.
    #[arg(long, default_value = "agreed")]
    service: String,
    /// Repeats of each configuration (the table shows the median and the range).
    #[arg(long, short = 'k', default_value_t = 3)]
    repeats: usize,
    /// Messages per run (default: about 1 s of traffic at the targets, by size).
    #[arg(long, short = 'n')]
    count: Option<u64>,
    /// Tuning profile passed to conclaved.
    #[arg(long)]
    profile: Option<String>,
    /// Extra conclaved config file.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Measure an already running daemon at these addresses instead of starting one
    /// (`unix=PATH`, `tcp=HOST:PORT`).
    #[arg(long, value_delimiter = ',')]
    external: Vec<String>,
    /// Output directory for the CSV and SVG (default: target/bench next to the binary).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Seconds one run may take before it is abandoned.
    #[arg(long, default_value_t = 120)]
    run_timeout: u64,
    /// Pace the sender to this many messages per second (0: flat out). A paced run
    /// measures latency without queueing; a flat-out run measures throughput.
    #[arg(long, default_value_t = 0)]
    rate: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Flood(args) => flood(args),
        Command::Ring(args) => conclave_tools::ring_bench::run(args).map_err(|e| e as _),
        Command::Membership(args) => {
            conclave_tools::membership_bench::run(args).map_err(|e| e as _)
        }
        Command::Keys(args) => conclave_tools::keys_bench::run(args)
            .map(|_| ())
            .map_err(|e| e.into()),
    };
    match result {
        Ok(()) => ExitCode::from(conclave_tools::exit::OK),
        Err(e) => {
            eprintln!("conclave-bench: {e}");
            ExitCode::from(conclave_tools::exit::FAILED)
        }
    }
}

type AnyResult<T> = Result<T, Box<dyn std::error::Error>>;

/// Lines of a child's stdout, read on a thread so that waiting can time out.
fn line_reader(out: ChildStdout) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn wait_line(
    rx: &mpsc::Receiver<String>,
    pred: impl Fn(&str) -> bool,
    timeout: Duration,
    what: &str,
) -> AnyResult<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if pred(&line) => return Ok(line),
            Ok(_) => {}
            Err(mpsc::RecvTimeoutError::Timeout) => {
                return Err(format!("timed out waiting for {what}").into());
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(format!("{what}: the process exited first").into());
            }
        }
    }
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

struct DaemonProc {
    child: Reaped,
    unix: String,
    tcp: String,
    _dir: PathBuf,
}

fn start_daemon(args: &FloodBench) -> AnyResult<DaemonProc> {
    let bin = conclave_tools::sibling_binary("conclaved")?;
    let dir = std::env::temp_dir().join(format!("conclave-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let socket = dir.join("daemon.sock");
    let port = free_port()?;
    let mut cmd = Process::new(&bin);
    cmd.arg("--socket")
        .arg(&socket)
        .arg("--port")
        .arg(port.to_string());
    if let Some(p) = &args.profile {
        cmd.arg("--profile").arg(p);
    }
    if std::env::var_os("RUST_LOG").is_none() {
        // The daemon's info lines would drown the per-run results on stderr.
        cmd.env("RUST_LOG", "warn");
    }
    if let Some(c) = &args.config {
        cmd.arg("--config").arg(c);
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    let out = child.stdout.take().ok_or("no stdout from conclaved")?;
    let child = Reaped(child);
    let rx = line_reader(out);
    let ready = wait_line(
        &rx,
        |l| l.starts_with("conclaved ready"),
        Duration::from_secs(20),
        "conclaved ready",
    )?;
    eprintln!("{ready}");
    Ok(DaemonProc {
        child,
        unix: format!("unix:{}", socket.display()),
        tcp: format!("127.0.0.1:{port}"),
        _dir: dir,
    })
}

fn default_count(size: usize) -> u64 {
    match size {
        0..=256 => 2_000_000,
        257..=2048 => 500_000,
        _ => 200_000,
    }
}

/// What one run measured.
struct RunResult {
    recv: Report,
    send: Report,
    /// CPU seconds the daemon used from the sender's start to the receiver's report.
    daemon_cpu: Option<f64>,
}

/// One measured run: the receiver's report (and the sender's, for its send rate).
#[allow(clippy::too_many_arguments)]
fn run_once(
    conclave: &Path,
    daemon_pid: Option<u32>,
    daemon: &str,
    group: &str,
    size: usize,
    count: u64,
    service: &str,
    rate: u64,
    timeout: Duration,
) -> AnyResult<RunResult> {
    let secs = timeout.as_secs().to_string();
    let mut recv = Process::new(conclave);
    recv.args([
        "--daemon", daemon, "flood", "recv", "--json", "--group", group,
    ])
    .args(["--size", &size.to_string(), "--count", &count.to_string()])
    .args(["--service", service, "--timeout", &secs])
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit());
    let mut recv = recv.spawn()?;
    let rout = recv.stdout.take().ok_or("no stdout from the receiver")?;
    let recv = Reaped(recv);
    let rrx = line_reader(rout);
    wait_line(
        &rrx,
        |l| l == "flood receiver ready",
        Duration::from_secs(20),
        "the flood receiver",
    )?;
    let cpu_before = daemon_pid.and_then(|p| process_cpu_seconds(Some(p)));
    let mut send = Process::new(conclave);
    send.args([
        "--daemon", daemon, "flood", "send", "--json", "--group", group,
    ])
    .args(["--size", &size.to_string(), "--count", &count.to_string()])
    .args(["--service", service, "--timeout", &secs])
    .args(["--rate", &rate.to_string()])
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit());
    let mut send = send.spawn()?;
    let mut sout = send.stdout.take().ok_or("no stdout from the sender")?;
    let send = Reaped(send);
    let line = wait_line(
        &rrx,
        |l| l.starts_with('{'),
        timeout,
        "the receiver's report",
    )?;
    let recv_report: Report = serde_json::from_str(&line)?;
    let cpu_after = daemon_pid.and_then(|p| process_cpu_seconds(Some(p)));
    let mut sline = String::new();
    sout.read_to_string(&mut sline)?;
    drop(send);
    drop(recv);
    let send_report: Report =
        serde_json::from_str(sline.trim()).map_err(|e| format!("sender report {sline:?}: {e}"))?;
    Ok(RunResult {
        recv: recv_report,
        send: send_report,
        daemon_cpu: cpu_before.zip(cpu_after).map(|(a, b)| b - a),
    })
}

struct Row {
    transport: String,
    size: usize,
    msgs: Vec<f64>,
    mbs: Vec<f64>,
    send_msgs: Vec<f64>,
    p50: Vec<f64>,
    p99: Vec<f64>,
    /// Daemon CPU microseconds per delivered message.
    daemon_us: Vec<f64>,
    /// Sender plus receiver CPU microseconds per message.
    client_us: Vec<f64>,
    missing: u64,
}

fn flood(args: FloodBench) -> AnyResult<()> {
    let service = Service::from_name(&args.service)
        .ok_or_else(|| format!("unknown service {:?}", args.service))?;
    let conclave = conclave_tools::sibling_binary("conclave")?;
    let out_dir = match &args.out {
        Some(d) => d.clone(),
        None => {
            let exe = std::env::current_exe()?;
            // target/<profile>/conclave-bench -> target/bench
            exe.parent()
                .and_then(Path::parent)
                .map(|t| t.join("bench"))
                .unwrap_or_else(|| PathBuf::from("bench"))
        }
    };
    std::fs::create_dir_all(&out_dir)?;

    let mut external_unix = None;
    let mut external_tcp = None;
    for e in &args.external {
        match e.split_once('=') {
            Some(("unix", p)) => external_unix = Some(format!("unix:{p}")),
            Some(("tcp", a)) => external_tcp = Some(a.to_owned()),
            _ => return Err(format!("bad --external {e:?}: unix=PATH or tcp=HOST:PORT").into()),
        }
    }
    let daemon = if args.external.is_empty() {
        Some(start_daemon(&args)?)
    } else {
        None
    };
    let addr_of = |t: &str| -> AnyResult<String> {
        match (t, &daemon) {
            ("unix", Some(d)) => Ok(d.unix.clone()),
            ("tcp", Some(d)) => Ok(d.tcp.clone()),
            ("unix", None) => external_unix.clone().ok_or("no --external unix=".into()),
            ("tcp", None) => external_tcp.clone().ok_or("no --external tcp=".into()),
            (other, _) => Err(format!("unknown transport {other:?}").into()),
        }
    };

    let mut rows = Vec::new();
    let mut csv = String::from(
        "transport,size,service,repeat,messages,seconds,msgs_per_s,mb_per_s,send_msgs_per_s,missing,p50_us,p90_us,p99_us,p999_us,daemon_cpu_us_per_msg,client_cpu_us_per_msg\n",
    );
    let mut run_no = 0u32;
    for transport in &args.transports {
        let addr = addr_of(transport)?;
        for &size in &args.sizes {
            let count = args.count.unwrap_or_else(|| default_count(size));
            let mut row = Row {
                transport: transport.clone(),
                size,
                msgs: vec![],
                mbs: vec![],
                send_msgs: vec![],
                p50: vec![],
                p99: vec![],
                daemon_us: vec![],
                client_us: vec![],
                missing: 0,
            };
            for rep in 0..args.repeats {
                run_no += 1;
                let group = format!("bench-{}-{run_no}", std::process::id());
                let run = run_once(
                    &conclave,
                    daemon.as_ref().map(|d| d.child.0.id()),
                    &addr,
                    &group,
                    size,
                    count,
                    service.name(),
                    args.rate,
                    Duration::from_secs(args.run_timeout),
                )?;
                let (r, s) = (&run.recv, &run.send);
                let per_msg = |cpu: f64| cpu * 1e6 / r.messages.max(1) as f64;
                let daemon_us = run.daemon_cpu.map(per_msg).unwrap_or(f64::NAN);
                let client_us = per_msg(r.cpu_seconds + s.cpu_seconds);
                eprintln!(
                    "  {}\n  CPU per message: daemon {daemon_us:.2} us, sender+receiver {client_us:.2} us",
                    r.human().replace('\n', "\n  ")
                );
                let l = r.latency.clone().unwrap_or_default();
                let _ = writeln!(
                    csv,
                    "{transport},{size},{},{rep},{},{:.6},{:.1},{:.2},{:.1},{},{:.1},{:.1},{:.1},{:.1},{:.3},{:.3}",
                    service.name(),
                    r.messages,
                    r.seconds,
                    r.msgs_per_s,
                    r.mb_per_s,
                    s.msgs_per_s,
                    r.missing,
                    l.p50_us,
                    l.p90_us,
                    l.p99_us,
                    l.p999_us,
                    daemon_us,
                    client_us
                );
                row.msgs.push(r.msgs_per_s);
                row.mbs.push(r.mb_per_s);
                row.send_msgs.push(s.msgs_per_s);
                row.p50.push(l.p50_us);
                row.p99.push(l.p99_us);
                row.missing += r.missing;
                if daemon_us.is_finite() {
                    row.daemon_us.push(daemon_us);
                }
                row.client_us.push(client_us);
            }
            rows.push(row);
        }
    }
    drop(daemon);

    let mut table = markdown_table(&rows, service.name(), args.repeats);
    if args.rate > 0 {
        table = format!("Sender paced at {} msgs/s.\n{table}", args.rate);
    }
    println!("{table}");
    let csv_path = out_dir.join("flood.csv");
    let svg_path = out_dir.join("flood.svg");
    let md_path = out_dir.join("flood.md");
    std::fs::write(&csv_path, csv)?;
    let points: Vec<PlotPoint<'_>> = rows
        .iter()
        .map(|r| PlotPoint {
            series: r.transport.clone(),
            size: r.size,
            msgs: &r.msgs,
            mbs: &r.mbs,
        })
        .collect();
    let svg = throughput_svg(&points, "messages/s (thousands)", "MB/s");
    std::fs::write(&svg_path, svg)?;
    std::fs::write(&md_path, &table)?;
    println!(
        "wrote {}, {} and {}",
        csv_path.display(),
        svg_path.display(),
        md_path.display()
    );
    Ok(())
}

fn markdown_table(rows: &[Row], service: &str, repeats: usize) -> String {
    let mut t = format!(
        "Flood, 1 sender -> 1 receiver through one daemon, service {service}; median (min-max) of {repeats} runs, measured at the receiver\n\n\
         | transport | size (B) | msgs/s | MB/s | sender msgs/s | p50 latency (us) | p99 latency (us) | daemon CPU us/msg | client CPU us/msg | lost |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    );
    for r in rows {
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.transport,
            r.size,
            fmt_range(&r.msgs, 1.0, 0),
            fmt_range(&r.mbs, 1.0, 1),
            fmt_range(&r.send_msgs, 1.0, 0),
            fmt_range(&r.p50, 1.0, 0),
            fmt_range(&r.p99, 1.0, 0),
            fmt_range(&r.daemon_us, 1.0, 2),
            fmt_range(&r.client_us, 1.0, 2),
            r.missing
        );
    }
    t
}
