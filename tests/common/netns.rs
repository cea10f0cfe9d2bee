//! Daemons in network namespaces, for partitions between live processes: one namespace per
//! daemon joined through a bridge namespace (the namespace plumbing itself is
//! `tools/src/netns.rs`, shared with `conclave-bench membership`). The daemons' Unix sockets
//! live in the shared filesystem, so clients connect to them from the test's namespace.

use super::Daemon;

#[path = "../../tools/src/netns.rs"]
mod shared;

pub use shared::Netns;

/// The ring port every daemon uses: each has its own address, so they need not differ.
const RING_PORT: u16 = 4803;

/// Configuration text for `names`, daemon `i` at `net.addr(i)`, with a state directory.
pub fn config_text(net: &Netns, names: &[&str], profile_path: &str, state_dir: &str) -> String {
    let mut s = format!(
        "me = \"{}\"\nprofile = \"{profile_path}\"\nstate_dir = \"{state_dir}\"\n",
        names[0]
    );
    for (i, name) in names.iter().enumerate() {
        // client_port is overridden per process by --port; only validity matters here.
        s.push_str(&format!(
            "\n[[daemons]]\nname = \"{name}\"\naddress = \"{}\"\nring_port = {RING_PORT}\nclient_port = 4804\n",
            net.addr(i)
        ));
    }
    s
}

/// Daemons, each in its own namespace. Fields drop in order: the daemons stop before
/// their namespaces are deleted (a namespace with a live process would linger).
pub struct NetCluster {
    /// The daemons, in the order of `names`.
    pub daemons: Vec<Daemon>,
    /// The namespaces; `net.cut` and `net.heal` make and mend partitions.
    pub net: Netns,
    /// Holds the profile and the daemons' state directory.
    pub dir: tempfile::TempDir,
}

impl NetCluster {
    /// Creates the namespaces and starts one daemon per name with `profile`; `Err` says
    /// why namespaces cannot be made here (the caller prints it as a skip).
    pub fn start(names: &[&str], profile: &str) -> Result<NetCluster, String> {
        let net = Netns::create("t", names.len())?;
        let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
        let profile_path = dir.path().join("profile.toml");
        std::fs::write(&profile_path, profile).map_err(|e| format!("profile: {e}"))?;
        let state = dir.path().join("state");
        let config = config_text(
            &net,
            names,
            &profile_path.display().to_string(),
            &state.display().to_string(),
        );
        let daemons = names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                Daemon::start_in(&net.exec_prefix(i), Some(&config), &["--name", name])
            })
            .collect();
        Ok(NetCluster { daemons, net, dir })
    }
}
