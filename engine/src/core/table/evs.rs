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

use super::{Client, ClientIdx, GroupIdx, GroupTable, LocalId, Outbox, insert_slot};
use crate::core::event::{Event, encode_state};
use conclave_control::wire::client::MembershipReason as Reason;

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
        // Virtual Synchrony groups: changes naming departed clients are dropped (their
        // entries are freed), and nobody waits for the departed. A flush whose change went,
        // or whose group gets a transitional view (a new view id), starts again.
        let mut restart: BTreeSet<Box<str>> = BTreeSet::new();
        let mut check: Vec<GroupIdx> = Vec::new();
        if self.any_vs {
            for (g, slot) in self.groups.iter_mut().enumerate() {
                let Some(gr) = slot.as_mut() else { continue };
                let Some(f) = gr.flush.as_mut() else { continue };
                let head = f.queue.front().map(|ch| ch.client);
                f.queue.retain(|ch| {
                    ch.client
                        .is_none_or(|c| !gone.get(c as usize).copied().unwrap_or(false))
                });
                f.waiting.retain(|&m| !gone[m as usize]);
                if f.queue.front().map(|ch| ch.client) != head {
                    restart.insert(gr.name.clone());
                }
                check.push(g as GroupIdx);
            }
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
                // A VS group with joins still queued lives on for them.
                if gr.flush.as_ref().is_none_or(|f| f.queue.is_empty()) {
                    self.drop_group(g);
                }
                continue;
            }
            self.view_change(g, ViewKind::Transitional, out);
            self.pending_regular.insert(name.clone());
            if self.groups[g as usize]
                .as_ref()
                .is_some_and(|gr| gr.flush.is_some())
            {
                restart.insert(name.clone());
            }
        }
        for name in &restart {
            if let Some(&g) = self.groups_by_name.get(name) {
                // Its members may have answered for a change that is gone now: a view
                // must end their round, so the group gets the install's regular view.
                self.pending_regular.insert(name.clone());
                self.start_flush(g, out);
            }
        }
        for g in check {
            if let Some(gr) = self.groups[g as usize].as_mut()
                && gr.flush.as_ref().is_some_and(|f| f.queue.is_empty())
            {
                gr.flush = None;
            }
            self.advance(g, out);
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
    /// The current epoch again (say, the first configuration installed with the epoch the
    /// table was made with) keeps counting `seq` instead of restarting it.
    pub fn install(&mut self, epoch: u64, out: &mut dyn Outbox) {
        let groups = std::mem::take(&mut self.pending_regular);
        let changes = self.changes;
        let same = epoch == self.epoch;
        self.set_epoch(epoch);
        if same {
            // Restarting seq would give ids this epoch has already given.
            self.changes = changes;
        }
        for name in groups {
            if let Some(&g) = self.groups_by_name.get(&name) {
                if self.groups[g as usize].as_ref().is_some_and(|gr| gr.vs) {
                    // Virtual Synchrony: the regular view waits for the survivors' flush.
                    self.enqueue(g, Reason::Network, None, out);
                } else {
                    self.view_change(g, ViewKind::Regular, out);
                }
            }
        }
    }

    /// Appends the `State` event of `daemon` to `out`: every client of the table whose
    /// private name ends in `daemon`, sorted by name, each with its groups in join order.
    /// After a configuration change that needs a state exchange, each daemon sends its own
    /// in the new configuration, for every daemon's [`GroupTable::merge`].
    pub fn state_of(&self, daemon: &str, out: &mut Vec<u8>) {
        let mut mine: Vec<(ClientIdx, &Client)> = self
            .clients
            .iter()
            .enumerate()
            .filter_map(|(i, c)| Some((i as ClientIdx, c.as_ref()?)))
            .filter(|(_, c)| !c.gone && names::daemon_of(&c.name) == Some(daemon))
            .collect();
        mine.sort_unstable_by(|a, b| a.1.name.cmp(&b.1.name));
        // Changes still waiting for a flush are listed as done: the merge installs every
        // group's view at once, so they take effect there without a flush of their own.
        let queued_joins = |c: ClientIdx| -> Vec<GroupIdx> {
            let mut joins: Vec<GroupIdx> = (0..self.groups.len() as GroupIdx)
                .filter(|&g| {
                    self.groups[g as usize]
                        .as_ref()
                        .is_some_and(|gr| gr.flush.is_some() && !gr.members.contains(&c))
                        && self.will_be_member(c, g)
                })
                .collect();
            joins.sort_unstable_by(|&a, &b| self.group_name(a).cmp(self.group_name(b)));
            joins
        };
        encode_state(
            out,
            daemon,
            mine.into_iter().map(|(i, c)| {
                let staying = c
                    .groups
                    .iter()
                    .copied()
                    .filter(|&g| self.will_be_member(i, g));
                let groups: Vec<&str> = staying
                    .chain(queued_joins(i))
                    .map(|g| self.group_name(g))
                    .collect();
                (&*c.name, groups)
            }),
        );
    }

    /// Installs a new regular configuration after a state exchange. `states` holds the
    /// `State` events of every daemon of the configuration, in the order they were
    /// delivered; every daemon calls this with the same list and ends with the identical
    /// table: the clients and groups are replaced by those the states list (a client
    /// listed twice counts once, where it is listed first; a group listed twice for one
    /// client counts once; groups beyond `max_groups_per_client` are not joined; entries
    /// that are not `State` events are skipped), members are sorted by name, and local
    /// clients keep their bindings (the `bind_local` map, which the merge does not touch).
    ///
    /// View ids start again at `(epoch, 1)` (see [`GroupTable::install`] on `epoch`); every
    /// group gets a new regular view (reason network, empty `changed`, ids in group name
    /// order) sent to its local members, even when its members did not change: the table
    /// was rebuilt, and every daemon must show the same view ids from here on. Clients the
    /// states do not list are gone, without views of their own.
    ///
    /// The caller applies the events ordered in the new configuration that are not `State`
    /// events only after this call: a `Join` applied to the old table would be lost.
    pub fn merge(&mut self, epoch: u64, states: &[Event<'_>], out: &mut dyn Outbox) {
        // Flushes in progress are abandoned (the states list their changes as done, and
        // the new views end every flush): local members no longer owe an answer.
        for gr in self.groups.iter().flatten() {
            let Some(f) = gr.flush.as_ref() else { continue };
            for &m in &f.waiting {
                if let Some(id) = self
                    .clients
                    .get(m as usize)
                    .and_then(Option::as_ref)
                    .and_then(|c| c.local)
                {
                    out.flush_wait(id, &gr.name, false);
                }
            }
        }
        self.by_name.clear();
        self.clients.clear();
        self.free_clients.clear();
        self.groups_by_name.clear();
        self.groups.clear();
        self.free_groups.clear();
        self.set_epoch(epoch);
        for state in states {
            let Event::State { clients, .. } = *state else {
                continue;
            };
            for (name, groups) in clients {
                if self.by_name.contains_key(name) {
                    continue;
                }
                let entry = Client {
                    name: name.into(),
                    local: self.local_ids.get(name).copied(),
                    groups: Vec::new(),
                    told_undeliverable: false,
                    gone: false,
                    queued: 0,
                };
                let local = entry.local;
                let c = insert_slot(&mut self.clients, &mut self.free_clients, entry);
                self.by_name.insert(name.into(), c);
                let mut joined: Vec<GroupIdx> =
                    Vec::with_capacity(groups.len().min(self.config.max_groups_per_client));
                for group in groups {
                    if joined.len() >= self.config.max_groups_per_client {
                        break;
                    }
                    let g = match self.groups_by_name.get(group) {
                        Some(&g) => g,
                        None => self.create_group(group),
                    };
                    if joined.contains(&g) {
                        continue;
                    }
                    joined.push(g);
                    if let Some(gr) = self.groups[g as usize].as_mut() {
                        // Sorted below, once every member is in.
                        gr.members.push(c);
                        gr.local.extend(local);
                    }
                }
                if let Some(entry) = self.clients[c as usize].as_mut() {
                    entry.groups = joined;
                }
            }
        }
        let clients = &self.clients;
        let name_of = |c: ClientIdx| clients[c as usize].as_ref().map_or("", |e| &*e.name);
        for gr in self.groups.iter_mut().flatten() {
            gr.members
                .sort_unstable_by(|&a, &b| name_of(a).cmp(name_of(b)));
        }
        let mut order: Vec<(&str, GroupIdx)> = self
            .groups_by_name
            .iter()
            .map(|(name, &g)| (&**name, g))
            .collect();
        order.sort_unstable();
        let order: Vec<GroupIdx> = order.into_iter().map(|(_, g)| g).collect();
        for g in order {
            self.view_change(g, ViewKind::Regular, out);
        }
    }

    /// Views given from now until the next install (in a transitional configuration) use
    /// `epoch`, seqs counting from 1 (again only if the epoch changes). Daemons that move
    /// together deliver the old configuration's last messages in the transitional
    /// configuration, to a table without the departed daemons' clients, while daemons that
    /// did not move with them may deliver the same messages in the regular one: the
    /// resulting views differ, so their ids must too. The caller picks an epoch above the
    /// old one, below the next, and different for every set of daemons moving together.
    pub fn begin_transitional_epoch(&mut self, epoch: u64) {
        if epoch != self.epoch {
            self.epoch = epoch;
            self.changes = 0;
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

    use super::super::tests::{Seen, World, world, world_vs};
    use super::LocalId;
    use crate::core::event::{Event, encode_state};

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
    fn installing_the_current_epoch_again_does_not_repeat_view_ids() {
        let mut w = three_daemons();
        w.table.install(1, &mut w.boxes);
        w.join("#b#d1", "g");
        assert!(matches!(
            &w.boxes.take(2)[..],
            [Seen::View(_, Regular, ViewId { epoch: 1, seq: 10 }, ..)]
        ));
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

    /// The state exchange: each daemon's own `State` event, in delivery order.
    fn exchange(daemons: &[(&str, &World)]) -> Vec<Vec<u8>> {
        daemons
            .iter()
            .map(|(d, w)| {
                let mut b = Vec::new();
                w.table.state_of(d, &mut b);
                b
            })
            .collect()
    }

    fn decoded(bytes: &[Vec<u8>]) -> Vec<Event<'_>> {
        bytes.iter().map(|b| Event::decode(b).unwrap().0).collect()
    }

    #[test]
    fn state_of_lists_one_daemons_clients_sorted_with_groups_in_join_order() {
        let mut w = three_daemons();
        w.join("#b#d1", "g");
        let mut b = Vec::new();
        w.table.state_of("d1", &mut b);
        let (Event::State { daemon, clients }, used) = Event::decode(&b).unwrap() else {
            panic!("not a state event");
        };
        assert_eq!((daemon, used), ("d1", b.len()));
        let listed: Vec<(&str, Vec<&str>)> = clients
            .iter()
            .map(|(n, g)| (n, g.iter().collect()))
            .collect();
        assert_eq!(
            listed,
            [
                ("#a#d1", vec!["g", "h", "k"]),
                ("#b#d1", vec!["h", "k", "g"])
            ]
        );
        let mut none = Vec::new();
        w.table.state_of("d9", &mut none);
        assert!(
            matches!(Event::decode(&none), Ok((Event::State { clients, .. }, _))
                if clients.is_empty())
        );
    }

    #[test]
    fn a_state_event_outside_a_merge_is_ignored_and_counted() {
        let mut w = three_daemons();
        let before = w
            .table
            .groups()
            .into_iter()
            .map(|g| (g.name.to_string(), g.members.len(), g.view))
            .collect::<Vec<_>>();
        let mut b = Vec::new();
        encode_state(&mut b, "d4", [("#new#d4", ["g"])]);
        w.apply(Event::decode(&b).unwrap().0);
        let after = w
            .table
            .groups()
            .into_iter()
            .map(|g| (g.name.to_string(), g.members.len(), g.view))
            .collect::<Vec<_>>();
        assert_eq!(before, after);
        assert!(!w.table.has_client("#new#d4"));
        assert_eq!(w.table.stats().stray_states, 1);
        assert!(w.boxes.take(1).is_empty());
    }

    #[test]
    fn daemons_in_different_states_merge_to_one_table_and_the_same_views() {
        // d1 and d2 were cut apart; d3 restarted. Each changed on its own meanwhile.
        // d1: its clients a (1), b (2); it still lists x and y from before.
        let mut d1 = three_daemons();
        d1.join("#b#d1", "g");
        d1.boxes.take(1);
        d1.boxes.take(2);
        // d2: x local (7); it lost d1 and d3 (transitional, install), then w joined g and
        // x left h: d2's own clients are as d2 says, whatever d1 still lists.
        let mut d2 = network(&[("#x#d2", 7)]);
        d2.table.transitional(&|d| d == "d2", &mut d2.boxes);
        d2.table.install(5, &mut d2.boxes);
        d2.boxes.take(7);
        d2.apply(Event::Connect { client: "#w#d2" });
        d2.join("#w#d2", "g");
        d2.apply(Event::Leave {
            client: "#x#d2",
            group: "h",
        });
        d2.boxes.take(7);
        // d3: restarted with an empty table; its new client y (3) joined z.
        let mut d3 = world(&[]);
        d3.connect("#y#d3", 3);
        d3.join("#y#d3", "z");
        d3.boxes.take(3);

        let states = exchange(&[("d2", &d2), ("d3", &d3), ("d1", &d1)]);
        let states = decoded(&states);
        for w in [&mut d1, &mut d2, &mut d3] {
            w.table.merge(20, &states, &mut w.boxes);
        }
        assert_eq!(d1.table.groups(), d2.table.groups());
        assert_eq!(d1.table.groups(), d3.table.groups());
        let table: Vec<(&str, ViewId, Vec<&str>)> = d1
            .table
            .groups()
            .into_iter()
            .map(|g| (g.name, g.view, g.members))
            .collect();
        let id = |seq| ViewId { epoch: 20, seq };
        assert_eq!(
            table,
            [
                ("g", id(1), vec!["#a#d1", "#b#d1", "#w#d2", "#x#d2"]),
                ("h", id(2), vec!["#a#d1", "#b#d1"]),
                ("k", id(3), vec!["#a#d1", "#b#d1"]),
                ("m", id(4), vec!["#x#d2"]),
                ("z", id(5), vec!["#y#d3"]),
            ]
        );
        // Each group's view reaches its local members, identical at every daemon.
        let g_view = net("g", Regular, 20, 1, &["#a#d1", "#b#d1", "#w#d2", "#x#d2"]);
        let h_view = net("h", Regular, 20, 2, &["#a#d1", "#b#d1"]);
        let k_view = net("k", Regular, 20, 3, &["#a#d1", "#b#d1"]);
        let at_ab = [g_view.clone(), h_view, k_view];
        assert_eq!(d1.boxes.take(1), at_ab);
        assert_eq!(d1.boxes.take(2), at_ab);
        let at_x = [g_view, net("m", Regular, 20, 4, &["#x#d2"])];
        assert_eq!(d2.boxes.take(7), at_x);
        assert_eq!(d3.boxes.take(3), [net("z", Regular, 20, 5, &["#y#d3"])]);
        // Groups keep each client's join order; the tables go on agreeing.
        assert_eq!(d2.table.groups_of("#b#d1"), ["h", "k", "g"]);
        for w in [&mut d1, &mut d2, &mut d3] {
            w.join("#y#d3", "g");
            w.send("#w#d2", &["g"], b"after");
        }
        assert_eq!(d1.table.groups(), d3.table.groups());
        let members = ["#a#d1", "#b#d1", "#w#d2", "#x#d2", "#y#d3"];
        assert_eq!(
            d3.boxes.take(3),
            [
                Seen::View(
                    "g".into(),
                    Regular,
                    ViewId { epoch: 20, seq: 6 },
                    MembershipReason::Join,
                    "#y#d3".into(),
                    members.iter().map(|s| s.to_string()).collect(),
                ),
                Seen::Data("#w#d2".into(), vec!["g".into()], b"after".to_vec()),
            ]
        );
        assert_eq!(
            d1.boxes.take(1).len(),
            2,
            "the join's view, then the message"
        );
    }

    #[test]
    fn a_merge_counts_repeated_clients_and_groups_once_and_forgets_unlisted_clients() {
        let mut w = three_daemons();
        let mut b = Vec::new();
        encode_state(
            &mut b,
            "d1",
            [("#a#d1", vec!["g", "g", "q"]), ("#a#d1", vec!["r"])],
        );
        let mut junk = Vec::new();
        Event::Connect { client: "#zz#d1" }.encode(&mut junk);
        let states = [
            Event::decode(&b).unwrap().0,
            Event::decode(&junk).unwrap().0,
        ];
        w.table.merge(3, &states, &mut w.boxes);
        assert_eq!(w.table.groups_of("#a#d1"), ["g", "q"]);
        assert!(!w.table.has_client("#b#d1"), "the states do not list it");
        assert!(!w.table.has_client("#zz#d1"), "only State entries count");
        assert!(!w.table.has_client("#x#d2"));
        assert_eq!(
            w.boxes.take(1),
            [
                net("g", Regular, 3, 1, &["#a#d1"]),
                net("q", Regular, 3, 2, &["#a#d1"]),
            ]
        );
        // b's session is still bound: it is back in the table when the states list it.
        w.table.merge(
            4,
            &decoded(&exchange(&[("d1", &three_daemons())])),
            &mut w.boxes,
        );
        assert_eq!(w.table.groups_of("#b#d1"), ["h", "k"]);
        assert_eq!(w.boxes.take(2).len(), 2);
    }

    mod merge_model {
        //! Merges of tables that went their own ways, over random histories.
        use super::*;
        use proptest::prelude::*;
        use std::collections::{BTreeMap, BTreeSet};

        const DAEMONS: [&str; 3] = ["d1", "d2", "d3"];
        const USERS: [&str; 3] = ["u", "v", "w"];
        const GROUPS: [&str; 3] = ["x", "y", "z"];

        /// (acting daemon's table, client's daemon, user, group, join or leave)
        type Step = (usize, usize, usize, usize, bool);

        fn step() -> impl Strategy<Value = Step> {
            (0..3usize, 0..3usize, 0..3usize, 0..3usize, any::<bool>())
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]
            #[test]
            fn every_daemon_ends_a_merge_with_the_same_table_and_views(
                steps in proptest::collection::vec(step(), 0..40),
                epoch in 2u64..1000,
            ) {
                // Each daemon's table applies its own history: joins and leaves of its own
                // clients and of stale copies of others'. Only a daemon's own clients reach
                // the merged table, as that daemon reported them.
                let mut worlds: Vec<World> = Vec::new();
                for (d, daemon) in DAEMONS.iter().enumerate() {
                    let mut w = world(&[]);
                    for (u, user) in USERS.iter().enumerate() {
                        let name = format!("#{user}#{daemon}");
                        w.connect(&name, (d * 10 + u) as LocalId);
                    }
                    worlds.push(w);
                }
                let mut truth: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
                for &(at, d, u, g, join) in &steps {
                    let client = format!("#{}#{}", USERS[u], DAEMONS[d]);
                    let group = GROUPS[g];
                    let w = &mut worlds[at];
                    if !w.table.has_client(&client) {
                        w.apply(Event::Connect { client: &client });
                    }
                    if join {
                        w.join(&client, group);
                    } else {
                        w.apply(Event::Leave { client: &client, group });
                    }
                    if at == d {
                        // A leave of a group it is not in fails; a join beyond the limit
                        // too: the table says what happened.
                        let member = w.table.groups_of(&client).contains(&group);
                        let set = truth.entry(group).or_default();
                        if member { set.insert(client); } else { set.remove(&client); }
                    }
                }
                let bytes: Vec<Vec<u8>> = DAEMONS
                    .iter()
                    .zip(&worlds)
                    .map(|(d, w)| {
                        let mut b = Vec::new();
                        w.table.state_of(d, &mut b);
                        b
                    })
                    .collect();
                let states = decoded(&bytes);
                for w in &mut worlds {
                    w.table.merge(epoch, &states, &mut w.boxes);
                }
                for w in &worlds[1..] {
                    prop_assert_eq!(w.table.groups(), worlds[0].table.groups());
                }
                let merged: Vec<(String, ViewId, Vec<String>)> = worlds[0]
                    .table
                    .groups()
                    .into_iter()
                    .map(|g| {
                        let members = g.members.iter().map(|m| m.to_string()).collect();
                        (g.name.into(), g.view, members)
                    })
                    .collect();
                for (n, (name, view, members)) in merged.iter().enumerate() {
                    prop_assert_eq!(*view, ViewId { epoch, seq: n as u64 + 1 });
                    let want: Vec<String> = truth[name.as_str()].iter().cloned().collect();
                    prop_assert_eq!(members, &want);
                }
                let live = truth.values().filter(|m| !m.is_empty()).count();
                prop_assert_eq!(merged.len(), live);
                // Each local client got one view in the new epoch for each group it is in,
                // in group name order, as every daemon lists the group.
                for (d, w) in worlds.iter_mut().enumerate() {
                    for (u, user) in USERS.iter().enumerate() {
                        let id = (d * 10 + u) as LocalId;
                        let name = format!("#{user}#{}", DAEMONS[d]);
                        let views: Vec<Seen> = w.boxes.take(id).into_iter()
                            .filter(|s| {
                                matches!(s, Seen::View(_, _, ViewId { epoch: e, .. }, ..)
                                    if *e == epoch)
                            })
                            .collect();
                        let want: Vec<Seen> = merged
                            .iter()
                            .filter(|(_, _, members)| members.contains(&name))
                            .map(|(group, view, members)| {
                                let members: Vec<&str> =
                                    members.iter().map(String::as_str).collect();
                                net(group, Regular, epoch, view.seq, &members)
                            })
                            .collect();
                        prop_assert_eq!(views, want);
                    }
                }
            }
        }
    }

    mod transition_model {
        //! Transitional configurations and installs over random tables.
        use super::*;
        use conclave_control::wire::names;
        use proptest::prelude::*;

        const CLIENTS: [&str; 6] = ["#u#d1", "#v#d1", "#u#d2", "#v#d2", "#u#d3", "#u#d4"];
        const GROUPS: [&str; 3] = ["x", "y", "z"];

        proptest! {
            #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]
            #[test]
            fn daemons_that_move_together_agree_and_touched_groups_get_one_view_of_each_kind(
                joins in proptest::collection::vec((0..6usize, 0..3usize), 0..20),
                d2_stays in any::<bool>(),
                d4_stays in any::<bool>(),
            ) {
                // d1 (local u, v) and d3 (local u) move together; d2 and d4 maybe not.
                let mut at_d1 = world(&[]);
                let mut at_d3 = world(&[]);
                let locals: [(&mut World, &[usize]); 2] =
                    [(&mut at_d1, &[0, 1]), (&mut at_d3, &[4])];
                for (w, local) in locals {
                    for &c in local {
                        w.table.bind_local(CLIENTS[c], c as LocalId);
                        w.boxes.0.insert(c as LocalId, Vec::new());
                    }
                    for c in CLIENTS {
                        w.apply(Event::Connect { client: c });
                    }
                    for &(c, g) in &joins {
                        w.join(CLIENTS[c], GROUPS[g]);
                    }
                }
                let base = at_d1.table.changes;
                prop_assert_eq!(base, at_d3.table.changes);
                let before: Vec<(String, Vec<String>)> = at_d1
                    .table
                    .groups()
                    .iter()
                    .map(|g| {
                        let members = g.members.iter().map(|m| m.to_string()).collect();
                        (g.name.to_string(), members)
                    })
                    .collect();
                let keep = |d: &str| match d {
                    "d2" => d2_stays,
                    "d4" => d4_stays,
                    _ => true,
                };
                for w in [&mut at_d1, &mut at_d3] {
                    for id in w.boxes.0.values_mut() {
                        id.clear();
                    }
                    w.table.transitional(&keep, &mut w.boxes);
                    w.table.install(50, &mut w.boxes);
                }
                prop_assert_eq!(at_d1.table.groups(), at_d3.table.groups());
                for g in at_d1.table.groups() {
                    for m in &g.members {
                        let d = names::daemon_of(m).unwrap_or("");
                        prop_assert!(keep(d), "{} of a departed daemon is still in {}", m, g.name);
                    }
                }
                for c in [0usize, 1, 4] {
                    let w = if c == 4 { &mut at_d3 } else { &mut at_d1 };
                    let seen = w.boxes.take(c as LocalId);
                    // Touched groups (lost members, kept some) in name order: the k-th gets
                    // transitional id (1, base + k), then regular id (50, k).
                    let mut want = Vec::new();
                    let mut regular = Vec::new();
                    let mut k = 0;
                    for (group, members) in &before {
                        let left: Vec<&str> = members
                            .iter()
                            .map(String::as_str)
                            .filter(|m| names::daemon_of(m).is_some_and(keep))
                            .collect();
                        if left.len() == members.len() || left.is_empty() {
                            continue;
                        }
                        k += 1;
                        if left.contains(&CLIENTS[c]) {
                            want.push(net(group, Transitional, 1, base + k, &left));
                            regular.push(net(group, Regular, 50, k, &left));
                        }
                    }
                    want.extend(regular);
                    prop_assert_eq!(seen, want);
                }
            }
        }
    }

    /// Every member of group `group` answers its pending flush.
    fn all_flush(w: &mut World, group: &str) {
        let Some(info) = w.table.groups().into_iter().find(|g| g.name == group) else {
            return;
        };
        let view = info.view;
        let members: Vec<String> = info.members.iter().map(|m| m.to_string()).collect();
        for m in &members {
            w.apply(Event::FlushOk {
                client: m,
                group,
                view,
            });
        }
    }

    #[test]
    fn a_network_removal_in_a_vs_group_is_flushed_before_the_regular_view() {
        // Daemon d1's table; `#a#d1` is local; the VS group `vs` holds a, x (d2), y (d3).
        let mut w = world_vs(&["vs*"], &["vs*"]);
        w.table.bind_local("#a#d1", 1);
        w.boxes.0.insert(1, Vec::new());
        for c in ["#a#d1", "#x#d2", "#y#d3"] {
            w.apply(Event::Connect { client: c });
            w.join(c, "vs");
            all_flush(&mut w, "vs");
        }
        w.boxes.take(1);
        assert_eq!(w.table.groups()[0].members, ["#a#d1", "#x#d2", "#y#d3"]);
        // d2 leaves: the transitional view at once (x cannot be waited for), then the
        // install flushes the survivors before the regular view.
        w.table.transitional(&|d| d != "d2", &mut w.boxes);
        assert_eq!(
            w.boxes.take(1),
            [net("vs", Transitional, 1, 4, &["#a#d1", "#y#d3"])]
        );
        w.table.install(2, &mut w.boxes);
        assert_eq!(
            w.boxes.take(1),
            [Seen::Flush(
                "vs".into(),
                ViewId { epoch: 1, seq: 4 },
                MembershipReason::Network,
                String::new()
            )]
        );
        // A message sent before the survivors' FlushOk is still in the old view.
        w.send("#y#d3", &["vs"], b"late");
        all_flush(&mut w, "vs");
        let seen = w.boxes.take(1);
        assert_eq!(seen.len(), 2);
        assert!(matches!(&seen[0], Seen::Data(s, _, p) if s == "#y#d3" && p == b"late"));
        assert_eq!(seen[1], net("vs", Regular, 2, 1, &["#a#d1", "#y#d3"]));
        assert!(w.boxes.1.is_empty());
    }

    #[test]
    fn a_merge_lists_queued_changes_as_done_and_ends_the_rounds_under_way() {
        let mut w = world_vs(&["vs*"], &["vs*"]);
        w.table.bind_local("#a#d1", 1);
        w.boxes.0.insert(1, Vec::new());
        for c in ["#a#d1", "#b#d1", "#x#d2"] {
            w.apply(Event::Connect { client: c });
        }
        w.join("#a#d1", "vs");
        w.join("#x#d2", "vs");
        all_flush(&mut w, "vs");
        // b's join waits for a and x; a owes an answer.
        w.join("#b#d1", "vs");
        assert_eq!(w.table.groups()[0].flush_pending, 1);
        assert!(w.boxes.1.contains(&(1, "vs".into())));
        w.boxes.take(1);
        let mut d1 = Vec::new();
        w.table.state_of("d1", &mut d1);
        let mut d2 = Vec::new();
        w.table.state_of("d2", &mut d2);
        let (s1, _) = Event::decode(&d1).unwrap();
        let (s2, _) = Event::decode(&d2).unwrap();
        let Event::State { clients, .. } = s1 else {
            panic!("{s1:?}")
        };
        let listed: Vec<(&str, Vec<&str>)> = clients
            .iter()
            .map(|(n, g)| (n, g.iter().collect()))
            .collect();
        assert_eq!(listed, [("#a#d1", vec!["vs"]), ("#b#d1", vec!["vs"])]);
        w.table.merge(2, &[s1, s2], &mut w.boxes);
        assert!(w.boxes.1.is_empty(), "the merge ends the round");
        assert_eq!(
            w.boxes.take(1),
            [net("vs", Regular, 2, 1, &["#a#d1", "#b#d1", "#x#d2"])]
        );
        assert_eq!(w.table.groups()[0].flush_pending, 0);
    }
}
