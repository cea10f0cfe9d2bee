//! STR, the skinny-tree protocol (Kim, Perrig, Tsudik, "Group Key Agreement Efficient in
//! Communication", IEEE Transactions on Computers 2004).
//!
//! The key tree is linear: every inner node's right child is a member's leaf, the oldest
//! members at the bottom. It runs on the same engine as TGDH (see [`super::tgdh`]) with
//! STR's shape rules: a joining member (or a merging tree's members, bottom first) is
//! stacked on top; a leaving member's leaf is cut out and the tree above it re-keyed, the
//! sponsor being the member just below the leaver (for every re-keyed node whose
//! children are intact, the topmost member of its left child); a partition has the
//! sponsor below the lowest leaver; a refresh is sponsored by the member just below the
//! top. The sponsor computes every key up to the root in one round and broadcasts all
//! the blinded keys, so leave and refresh take one round, join and merge two.

use std::sync::Arc;

use rand_core::CryptoRngCore;

use super::tgdh::{NodeView, Shape, TreeEngine, tree_protocol_key_agreement};
use super::{
    DhGroup, Directory, GroupKey, Identity, KeyAgreement, KeyError, MemberId, OpCounts, Output,
    Protocol, View,
};

/// One member's STR instance (its `Debug` shows no secret).
#[derive(Debug)]
pub struct Str<G: DhGroup> {
    engine: TreeEngine<G>,
}

impl<G: DhGroup> Str<G> {
    /// A fresh instance for `identity`; it takes part from the first view that contains
    /// it.
    pub fn new(group: G, identity: Arc<Identity>, directory: Directory) -> Self {
        Self {
            engine: TreeEngine::new(Protocol::Str, Shape::Skinny, group, identity, directory),
        }
    }

    /// This member's tree, node by node in preorder (for known-answer vectors and tests).
    pub fn snapshot(&self) -> Vec<NodeView> {
        self.engine.snapshot()
    }
}

tree_protocol_key_agreement!(Str);

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::keys::tgdh::testnet::{Net, id};
    use crate::keys::{KeyError, Ristretto255};

    fn str_instance(identity: Arc<Identity>, dir: Directory) -> Box<dyn KeyAgreement> {
        Box::new(Str::new(Ristretto255, identity, dir))
    }

    const NAMES: [&str; 8] = ["a", "b", "c", "d", "e", "f", "g", "h"];

    fn grow(net: &mut Net, n: usize) -> HashSet<[u8; 32]> {
        let mut seen = HashSet::new();
        for k in 1..=n {
            net.view(&NAMES[..k]);
            net.settle(false);
            assert!(seen.insert(net.common_key(&NAMES[..k]).secret));
        }
        seen
    }

    #[test]
    fn tree_stays_skinny_with_oldest_at_the_bottom() {
        let net = Net::new(str_instance, &NAMES, 1);
        let mut rng = rand::rngs::OsRng;
        let mut insts: Vec<Str<Ristretto255>> = NAMES[..4]
            .iter()
            .map(|n| {
                Str::new(
                    Ristretto255,
                    net.identities[&id(n)].clone(),
                    net.directory.clone(),
                )
            })
            .collect();
        let view = View::new("g", 1, NAMES[..4].iter().map(|n| id(n)));
        let mut queue = std::collections::VecDeque::new();
        for inst in insts.iter_mut() {
            let out = inst.handle_view(&view, &mut rng).expect("view");
            let me = inst.me().clone();
            queue.extend(out.sends.into_iter().map(|s| (me.clone(), s.bytes)));
        }
        for _ in 0..1000 {
            let Some((from, bytes)) = queue.pop_front() else {
                break;
            };
            for inst in insts.iter_mut() {
                let out = inst.handle_message(&from, &bytes, &mut rng).expect("ok");
                let me = inst.me().clone();
                queue.extend(out.sends.into_iter().map(|s| (me.clone(), s.bytes)));
            }
        }
        let key = insts[0].current_key().cloned().expect("agreed");
        assert!(insts.iter().all(|i| i.current_key() == Some(&key)));
        let snap = insts[2].snapshot();
        // Preorder of a skinny tree: root, then (left chain ..., right leaf) per level.
        let expected: Vec<Vec<MemberId>> = vec![
            vec![id("a"), id("b"), id("c"), id("d")],
            vec![id("a"), id("b"), id("c")],
            vec![id("a"), id("b")],
            vec![id("a")],
            vec![id("b")],
            vec![id("c")],
            vec![id("d")],
        ];
        let got: Vec<Vec<MemberId>> = snap.iter().map(|n| n.members.clone()).collect();
        assert_eq!(got, expected);
        // Everything but the root has its blinded key, and all members agree on them.
        assert!(snap[1..].iter().all(|n| n.blinded_key.is_some()));
        assert!(snap[0].blinded_key.is_none());
        let others = insts[0].snapshot();
        assert_eq!(others, snap);
    }

    #[test]
    fn joins_leaves_partition_merge_refresh() {
        let mut net = Net::new(str_instance, &NAMES, 2);
        let mut seen = grow(&mut net, 6);
        // Leave in the middle, at the bottom and at the top.
        for rest in [
            &["a", "b", "d", "e", "f"][..],
            &["b", "d", "e", "f"][..],
            &["b", "d", "e"][..],
        ] {
            net.view(rest);
            net.settle(false);
            assert!(seen.insert(net.common_key(rest).secret));
        }
        // Partition and merge with a separately run group.
        net.view(&["b", "e"]);
        net.settle(false);
        assert!(seen.insert(net.common_key(&["b", "e"]).secret));
        net.view(&["g", "h"]);
        net.settle(false);
        assert!(seen.insert(net.common_key(&["g", "h"]).secret));
        let all = ["b", "e", "g", "h"];
        net.view(&all);
        net.settle(false);
        assert!(seen.insert(net.common_key(&all).secret));
        net.view(&all);
        net.settle(false);
        assert!(seen.insert(net.common_key(&all).secret));
    }

    #[test]
    fn departed_member_refuses_new_broadcasts() {
        let mut net = Net::new(str_instance, &NAMES, 3);
        grow(&mut net, 4);
        net.view(&["a", "b", "d"]);
        let in_flight: Vec<_> = net.queue.iter().cloned().collect();
        let c = net.insts.get_mut(&id("c")).expect("kept");
        let before = c.current_key().cloned();
        for (from, _, bytes) in &in_flight {
            assert!(matches!(
                c.handle_message(from, bytes, &mut rand::rngs::OsRng),
                Err(KeyError::StaleEpoch { .. })
            ));
        }
        assert_eq!(c.current_key().cloned(), before);
        net.settle(false);
        assert_ne!(Some(net.common_key(&["a", "b", "d"])), before);
    }

    #[test]
    fn leave_costs_follow_the_leavers_position() {
        // STR: the sponsor below the leaver computes every key above it (two
        // exponentiations per level); a member at level j computes its own path only.
        let mut net = Net::new(str_instance, &NAMES, 4);
        grow(&mut net, 8);
        let members = ["a", "b", "c", "e", "f", "g", "h"];
        let before: Vec<u64> = members
            .iter()
            .map(|m| net.insts[&id(m)].op_counts().exponentiations)
            .collect();
        net.view(&members);
        net.settle(false);
        net.common_key(&members);
        let deltas: Vec<u64> = members
            .iter()
            .zip(before)
            .map(|(m, b)| net.insts[&id(m)].op_counts().exponentiations - b)
            .collect();
        // Sponsor c (below the leaver d): fresh leaf + 2 per level above it.
        let c = deltas[2];
        assert!((8..=12).contains(&c), "sponsor did {c}: {deltas:?}");
        // a and b sit below the change and only recompute from their level up.
        assert!(deltas[0] <= 7 && deltas[1] <= 7, "{deltas:?}");
        // The top member recomputes only the root.
        assert!(deltas[6] <= 2, "{deltas:?}");
    }

    #[test]
    fn cascades_agree() {
        let mut net = Net::new(str_instance, &NAMES, 5);
        grow(&mut net, 5);
        net.view(&NAMES[..6]);
        for _ in 0..4 {
            net.step();
        }
        net.view(&["a", "c", "d", "e", "f"]);
        for _ in 0..2 {
            net.step();
        }
        let all = ["a", "c", "d", "e", "f", "g", "h"];
        net.view(&all);
        net.settle(true);
        net.common_key(&all);
    }
}
