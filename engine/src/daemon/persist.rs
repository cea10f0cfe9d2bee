//! What a daemon keeps across restarts: its run counter (incarnation) and the highest ring
//! sequence number it has used, so that a restarted daemon is a new member and ring ids
//! never repeat.
//!
//! Two small text files in the state directory, each replaced atomically (written to a
//! temporary file, synced, renamed). Where the directory cannot be used the daemon still
//! starts: both values then come from the wall clock (microseconds and milliseconds since
//! the Unix epoch), which also only grow from run to run, and a warning says so.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// The persisted state of one daemon.
#[derive(Debug)]
pub struct RunState {
    /// This run's incarnation (above every earlier run's).
    pub incarnation: u64,
    /// Highest ring sequence number used before this run.
    pub max_ring_seq: u64,
    dir: Option<PathBuf>,
    saved_ring_seq: u64,
}

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn write_u64(dir: &Path, name: &str, value: u64) -> std::io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    writeln!(f, "{value}")?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(name))
}

fn since_epoch() -> std::time::Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

impl RunState {
    /// Reads the state under `dir` and records this run's incarnation there.
    pub fn load(dir: &Path) -> RunState {
        let clock_incarnation = u64::try_from(since_epoch().as_micros()).unwrap_or(u64::MAX);
        let prepared = std::fs::create_dir_all(dir).and_then(|()| {
            let before = read_u64(&dir.join("incarnation")).unwrap_or(0);
            let incarnation = before.saturating_add(1);
            write_u64(dir, "incarnation", incarnation)?;
            Ok(incarnation)
        });
        match prepared {
            Ok(incarnation) => {
                let max_ring_seq = read_u64(&dir.join("ring_seq")).unwrap_or(0);
                RunState {
                    incarnation,
                    max_ring_seq,
                    dir: Some(dir.to_owned()),
                    saved_ring_seq: max_ring_seq,
                }
            }
            Err(e) => {
                let ms = u64::try_from(since_epoch().as_millis()).unwrap_or(0);
                tracing::warn!(
                    dir = %dir.display(),
                    "state directory unusable ({e}): run counter and ring ids come from the clock"
                );
                RunState {
                    incarnation: clock_incarnation,
                    max_ring_seq: ms,
                    dir: None,
                    saved_ring_seq: ms,
                }
            }
        }
    }

    /// Records a higher ring sequence number (a no-op if it is not higher).
    pub fn save_ring_seq(&mut self, seq: u64) {
        if seq <= self.saved_ring_seq {
            return;
        }
        self.saved_ring_seq = seq;
        if let Some(dir) = &self.dir
            && let Err(e) = write_u64(dir, "ring_seq", seq)
        {
            tracing::warn!(dir = %dir.display(), "cannot record the ring sequence number: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incarnations_grow_and_ring_seq_survives() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = RunState::load(dir.path());
        assert_eq!((a.incarnation, a.max_ring_seq), (1, 0));
        a.save_ring_seq(7);
        a.save_ring_seq(3);
        let b = RunState::load(dir.path());
        assert_eq!((b.incarnation, b.max_ring_seq), (2, 7));
    }

    #[test]
    fn an_unusable_directory_falls_back_to_the_clock() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let a = RunState::load(&file.path().join("sub"));
        let b = RunState::load(&file.path().join("sub"));
        assert!(a.incarnation > 1_000_000 && b.incarnation >= a.incarnation);
        assert!(a.max_ring_seq > 0);
    }
}
