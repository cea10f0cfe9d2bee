//! TGDH (Kim, Perrig, Tsudik, "Tree-based Group Key Agreement", ACM TISSEC 2004), and the
//! key-tree engine it shares with STR (`str_tree`).
//!
//! Every node of a binary key tree has a secret `K` and a blinded key `BK = g^K`; a
//! member's leaf secret is its own random share, and an inner node's secret is
//! `element_to_scalar(BK_right^K_left) = element_to_scalar(BK_left^K_right)`. A member
//! knows the secrets on its path and every blinded key, so it computes its path up to the
//! root; the group key is derived (`kdf`) from the root's Diffie-Hellman element (the
//! root's blinded key is never computed, so nothing public is a function of the key).
//!
//! # One rule for every view
//!
//! Each member keeps its *base* tree: the tree of its last run whose shape it knew (shape,
//! blinded keys, and its own path secrets). A view runs in three steps:
//!
//! 1. **Shape.** The view's oldest member announces its base restricted to the view; the
//!    first view member its tree does not cover announces its own base restricted to the
//!    uncovered members, and so on until every member is covered (a *chain* of
//!    announcements). A member announces right away when it is the oldest of its own base
//!    in the view — in the usual cases (join, leave, merge, refresh) that is exactly the
//!    chain, so all announcements go out in parallel; after a cascade left members with
//!    different bases, the chain still resolves, because it depends only on the
//!    announcements every member receives. The announced trees are then merged
//!    deterministically: TGDH inserts each smaller tree at the larger tree's insertion
//!    point (the shallowest rightmost node where it does not increase the height), STR
//!    stacks the smaller tree's leaves on top of the larger.
//! 2. **Validity.** A blinded key is *valid* when it is present and its node's children are
//!    valid and hash to the tag the key was published with. Removing leaves (leave,
//!    partition), inserting trees (join, merge) and blinded keys lost in a cascade all make
//!    the affected nodes invalid, and everyone computes the same validity from the same
//!    announcements. The root is always invalid (it is re-keyed every view).
//! 3. **Sponsors.** For every invalid node whose children are both valid, one *sponsor*
//!    leaf refreshes its secret — TGDH: the node's rightmost leaf; STR: the topmost member
//!    below it (the rightmost leaf of its left child). Every invalid node has one
//!    *publisher* (the publisher of its right invalid child, else of its left one), who
//!    broadcasts its new blinded key as soon as it can compute it. Members compute their
//!    path as blinded keys arrive; several sponsors (partition, merge) take several rounds.
//!
//! A view that arrives in the middle restarts from the base (the run's tree if its shape
//! was known, else the previous base), so nothing depends on whether a run completed.
//! Leaf secrets of the last few runs are kept so a member can match the leaf key an
//! out-of-date announcer lists for it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use rand_core::CryptoRngCore;
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, Zeroizing};

use super::envelope::{BodyReader, BodyWriter};
use super::kdf::{KeyContext, derive_from_encoding};
use super::support::check_view;
use super::{
    Destination, DhGroup, Directory, Envelope, GroupKey, Identity, KeyAgreement, KeyError,
    MemberId, OpCounts, Outgoing, Output, Protocol, RefreshNeeded, StallReason, Validation, View,
};

const ANNOUNCE: u8 = 1;
const PUBLISH: u8 = 2;

/// How many old leaf secrets a member keeps, to match what an out-of-date announcer lists.
const LEAF_HISTORY: usize = 16;

/// Messages a member may buffer before the run's shape is known.
const MAX_PENDING: usize = 4096;

/// Which protocol's shape rules the engine follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shape {
    /// Balanced binary tree (TGDH).
    Balanced,
    /// Skinny tree: every inner node's right child is a leaf (STR).
    Skinny,
}

type Tag = [u8; 16];

/// An encoded blinded key. Shared, not copied: one key sits in the base tree, the run's
/// tree, the caches and the messages of a view at once, and every view used to copy them
/// all (hundreds of allocations per member per event at 128 members).
type Bk = Arc<[u8]>;

/// A key tree as members keep and announce it.
#[derive(Debug, Clone)]
struct TNode {
    kind: Kind,
    bk: Option<Bk>,
    /// For an inner node: hash of the children's blinded keys this `bk` was made from.
    tag: Tag,
}

#[derive(Debug, Clone)]
enum Kind {
    Leaf(MemberId),
    Inner(Box<TNode>, Box<TNode>),
}

fn tag_of(left: &[u8], right: &[u8]) -> Tag {
    let digest = Sha256::new()
        .chain_update(b"conclave key tree tag v1")
        .chain_update((left.len() as u32).to_le_bytes())
        .chain_update(left)
        .chain_update(right)
        .finalize();
    let mut tag = [0u8; 16];
    tag.copy_from_slice(&digest[..16]);
    tag
}

impl TNode {
    fn leaf(member: MemberId, bk: Bk) -> Self {
        Self {
            kind: Kind::Leaf(member),
            bk: Some(bk),
            tag: [0; 16],
        }
    }

    fn inner(left: TNode, right: TNode) -> Self {
        Self {
            kind: Kind::Inner(Box::new(left), Box::new(right)),
            bk: None,
            tag: [0; 16],
        }
    }

    fn leaves(&self, out: &mut Vec<MemberId>) {
        match &self.kind {
            Kind::Leaf(m) => out.push(m.clone()),
            Kind::Inner(l, r) => {
                l.leaves(out);
                r.leaves(out);
            }
        }
    }

    fn members(&self) -> Vec<MemberId> {
        let mut out = Vec::new();
        self.leaves(&mut out);
        out
    }

    /// The leaves, left to right, borrowed rather than copied.
    fn member_refs<'a>(&'a self, out: &mut Vec<&'a MemberId>) {
        match &self.kind {
            Kind::Leaf(m) => out.push(m),
            Kind::Inner(l, r) => {
                l.member_refs(out);
                r.member_refs(out);
            }
        }
    }

    fn contains(&self, member: &MemberId) -> bool {
        match &self.kind {
            Kind::Leaf(m) => m == member,
            Kind::Inner(l, r) => l.contains(member) || r.contains(member),
        }
    }

    fn height(&self) -> usize {
        match &self.kind {
            Kind::Leaf(_) => 0,
            Kind::Inner(l, r) => 1 + l.height().max(r.height()),
        }
    }

    /// Drops the leaves `keep` refuses; a node left with one child is replaced by it.
    fn restrict(self, keep: &dyn Fn(&MemberId) -> bool) -> Option<TNode> {
        match self.kind {
            Kind::Leaf(ref m) => keep(m).then_some(self),
            Kind::Inner(l, r) => {
                match (Self::restrict_boxed(l, keep), Self::restrict_boxed(r, keep)) {
                    (Some(l), Some(r)) => Some(TNode {
                        kind: Kind::Inner(l, r),
                        bk: self.bk,
                        tag: self.tag,
                    }),
                    (Some(only), None) | (None, Some(only)) => Some(*only),
                    (None, None) => None,
                }
            }
        }
    }

    /// [`TNode::restrict`] that keeps the node's allocation: every view restricts the
    /// whole base, and re-boxing each kept node cost an allocation and a free apiece.
    fn restrict_boxed(
        mut node: Box<TNode>,
        keep: &dyn Fn(&MemberId) -> bool,
    ) -> Option<Box<TNode>> {
        let placeholder = TNode {
            kind: Kind::Leaf(MemberId(String::new())),
            bk: None,
            tag: [0; 16],
        };
        let kept = std::mem::replace(&mut *node, placeholder).restrict(keep)?;
        *node = kept;
        Some(node)
    }

    /// Inserts `sub` at the shallowest rightmost node where it does not increase the
    /// height, or above the root when there is none (TGDH join and merge).
    fn insert_balanced(self, sub: TNode) -> TNode {
        let total = self.height();
        let sub_h = sub.height();
        // Nodes in right-first preorder: among equal depths, earlier is further right.
        let mut candidates: Vec<(usize, usize, Vec<bool>)> = Vec::new();
        fn walk(
            n: &TNode,
            depth: usize,
            path: &mut Vec<bool>,
            order: &mut usize,
            total: usize,
            sub_h: usize,
            out: &mut Vec<(usize, usize, Vec<bool>)>,
        ) {
            *order += 1;
            if depth + 1 + n.height().max(sub_h) <= total {
                out.push((depth, *order, path.clone()));
            }
            if let Kind::Inner(l, r) = &n.kind {
                path.push(true);
                walk(r, depth + 1, path, order, total, sub_h, out);
                path.pop();
                path.push(false);
                walk(l, depth + 1, path, order, total, sub_h, out);
                path.pop();
            }
        }
        let mut order = 0;
        walk(
            &self,
            0,
            &mut Vec::new(),
            &mut order,
            total,
            sub_h,
            &mut candidates,
        );
        match candidates.into_iter().min_by_key(|(d, o, _)| (*d, *o)) {
            None => TNode::inner(self, sub),
            Some((_, _, path)) => self.replace_at(&path, sub),
        }
    }

    fn replace_at(self, path: &[bool], sub: TNode) -> TNode {
        match path.split_first() {
            None => TNode::inner(self, sub),
            Some((&go_right, rest)) => match self.kind {
                Kind::Inner(l, r) => {
                    let (l, r) = if go_right {
                        (*l, r.replace_at(rest, sub))
                    } else {
                        (l.replace_at(rest, sub), *r)
                    };
                    TNode {
                        kind: Kind::Inner(Box::new(l), Box::new(r)),
                        bk: self.bk,
                        tag: self.tag,
                    }
                }
                // Paths are built from this very tree, so they end at its nodes.
                Kind::Leaf(_) => unreachable!("insertion path runs past a leaf"),
            },
        }
    }

    /// Stacks `sub`'s leaves, bottom first, on top of this tree (STR merge and join).
    fn stack(self, sub: TNode) -> TNode {
        let mut leaves = Vec::new();
        sub.into_leaves(&mut leaves);
        leaves.into_iter().fold(self, TNode::inner)
    }

    fn into_leaves(self, out: &mut Vec<TNode>) {
        match self.kind {
            Kind::Leaf(_) => out.push(self),
            Kind::Inner(l, r) => {
                l.into_leaves(out);
                r.into_leaves(out);
            }
        }
    }

    fn encode(&self, w: &mut BodyWriter) {
        match &self.kind {
            Kind::Leaf(m) => {
                w.u8(0).str(m.as_str());
                encode_bk(w, &self.bk);
            }
            Kind::Inner(l, r) => {
                w.u8(1);
                encode_bk(w, &self.bk);
                w.bytes(&self.tag);
                l.encode(w);
                r.encode(w);
            }
        }
    }

    fn decode(r: &mut BodyReader<'_>, depth_left: usize) -> Result<TNode, KeyError> {
        if depth_left == 0 {
            return Err(KeyError::Malformed("key tree too deep"));
        }
        match r.u8()? {
            0 => {
                let member = MemberId::new(r.str()?);
                // A leaf whose refreshed key was lost in a cascade has none; it is then
                // invalid and its owner refreshes it again.
                let bk = decode_bk(r)?;
                Ok(TNode {
                    kind: Kind::Leaf(member),
                    bk,
                    tag: [0; 16],
                })
            }
            1 => {
                let bk = decode_bk(r)?;
                let tag: Tag = r
                    .bytes()?
                    .try_into()
                    .map_err(|_| KeyError::Malformed("tag length"))?;
                let left = TNode::decode(r, depth_left - 1)?;
                let right = TNode::decode(r, depth_left - 1)?;
                Ok(TNode {
                    kind: Kind::Inner(Box::new(left), Box::new(right)),
                    bk,
                    tag,
                })
            }
            _ => Err(KeyError::Malformed("key tree node kind")),
        }
    }
}

/// Names a tree (shape, members, blinded keys, tags): the SHA-256 of its encoding, which
/// is also the body of the announcement that carries it.
fn digest_bytes(encoded: &[u8]) -> [u8; 32] {
    Sha256::digest(encoded).into()
}

fn tree_digest(t: &TNode) -> [u8; 32] {
    digest_bytes(&encode_tree(t))
}

fn encode_tree(t: &TNode) -> Vec<u8> {
    let mut w = BodyWriter::new();
    t.encode(&mut w);
    w.finish()
}

fn encode_bk(w: &mut BodyWriter, bk: &Option<Bk>) {
    match bk {
        Some(b) => w.u8(1).bytes(b),
        None => w.u8(0),
    };
}

fn decode_bk(r: &mut BodyReader<'_>) -> Result<Option<Bk>, KeyError> {
    match r.u8()? {
        0 => Ok(None),
        1 => Ok(Some(Bk::from(r.bytes()?))),
        _ => Err(KeyError::Malformed("blinded key flag")),
    }
}

/// One node of the run's tree, flattened so members can address it by leaf range.
#[derive(Debug, Clone)]
struct RNode<E> {
    parent: Option<usize>,
    children: Option<(usize, usize)>,
    member: Option<MemberId>,
    first: u16,
    last: u16,
    bk: Option<Bk>,
    tag: Tag,
    elem: Option<E>,
    /// Set for nodes re-keyed in this run: the leaf (member) that broadcasts its key.
    publisher: Option<MemberId>,
}

/// A run's tree: flattened nodes (preorder) and the root index.
#[derive(Debug, Clone)]
struct RunTree<E> {
    nodes: Vec<RNode<E>>,
    root: usize,
}

impl<E: Clone> RunTree<E> {
    fn flatten(tree: &TNode) -> Self {
        let mut nodes = Vec::new();
        let mut next_leaf = 0u16;
        fn go<E>(
            n: &TNode,
            parent: Option<usize>,
            nodes: &mut Vec<RNode<E>>,
            next_leaf: &mut u16,
        ) -> usize {
            let idx = nodes.len();
            nodes.push(RNode {
                parent,
                children: None,
                member: None,
                first: *next_leaf,
                last: *next_leaf,
                bk: n.bk.clone(),
                tag: n.tag,
                elem: None,
                publisher: None,
            });
            match &n.kind {
                Kind::Leaf(m) => {
                    nodes[idx].member = Some(m.clone());
                    *next_leaf += 1;
                }
                Kind::Inner(l, r) => {
                    let li = go(l, Some(idx), nodes, next_leaf);
                    let ri = go(r, Some(idx), nodes, next_leaf);
                    nodes[idx].children = Some((li, ri));
                    nodes[idx].last = *next_leaf - 1;
                }
            }
            idx
        }
        let root = go(tree, None, &mut nodes, &mut next_leaf);
        Self { nodes, root }
    }

    fn to_tree(&self, idx: usize) -> TNode {
        let n = &self.nodes[idx];
        let kind = match (&n.member, n.children) {
            (Some(m), _) => Kind::Leaf(m.clone()),
            (None, Some((l, r))) => {
                Kind::Inner(Box::new(self.to_tree(l)), Box::new(self.to_tree(r)))
            }
            // Every flattened node is a leaf with a member or an inner node with children.
            (None, None) => unreachable!("flattened node without member or children"),
        };
        TNode {
            kind,
            bk: n.bk.clone(),
            tag: n.tag,
        }
    }

    /// [`RunTree::to_tree`] for a tree that is done with: members and keys are moved
    /// out instead of copied (this runs for every member at every view).
    fn take_tree(&mut self, idx: usize) -> TNode {
        let kind = match (self.nodes[idx].member.take(), self.nodes[idx].children) {
            (Some(m), _) => Kind::Leaf(m),
            (None, Some((l, r))) => {
                Kind::Inner(Box::new(self.take_tree(l)), Box::new(self.take_tree(r)))
            }
            // Every flattened node is a leaf with a member or an inner node with children.
            (None, None) => unreachable!("flattened node without member or children"),
        };
        let n = &mut self.nodes[idx];
        TNode {
            kind,
            bk: n.bk.take(),
            tag: n.tag,
        }
    }

    /// The node covering exactly leaves `range`, found by descending from the root: a
    /// walk of the tree's height, where a map of every node cost a few hundred inserts
    /// per member per view.
    fn find_range(&self, range: (u16, u16)) -> Option<usize> {
        let mut idx = self.root;
        loop {
            let n = &self.nodes[idx];
            if (n.first, n.last) == range {
                return Some(idx);
            }
            let (l, r) = n.children?;
            idx = if range.0 <= self.nodes[l].last { l } else { r };
        }
    }

    fn rightmost_leaf(&self, mut idx: usize) -> usize {
        while let Some((_, r)) = self.nodes[idx].children {
            idx = r;
        }
        idx
    }

    fn leaf_of(&self, member: &MemberId) -> Option<usize> {
        self.nodes
            .iter()
            .position(|n| n.member.as_ref() == Some(member))
    }

    /// Validity of every node as announced (see the module docs), bottom-up.
    fn validity(&self) -> Vec<bool> {
        let mut valid = vec![false; self.nodes.len()];
        // Children always come after their parent in preorder, so go backwards.
        for i in (0..self.nodes.len()).rev() {
            let n = &self.nodes[i];
            valid[i] = match (n.children, &n.bk) {
                (_, None) => false,
                (None, Some(_)) => true,
                (Some((l, r)), Some(_)) => {
                    valid[l]
                        && valid[r]
                        && match (&self.nodes[l].bk, &self.nodes[r].bk) {
                            (Some(lb), Some(rb)) => tag_of(lb, rb) == n.tag,
                            _ => false,
                        }
                }
            };
        }
        valid
    }

    /// Marks what this run re-keys and who publishes it; returns the sponsors (members
    /// whose leaf secrets are refreshed).
    fn plan(&mut self, shape: Shape) -> Vec<MemberId> {
        let mut valid = self.validity();
        valid[self.root] = false;
        let mut sponsor_leaves = Vec::new();
        for i in 0..self.nodes.len() {
            if valid[i] {
                continue;
            }
            match self.nodes[i].children {
                None => sponsor_leaves.push(i),
                Some((l, r)) if valid[l] && valid[r] => sponsor_leaves.push(match shape {
                    Shape::Balanced => self.rightmost_leaf(i),
                    Shape::Skinny => self.rightmost_leaf(l),
                }),
                Some(_) => {}
            }
        }
        for &leaf in &sponsor_leaves {
            let mut at = Some(leaf);
            while let Some(i) = at {
                valid[i] = false;
                at = self.nodes[i].parent;
            }
        }
        // Publishers bottom-up: a leaf publishes itself, an inner node inherits from its
        // right invalid child, else its left one.
        for i in (0..self.nodes.len()).rev() {
            if valid[i] {
                continue;
            }
            let publisher = match self.nodes[i].children {
                None => self.nodes[i].member.clone(),
                Some((l, r)) => {
                    if !valid[r] {
                        self.nodes[r].publisher.clone()
                    } else {
                        self.nodes[l].publisher.clone()
                    }
                }
            };
            let n = &mut self.nodes[i];
            n.publisher = publisher;
            n.bk = None;
            n.elem = None;
        }
        let mut sponsors: Vec<MemberId> = sponsor_leaves
            .into_iter()
            .filter_map(|i| self.nodes[i].member.clone())
            .collect();
        sponsors.sort();
        sponsors.dedup();
        sponsors
    }
}

/// The announcements of one view, until its shape is settled.
#[derive(Debug, Default)]
struct Chain {
    /// Announcements received (or made), by announcer.
    announced: HashMap<MemberId, TNode>,
    /// Settled components, in chain order.
    components: Vec<TNode>,
    covered: HashSet<MemberId>,
}

/// One published blinded key: node by leaf range, key bytes, children tag.
#[derive(Debug, Clone)]
struct Published {
    range: (u16, u16),
    bk: Bk,
    tag: Tag,
}

struct RunState<G: DhGroup> {
    group: String,
    epoch: u64,
    members: Vec<MemberId>,
    /// Each member's incarnation in this run's view.
    incarnations: Arc<HashMap<MemberId, u64>>,
    chain: Chain,
    tree: Option<RunTree<G::Element>>,
    /// My path, leaf first, and the secrets known on it.
    path: Vec<usize>,
    keys: Vec<Option<G::Scalar>>,
    /// Publish messages for a tree other than the one worked on (tree digest, sender,
    /// keys): applied if that tree is settled, dropped otherwise.
    pending: Vec<([u8; 32], MemberId, Vec<Published>)>,
    /// Digest of the tree `tree` holds; publish messages name the tree they belong to.
    digest: [u8; 32],
    /// The encoding of the guessed tree (whose digest `digest` is): the oldest member's
    /// announcement is compared with it byte for byte, which is cheaper than hashing a
    /// whole tree's announcement (about 10 KB at 128 members) on every member's path.
    guess: Option<Vec<u8>>,
    /// False while `tree` is only this member's guess (its own base, when that covers the
    /// view): the announcement chain confirms or replaces it.
    settled: bool,
    /// A key computed on a guessed tree, released when the guess is confirmed.
    held_key: Option<GroupKey>,
    last_seq: HashMap<MemberId, u32>,
    my_seq: u32,
    leaf_published: bool,
    /// The leaf key this member made for this very view (it had no tree): as a sponsor
    /// it need not refresh that again.
    fresh_leaf: Option<Bk>,
    done: bool,
    /// Set when this member cannot complete the run (reported once as
    /// [`RefreshNeeded`]); the run then waits for the next view.
    stalled: Option<StallReason>,
}

impl<G: DhGroup> RunState<G> {
    fn wipe(&mut self) {
        for k in self.keys.iter_mut().flatten() {
            k.zeroize();
        }
        self.keys.clear();
    }
}

/// What a snapshot of a member's tree shows for one node (known-answer vectors, tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    /// The members under the node, left to right.
    pub members: Vec<MemberId>,
    /// The node's blinded key, if known.
    pub blinded_key: Option<Vec<u8>>,
}

/// The key-tree engine behind [`Tgdh`] and [`super::str_tree::Str`].
pub(crate) struct TreeEngine<G: DhGroup> {
    protocol: Protocol,
    shape: Shape,
    dh: G,
    ops: OpCounts,
    identity: Arc<Identity>,
    directory: Directory,
    base: Option<TNode>,
    /// The incarnation of every leaf of `base`, from the view whose run made it: a leaf
    /// whose name is back in another incarnation belongs to a member that is gone.
    base_incarnations: Arc<HashMap<MemberId, u64>>,
    leaf_history: Vec<(Bk, G::Scalar)>,
    node_secrets: HashMap<Bk, G::Scalar>,
    /// Decoded blinded keys of the last run, so unchanged co-path keys are not decoded
    /// (and validated) again. A list moved out of the last run's tree, searched only
    /// for the few co-path keys a run needs: rebuilding a map of every node at every
    /// view cost more than all the searches together.
    prev_elems: Vec<(Bk, G::Element)>,
    run: Option<RunState<G>>,
    key: Option<GroupKey>,
    /// Test builds: every key-derivation input this member used (secrecy checks).
    #[cfg(test)]
    seen_ikms: Vec<Vec<u8>>,
}

impl<G: DhGroup> std::fmt::Debug for TreeEngine<G> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Public facts only: leaf and node secrets and the key stay out of logs.
        f.debug_struct("TreeEngine")
            .field("protocol", &self.protocol)
            .field("me", self.identity.id())
            .field("group", &self.dh.name())
            .field("epoch", &self.run.as_ref().map(|r| r.epoch))
            .field("in_progress", &self.in_progress())
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl<G: DhGroup> Drop for TreeEngine<G> {
    fn drop(&mut self) {
        self.wipe_secrets();
        if let Some(run) = self.run.as_mut() {
            run.wipe();
        }
    }
}

impl<G: DhGroup> TreeEngine<G> {
    pub(crate) fn new(
        protocol: Protocol,
        shape: Shape,
        dh: G,
        identity: Arc<Identity>,
        directory: Directory,
    ) -> Self {
        Self {
            protocol,
            shape,
            dh,
            ops: OpCounts::default(),
            identity,
            directory,
            base: None,
            base_incarnations: Arc::default(),
            leaf_history: Vec::new(),
            node_secrets: HashMap::new(),
            prev_elems: Vec::new(),
            run: None,
            key: None,
            #[cfg(test)]
            seen_ikms: Vec::new(),
        }
    }

    fn wipe_secrets(&mut self) {
        for (_, s) in self.leaf_history.iter_mut() {
            s.zeroize();
        }
        self.leaf_history.clear();
        for s in self.node_secrets.values_mut() {
            s.zeroize();
        }
        self.node_secrets.clear();
    }

    pub(crate) fn me(&self) -> &MemberId {
        self.identity.id()
    }

    pub(crate) fn protocol(&self) -> Protocol {
        self.protocol
    }

    pub(crate) fn dh_group(&self) -> &'static str {
        self.dh.name()
    }

    pub(crate) fn current_key(&self) -> Option<&GroupKey> {
        self.key.as_ref()
    }

    pub(crate) fn in_progress(&self) -> bool {
        self.run.as_ref().is_some_and(|r| !(r.done && r.settled))
    }

    pub(crate) fn op_counts(&self) -> OpCounts {
        self.ops
    }

    #[cfg(test)]
    pub(crate) fn leak(&self) -> super::Leak {
        let mut scalars: Vec<Vec<u8>> = self
            .leaf_history
            .iter()
            .map(|(_, s)| self.dh.scalar_bytes(s))
            .collect();
        scalars.extend(self.node_secrets.values().map(|s| self.dh.scalar_bytes(s)));
        if let Some(run) = &self.run {
            scalars.extend(run.keys.iter().flatten().map(|s| self.dh.scalar_bytes(s)));
        }
        super::Leak {
            scalars,
            ikms: self.seen_ikms.clone(),
            keys: self.key.iter().map(|k| k.secret).collect(),
        }
    }

    /// The member's current tree: every node with its members and blinded key.
    pub(crate) fn snapshot(&self) -> Vec<NodeView> {
        let tree = match self.run.as_ref().and_then(|r| r.tree.as_ref()) {
            Some(t) => t.to_tree(t.root),
            None => match &self.base {
                Some(b) => b.clone(),
                None => return Vec::new(),
            },
        };
        let mut out = Vec::new();
        fn go(n: &TNode, out: &mut Vec<NodeView>) {
            out.push(NodeView {
                members: n.members(),
                blinded_key: n.bk.as_deref().map(<[u8]>::to_vec),
            });
            if let Kind::Inner(l, r) = &n.kind {
                go(l, out);
                go(r, out);
            }
        }
        go(&tree, &mut out);
        out
    }

    fn exp_generator(&mut self, k: &G::Scalar) -> G::Element {
        self.ops.exponentiations += 1;
        self.dh.exp_generator(k)
    }

    fn exp(&mut self, base: &G::Element, k: &G::Scalar) -> G::Element {
        self.ops.exponentiations += 1;
        self.dh.exp(base, k)
    }

    fn seal(&mut self, step: u8, body: &[u8]) -> Outgoing {
        self.ops.signatures += 1;
        let run = self.run.as_ref().expect("sealing inside a run");
        Outgoing {
            to: Destination::Broadcast,
            bytes: Envelope::seal(
                &self.identity,
                self.protocol,
                &run.group,
                run.epoch,
                step,
                body,
            ),
        }
    }

    fn new_leaf_secret(&mut self, rng: &mut dyn CryptoRngCore) -> (Bk, G::Element) {
        let s = self.dh.random_scalar(rng);
        let bk = self.exp_generator(&s);
        let bytes = Bk::from(self.dh.encode_element(&bk));
        self.leaf_history.push((bytes.clone(), s));
        if self.leaf_history.len() > LEAF_HISTORY {
            let (_, mut old) = self.leaf_history.remove(0);
            old.zeroize();
        }
        (bytes, bk)
    }

    pub(crate) fn handle_view(
        &mut self,
        view: &View,
        rng: &mut dyn CryptoRngCore,
    ) -> Result<Output, KeyError> {
        let me = self.me().clone();
        check_view(
            self.run
                .as_ref()
                .map(|r| (r.group.as_str(), r.epoch, r.incarnations.get(&me).copied())),
            view,
            &me,
        )?;
        // The base for this view: the last run's tree if its shape was settled, else the
        // previous base. Secrets on my path are remembered by blinded key.
        if let Some(mut old) = self.run.take() {
            if let Some(mut tree) = old.tree.take() {
                for (pos, &node) in old.path.iter().enumerate() {
                    if let (Some(k), Some(bk)) = (&old.keys[pos], &tree.nodes[node].bk) {
                        self.node_secrets.insert(bk.clone(), k.clone());
                    }
                }
                self.prev_elems.clear();
                self.prev_elems.extend(
                    tree.nodes
                        .iter_mut()
                        .filter_map(|n| Some((n.bk.clone()?, n.elem.take()?))),
                );
                self.base = Some(tree.take_tree(tree.root));
                self.base_incarnations = std::mem::take(&mut old.incarnations);
            }
            old.wipe();
        }
        // Keep the base's leaves whose member is in the view in the same incarnation.
        let in_view: HashMap<&MemberId, u64> = view
            .members
            .iter()
            .map(|m| (&m.id, m.incarnation))
            .collect();
        let base_incarnations = &self.base_incarnations;
        let restricted = self
            .base
            .take()
            .and_then(|b| {
                b.restrict(&|m| {
                    in_view
                        .get(m)
                        .is_some_and(|i| base_incarnations.get(m) == Some(i))
                })
            })
            .filter(|t| t.contains(&me));
        let mut fresh_leaf = None;
        let base = match restricted {
            Some(t) => t,
            None => {
                let (bk, _) = self.new_leaf_secret(rng);
                fresh_leaf = Some(bk.clone());
                TNode::leaf(me.clone(), bk)
            }
        };
        // The base's members all carry this view's incarnations now (the others were cut).
        // Built once per view and shared by the run and the base (a copy per view cost
        // a name allocation per member per member).
        let incarnations: Arc<HashMap<MemberId, u64>> = Arc::new(
            view.members
                .iter()
                .map(|m| (m.id.clone(), m.incarnation))
                .collect(),
        );
        self.base_incarnations = incarnations.clone();
        self.run = Some(RunState {
            group: view.group.clone(),
            epoch: view.epoch,
            members: view.member_ids().cloned().collect(),
            incarnations,
            chain: Chain::default(),
            tree: None,
            path: Vec::new(),
            keys: Vec::new(),
            pending: Vec::new(),
            digest: [0; 32],
            guess: None,
            settled: false,
            held_key: None,
            last_seq: HashMap::new(),
            my_seq: 0,
            leaf_published: false,
            fresh_leaf,
            done: false,
            stalled: None,
        });
        let mut out = Output::default();
        // Announce now when I am the oldest of my base in this view: then I am in the
        // chain unless another announcer's out-of-date tree covers me.
        let mut base_members = Vec::new();
        base.member_refs(&mut base_members);
        let base_set: HashSet<&MemberId> = base_members.iter().copied().collect();
        let oldest = view.member_ids().find(|m| base_set.contains(*m));
        if oldest == Some(&me) {
            self.announce(&base, &mut out);
        }
        // With no newcomer from this member's point of view, the chain will almost always
        // settle on this very base: start on it now (sponsors publish in this round), and
        // let the chain confirm or replace it.
        if base_members.len() == view.members.len() {
            let encoded = encode_tree(&base);
            self.adopt(&base, digest_bytes(&encoded), false, rng, &mut out)?;
            self.run.as_mut().expect("run set above").guess = Some(encoded);
        }
        self.base = Some(base);
        self.progress(rng, &mut out)?;
        Ok(out)
    }

    fn announce(&mut self, base: &TNode, out: &mut Output) {
        let me = self.me().clone();
        let run = self.run.as_mut().expect("announcing inside a run");
        run.chain.announced.insert(me, base.clone());
        if run.members.len() > 1 {
            let mut w = BodyWriter::new();
            base.encode(&mut w);
            let body = w.finish();
            let msg = self.seal(ANNOUNCE, &body);
            out.sends.push(msg);
        }
    }

    /// Settles the chain as far as the announcements allow, then computes and publishes.
    fn progress(&mut self, rng: &mut dyn CryptoRngCore, out: &mut Output) -> Result<(), KeyError> {
        let me = self.me().clone();
        loop {
            let run = self.run.as_mut().expect("progress inside a run");
            if run.settled {
                break;
            }
            let Some(next) = run
                .members
                .iter()
                .find(|m| !run.chain.covered.contains(*m))
                .cloned()
            else {
                self.settle_shape(rng, out)?;
                break;
            };
            let announced = match run.chain.announced.get(&next) {
                Some(t) => t.clone(),
                None if next == me => {
                    let base = self.base.clone().expect("base set at view");
                    self.announce(&base, out);
                    base
                }
                // Wait for the next announcer; meanwhile work on the guessed tree, if any.
                None => break,
            };
            let run = self.run.as_mut().expect("progress inside a run");
            let covered = run.chain.covered.clone();
            let part = announced
                .restrict(&|m| !covered.contains(m))
                // An announcement always contains its announcer, who is uncovered.
                .ok_or(KeyError::Invalid(Validation::AnnouncementWithoutAnnouncer))?;
            run.chain.covered.extend(part.members());
            run.chain.components.push(part);
        }
        self.compute(out);
        Ok(())
    }

    /// The chain is complete: merge its components; keep the guessed tree if it is the
    /// same, else start over on the merged one.
    fn settle_shape(
        &mut self,
        rng: &mut dyn CryptoRngCore,
        out: &mut Output,
    ) -> Result<(), KeyError> {
        let shape = self.shape;
        let run = self.run.as_mut().expect("settling inside a run");
        let mut parts: Vec<(usize, usize, TNode)> = std::mem::take(&mut run.chain.components)
            .into_iter()
            .enumerate()
            .map(|(i, t)| (t.members().len(), i, t))
            .collect();
        parts.sort_by_key(|(size, order, _)| (std::cmp::Reverse(*size), *order));
        let mut iter = parts.into_iter().map(|(_, _, t)| t);
        let first = iter
            .next()
            .ok_or(KeyError::Invalid(Validation::EmptyView))?;
        let merged = iter.fold(first, |acc, t| match shape {
            Shape::Balanced => acc.insert_balanced(t),
            Shape::Skinny => acc.stack(t),
        });
        let digest = tree_digest(&merged);
        if run.tree.is_some() && run.digest == digest {
            self.confirm(out);
            Ok(())
        } else {
            self.adopt(&merged, digest, true, rng, out)
        }
    }

    /// The guessed tree is the settled one: release what was held back.
    fn confirm(&mut self, out: &mut Output) {
        let run = self.run.as_mut().expect("confirming inside a run");
        run.settled = true;
        let digest = run.digest;
        let pending = std::mem::take(&mut run.pending);
        for (d, sender, items) in pending {
            if d == digest
                && let Err(e) = self.apply_published(&sender, &items)
            {
                out.refused.push((sender, e));
            }
        }
        let run = self.run.as_mut().expect("confirming inside a run");
        if let Some(key) = run.held_key.take() {
            self.key = Some(key.clone());
            out.key = Some(key);
        }
    }

    /// Starts working on `merged`: plan, refresh if sponsor, path secrets.
    fn adopt(
        &mut self,
        merged: &TNode,
        digest: [u8; 32],
        settled: bool,
        rng: &mut dyn CryptoRngCore,
        out: &mut Output,
    ) -> Result<(), KeyError> {
        let me = self.me().clone();
        let shape = self.shape;
        let mut tree = RunTree::flatten(merged);
        let my_leaf = tree
            .leaf_of(&me)
            .ok_or(KeyError::Invalid(Validation::SettledTreeLacksMe))?;
        let announced_leaf = tree.nodes[my_leaf].bk.clone();
        let sponsors = tree.plan(shape);
        let fresh = self.run.as_ref().and_then(|r| r.fresh_leaf.clone());
        let mut path = vec![my_leaf];
        while let Some(p) = tree.nodes[*path.last().expect("non-empty")].parent {
            path.push(p);
        }
        let mut keys: Vec<Option<G::Scalar>> = vec![None; path.len()];
        let mut stalled = None;
        if sponsors.contains(&me) && announced_leaf.is_some() && announced_leaf == fresh {
            // Already fresh: publish it again (as the sponsor) instead of refreshing.
            keys[0] = self
                .leaf_history
                .iter()
                .rev()
                .find(|(b, _)| Some(b) == announced_leaf.as_ref())
                .map(|(_, s)| s.clone());
            tree.nodes[my_leaf].bk = announced_leaf;
        } else if sponsors.contains(&me) {
            let (bk, elem) = self.new_leaf_secret(rng);
            tree.nodes[my_leaf].bk = Some(bk);
            tree.nodes[my_leaf].elem = Some(elem);
            keys[0] = self.leaf_history.last().map(|(_, s)| s.clone());
        } else {
            let bk = tree.nodes[my_leaf].bk.clone();
            keys[0] = self
                .leaf_history
                .iter()
                .rev()
                .find(|(b, _)| Some(b) == bk.as_ref())
                .map(|(_, s)| s.clone());
            // An announcer listed a leaf key older than my history: this member cannot
            // take part in this run; it says so (refresh needed) and the next view retries.
            if keys[0].is_none() {
                stalled = Some(StallReason::UnknownLeafSecret);
            }
        }
        for (pos, &node) in path.iter().enumerate().skip(1) {
            if tree.nodes[node].publisher.is_none()
                && let Some(bk) = &tree.nodes[node].bk
                && let Some(k) = self.node_secrets.get(bk)
            {
                keys[pos] = Some(k.clone());
            }
        }
        // Secrets not on this run's path are of no further use.
        let keep: HashSet<&Bk> = path
            .iter()
            .filter_map(|&n| tree.nodes[n].bk.as_ref())
            .collect();
        self.node_secrets.retain(|bk, s| {
            let k = keep.contains(bk);
            if !k {
                s.zeroize();
            }
            k
        });
        let run = self.run.as_mut().expect("settling inside a run");
        run.wipe();
        run.tree = Some(tree);
        run.path = path;
        run.keys = keys;
        run.stalled = stalled;
        if let Some(reason) = stalled {
            out.refresh_needed = Some(RefreshNeeded {
                group: run.group.clone(),
                epoch: run.epoch,
                reason,
            });
        }
        run.digest = digest;
        run.guess = None;
        run.settled = settled;
        run.done = false;
        run.held_key = None;
        run.leaf_published = false;
        let pending = std::mem::take(&mut run.pending);
        let mut keep = Vec::new();
        for (d, sender, items) in pending {
            if d == digest {
                // A buffered message that does not fit is refused (reported, not applied):
                // its sender had a different view of the run.
                if let Err(e) = self.apply_published(&sender, &items) {
                    out.refused.push((sender, e));
                }
            } else if !settled {
                keep.push((d, sender, items));
            }
        }
        self.run.as_mut().expect("settling inside a run").pending = keep;
        Ok(())
    }

    /// Marks the run as unable to complete here and tells the layer above (once).
    fn stall(&mut self, reason: StallReason, out: &mut Output) {
        let run = self.run.as_mut().expect("stalling inside a run");
        if run.stalled.is_none() {
            run.stalled = Some(reason);
            out.refresh_needed = Some(RefreshNeeded {
                group: run.group.clone(),
                epoch: run.epoch,
                reason,
            });
        }
    }

    /// The group key of the current run from the root's DH element, bound to the run's
    /// context (protocol, DH group, group, epoch, members and incarnations).
    fn derive_key(&mut self, root_element: &G::Element) -> GroupKey {
        let encoded = self.dh.encode_element(root_element);
        // Test builds: the injected key-reuse bug derives from the previous run's value.
        #[cfg(test)]
        let encoded = match self.seen_ikms.last() {
            Some(last) if super::kdf::fault::key_reuse() => last.clone(),
            _ => encoded,
        };
        #[cfg(test)]
        self.seen_ikms.push(encoded.clone());
        let run = self.run.as_ref().expect("deriving inside a run");
        let incarnations: Vec<u64> = run
            .members
            .iter()
            .map(|m| run.incarnations.get(m).copied().unwrap_or(0))
            .collect();
        let context = KeyContext {
            protocol: self.protocol,
            dh_group: self.dh.name(),
            group: &run.group,
            epoch: run.epoch,
            members: &run.members,
            incarnations: &incarnations,
        };
        derive_from_encoding(&context, encoded)
    }

    /// Checks and stores published keys; all or nothing.
    fn apply_published(&mut self, sender: &MemberId, items: &[Published]) -> Result<(), KeyError> {
        let run = self.run.as_mut().expect("applying inside a run");
        let tree = run.tree.as_mut().expect("applying to a settled tree");
        let mut targets = Vec::with_capacity(items.len());
        for item in items {
            let idx = tree
                .find_range(item.range)
                .ok_or(KeyError::Invalid(Validation::PublishedNodeNotInTree))?;
            let node = &tree.nodes[idx];
            if node.publisher.as_ref() != Some(sender) {
                return Err(KeyError::Invalid(Validation::NotPublisherOfNode));
            }
            if idx == tree.root {
                return Err(KeyError::Invalid(Validation::RootKeyPublished));
            }
            if let Some(existing) = &node.bk
                && existing != &item.bk
            {
                return Err(KeyError::Invalid(Validation::NodePublishedTwice));
            }
            targets.push(idx);
        }
        // Every published element is validated before anything is applied, so that a
        // bad one from a signed insider is refused with a typed error at once rather than
        // stalling the members whose path needs it later (it costs the slowest member of
        // a remove about 30 µs at 128 members).
        let mut elems = Vec::with_capacity(items.len());
        for item in items {
            elems.push(self.dh.decode_element(&item.bk)?);
        }
        for ((idx, item), elem) in targets.into_iter().zip(items).zip(elems) {
            let node = &mut tree.nodes[idx];
            node.bk = Some(item.bk.clone());
            node.tag = item.tag;
            node.elem = Some(elem);
        }
        Ok(())
    }

    /// Computes up my path as far as the known blinded keys allow, publishing what I am
    /// the publisher of; finishes the run at the root.
    fn compute(&mut self, out: &mut Output) {
        let me = self.me().clone();
        let mut published = Vec::new();
        loop {
            let run = self.run.as_mut().expect("computing inside a run");
            if run.done || run.stalled.is_some() {
                break;
            }
            let Some(tree) = run.tree.as_mut() else { break };
            if run.path.len() == 1 {
                // Alone in the group: the key is g^(s*s) for a fresh leaf secret s, which
                // no later member can derive from the leaf's blinded key.
                let Some(s) = run.keys[0].clone() else { break };
                let Some(bk) = tree.nodes[run.path[0]].bk.clone() else {
                    break;
                };
                let Ok(e) = self.dh.decode_element(&bk) else {
                    self.stall(StallReason::BadBlindedKey, out);
                    break;
                };
                let shared = Zeroizing::new(self.exp(&e, &s));
                let key = self.derive_key(&shared);
                let run = self.run.as_mut().expect("computing inside a run");
                run.done = true;
                if run.settled {
                    out.key = Some(key);
                } else {
                    run.held_key = Some(key);
                }
                break;
            }
            // The lowest unknown secret on my path.
            let Some(pos) = run.keys.iter().position(|k| k.is_none()) else {
                break;
            };
            if pos == 0 {
                break;
            }
            let child = run.path[pos - 1];
            let node = run.path[pos];
            let (l, r) = tree.nodes[node]
                .children
                .expect("path nodes above a leaf are inner");
            let sibling = if l == child { r } else { l };
            let sib_elem = match (&tree.nodes[sibling].elem, &tree.nodes[sibling].bk) {
                (Some(e), _) => e.clone(),
                (None, Some(bk)) => match self
                    .prev_elems
                    .iter()
                    .find(|(b, _)| b == bk)
                    .map(|(_, e)| Ok(e.clone()))
                    .unwrap_or_else(|| self.dh.decode_element(bk))
                {
                    Ok(e) => {
                        tree.nodes[sibling].elem = Some(e.clone());
                        e
                    }
                    Err(_) => {
                        self.stall(StallReason::BadBlindedKey, out);
                        break;
                    }
                },
                (None, None) => break,
            };
            let child_key = run.keys[pos - 1].clone().expect("lower secret known");
            let is_root = node == tree.root;
            let shared = Zeroizing::new(self.exp(&sib_elem, &child_key));
            if is_root {
                let key = self.derive_key(&shared);
                let run = self.run.as_mut().expect("computing inside a run");
                run.done = true;
                if run.settled {
                    out.key = Some(key);
                } else {
                    run.held_key = Some(key);
                }
                break;
            }
            let run = self.run.as_mut().expect("computing inside a run");
            let tree = run.tree.as_mut().expect("settled");
            let k = self.dh.element_to_scalar(&shared);
            let needs_publish =
                tree.nodes[node].bk.is_none() && tree.nodes[node].publisher.as_ref() == Some(&me);
            if needs_publish {
                let bk_elem = self.exp_generator(&k);
                let bk = Bk::from(self.dh.encode_element(&bk_elem));
                let run = self.run.as_mut().expect("computing inside a run");
                let tree = run.tree.as_mut().expect("settled");
                let tag = match (&tree.nodes[l].bk, &tree.nodes[r].bk) {
                    (Some(lb), Some(rb)) => tag_of(lb, rb),
                    _ => [0; 16],
                };
                let n = &mut tree.nodes[node];
                n.bk = Some(bk.clone());
                n.tag = tag;
                n.elem = Some(bk_elem);
                published.push(Published {
                    range: (n.first, n.last),
                    bk,
                    tag,
                });
            }
            let run = self.run.as_mut().expect("computing inside a run");
            run.keys[pos] = Some(k);
        }
        // My refreshed leaf goes first, if I am a sponsor that has not yet published it.
        let run = self.run.as_mut().expect("computing inside a run");
        if let Some(tree) = run.tree.as_mut() {
            let leaf = run.path[0];
            if tree.nodes[leaf].publisher.as_ref() == Some(&me) && !run.leaf_published {
                run.leaf_published = true;
                let bk = tree.nodes[leaf].bk.clone().expect("sponsor leaf key set");
                published.insert(
                    0,
                    Published {
                        range: (tree.nodes[leaf].first, tree.nodes[leaf].last),
                        bk,
                        tag: [0; 16],
                    },
                );
            }
        }
        if let Some(key) = out.key.clone() {
            self.key = Some(key);
        }
        let run = self.run.as_mut().expect("computing inside a run");
        if !published.is_empty() && run.members.len() > 1 {
            run.my_seq += 1;
            let mut w = BodyWriter::new();
            w.u32(run.my_seq);
            w.bytes(&run.digest);
            w.u32(published.len() as u32);
            for p in &published {
                w.u32(u32::from(p.range.0))
                    .u32(u32::from(p.range.1))
                    .bytes(&p.bk)
                    .bytes(&p.tag);
            }
            let body = w.finish();
            let msg = self.seal(PUBLISH, &body);
            out.sends.push(msg);
        }
    }

    pub(crate) fn handle_message(
        &mut self,
        from: &MemberId,
        bytes: &[u8],
        rng: &mut dyn CryptoRngCore,
    ) -> Result<Output, KeyError> {
        if from == self.me() {
            return Ok(Output::default());
        }
        let Some(run) = self.run.as_ref() else {
            return Err(KeyError::Invalid(Validation::NoView));
        };
        let (group, epoch) = (run.group.clone(), run.epoch);
        self.ops.verifications += 1;
        let env = Envelope::open(bytes, &self.directory)?;
        env.check_run(self.protocol, &group, epoch, from)?;
        let run = self.run.as_mut().expect("checked above");
        if !run.members.contains(&env.sender) {
            return Err(KeyError::UnknownSender(env.sender));
        }
        let mut out = Output::default();
        match env.step {
            ANNOUNCE => {
                if run.chain.announced.contains_key(&env.sender) {
                    return Err(KeyError::Duplicate(env.sender));
                }
                // The chain's first announcement naming exactly the tree this member
                // guessed settles the run without decoding it.
                if !run.settled
                    && run.tree.is_some()
                    && run.chain.covered.is_empty()
                    && run.members.first() == Some(&env.sender)
                    && run.guess.as_deref() == Some(&env.body[..])
                {
                    // `covered` stays empty: once settled, the chain is never read again
                    // (progress stops at `settled`), so listing every member in it was
                    // a copy of the view made and freed for nothing.
                    run.chain
                        .announced
                        .insert(env.sender, TNode::leaf(MemberId::new(""), Bk::from([])));
                    self.confirm(&mut out);
                    self.compute(&mut out);
                    return Ok(out);
                }
                let mut r = BodyReader::new(&env.body);
                let tree = TNode::decode(&mut r, run.members.len() + 1)?;
                r.finish()?;
                let leaves = tree.members();
                let unique: HashSet<&MemberId> = leaves.iter().collect();
                // A set of the view only here, where a full announcement is checked: a
                // copy kept in every run was made and freed at every view for this alone.
                let in_view: HashSet<&MemberId> = run.members.iter().collect();
                if unique.len() != leaves.len()
                    || !leaves.contains(&env.sender)
                    || leaves.iter().any(|m| !in_view.contains(m))
                {
                    return Err(KeyError::Invalid(Validation::AnnouncedTreeDoesNotFit));
                }
                run.chain.announced.insert(env.sender, tree);
                self.progress(rng, &mut out)?;
            }
            PUBLISH => {
                let mut r = BodyReader::new(&env.body);
                let seq = r.u32()?;
                let digest: [u8; 32] = r
                    .bytes()?
                    .try_into()
                    .map_err(|_| KeyError::Malformed("digest length"))?;
                let count = r.u32()? as usize;
                if count > 2 * run.members.len() {
                    return Err(KeyError::Malformed("too many published keys"));
                }
                let mut items = Vec::with_capacity(count);
                for _ in 0..count {
                    let first =
                        u16::try_from(r.u32()?).map_err(|_| KeyError::Malformed("leaf index"))?;
                    let last =
                        u16::try_from(r.u32()?).map_err(|_| KeyError::Malformed("leaf index"))?;
                    let bk = Bk::from(r.bytes()?);
                    let tag: Tag = r
                        .bytes()?
                        .try_into()
                        .map_err(|_| KeyError::Malformed("tag length"))?;
                    items.push(Published {
                        range: (first, last),
                        bk,
                        tag,
                    });
                }
                r.finish()?;
                if run
                    .last_seq
                    .get(&env.sender)
                    .is_some_and(|&last| seq <= last)
                {
                    return Err(KeyError::Duplicate(env.sender));
                }
                if run.tree.is_some() && run.digest == digest {
                    self.apply_published(&env.sender, &items)?;
                    let run = self.run.as_mut().expect("checked above");
                    run.last_seq.insert(env.sender, seq);
                    self.compute(&mut out);
                } else if run.settled {
                    // Keys for a tree this run did not settle on: the sender guessed
                    // wrong and will publish again for the settled tree.
                    run.last_seq.insert(env.sender, seq);
                } else {
                    for item in &items {
                        self.dh.decode_element(&item.bk)?;
                    }
                    let run = self.run.as_mut().expect("checked above");
                    if run.pending.len() >= MAX_PENDING {
                        return Err(KeyError::Invalid(Validation::TooManyPending));
                    }
                    run.last_seq.insert(env.sender.clone(), seq);
                    run.pending.push((digest, env.sender, items));
                }
            }
            _ => return Err(KeyError::Malformed("unknown step")),
        }
        Ok(out)
    }
}

/// One member's TGDH instance (its `Debug` shows no secret).
#[derive(Debug)]
pub struct Tgdh<G: DhGroup> {
    engine: TreeEngine<G>,
}

impl<G: DhGroup> Tgdh<G> {
    /// A fresh instance for `identity`; it takes part from the first view that contains
    /// it.
    pub fn new(group: G, identity: Arc<Identity>, directory: Directory) -> Self {
        Self {
            engine: TreeEngine::new(Protocol::Tgdh, Shape::Balanced, group, identity, directory),
        }
    }

    /// This member's tree, node by node in preorder (for known-answer vectors and tests).
    pub fn snapshot(&self) -> Vec<NodeView> {
        self.engine.snapshot()
    }
}

/// Implements [`KeyAgreement`] for a tree protocol by handing every call to its
/// `engine: TreeEngine<G>`: TGDH and STR differ only in the shape rules the engine is
/// built with.
macro_rules! tree_protocol_key_agreement {
    ($protocol:ident) => {
        impl<G: DhGroup> KeyAgreement for $protocol<G> {
            fn protocol(&self) -> Protocol {
                self.engine.protocol()
            }

            fn me(&self) -> &MemberId {
                self.engine.me()
            }

            fn dh_group(&self) -> &'static str {
                self.engine.dh_group()
            }

            fn handle_view(
                &mut self,
                view: &View,
                rng: &mut dyn CryptoRngCore,
            ) -> Result<Output, KeyError> {
                self.engine.handle_view(view, rng)
            }

            fn handle_message(
                &mut self,
                from: &MemberId,
                bytes: &[u8],
                rng: &mut dyn CryptoRngCore,
            ) -> Result<Output, KeyError> {
                self.engine.handle_message(from, bytes, rng)
            }

            fn current_key(&self) -> Option<&GroupKey> {
                self.engine.current_key()
            }

            fn in_progress(&self) -> bool {
                self.engine.in_progress()
            }

            fn op_counts(&self) -> OpCounts {
                self.engine.op_counts()
            }

            #[cfg(test)]
            fn leak(&self) -> crate::keys::Leak {
                self.engine.leak()
            }
        }
    };
}
pub(crate) use tree_protocol_key_agreement;

tree_protocol_key_agreement!(Tgdh);

/// A small lossless network of instances for the unit tests of TGDH and STR.
#[cfg(test)]
pub(crate) mod testnet {
    use std::collections::{BTreeMap, VecDeque};
    use std::sync::Arc;

    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    use crate::keys::{
        Destination, Directory, GroupKey, Identity, KeyAgreement, KeyError, MemberId, Output, View,
    };

    /// Builds a fresh instance for an identity.
    pub(crate) type Factory = fn(Arc<Identity>, Directory) -> Box<dyn KeyAgreement>;

    pub(crate) struct Net {
        pub(crate) factory: Factory,
        pub(crate) identities: BTreeMap<MemberId, Arc<Identity>>,
        pub(crate) directory: Directory,
        pub(crate) insts: BTreeMap<MemberId, Box<dyn KeyAgreement>>,
        /// In flight: (from, to, bytes).
        pub(crate) queue: VecDeque<(MemberId, MemberId, Vec<u8>)>,
        /// Current view of each member.
        pub(crate) views: BTreeMap<MemberId, View>,
        pub(crate) rng: ChaCha20Rng,
        pub(crate) epoch: u64,
        /// Every key any member ever produced, in order.
        pub(crate) history: Vec<[u8; 32]>,
    }

    pub(crate) fn id(name: &str) -> MemberId {
        MemberId::new(name)
    }

    impl Net {
        pub(crate) fn new(factory: Factory, names: &[&str], seed: u64) -> Self {
            let mut rng = ChaCha20Rng::seed_from_u64(seed);
            let identities: BTreeMap<MemberId, Arc<Identity>> = names
                .iter()
                .map(|n| (id(n), Arc::new(Identity::generate(id(n), &mut rng))))
                .collect();
            let directory = Directory::new(
                identities
                    .iter()
                    .map(|(k, v)| (k.clone(), v.verifying_key())),
            );
            Self {
                factory,
                identities,
                directory,
                insts: BTreeMap::new(),
                queue: VecDeque::new(),
                views: BTreeMap::new(),
                rng,
                epoch: 0,
                history: Vec::new(),
            }
        }

        fn route(&mut self, from: &MemberId, out: Output) {
            if let Some(k) = out.key {
                self.history.push(k.secret);
            }
            let view = self.views[from].clone();
            for send in out.sends {
                match send.to {
                    Destination::Broadcast => {
                        for m in view.member_ids() {
                            self.queue
                                .push_back((from.clone(), m.clone(), send.bytes.clone()));
                        }
                    }
                    Destination::Unicast(to) => {
                        self.queue.push_back((from.clone(), to, send.bytes));
                    }
                }
            }
        }

        /// Installs a view on `members` (creating instances for new ones); members not
        /// listed keep their state and get nothing.
        pub(crate) fn view(&mut self, members: &[&str]) -> u64 {
            self.epoch += 1;
            let view = View::new("g", self.epoch, members.iter().map(|m| id(m)));
            for m in view.member_ids() {
                if !self.insts.contains_key(m) {
                    let inst = (self.factory)(self.identities[m].clone(), self.directory.clone());
                    self.insts.insert(m.clone(), inst);
                }
                self.views.insert(m.clone(), view.clone());
                let out = self
                    .insts
                    .get_mut(m)
                    .expect("just made")
                    .handle_view(&view, &mut self.rng)
                    .expect("valid view");
                self.route(m, out);
            }
            self.epoch
        }

        /// Delivers one queued message; returns the receiver's verdict.
        pub(crate) fn step(&mut self) -> Option<Result<(), KeyError>> {
            let (from, to, bytes) = self.queue.pop_front()?;
            let Some(inst) = self.insts.get_mut(&to) else {
                return Some(Ok(()));
            };
            match inst.handle_message(&from, &bytes, &mut self.rng) {
                Ok(out) => {
                    self.route(&to, out);
                    Some(Ok(()))
                }
                Err(e) => Some(Err(e)),
            }
        }

        /// Delivers everything; every message must be accepted unless `allow_stale`.
        pub(crate) fn settle(&mut self, allow_stale: bool) {
            for _ in 0..100_000 {
                match self.step() {
                    None => return,
                    Some(Ok(())) => {}
                    Some(Err(KeyError::StaleEpoch { .. })) if allow_stale => {}
                    Some(Err(e)) => panic!("message refused: {e}"),
                }
            }
            panic!("network did not go quiet");
        }

        /// The common key of `members`, checking they all hold it for the latest epoch.
        pub(crate) fn common_key(&self, members: &[&str]) -> GroupKey {
            let first = self.insts[&id(members[0])]
                .current_key()
                .expect("key agreed")
                .clone();
            for m in members {
                let inst = &self.insts[&id(m)];
                assert!(!inst.in_progress(), "{m} still in progress");
                assert_eq!(inst.current_key(), Some(&first), "{m} disagrees");
            }
            assert_eq!(first.epoch, self.views[&id(members[0])].epoch);
            first
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::Arc;

    use super::testnet::{Net, id};
    use super::*;
    use crate::keys::modp::Modp2048;
    use crate::keys::{KeyAgreement, Ristretto255};

    fn tgdh(identity: Arc<Identity>, dir: Directory) -> Box<dyn KeyAgreement> {
        Box::new(Tgdh::new(Ristretto255, identity, dir))
    }

    const NAMES: [&str; 10] = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"];

    /// Joins one by one up to `n`, checking agreement and freshness at every step.
    fn grow(net: &mut Net, n: usize) -> HashSet<[u8; 32]> {
        let mut seen = HashSet::new();
        for k in 1..=n {
            net.view(&NAMES[..k]);
            net.settle(false);
            let key = net.common_key(&NAMES[..k]);
            assert!(seen.insert(key.secret), "key repeated at size {k}");
        }
        seen
    }

    #[test]
    fn joins_from_one_to_eight_agree_and_never_repeat() {
        let mut net = Net::new(tgdh, &NAMES, 1);
        grow(&mut net, 8);
    }

    #[test]
    fn every_single_leave_from_eight() {
        for leaver in [0, 3, 4, 7] {
            let mut net = Net::new(tgdh, &NAMES, 2);
            let mut seen = grow(&mut net, 8);
            let rest: Vec<&str> = NAMES[..8]
                .iter()
                .copied()
                .filter(|m| *m != NAMES[leaver])
                .collect();
            net.view(&rest);
            // The leaver's saved state gets the new broadcasts too: it must refuse them
            // and never reach the new key.
            let leaver_id = id(NAMES[leaver]);
            let before = net.insts[&leaver_id].current_key().cloned();
            let in_flight: Vec<_> = net.queue.iter().cloned().collect();
            for (from, _, bytes) in &in_flight {
                let r = net.insts.get_mut(&leaver_id).expect("kept").handle_message(
                    from,
                    bytes,
                    &mut rand::rngs::OsRng,
                );
                assert!(matches!(r, Err(KeyError::StaleEpoch { .. })), "{r:?}");
            }
            // Record every message of the new run while delivering it.
            let mut transcript: Vec<(MemberId, Vec<u8>)> = Vec::new();
            for _ in 0..100_000 {
                let Some((from, to, bytes)) = net.queue.front().cloned() else {
                    break;
                };
                if !transcript.iter().any(|(f, b)| *f == from && *b == bytes) {
                    transcript.push((from, bytes));
                }
                let _ = to;
                net.step().expect("queued").expect("accepted");
            }
            let key = net.common_key(&rest);
            assert!(seen.insert(key.secret));
            assert_eq!(net.insts[&leaver_id].current_key().cloned(), before);
            // Worse: the leaver pretends it is still in the new view and feeds its saved
            // state every broadcast of the new run. It still never gets the new key.
            let mut pretend = net.views[&id(rest[0])].clone();
            pretend
                .members
                .push(crate::keys::Member::new(leaver_id.clone(), 0));
            let leaver = net.insts.get_mut(&leaver_id).expect("kept");
            let mut rng = rand::rngs::OsRng;
            let mut got = leaver.handle_view(&pretend, &mut rng).expect("view").key;
            for (from, bytes) in &transcript {
                if let Ok(out) = leaver.handle_message(from, bytes, &mut rng) {
                    got = got.or(out.key);
                }
            }
            assert_ne!(got.map(|k| k.secret), Some(key.secret));
            assert_ne!(leaver.current_key().map(|k| k.secret), Some(key.secret));
        }
    }

    #[test]
    fn partition_merge_and_refresh() {
        let mut net = Net::new(tgdh, &NAMES, 3);
        let mut seen = grow(&mut net, 7);
        // Partition: three leave at once.
        net.view(&["a", "c", "d", "f"]);
        net.settle(false);
        assert!(seen.insert(net.common_key(&["a", "c", "d", "f"]).secret));
        // The other side carries on alone as its own group.
        net.view(&["b", "e", "g"]);
        net.settle(false);
        assert!(seen.insert(net.common_key(&["b", "e", "g"]).secret));
        // Merge of the two trees plus a brand-new member.
        let all = ["a", "c", "d", "f", "b", "e", "g", "h"];
        net.view(&all);
        net.settle(false);
        assert!(seen.insert(net.common_key(&all).secret));
        // Refreshes.
        for _ in 0..3 {
            net.view(&all);
            net.settle(false);
            assert!(seen.insert(net.common_key(&all).secret));
        }
    }

    #[test]
    fn new_member_never_outputs_an_earlier_key() {
        let mut net = Net::new(tgdh, &NAMES, 4);
        let mut seen = grow(&mut net, 4);
        // Record the last run before the join.
        let old_view = net.view(&NAMES[..5]);
        let mut old_transcript: Vec<(MemberId, Vec<u8>)> = Vec::new();
        for _ in 0..100_000 {
            let Some((from, _, bytes)) = net.queue.front().cloned() else {
                break;
            };
            if !old_transcript
                .iter()
                .any(|(f, b)| *f == from && *b == bytes)
            {
                old_transcript.push((from, bytes));
            }
            net.step().expect("queued").expect("accepted");
        }
        let old_key = net.common_key(&NAMES[..5]);
        seen.insert(old_key.secret);
        let before = net.history.len();
        net.view(&NAMES[..6]);
        let new_transcript: Vec<(MemberId, Vec<u8>)> = net
            .queue
            .iter()
            .map(|(f, _, b)| (f.clone(), b.clone()))
            .collect();
        net.settle(false);
        let key = net.common_key(&NAMES[..6]);
        assert!(!seen.contains(&key.secret));
        // Everything produced in this run (by anyone, including the newcomer) is the
        // new key only.
        assert!(net.history[before..].iter().all(|k| *k == key.secret));
        // The newcomer produced exactly one key, the new one.
        assert_eq!(
            net.insts[&id("f")].current_key().map(|k| k.secret),
            Some(key.secret)
        );
        // Worse: a copy of the newcomer pretends it was in the previous view and is fed
        // the whole previous run (and its join's messages, refused there as stale). It
        // never gets the previous key.
        let mut pretend = View::new("g", old_view, NAMES[..5].iter().map(|m| id(m)));
        pretend.members.push(crate::keys::Member::new(id("f"), 0));
        let mut copy = Tgdh::new(
            Ristretto255,
            net.identities[&id("f")].clone(),
            net.directory.clone(),
        );
        let mut rng = rand::rngs::OsRng;
        let mut got = copy.handle_view(&pretend, &mut rng).expect("view").key;
        for (from, bytes) in old_transcript.iter().chain(&new_transcript) {
            if let Ok(out) = copy.handle_message(from, bytes, &mut rng) {
                got = got.or(out.key);
            }
        }
        assert_ne!(got.map(|k| k.secret), Some(old_key.secret));
        assert!(
            copy.current_key()
                .is_none_or(|k| k.secret != old_key.secret)
        );
    }

    #[test]
    fn tampered_forged_replayed_and_stale_messages_are_refused() {
        let mut net = Net::new(tgdh, &NAMES, 5);
        grow(&mut net, 4);
        let epoch = net.view(&NAMES[..5]);
        let (from, to, bytes) = net
            .queue
            .iter()
            .find(|(f, t, _)| f != t)
            .cloned()
            .expect("messages sent");
        let target = net.insts.get_mut(&to).expect("member");
        let counts = target.op_counts();
        // Tampered body.
        let mut bad = bytes.clone();
        let i = bad.len() - 70;
        bad[i] ^= 1;
        assert!(matches!(
            target.handle_message(&from, &bad, &mut rand::rngs::OsRng),
            Err(KeyError::BadSignature(_))
        ));
        // Claimed by someone else than the transport says.
        let other = ["a", "b", "c"]
            .into_iter()
            .map(id)
            .find(|m| *m != from && *m != to)
            .expect("three candidates");
        assert!(matches!(
            target.handle_message(&other, &bytes, &mut rand::rngs::OsRng),
            Err(KeyError::UnknownSender(_))
        ));
        assert_eq!(target.op_counts().exponentiations, counts.exponentiations);
        // Deliver everything, replaying the first message afterwards.
        net.settle(false);
        let key = net.common_key(&NAMES[..5]);
        let target = net.insts.get_mut(&to).expect("member");
        let replay = target.handle_message(&from, &bytes, &mut rand::rngs::OsRng);
        assert!(matches!(replay, Err(KeyError::Duplicate(_))), "{replay:?}");
        assert_eq!(target.current_key(), Some(&key));
        // A message of this epoch after the next view is stale.
        net.view(&NAMES[..5]);
        let target = net.insts.get_mut(&to).expect("member");
        assert_eq!(
            target
                .handle_message(&from, &bytes, &mut rand::rngs::OsRng)
                .err(),
            Some(KeyError::StaleEpoch {
                got: epoch,
                current: epoch + 1
            })
        );
        net.settle(false);
        assert_ne!(net.common_key(&NAMES[..5]), key);
    }

    #[test]
    fn cascaded_views_still_agree() {
        let mut net = Net::new(tgdh, &NAMES, 6);
        grow(&mut net, 6);
        // A join interrupted by a leave, interrupted by a merge-back: deliver only part
        // of each run before the next view; the rest arrives late and is stale.
        net.view(&NAMES[..7]);
        for _ in 0..5 {
            net.step();
        }
        net.view(&["a", "b", "d", "e", "f", "g"]);
        for _ in 0..3 {
            net.step();
        }
        net.view(&["a", "b", "d", "e", "f", "g", "c", "h"]);
        net.settle(true);
        net.common_key(&["a", "b", "d", "e", "f", "g", "c", "h"]);
    }

    #[test]
    fn randomized_cascades_agree() {
        use rand::{Rng, SeedableRng};
        for seed in 0..4u64 {
            let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed);
            let mut net = Net::new(tgdh, &NAMES, 100 + seed);
            let mut members: Vec<&str> = vec!["a", "b", "c"];
            net.view(&members);
            net.settle(false);
            let mut seen = HashSet::new();
            for _ in 0..10 {
                // Random membership change: leave some, add some not-yet-used names
                // (departed instances never come back: fresh names only).
                let mut next: Vec<&str> = members
                    .iter()
                    .copied()
                    .filter(|_| rng.gen_bool(0.8))
                    .collect();
                for n in NAMES.iter() {
                    if !net.insts.contains_key(&id(n)) && rng.gen_bool(0.15) {
                        next.push(n);
                    }
                }
                if next.is_empty() {
                    next.push(members[0]);
                }
                members = next;
                net.view(&members);
                // Deliver a random part; the rest arrives after the next view.
                let k = rng.gen_range(0..net.queue.len().max(1) + 3);
                for _ in 0..k {
                    match net.step() {
                        None | Some(Ok(())) | Some(Err(KeyError::StaleEpoch { .. })) => {}
                        Some(Err(e)) => panic!("seed {seed}: refused {e}"),
                    }
                }
                if rng.gen_bool(0.5) {
                    net.settle(true);
                    let key = net.common_key(&members);
                    seen.insert(key.secret);
                }
            }
            net.view(&members);
            net.settle(true);
            let key = net.common_key(&members);
            assert!(seen.insert(key.secret), "seed {seed}: key repeated");
        }
    }

    /// Exponentiations per member for one event, and the maximum.
    fn exps_for(net: &mut Net, members: &[&str]) -> (u64, u64) {
        let before: Vec<u64> = members
            .iter()
            .map(|m| {
                net.insts
                    .get(&id(m))
                    .map_or(0, |i| i.op_counts().exponentiations)
            })
            .collect();
        net.view(members);
        net.settle(false);
        net.common_key(members);
        let deltas: Vec<u64> = members
            .iter()
            .zip(before)
            .map(|(m, b)| net.insts[&id(m)].op_counts().exponentiations - b)
            .collect();
        (
            deltas.iter().sum::<u64>() / members.len() as u64,
            *deltas.iter().max().expect("members"),
        )
    }

    #[test]
    fn exponentiation_counts_follow_the_tree_height() {
        // 8 members, height 3: a leave re-keys one path: the sponsor does about 2h, the
        // others at most h each.
        let mut net = Net::new(tgdh, &NAMES, 7);
        grow(&mut net, 8);
        let (avg, max) = exps_for(&mut net, &["a", "b", "c", "d", "e", "f", "g"]);
        assert!(max <= 2 * 3 + 1, "sponsor did {max}");
        assert!(avg <= 3, "average {avg}");
        // A brand-new member joins (h's old instance would be a merge of its stale
        // state, which costs that member a wasted guess).
        let (avg, max) = exps_for(&mut net, &["a", "b", "c", "d", "e", "f", "g", "i"]);
        assert!(max <= 2 * 3 + 2, "join: max {max}");
        assert!(avg <= 4, "join: average {avg}");
        // Refresh: one sponsor re-keys its path.
        let (avg, max) = exps_for(&mut net, &["a", "b", "c", "d", "e", "f", "g", "i"]);
        assert!(max <= 2 * 3 + 1, "refresh: max {max}");
        assert!(avg <= 3, "refresh: average {avg}");
    }

    #[test]
    fn member_with_stale_state_merges_back() {
        // h is cut off (it never sees the view without it), the others re-key; then h
        // comes back with its old tree, which covers the whole new view: its guess is
        // wrong, the announcement chain corrects it, and nobody applies its stale keys.
        let mut net = Net::new(tgdh, &NAMES, 9);
        let mut seen = grow(&mut net, 8);
        net.view(&NAMES[..7]);
        net.settle(false);
        assert!(seen.insert(net.common_key(&NAMES[..7]).secret));
        net.view(&NAMES[..8]);
        net.settle(false);
        assert!(seen.insert(net.common_key(&NAMES[..8]).secret));
    }

    #[test]
    fn a_bad_copath_key_from_an_insider_signals_refresh_needed() {
        // The oldest member announces its tree with an inner node's blinded key replaced
        // by bytes that are no group element (the node still looks valid: its tag is over
        // the children). A member whose path needs that key used to stall silently; it now
        // reports RefreshNeeded, and the next view recovers.
        let mut net = Net::new(tgdh, &NAMES, 12);
        grow(&mut net, 3);
        let epoch = net.view(&["a", "b", "c"]);
        let (_, _, real) = net
            .queue
            .iter()
            .find(|(f, t, b)| {
                *f == id("a")
                    && *t == id("c")
                    && Envelope::open(b, &net.directory).is_ok_and(|e| e.step == ANNOUNCE)
            })
            .cloned()
            .expect("a announces");
        let env = Envelope::open(&real, &net.directory).expect("verifies");
        let mut tree = TNode::decode(&mut BodyReader::new(&env.body), 8).expect("tree");
        fn corrupt_inner(n: &mut TNode) {
            if let Kind::Inner(l, r) = &mut n.kind {
                if n.bk.is_some() {
                    n.bk = Some(Bk::from(vec![0xffu8; 32]));
                }
                corrupt_inner(l);
                corrupt_inner(r);
            }
        }
        corrupt_inner(&mut tree);
        let forged = Envelope::seal(
            &net.identities[&id("a")],
            Protocol::Tgdh,
            "g",
            epoch,
            ANNOUNCE,
            &encode_tree(&tree),
        );
        let c = net.insts.get_mut(&id("c")).expect("c");
        let out = c
            .handle_message(&id("a"), &forged, &mut rand::rngs::OsRng)
            .expect("a well-formed announcement is accepted");
        assert_eq!(
            out.refresh_needed,
            Some(RefreshNeeded {
                group: "g".into(),
                epoch,
                reason: StallReason::BadBlindedKey,
            })
        );
        assert!(c.in_progress());
        // The next view (a refresh) starts a new run that completes.
        net.queue.clear();
        net.view(&["a", "b", "c"]);
        net.settle(true);
        net.common_key(&["a", "b", "c"]);
    }

    #[test]
    fn works_over_modp2048() {
        fn modp(identity: Arc<Identity>, dir: Directory) -> Box<dyn KeyAgreement> {
            Box::new(Tgdh::new(Modp2048, identity, dir))
        }
        let mut net = Net::new(modp, &NAMES, 8);
        grow(&mut net, 3);
        net.view(&["a", "c"]);
        net.settle(false);
        net.common_key(&["a", "c"]);
    }
}
