//! The invariants, checked delivery by delivery, independent of how deliveries were made.

use std::collections::{HashMap, HashSet};
use std::fmt;

use conclave_control::wire::client::Service;

/// Identifies a submitted message: (origin daemon, its counter at that daemon).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MsgId {
    /// Submitting daemon (index in the simulation).
    pub origin: u16,
    /// Per-origin counter, raised on every accepted submit.
    pub counter: u32,
}

impl fmt::Display for MsgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.origin, self.counter)
    }
}

/// An invariant the run broke, with what the checker saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// A daemon's n-th ordered delivery differs from another daemon's n-th.
    Order {
        /// The daemon that deviated.
        daemon: usize,
        /// Position in the ordered deliveries.
        index: usize,
        /// What the first daemon to reach this position delivered.
        expected: MsgId,
        /// What this daemon delivered.
        got: MsgId,
    },
    /// Delivered twice at one daemon.
    Duplicate {
        /// The daemon.
        daemon: usize,
        /// The message.
        id: MsgId,
    },
    /// A sender's messages out of its submit order.
    Fifo {
        /// The daemon.
        daemon: usize,
        /// The message that came after a later one.
        id: MsgId,
        /// The later counter already delivered.
        after: u32,
    },
    /// SAFE delivered while some daemon did not yet hold it.
    SafeTooEarly {
        /// The delivering daemon.
        daemon: usize,
        /// The message.
        id: MsgId,
        /// Its sequence number.
        seq: u64,
        /// A daemon that did not hold it.
        lacking: usize,
    },
    /// Delivered bytes, origin or service differ from what was submitted, or never submitted.
    Corrupt {
        /// The daemon.
        daemon: usize,
        /// What was wrong.
        what: String,
    },
    /// After the quiet phase, a daemon still lacks messages.
    Undelivered {
        /// The daemon.
        daemon: usize,
        /// How many it lacks.
        missing: usize,
        /// One of them.
        example: MsgId,
    },
    /// A well-formed datagram was refused, or a malformed one accepted.
    Packet {
        /// The receiving daemon.
        daemon: usize,
        /// What happened.
        what: String,
    },
    /// The run hit its step bound without finishing.
    Stuck {
        /// Steps taken.
        steps: u64,
    },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::Order {
                daemon,
                index,
                expected,
                got,
            } => write!(
                f,
                "total order: daemon {daemon} delivered {got} at position {index}, others {expected}"
            ),
            Violation::Duplicate { daemon, id } => {
                write!(f, "duplicate: daemon {daemon} delivered {id} twice")
            }
            Violation::Fifo { daemon, id, after } => write!(
                f,
                "fifo: daemon {daemon} delivered {id} after counter {after} of the same sender"
            ),
            Violation::SafeTooEarly {
                daemon,
                id,
                seq,
                lacking,
            } => write!(
                f,
                "safe: daemon {daemon} delivered {id} (seq {seq}) before daemon {lacking} held it"
            ),
            Violation::Corrupt { daemon, what } => write!(f, "corrupt at daemon {daemon}: {what}"),
            Violation::Undelivered {
                daemon,
                missing,
                example,
            } => write!(
                f,
                "liveness: daemon {daemon} lacks {missing} messages after the quiet phase, e.g. {example}"
            ),
            Violation::Packet { daemon, what } => write!(f, "packet at daemon {daemon}: {what}"),
            Violation::Stuck { steps } => write!(f, "stuck: no completion after {steps} steps"),
        }
    }
}

impl std::error::Error for Violation {}

/// The message bytes the simulator submits for `id`: a 7-byte header then filler, so a
/// delivery proves its own identity and integrity.
pub fn payload(id: MsgId, service: Service, len: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(len.max(HEADER));
    p.extend_from_slice(&id.origin.to_le_bytes());
    p.extend_from_slice(&id.counter.to_le_bytes());
    p.push(service as u8);
    let mut x = u32::from(id.origin) << 24 ^ id.counter;
    while p.len() < len {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        p.push((x >> 16) as u8);
    }
    p
}

const HEADER: usize = 7;

/// One delivery as the checker sees it.
#[derive(Debug, Clone, Copy)]
pub struct Observed<'a> {
    /// Ring sequence number of the delivery.
    pub seq: u64,
    /// Origin the ring reported.
    pub origin: u16,
    /// Service the ring reported.
    pub service: Service,
    /// The delivered bytes.
    pub payload: &'a [u8],
}

#[derive(Debug, Default)]
struct DaemonLog {
    delivered: HashSet<MsgId>,
    ordered: usize,
    last_counter: HashMap<u16, u32>,
    last_seq: u64,
}

/// Incremental checker of the delivery invariants.
#[derive(Debug)]
pub struct Checker {
    submitted: HashMap<MsgId, (Service, usize)>,
    order: Vec<MsgId>,
    logs: Vec<DaemonLog>,
}

fn ordered(service: Service) -> bool {
    !matches!(service, Service::Unreliable | Service::Reliable)
}

impl Checker {
    /// A checker for `daemons` daemons.
    pub fn new(daemons: usize) -> Self {
        Checker {
            submitted: HashMap::new(),
            order: Vec::new(),
            logs: (0..daemons).map(|_| DaemonLog::default()).collect(),
        }
    }

    /// Records an accepted submission.
    pub fn submitted(&mut self, id: MsgId, service: Service, len: usize) {
        self.submitted.insert(id, (service, len));
    }

    /// How many messages were accepted.
    pub fn submitted_count(&self) -> usize {
        self.submitted.len()
    }

    /// Total deliveries seen.
    pub fn delivered_count(&self) -> usize {
        self.logs.iter().map(|l| l.delivered.len()).sum()
    }

    /// Checks one delivery at `daemon`; `held_through[e]` is how far daemon `e` holds every
    /// packet at this moment.
    pub fn on_delivery(
        &mut self,
        daemon: usize,
        d: Observed<'_>,
        held_through: &[u64],
    ) -> Result<(), Violation> {
        let corrupt = |what: String| Violation::Corrupt { daemon, what };
        if d.payload.len() < HEADER {
            return Err(corrupt(format!("payload of {} bytes", d.payload.len())));
        }
        let id = MsgId {
            origin: u16::from_le_bytes([d.payload[0], d.payload[1]]),
            counter: u32::from_le_bytes([d.payload[2], d.payload[3], d.payload[4], d.payload[5]]),
        };
        let Some(&(service, len)) = self.submitted.get(&id) else {
            return Err(corrupt(format!("{id} was never submitted")));
        };
        if d.origin != id.origin || d.service != service {
            return Err(corrupt(format!(
                "{id}: origin {} service {:?}, submitted as {service:?}",
                d.origin, d.service
            )));
        }
        if d.payload != payload(id, service, len).as_slice() {
            return Err(corrupt(format!("{id}: bytes differ")));
        }
        let log = &mut self.logs[daemon];
        if !log.delivered.insert(id) {
            return Err(Violation::Duplicate { daemon, id });
        }
        if !ordered(service) {
            return Ok(());
        }
        if d.seq < log.last_seq {
            return Err(Violation::Order {
                daemon,
                index: log.ordered,
                expected: self.order.get(log.ordered).copied().unwrap_or(id),
                got: id,
            });
        }
        log.last_seq = d.seq;
        match self.order.get(log.ordered) {
            Some(&expected) if expected != id => {
                return Err(Violation::Order {
                    daemon,
                    index: log.ordered,
                    expected,
                    got: id,
                });
            }
            Some(_) => {}
            None => self.order.push(id),
        }
        log.ordered += 1;
        if let Some(&after) = log.last_counter.get(&id.origin)
            && after >= id.counter
        {
            return Err(Violation::Fifo { daemon, id, after });
        }
        log.last_counter.insert(id.origin, id.counter);
        if service == Service::Safe
            && let Some(lacking) = held_through.iter().position(|&h| h < d.seq)
        {
            return Err(Violation::SafeTooEarly {
                daemon,
                id,
                seq: d.seq,
                lacking,
            });
        }
        Ok(())
    }

    /// Whether every daemon delivered every accepted message.
    pub fn complete(&self) -> bool {
        self.logs
            .iter()
            .all(|l| l.delivered.len() == self.submitted.len())
    }

    /// The liveness verdict at the end of the quiet phase.
    pub fn check_complete(&self) -> Result<(), Violation> {
        for (daemon, log) in self.logs.iter().enumerate() {
            if log.delivered.len() != self.submitted.len() {
                let mut missing: Vec<MsgId> = self
                    .submitted
                    .keys()
                    .filter(|id| !log.delivered.contains(id))
                    .copied()
                    .collect();
                missing.sort();
                return Err(Violation::Undelivered {
                    daemon,
                    missing: missing.len(),
                    example: missing.first().copied().unwrap_or(MsgId {
                        origin: 0,
                        counter: 0,
                    }),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(origin: u16, counter: u32) -> MsgId {
        MsgId { origin, counter }
    }

    fn setup() -> (Checker, Vec<(MsgId, Service, Vec<u8>)>) {
        let mut c = Checker::new(2);
        let msgs: Vec<_> = [
            (id(0, 0), Service::Agreed),
            (id(0, 1), Service::Safe),
            (id(1, 0), Service::Fifo),
            (id(1, 1), Service::Reliable),
        ]
        .into_iter()
        .map(|(i, s)| {
            c.submitted(i, s, 20);
            (i, s, payload(i, s, 20))
        })
        .collect();
        (c, msgs)
    }

    fn obs(m: &(MsgId, Service, Vec<u8>), seq: u64) -> Observed<'_> {
        Observed {
            seq,
            origin: m.0.origin,
            service: m.1,
            payload: &m.2,
        }
    }

    #[test]
    fn accepts_a_correct_log() {
        let (mut c, m) = setup();
        for d in 0..2 {
            c.on_delivery(d, obs(&m[0], 1), &[9, 9]).expect("ok");
            c.on_delivery(d, obs(&m[2], 2), &[9, 9]).expect("ok");
            c.on_delivery(d, obs(&m[1], 3), &[9, 9]).expect("ok");
            c.on_delivery(d, obs(&m[3], 4), &[9, 9]).expect("ok");
        }
        assert!(c.complete());
        assert_eq!(c.check_complete(), Ok(()));
    }

    #[test]
    fn catches_wrong_order() {
        let (mut c, m) = setup();
        c.on_delivery(0, obs(&m[0], 1), &[9, 9]).expect("ok");
        c.on_delivery(0, obs(&m[2], 2), &[9, 9]).expect("ok");
        let e = c.on_delivery(1, obs(&m[2], 1), &[9, 9]);
        assert!(
            matches!(e, Err(Violation::Order { daemon: 1, .. })),
            "{e:?}"
        );
    }

    #[test]
    fn catches_duplicates_fifo_safe_corruption_and_loss() {
        let (mut c, m) = setup();
        c.on_delivery(0, obs(&m[0], 1), &[9, 9]).expect("ok");
        assert_eq!(
            c.on_delivery(0, obs(&m[0], 1), &[9, 9]),
            Err(Violation::Duplicate {
                daemon: 0,
                id: id(0, 0)
            })
        );

        let (mut c, m) = setup();
        let later = (
            id(0, 1),
            Service::Agreed,
            payload(id(0, 1), Service::Safe, 20),
        );
        c.on_delivery(0, obs(&m[1], 1), &[9, 9]).expect("ok");
        let e = c.on_delivery(0, obs(&m[0], 2), &[9, 9]);
        assert!(matches!(e, Err(Violation::Fifo { .. })), "{e:?}");
        let e = c.on_delivery(1, obs(&later, 1), &[9, 9]);
        assert!(matches!(e, Err(Violation::Corrupt { .. })), "{e:?}");

        let (mut c, m) = setup();
        let e = c.on_delivery(0, obs(&m[1], 5), &[9, 4]);
        assert!(
            matches!(e, Err(Violation::SafeTooEarly { lacking: 1, .. })),
            "{e:?}"
        );

        let (mut c, m) = setup();
        let mut bad = m[0].clone();
        bad.2[10] ^= 1;
        let e = c.on_delivery(0, obs(&bad, 1), &[9, 9]);
        assert!(matches!(e, Err(Violation::Corrupt { .. })), "{e:?}");

        c.on_delivery(0, obs(&m[0], 1), &[9, 9]).expect("ok");
        assert!(!c.complete());
        assert!(matches!(
            c.check_complete(),
            Err(Violation::Undelivered { daemon: 0, .. })
        ));
    }
}
