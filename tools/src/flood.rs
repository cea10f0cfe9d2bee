//! The flood test's payload format and report, shared by `conclave flood` and
//! `conclave-bench`.
//!
//! Every flood payload starts with a 16-byte stamp, `seq: u64 LE` then the sender's wall
//! clock in nanoseconds since the Unix epoch (`u64 LE`), so a receiver on the same host
//! can measure one-way latency. Payloads shorter than the stamp carry what fits.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Bytes of the stamp at the start of a flood payload.
pub const STAMP_LEN: usize = 16;

/// Message type of flood data messages.
pub const MSG_DATA: u16 = 0x464c;

/// Message type of the sender's final message (its payload's seq is the count sent).
pub const MSG_END: u16 = 0x454e;

/// Nanoseconds since the Unix epoch on this host's wall clock.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Writes the stamp into the front of `payload` (as much of it as fits).
pub fn stamp(payload: &mut [u8], seq: u64, at_ns: u64) {
    let mut s = [0u8; STAMP_LEN];
    s[..8].copy_from_slice(&seq.to_le_bytes());
    s[8..].copy_from_slice(&at_ns.to_le_bytes());
    let n = payload.len().min(STAMP_LEN);
    payload[..n].copy_from_slice(&s[..n]);
}

/// Reads a full stamp, if the payload holds one.
pub fn read_stamp(payload: &[u8]) -> Option<(u64, u64)> {
    let s = payload.get(..STAMP_LEN)?;
    let mut seq = [0u8; 8];
    let mut at = [0u8; 8];
    seq.copy_from_slice(&s[..8]);
    at.copy_from_slice(&s[8..]);
    Some((u64::from_le_bytes(seq), u64::from_le_bytes(at)))
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Latency {
    /// Samples recorded.
    pub samples: u64,
    /// Median.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Largest sample.
    pub max_us: f64,
}

impl Latency {
    /// Summarises a histogram of nanosecond samples.
    pub fn from_histogram(h: &Histogram<u64>) -> Latency {
        let us = |ns: u64| ns as f64 / 1000.0;
        Latency {
            samples: h.len(),
            p50_us: us(h.value_at_quantile(0.50)),
            p90_us: us(h.value_at_quantile(0.90)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
        }
    }
}

/// What one side of a flood measured; printed as one JSON line with `--json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Report {
    /// `send` or `recv`.
    pub role: String,
    /// `unix` or `tcp`.
    pub transport: String,
    /// Payload bytes per message.
    pub size: usize,
    /// Service name.
    pub service: String,
    /// Data messages sent or received.
    pub messages: u64,
    /// Payload bytes sent or received.
    pub bytes: u64,
    /// Seconds from the first to the last message.
    pub seconds: f64,
    /// Messages per second.
    pub msgs_per_s: f64,
    /// Payload megabytes (10^6) per second.
    pub mb_per_s: f64,
    /// Messages the sender said it sent but that did not arrive (receiver only).
    pub missing: u64,
    /// Messages that arrived out of the sender's order (receiver only).
    pub out_of_order: u64,
    /// True when the run ended because it was complete (not by a time limit).
    pub complete: bool,
    /// One-way latency from the sender's stamp, when measured.
    pub latency: Option<Latency>,
    /// CPU seconds (user + system) this process used in all.
    #[serde(default)]
    pub cpu_seconds: f64,
}

impl Report {
    /// Fills the rates from `messages`, `bytes` and `elapsed`.
    pub fn set_rates(&mut self, elapsed: Duration) {
        self.seconds = elapsed.as_secs_f64();
        if self.seconds > 0.0 {
            self.msgs_per_s = self.messages as f64 / self.seconds;
            self.mb_per_s = self.bytes as f64 / self.seconds / 1e6;
        }
    }

    /// A one-paragraph human summary.
    pub fn human(&self) -> String {
        let mut s = format!(
            "{} {} {} B {}: {} msgs, {:.1} MB in {:.3} s = {:.0} msgs/s, {:.1} MB/s",
            self.role,
            self.transport,
            self.size,
            self.service,
            self.messages,
            self.bytes as f64 / 1e6,
            self.seconds,
            self.msgs_per_s,
            self.mb_per_s
        );
        if self.role == "recv" {
            s.push_str(&format!(
                ", missing {}, out of order {}{}",
                self.missing,
                self.out_of_order,
                if self.complete { "" } else { " (incomplete)" }
            ));
        }
        if self.cpu_seconds > 0.0 {
            s.push_str(&format!(", {:.2} CPU s", self.cpu_seconds));
        }
        if let Some(l) = &self.latency {
            s.push_str(&format!(
                "\n  latency ({} samples): p50 {:.1} us, p90 {:.1} us, p99 {:.1} us, p99.9 {:.1} us, max {:.1} us",
                l.samples, l.p50_us, l.p90_us, l.p99_us, l.p999_us, l.max_us
            ));
        }
        s
    }
}

/// CPU seconds (user + system) a process has used, from `/proc/<pid>/stat` (`None`: this
/// process). Resolution is one clock tick (10 ms).
pub fn process_cpu_seconds(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    let stat = std::fs::read_to_string(path).ok()?;
    // The command name may hold spaces, so count fields after its closing parenthesis:
    // state is field 3, utime 14 and stime 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split_ascii_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    // Linux reports in USER_HZ, which is 100 on every architecture it supports.
    Some((utime + stime) as f64 / 100.0)
}

/// Median, min and max of a non-empty sample.
pub fn median_min_max(values: &[f64]) -> Option<(f64, f64, f64)> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    let median = if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    };
    Some((median, v[0], v[v.len() - 1]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_round_trips_and_short_payloads_hold_a_prefix() {
        let mut p = vec![0u8; 100];
        stamp(&mut p, 42, 1_700_000_000_000_000_000);
        assert_eq!(read_stamp(&p), Some((42, 1_700_000_000_000_000_000)));
        let mut short = vec![0u8; 10];
        stamp(&mut short, 7, 9);
        assert_eq!(&short[..8], &7u64.to_le_bytes());
        assert_eq!(read_stamp(&short), None);
    }

    #[test]
    fn cpu_time_of_this_process_is_readable_and_grows() {
        let before = process_cpu_seconds(None).expect("own stat");
        let start = std::time::Instant::now();
        let mut x = 0u64;
        // Burn about 50 ms of CPU (bounded by wall time too).
        while start.elapsed() < Duration::from_millis(50) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let after = process_cpu_seconds(None).expect("own stat");
        assert!(after >= before);
        assert!(process_cpu_seconds(Some(std::process::id())).is_some());
        assert_eq!(process_cpu_seconds(Some(u32::MAX)), None);
    }

    #[test]
    fn medians() {
        assert_eq!(median_min_max(&[]), None);
        assert_eq!(median_min_max(&[3.0, 1.0, 2.0]), Some((2.0, 1.0, 3.0)));
        assert_eq!(median_min_max(&[4.0, 1.0, 2.0, 3.0]), Some((2.5, 1.0, 4.0)));
    }

    #[test]
    fn rates_and_json_round_trip() {
        let mut r = Report {
            role: "recv".into(),
            messages: 1000,
            bytes: 2_000_000,
            ..Report::default()
        };
        r.set_rates(Duration::from_millis(500));
        assert_eq!(r.msgs_per_s, 2000.0);
        assert_eq!(r.mb_per_s, 4.0);
        let line = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<Report>(&line).unwrap(), r);
    }

    #[test]
    fn latency_percentiles_follow_the_samples() {
        let mut h = Histogram::<u64>::new(3).unwrap();
        for ns in 1..=1000u64 {
            h.record(ns * 1000).unwrap();
        }
        let l = Latency::from_histogram(&h);
        assert_eq!(l.samples, 1000);
        assert!((l.p50_us - 500.0).abs() < 2.0, "{l:?}");
        assert!((l.p99_us - 990.0).abs() < 2.0, "{l:?}");
        assert!(l.max_us >= 999.0);
    }
}
