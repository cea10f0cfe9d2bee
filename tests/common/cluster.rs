//! Several `conclaved` processes on 127.0.0.1 sharing one generated configuration, each
//! with its own free ring (UDP) and client (TCP) port and its own Unix socket.

use std::path::PathBuf;

use super::Daemon;

/// The profile a cluster runs with: an embedded base plus the UDP backend to force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `io_backend = "auto"`: io_uring wherever the kernel allows it.
    Auto,
    /// `io_backend = "fallback"`: sendmmsg/recvmmsg even where io_uring works.
    Fallback,
}

impl Backend {
    fn key(self) -> &'static str {
        match self {
            Backend::Auto => "auto",
            Backend::Fallback => "fallback",
        }
    }
}

/// A UDP port nothing is bound to right now.
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("bind an ephemeral UDP port")
        .port()
}

/// Profile text: `base` is `"default"` or `"debug-loss"` (the embedded files), with the
/// UDP backend set.
pub fn profile_text(base: &str, backend: Backend) -> String {
    let text = match base {
        "debug-loss" => include_str!("../../tuning/debug-loss.toml"),
        _ => include_str!("../../tuning/default.toml"),
    };
    // `[ring]` is the last table of every profile, so appended keys land in it.
    format!("{text}\nio_backend = \"{}\"\n", backend.key())
}

/// Configuration text for daemons `names` with these ring ports, using `profile_path`.
pub fn config_text(names: &[&str], ring_ports: &[u16], profile_path: &str) -> String {
    let mut s = format!("me = \"{}\"\nprofile = \"{profile_path}\"\n", names[0]);
    for (i, (name, port)) in names.iter().zip(ring_ports).enumerate() {
        // client_port is overridden per process by --port; it need only be valid and
        // distinct (daemons may not share an address and port).
        s.push_str(&format!(
            "\n[[daemons]]\nname = \"{name}\"\naddress = \"127.0.0.1\"\nring_port = {port}\nclient_port = {}\n",
            4803 + i
        ));
    }
    s
}

/// Running daemons of one generated configuration.
pub struct Cluster {
    /// The daemons, in the order of `names`.
    pub daemons: Vec<Daemon>,
    /// Their names.
    pub names: Vec<String>,
    /// Their ring (UDP) ports.
    pub ring_ports: Vec<u16>,
    /// Holds the profile file.
    pub dir: tempfile::TempDir,
    /// The profile file.
    pub profile: PathBuf,
    /// The configuration every daemon runs with.
    pub config: String,
}

impl Cluster {
    /// Starts daemons `names` (all of them, so the static ring closes) with the profile
    /// text given.
    pub fn start(names: &[&str], profile: &str) -> Cluster {
        Self::start_some(names, names.len(), profile)
    }

    /// Writes a configuration for all of `names` but starts only the first `running`
    /// (the others' ring ports are reserved for the test to play them by hand).
    pub fn start_some(names: &[&str], running: usize, profile: &str) -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let profile_path = dir.path().join("profile.toml");
        std::fs::write(&profile_path, profile).expect("write profile");
        // Held together while picking, so the ports differ.
        let held: Vec<std::net::UdpSocket> = names
            .iter()
            .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").expect("bind a UDP port"))
            .collect();
        let ring_ports: Vec<u16> = held
            .iter()
            .map(|s| s.local_addr().expect("local addr").port())
            .collect();
        drop(held);
        let mut config = config_text(names, &ring_ports, &profile_path.display().to_string());
        // Each daemon keeps its run counter under <state_dir>/<name>, inside this test.
        let state = dir.path().join("state");
        config = config.replacen("\n", &format!("\nstate_dir = \"{}\"\n", state.display()), 1);
        let daemons = names[..running]
            .iter()
            .map(|name| Daemon::start_with(Some(&config), &["--name", name]))
            .collect();
        Cluster {
            daemons,
            names: names.iter().map(|s| (*s).to_owned()).collect(),
            ring_ports,
            dir,
            profile: profile_path,
            config,
        }
    }

    /// Starts daemon `i` again (a new run: empty memory, the same state directory).
    pub fn restart(&mut self, i: usize) {
        self.daemons[i] = Daemon::start_with(Some(&self.config), &["--name", &self.names[i]]);
    }
}
