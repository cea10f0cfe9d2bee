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

impl RingStats {
    /// Adds another ring's counters (membership keeps one total across rings).
    pub fn absorb(&mut self, other: &RingStats) {
        self.datagrams_received += other.datagrams_received;
        self.data_received += other.data_received;
        self.duplicate_data += other.duplicate_data;
        self.tokens_received += other.tokens_received;
        self.duplicate_tokens += other.duplicate_tokens;
        self.dropped_truncated += other.dropped_truncated;
        self.dropped_version += other.dropped_version;
        self.dropped_wrong_ring += other.dropped_wrong_ring;
        self.dropped_malformed += other.dropped_malformed;
        self.dropped_sender += other.dropped_sender;
        self.dropped_too_far += other.dropped_too_far;
        self.data_sent += other.data_sent;
        self.retransmissions_sent += other.retransmissions_sent;
        self.tokens_sent += other.tokens_sent;
        self.token_retransmits += other.token_retransmits;
        self.token_holds += other.token_holds;
        self.retransmit_requests += other.retransmit_requests;
        self.messages_submitted += other.messages_submitted;
        self.messages_refused += other.messages_refused;
        self.messages_delivered += other.messages_delivered;
        self.reassembly_errors += other.reassembly_errors;
    }
}
