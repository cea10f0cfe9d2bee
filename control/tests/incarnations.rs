//! A member that disconnects and comes back under the same name is a new member: views
//! carry (name, incarnation), and every protocol runs the rejoin as a join of a fresh
//! member, whatever its place in the view. Before incarnations, GDH computed a different
//! key silently, CKD failed to decrypt and TGDH could stall.

mod support;

use std::collections::HashSet;

use conclave_control::keys::{KeyError, Member, Protocol, View};
use support::{Net, id};

const NAMES: [&str; 4] = ["a", "b", "c", "d"];

fn grown(protocol: Protocol, seed: u64) -> (Net, HashSet<[u8; 32]>) {
    let mut net = Net::new(protocol, &NAMES, seed);
    let mut seen = HashSet::new();
    for k in 1..=NAMES.len() {
        net.view(&NAMES[..k]).expect("view");
        net.settle().expect("run");
        seen.insert(net.common_key(&NAMES[..k]).expect("agreed").secret);
    }
    (net, seen)
}

/// Restarts `who` and installs `order`, which names it again; everyone must agree on a
/// key never seen before, and the old life of `who` must not hold it.
fn rejoin(protocol: Protocol, who: &str, order: &[&str], seed: u64) {
    let (mut net, mut seen) = grown(protocol, seed);
    let old = net.restart(who).expect("was a member");
    net.view(order).expect("view with the new incarnation");
    net.settle()
        .unwrap_or_else(|e| panic!("{protocol:?}: rejoin of {who} refused: {e}"));
    let key = net
        .common_key(order)
        .unwrap_or_else(|e| panic!("{protocol:?}: rejoin of {who} in {order:?}: {e}"));
    assert!(seen.insert(key.secret), "{protocol:?}: key repeated");
    assert_ne!(old.current_key().map(|k| k.secret), Some(key.secret));
    // The group carries on normally afterwards: a refresh and a leave.
    net.view(order).expect("refresh");
    net.settle().expect("refresh run");
    assert!(seen.insert(net.common_key(order).expect("refresh").secret));
    let rest: Vec<&str> = order.iter().copied().filter(|m| *m != order[1]).collect();
    net.view(&rest).expect("leave");
    net.settle().expect("leave run");
    assert!(seen.insert(net.common_key(&rest).expect("leave").secret));
}

#[test]
fn rejoin_as_newest_member_every_protocol() {
    for protocol in Protocol::ALL {
        for who in NAMES {
            let mut order: Vec<&str> = NAMES.iter().copied().filter(|m| *m != who).collect();
            order.push(who);
            rejoin(protocol, who, &order, 21);
        }
    }
}

#[test]
fn rejoin_in_place_every_protocol() {
    // The membership layer may keep the name's position: the oldest member (CKD's
    // controller) and the newest (GDH's controller) come back in place.
    for protocol in Protocol::ALL {
        for who in NAMES {
            rejoin(protocol, who, &NAMES, 22);
        }
    }
}

#[test]
fn an_instance_refuses_a_view_with_another_incarnation_of_itself() {
    for protocol in Protocol::ALL {
        let (mut net, _) = grown(protocol, 23);
        let view = View {
            group: "g".into(),
            epoch: net.epoch + 1,
            members: NAMES
                .iter()
                .map(|n| Member::new(id(n), u64::from(*n == "b")))
                .collect(),
        };
        let inst = net.insts.get_mut(&id("b")).expect("member");
        assert_eq!(
            inst.handle_view(&view, &mut net.rng).err(),
            Some(KeyError::BadView("this member's incarnation changed")),
            "{protocol:?}"
        );
    }
}
