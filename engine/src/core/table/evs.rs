//! Daemon configuration changes as the group table sees them: Extended Virtual Synchrony
//! for clients (DESIGN.md §4; docs/client-protocol.md, "Daemon configuration changes").
//!
//! For every change the membership protocol hands each daemon, in the total order:
//! [`GroupTable::transitional`] with the daemons that move together, then the new regular
//! configuration as either [`GroupTable::install`] (no state exchange: every daemon of the
//! new configuration moved with us, so all their tables are already identical) or
//! [`GroupTable::merge`] (the configuration gained daemons whose tables may differ, so the
//! table is rebuilt from every daemon's `State` event).

use std::collections::BTreeSet;

use conclave_control::wire::client::{MembershipReason, ViewKind};
use conclave_control::wire::names;

use super::{ClientIdx, GroupIdx, GroupTable, LocalId, Outbox};

impl GroupTable {
    /// Applies a transitional configuration: every client whose daemon is not kept
    /// (`keep(daemon)` false; a client whose private name names no daemon is not kept
    /// either) leaves all its groups and the table, without a view of its own departure.
    ///
    /// Each group that lost members and still has some gets ONE view: kind transitional,
    /// reason network, an empty `changed` (the departed can be a whole daemon's clients,
    /// more than a view's `changed` list holds, and naming one of them would read as if
    /// only that one left: members learn who left by comparing with the previous view), a
    /// new view id in the current epoch, listing the remaining members, sent to its local
    /// members. Groups are handled in name order, so daemons that move together (whose
    /// tables are identical) give the same ids. A group left empty is dropped. Groups that
    /// lost nobody get nothing.
    ///
    /// The table remembers the groups that got a transitional view, for the regular view
    /// [`GroupTable::install`] gives them, and the departed daemons: a `Connect` of one of
    /// their clients applied before the install (sent before its daemon left, delivered in
    /// the transitional configuration) is ignored. `keep` must keep this daemon. Called
    /// twice before an install (a cascade), the second call removes more and its groups
    /// join the remembered ones.
    pub fn transitional(&mut self, keep: &dyn Fn(&str) -> bool, out: &mut dyn Outbox) {
        let mut gone = vec![false; self.clients.len()];
        let mut gone_locals: Vec<LocalId> = Vec::new();
        let mut touched: BTreeSet<Box<str>> = BTreeSet::new();
        for (i, slot) in self.clients.iter_mut().enumerate() {
            let Some(client) = slot.take_if(|c| !names::daemon_of(&c.name).is_some_and(keep))
            else {
                continue;
            };
            gone[i] = true;
            self.by_name.remove(&client.name);
            if let Some(daemon) = names::daemon_of(&client.name) {
                self.departed.insert(daemon.into());
            }
            if let Some(id) = client.local {
                gone_locals.push(id);
                if self.local_ids.get(&client.name) == Some(&id) {
                    self.local_ids.remove(&client.name);
                }
            }
            for &g in &client.groups {
                if let Some(gr) = self.groups[g as usize].as_ref() {
                    touched.insert(gr.name.clone());
                }
            }
            self.free_clients.push(i as ClientIdx);
        }
        for name in &touched {
            let Some(&g) = self.groups_by_name.get(name) else {
                continue;
            };
            let Some(gr) = self.groups[g as usize].as_mut() else {
                continue;
            };
            // One pass per group however many of its members left.
            gr.members.retain(|&m| !gone[m as usize]);
            gr.local.retain(|l| !gone_locals.contains(l));
            if gr.members.is_empty() {
                self.drop_group(g);
                continue;
            }
            self.view_change(g, ViewKind::Transitional, out);
            self.pending_regular.insert(name.clone());
        }
    }

    /// Installs the new regular configuration when no state exchange is needed: view ids
    /// from now on are `(epoch, seq)` with `seq` counting from 1 again, and every group
    /// that got a transitional view since the last install (and still has members) gets a
    /// regular view (reason network, empty `changed`, a new id), in name order. Groups the
    /// change did not touch get nothing.
    ///
    /// `epoch` must be above every epoch this table has used (the membership protocol's
    /// configuration ids grow along every daemon's history), or view ids would repeat.
    pub fn install(&mut self, epoch: u64, out: &mut dyn Outbox) {
        let groups = std::mem::take(&mut self.pending_regular);
        self.set_epoch(epoch);
        for name in groups {
            if let Some(&g) = self.groups_by_name.get(&name) {
                self.view_change(g, ViewKind::Regular, out);
            }
        }
    }

    /// Starts configuration `epoch`: view seqs restart, and the transition is over.
    fn set_epoch(&mut self, epoch: u64) {
        self.epoch = epoch;
        self.changes = 0;
        self.pending_regular.clear();
        self.departed.clear();
    }

    /// Gives group `g` a new view id and tells its local members, for a daemon
    /// configuration change (reason network; nobody's request caused it).
    fn view_change(&mut self, g: GroupIdx, kind: ViewKind, out: &mut dyn Outbox) {
        let view = self.next_view();
        if let Some(gr) = self.groups[g as usize].as_mut() {
            gr.view = view;
            self.notify(g, kind, MembershipReason::Network, None, None, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use conclave_control::wire::client::{MembershipReason, ViewId, ViewKind};

    use super::super::tests::{Seen, World, world};
    use super::LocalId;
    use crate::core::event::Event;

    fn net(group: &str, kind: ViewKind, epoch: u64, seq: u64, members: &[&str]) -> Seen {
        Seen::View(
            group.into(),
            kind,
            ViewId { epoch, seq },
            MembershipReason::Network,
            String::new(),
            members.iter().map(|s| s.to_string()).collect(),
        )
    }

    use ViewKind::{Regular, Transitional};

    /// A three-daemon network as one daemon's table holds it, with `local` clients bound:
    /// clients `#a#d1`, `#b#d1`, `#x#d2`, `#y#d3`; groups g {a, x}, h {a, b, x, y},
    /// k {a, b}, m {x}; nine membership changes in epoch 1.
    fn network(local: &[(&str, LocalId)]) -> World {
        let mut w = world(&[]);
        for &(c, id) in local {
            w.table.bind_local(c, id);
            w.boxes.0.insert(id, Vec::new());
        }
        for c in ["#a#d1", "#b#d1", "#x#d2", "#y#d3"] {
            w.apply(Event::Connect { client: c });
        }
        for (c, g) in [
            ("#a#d1", "g"),
            ("#x#d2", "g"),
            ("#a#d1", "h"),
            ("#b#d1", "h"),
            ("#x#d2", "h"),
            ("#y#d3", "h"),
            ("#a#d1", "k"),
            ("#b#d1", "k"),
            ("#x#d2", "m"),
        ] {
            w.join(c, g);
        }
        for &(_, id) in local {
            w.boxes.take(id);
        }
        w
    }

    /// Daemon d1's table: `#a#d1` is local client 1, `#b#d1` local client 2.
    fn three_daemons() -> World {
        network(&[("#a#d1", 1), ("#b#d1", 2)])
    }

    #[test]
    fn a_daemon_leaving_gives_affected_groups_one_transitional_then_one_regular_view() {
        let mut w = three_daemons();
        let before = w.table.groups();
        let k_view = before.iter().find(|g| g.name == "k").unwrap().view;
        let notified = w.table.stats().notifications;
        w.table.transitional(&|d| d != "d2", &mut w.boxes);
        assert!(!w.table.has_client("#x#d2"));
        assert!(w.table.has_client("#y#d3"));
        assert_eq!(
            w.boxes.take(1),
            [
                net("g", Transitional, 1, 10, &["#a#d1"]),
                net("h", Transitional, 1, 11, &["#a#d1", "#b#d1", "#y#d3"]),
            ]
        );
        assert_eq!(
            w.boxes.take(2),
            [net("h", Transitional, 1, 11, &["#a#d1", "#b#d1", "#y#d3"])]
        );
        let names: Vec<_> = w.table.groups().iter().map(|g| g.name).collect();
        assert_eq!(names, ["g", "h", "k"], "m had only x: it is gone");
        // Messages between the transitional and the regular view go to the survivors.
        w.send("#y#d3", &["h"], b"in transitional");
        assert_eq!(w.boxes.take(2).len(), 1);
        w.boxes.take(1);
        w.table.install(7, &mut w.boxes);
        assert_eq!(
            w.boxes.take(1),
            [
                net("g", Regular, 7, 1, &["#a#d1"]),
                net("h", Regular, 7, 2, &["#a#d1", "#b#d1", "#y#d3"]),
            ]
        );
        assert_eq!(
            w.boxes.take(2),
            [net("h", Regular, 7, 2, &["#a#d1", "#b#d1", "#y#d3"])]
        );
        let k = w
            .table
            .groups()
            .into_iter()
            .find(|g| g.name == "k")
            .unwrap();
        assert_eq!(k.view, k_view, "an untouched group keeps its view");
        assert_eq!(w.table.epoch(), 7);
        // Later changes count on in the new epoch.
        w.join("#b#d1", "g");
        assert!(matches!(
            &w.boxes.take(2)[..],
            [Seen::View(_, Regular, ViewId { epoch: 7, seq: 3 }, ..)]
        ));
        assert_eq!(w.table.stats().notifications - notified, 3 + 3 + 2);
    }

    #[test]
    fn install_without_a_transitional_view_writes_nothing_and_moves_the_epoch() {
        let mut w = three_daemons();
        w.table.transitional(&|_| true, &mut w.boxes);
        w.table.install(2, &mut w.boxes);
        assert!(w.boxes.take(1).is_empty());
        assert!(w.boxes.take(2).is_empty());
        w.apply(Event::Leave {
            client: "#a#d1",
            group: "k",
        });
        assert!(matches!(
            &w.boxes.take(2)[..],
            [Seen::View(_, Regular, ViewId { epoch: 2, seq: 1 }, ..)]
        ));
    }

    #[test]
    fn a_late_connect_of_a_departed_daemon_is_ignored_until_the_install() {
        let mut w = three_daemons();
        w.table.transitional(&|d| d == "d1", &mut w.boxes);
        assert_eq!(w.table.groups().len(), 3);
        // Sent by d2 before it left, delivered in the transitional configuration.
        w.apply(Event::Connect { client: "#z#d2" });
        w.join("#z#d2", "k");
        assert!(!w.table.has_client("#z#d2"));
        assert_eq!(w.table.stats().departed_connects, 1);
        w.table.install(3, &mut w.boxes);
        // d2 back in a later configuration (through a merge, in practice).
        w.apply(Event::Connect { client: "#z#d2" });
        assert!(w.table.has_client("#z#d2"));
    }

    #[test]
    fn a_cascade_of_two_transitional_configurations_gives_one_regular_view_per_group() {
        let mut w = three_daemons();
        w.table.transitional(&|d| d != "d3", &mut w.boxes);
        w.table.transitional(&|d| d == "d1", &mut w.boxes);
        assert_eq!(
            w.boxes.take(1),
            [
                net("h", Transitional, 1, 10, &["#a#d1", "#b#d1", "#x#d2"]),
                net("g", Transitional, 1, 11, &["#a#d1"]),
                net("h", Transitional, 1, 12, &["#a#d1", "#b#d1"]),
            ]
        );
        w.table.install(9, &mut w.boxes);
        assert_eq!(
            w.boxes.take(1),
            [
                net("g", Regular, 9, 1, &["#a#d1"]),
                net("h", Regular, 9, 2, &["#a#d1", "#b#d1"]),
            ]
        );
    }

    #[test]
    fn daemons_that_move_together_give_the_same_views() {
        // d1 and d3 see d2 go; at d3, `#y#d3` is local client 5.
        let mut d1 = three_daemons();
        let mut d3 = network(&[("#y#d3", 5)]);
        for w in [&mut d1, &mut d3] {
            w.table.transitional(&|d| d != "d2", &mut w.boxes);
            w.table.install(4, &mut w.boxes);
        }
        assert_eq!(d1.table.groups(), d3.table.groups());
        let h_at_d1: Vec<_> = d1.boxes.take(2);
        assert_eq!(d3.boxes.take(5), h_at_d1, "same h views, same ids");
    }
}
