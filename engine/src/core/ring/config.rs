//! Identities and settings of one ring.

use std::time::Duration;

use thiserror::Error;

/// A daemon's index in the configuration file's daemon list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct DaemonIdx(pub u16);

impl DaemonIdx {
    /// Reserved on the wire for "no daemon" (the token's aru-setter when nobody set it).
    pub const NONE: DaemonIdx = DaemonIdx(u16::MAX);
}

/// Names one ring instance: its representative and a counter the membership protocol
/// raises every time it installs a new ring, so packets of an older ring are told apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct RingId {
    /// The daemon that formed the ring (it creates the first token).
    pub representative: DaemonIdx,
    /// Raised by the membership protocol on every new ring.
    pub seq: u64,
}

/// Everything a [`Ring`](super::Ring) needs to know, fixed for the ring's lifetime.
#[derive(Debug, Clone)]
pub struct RingConfig {
    /// This daemon.
    pub me: DaemonIdx,
    /// Every daemon of the ring, in token-passing order; must contain `me` and the
    /// representative, without duplicates.
    pub members: Vec<DaemonIdx>,
    /// The ring instance.
    pub ring_id: RingId,
    /// Most data packets (new and retransmitted) multicast by all daemons together in one
    /// token rotation (Totem's window).
    pub window_per_rotation: u32,
    /// Most data packets one daemon multicasts in one token visit (Totem's personal window).
    pub window_per_daemon: u32,
    /// Most packets the ring may have beyond the lowest all-received-up-to; bounds the
    /// retransmission store when one daemon falls behind.
    pub max_unstable: u32,
    /// Largest datagram written, in bytes (at most 65507, the UDP limit).
    pub max_datagram: usize,
    /// Largest application message accepted by [`Ring::submit`](super::Ring::submit).
    pub max_message: usize,
    /// Most messages waiting in the submit queue before `submit` pushes back.
    pub max_pending_messages: usize,
    /// Most payload bytes waiting in the submit queue before `submit` pushes back.
    pub max_pending_bytes: usize,
    /// After forwarding the token, resend it if no sign of its receipt came back in this time.
    pub token_retransmit_timeout: Duration,
    /// Without the token for this long, [`Ring::token_loss_deadline`](super::Ring::token_loss_deadline)
    /// passes: the token is lost and membership must rebuild the ring.
    pub token_loss_timeout: Duration,
    /// Most sequence numbers carried in the token's retransmission-request list.
    pub max_rtr: usize,
    /// Run the Accelerated Ring variant (pass the token before finishing the multicasts).
    pub accelerated: bool,
    /// How long the representative keeps an idle token (a full rotation without traffic)
    /// before passing it on; a submit releases it at once. Zero never holds it.
    pub idle_token_hold: Duration,
}

impl RingConfig {
    /// A ring of `members` as seen by `me`, with the default settings; the first member is
    /// the representative and the ring counter is 1.
    pub fn new(me: DaemonIdx, members: Vec<DaemonIdx>) -> Self {
        let representative = members.first().copied().unwrap_or(me);
        RingConfig {
            me,
            members,
            ring_id: RingId {
                representative,
                seq: 1,
            },
            window_per_rotation: 256,
            window_per_daemon: 64,
            max_unstable: 4096,
            max_datagram: 8 * 1024,
            max_message: 1024 * 1024,
            max_pending_messages: 65_536,
            max_pending_bytes: 16 * 1024 * 1024,
            token_retransmit_timeout: Duration::from_millis(10),
            token_loss_timeout: Duration::from_millis(500),
            max_rtr: 256,
            idle_token_hold: Duration::from_micros(500),
            accelerated: false,
        }
    }

    /// Checks the settings against each other.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.members.is_empty() || self.members.len() > usize::from(u16::MAX) {
            return Err(ConfigError::Members);
        }
        let mut seen = self.members.clone();
        seen.sort_unstable();
        seen.dedup();
        if seen.len() != self.members.len() || seen.contains(&DaemonIdx::NONE) {
            return Err(ConfigError::Members);
        }
        if !self.members.contains(&self.me) {
            return Err(ConfigError::NotAMember);
        }
        if !self.members.contains(&self.ring_id.representative) {
            return Err(ConfigError::Representative);
        }
        if !(super::wire::MIN_DATAGRAM..=super::wire::MAX_DATAGRAM).contains(&self.max_datagram) {
            return Err(ConfigError::Datagram(self.max_datagram));
        }
        if self.window_per_rotation == 0
            || self.window_per_daemon == 0
            || self.max_unstable < self.window_per_rotation
        {
            return Err(ConfigError::Window);
        }
        if self.max_message == 0 || self.max_message > u32::MAX as usize {
            return Err(ConfigError::MaxMessage(self.max_message));
        }
        if self.token_retransmit_timeout.is_zero()
            || self.token_loss_timeout <= self.token_retransmit_timeout
        {
            return Err(ConfigError::Timeout);
        }
        Ok(())
    }
}

/// A [`RingConfig`] that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConfigError {
    /// Members empty, duplicated, too many, or using the reserved index.
    #[error("ring members must be 1..=65535 distinct daemons")]
    Members,
    /// `me` is not among the members.
    #[error("this daemon is not a member of the ring")]
    NotAMember,
    /// The representative is not among the members.
    #[error("the ring representative is not a member")]
    Representative,
    /// `max_datagram` outside the range the format allows.
    #[error("max_datagram {0} outside {min}..={max}", min = super::wire::MIN_DATAGRAM, max = super::wire::MAX_DATAGRAM)]
    Datagram(usize),
    /// Windows zero, or `max_unstable` smaller than a rotation's window.
    #[error("flow-control windows must be positive and max_unstable >= window_per_rotation")]
    Window,
    /// `max_message` zero or beyond what a fragment header can name.
    #[error("max_message {0} outside 1..=4294967295")]
    MaxMessage(usize),
    /// A zero token retransmission timeout would resend in a loop, and a loss timeout not
    /// above it would declare loss before a single resend.
    #[error("token_retransmit_timeout must be positive and below token_loss_timeout")]
    Timeout,
}
