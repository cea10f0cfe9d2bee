//! Daemon configuration (one TOML file listing every daemon of the network) and tuning
//! profiles (runtime knobs, embedded from `tuning/*.toml`). Every key is described in
//! `docs/config.md`.
//!
//! Both parse with `deny_unknown_fields`, then [`Config::validate`] / [`Profile::validate`]
//! check what serde cannot; every failure is a [`ConfigError`] naming the file, the key
//! and the reason, so an operator can fix the file without reading code.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use conclave_control::wire::client::{DEFAULT_MAX_PAYLOAD, max_frame_len};
use conclave_control::wire::names;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The embedded default configuration: one daemon `local` on 127.0.0.1, clients on TCP
/// port 4803 and the Unix socket `/tmp/conclave-4803.sock`.
pub const DEFAULT_CONFIG: &str = include_str!("default.toml");

/// The name shown for the embedded default configuration in errors.
pub const DEFAULT_CONFIG_NAME: &str = "<embedded default config>";

/// The tuning profiles compiled into the binary, by name.
pub const PROFILES: [(&str, &str); 5] = [
    ("default", include_str!("../../tuning/default.toml")),
    ("throughput", include_str!("../../tuning/throughput.toml")),
    ("low-latency", include_str!("../../tuning/low-latency.toml")),
    ("wan", include_str!("../../tuning/wan.toml")),
    ("debug-loss", include_str!("../../tuning/debug-loss.toml")),
];

/// A configuration or profile that cannot be used: `file: key: reason`.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{file}: {key}: {reason}")]
pub struct ConfigError {
    /// The file (or embedded source) at fault.
    pub file: String,
    /// The key at fault, as a dotted path (`clients.max_payload`, `daemons[1].name`).
    pub key: String,
    /// What is wrong with it.
    pub reason: String,
}

impl ConfigError {
    fn new(file: &str, key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            file: file.to_owned(),
            key: key.into(),
            reason: reason.into(),
        }
    }
}

/// One daemon of the network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonEntry {
    /// Unique daemon name (printable ASCII, no `#`, at most 20 bytes).
    pub name: String,
    /// The daemon's IP address.
    pub address: IpAddr,
    /// UDP port of the daemon ring.
    pub ring_port: u16,
    /// TCP port clients connect to.
    pub client_port: u16,
    /// Path of the daemon's public key (authentication between daemons comes later).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<PathBuf>,
}

/// How clients reach this daemon and what each may do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientsConfig {
    /// Unix socket path; absent means no Unix listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unix_socket: Option<PathBuf>,
    /// Whether to listen on TCP.
    #[serde(default = "default_true")]
    pub tcp: bool,
    /// TCP listen address; absent means this daemon's `address` and `client_port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_address: Option<SocketAddr>,
    /// Most clients connected at once.
    #[serde(default = "default_max_clients")]
    pub max_clients: usize,
    /// Largest payload a client may send, in bytes.
    #[serde(default = "default_max_payload")]
    pub max_payload: usize,
    /// Per-client output queue limit in bytes; absent means the profile's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_limit: Option<usize>,
    /// Most groups one client may be a member of.
    #[serde(default = "default_max_groups")]
    pub max_groups: usize,
}

fn default_true() -> bool {
    true
}
fn default_max_clients() -> usize {
    1024
}
fn default_max_payload() -> usize {
    DEFAULT_MAX_PAYLOAD
}
fn default_max_groups() -> usize {
    1024
}

impl Default for ClientsConfig {
    fn default() -> Self {
        Self {
            unix_socket: None,
            tcp: true,
            tcp_address: None,
            max_clients: default_max_clients(),
            max_payload: default_max_payload(),
            queue_limit: None,
            max_groups: default_max_groups(),
        }
    }
}

/// Whether a group admits messages from non-members.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Openness {
    /// Anyone connected may send to the group.
    Open,
    /// Only members may send to the group.
    Closed,
}

/// Group access policy: a default and rules by exact name or trailing-`*` prefix.
///
/// The most specific rule wins: an exact name beats any prefix, a longer prefix beats a
/// shorter one; a rule listed under both `open` and `closed` is an error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupsConfig {
    /// Openness of groups that no rule names.
    #[serde(default = "default_openness")]
    pub default: Openness,
    /// Rules marking groups closed.
    #[serde(default)]
    pub closed: Vec<String>,
    /// Rules marking groups open (useful under `default = "closed"`).
    #[serde(default)]
    pub open: Vec<String>,
    /// Rules marking groups that ask for Virtual Synchrony: before a membership change
    /// their members get a flush request and the new view waits for every staying
    /// member's FlushOk. Only closed groups get it (an open group's non-member senders
    /// could not be flushed); a rule naming an open group is ignored for it.
    #[serde(default)]
    pub vs: Vec<String>,
    /// How long a member of a VS group may take to answer a flush request before its
    /// daemon disconnects it, in milliseconds.
    #[serde(default = "default_flush_timeout_ms")]
    pub flush_timeout_ms: u64,
}

fn default_flush_timeout_ms() -> u64 {
    5000
}

fn default_openness() -> Openness {
    Openness::Open
}

impl Default for GroupsConfig {
    fn default() -> Self {
        Self {
            default: Openness::Open,
            closed: Vec::new(),
            open: Vec::new(),
            vs: Vec::new(),
            flush_timeout_ms: default_flush_timeout_ms(),
        }
    }
}

impl GroupsConfig {
    /// The openness of `group` under these rules.
    pub fn openness(&self, group: &str) -> Openness {
        // (specificity, openness): exact names rank above every prefix.
        let mut best: Option<(usize, Openness)> = None;
        let rules = self
            .closed
            .iter()
            .map(|r| (r, Openness::Closed))
            .chain(self.open.iter().map(|r| (r, Openness::Open)));
        for (rule, openness) in rules {
            let rank = match rule.strip_suffix('*') {
                Some(prefix) if group.starts_with(prefix) => prefix.len(),
                Some(_) => continue,
                None if rule == group => usize::MAX,
                None => continue,
            };
            if best.is_none_or(|(b, _)| rank > b) {
                best = Some((rank, openness));
            }
        }
        best.map_or(self.default, |(_, o)| o)
    }

    /// Whether `group` gets Virtual Synchrony (a flush round before each view change): a
    /// `vs` rule names it (exactly, or by a `prefix*`) and it is closed.
    pub fn virtual_synchrony(&self, group: &str) -> bool {
        self.openness(group) == Openness::Closed
            && self.vs.iter().any(|rule| match rule.strip_suffix('*') {
                Some(prefix) => group.starts_with(prefix),
                None => rule == group,
            })
    }
}

/// A whole daemon configuration file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Which daemon of `daemons` this process is. May be left out of the file when the
    /// command line names the daemon (`--name`), so that all daemons share one file.
    #[serde(default)]
    pub me: String,
    /// The tuning profile: an embedded profile name or a path to a profile file.
    #[serde(default = "default_profile")]
    pub profile: String,
    /// Every daemon of the network.
    pub daemons: Vec<DaemonEntry>,
    /// Client access.
    #[serde(default)]
    pub clients: ClientsConfig,
    /// Group policy.
    #[serde(default)]
    pub groups: GroupsConfig,
    /// Where daemons keep what must survive a restart (the run counter and the highest
    /// ring sequence number used), each in a folder named after it. Default:
    /// `conclave-<name>-<ring port>` under the system's temporary directory.
    #[serde(default)]
    pub state_dir: Option<std::path::PathBuf>,
}

fn default_profile() -> String {
    "default".to_owned()
}

impl Config {
    /// The embedded default configuration.
    pub fn embedded() -> Self {
        // The embedded file is part of the build and covered by a unit test.
        Self::parse(DEFAULT_CONFIG, DEFAULT_CONFIG_NAME).expect("embedded config is valid")
    }

    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::load_with(path, &Overrides::default())
    }

    /// Reads a configuration file, applies the command line's overrides, then validates
    /// the result (so `--name` stands in for a missing `me`).
    pub fn load_with(path: &Path, overrides: &Overrides) -> Result<Self, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new(&file, "(file)", format!("cannot read: {e}")))?;
        Self::parse_with(&text, &file, overrides)
    }

    /// Parses and validates configuration text; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Self, ConfigError> {
        Self::parse_with(text, file, &Overrides::default())
    }

    /// Parses configuration text, applies overrides, validates; `file` names it in errors.
    pub fn parse_with(text: &str, file: &str, overrides: &Overrides) -> Result<Self, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| toml_error(text, file, &e))?;
        config.apply_overrides(overrides, file)?;
        Ok(config)
    }

    /// Checks what the types cannot: names, uniqueness, ports, limits, policy rules.
    pub fn validate(&self, file: &str) -> Result<(), ConfigError> {
        if self.daemons.is_empty() {
            return Err(ConfigError::new(
                file,
                "daemons",
                "at least one [[daemons]] entry is needed",
            ));
        }
        let mut seen = HashSet::new();
        for (i, d) in self.daemons.iter().enumerate() {
            let key = |k: &str| format!("daemons[{i}].{k}");
            names::check_daemon(&d.name)
                .map_err(|e| ConfigError::new(file, key("name"), e.to_string()))?;
            if !seen.insert(d.name.as_str()) {
                return Err(ConfigError::new(
                    file,
                    key("name"),
                    format!("duplicate daemon name {:?}", d.name),
                ));
            }
            if d.ring_port == 0 {
                return Err(ConfigError::new(
                    file,
                    key("ring_port"),
                    "port 0 is not allowed",
                ));
            }
            if d.client_port == 0 {
                return Err(ConfigError::new(
                    file,
                    key("client_port"),
                    "port 0 is not allowed",
                ));
            }
        }
        if self.me.is_empty() {
            return Err(ConfigError::new(
                file,
                "me",
                "missing: name this daemon with `me = \"...\"` or `--name`",
            ));
        }
        if !seen.contains(self.me.as_str()) {
            return Err(ConfigError::new(
                file,
                "me",
                format!("{:?} is not the name of any [[daemons]] entry", self.me),
            ));
        }
        if !PROFILES.iter().any(|(n, _)| *n == self.profile) && !looks_like_path(&self.profile) {
            return Err(ConfigError::new(
                file,
                "profile",
                format!(
                    "unknown profile {:?}; embedded profiles are {}",
                    self.profile,
                    profile_names()
                ),
            ));
        }
        let c = &self.clients;
        if c.unix_socket.is_none() && !c.tcp {
            return Err(ConfigError::new(
                file,
                "clients",
                "neither unix_socket nor tcp is enabled: no client could connect",
            ));
        }
        if let Some(path) = &c.unix_socket
            && path.as_os_str().is_empty()
        {
            return Err(ConfigError::new(
                file,
                "clients.unix_socket",
                "path is empty",
            ));
        }
        if let Some(addr) = c.tcp_address
            && addr.port() == 0
        {
            return Err(ConfigError::new(
                file,
                "clients.tcp_address",
                "port 0 is not allowed",
            ));
        }
        if c.max_clients == 0 {
            return Err(ConfigError::new(
                file,
                "clients.max_clients",
                "must be at least 1",
            ));
        }
        if c.max_payload == 0 || c.max_payload > MAX_PAYLOAD_LIMIT {
            return Err(ConfigError::new(
                file,
                "clients.max_payload",
                format!("must be between 1 and {MAX_PAYLOAD_LIMIT} bytes"),
            ));
        }
        if let Some(limit) = c.queue_limit
            && limit < max_frame_len(c.max_payload)
        {
            return Err(ConfigError::new(
                file,
                "clients.queue_limit",
                format!(
                    "{limit} bytes cannot hold one largest frame ({} bytes)",
                    max_frame_len(c.max_payload)
                ),
            ));
        }
        if c.max_groups == 0 {
            return Err(ConfigError::new(
                file,
                "clients.max_groups",
                "must be at least 1",
            ));
        }
        let mut rules = HashSet::new();
        for (list, name) in [(&self.groups.closed, "closed"), (&self.groups.open, "open")] {
            for (i, rule) in list.iter().enumerate() {
                let key = format!("groups.{name}[{i}]");
                let stem = rule.strip_suffix('*').unwrap_or(rule);
                // A bare `*` is a valid (catch-all) prefix; anything else must be a name.
                if !(stem.is_empty() && rule == "*") {
                    if stem.is_empty() {
                        return Err(ConfigError::new(file, key, "empty rule"));
                    }
                    names::check_group(stem)
                        .map_err(|e| ConfigError::new(file, &key, e.to_string()))?;
                }
                if !rules.insert(rule.as_str()) {
                    return Err(ConfigError::new(
                        file,
                        key,
                        format!("rule {rule:?} is listed more than once"),
                    ));
                }
            }
        }
        for (i, rule) in self.groups.vs.iter().enumerate() {
            let key = format!("groups.vs[{i}]");
            let stem = rule.strip_suffix('*').unwrap_or(rule);
            if !(stem.is_empty() && rule == "*") {
                if stem.is_empty() {
                    return Err(ConfigError::new(file, key, "empty rule"));
                }
                names::check_group(stem)
                    .map_err(|e| ConfigError::new(file, &key, e.to_string()))?;
            }
        }
        if self.groups.flush_timeout_ms == 0 {
            // Zero would disconnect every member of a VS group at its first flush.
            return Err(ConfigError::new(
                file,
                "groups.flush_timeout_ms",
                "must be at least 1",
            ));
        }
        Ok(())
    }

    /// Checks that no two daemons share an address and ring port, or an address and
    /// client port: they would steal each other's datagrams or fail to bind. Apart from
    /// [`Config::validate`] because the ring itself refuses such a file only when it
    /// starts, and parsing alone must keep accepting it for that check's tests.
    pub fn check_endpoints(&self, file: &str) -> Result<(), ConfigError> {
        let mut ring: HashMap<SocketAddr, usize> = HashMap::new();
        let mut client: HashMap<SocketAddr, usize> = HashMap::new();
        for (i, d) in self.daemons.iter().enumerate() {
            for (endpoints, port, k) in [
                (&mut ring, d.ring_port, "ring_port"),
                (&mut client, d.client_port, "client_port"),
            ] {
                let at = SocketAddr::new(d.address, port);
                if let Some(first) = endpoints.insert(at, i) {
                    return Err(ConfigError::new(
                        file,
                        format!("daemons[{i}].{k}"),
                        format!(
                            "{at} is already the {k} of daemons[{first}] ({:?}): two daemons \
                             cannot share an address and port",
                            self.daemons[first].name
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// This daemon's entry (validation guarantees it exists).
    pub fn me(&self) -> &DaemonEntry {
        self.daemons
            .iter()
            .find(|d| d.name == self.me)
            .expect("validated: `me` names a daemon")
    }

    /// The TCP address clients connect to, when TCP is enabled.
    pub fn tcp_listen_address(&self) -> Option<SocketAddr> {
        if !self.clients.tcp {
            return None;
        }
        Some(
            self.clients
                .tcp_address
                .unwrap_or_else(|| SocketAddr::new(self.me().address, self.me().client_port)),
        )
    }

    /// Applies command-line overrides, then re-validates.
    pub fn apply_overrides(
        &mut self,
        overrides: &Overrides,
        file: &str,
    ) -> Result<(), ConfigError> {
        if let Some(name) = &overrides.name {
            self.me.clone_from(name);
        }
        if let Some(profile) = &overrides.profile {
            self.profile.clone_from(profile);
        }
        if let Some(socket) = &overrides.socket {
            self.clients.unix_socket = Some(socket.clone());
        }
        if let Some(port) = overrides.port {
            if port == 0 {
                return Err(ConfigError::new("--port", "port", "port 0 is not allowed"));
            }
            self.clients.tcp = true;
            let me = self.me.clone();
            if let Some(entry) = self.daemons.iter_mut().find(|d| d.name == me) {
                entry.client_port = port;
            }
            if let Some(addr) = &mut self.clients.tcp_address {
                addr.set_port(port);
            }
        }
        self.validate(file)
    }

    /// The effective configuration as TOML.
    pub fn to_toml(&self) -> String {
        // Every field serializes (no maps with non-string keys), so this cannot fail.
        toml::to_string(self).expect("config serializes")
    }

    /// Loads the profile this configuration names.
    pub fn load_profile(&self) -> Result<Profile, ConfigError> {
        Profile::by_name(&self.profile)
    }

    /// The effective per-client queue limit: the config's, else the profile's.
    pub fn queue_limit(&self, profile: &Profile) -> usize {
        self.clients
            .queue_limit
            .unwrap_or(profile.client_queue_limit)
    }
}

/// Largest `clients.max_payload` accepted (the wire's payload length is a u32, and a frame
/// must fit the per-client buffers).
pub const MAX_PAYLOAD_LIMIT: usize = 64 << 20;

fn looks_like_path(profile: &str) -> bool {
    profile.contains('/') || profile.ends_with(".toml")
}

fn profile_names() -> String {
    PROFILES
        .iter()
        .map(|(n, _)| *n)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Values from the command line that replace those of the file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    /// `--name`: which daemon this process is.
    pub name: Option<String>,
    /// `--profile`.
    pub profile: Option<String>,
    /// `--socket`: the Unix socket path.
    pub socket: Option<PathBuf>,
    /// `--port`: the TCP client port.
    pub port: Option<u16>,
}

/// Runtime knobs of a daemon (a `tuning/*.toml` file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Data-plane worker threads (1 is valid and the default on small machines).
    pub workers: usize,
    /// Whether each worker pins itself to a core.
    pub pin_workers: bool,
    /// Bytes asked for by one read from a client socket.
    pub read_chunk_bytes: usize,
    /// Reads from one client per event-loop turn before the others get a go (fairness).
    pub reads_per_turn: usize,
    /// Readiness events taken per poll.
    pub poll_events: usize,
    /// Most bytes handed to one write call to a client.
    pub write_chunk_bytes: usize,
    /// SO_SNDBUF of client sockets, in bytes; 0 keeps the kernel's default.
    pub socket_send_buffer: usize,
    /// SO_RCVBUF of client sockets, in bytes; 0 keeps the kernel's default (for TCP, that
    /// keeps receive-buffer autotuning, which an explicit size turns off).
    pub socket_recv_buffer: usize,
    /// Default per-client output queue limit in bytes.
    pub client_queue_limit: usize,
    /// Output queued for one client above which the daemon stops reading from clients
    /// until it drains (keeps queues short and cache-warm; capped at half the queue limit).
    pub client_pause_bytes: usize,
    /// How long a client may stay above the pause mark (holding everyone's senders back)
    /// before it is disconnected as a slow consumer, in milliseconds.
    pub client_stall_ms: u64,
    /// How long a new connection may take to send its hello before it is refused and
    /// closed (so silent connections cannot hold client slots), in milliseconds.
    pub hello_timeout_ms: u64,
    /// Knobs of the daemon ring.
    pub ring: RingTuning,
}

/// Knobs of the daemon ring (consumed by the multi-daemon ring).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RingTuning {
    /// Token loss timeout: silence this long starts a membership run.
    pub token_timeout_ms: u64,
    /// Time before a lost token or message is retransmitted.
    pub retransmit_timeout_ms: u64,
    /// Most new messages the whole ring sends per token rotation.
    pub window_per_rotation: u32,
    /// Most new messages one daemon sends per token visit.
    pub window_per_daemon: u32,
    /// Largest datagram the ring sends (bytes of UDP payload).
    pub max_datagram_bytes: usize,
    /// Share of datagrams dropped on purpose (testing only), 0..=100.
    pub loss_percent: f64,
    /// Seed of the deliberate loss, so a lossy run replays.
    pub loss_seed: u64,
    /// UDP backend between daemons: `auto` (io_uring when the kernel allows, else
    /// `sendmmsg`/`recvmmsg`), `uring` (or fail) or `fallback`.
    #[serde(default)]
    pub io_backend: crate::io::BackendChoice,
    /// Run the Accelerated Ring variant (pass the token before finishing the multicasts).
    #[serde(default)]
    pub accelerated: bool,
    /// How long the representative keeps an idle token before passing it on, in
    /// microseconds (a submit releases it at once); bounds idle token traffic.
    #[serde(default = "default_idle_token_hold_us")]
    pub idle_token_hold_us: u64,
    /// During a membership run, daemons that have not agreed within this time are left
    /// out, in milliseconds; 0 takes a quarter of `token_timeout_ms`.
    #[serde(default)]
    pub consensus_timeout_ms: u64,
    /// How often a ring's representative looks for daemons outside the ring to merge with,
    /// in milliseconds; 0 takes `token_timeout_ms`.
    #[serde(default)]
    pub merge_interval_ms: u64,
}

fn default_idle_token_hold_us() -> u64 {
    1000
}

/// Declares a struct of optional fields mirroring some of a target's fields, and `apply`,
/// which copies the ones that are set: a partial profile overrides its base key by key.
macro_rules! patch {
    ($(#[$m:meta])* struct $name:ident for $target:ty { $($(#[$fm:meta])* $field:ident: $ty:ty,)* } $($extra:tt)*) => {
        $(#[$m])*
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        struct $name {
            $($(#[$fm])* #[serde(default)] $field: Option<$ty>,)*
            $($extra)*
        }

        impl $name {
            /// Sets the target's fields that this patch sets.
            fn apply_fields(&self, target: &mut $target) {
                $(if let Some(v) = &self.$field {
                    target.$field = v.clone();
                })*
            }
        }
    };
}

patch! {
    /// The `[ring]` table of a partial profile.
    struct RingPatch for RingTuning {
        token_timeout_ms: u64,
        retransmit_timeout_ms: u64,
        window_per_rotation: u32,
        window_per_daemon: u32,
        max_datagram_bytes: usize,
        loss_percent: f64,
        loss_seed: u64,
        io_backend: crate::io::BackendChoice,
        accelerated: bool,
        idle_token_hold_us: u64,
    }
}

patch! {
    /// A partial profile: `base`, then any keys of [`Profile`] it changes.
    struct ProfilePatch for Profile {
        workers: usize,
        pin_workers: bool,
        read_chunk_bytes: usize,
        reads_per_turn: usize,
        poll_events: usize,
        write_chunk_bytes: usize,
        socket_send_buffer: usize,
        socket_recv_buffer: usize,
        client_queue_limit: usize,
        client_pause_bytes: usize,
        client_stall_ms: u64,
        hello_timeout_ms: u64,
    }
    /// The embedded profile the others keys start from.
    base: String,
    #[serde(default)]
    ring: Option<RingPatch>,
}

impl ProfilePatch {
    fn apply(&self, profile: &mut Profile) {
        self.apply_fields(profile);
        if let Some(ring) = &self.ring {
            ring.apply_fields(&mut profile.ring);
        }
    }
}

impl Profile {
    /// An embedded profile by name, or a profile file if `name` looks like a path.
    pub fn by_name(name: &str) -> Result<Self, ConfigError> {
        if let Some((_, text)) = PROFILES.iter().find(|(n, _)| *n == name) {
            return Self::parse(text, &format!("tuning/{name}.toml"));
        }
        if looks_like_path(name) {
            let text = std::fs::read_to_string(name)
                .map_err(|e| ConfigError::new(name, "(file)", format!("cannot read: {e}")))?;
            return Self::parse(&text, name);
        }
        Err(ConfigError::new(
            "--profile",
            "profile",
            format!(
                "unknown profile {name:?}; embedded profiles are {}",
                profile_names()
            ),
        ))
    }

    /// The profile as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("profile serializes")
    }

    /// Parses and validates profile text; `file` names it in errors.
    ///
    /// A profile with `base = "NAME"` names an embedded profile and sets only the keys
    /// it changes; without `base` it must set every key (a forgotten key is an error,
    /// not a silent default).
    pub fn parse(text: &str, file: &str) -> Result<Self, ConfigError> {
        let table: toml::Table = toml::from_str(text).map_err(|e| toml_error(text, file, &e))?;
        let profile = if table.contains_key("base") {
            let patch: ProfilePatch =
                toml::from_str(text).map_err(|e| toml_error(text, file, &e))?;
            let base = patch.base.as_str();
            let Some((_, base_text)) = PROFILES.iter().find(|(n, _)| *n == base) else {
                return Err(ConfigError::new(
                    file,
                    "base",
                    format!(
                        "unknown base profile {base:?}; embedded profiles are {}",
                        profile_names()
                    ),
                ));
            };
            let mut profile: Profile = toml::from_str(base_text)
                .map_err(|e| toml_error(base_text, &format!("tuning/{base}.toml"), &e))?;
            patch.apply(&mut profile);
            profile
        } else {
            toml::from_str(text).map_err(|e| {
                let mut e = toml_error(text, file, &e);
                if e.reason.starts_with("missing field") {
                    e.reason.push_str(
                        "; a profile lists every key, or names an embedded one to start \
                         from with `base = \"default\"` and lists only the keys it changes",
                    );
                }
                e
            })?
        };
        profile.validate(file)?;
        Ok(profile)
    }

    /// Checks ranges the types cannot express.
    pub fn validate(&self, file: &str) -> Result<(), ConfigError> {
        let range = |key: &str, v: u64, lo: u64, hi: u64| {
            if (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(ConfigError::new(
                    file,
                    key,
                    format!("{v} is outside {lo}..={hi}"),
                ))
            }
        };
        let u = |v: usize| v as u64;
        range("workers", u(self.workers), 1, 64)?;
        range("read_chunk_bytes", u(self.read_chunk_bytes), 4096, 64 << 20)?;
        range("reads_per_turn", u(self.reads_per_turn), 1, 1024)?;
        range("poll_events", u(self.poll_events), 16, 65536)?;
        range(
            "write_chunk_bytes",
            u(self.write_chunk_bytes),
            4096,
            1 << 30,
        )?;
        // 0 leaves the kernel's default (and TCP's buffer autotuning) in place.
        if self.socket_send_buffer != 0 {
            range(
                "socket_send_buffer",
                u(self.socket_send_buffer),
                4096,
                1 << 30,
            )?;
        }
        if self.socket_recv_buffer != 0 {
            range(
                "socket_recv_buffer",
                u(self.socket_recv_buffer),
                4096,
                1 << 30,
            )?;
        }
        range(
            "client_queue_limit",
            u(self.client_queue_limit),
            u(max_frame_len(DEFAULT_MAX_PAYLOAD)),
            1 << 40,
        )?;
        range(
            "client_pause_bytes",
            u(self.client_pause_bytes),
            64 * 1024,
            u(self.client_queue_limit),
        )?;
        range("client_stall_ms", self.client_stall_ms, 1, 3_600_000)?;
        range("hello_timeout_ms", self.hello_timeout_ms, 1, 3_600_000)?;
        let r = &self.ring;
        range("ring.token_timeout_ms", r.token_timeout_ms, 1, 600_000)?;
        range(
            "ring.retransmit_timeout_ms",
            r.retransmit_timeout_ms,
            1,
            600_000,
        )?;
        if r.retransmit_timeout_ms >= r.token_timeout_ms {
            return Err(ConfigError::new(
                file,
                "ring.retransmit_timeout_ms",
                format!(
                    "{} must be below ring.token_timeout_ms ({}), or every retransmission \
                     would look like a token loss",
                    r.retransmit_timeout_ms, r.token_timeout_ms
                ),
            ));
        }
        range(
            "ring.window_per_rotation",
            u64::from(r.window_per_rotation),
            1,
            1 << 20,
        )?;
        range(
            "ring.window_per_daemon",
            u64::from(r.window_per_daemon),
            1,
            1 << 20,
        )?;
        if r.window_per_daemon > r.window_per_rotation {
            return Err(ConfigError::new(
                file,
                "ring.window_per_daemon",
                format!(
                    "{} exceeds ring.window_per_rotation ({})",
                    r.window_per_daemon, r.window_per_rotation
                ),
            ));
        }
        // 576 is the least IPv4 datagram every host must accept; 65507 the UDP maximum.
        range(
            "ring.max_datagram_bytes",
            u(r.max_datagram_bytes),
            576,
            65507,
        )?;
        if !(0.0..=100.0).contains(&r.loss_percent) {
            return Err(ConfigError::new(
                file,
                "ring.loss_percent",
                format!("{} is outside 0..=100", r.loss_percent),
            ));
        }
        Ok(())
    }
}

/// Turns a TOML/serde error into `file: key: reason`, finding the key from the error's
/// span: the bare key under the span, or the key left of `=` on its line, prefixed with
/// the nearest `[table]` header above it.
fn toml_error(text: &str, file: &str, err: &toml::de::Error) -> ConfigError {
    let reason = err.message().trim().to_owned();
    let Some(span) = err.span() else {
        return ConfigError::new(file, "(document)", reason);
    };
    let start = span.start.min(text.len());
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    // Where, for an editor: 1-based line and column (in characters).
    let line_no = text[..line_start].matches('\n').count() + 1;
    let column = text[line_start..start].chars().count() + 1;
    let reason = format!("{reason} (line {line_no}, column {column})");
    let line_end = text[start..].find('\n').map_or(text.len(), |i| start + i);
    let line = &text[line_start..line_end];
    let mut key = match line.split_once('=') {
        Some((k, _)) if !line.trim_start().starts_with('[') => k.trim().to_owned(),
        _ => text
            .get(span.clone())
            .unwrap_or("")
            .trim()
            .trim_matches(['[', ']'])
            .to_owned(),
    };
    let header = text[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|l| {
            let name = l.trim_matches(['[', ']']).trim().to_owned();
            if !l.starts_with("[[") {
                return name;
            }
            // An array of tables: which entry, counted as its headers so far.
            let index = text[..line_start]
                .lines()
                .filter(|h| {
                    let h = h.trim();
                    h.starts_with("[[") && h.trim_matches(['[', ']']).trim() == name
                })
                .count()
                .saturating_sub(1);
            format!("{name}[{index}]")
        });
    if let Some(h) = header
        && !line.trim_start().starts_with('[')
    {
        key = if key.is_empty() {
            h
        } else {
            format!("{h}.{key}")
        };
    }
    if key.is_empty() {
        key = "(document)".to_owned();
    }
    ConfigError::new(file, key, reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> ConfigError {
        Config::parse(text, "test.toml").expect_err("config should be refused")
    }

    const ONE: &str = r#"
me = "a"
[[daemons]]
name = "a"
address = "127.0.0.1"
ring_port = 5000
client_port = 5001
"#;

    #[test]
    fn embedded_config_and_profiles_are_valid() {
        let c = Config::embedded();
        assert_eq!(c.me, "local");
        assert_eq!(
            c.clients.unix_socket.as_deref(),
            Some(Path::new("/tmp/conclave-4803.sock"))
        );
        assert_eq!(
            c.tcp_listen_address(),
            Some("127.0.0.1:4803".parse().unwrap())
        );
        for (name, _) in PROFILES {
            let p = Profile::by_name(name).unwrap();
            assert!(p.workers >= 1, "{name}");
        }
        assert_eq!(
            Profile::by_name("debug-loss").unwrap().ring.loss_percent,
            5.0
        );
    }

    #[test]
    fn minimal_file_gets_defaults_and_round_trips() {
        let c = Config::parse(ONE, "t").unwrap();
        assert_eq!(c.profile, "default");
        assert_eq!(c.clients.max_payload, DEFAULT_MAX_PAYLOAD);
        assert_eq!(c.clients.unix_socket, None);
        let again = Config::parse(&c.to_toml(), "t2").unwrap();
        assert_eq!(again, c);
    }

    #[test]
    fn unknown_keys_name_their_table() {
        let e = err(&format!("{ONE}\n[clients]\nmax_clientz = 3\n"));
        assert_eq!(e.file, "test.toml");
        assert_eq!(e.key, "clients.max_clientz");
        assert!(e.reason.contains("unknown field"), "{e}");
        let e = err(&format!("{ONE}colour = 1\n"));
        assert_eq!(e.key, "daemons[0].colour");
        let e = err(&format!("{ONE}\n[clients]\nmax_clients = \"many\"\n"));
        assert_eq!(e.key, "clients.max_clients");
    }

    #[test]
    fn type_errors_keep_the_array_index_and_syntax_errors_say_where() {
        let second = format!(
            "{ONE}[[daemons]]\nname = \"b\"\naddress = \"10.0.0.2\"\nring_port = \"x\"\nclient_port = 2\n"
        );
        let e = err(&second);
        assert_eq!(e.key, "daemons[1].ring_port", "{e}");
        // ONE starts with an empty line: the bad value is on line 11.
        assert!(e.reason.contains("line 11, column 13"), "{e}");
        let e = err("me = \"a\"\n[[daemons]\nname = \"a\"\n");
        assert!(
            e.reason.contains("line 2, column"),
            "syntax error located: {e}"
        );
    }

    #[test]
    fn the_command_line_name_stands_in_for_a_missing_me() {
        let shared = ONE.replacen("me = \"a\"", "", 1);
        let e = err(&shared);
        assert_eq!(e.key, "me");
        assert!(e.reason.contains("--name"), "{e}");
        let named = Overrides {
            name: Some("a".into()),
            ..Overrides::default()
        };
        let c = Config::parse_with(&shared, "t", &named).unwrap();
        assert_eq!(c.me, "a");
    }

    #[test]
    fn two_daemons_cannot_share_an_address_and_port() {
        let same_ring = format!(
            "{ONE}[[daemons]]\nname = \"b\"\naddress = \"127.0.0.1\"\nring_port = 5000\nclient_port = 6001\n"
        );
        let check = |text: &str| {
            Config::parse(text, "t")
                .unwrap()
                .check_endpoints("t")
                .expect_err("shared endpoint")
        };
        let e = check(&same_ring);
        assert_eq!(e.key, "daemons[1].ring_port", "{e}");
        assert!(e.reason.contains("127.0.0.1:5000"), "{e}");
        let same_client = same_ring.replace(
            "ring_port = 5000\nclient_port = 6001",
            "ring_port = 6000\nclient_port = 5001",
        );
        assert_eq!(check(&same_client).key, "daemons[1].client_port");
        // Another address is fine.
        let other = format!(
            "{ONE}[[daemons]]\nname = \"b\"\naddress = \"127.0.0.2\"\nring_port = 5000\nclient_port = 5001\n"
        );
        Config::parse(&other, "t")
            .unwrap()
            .check_endpoints("t")
            .unwrap();
    }

    #[test]
    fn semantic_errors_name_key_and_reason() {
        let dup = format!(
            "{ONE}[[daemons]]\nname = \"a\"\naddress = \"10.0.0.2\"\nring_port = 1\nclient_port = 2\n"
        );
        let e = err(&dup);
        assert_eq!(e.key, "daemons[1].name");
        assert!(e.reason.contains("duplicate"), "{e}");
        let e = err(&ONE.replacen("me = \"a\"", "me = \"b\"", 1));
        assert_eq!(e.key, "me");
        let e = err(&ONE
            .replace("name = \"a\"", "name = \"a#b\"")
            .replace("me = \"a\"", "me = \"a#b\""));
        assert_eq!(e.key, "daemons[0].name");
        let e = err(&ONE.replace("5001", "0"));
        assert_eq!(e.key, "daemons[0].client_port");
        assert!(e.reason.contains("port 0"), "{e}");
        let e = err(&format!("{ONE}[clients]\nmax_payload = 0\n"));
        assert_eq!(e.key, "clients.max_payload");
        let e = err(&format!("{ONE}[groups]\nclosed = [\"bad name*\"]\n"));
        assert_eq!(e.key, "groups.closed[0]");
        let e = err(&format!("{ONE}[groups]\nvs = [\"ok\", \"a b*\"]\n"));
        assert_eq!(e.key, "groups.vs[1]");
        let e = err(&format!("{ONE}[groups]\nflush_timeout_ms = 0\n"));
        assert_eq!(e.key, "groups.flush_timeout_ms");
        let e = err(&ONE.replacen("me = \"a\"", "me = \"a\"\nprofile = \"nope\"", 1));
        assert_eq!(e.key, "profile");
        assert_eq!(e.to_string(), format!("test.toml: profile: {}", e.reason));
    }

    #[test]
    fn overrides_apply_and_revalidate() {
        let mut c = Config::parse(ONE, "t").unwrap();
        let o = Overrides {
            socket: Some("/tmp/x.sock".into()),
            port: Some(7000),
            ..Overrides::default()
        };
        c.apply_overrides(&o, "t").unwrap();
        assert_eq!(
            c.tcp_listen_address(),
            Some("127.0.0.1:7000".parse().unwrap())
        );
        assert_eq!(
            c.clients.unix_socket.as_deref(),
            Some(Path::new("/tmp/x.sock"))
        );
        let bad = Overrides {
            name: Some("zz".into()),
            ..Overrides::default()
        };
        assert_eq!(c.apply_overrides(&bad, "t").unwrap_err().key, "me");
    }

    #[test]
    fn group_policy_most_specific_rule_wins() {
        let g = GroupsConfig {
            default: Openness::Open,
            closed: vec!["secure.*".into(), "admin".into()],
            open: vec!["secure.public*".into()],
            vs: vec!["secure.*".into(), "chat".into()],
            ..GroupsConfig::default()
        };
        assert!(g.virtual_synchrony("secure.x"));
        assert!(!g.virtual_synchrony("secure.public.1"), "open: no VS");
        assert!(!g.virtual_synchrony("chat"), "open: no VS");
        assert!(!g.virtual_synchrony("admin"), "no vs rule");
        assert_eq!(g.openness("chat"), Openness::Open);
        assert_eq!(g.openness("admin"), Openness::Closed);
        assert_eq!(g.openness("admin2"), Openness::Open);
        assert_eq!(g.openness("secure.x"), Openness::Closed);
        assert_eq!(g.openness("secure.public.1"), Openness::Open);
        let all_closed = GroupsConfig {
            default: Openness::Closed,
            closed: vec![],
            open: vec!["lobby".into()],
            ..GroupsConfig::default()
        };
        assert_eq!(all_closed.openness("lobby"), Openness::Open);
        assert_eq!(all_closed.openness("x"), Openness::Closed);
    }

    #[test]
    fn a_partial_profile_overrides_a_few_keys_of_its_base() {
        let p = Profile::parse(
            "base = \"throughput\"\nworkers = 2\n[ring]\nloss_percent = 1.5\n",
            "p.toml",
        )
        .unwrap();
        let base = Profile::by_name("throughput").unwrap();
        assert_eq!(p.workers, 2);
        assert_eq!(p.ring.loss_percent, 1.5);
        assert_eq!(p.read_chunk_bytes, base.read_chunk_bytes);
        assert_eq!(p.ring.token_timeout_ms, base.ring.token_timeout_ms);
        // Still strict: unknown keys, bad types, ranges and unknown bases are refused.
        let e = Profile::parse("base = \"default\"\nworkerz = 2\n", "p").unwrap_err();
        assert_eq!(e.key, "workerz", "{e}");
        let e = Profile::parse("base = \"default\"\n[ring]\nloss_seed = \"x\"\n", "p").unwrap_err();
        assert_eq!(e.key, "ring.loss_seed", "{e}");
        let e = Profile::parse("base = \"default\"\nworkers = 0\n", "p").unwrap_err();
        assert_eq!(e.key, "workers", "{e}");
        let e = Profile::parse("base = \"fast\"\n", "p").unwrap_err();
        assert_eq!(e.key, "base", "{e}");
        // Without a base every key is needed, and the error says how to do less.
        let e = Profile::parse("workers = 2\n", "p").unwrap_err();
        assert!(e.reason.contains("base = "), "{e}");
    }

    #[test]
    fn profile_errors_name_key() {
        let (_, text) = PROFILES[0];
        let e = Profile::parse(&text.replace("workers = 1", "workers = 0"), "p.toml").unwrap_err();
        assert_eq!((e.file.as_str(), e.key.as_str()), ("p.toml", "workers"));
        let e = Profile::parse(
            &text.replace("loss_percent = 0.0", "loss_percent = 101.0"),
            "p",
        )
        .unwrap_err();
        assert_eq!(e.key, "ring.loss_percent");
        let e = Profile::parse(&format!("{text}\nspeed = 9\n"), "p").unwrap_err();
        assert_eq!(e.key, "ring.speed");
        let e = Profile::parse(
            &text.replace("retransmit_timeout_ms = 50", "retransmit_timeout_ms = 5000"),
            "p",
        )
        .unwrap_err();
        assert_eq!(e.key, "ring.retransmit_timeout_ms");
        let zero = text
            .replace("socket_send_buffer = 4194304", "socket_send_buffer = 0")
            .replace("socket_recv_buffer = 4194304", "socket_recv_buffer = 0");
        assert_eq!(Profile::parse(&zero, "p").unwrap().socket_recv_buffer, 0);
        let e = Profile::parse(
            &text.replace("socket_send_buffer = 4194304", "socket_send_buffer = 100"),
            "p",
        )
        .unwrap_err();
        assert_eq!(e.key, "socket_send_buffer");
        assert!(Profile::by_name("fast").is_err());
    }
}
