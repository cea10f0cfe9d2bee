//! `conclave-bench membership`: how fast daemon membership reacts, with real `conclaved`
//! processes on this machine.
//!
//! 1. **kill -9 to the new view**: three daemons `d0`, `d1`, `d2` on 127.0.0.1, a client on
//!    each in group `g`; `d2` is killed with SIGKILL and the clock runs until both
//!    survivors' clients hold the regular view without `d2`'s client. Once per profile, each
//!    run with fresh daemons.
//! 2. **heal to the merged view**: the same three daemons, each in its own network
//!    namespace (see [`crate::netns`]); `d2` is cut off, both sides re-form, then the cut
//!    is mended and the clock runs until every client holds the view of three. Needs root;
//!    otherwise the figure is reported as skipped, with the reason.
//! 3. **join latency**: three daemons, a member of group `j` on each; a fourth client
//!    joins and leaves `j` over and over. Each join is timed from the request to the last of
//!    the four clients receiving the view that lists the joiner (p50/p99 by HdrHistogram).
//! 4. **false membership changes**: one sender and one receiver per daemon flood 1 KiB
//!    AGREED messages flat out for `--flood-secs`; nothing is killed, so every membership
//!    run or configuration installed meanwhile (from the daemons' status counters) is a
//!    false alarm.
//! 5. **ring throughput**: `conclave-bench ring` at 1 KiB AGREED, with membership in place.
//!
//! The table (markdown, with the command line that reproduces it), a CSV of every run and
//! an SVG of the kill and heal times per profile go to the output directory.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use conclave::{Address, Connection, DaemonFrame, Event, Service, ViewKind};
use conclave_engine::config::Profile;
use conclave_engine::io::BackendChoice;
use hdrhistogram::Histogram;

use crate::bench_common::{RangePoint, Reaped, fmt_range, range_svg};
use crate::netns::Netns;
use crate::ring_bench::{self, RingBench};

type AnyResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Options of `conclave-bench membership`.
#[derive(Debug, Clone, clap::Args)]
pub struct MembershipBench {
    /// Runs of each timed figure (kill and heal, per profile); medians and ranges over them.
    #[arg(long, short = 'n', default_value_t = 5)]
    pub runs: usize,
    /// Profiles for the kill and heal figures, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "default,low-latency")]
    pub profiles: Vec<String>,
    /// Joins (each followed by a leave) timed for the join latency.
    #[arg(long, default_value_t = 1000)]
    pub joins: u64,
    /// Seconds of the full-speed flood that counts false membership changes.
    #[arg(long, default_value_t = 60)]
    pub flood_secs: u64,
    /// Payload bytes of the flood.
    #[arg(long, default_value_t = 1024)]
    pub flood_size: usize,
    /// Repeats of the ring throughput run (`conclave-bench ring` at 1 KiB AGREED).
    #[arg(long, default_value_t = 3)]
    pub ring_repeats: usize,
    /// Profile of the ring throughput run (the README's ring figures use `throughput`).
    #[arg(long, default_value = "default")]
    pub ring_profile: String,
    /// Largest ring datagram of the ring throughput run, replacing the profile's (the
    /// README's ring figures use 65000 on loopback).
    #[arg(long)]
    pub ring_max_datagram: Option<usize>,
    /// Parts to leave out, comma separated: kill, heal, join, flood, ring.
    #[arg(long, value_delimiter = ',')]
    pub skip: Vec<String>,
    /// UDP backend between the daemons: auto, uring or fallback.
    #[arg(long, default_value = "auto")]
    pub backend: String,
    /// Output directory for the CSV, SVG and markdown (default: target/bench).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

const NAMES: [&str; 3] = ["d0", "d1", "d2"];
/// The longest any one awaited event may take before the run is abandoned.
const WAIT: Duration = Duration::from_secs(20);

/// Three daemons of one generated configuration, on loopback or each in a namespace.
/// Fields drop in order: the daemons stop before the namespaces go and the files are
/// removed.
struct Trio {
    procs: Vec<Option<Reaped>>,
    sockets: Vec<PathBuf>,
    net: Option<Netns>,
    dir: PathBuf,
}

impl Drop for Trio {
    fn drop(&mut self) {
        self.procs.clear();
        // A namespace that still held a daemon would linger; the daemons are gone now.
        self.net = None;
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

/// The named profile as the bench runs it: no worker pinning (three daemons and the
/// clients share this machine), the chosen UDP backend.
fn bench_profile(name: &str, backend: &str) -> AnyResult<Profile> {
    let mut profile = Profile::by_name(name)?;
    profile.pin_workers = false;
    profile.ring.io_backend = match backend {
        "auto" => BackendChoice::Auto,
        "uring" => BackendChoice::Uring,
        "fallback" => BackendChoice::Fallback,
        other => return Err(format!("unknown backend {other:?}: auto, uring or fallback").into()),
    };
    profile.validate("(membership bench profile)")?;
    Ok(profile)
}

/// A fresh directory for one cluster; runs never share state (a run counter carried over
/// would make no difference, but a stale socket file would).
fn run_dir(tag: &str) -> AnyResult<PathBuf> {
    static RUN: AtomicU64 = AtomicU64::new(0);
    let n = RUN.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!(
        "conclave-membership-bench-{}-{tag}-{n}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Starts `d0`..`d2` with `profile`: on 127.0.0.1, or in `net`'s namespaces when given.
fn start_trio(profile: &Profile, net: Option<Netns>, tag: &str) -> AnyResult<Trio> {
    let bin = crate::sibling_binary("conclaved")?;
    let dir = run_dir(tag)?;
    let mut trio = Trio {
        procs: Vec::new(),
        sockets: Vec::new(),
        net,
        dir: dir.clone(),
    };
    let profile_path = dir.join("profile.toml");
    std::fs::write(&profile_path, profile.to_toml())?;
    let (addrs, udp, tcp): (Vec<String>, Vec<u16>, Vec<u16>) = match &trio.net {
        // Each namespace has its own address and port space: the same ports everywhere.
        Some(n) => (
            (0..3).map(|i| n.addr(i).to_string()).collect(),
            vec![4803; 3],
            vec![4804; 3],
        ),
        None => (
            vec!["127.0.0.1".to_owned(); 3],
            free_ports(
                3,
                || std::net::UdpSocket::bind("127.0.0.1:0"),
                |s| s.local_addr().map(|a| a.port()).unwrap_or(0),
            )?,
            free_ports(
                3,
                || std::net::TcpListener::bind("127.0.0.1:0"),
                |s| s.local_addr().map(|a| a.port()).unwrap_or(0),
            )?,
        ),
    };
    let mut config = format!(
        "me = \"d0\"\nprofile = \"{}\"\nstate_dir = \"{}\"\n",
        profile_path.display(),
        dir.join("state").display()
    );
    for i in 0..3 {
        let _ = write!(
            config,
            "\n[[daemons]]\nname = \"{}\"\naddress = \"{}\"\nring_port = {}\nclient_port = {}\n",
            NAMES[i], addrs[i], udp[i], tcp[i]
        );
    }
    let config_path = dir.join("conclave.toml");
    std::fs::write(&config_path, config)?;
    for (i, name) in NAMES.iter().enumerate() {
        let socket = dir.join(format!("{name}.sock"));
        let cmd = match &trio.net {
            Some(n) => n.command(i, &bin),
            None => Command::new(&bin),
        };
        // The daemons' warnings about the very failures this bench causes would drown
        // the results.
        let child =
            crate::bench_common::spawn_daemon(cmd, &config_path, name, &socket, "error", WAIT)?;
        trio.procs.push(Some(child));
        trio.sockets.push(socket);
    }
    Ok(trio)
}

impl Trio {
    fn client(&self, i: usize, name: &str) -> AnyResult<Connection> {
        let mut c = Connection::connect_as(Address::Unix(self.sockets[i].clone()), name)?;
        c.set_socket_buffers(4 << 20, 4 << 20)?;
        Ok(c)
    }

    /// SIGKILL to daemon `i` (no goodbyes), reaped at once.
    fn kill9(&mut self, i: usize) {
        if let Some(Some(mut p)) = self.procs.get_mut(i).map(Option::take) {
            let _ = p.0.kill();
            let _ = p.0.wait();
        }
    }

    /// The ring counters of daemon `i` (`membership_runs`, ...) and its membership state.
    fn counters(&self, i: usize) -> AnyResult<(BTreeMap<String, u64>, String)> {
        let mut c = Connection::connect(Address::Unix(self.sockets[i].clone()))?;
        let v: serde_json::Value = serde_json::from_str(&c.status()?)?;
        let _ = c.disconnect();
        let mut out = BTreeMap::new();
        if let Some(m) = v["ring"]["counters"].as_object() {
            for (k, n) in m {
                if let Some(n) = n.as_u64() {
                    out.insert(k.clone(), n);
                }
            }
        }
        let state = v["ring"]["membership"]
            .as_str()
            .unwrap_or("unknown")
            .to_owned();
        Ok((out, state))
    }
}

/// Receives on `c` until a regular view of group `g` has exactly `n` members; returns when
/// it arrived.
fn await_regular(c: &mut Connection, group: &str, n: usize) -> AnyResult<Instant> {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "{}: no regular view of {group} with {n} members within {WAIT:?}",
                c.private_name()
            )
            .into());
        }
        if let Some(Event::Membership {
            group: g,
            kind: ViewKind::Regular,
            members,
            ..
        }) = c.receive(left.min(Duration::from_millis(100)))?
            && g == group
            && members.len() == n
        {
            return Ok(Instant::now());
        }
    }
}

/// Waits on every client (each on its own thread, so that each arrival is stamped when
/// it happens) for a regular view of `g` with `want[i]` members; returns the clients and
/// the latest arrival.
fn await_all(clients: Vec<Connection>, want: &[usize]) -> AnyResult<(Vec<Connection>, Instant)> {
    let handles: Vec<_> = clients
        .into_iter()
        .zip(want.iter().copied())
        .map(|(mut c, n)| {
            std::thread::spawn(move || -> AnyResult<(Connection, Instant)> {
                let at = await_regular(&mut c, "g", n)?;
                Ok((c, at))
            })
        })
        .collect();
    let mut out = Vec::new();
    let mut last: Option<Instant> = None;
    for h in handles {
        let (c, at) = h.join().map_err(|_| "a client thread panicked")??;
        last = Some(last.map_or(at, |l| l.max(at)));
        out.push(c);
    }
    Ok((out, last.ok_or("no clients")?))
}

/// Three clients, one per daemon, joined to `g` and holding the view of three.
fn trio_clients(trio: &Trio) -> AnyResult<Vec<Connection>> {
    let mut clients = (0..3)
        .map(|i| trio.client(i, &format!("c{i}")))
        .collect::<AnyResult<Vec<_>>>()?;
    for c in &mut clients {
        c.join("g")?;
    }
    let (clients, _) = await_all(clients, &[3, 3, 3])?;
    Ok(clients)
}

/// Figure 1, one run: milliseconds from SIGKILL of `d2` to both survivors' clients
/// holding the regular view of two.
fn kill_once(profile: &Profile) -> AnyResult<f64> {
    let mut trio = start_trio(profile, None, "kill")?;
    let mut clients = trio_clients(&trio)?;
    let victim_client = clients.pop();
    let killed = Instant::now();
    trio.kill9(2);
    let (_clients, last) = await_all(clients, &[2, 2])?;
    drop(victim_client);
    Ok(last.duration_since(killed).as_secs_f64() * 1e3)
}

/// Figure 2, one run: milliseconds from mending a partition of {d0, d1} | {d2} to every
/// client holding the merged view of three. `Err` with a message starting `skipped:` when
/// namespaces are not available here.
fn heal_once(profile: &Profile) -> AnyResult<f64> {
    let net = Netns::create("b", 3).map_err(|why| format!("skipped: {why}"))?;
    let trio = start_trio(profile, Some(net), "heal")?;
    let net = trio.net.as_ref().ok_or("no namespaces")?;
    let clients = trio_clients(&trio)?;
    net.cut(&[2])?;
    let (clients, _) = await_all(clients, &[2, 2, 1])?;
    let healed = Instant::now();
    net.heal()?;
    let (_clients, last) = await_all(clients, &[3, 3, 3])?;
    Ok(last.duration_since(healed).as_secs_f64() * 1e3)
}

/// Join latency at three daemons.
struct JoinFigures {
    joins: u64,
    p50_us: f64,
    p99_us: f64,
    max_us: f64,
    leave_p50_us: f64,
    leave_p99_us: f64,
}

/// Figure 3: a member of `j` on each daemon (each on a thread that stamps every view it
/// receives), and a joiner on `d0` that joins and leaves `joins` times.
fn join_latency(profile: &Profile, joins: u64) -> AnyResult<JoinFigures> {
    let trio = start_trio(profile, None, "join")?;
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel::<(usize, Instant)>();
    let mut members = Vec::new();
    for i in 0..3 {
        let mut c = trio.client(i, &format!("m{i}"))?;
        c.join("j")?;
        await_regular(&mut c, "j", i + 1)?;
        members.push(c);
    }
    // Every member has seen the view of three once the last joiner has.
    let handles: Vec<_> = members
        .into_iter()
        .map(|mut c| {
            let (tx, stop) = (tx.clone(), stop.clone());
            std::thread::spawn(move || -> AnyResult<()> {
                while !stop.load(Ordering::Relaxed) {
                    if let Some(Event::Membership {
                        group,
                        kind: ViewKind::Regular,
                        members,
                        ..
                    }) = c.receive(Duration::from_millis(50))?
                        && group == "j"
                    {
                        let _ = tx.send((members.len(), Instant::now()));
                    }
                }
                Ok(())
            })
        })
        .collect();
    let mut joiner = trio.client(0, "joiner")?;
    let mut join_hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut leave_hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    // Views of three that are still in flight from the setup are not join arrivals.
    while rx.recv_timeout(Duration::from_millis(300)).is_ok() {}
    let result = (|| -> AnyResult<()> {
        for _ in 0..joins {
            for (op, want, hist) in [(true, 4, &mut join_hist), (false, 3, &mut leave_hist)] {
                let start = Instant::now();
                if op {
                    joiner.join("j")?;
                    // The joiner's own view counts as one of the four arrivals.
                    let own = await_regular(&mut joiner, "j", 4)?;
                    let mut last = own;
                    wait_views(&rx, want, 3, &mut last)?;
                    let _ = hist.record(micros(last.duration_since(start)));
                } else {
                    joiner.leave("j")?;
                    joiner.flush()?;
                    let mut last = start;
                    wait_views(&rx, want, 3, &mut last)?;
                    let _ = hist.record(micros(last.duration_since(start)));
                }
            }
        }
        Ok(())
    })();
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.join().map_err(|_| "a member thread panicked")??;
    }
    result?;
    let q = |h: &Histogram<u64>, p: f64| h.value_at_quantile(p) as f64;
    Ok(JoinFigures {
        joins,
        p50_us: q(&join_hist, 0.5),
        p99_us: q(&join_hist, 0.99),
        max_us: join_hist.max() as f64,
        leave_p50_us: q(&leave_hist, 0.5),
        leave_p99_us: q(&leave_hist, 0.99),
    })
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// Takes `count` stamps of views with `size` members from the member threads, moving
/// `last` to the latest.
fn wait_views(
    rx: &mpsc::Receiver<(usize, Instant)>,
    size: usize,
    count: usize,
    last: &mut Instant,
) -> AnyResult<()> {
    let mut got = 0;
    let deadline = Instant::now() + WAIT;
    while got < count {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((n, at)) if n == size => {
                got += 1;
                *last = (*last).max(at);
            }
            Ok(_) => {}
            Err(_) => {
                return Err(format!("only {got} of {count} members saw a view of {size}").into());
            }
        }
    }
    Ok(())
}

/// Figure 4: what the flood did to the membership counters.
struct FloodFigures {
    secs: u64,
    delivered_per_s: f64,
    /// Per daemon: (name, membership runs, configurations installed, token losses) during
    /// the flood.
    deltas: Vec<(String, u64, u64, u64)>,
    states: Vec<String>,
}

impl FloodFigures {
    fn false_changes(&self) -> u64 {
        self.deltas
            .iter()
            .map(|(_, runs, installs, _)| (*runs).max(*installs))
            .max()
            .unwrap_or(0)
    }
}

/// Figure 4: a sender and a receiver on every daemon, 1 KiB AGREED flat out for `secs`.
fn flood(profile: &Profile, secs: u64, size: usize) -> AnyResult<FloodFigures> {
    let trio = start_trio(profile, None, "flood")?;
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = mpsc::channel();
    let receivers: Vec<_> = trio
        .sockets
        .iter()
        .map(|s| {
            let (s, stop, ready) = (s.clone(), stop.clone(), ready_tx.clone());
            std::thread::spawn(move || -> AnyResult<u64> {
                let mut c = Connection::connect(Address::Unix(s))?;
                c.set_socket_buffers(4 << 20, 4 << 20)?;
                c.join("flood")?;
                await_regular(&mut c, "flood", 3)?;
                let _ = ready.send(());
                let mut got = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    c.receive_frames(Duration::from_millis(50), |f| {
                        if let DaemonFrame::Data { .. } = f {
                            got += 1;
                        }
                    })?;
                }
                Ok(got)
            })
        })
        .collect();
    for _ in 0..3 {
        ready_rx
            .recv_timeout(WAIT)
            .map_err(|_| "a flood receiver did not get ready")?;
    }
    // Read only now: the receivers' view of three proves that the first configuration is
    // installed, so the start-up membership run is not counted as a false change.
    let before = (0..3)
        .map(|i| trio.counters(i))
        .collect::<AnyResult<Vec<_>>>()?;
    if let Some((_, state)) = before.iter().find(|(_, s)| s != "operational") {
        return Err(format!("the flood would start in membership state {state}").into());
    }
    let started = Instant::now();
    let end = started + Duration::from_secs(secs);
    let senders: Vec<_> = trio
        .sockets
        .iter()
        .map(|s| {
            let s = s.clone();
            std::thread::spawn(move || -> AnyResult<()> {
                let mut c = Connection::connect(Address::Unix(s))?;
                c.set_socket_buffers(4 << 20, 4 << 20)?;
                let payload = vec![0x5au8; size];
                while Instant::now() < end {
                    // A batch between clock reads: the clock is not free.
                    for _ in 0..64 {
                        c.multicast_buffered(Service::Agreed, &["flood"], 1, &payload)?;
                    }
                }
                c.flush()?;
                Ok(())
            })
        })
        .collect();
    for s in senders {
        s.join().map_err(|_| "a flood sender panicked")??;
    }
    // What is still queued drains for a moment; the counters are read after it.
    std::thread::sleep(Duration::from_secs(1));
    let elapsed = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let mut delivered = 0u64;
    for r in receivers {
        delivered += r.join().map_err(|_| "a flood receiver panicked")??;
    }
    let after = (0..3)
        .map(|i| trio.counters(i))
        .collect::<AnyResult<Vec<_>>>()?;
    let delta = |i: usize, k: &str| {
        let a = after[i].0.get(k).copied().unwrap_or(0);
        let b = before[i].0.get(k).copied().unwrap_or(0);
        a.saturating_sub(b)
    };
    Ok(FloodFigures {
        secs,
        delivered_per_s: delivered as f64 / 3.0 / elapsed,
        deltas: (0..3)
            .map(|i| {
                (
                    NAMES[i].to_owned(),
                    delta(i, "membership_runs"),
                    delta(i, "configurations_installed"),
                    delta(i, "token_losses"),
                )
            })
            .collect(),
        states: after.into_iter().map(|(_, s)| s).collect(),
    })
}

/// Figure 5: `conclave-bench ring` at 1 KiB AGREED with 1 and 3 senders; returns, per
/// sender count, the per-repeat mean msgs/s per receiver, read back from its CSV.
fn ring_throughput(args: &MembershipBench, out: &Path) -> AnyResult<Vec<(usize, Vec<f64>)>> {
    let dir = out.join("membership-ring");
    let ring = RingBench {
        sizes: vec![1024],
        services: vec!["agreed".into()],
        senders: vec![1, 3],
        repeats: args.ring_repeats,
        count: None,
        profile: args.ring_profile.clone(),
        max_datagram: args.ring_max_datagram,
        backend: args.backend.clone(),
        rate: 0,
        out: Some(dir.clone()),
        run_timeout: 120,
    };
    ring_bench::run(ring)?;
    let csv = std::fs::read_to_string(dir.join("ring.csv"))?;
    // service,senders,size,repeat,receiver,messages,seconds,msgs_per_s,...
    let mut per: BTreeMap<(usize, usize), Vec<f64>> = BTreeMap::new();
    for line in csv.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        let (Some(senders), Some(rep), Some(rate)) = (
            f.get(1).and_then(|s| s.parse().ok()),
            f.get(3).and_then(|s| s.parse().ok()),
            f.get(7).and_then(|s| s.parse::<f64>().ok()),
        ) else {
            continue;
        };
        per.entry((senders, rep)).or_default().push(rate);
    }
    let mut out: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
    for ((senders, _), v) in per {
        out.entry(senders)
            .or_default()
            .push(v.iter().sum::<f64>() / v.len().max(1) as f64);
    }
    Ok(out.into_iter().collect())
}

/// Runs the benchmark; prints the table and writes `membership.{md,csv,svg}`.
pub fn run(args: MembershipBench) -> AnyResult<()> {
    let out_dir = match &args.out {
        Some(d) => d.clone(),
        None => std::env::current_exe()?
            .parent()
            .and_then(Path::parent)
            .map(|t| t.join("bench"))
            .unwrap_or_else(|| PathBuf::from("bench")),
    };
    std::fs::create_dir_all(&out_dir)?;
    if args.runs == 0 {
        return Err("--runs must be at least 1".into());
    }
    for s in &args.skip {
        if !["kill", "heal", "join", "flood", "ring"].contains(&s.as_str()) {
            return Err(format!("--skip {s:?}: kill, heal, join, flood or ring").into());
        }
    }
    let part = |p: &str| !args.skip.iter().any(|s| s == p);
    let profiles = args
        .profiles
        .iter()
        .map(|p| Ok((p.clone(), bench_profile(p, &args.backend)?)))
        .collect::<AnyResult<Vec<_>>>()?;
    let command: Vec<String> = std::env::args_os()
        .map(|a: OsString| a.to_string_lossy().into_owned())
        .collect();
    let mut csv = String::from("figure,profile,run,value,unit\n");
    let mut kill: Vec<(String, u64, Vec<f64>)> = Vec::new();
    let mut heal: Vec<(String, Vec<f64>)> = Vec::new();
    let mut heal_skipped: Option<String> = None;

    for (name, profile) in &profiles {
        if part("kill") {
            let mut v = Vec::new();
            for run in 0..args.runs {
                let ms = kill_once(profile)?;
                eprintln!("  kill -9 -> new view, {name}, run {run}: {ms:.0} ms");
                let _ = writeln!(csv, "kill_to_view,{name},{run},{ms:.3},ms");
                v.push(ms);
            }
            kill.push((name.clone(), profile.ring.token_timeout_ms, v));
        }
        if part("heal") && heal_skipped.is_none() {
            let mut v = Vec::new();
            for run in 0..args.runs {
                match heal_once(profile) {
                    Ok(ms) => {
                        eprintln!("  heal -> merged view, {name}, run {run}: {ms:.0} ms");
                        let _ = writeln!(csv, "heal_to_view,{name},{run},{ms:.3},ms");
                        v.push(ms);
                    }
                    Err(e) if e.to_string().starts_with("skipped:") => {
                        eprintln!("  heal -> merged view: {e}");
                        heal_skipped = Some(e.to_string());
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
            if heal_skipped.is_none() {
                heal.push((name.clone(), v));
            }
        }
    }
    let default = bench_profile("default", &args.backend)?;
    let join = if part("join") {
        let j = join_latency(&default, args.joins)?;
        eprintln!(
            "  join -> all 4 members: p50 {:.0} us, p99 {:.0} us over {} joins",
            j.p50_us, j.p99_us, j.joins
        );
        let _ = writeln!(csv, "join_p50,default,0,{:.1},us", j.p50_us);
        let _ = writeln!(csv, "join_p99,default,0,{:.1},us", j.p99_us);
        let _ = writeln!(csv, "join_max,default,0,{:.1},us", j.max_us);
        let _ = writeln!(csv, "leave_p50,default,0,{:.1},us", j.leave_p50_us);
        let _ = writeln!(csv, "leave_p99,default,0,{:.1},us", j.leave_p99_us);
        Some(j)
    } else {
        None
    };
    let flood = if part("flood") {
        let f = flood(&default, args.flood_secs, args.flood_size)?;
        eprintln!(
            "  flood {} s: {:.0} msgs/s per receiver, false membership changes {}",
            f.secs,
            f.delivered_per_s,
            f.false_changes()
        );
        for (name, runs, installs, losses) in &f.deltas {
            let _ = writeln!(csv, "flood_membership_runs,{name},0,{runs},count");
            let _ = writeln!(
                csv,
                "flood_configurations_installed,{name},0,{installs},count"
            );
            let _ = writeln!(csv, "flood_token_losses,{name},0,{losses},count");
        }
        let _ = writeln!(
            csv,
            "flood_msgs_per_receiver,default,0,{:.1},msgs/s",
            f.delivered_per_s
        );
        Some(f)
    } else {
        None
    };
    let ring = if part("ring") {
        let r = ring_throughput(&args, &out_dir)?;
        for (senders, v) in &r {
            for (i, x) in v.iter().enumerate() {
                let _ = writeln!(
                    csv,
                    "ring_1k_agreed_x{senders},{},{i},{x:.1},msgs/s",
                    args.ring_profile
                );
            }
        }
        Some(r)
    } else {
        None
    };

    let table = render(
        &args,
        &command,
        &kill,
        &heal,
        heal_skipped.as_deref(),
        join.as_ref(),
        flood.as_ref(),
        ring.as_deref(),
    );
    println!("{table}");
    let (csv_path, svg_path, md_path) = (
        out_dir.join("membership.csv"),
        out_dir.join("membership.svg"),
        out_dir.join("membership.md"),
    );
    std::fs::write(&csv_path, csv)?;
    let mut points: Vec<RangePoint<'_>> = kill
        .iter()
        .map(|(name, _, v)| RangePoint {
            label: format!("kill -9, {name}"),
            values: v,
        })
        .collect();
    points.extend(heal.iter().map(|(name, v)| RangePoint {
        label: format!("heal, {name}"),
        values: v,
    }));
    let svg = range_svg(
        &points,
        "Daemon membership: event to new regular view at every client (ms)",
        &[
            (1000.0, "1 s target (default)"),
            (300.0, "300 ms (low-latency)"),
        ],
    );
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

/// The markdown table of every figure measured, with targets and the command line.
#[allow(clippy::too_many_arguments)]
fn render(
    args: &MembershipBench,
    command: &[String],
    kill: &[(String, u64, Vec<f64>)],
    heal: &[(String, Vec<f64>)],
    heal_skipped: Option<&str>,
    join: Option<&JoinFigures>,
    flood: Option<&FloodFigures>,
    ring: Option<&[(usize, Vec<f64>)]>,
) -> String {
    let mut t = format!(
        "Daemon membership, 3 daemons on this machine (UDP backend {}, worker pinning off); median (min-max) of {} runs\n\nReproduce: `{}`\n\n\
         | figure | profile | measured | target | met |\n|---|---|---:|---:|---|\n",
        args.backend,
        args.runs,
        command.join(" ")
    );
    for (name, token_ms, v) in kill {
        let target = if name == "low-latency" {
            Some(300.0)
        } else if name == "default" {
            Some(1000.0)
        } else {
            None
        };
        let met = match (target, crate::flood::median_min_max(v)) {
            (Some(t), Some((_, _, hi))) if hi <= t => format!("yes (all runs ≤ {t:.0} ms)"),
            (Some(t), Some((m, _, _))) if m <= t => "median only".to_owned(),
            (Some(_), Some(_)) => "no".to_owned(),
            _ => "-".to_owned(),
        };
        let _ = writeln!(
            t,
            "| kill -9 of 1 of 3 daemons → survivors' clients hold the new regular view (ms) | {name} (token timeout {token_ms} ms) | {} | {} | {met} |",
            fmt_range(v, 1.0, 0),
            target.map_or("-".into(), |x| format!("≤ {x:.0}"))
        );
    }
    for (name, v) in heal {
        let _ = writeln!(
            t,
            "| partition heal → merged view at all 3 clients (ms) | {name} | {} | - | - |",
            fmt_range(v, 1.0, 0)
        );
    }
    if let Some(why) = heal_skipped {
        let _ = writeln!(t, "| partition heal → merged view | - | {why} | - | - |");
    }
    if let Some(j) = join {
        let _ = writeln!(
            t,
            "| client join → view at all 4 members, p50 / p99 / max (µs), {} joins | default | {:.0} / {:.0} / {:.0} | p99 < 1000 | {} |",
            j.joins,
            j.p50_us,
            j.p99_us,
            j.max_us,
            if j.p99_us < 1000.0 { "yes" } else { "no" }
        );
        let _ = writeln!(
            t,
            "| client leave → view at the 3 members, p50 / p99 (µs) | default | {:.0} / {:.0} | - | - |",
            j.leave_p50_us, j.leave_p99_us
        );
    }
    if let Some(f) = flood {
        let per: Vec<String> = f
            .deltas
            .iter()
            .map(|(n, r, i, l)| format!("{n}: {r} runs, {i} installs, {l} token losses"))
            .collect();
        let n = f.false_changes();
        let _ = writeln!(
            t,
            "| false membership changes during a {} s flood of {} B AGREED, 3 senders ({:.0} msgs/s per receiver; {}; end states {}) | default | {n} | 0 | {} |",
            f.secs,
            args.flood_size,
            f.delivered_per_s,
            per.join("; "),
            f.states.join("/"),
            if n == 0 { "yes" } else { "no" }
        );
    }
    if let Some(r) = ring {
        for (senders, v) in r {
            let _ = writeln!(
                t,
                "| ring throughput, 1 KiB AGREED, {senders} sender(s), msgs/s per receiver ({} repeats) | {}{} | {} | - | - |",
                v.len(),
                args.ring_profile,
                args.ring_max_datagram
                    .map(|m| format!(", max datagram {m} B"))
                    .unwrap_or_default(),
                fmt_range(v, 1.0, 0)
            );
        }
    }
    t
}
