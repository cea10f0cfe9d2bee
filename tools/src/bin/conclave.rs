//! `conclave`: the interactive client (`user`), the flooder (`flood`) and `status`.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use conclave::{Connection, DaemonFrame, Event, Service, ViewId};
use conclave_tools::flood::{self, Latency, MSG_DATA, MSG_END, Report};
use conclave_tools::{exit, status_view};
use hdrhistogram::Histogram;
use rustix::event::{PollFd, PollFlags, Timespec, poll};

#[derive(Parser)]
#[command(
    name = "conclave",
    version,
    about = "Conclave client tools",
    after_help = exit::HELP
)]
struct Cli {
    /// Daemon address: unix:/path, /path or host:port (default: the Unix socket
    /// /tmp/conclave-4803.sock if it exists, else 127.0.0.1:4803).
    #[arg(long, global = true)]
    daemon: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Interactive client (like Spread's spuser); type `h` for help.
    User {
        /// Private name to ask for (default: the daemon picks one).
        #[arg(long, short)]
        name: Option<String>,
    },
    /// Send or receive a flood of messages and print the rates (and latency).
    Flood(FloodArgs),
    /// Start a daemon on the embedded default config (or, with --daemon, use that one)
    /// and walk three clients through a group's life: joins, messages, a private
    /// message, a disconnect, a leave, shutdown.
    Demo,
    /// The daemon's status as a summary: daemons, clients, groups with members, counters
    /// that are not zero (this tool's own connection left out).
    Status {
        /// The whole status document as pretty JSON (without this tool's connection).
        #[arg(long, conflicts_with = "raw")]
        json: bool,
        /// The JSON exactly as the daemon sent it (this tool's connection included).
        #[arg(long)]
        raw: bool,
    },
}

#[derive(Args)]
struct FloodArgs {
    #[command(subcommand)]
    mode: FloodMode,
}

#[derive(Args, Clone)]
struct FloodCommon {
    /// Group to flood.
    #[arg(long, short, default_value = "flood")]
    group: String,
    /// Data messages to send (or expect).
    #[arg(long, short = 'n', default_value_t = 100_000)]
    count: u64,
    /// Payload bytes per message.
    #[arg(long, short, default_value_t = 100)]
    size: usize,
    /// Service: unreliable, reliable, fifo, causal, agreed, safe.
    #[arg(long, default_value = "agreed", value_parser = parse_service)]
    service: Service,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 120.0)]
    timeout: f64,
    /// Print the report as one JSON line (for conclave-bench).
    #[arg(long)]
    json: bool,
    /// Socket send and receive buffer size to ask for, in bytes (0: the system default).
    #[arg(long, default_value_t = 0)]
    sock_buf: usize,
}

#[derive(Subcommand)]
enum FloodMode {
    /// Send `count` messages of `size` bytes, pipelined in large write batches.
    Send {
        #[command(flatten)]
        common: FloodCommon,
        /// Pace to this many messages per second (0: as fast as possible).
        #[arg(long, default_value_t = 0)]
        rate: u64,
        /// Also join the group and receive our own messages (reports latency).
        #[arg(long = "self")]
        self_receive: bool,
    },
    /// Join the group, print `flood receiver ready`, receive until the sender's end
    /// message (or `count` messages), and report rates and latency.
    Recv {
        #[command(flatten)]
        common: FloodCommon,
        /// Stop when nothing arrived for this many seconds after the first message.
        #[arg(long, default_value_t = 10.0)]
        idle: f64,
    },
}

fn parse_service(s: &str) -> Result<Service, String> {
    Service::from_name(s).ok_or_else(|| {
        format!("unknown service {s:?}: one of unreliable, reliable, fifo, causal, agreed, safe")
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let addr = match conclave_tools::address_or_default(cli.daemon.as_deref()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("conclave: {e}");
            return ExitCode::from(exit::USAGE);
        }
    };
    if matches!(cli.command, Command::Demo) {
        return demo(cli.daemon.is_some().then_some(&addr));
    }
    let result = match cli.command {
        Command::Demo => unreachable!("handled above"),
        Command::User { name } => user(&addr, name.as_deref().unwrap_or("")),
        Command::Status { json, raw } => status(&addr, json, raw),
        Command::Flood(FloodArgs { mode }) => match mode {
            FloodMode::Send {
                common,
                rate,
                self_receive,
            } => flood_send(&addr, &common, rate, self_receive),
            FloodMode::Recv { common, idle } => flood_recv(&addr, &common, idle),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("conclave: daemon {addr}: {e}");
            ExitCode::from(exit_code(e.as_ref()))
        }
    }
}

/// A command's outcome when it is not plain success or failure: the exit code to use
/// (docs/exit-codes.md) and what to say.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
struct Exit {
    code: u8,
    message: String,
}

impl Exit {
    fn failed(message: impl Into<String>) -> Box<dyn std::error::Error> {
        Box::new(Exit {
            code: exit::FAILED,
            message: message.into(),
        })
    }
}

/// The exit code for an error: the daemon gone or unreachable is LOST, any other
/// failure FAILED.
fn exit_code(e: &(dyn std::error::Error + 'static)) -> u8 {
    if let Some(x) = e.downcast_ref::<Exit>() {
        return x.code;
    }
    match e.downcast_ref::<conclave::Error>() {
        Some(conclave::Error::Io(_) | conclave::Error::Timeout(_)) => exit::LOST,
        Some(conclave::Error::Closed { reason }) if reason == CLOSED_WITHOUT_GOODBYE => exit::LOST,
        _ => exit::FAILED,
    }
}

/// The SDK's reason for a stream that ended without a goodbye.
const CLOSED_WITHOUT_GOODBYE: &str = "connection closed by the daemon";

/// `conclave demo`: it starts its own daemon unless `--daemon` names one to use.
fn demo(existing: Option<&conclave::Address>) -> ExitCode {
    let outcome = match existing {
        Some(_) => conclave_tools::demo::run(std::path::Path::new("conclaved"), existing)
            .map_err(|e| e.to_string()),
        None => conclave_tools::sibling_binary("conclaved")
            .map_err(|e| e.to_string())
            .and_then(|bin| conclave_tools::demo::run(&bin, None).map_err(|e| e.to_string())),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("conclave demo: {e}");
            ExitCode::from(exit::FAILED)
        }
    }
}

type AnyResult<T> = Result<T, Box<dyn std::error::Error>>;

fn status(addr: &conclave::Address, json: bool, raw: bool) -> AnyResult<()> {
    let mut conn = Connection::connect(addr)?;
    let text = conn.status()?;
    let me = conn.private_name().to_owned();
    conn.disconnect()?;
    if raw {
        println!("{text}");
        return Ok(());
    }
    let doc = status_view::without_client(serde_json::from_str(&text)?, &me);
    if json {
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        print!("{}", status_view::summary(&doc));
    }
    Ok(())
}

// ---------------------------------------------------------------- user

const USER_HELP: &str = "\
commands:
  j <group>                      join
  l <group>                      leave
  s <group>[,<group>...] <text>  send (agreed)
  s <service> <group>[,...] <text>  send with a service (unreliable..safe); a first
                                 word that looks like a misspelt service is refused
  p <#user#daemon> <text>        send to one client
  r                              receive what is waiting (1 s)
  m [group]                      show memberships
  t                              daemon status
  h                              this help
  q                              quit";

struct UserState {
    views: BTreeMap<String, (ViewId, Vec<String>)>,
    /// The daemon's goodbye, once it came.
    goodbye: Option<String>,
}

/// How an interactive session ends once the daemon closed it: 0 after the daemon's
/// shutdown goodbye (nothing went wrong here), FAILED after another goodbye (a slow
/// consumer), LOST when the stream just ended: the daemon crashed or was killed.
fn user_closed(state: &UserState, reason: &str) -> AnyResult<()> {
    match &state.goodbye {
        Some(g) if g.contains("shutting down") => {
            println!("\nthe daemon shut down: {g}");
            Ok(())
        }
        Some(g) => Err(Exit::failed(format!("the daemon disconnected us: {g}"))),
        None => Err(Box::new(Exit {
            code: exit::LOST,
            message: format!("connection lost without a goodbye ({reason}): did the daemon crash?"),
        })),
    }
}

fn user(addr: &conclave::Address, name: &str) -> AnyResult<()> {
    let mut state = UserState {
        views: BTreeMap::new(),
        goodbye: None,
    };
    match user_session(addr, name, &mut state) {
        Err(e) => match e.downcast_ref::<conclave::Error>() {
            Some(conclave::Error::Closed { reason }) => user_closed(&state, reason),
            _ => Err(e),
        },
        ok => ok,
    }
}

fn user_session(addr: &conclave::Address, name: &str, state: &mut UserState) -> AnyResult<()> {
    let mut conn = Connection::connect_as(addr, name)?;
    // A person types slower than any flush timeout: answer flush requests at once (what
    // was typed before is already sent).
    conn.set_auto_flush_ok(true);
    println!(
        "connected to {} ({}) as {}; h for help",
        conn.daemon_name(),
        addr,
        conn.private_name()
    );
    let stdin = io::stdin();
    let mut line_buf: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    prompt();
    loop {
        // Events already read (e.g. while waiting for a status) do not wake poll.
        while let Some(ev) = conn.receive(Duration::ZERO)? {
            show_event(state, ev);
        }
        let (stdin_ready, conn_ready) = {
            let mut fds = [
                PollFd::new(&stdin, PollFlags::IN),
                PollFd::from_borrowed_fd(conn.as_fd(), PollFlags::IN),
            ];
            let timeout = Timespec {
                tv_sec: 1,
                tv_nsec: 0,
            };
            match poll(&mut fds, Some(&timeout)) {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
            let stop = PollFlags::IN | PollFlags::HUP | PollFlags::ERR;
            (
                fds[0].revents().intersects(stop),
                fds[1].revents().intersects(stop),
            )
        };
        if conn_ready && let Some(ev) = conn.receive(Duration::from_millis(10))? {
            show_event(state, ev);
        }
        if stdin_ready {
            let n = stdin.lock().read(&mut chunk)?;
            if n == 0 {
                settle(&mut conn, state)?;
                if let Some(reason) = conn.closed_reason() {
                    return Err(conclave::Error::Closed {
                        reason: reason.to_owned(),
                    }
                    .into());
                }
                conn.disconnect()?;
                return Ok(());
            }
            line_buf.extend_from_slice(&chunk[..n]);
            while let Some(pos) = line_buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = line_buf.drain(..=pos).collect();
                let line = String::from_utf8_lossy(&line).trim().to_owned();
                // Show what already arrived first, so output follows input in order.
                while let Some(ev) = conn.receive(Duration::ZERO)? {
                    show_event(state, ev);
                }
                match user_command(&mut conn, state, &line) {
                    Ok(true) => {}
                    Ok(false) => {
                        settle(&mut conn, state)?;
                        conn.disconnect()?;
                        return Ok(());
                    }
                    Err(e @ conclave::Error::Closed { .. }) => return Err(e.into()),
                    Err(e) => println!("error: {e}"),
                }
                prompt();
            }
        }
    }
}

/// Shows what is still arriving (until 200 ms pass quietly, at most 2 s) before quitting,
/// so a scripted session sees the answers to its last commands.
fn settle(conn: &mut Connection, state: &mut UserState) -> conclave::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        match conn.receive(Duration::from_millis(200)) {
            Ok(Some(ev)) => show_event(state, ev),
            Ok(None) | Err(conclave::Error::Closed { .. }) => break,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn prompt() {
    print!("> ");
    let _ = io::stdout().flush();
}

/// Runs one command line; false means quit.
fn user_command(
    conn: &mut Connection,
    state: &mut UserState,
    line: &str,
) -> conclave::Result<bool> {
    let (cmd, rest) = line.split_once(' ').unwrap_or((line, ""));
    let rest = rest.trim();
    match cmd {
        "" => {}
        "j" => conn.join(rest)?,
        "l" => conn.leave(rest)?,
        "s" => {
            let (first, after) = rest.split_once(' ').unwrap_or((rest, ""));
            let (service, targets, text) = match Service::from_name(first) {
                Some(service) if !after.is_empty() => {
                    let (t, text) = after.split_once(' ').unwrap_or((after, ""));
                    (service, t, text)
                }
                _ => {
                    if !after.is_empty()
                        && let Some(meant) = near_service(first)
                    {
                        // `s saf chat x` means SAFE to chat far more often than AGREED
                        // to a group named saf: ask rather than guess.
                        println!(
                            "{first:?} is not a service; did you mean {meant}? Nothing sent. \
                             (To send to a group named {first:?}, name the service first: \
                             s agreed {first} ...)"
                        );
                        return Ok(true);
                    }
                    (Service::Agreed, first, after)
                }
            };
            let targets: Vec<&str> = targets.split(',').filter(|t| !t.is_empty()).collect();
            conn.multicast(service, &targets, 0, text.as_bytes())?;
        }
        "p" => {
            let (to, text) = rest.split_once(' ').unwrap_or((rest, ""));
            conn.send_to(to, Service::Agreed, 0, text.as_bytes())?;
        }
        "r" => {
            let mut any = false;
            while let Some(ev) = conn.receive(Duration::from_secs(1))? {
                show_event(state, ev);
                any = true;
                if !conn_has_more(conn) {
                    break;
                }
            }
            if !any {
                println!("nothing received");
            }
        }
        "m" => {
            for (group, (view, members)) in &state.views {
                if rest.is_empty() || rest == group {
                    println!("{group} view {view}: {}", members.join(" "));
                }
            }
            if state.views.is_empty() {
                println!("no memberships");
            }
        }
        "t" => {
            let json = conn.status()?;
            match serde_json::from_str::<serde_json::Value>(&json) {
                Ok(v) => print!("{}", status_view::summary(&v)),
                Err(_) => println!("{json}"),
            }
        }
        "h" | "?" => println!("{USER_HELP}"),
        "q" => return Ok(false),
        other => println!("unknown command {other:?}; h for help"),
    }
    Ok(true)
}

/// The service `word` looks like a misspelling of: a prefix of its name (2 letters at
/// least), or one letter added, dropped or changed in a name of 4 letters or more.
fn near_service(word: &str) -> Option<&'static str> {
    let word = word.to_ascii_lowercase();
    Service::ALL.iter().map(|s| s.name()).find(|name| {
        (word.len() >= 2 && name.starts_with(&word)) || (name.len() >= 4 && one_edit(&word, name))
    })
}

/// True when `a` and `b` differ by exactly one inserted, deleted or replaced byte.
fn one_edit(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let (short, long) = if a.len() <= b.len() { (a, b) } else { (b, a) };
    if long.len() - short.len() > 1 || a == b {
        return false;
    }
    let prefix = short.iter().zip(long).take_while(|(x, y)| x == y).count();
    if short.len() == long.len() {
        short[prefix + 1..] == long[prefix + 1..]
    } else {
        short[prefix..] == long[prefix + 1..]
    }
}

/// Whether another event can be had without waiting long.
fn conn_has_more(conn: &Connection) -> bool {
    let mut fds = [PollFd::from_borrowed_fd(conn.as_fd(), PollFlags::IN)];
    let zero = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    matches!(poll(&mut fds, Some(&zero)), Ok(n) if n > 0)
}

fn show_event(state: &mut UserState, ev: Event) {
    match ev {
        Event::Data {
            sender,
            groups,
            service,
            msg_type,
            payload,
        } => println!(
            "\n[{} from {sender} to {} type {msg_type}] {}",
            service.name(),
            groups.join(","),
            String::from_utf8_lossy(&payload)
        ),
        Event::Membership {
            group,
            view_id,
            kind,
            reason,
            changed,
            members,
        } => {
            println!(
                "\n[membership {group} view {view_id} {kind:?}: {reason:?} of {}] members: {}",
                changed.join(","),
                members.join(" ")
            );
            if members.is_empty() {
                state.views.remove(&group);
            } else {
                state.views.insert(group, (view_id, members));
            }
        }
        Event::Error {
            request,
            code,
            reason,
        } => println!("\n[error {code:?}] {reason} (request {request})"),
        Event::Status { json } => println!("\n[status] {json}"),
        Event::FlushRequest {
            group,
            view_id,
            reason,
            changed,
        } => println!(
            "\n[flush {group} view {view_id}: {reason:?} of {} pending; answered]",
            changed.join(",")
        ),
        Event::Goodbye { reason } => {
            println!("\n[goodbye] {reason}");
            state.goodbye = Some(reason);
        }
    }
    prompt();
}

// ---------------------------------------------------------------- flood

fn flood_send(
    addr: &conclave::Address,
    c: &FloodCommon,
    rate: u64,
    self_receive: bool,
) -> AnyResult<()> {
    let deadline = Instant::now() + Duration::from_secs_f64(c.timeout);
    let mut conn = Connection::connect(addr)?;
    if c.sock_buf > 0 {
        conn.set_socket_buffers(c.sock_buf, c.sock_buf)?;
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    let mut own = OwnReceipt::default();
    if self_receive {
        conn.join(&c.group)?;
    }
    let groups = [c.group.as_str()];
    let mut payload = vec![0xa5u8; c.size];
    let start = Instant::now();
    let pace = (rate > 0).then(|| Duration::from_secs_f64(1.0 / rate as f64));
    let mut sent = 0u64;
    // A sender that receives its own messages is a receiver too: it keeps the echo it has
    // not read yet under a window, or the daemon would rightly cut it off as a slow consumer.
    let echo_window = ((8u64 << 20) / c.size.max(1) as u64).max(64);
    while sent < c.count {
        flood::stamp(&mut payload, sent, flood::now_ns());
        conn.multicast_buffered(c.service, &groups, MSG_DATA, &payload)?;
        sent += 1;
        if self_receive && sent - own.received > echo_window {
            conn.flush()?;
            while sent - own.received > echo_window / 2 && Instant::now() < deadline {
                drain_own(&mut conn, &mut hist, &mut own, Duration::from_millis(10))?;
            }
        }
        if let Some(pace) = pace {
            // Sleep rather than spin when ahead of schedule: a spinning sender would take
            // a core from the daemon and the receiver on a small machine. Messages that
            // fall due during a sleep go out back to back after it.
            let due = start + pace.mul_f64(sent as f64);
            let now = Instant::now();
            if now < due {
                conn.flush()?;
                if self_receive {
                    drain_own(&mut conn, &mut hist, &mut own, due - now)?;
                }
                let now = Instant::now();
                if now < due {
                    std::thread::sleep(due - now);
                }
            }
        }
        if sent.is_multiple_of(1024) {
            if self_receive {
                drain_own(&mut conn, &mut hist, &mut own, Duration::ZERO)?;
            } else if conn_has_more(&conn) {
                // Only errors come to a sender that is not a member: one poll per batch
                // keeps the check off the hot path.
                drain_own(&mut conn, &mut hist, &mut own, Duration::ZERO)?;
            }
            if let Some(e) = &own.error {
                return Err(Exit::failed(format!(
                    "the daemon refused a message after {sent} sent: {e}"
                )));
            }
            if Instant::now() > deadline {
                break;
            }
        }
    }
    let mut end = [0u8; flood::STAMP_LEN];
    flood::stamp(&mut end, sent, flood::now_ns());
    conn.multicast_buffered(c.service, &groups, MSG_END, &end)?;
    conn.flush()?;
    let elapsed = start.elapsed();
    if self_receive {
        while !own.ended && Instant::now() < deadline {
            drain_own(&mut conn, &mut hist, &mut own, Duration::from_millis(100))?;
        }
    }
    // A round trip after the last message: a daemon answers it after reading everything
    // before it, so an error about those (NoRecipients: the group is empty) is in by then.
    conn.status()?;
    drain_own(&mut conn, &mut hist, &mut own, Duration::ZERO)?;
    if let Some(e) = &own.error {
        return Err(Exit::failed(format!(
            "nothing to report: the daemon refused the flood: {e}"
        )));
    }
    conn.disconnect()?;
    let mut report = Report {
        role: "send".into(),
        transport: addr.transport().into(),
        size: c.size,
        service: c.service.name().into(),
        messages: sent,
        bytes: sent * c.size as u64,
        complete: sent == c.count,
        latency: (!hist.is_empty()).then(|| Latency::from_histogram(&hist)),
        ..Report::default()
    };
    report.set_rates(elapsed);
    if self_receive {
        report.missing = sent.saturating_sub(own.received);
    }
    print_report(&report, c.json);
    Ok(())
}

#[derive(Default)]
struct OwnReceipt {
    received: u64,
    ended: bool,
    /// The first Error the daemon sent (e.g. NoRecipients: nobody is in the group).
    error: Option<String>,
}

/// Takes what arrived for a flood sender; returns how many frames.
fn drain_own(
    conn: &mut Connection,
    hist: &mut Histogram<u64>,
    own: &mut OwnReceipt,
    wait: Duration,
) -> conclave::Result<usize> {
    conn.receive_frames(wait, |frame| match frame {
        DaemonFrame::Data {
            msg_type, payload, ..
        } => {
            if *msg_type == MSG_END {
                own.ended = true;
            } else if *msg_type == MSG_DATA {
                own.received += 1;
                if let Some((_, at)) = flood::read_stamp(payload) {
                    let _ = hist.record(flood::now_ns().saturating_sub(at).max(1));
                }
            }
        }
        DaemonFrame::Error { code, reason, .. } if own.error.is_none() => {
            own.error = Some(format!("{code:?}: {reason}"));
        }
        _ => {}
    })
}

fn flood_recv(addr: &conclave::Address, c: &FloodCommon, idle: f64) -> AnyResult<()> {
    let deadline = Instant::now() + Duration::from_secs_f64(c.timeout);
    let idle = Duration::from_secs_f64(idle);
    let mut conn = Connection::connect(addr)?;
    if c.sock_buf > 0 {
        conn.set_socket_buffers(c.sock_buf, c.sock_buf)?;
    }
    conn.join(&c.group)?;
    // Ready only once our join is in the view, so the sender's first message reaches us.
    let me = conn.private_name().to_owned();
    loop {
        if Instant::now() > deadline {
            return Err("timed out waiting for our own join".into());
        }
        match conn.receive(Duration::from_millis(200))? {
            Some(Event::Membership { group, members, .. })
                if group == c.group && members.contains(&me) =>
            {
                break;
            }
            Some(Event::Error { code, reason, .. }) => {
                return Err(format!("join refused ({code:?}): {reason}").into());
            }
            _ => {}
        }
    }
    println!("flood receiver ready");
    io::stdout().flush()?;

    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    let mut received = 0u64;
    let mut bytes = 0u64;
    let mut out_of_order = 0u64;
    let mut next_seq = 0u64;
    let mut expected: Option<u64> = None;
    let mut first: Option<Instant> = None;
    let mut last = Instant::now();
    let mut goodbye: Option<String> = None;
    let complete = loop {
        if expected.is_some_and(|n| received >= n) || received >= c.count && expected.is_none() {
            break true;
        }
        let now = Instant::now();
        if now > deadline || first.is_some_and(|_| now.duration_since(last) > idle) {
            break false;
        }
        let got = match conn.receive_frames(Duration::from_millis(200), |frame| match frame {
            DaemonFrame::Data {
                msg_type, payload, ..
            } => {
                if *msg_type == MSG_END {
                    expected = flood::read_stamp(payload).map(|(n, _)| n);
                } else if *msg_type == MSG_DATA {
                    received += 1;
                    bytes += payload.len() as u64;
                    if let Some((seq, at)) = flood::read_stamp(payload) {
                        if seq != next_seq {
                            out_of_order += 1;
                        }
                        next_seq = seq + 1;
                        let _ = hist.record(flood::now_ns().saturating_sub(at).max(1));
                    }
                }
            }
            DaemonFrame::Goodbye { reason } => goodbye = Some((*reason).to_owned()),
            _ => {}
        }) {
            Ok(n) => n,
            Err(conclave::Error::Closed { reason }) => {
                goodbye.get_or_insert(reason);
                0
            }
            Err(e) => return Err(e.into()),
        };
        if got > 0 {
            last = Instant::now();
            if first.is_none() && received > 0 {
                first = Some(last);
            }
        }
        if let Some(reason) = &goodbye {
            return Err(format!("daemon said goodbye: {reason}").into());
        }
    };
    let _ = conn.disconnect();
    let total = expected.unwrap_or(c.count);
    let mut report = Report {
        role: "recv".into(),
        transport: addr.transport().into(),
        size: c.size,
        service: c.service.name().into(),
        // The clock starts at the first message, so it is not counted in the rate.
        messages: received.saturating_sub(1),
        bytes: bytes.saturating_sub(c.size as u64),
        missing: total.saturating_sub(received),
        out_of_order,
        complete,
        latency: (!hist.is_empty()).then(|| Latency::from_histogram(&hist)),
        ..Report::default()
    };
    report.set_rates(first.map(|f| last.duration_since(f)).unwrap_or_default());
    report.messages = received;
    report.bytes = bytes;
    print_report(&report, c.json);
    // The report is printed either way; the exit code says whether the run counts.
    if received == 0 {
        return Err(Exit::failed(format!(
            "received nothing in group {:?}",
            c.group
        )));
    }
    if !complete {
        return Err(Exit::failed(format!(
            "incomplete: received {received} of {total} messages"
        )));
    }
    Ok(())
}

fn print_report(report: &Report, json: bool) {
    let mut report = report.clone();
    report.cpu_seconds = flood::process_cpu_seconds(None).unwrap_or(0.0);
    let report = &report;
    if json {
        match serde_json::to_string(report) {
            Ok(line) => println!("{line}"),
            Err(e) => eprintln!("conclave: cannot encode report: {e}"),
        }
    } else {
        println!("{}", report.human());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn misspelt_services_are_caught_and_group_names_are_not() {
        assert_eq!(near_service("saf"), Some("safe"));
        assert_eq!(near_service("relable"), Some("reliable"));
        assert_eq!(near_service("agred"), Some("agreed"));
        assert_eq!(near_service("chat"), None);
        assert_eq!(near_service("safety"), None);
        assert_eq!(near_service("x"), None);
    }
}
