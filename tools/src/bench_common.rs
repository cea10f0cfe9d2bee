//! What the benchmark subcommands (`flood`, `ring`, `membership`) share: child processes
//! that end with the run, median ranges as text, the two-panel SVG of throughput against
//! size, and a one-panel SVG of repeated timings per category.

use std::fmt::Write as _;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use crate::flood::median_min_max;

/// Starts `conclaved` (through `cmd`, which may wrap it, e.g. in a network namespace) as
/// daemon `name` of the configuration at `config`, on Unix socket `socket`, with
/// `RUST_LOG` at `log` unless the caller's environment sets it, and waits up to `ready`
/// for its ready line. Its stdout is drained until it exits, so that it never blocks on a
/// full pipe.
pub fn spawn_daemon(
    mut cmd: Command,
    config: &std::path::Path,
    name: &str,
    socket: &std::path::Path,
    log: &str,
    ready: Duration,
) -> Result<Reaped, Box<dyn std::error::Error + Send + Sync>> {
    use std::io::{BufRead, BufReader};
    cmd.arg("--config")
        .arg(config)
        .args(["--name", name])
        .arg("--socket")
        .arg(socket)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit());
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.env("RUST_LOG", log);
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start conclaved: {e}"))?;
    let out = child.stdout.take().ok_or("no stdout from conclaved")?;
    let child = Reaped(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            // The receiver is gone once the daemon is ready; later lines are dropped.
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + ready;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) if l.starts_with("conclaved ready") => return Ok(child),
            Ok(_) => {}
            Err(_) => return Err(format!("{name} did not get ready").into()),
        }
    }
}

/// A child process asked to stop (SIGTERM, then SIGKILL after 5 s) when dropped, so that no
/// run leaves a stray daemon or client behind, whatever way the run ends.
pub struct Reaped(pub Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(self.0.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.0.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// `median (min-max)` of `v / scale`, or `-` when there is nothing to show.
pub fn fmt_range(v: &[f64], scale: f64, digits: usize) -> String {
    match median_min_max(v) {
        Some((m, lo, hi)) => format!(
            "{:.d$} ({:.d$}-{:.d$})",
            m / scale,
            lo / scale,
            hi / scale,
            d = digits
        ),
        None => "-".into(),
    }
}

/// One measured configuration for [`throughput_svg`]: the repeats of one series at one size.
pub struct PlotPoint<'a> {
    /// The line it belongs to (also its legend text).
    pub series: String,
    /// Payload bytes (the x axis, logarithmic).
    pub size: usize,
    /// Messages per second of each repeat.
    pub msgs: &'a [f64],
    /// MB/s of each repeat.
    pub mbs: &'a [f64],
}

/// Two panels (messages/s in thousands, MB/s) against payload size: a line per series
/// through the medians, with a bar from the minimum to the maximum at every point.
pub fn throughput_svg(points: &[PlotPoint<'_>], msgs_title: &str, mbs_title: &str) -> String {
    let (w, h) = (900.0, 380.0);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    let mut series: Vec<&str> = Vec::new();
    for p in points {
        if !series.contains(&p.series.as_str()) {
            series.push(&p.series);
        }
    }
    let colors = [
        "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b",
    ];
    let (xmin, xmax) = points.iter().fold((f64::MAX, f64::MIN), |(a, b), p| {
        (a.min(p.size as f64), b.max(p.size as f64))
    });
    type Get = for<'p> fn(&'p PlotPoint<'p>) -> &'p [f64];
    let panels: [(&str, Get, f64); 2] =
        [(msgs_title, |p| p.msgs, 1e3), (mbs_title, |p| p.mbs, 1.0)];
    for (pi, (title, get, scale)) in panels.iter().enumerate() {
        let x0 = 70.0 + pi as f64 * 440.0;
        let (pw, ph, y0) = (360.0, 260.0, 50.0);
        let ymax = points
            .iter()
            .flat_map(|p| get(p).iter())
            .fold(0.0f64, |a, &b| a.max(b / scale))
            .max(1.0)
            * 1.1;
        let xmap = |x: f64| {
            if xmax > xmin {
                x0 + (x.ln() - xmin.ln()) / (xmax.ln() - xmin.ln()) * pw
            } else {
                x0 + pw / 2.0
            }
        };
        let ymap = |y: f64| y0 + ph - y / ymax * ph;
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"30\" text-anchor=\"middle\" font-size=\"14\">{title}</text>\n<line x1=\"{x0}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n<line x1=\"{x0}\" y1=\"{y0}\" x2=\"{x0}\" y2=\"{}\" stroke=\"black\"/>",
            x0 + pw / 2.0,
            y0 + ph,
            x0 + pw,
            y0 + ph,
            y0 + ph
        );
        for i in 0..=4 {
            let v = ymax * f64::from(i) / 4.0;
            let _ = writeln!(
                s,
                "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{v:.0}</text><line x1=\"{x0}\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\" stroke=\"#ddd\"/>",
                x0 - 5.0,
                ymap(v) + 4.0,
                x0 + pw,
                y = ymap(v)
            );
        }
        let mut sizes: Vec<usize> = points.iter().map(|p| p.size).collect();
        sizes.sort_unstable();
        sizes.dedup();
        for size in sizes {
            let _ = writeln!(
                s,
                "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{size} B</text>",
                xmap(size as f64),
                y0 + ph + 18.0
            );
        }
        for (si, label) in series.iter().enumerate() {
            let color = colors[si % colors.len()];
            let pts: Vec<(f64, f64, f64, f64)> = points
                .iter()
                .filter(|p| p.series == *label)
                .filter_map(|p| {
                    median_min_max(get(p))
                        .map(|(m, lo, hi)| (p.size as f64, m / scale, lo / scale, hi / scale))
                })
                .collect();
            let path: Vec<String> = pts
                .iter()
                .map(|&(x, y, _, _)| format!("{:.1},{:.1}", xmap(x), ymap(y)))
                .collect();
            let _ = writeln!(
                s,
                "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>",
                path.join(" ")
            );
            for &(x, y, lo, hi) in &pts {
                let _ = writeln!(
                    s,
                    "<circle cx=\"{cx:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{color}\"/><line x1=\"{cx:.1}\" y1=\"{:.1}\" x2=\"{cx:.1}\" y2=\"{:.1}\" stroke=\"{color}\"/>",
                    ymap(y),
                    ymap(lo),
                    ymap(hi),
                    cx = xmap(x)
                );
            }
            let _ = writeln!(
                s,
                "<text x=\"{}\" y=\"{}\" fill=\"{color}\">{label}</text>",
                x0 + 10.0,
                y0 + 15.0 + 15.0 * si as f64
            );
        }
    }
    s.push_str("</svg>\n");
    s
}

/// One labelled set of repeated measurements for [`range_svg`].
pub struct RangePoint<'a> {
    /// The category (x axis label).
    pub label: String,
    /// The repeats, in the unit of the plot.
    pub values: &'a [f64],
}

/// One panel of categories along x, each with its median as a dot and a bar from the
/// minimum to the maximum, plus dashed horizontal reference lines (targets) when given.
pub fn range_svg(points: &[RangePoint<'_>], title: &str, refs: &[(f64, &str)]) -> String {
    let (x0, y0, pw, ph) = (80.0, 50.0, 620.0, 280.0);
    let (w, h) = (x0 + pw + 40.0, y0 + ph + 70.0);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    let ymax = points
        .iter()
        .flat_map(|p| p.values.iter().copied())
        .chain(refs.iter().map(|r| r.0))
        .fold(0.0f64, f64::max)
        .max(1.0)
        * 1.1;
    let ymap = |y: f64| y0 + ph - y / ymax * ph;
    let _ = writeln!(
        s,
        "<text x=\"{}\" y=\"25\" text-anchor=\"middle\" font-size=\"14\">{title}</text>\n<line x1=\"{x0}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n<line x1=\"{x0}\" y1=\"{y0}\" x2=\"{x0}\" y2=\"{}\" stroke=\"black\"/>",
        x0 + pw / 2.0,
        y0 + ph,
        x0 + pw,
        y0 + ph,
        y0 + ph
    );
    for i in 0..=4 {
        let v = ymax * f64::from(i) / 4.0;
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{v:.0}</text><line x1=\"{x0}\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\" stroke=\"#ddd\"/>",
            x0 - 5.0,
            ymap(v) + 4.0,
            x0 + pw,
            y = ymap(v)
        );
    }
    for (value, label) in refs {
        let _ = writeln!(
            s,
            "<line x1=\"{x0}\" y1=\"{y:.1}\" x2=\"{}\" y2=\"{y:.1}\" stroke=\"#888\" stroke-dasharray=\"6,4\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"#555\">{label}</text>",
            x0 + pw,
            x0 + pw - 4.0,
            ymap(*value) - 4.0,
            y = ymap(*value)
        );
    }
    let n = points.len().max(1) as f64;
    let colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"];
    for (i, p) in points.iter().enumerate() {
        let cx = x0 + pw * (i as f64 + 0.5) / n;
        let color = colors[i % colors.len()];
        if let Some((m, lo, hi)) = median_min_max(p.values) {
            let _ = writeln!(
                s,
                "<line x1=\"{cx:.1}\" y1=\"{:.1}\" x2=\"{cx:.1}\" y2=\"{:.1}\" stroke=\"{color}\" stroke-width=\"2\"/><circle cx=\"{cx:.1}\" cy=\"{:.1}\" r=\"5\" fill=\"{color}\"/><text x=\"{:.1}\" y=\"{:.1}\">{m:.0}</text>",
                ymap(lo),
                ymap(hi),
                ymap(m),
                cx + 8.0,
                ymap(m) + 4.0
            );
        }
        let _ = writeln!(
            s,
            "<text x=\"{cx:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            y0 + ph + 18.0,
            p.label
        );
    }
    s.push_str("</svg>\n");
    s
}
