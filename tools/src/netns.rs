//! Network namespaces for partition experiments with real daemons: one bridge namespace
//! and one namespace per daemon, each joined to the bridge by a veth pair, with addresses
//! from 198.18.0.0/24 (the RFC 2544 benchmarking range, so nothing real is shadowed).
//!
//! A partition detaches daemons' bridge ports from the bridge; a heal attaches them again.
//! Every daemon namespace holds permanent neighbour entries for all the others, so that a
//! cut-off daemon's sends vanish on the wire instead of failing ARP and returning
//! `EHOSTUNREACH`: a partition should look like silence, as a broken switch would.
//!
//! This file uses only `std` so that the integration tests can include it with `#[path]`
//! as well as `conclave-bench membership` through the tools library. Everything is done by
//! running `ip` from iproute2, which needs root (or `CAP_NET_ADMIN` and `CAP_SYS_ADMIN`).

use std::ffi::OsString;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Where iproute2's `ip` is looked for first (tests may run with a minimal `PATH`).
const IP_PATHS: [&str; 3] = ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip"];

/// The namespaces of one experiment; dropping it deletes them all (with their links).
#[derive(Debug)]
pub struct Netns {
    ip: PathBuf,
    bridge: String,
    daemons: Vec<String>,
    /// Every namespace created so far, deleted on drop even if setup failed half way.
    created: Vec<String>,
}

fn find_ip() -> Option<PathBuf> {
    IP_PATHS
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .or_else(|| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|d| d.join("ip"))
                    .find(|p| p.exists())
            })
        })
}

/// Whether this process runs as root, read from /proc so that no libc call is needed.
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

impl Netns {
    /// Creates the bridge namespace and `n` daemon namespaces named from `tag` and this
    /// process id (so parallel runs never collide). `Err` says why it cannot be done here
    /// (not root, no `ip`, no namespace support); callers report it as a skip.
    pub fn create(tag: &str, n: usize) -> Result<Netns, String> {
        if !is_root() {
            return Err("not running as root (network namespaces need CAP_SYS_ADMIN)".into());
        }
        let ip = find_ip().ok_or("iproute2's `ip` not found")?;
        if n == 0 || n > 200 {
            return Err(format!("{n} namespaces: 1 to 200"));
        }
        // Names stay short: `ip netns` names become file names under /run/netns only, but
        // a short prefix keeps `ip netns list` readable while several runs are alive.
        let prefix = format!("cv{}{tag}", std::process::id());
        let mut ns = Netns {
            ip,
            bridge: format!("{prefix}-br"),
            daemons: (0..n).map(|i| format!("{prefix}-d{i}")).collect(),
            created: Vec::new(),
        };
        ns.setup()?;
        Ok(ns)
    }

    fn setup(&mut self) -> Result<(), String> {
        let br = self.bridge.clone();
        self.ip(&["netns", "add", &br])?;
        self.created.push(br.clone());
        self.ip(&["-n", &br, "link", "set", "lo", "up"])?;
        self.ip(&["-n", &br, "link", "add", "br0", "type", "bridge"])?;
        self.ip(&["-n", &br, "link", "set", "br0", "up"])?;
        let mut macs = Vec::new();
        for i in 0..self.daemons.len() {
            let d = self.daemons[i].clone();
            self.ip(&["netns", "add", &d])?;
            self.created.push(d.clone());
            self.ip(&["-n", &d, "link", "set", "lo", "up"])?;
            // Created inside the namespaces, so no name ever appears in the root namespace.
            let port = format!("p{i}");
            self.ip(&[
                "-n", &d, "link", "add", "eth0", "type", "veth", "peer", "name", &port, "netns",
                &br,
            ])?;
            let addr = format!("{}/24", self.addr(i));
            self.ip(&["-n", &d, "addr", "add", &addr, "dev", "eth0"])?;
            self.ip(&["-n", &d, "link", "set", "eth0", "up"])?;
            self.ip(&["-n", &br, "link", "set", &port, "master", "br0"])?;
            self.ip(&["-n", &br, "link", "set", &port, "up"])?;
            macs.push(self.mac(&d)?);
        }
        for i in 0..self.daemons.len() {
            for (j, mac) in macs.iter().enumerate() {
                if i != j {
                    let d = self.daemons[i].clone();
                    let to = self.addr(j).to_string();
                    self.ip(&[
                        "-n",
                        &d,
                        "neigh",
                        "replace",
                        &to,
                        "lladdr",
                        mac,
                        "dev",
                        "eth0",
                        "nud",
                        "permanent",
                    ])?;
                }
            }
        }
        Ok(())
    }

    fn mac(&self, ns: &str) -> Result<String, String> {
        let out = self.ip_out(&["-n", ns, "-o", "link", "show", "eth0"])?;
        // `... link/ether aa:bb:cc:dd:ee:ff brd ...`
        out.split_whitespace()
            .skip_while(|w| *w != "link/ether")
            .nth(1)
            .map(str::to_owned)
            .ok_or_else(|| format!("no MAC address in {out:?}"))
    }

    fn ip(&self, args: &[&str]) -> Result<(), String> {
        self.ip_out(args).map(|_| ())
    }

    fn ip_out(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new(&self.ip)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", self.ip.display()))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "`ip {}` failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// How many daemon namespaces there are.
    pub fn len(&self) -> usize {
        self.daemons.len()
    }

    /// Whether there are no daemon namespaces (never, after `create`).
    pub fn is_empty(&self) -> bool {
        self.daemons.is_empty()
    }

    /// The name of daemon `i`'s namespace.
    pub fn name(&self, i: usize) -> &str {
        &self.daemons[i]
    }

    /// Daemon `i`'s address: 198.18.0.(i + 1).
    pub fn addr(&self, i: usize) -> Ipv4Addr {
        // `create` bounds the count, so the last octet fits.
        Ipv4Addr::new(198, 18, 0, u8::try_from(i + 1).unwrap_or(u8::MAX))
    }

    /// The command prefix that runs a program inside daemon `i`'s namespace:
    /// `ip netns exec <ns>`. `ip` execs the program, so the child's pid is the program's
    /// and a SIGKILL reaches it directly.
    pub fn exec_prefix(&self, i: usize) -> Vec<OsString> {
        vec![
            self.ip.clone().into_os_string(),
            "netns".into(),
            "exec".into(),
            self.daemons[i].clone().into(),
        ]
    }

    /// A `Command` for `program` inside daemon `i`'s namespace.
    pub fn command(&self, i: usize, program: &Path) -> Command {
        let prefix = self.exec_prefix(i);
        let mut cmd = Command::new(&prefix[0]);
        cmd.args(&prefix[1..]).arg(program);
        cmd
    }

    /// Cuts daemons `side` off from all the others (and from each other): their bridge
    /// ports leave the bridge, so their packets go nowhere and nothing reaches them.
    pub fn cut(&self, side: &[usize]) -> Result<(), String> {
        for &i in side {
            self.ip(&[
                "-n",
                &self.bridge,
                "link",
                "set",
                &format!("p{i}"),
                "nomaster",
            ])?;
        }
        Ok(())
    }

    /// Puts every daemon's port back on the bridge: one network again.
    pub fn heal(&self) -> Result<(), String> {
        for i in 0..self.daemons.len() {
            self.ip(&[
                "-n",
                &self.bridge,
                "link",
                "set",
                &format!("p{i}"),
                "master",
                "br0",
            ])?;
        }
        Ok(())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veth ends inside it, and with them their peers.
        for ns in self.created.drain(..).rev() {
            let _ = Command::new(&self.ip)
                .args(["netns", "del", &ns])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}
