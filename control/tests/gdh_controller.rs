//! GDH: the controller of a run is the view's last member, and only it may send FACTOR
//! REQUEST and FINAL; anyone else's is refused with `KeyError::NotController`, even when
//! correctly signed by a member of the run.

mod support;

use conclave_control::keys::envelope::BodyWriter;
use conclave_control::keys::gdh::{FACTOR_REQUEST, FINAL};
use conclave_control::keys::{DhGroup, Envelope, KeyError, Protocol, Ristretto255};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use support::{Net, id};

#[test]
fn controller_messages_from_another_member_are_refused() {
    let mut net = Net::new(Protocol::Gdh, &["a", "b", "c", "d"], 41);
    net.view(&["a", "b", "c"]).expect("view");
    net.settle().expect("run");
    let key = net.common_key(&["a", "b", "c"]).expect("agreed");
    // A join starts epoch 2: d is the controller.
    let view = net.view(&["a", "b", "c", "d"]).expect("join");
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let element = Ristretto255.exp_generator(&Ristretto255.random_scalar(&mut rng));
    let mut w = BodyWriter::new();
    w.bytes(&Ristretto255.encode_element(&element));
    let request = w.finish();
    let mut w = BodyWriter::new();
    w.u32(4);
    for m in ["a", "b", "c", "d"] {
        w.str(m);
        w.bytes(&Ristretto255.encode_element(&element));
    }
    let fin = w.finish();
    for (step, body) in [(FACTOR_REQUEST, &request), (FINAL, &fin)] {
        // b (an honest member's identity, so the signature verifies) is not the controller.
        let forged = Envelope::seal(
            &net.identities[&id("b")],
            Protocol::Gdh,
            "g",
            view.epoch,
            step,
            body,
        );
        let a = net.insts.get_mut(&id("a")).expect("a");
        assert_eq!(
            a.handle_message(&id("b"), &forged, &mut rng).err(),
            Some(KeyError::NotController {
                sender: id("b"),
                controller: id("d"),
                epoch: view.epoch,
            }),
            "step {step}"
        );
    }
    // The real run is unaffected.
    net.settle().expect("join run");
    let joined = net.common_key(&["a", "b", "c", "d"]).expect("agreed");
    assert_ne!(joined, key);
}

#[test]
fn newcomers_before_the_last_member_still_end_at_the_controller() {
    // d joins in the middle; the starter c is then the view's last member and ends the
    // upflow itself, so the view's last member stays the controller.
    let mut net = Net::new(Protocol::Gdh, &["a", "b", "c", "d", "e"], 42);
    net.view(&["a", "b", "c"]).expect("view");
    net.settle().expect("run");
    for order in [
        &["a", "d", "b", "c"][..],
        &["e", "a", "d", "b", "c"][..],
        &["e", "a", "d", "b", "c"][..],
    ] {
        net.view(order).expect("view");
        net.settle().expect("run");
        net.common_key(order).expect("agreed");
    }
}
