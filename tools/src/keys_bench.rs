//! `conclave-bench keys`: cost of a membership event for every key-agreement protocol and
//! DH group, versus group size.
//!
//! For each (protocol, group, size n) a group of `n - 1` members is formed, then each
//! repetition measures an *add* (a member joins: n members) and a *remove* (a member
//! leaves: back to n - 1). Every event runs in the lock-step harness
//! ([`conclave_control::keys::driver::Lockstep`]): round by round, each member handles
//! what the previous round sent; the *serial* time is the sum over rounds of the slowest
//! member's time (the critical path, what a group waits for when every member runs on
//! its own machine) and the *total* is the CPU time of all members together. The median of
//! the repetitions is reported. Build with `--release`. The last two columns divide the
//! serial time by what the critical path's exponentiation count predicts (count × the
//! median time of one exponentiation in that group): near 1 means the run costs what its
//! exponentiations cost; above 1 is the signatures, encodings and bookkeeping on top.
//!
//! Member work is timed with the thread's CPU clock, not the wall clock: on a shared
//! machine a wall-clock interval that happens to include a preemption gains a whole
//! scheduler slice (about 4 ms), and the per-round maximum over 128 members almost always
//! catches one, which buried the real figures under a 4 ms floor per round.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use conclave_control::keys::driver::{EventCost, Lockstep, Violation};
use conclave_control::keys::modp::{Modp2048, Modp3072};
use conclave_control::keys::{DhGroup, Protocol, Ristretto255};
use thiserror::Error;

/// OpenMLS's figures at 128 members, measured on the project's machine (commit plus the
/// slowest member's processing): the targets are at most 1/4 of the add and 1/3 of the
/// remove.
pub const OPENMLS_ADD_128: Duration = Duration::from_micros(11_500);
/// See [`OPENMLS_ADD_128`].
pub const OPENMLS_REMOVE_128: Duration = Duration::from_micros(3_100);

/// Options of the `keys` subcommand.
#[derive(Debug, Clone, Args)]
pub struct KeysArgs {
    /// Protocols to measure (comma-separated: tgdh,gdh,str,bd,ckd).
    #[arg(long, value_delimiter = ',', default_value = "tgdh,gdh,str,bd,ckd")]
    pub protocols: Vec<String>,
    /// DH groups to measure (comma-separated: ristretto255,modp2048,modp3072).
    #[arg(long, value_delimiter = ',', default_value = "ristretto255,modp2048")]
    pub groups: Vec<String>,
    /// Group sizes for ristretto255.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "2,3,4,6,8,12,16,24,32,48,64,96,128"
    )]
    pub sizes: Vec<usize>,
    /// Group sizes for the MODP groups (sparser: every exponentiation costs milliseconds).
    #[arg(long, value_delimiter = ',', default_value = "2,4,8,16,32,64,128")]
    pub modp_sizes: Vec<usize>,
    /// Repetitions per point over ristretto255 (the median is reported).
    #[arg(long, default_value_t = 7)]
    pub reps: usize,
    /// Repetitions per point over the MODP groups.
    #[arg(long, default_value_t = 1)]
    pub modp_reps: usize,
    /// Where to write the SVG plot.
    #[arg(long, default_value = "keys-bench.svg")]
    pub svg: PathBuf,
    /// Where to write the measurements as JSON (optional).
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Why the bench stopped.
#[derive(Debug, Error)]
pub enum KeysBenchError {
    /// A name on the command line is not a protocol or group.
    #[error("unknown {kind} {name:?}")]
    Unknown {
        /// "protocol" or "group".
        kind: &'static str,
        /// The name given.
        name: String,
    },
    /// A size below 2 (an add and a remove need two members).
    #[error("group sizes must be at least 2, got {0}")]
    BadSize(usize),
    /// A protocol run broke a property (a bug: the tests should have caught it).
    #[error("{protocol} over {group} at {size}: {violation}")]
    Protocol {
        /// Protocol name.
        protocol: &'static str,
        /// Group name.
        group: &'static str,
        /// Group size.
        size: usize,
        /// What went wrong.
        violation: Box<Violation>,
    },
    /// Writing the plot or the JSON failed.
    #[error("writing {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// One measured point: medians over the repetitions.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Point {
    /// Protocol name.
    pub protocol: &'static str,
    /// DH group name.
    pub group: &'static str,
    /// Members after the add (before the remove).
    pub size: usize,
    /// Add: critical path, microseconds.
    pub add_serial_us: f64,
    /// Add: all members' CPU, microseconds.
    pub add_total_us: f64,
    /// Remove: critical path, microseconds.
    pub remove_serial_us: f64,
    /// Remove: all members' CPU, microseconds.
    pub remove_total_us: f64,
    /// Add: exponentiations on the critical path.
    pub add_serial_exps: u64,
    /// Remove: exponentiations on the critical path.
    pub remove_serial_exps: u64,
    /// Median time of one exponentiation by a secret in this group, microseconds.
    pub exp_us: f64,
    /// Add: rounds.
    pub add_rounds: usize,
    /// Remove: rounds.
    pub remove_rounds: usize,
}

/// Everything measured.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Summary {
    /// The points, in measurement order.
    pub points: Vec<Point>,
}

impl Summary {
    /// The point of (protocol, group, size), if measured.
    pub fn find(&self, protocol: &str, group: &str, size: usize) -> Option<&Point> {
        self.points
            .iter()
            .find(|p| p.protocol == protocol && p.group == group && p.size == size)
    }
}

/// CPU time consumed by the calling thread so far.
pub fn thread_cpu_time() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(
        u64::try_from(t.tv_sec).unwrap_or(0),
        u32::try_from(t.tv_nsec).unwrap_or(0),
    )
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort_unstable();
    v[v.len() / 2]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Median CPU time of one exponentiation of an element by a secret exponent in `dh`: the
/// unit in which the papers count, to compare a run's serial time with its count.
pub fn exp_time<G: DhGroup>(dh: &G, samples: usize) -> Duration {
    let mut rng = rand::thread_rng();
    let base = dh.exp_generator(&dh.random_scalar(&mut rng));
    let k = dh.random_scalar(&mut rng);
    let times = (0..samples.max(1))
        .map(|_| {
            let t0 = thread_cpu_time();
            std::hint::black_box(dh.exp(std::hint::black_box(&base), &k));
            thread_cpu_time() - t0
        })
        .collect();
    median(times)
}

/// Measures one (protocol, group, size) point.
pub fn measure<G: DhGroup>(
    protocol: Protocol,
    dh: G,
    size: usize,
    reps: usize,
) -> Result<Point, KeysBenchError> {
    let reps = reps.max(1);
    let err = |violation| KeysBenchError::Protocol {
        protocol: protocol.name(),
        group: dh.name(),
        size,
        violation: Box::new(violation),
    };
    let mut clock = thread_cpu_time;
    let mut harness = Lockstep::new(protocol, dh.clone(), size + reps, 0x6b65_7973 + size as u64);
    let mut members: Vec<usize> = (0..size - 1).collect();
    harness.apply(&members, &mut clock).map_err(err)?;
    let (mut adds, mut removes): (Vec<EventCost>, Vec<EventCost>) = (Vec::new(), Vec::new());
    for rep in 0..reps {
        // Newcomers come from the part of the universe never used before.
        members.push(size - 1 + rep);
        adds.push(harness.apply(&members, &mut clock).map_err(err)?);
        // Remove someone other than the newcomer, at a position that varies per rep.
        let victim = (rep * 7 + 1) % (members.len() - 1);
        members.remove(victim);
        removes.push(harness.apply(&members, &mut clock).map_err(err)?);
    }
    let pick =
        |costs: &[EventCost], f: fn(&EventCost) -> Duration| median(costs.iter().map(f).collect());
    let exp_us = us(exp_time(
        &dh,
        if dh.name() == "ristretto255" { 101 } else { 9 },
    ));
    Ok(Point {
        protocol: protocol.name(),
        group: dh.name(),
        size,
        exp_us,
        add_serial_us: us(pick(&adds, |c| c.serial)),
        add_total_us: us(pick(&adds, |c| c.total)),
        remove_serial_us: us(pick(&removes, |c| c.serial)),
        remove_total_us: us(pick(&removes, |c| c.total)),
        add_serial_exps: adds[adds.len() / 2].serial_exponentiations,
        remove_serial_exps: removes[removes.len() / 2].serial_exponentiations,
        add_rounds: adds[0].rounds,
        remove_rounds: removes[0].rounds,
    })
}

fn measure_named(
    protocol: Protocol,
    group: &str,
    size: usize,
    reps: usize,
) -> Result<Point, KeysBenchError> {
    match group {
        "ristretto255" => measure(protocol, Ristretto255, size, reps),
        "modp2048" => measure(protocol, Modp2048, size, reps),
        "modp3072" => measure(protocol, Modp3072, size, reps),
        other => Err(KeysBenchError::Unknown {
            kind: "group",
            name: other.to_owned(),
        }),
    }
}

/// Runs the bench: measures, prints the table and the OpenMLS comparison, writes the SVG
/// (and the JSON when asked).
pub fn run(args: KeysArgs) -> Result<Summary, KeysBenchError> {
    let mut protocols = Vec::new();
    for name in &args.protocols {
        protocols.push(
            Protocol::from_name(name).ok_or_else(|| KeysBenchError::Unknown {
                kind: "protocol",
                name: name.clone(),
            })?,
        );
    }
    if let Some(bad) = args.sizes.iter().chain(&args.modp_sizes).find(|s| **s < 2) {
        return Err(KeysBenchError::BadSize(*bad));
    }
    let mut summary = Summary::default();
    println!(
        "{:<6} {:<13} {:>5} {:>12} {:>12} {:>12} {:>12} {:>6} {:>6}",
        "proto",
        "group",
        "n",
        "add ser µs",
        "add tot µs",
        "rem ser µs",
        "rem tot µs",
        "aexp",
        "rexp"
    );
    for group in &args.groups {
        let (sizes, reps) = if group == "ristretto255" {
            (&args.sizes, args.reps)
        } else {
            (&args.modp_sizes, args.modp_reps)
        };
        for protocol in &protocols {
            for &size in sizes {
                let p = measure_named(*protocol, group, size, reps)?;
                // Measured serial time over what the serial exponentiation count predicts.
                let ratio = |t: f64, exps: u64| t / (exps.max(1) as f64 * p.exp_us);
                println!(
                    "{:<6} {:<13} {:>5} {:>12.1} {:>12.1} {:>12.1} {:>12.1} {:>6} {:>6} {:>7.2} {:>7.2}",
                    p.protocol,
                    p.group,
                    p.size,
                    p.add_serial_us,
                    p.add_total_us,
                    p.remove_serial_us,
                    p.remove_total_us,
                    p.add_serial_exps,
                    p.remove_serial_exps,
                    ratio(p.add_serial_us, p.add_serial_exps),
                    ratio(p.remove_serial_us, p.remove_serial_exps),
                );
                summary.points.push(p);
            }
        }
    }
    if let Some(p) = summary.find("tgdh", "ristretto255", 128) {
        let add = Duration::from_secs_f64(p.add_serial_us / 1e6);
        let remove = Duration::from_secs_f64(p.remove_serial_us / 1e6);
        println!(
            "\nTGDH/ristretto255 at 128 members vs OpenMLS (11.5 ms add, 3.1 ms remove):\n  \
             add    {:>8.3} ms serial = 1/{:.1} of OpenMLS (target: at most 1/4)\n  \
             remove {:>8.3} ms serial = 1/{:.1} of OpenMLS (target: at most 1/3)",
            add.as_secs_f64() * 1e3,
            OPENMLS_ADD_128.as_secs_f64() / add.as_secs_f64(),
            remove.as_secs_f64() * 1e3,
            OPENMLS_REMOVE_128.as_secs_f64() / remove.as_secs_f64(),
        );
    }
    let svg = render_svg(&summary);
    std::fs::write(&args.svg, svg).map_err(|source| KeysBenchError::Io {
        path: args.svg.clone(),
        source,
    })?;
    println!("plot written to {}", args.svg.display());
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&summary).expect("plain data serializes");
        std::fs::write(path, json).map_err(|source| KeysBenchError::Io {
            path: path.clone(),
            source,
        })?;
    }
    Ok(summary)
}

fn color(protocol: &str) -> &'static str {
    match protocol {
        "tgdh" => "#1f77b4",
        "gdh" => "#d62728",
        "str" => "#2ca02c",
        "bd" => "#9467bd",
        _ => "#ff7f0e",
    }
}

/// Four log-log panels (add/remove × serial/total), one line per (protocol, group):
/// solid for ristretto255, dashed for MODP.
pub fn render_svg(summary: &Summary) -> String {
    type Metric = fn(&Point) -> f64;
    let panels: [(&str, Metric); 4] = [
        ("add: serial time (µs)", |p| p.add_serial_us),
        ("add: total CPU (µs)", |p| p.add_total_us),
        ("remove: serial time (µs)", |p| p.remove_serial_us),
        ("remove: total CPU (µs)", |p| p.remove_total_us),
    ];
    let (pw, ph, margin) = (460.0, 320.0, 60.0);
    let width = 2.0 * (pw + margin) + 220.0;
    let height = 2.0 * (ph + margin) + 40.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let mut series: Vec<(&str, &str)> = Vec::new();
    for p in &summary.points {
        if !series.contains(&(p.protocol, p.group)) {
            series.push((p.protocol, p.group));
        }
    }
    let max_size = summary.points.iter().map(|p| p.size).max().unwrap_or(2) as f64;
    for (k, (title, metric)) in panels.iter().enumerate() {
        let ox = margin + (k % 2) as f64 * (pw + margin);
        let oy = 30.0 + (k / 2) as f64 * (ph + margin);
        let values: Vec<f64> = summary
            .points
            .iter()
            .map(metric)
            .filter(|v| *v > 0.0)
            .collect();
        let lo = values
            .iter()
            .cloned()
            .fold(f64::INFINITY, f64::min)
            .max(1e-3);
        let hi = values.iter().cloned().fold(0.0, f64::max).max(lo * 10.0);
        let (ly0, ly1) = (lo.log10().floor(), hi.log10().ceil());
        let (lx0, lx1) = (2f64.log2(), max_size.max(4.0).log2());
        let x = |n: f64| ox + (n.log2() - lx0) / (lx1 - lx0) * pw;
        let y = |v: f64| oy + ph - (v.max(10f64.powf(ly0)).log10() - ly0) / (ly1 - ly0) * ph;
        let _ = writeln!(
            s,
            r#"<rect x="{ox}" y="{oy}" width="{pw}" height="{ph}" fill="none" stroke="black"/>"#
        );
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle" font-size="13">{title}</text>"#,
            ox + pw / 2.0,
            oy - 8.0
        );
        let mut d = ly0;
        while d <= ly1 {
            let yy = y(10f64.powf(d));
            let _ = writeln!(
                s,
                r##"<line x1="{ox}" y1="{yy}" x2="{}" y2="{yy}" stroke="#ddd"/><text x="{}" y="{}" text-anchor="end">1e{d}</text>"##,
                ox + pw,
                ox - 4.0,
                yy + 4.0
            );
            d += 1.0;
        }
        let mut n = 2.0;
        while n <= max_size.max(4.0) {
            let xx = x(n);
            let _ = writeln!(
                s,
                r##"<line x1="{xx}" y1="{oy}" x2="{xx}" y2="{}" stroke="#eee"/><text x="{xx}" y="{}" text-anchor="middle">{n}</text>"##,
                oy + ph,
                oy + ph + 14.0
            );
            n *= 2.0;
        }
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">members</text>"#,
            ox + pw / 2.0,
            oy + ph + 28.0
        );
        for (protocol, group) in &series {
            let pts: Vec<String> = summary
                .points
                .iter()
                .filter(|p| p.protocol == *protocol && p.group == *group)
                .map(|p| format!("{:.1},{:.1}", x(p.size as f64), y(metric(p))))
                .collect();
            let dash = if *group == "ristretto255" {
                ""
            } else {
                r#" stroke-dasharray="6,3""#
            };
            let _ = writeln!(
                s,
                r#"<polyline fill="none" stroke="{}" stroke-width="1.6"{dash} points="{}"/>"#,
                color(protocol),
                pts.join(" ")
            );
        }
    }
    let lx = 2.0 * (pw + margin) + 20.0;
    for (i, (protocol, group)) in series.iter().enumerate() {
        let ly = 50.0 + i as f64 * 18.0;
        let dash = if *group == "ristretto255" {
            ""
        } else {
            r#" stroke-dasharray="6,3""#
        };
        let _ = writeln!(
            s,
            r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{}" stroke-width="2"{dash}/><text x="{}" y="{}">{protocol} / {group}</text>"#,
            lx + 30.0,
            color(protocol),
            lx + 36.0,
            ly + 4.0
        );
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_a_small_point_and_plots_it() {
        let p = measure(Protocol::Gdh, Ristretto255, 4, 1).expect("runs");
        assert_eq!(p.size, 4);
        // Join to 4 members: n + 3 exponentiations on the critical path (see costs.rs).
        assert_eq!(p.add_serial_exps, 7);
        assert!(p.add_total_us >= p.add_serial_us);
        let summary = Summary { points: vec![p] };
        let svg = render_svg(&summary);
        assert!(svg.starts_with("<svg") && svg.contains("polyline") && svg.contains("gdh"));
    }
}
