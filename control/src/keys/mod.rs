//! Group key agreement: five contributory (and one centralized) protocols behind one
//! sans-IO interface, over any [`DhGroup`].
//!
//! The layer above (the daemons for their own key, or a layered client group) feeds each
//! member's protocol instance the same sequence of [`View`]s, as delivered by the group
//! communication system with virtual synchrony, and the protocol messages that other
//! members sent. A view whose membership equals the previous one is a refresh. An instance
//! answers with messages to send and, once the run completes, the new [`GroupKey`].
//!
//! A view that arrives while a run is in progress abandons that run and starts a new one
//! for the new membership (the cascading-events rule of the Secure Spread paper, §5.4);
//! messages of the abandoned run are then stale and rejected by epoch.

pub mod bd;
pub mod ckd;
pub mod dh;
pub mod driver;
pub mod envelope;
pub mod gdh;
pub mod kdf;
pub mod modp;
#[cfg(test)]
mod secrecy;
pub mod session;
pub mod str_tree;
mod support;
pub mod tgdh;

use std::fmt;
use std::sync::Arc;

use rand_core::CryptoRngCore;
use thiserror::Error;
use zeroize::{Zeroize, ZeroizeOnDrop};

pub use dh::{DhGroup, Ristretto255};
pub use envelope::{Directory, Envelope, Identity};

/// A member's stable identity within a key-agreement group: a client's private name or a
/// daemon's name. Ordering is by the string, which makes tie-breaks deterministic.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MemberId(pub String);

impl MemberId {
    /// Builds an id from anything string-like.
    pub fn new(name: impl Into<String>) -> Self {
        Self(name.into())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Lets maps keyed by member be searched with a name borrowed from a message, without
/// allocating (the derived `Hash`, `Eq` and `Ord` are the string's, as `Borrow` requires).
impl std::borrow::Borrow<str> for MemberId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for MemberId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for MemberId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Which key-agreement protocol a group runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Protocol {
    /// Tree-based Group Diffie-Hellman (the default).
    Tgdh = 1,
    /// Group Diffie-Hellman (Cliques IKA/AKA).
    Gdh = 2,
    /// Skinny TRee.
    Str = 3,
    /// Burmester–Desmedt.
    Bd = 4,
    /// Centralized key distribution.
    Ckd = 5,
}

impl Protocol {
    /// All protocols.
    pub const ALL: [Protocol; 5] = [
        Protocol::Tgdh,
        Protocol::Gdh,
        Protocol::Str,
        Protocol::Bd,
        Protocol::Ckd,
    ];

    /// Lower-case name, as configs and the CLI write it.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tgdh => "tgdh",
            Protocol::Gdh => "gdh",
            Protocol::Str => "str",
            Protocol::Bd => "bd",
            Protocol::Ckd => "ckd",
        }
    }

    /// Parses a lower-case name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }

    /// Parses the wire byte.
    pub fn from_u8(value: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|p| *p as u8 == value)
    }
}

/// One member of a view: its stable name and its incarnation. A process that leaves (or
/// crashes) and comes back under the same name is a new member with a higher incarnation:
/// it holds none of its predecessor's secrets, and every protocol treats it as a
/// newcomer, never as the member it replaces.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Member {
    /// The member's name (its long-term identity).
    pub id: MemberId,
    /// Which life of `id` this is; assigned by the membership layer, increasing each time
    /// the name comes back.
    pub incarnation: u64,
}

impl Member {
    /// `id` in its incarnation `incarnation`.
    pub fn new(id: MemberId, incarnation: u64) -> Self {
        Self { id, incarnation }
    }
}

/// One membership of the group, as every member receives it in the same order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    /// The group's name; every protocol message is bound to it.
    pub group: String,
    /// Strictly increasing across the views of one group; names the protocol run.
    pub epoch: u64,
    /// The members, oldest first (join order; members that arrived together by a merge
    /// are in a deterministic order agreed by all). GDH's controller is the last, CKD's the
    /// first.
    pub members: Vec<Member>,
}

impl View {
    /// A view whose members are all in their first incarnation (0).
    pub fn new(
        group: impl Into<String>,
        epoch: u64,
        ids: impl IntoIterator<Item = MemberId>,
    ) -> Self {
        Self {
            group: group.into(),
            epoch,
            members: ids.into_iter().map(|id| Member::new(id, 0)).collect(),
        }
    }

    /// The members' ids, oldest first.
    pub fn member_ids(&self) -> impl Iterator<Item = &MemberId> {
        self.members.iter().map(|m| &m.id)
    }

    /// The incarnation of `id` in this view, if it is a member.
    pub fn incarnation_of(&self, id: &MemberId) -> Option<u64> {
        self.members
            .iter()
            .find(|m| &m.id == id)
            .map(|m| m.incarnation)
    }

    /// Whether `id` (in any incarnation) is a member.
    pub fn contains(&self, id: &MemberId) -> bool {
        self.members.iter().any(|m| &m.id == id)
    }
}

/// Where a protocol message goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// Every member of the current view (the sender receives its own copy too and must
    /// ignore it).
    Broadcast,
    /// One member.
    Unicast(MemberId),
}

/// A message a protocol instance asks its driver to send: a signed [`Envelope`]'s bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// Who gets it.
    pub to: Destination,
    /// The encoded, signed envelope.
    pub bytes: Vec<u8>,
}

/// The agreed group secret of one epoch. The secret is wiped when this is dropped, its
/// `Debug` shows only a one-way fingerprint, and equality is constant-time.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct GroupKey {
    /// The view epoch this key belongs to.
    #[zeroize(skip)]
    pub epoch: u64,
    /// 32 bytes derived (by hashing) from the protocol's group secret.
    pub secret: [u8; 32],
}

impl GroupKey {
    /// A short one-way fingerprint of the secret, to compare keys in logs: the first four
    /// bytes of a SHA-256 of it under its own label, never bytes of the key itself.
    pub fn fingerprint(&self) -> [u8; 4] {
        use sha2::{Digest, Sha256};
        let digest = Sha256::new()
            .chain_update(b"conclave group key fingerprint v1")
            .chain_update(self.secret)
            .finalize();
        [digest[0], digest[1], digest[2], digest[3]]
    }
}

impl PartialEq for GroupKey {
    fn eq(&self, other: &Self) -> bool {
        // Constant-time in the secret: comparing keys must not leak a matching prefix.
        use subtle::ConstantTimeEq;
        self.epoch == other.epoch && bool::from(self.secret.ct_eq(&other.secret))
    }
}

impl Eq for GroupKey {}

impl fmt::Debug for GroupKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secret, not even a prefix of it: a prefix is key material.
        let fp = self.fingerprint();
        write!(
            f,
            "GroupKey {{ epoch: {}, fp: {:02x}{:02x}{:02x}{:02x} }}",
            self.epoch, fp[0], fp[1], fp[2], fp[3]
        )
    }
}

/// Why a member cannot complete a run on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StallReason {
    /// The settled tree lists a leaf key for this member older than the leaf secrets it
    /// keeps (an announcer's state was very out of date).
    UnknownLeafSecret,
    /// A blinded key this member's path needs does not decode to a valid element (an
    /// insider announced garbage).
    BadBlindedKey,
}

/// The signal that a run cannot complete at this member: the layer above should install
/// a new view (a refresh) to start a new run. Until then the instance stays in progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshNeeded {
    /// The run's group.
    pub group: String,
    /// The run's epoch.
    pub epoch: u64,
    /// Why.
    pub reason: StallReason,
}

/// What one step of a protocol instance produced.
#[derive(Debug, Default)]
pub struct Output {
    /// Messages to send, in order.
    pub sends: Vec<Outgoing>,
    /// Set when this step completed the run: the new key.
    pub key: Option<GroupKey>,
    /// Messages that this step handled on the side and refused, with why: early messages
    /// replayed when their view arrived, and confirmations that had arrived before this
    /// member's key and do not match it ([`KeyError::ConfirmationFailed`]). Reported here
    /// rather than dropped, because the step itself succeeded.
    pub refused: Vec<(MemberId, KeyError)>,
    /// Set when this step found that the run cannot complete at this member.
    pub refresh_needed: Option<RefreshNeeded>,
}

/// Counts of the expensive operations one instance performed, for the cost tables.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpCounts {
    /// Exponentiations (MODP) or scalar multiplications (elliptic curve).
    pub exponentiations: u64,
    /// Signatures made.
    pub signatures: u64,
    /// Signatures verified.
    pub verifications: u64,
}

/// Why a well-formed, correctly signed message does not fit the run. Each check has a
/// number (in the style of openmls's validation errors), so logs, tests and the layer
/// above can name the exact rule that refused a message: V0x any protocol, V1x GDH,
/// V3x BD, V4x CKD, V5x the tree protocols, V6x the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum Validation {
    /// V01: No view yet.
    #[error("V01: no view yet")]
    NoView,
    /// V02: The run is already complete.
    #[error("V02: the run is already complete")]
    RunComplete,
    /// V03: Message for another role in this run.
    #[error("V03: message for another role in this run")]
    WrongRole,
    /// V10: The upflow chain names a non-member or a member twice.
    #[error("V10: the upflow chain names a non-member or a member twice")]
    ChainNotInView,
    /// V11: Upflow not addressed to this member.
    #[error("V11: upflow not addressed to this member")]
    UpflowNotForMe,
    /// V12: Upflow from the wrong member.
    #[error("V12: upflow from the wrong member")]
    UpflowWrongSender,
    /// V13: Upflow to the collecting controller.
    #[error("V13: upflow to the collecting controller")]
    UpflowWhileCollecting,
    /// V14: The upflow chain does not end at the view's last member.
    #[error("V14: the upflow chain does not end at the view's last member")]
    ChainNotEndingAtController,
    /// V15: A second factor request in one run.
    #[error("V15: a second factor request in one run")]
    SecondFactorRequest,
    /// V16: Factor request to the controller itself.
    #[error("V16: factor request to the controller itself")]
    FactorRequestToController,
    /// V17: Factored-out value to a member that is not collecting.
    #[error("V17: factored-out value to a member that is not collecting")]
    FactorToNonController,
    /// V18: Final set when none is expected.
    #[error("V18: final set when none is expected")]
    FinalUnexpected,
    /// V19: Final set does not cover the view.
    #[error("V19: final set does not cover the view")]
    FinalNotCoveringView,
    /// V20: Final set out of view order.
    #[error("V20: final set out of view order")]
    FinalOutOfOrder,
    /// V30: BD: no second round for two members.
    #[error("V30: BD: no second round for two members")]
    NoSecondRoundForTwo,
    /// V40: CKD: blinded value that was not asked for.
    #[error("V40: CKD: blinded value that was not asked for")]
    BlindedValueNotAsked,
    /// V41: CKD: the secret is not sent to every member.
    #[error("V41: CKD: the secret is not sent to every member")]
    SecretNotSentToAll,
    /// V42: CKD: no secret for this member.
    #[error("V42: CKD: no secret for this member")]
    NoSecretForMe,
    /// V43: CKD: the secret does not decrypt under the pairwise key.
    #[error("V43: CKD: the secret does not decrypt under the pairwise key")]
    SecretDoesNotDecrypt,
    /// V50: Tree: announcement without its announcer.
    #[error("V50: tree: announcement without its announcer")]
    AnnouncementWithoutAnnouncer,
    /// V51: Tree: the announced tree does not fit the view.
    #[error("V51: tree: the announced tree does not fit the view")]
    AnnouncedTreeDoesNotFit,
    /// V52: Tree: published node not in the tree.
    #[error("V52: tree: published node not in the tree")]
    PublishedNodeNotInTree,
    /// V53: Tree: the sender does not publish this node.
    #[error("V53: tree: the sender does not publish this node")]
    NotPublisherOfNode,
    /// V54: Tree: the root's blinded key was published.
    #[error("V54: tree: the root's blinded key was published")]
    RootKeyPublished,
    /// V55: Tree: a node published twice with different keys.
    #[error("V55: tree: a node published twice with different keys")]
    NodePublishedTwice,
    /// V56: Tree: the settled tree lacks this member.
    #[error("V56: tree: the settled tree lacks this member")]
    SettledTreeLacksMe,
    /// V57: Tree: the announcements cover no member.
    #[error("V57: tree: the announcements cover no member")]
    EmptyView,
    /// V58: Tree: too many publish messages held for an unsettled tree.
    #[error("V58: tree: too many publish messages held for an unsettled tree")]
    TooManyPending,
    /// V60: Confirmation checked before this member's key.
    #[error("V60: confirmation checked before this member's key")]
    ConfirmationBeforeKey,
}

/// Why a protocol step was refused. Nothing is applied when an error is returned.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The envelope could not be decoded.
    #[error("malformed key-agreement message: {0}")]
    Malformed(&'static str),
    /// The signature does not verify under the sender's registered key.
    #[error("bad signature from {0}")]
    BadSignature(MemberId),
    /// The sender has no registered public key, or is not in the current view.
    #[error("unknown sender {0}")]
    UnknownSender(MemberId),
    /// The envelope names another group.
    #[error("message for group {got:?}, this instance serves {expected:?}")]
    WrongGroup {
        /// Group in the message.
        got: String,
        /// Group of this instance.
        expected: String,
    },
    /// The envelope names another protocol.
    #[error("message for protocol {got}, this instance runs {expected}")]
    WrongProtocol {
        /// Protocol byte in the message.
        got: u8,
        /// Protocol of this instance.
        expected: u8,
    },
    /// The envelope belongs to an older (or future) run.
    #[error("message of epoch {got}, current run is epoch {current}")]
    StaleEpoch {
        /// Epoch in the message.
        got: u64,
        /// The current epoch.
        current: u64,
    },
    /// A message this member already applied in this run (a replay).
    #[error("duplicate message from {0} in this run")]
    Duplicate(MemberId),
    /// A message that does not fit the state of the run: which numbered check refused it.
    #[error("invalid message: {0}")]
    Invalid(#[from] Validation),
    /// A group element failed to decode or is not a valid element (e.g. identity).
    #[error("invalid group element")]
    BadElement,
    /// A view that breaks the rules (epoch not increasing, this member absent, duplicates).
    #[error("invalid view: {0}")]
    BadView(&'static str),
    /// Key confirmation failed: `member` proved a key for the run (`group`, `epoch`) other
    /// than this member's. The run's key is never reported; the layer above should start
    /// a new run (a refresh).
    #[error("key confirmation failed in run {group:?} epoch {epoch}: {member} derived another key")]
    ConfirmationFailed {
        /// The run's group.
        group: String,
        /// The run's epoch.
        epoch: u64,
        /// The member whose confirmation did not match.
        member: MemberId,
    },
    /// A message of a later epoch arrived while `limit` such messages were held already.
    #[error("early message refused: {limit} messages of later epochs are held already")]
    FutureBufferFull {
        /// The configured bound.
        limit: usize,
    },
    /// Only the run's controller may send this message (GDH: FINAL and factor requests).
    #[error(
        "{sender} sent a controller's message; the controller of epoch {epoch} is {controller}"
    )]
    NotController {
        /// Who sent it.
        sender: MemberId,
        /// The run's controller.
        controller: MemberId,
        /// The run's epoch.
        epoch: u64,
    },
}

/// One member's protocol instance. Every protocol implements this; drivers and tests are
/// written against it alone. `Debug` is required so instances can be logged, and every
/// implementation must keep secrets (shares, path keys, group keys) out of it.
pub trait KeyAgreement: Send + fmt::Debug {
    /// The protocol this instance runs.
    fn protocol(&self) -> Protocol;

    /// This member.
    fn me(&self) -> &MemberId;

    /// The DH group's name (`DhGroup::name`), which the group key is bound to.
    fn dh_group(&self) -> &'static str;

    /// A new view: starts a run for it (abandoning any run in progress).
    fn handle_view(&mut self, view: &View, rng: &mut dyn CryptoRngCore)
    -> Result<Output, KeyError>;

    /// A protocol message from another member (or this member's own broadcast, which is
    /// ignored). `bytes` is an encoded [`Envelope`].
    fn handle_message(
        &mut self,
        from: &MemberId,
        bytes: &[u8],
        rng: &mut dyn CryptoRngCore,
    ) -> Result<Output, KeyError>;

    /// The key of the last completed run, if any.
    fn current_key(&self) -> Option<&GroupKey>;

    /// True while a run is in progress (a view was handled and its key is not yet known).
    fn in_progress(&self) -> bool;

    /// Operation counts since this instance was created.
    fn op_counts(&self) -> OpCounts;

    /// Test-only white-box view of every secret the instance holds now (for the secrecy
    /// checks in `keys::secrecy`); never compiled into the product.
    #[cfg(test)]
    fn leak(&self) -> Leak {
        Leak::default()
    }
}

/// What an instance knows that nobody else should (test builds only): exponents, secret
/// DH results and key-derivation inputs, symmetric keys.
#[cfg(test)]
#[derive(Debug, Clone, Default)]
pub struct Leak {
    /// Secret exponents, encoded by `DhGroup::scalar_bytes`.
    pub scalars: Vec<Vec<u8>>,
    /// Secret inputs of key derivation: encoded DH results, CKD's group secrets.
    pub ikms: Vec<Vec<u8>>,
    /// Symmetric keys: pairwise keys, group keys.
    pub keys: Vec<[u8; 32]>,
}

/// Makes a protocol instance for `identity`: the one place that maps a [`Protocol`] to its
/// implementation, so drivers, daemons and clients can pick the protocol at run time. The
/// instance is wrapped in a [`session::Session`]: its keys are reported only once every
/// member confirmed them, and messages of later epochs are held until their view.
pub fn new_instance<G: DhGroup>(
    protocol: Protocol,
    group: G,
    identity: Arc<Identity>,
    directory: Directory,
) -> Box<dyn KeyAgreement> {
    Box::new(session::Session::new(new_protocol_instance(
        protocol, group, identity, directory,
    )))
}

/// The bare protocol instance, without key confirmation or early-message buffering (for
/// known-answer vectors and tests that look at a protocol alone).
pub fn new_protocol_instance<G: DhGroup>(
    protocol: Protocol,
    group: G,
    identity: Arc<Identity>,
    directory: Directory,
) -> Box<dyn KeyAgreement> {
    match protocol {
        Protocol::Gdh => Box::new(gdh::Gdh::new(group, identity, directory)),
        Protocol::Bd => Box::new(bd::Bd::new(group, identity, directory)),
        Protocol::Ckd => Box::new(ckd::Ckd::new(group, identity, directory)),
        Protocol::Tgdh => Box::new(tgdh::Tgdh::new(group, identity, directory)),
        Protocol::Str => Box::new(str_tree::Str::new(group, identity, directory)),
    }
}
