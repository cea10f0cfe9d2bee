//! `conclave-bench ring`: three daemons on this machine, joined by the token ring.
//!
//! The harness writes one configuration (daemons `d0`, `d1`, `d2` on 127.0.0.1 with free
//! ring and client ports), starts the three `conclaved` processes next to the running
//! binary, checks that the ring orders (a probe group on every daemon sees all three
//! members), then for each service x senders x size runs: one receiver on every daemon
//! joins a fresh group; once all three are in the view, 1 sender (on `d0`) or 3 senders
//! (one per daemon) send `count` messages in all; every receiver counts what it got, checks
//! each sender's order and measures one-way latency from the stamp in each payload. Each
//! configuration is repeated; the table shows the median (min-max) over repeats of the
//! mean over the three receivers, plus the slowest receiver, as markdown, CSV and SVG.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use conclave::{Address, Connection, DaemonFrame, Event, Service};
use conclave_engine::config::Profile;
use conclave_engine::io::BackendChoice;
use hdrhistogram::Histogram;

use crate::bench_common::{PlotPoint, Reaped, fmt_range, throughput_svg};
use crate::flood;

type AnyResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Options of `conclave-bench ring`.
#[derive(Debug, Clone, clap::Args)]
pub struct RingBench {
    /// Payload sizes in bytes, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "100,1024,8192")]
    pub sizes: Vec<usize>,
    /// Services to measure, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "agreed,safe")]
    pub services: Vec<String>,
    /// Sender counts to measure: 1 (on d0) and/or 3 (one per daemon).
    #[arg(long, value_delimiter = ',', default_value = "1,3")]
    pub senders: Vec<usize>,
    /// Repeats of each configuration (the table shows the median and the range).
    #[arg(long, short = 'k', default_value_t = 3)]
    pub repeats: usize,
    /// Messages per run, all senders together (default by size: about 1 s at the targets).
    #[arg(long, short = 'n')]
    pub count: Option<u64>,
    /// Tuning profile of the daemons (worker pinning is turned off: three daemons share
    /// this machine).
    #[arg(long, default_value = "default")]
    pub profile: String,
    /// Largest ring datagram in bytes, replacing the profile's (loopback carries up to
    /// 65507 without fragmenting; a real network wants its MTU).
    #[arg(long)]
    pub max_datagram: Option<usize>,
    /// UDP backend between the daemons: auto, uring or fallback.
    #[arg(long, default_value = "auto")]
    pub backend: String,
    /// Pace all senders together to this many messages per second (0: flat out); a paced
    /// run measures latency without queueing.
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Output directory for the CSV, SVG and markdown (default: target/bench).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Seconds one run may take before it is abandoned.
    #[arg(long, default_value_t = 120)]
    pub run_timeout: u64,
}

const NAMES: [&str; 3] = ["d0", "d1", "d2"];

struct Cluster {
    procs: Vec<Reaped>,
    sockets: Vec<PathBuf>,
    dir: PathBuf,
    backend: String,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // The daemons go first: each removes its own socket file on the way out.
        self.procs.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_ports<T>(
    n: usize,
    bind: impl Fn() -> std::io::Result<T>,
    port: impl Fn(&T) -> u16,
) -> AnyResult<Vec<u16>> {
    // Held together while picking, so the ports differ.
    let held = (0..n)
        .map(|_| bind())
        .collect::<std::io::Result<Vec<T>>>()?;
    Ok(held.iter().map(port).collect())
}

fn start_cluster(args: &RingBench) -> AnyResult<Cluster> {
    let bin = crate::sibling_binary("conclaved")?;
    let dir = std::env::temp_dir().join(format!("conclave-ring-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut profile = Profile::by_name(&args.profile)?;
    profile.pin_workers = false;
    if let Some(m) = args.max_datagram {
        profile.ring.max_datagram_bytes = m;
    }
    profile.validate("(ring bench profile)")?;
    profile.ring.io_backend = match args.backend.as_str() {
        "auto" => BackendChoice::Auto,
        "uring" => BackendChoice::Uring,
        "fallback" => BackendChoice::Fallback,
        other => return Err(format!("unknown backend {other:?}: auto, uring or fallback").into()),
    };
    let profile_path = dir.join("profile.toml");
    std::fs::write(&profile_path, profile.to_toml())?;
    let udp = free_ports(
        3,
        || std::net::UdpSocket::bind("127.0.0.1:0"),
        |s| s.local_addr().map(|a| a.port()).unwrap_or(0),
    )?;
    let tcp = free_ports(
        3,
        || std::net::TcpListener::bind("127.0.0.1:0"),
        |s| s.local_addr().map(|a| a.port()).unwrap_or(0),
    )?;
    let mut config = format!(
        "me = \"d0\"\nprofile = \"{}\"\nstate_dir = \"{}\"\n",
        profile_path.display(),
        dir.join("state").display()
    );
    for i in 0..3 {
        let _ = write!(
            config,
            "\n[[daemons]]\nname = \"{}\"\naddress = \"127.0.0.1\"\nring_port = {}\nclient_port = {}\n",
            NAMES[i], udp[i], tcp[i]
        );
    }
    let config_path = dir.join("conclave.toml");
    std::fs::write(&config_path, config)?;
    let mut procs = Vec::new();
    let mut sockets = Vec::new();
    for name in NAMES {
        let socket = dir.join(format!("{name}.sock"));
        procs.push(crate::bench_common::spawn_daemon(
            Command::new(&bin),
            &config_path,
            name,
            &socket,
            "warn",
            Duration::from_secs(20),
        )?);
        sockets.push(socket);
    }
    let mut cluster = Cluster {
        procs,
        sockets,
        dir,
        backend: String::new(),
    };
    cluster.backend = probe(&cluster)?;
    Ok(cluster)
}

/// Checks that the ring orders (a probe group on every daemon sees all three members) and
/// returns the UDP backend the daemons report.
fn probe(cluster: &Cluster) -> AnyResult<String> {
    let mut conns = cluster
        .sockets
        .iter()
        .map(|s| Connection::connect(Address::Unix(s.clone())))
        .collect::<Result<Vec<_>, _>>()?;
    for c in &mut conns {
        c.join("ring-bench-probe")?;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    for c in &mut conns {
        loop {
            if Instant::now() > deadline {
                return Err("the ring did not order the probe joins within 20 s".into());
            }
            if let Some(Event::Membership { members, .. }) =
                c.receive(Duration::from_millis(200))?
                && members.len() == 3
            {
                break;
            }
        }
    }
    let status: serde_json::Value = serde_json::from_str(&conns[0].status()?)?;
    for c in conns {
        c.disconnect()?;
    }
    Ok(status["ring"]["backend"]
        .as_str()
        .unwrap_or("unknown")
        .to_owned())
}

/// The ring's traffic and repair counters of every daemon, as a markdown line each.
fn ring_counters(cluster: &Cluster) -> String {
    let keys = [
        "data_sent",
        "retransmissions",
        "token_retransmits",
        "tokens_sent",
        "dropped_oversize",
        "events_held_back",
        "send_dropped",
    ];
    let mut out = String::from("\nRing counters at the end (all runs):\n\n");
    for (name, socket) in NAMES.iter().zip(&cluster.sockets) {
        let Ok(mut c) = Connection::connect(Address::Unix(socket.clone())) else {
            return String::new();
        };
        let Ok(Ok(v)) = c
            .status()
            .map(|s| serde_json::from_str::<serde_json::Value>(&s))
        else {
            return String::new();
        };
        let _ = c.disconnect();
        let counters = &v["ring"]["counters"];
        let parts: Vec<String> = keys
            .iter()
            .map(|k| format!("{k} {}", counters[*k].as_u64().unwrap_or(0)))
            .collect();
        let _ = writeln!(out, "- {name}: {}", parts.join(", "));
    }
    out
}

/// What one receiver measured in one run.
#[derive(Debug, Clone, Default)]
struct Received {
    messages: u64,
    bytes: u64,
    seconds: f64,
    missing: u64,
    out_of_order: u64,
    p50_us: f64,
    p99_us: f64,
}

impl Received {
    fn msgs_per_s(&self) -> f64 {
        if self.seconds > 0.0 {
            self.messages as f64 / self.seconds
        } else {
            0.0
        }
    }

    fn mb_per_s(&self) -> f64 {
        if self.seconds > 0.0 {
            self.bytes as f64 / self.seconds / 1e6
        } else {
            0.0
        }
    }
}

fn receiver(
    socket: PathBuf,
    group: String,
    expect: u64,
    timeout: Duration,
    ready: mpsc::Sender<()>,
) -> AnyResult<Received> {
    let deadline = Instant::now() + timeout;
    let mut conn = Connection::connect(Address::Unix(socket))?;
    conn.set_socket_buffers(4 << 20, 4 << 20)?;
    conn.join(&group)?;
    let me = conn.private_name().to_owned();
    loop {
        if Instant::now() > deadline {
            return Err("timed out waiting for the receiver's join".into());
        }
        if let Some(Event::Membership { members, .. }) = conn.receive(Duration::from_millis(200))?
            && members.contains(&me)
        {
            break;
        }
    }
    let _ = ready.send(());
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    let mut next: HashMap<String, u64> = HashMap::new();
    let (mut got, mut bytes, mut out_of_order) = (0u64, 0u64, 0u64);
    let mut first: Option<Instant> = None;
    let mut last = Instant::now();
    let idle = Duration::from_secs(10);
    while got < expect {
        let now = Instant::now();
        if now > deadline || first.is_some_and(|_| now.duration_since(last) > idle) {
            break;
        }
        let n = conn.receive_frames(Duration::from_millis(200), |frame| {
            if let DaemonFrame::Data {
                sender,
                msg_type: flood::MSG_DATA,
                payload,
                ..
            } = frame
            {
                got += 1;
                bytes += payload.len() as u64;
                if let Some((seq, at)) = flood::read_stamp(payload) {
                    let _ = hist.record(flood::now_ns().saturating_sub(at).max(1));
                    match next.get_mut(*sender) {
                        Some(n) => {
                            if *n != seq {
                                out_of_order += 1;
                            }
                            *n = seq + 1;
                        }
                        None => {
                            if seq != 0 {
                                out_of_order += 1;
                            }
                            next.insert((*sender).to_owned(), seq + 1);
                        }
                    }
                }
            }
        })?;
        if n > 0 {
            last = Instant::now();
            first.get_or_insert(last);
        }
    }
    let _ = conn.disconnect();
    let seconds = first
        .map(|f| last.duration_since(f).as_secs_f64())
        .unwrap_or(0.0);
    let (p50_us, p99_us) = if hist.is_empty() {
        (0.0, 0.0)
    } else {
        (
            hist.value_at_quantile(0.5) as f64 / 1000.0,
            hist.value_at_quantile(0.99) as f64 / 1000.0,
        )
    };
    Ok(Received {
        messages: got,
        bytes,
        seconds,
        missing: expect.saturating_sub(got),
        out_of_order,
        p50_us,
        p99_us,
    })
}

fn sender(
    socket: PathBuf,
    group: String,
    service: Service,
    size: usize,
    count: u64,
    rate: f64,
) -> AnyResult<()> {
    let mut conn = Connection::connect(Address::Unix(socket))?;
    conn.set_socket_buffers(4 << 20, 4 << 20)?;
    let groups = [group.as_str()];
    let mut payload = vec![0x5au8; size.max(flood::STAMP_LEN)];
    payload.truncate(size.max(flood::STAMP_LEN));
    let pace = (rate > 0.0).then(|| Duration::from_secs_f64(1.0 / rate));
    let start = Instant::now();
    for seq in 0..count {
        flood::stamp(&mut payload, seq, flood::now_ns());
        conn.multicast_buffered(service, &groups, flood::MSG_DATA, &payload)?;
        if let Some(pace) = pace {
            let due = start + pace.mul_f64((seq + 1) as f64);
            let now = Instant::now();
            if now < due {
                conn.flush()?;
                std::thread::sleep(due - now);
            }
        }
    }
    conn.flush()?;
    conn.disconnect()?;
    Ok(())
}

struct Run {
    receivers: Vec<Received>,
}

#[allow(clippy::too_many_arguments)]
fn run_once(
    cluster: &Cluster,
    run_no: u32,
    service: Service,
    senders: usize,
    size: usize,
    count: u64,
    rate: u64,
    timeout: Duration,
) -> AnyResult<Run> {
    let group = format!("ring-{}-{run_no}", std::process::id());
    let per_sender = count / senders as u64;
    let expect = per_sender * senders as u64;
    let (ready_tx, ready_rx) = mpsc::channel();
    let receivers: Vec<_> = cluster
        .sockets
        .iter()
        .map(|s| {
            let (s, g, r) = (s.clone(), group.clone(), ready_tx.clone());
            std::thread::spawn(move || receiver(s, g, expect, timeout, r))
        })
        .collect();
    for _ in 0..receivers.len() {
        ready_rx
            .recv_timeout(Duration::from_secs(20))
            .map_err(|_| "a receiver did not get ready")?;
    }
    let rate_each = rate as f64 / senders as f64;
    let senders: Vec<_> = cluster.sockets[..senders]
        .iter()
        .map(|s| {
            let (s, g) = (s.clone(), group.clone());
            std::thread::spawn(move || sender(s, g, service, size, per_sender, rate_each))
        })
        .collect();
    for s in senders {
        s.join().map_err(|_| "a sender panicked")??;
    }
    let mut out = Vec::new();
    for r in receivers {
        out.push(r.join().map_err(|_| "a receiver panicked")??);
    }
    Ok(Run { receivers: out })
}

fn default_count(size: usize) -> u64 {
    match size {
        0..=256 => 300_000,
        257..=2048 => 150_000,
        _ => 40_000,
    }
}

struct Row {
    service: &'static str,
    senders: usize,
    size: usize,
    msgs: Vec<f64>,
    mbs: Vec<f64>,
    slowest: Vec<f64>,
    p50: Vec<f64>,
    p99: Vec<f64>,
    missing: u64,
    out_of_order: u64,
}

impl Row {
    fn label(&self) -> String {
        format!("{} x{}", self.service, self.senders)
    }
}

/// Runs the benchmark; prints the table and writes `ring.{md,csv,svg}`.
pub fn run(args: RingBench) -> AnyResult<()> {
    let out_dir = match &args.out {
        Some(d) => d.clone(),
        None => std::env::current_exe()?
            .parent()
            .and_then(Path::parent)
            .map(|t| t.join("bench"))
            .unwrap_or_else(|| PathBuf::from("bench")),
    };
    std::fs::create_dir_all(&out_dir)?;
    for &s in &args.senders {
        if !(1..=3).contains(&s) {
            return Err(format!("--senders {s}: 1 to 3 (one per daemon)").into());
        }
    }
    let services = args
        .services
        .iter()
        .map(|s| Service::from_name(s).ok_or_else(|| format!("unknown service {s:?}")))
        .collect::<Result<Vec<_>, _>>()?;
    let cluster = start_cluster(&args)?;
    eprintln!(
        "3 daemons up, ring ordering, UDP backend {}",
        cluster.backend
    );
    let timeout = Duration::from_secs(args.run_timeout);
    let mut csv = String::from(
        "service,senders,size,repeat,receiver,messages,seconds,msgs_per_s,mb_per_s,missing,out_of_order,p50_us,p99_us\n",
    );
    let mut rows = Vec::new();
    let mut run_no = 0;
    for &service in &services {
        for &senders in &args.senders {
            for &size in &args.sizes {
                let count = args.count.unwrap_or_else(|| default_count(size));
                let mut row = Row {
                    service: service.name(),
                    senders,
                    size,
                    msgs: vec![],
                    mbs: vec![],
                    slowest: vec![],
                    p50: vec![],
                    p99: vec![],
                    missing: 0,
                    out_of_order: 0,
                };
                for rep in 0..args.repeats {
                    run_no += 1;
                    let run = run_once(
                        &cluster, run_no, service, senders, size, count, args.rate, timeout,
                    )?;
                    let n = run.receivers.len() as f64;
                    let mean =
                        |f: fn(&Received) -> f64| run.receivers.iter().map(f).sum::<f64>() / n;
                    let slowest = run
                        .receivers
                        .iter()
                        .map(Received::msgs_per_s)
                        .fold(f64::MAX, f64::min);
                    for (i, r) in run.receivers.iter().enumerate() {
                        let _ = writeln!(
                            csv,
                            "{},{senders},{size},{rep},{},{},{:.6},{:.1},{:.2},{},{},{:.1},{:.1}",
                            service.name(),
                            NAMES[i],
                            r.messages,
                            r.seconds,
                            r.msgs_per_s(),
                            r.mb_per_s(),
                            r.missing,
                            r.out_of_order,
                            r.p50_us,
                            r.p99_us
                        );
                        row.missing += r.missing;
                        row.out_of_order += r.out_of_order;
                    }
                    let (m, mb) = (mean(Received::msgs_per_s), mean(Received::mb_per_s));
                    eprintln!(
                        "  {} {senders} sender(s) {size} B: {m:.0} msgs/s, {mb:.1} MB/s per receiver (slowest {slowest:.0}), p50 {:.0} us, p99 {:.0} us",
                        service.name(),
                        mean(|r| r.p50_us),
                        mean(|r| r.p99_us)
                    );
                    row.msgs.push(m);
                    row.mbs.push(mb);
                    row.slowest.push(slowest);
                    row.p50.push(mean(|r| r.p50_us));
                    row.p99.push(mean(|r| r.p99_us));
                }
                rows.push(row);
            }
        }
    }
    let backend = cluster.backend.clone();
    let ring_counters = ring_counters(&cluster);
    drop(cluster);

    let mut table = format!(
        "Ring, 3 daemons on 127.0.0.1 (UDP backend {backend}, profile {}{}), a receiver on every daemon; median (min-max) of {} runs of the mean over the three receivers{}\n\n\
         | service | senders | size (B) | msgs/s per receiver | MB/s per receiver | slowest receiver msgs/s | p50 latency (us) | p99 latency (us) | lost | out of order |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        args.profile,
        args.max_datagram
            .map(|m| format!(", max datagram {m} B"))
            .unwrap_or_default(),
        args.repeats,
        if args.rate > 0 {
            format!("; senders paced to {} msgs/s in all", args.rate)
        } else {
            String::new()
        }
    );
    for r in &rows {
        let _ = writeln!(
            table,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.service,
            r.senders,
            r.size,
            fmt_range(&r.msgs, 1.0, 0),
            fmt_range(&r.mbs, 1.0, 1),
            fmt_range(&r.slowest, 1.0, 0),
            fmt_range(&r.p50, 1.0, 0),
            fmt_range(&r.p99, 1.0, 0),
            r.missing,
            r.out_of_order
        );
    }
    println!("{table}");
    if !ring_counters.is_empty() {
        table.push_str(&ring_counters);
        println!("{ring_counters}");
    }
    let (csv_path, svg_path, md_path) = (
        out_dir.join("ring.csv"),
        out_dir.join("ring.svg"),
        out_dir.join("ring.md"),
    );
    std::fs::write(&csv_path, csv)?;
    let points: Vec<PlotPoint<'_>> = rows
        .iter()
        .map(|r| PlotPoint {
            series: format!("{} sender(s)", r.label()),
            size: r.size,
            msgs: &r.msgs,
            mbs: &r.mbs,
        })
        .collect();
    let svg = throughput_svg(
        &points,
        "messages/s per receiver (thousands)",
        "MB/s per receiver",
    );
    std::fs::write(&svg_path, svg)?;
    std::fs::write(&md_path, &table)?;
    println!(
        "wrote {}, {} and {}",
        csv_path.display(),
        svg_path.display(),
        md_path.display()
    );
    let bad: u64 = rows.iter().map(|r| r.missing + r.out_of_order).sum();
    if bad > 0 {
        return Err(format!("{bad} messages lost or out of order").into());
    }
    Ok(())
}
