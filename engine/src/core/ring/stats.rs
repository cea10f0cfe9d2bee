//! Counters a [`Ring`](super::Ring) keeps about its traffic.

/// Monotonic counters; read with [`Ring::stats`](super::Ring::stats).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RingStats {
    /// Datagrams handed to `handle_datagram`.
    pub datagrams_received: u64,
    /// Data packets stored for the first time.
    pub data_received: u64,
    /// Data packets already held (or already garbage-collected) when they came.
    pub duplicate_data: u64,
    /// Tokens accepted.
    pub tokens_received: u64,
    /// Tokens dropped as duplicates or old copies.
    pub duplicate_tokens: u64,
    /// Datagrams dropped for being shorter than their headers.
    pub dropped_truncated: u64,
    /// Datagrams dropped for an unknown version.
    pub dropped_version: u64,
    /// Datagrams dropped for belonging to another ring.
    pub dropped_wrong_ring: u64,
    /// Datagrams dropped for a structural fault (kind, service, lengths, fields).
    pub dropped_malformed: u64,
    /// Datagrams dropped for coming from, or naming, a non-member, or a token not from the
    /// predecessor.
    pub dropped_sender: u64,
    /// Data packets dropped for lying beyond the flow-control horizon.
    pub dropped_too_far: u64,
    /// New data packets multicast.
    pub data_sent: u64,
    /// Data packets multicast again on request.
    pub retransmissions_sent: u64,
    /// Tokens forwarded (first sends).
    pub tokens_sent: u64,
    /// Tokens resent after the retransmission timeout.
    pub token_retransmits: u64,
    /// Times the representative held an idle token.
    pub token_holds: u64,
    /// Sequence numbers this daemon asked to be retransmitted.
    pub retransmit_requests: u64,
    /// Messages accepted by `submit`.
    pub messages_submitted: u64,
    /// Messages refused by `submit` for backpressure.
    pub messages_refused: u64,
    /// Messages (whole or reassembled) handed out by `poll_delivery`.
    pub messages_delivered: u64,
    /// Fragments that did not fit the message being reassembled (dropped).
    pub reassembly_errors: u64,
}
