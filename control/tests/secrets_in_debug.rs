//! `Debug` never shows key material: every protocol instance, its group key and the
//! signing identity are formatted (plain and pretty) after a completed run, and no window
//! of the key's bytes may appear in the output, neither as hex nor as a decimal array.

mod support;

use conclave_control::keys::{GroupKey, Identity, MemberId, Protocol};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use support::{Net, id};

/// Every way `bytes` could show up in formatted output: hex (both cases) of any 4-byte
/// window, and the decimal `Debug` of any 3 consecutive bytes.
fn leaks(text: &str, bytes: &[u8]) -> Option<String> {
    for w in bytes.windows(4) {
        let hex: String = w.iter().map(|b| format!("{b:02x}")).collect();
        if text.contains(&hex) || text.contains(&hex.to_uppercase()) {
            return Some(hex);
        }
    }
    for w in bytes.windows(3) {
        let dec = format!("{}, {}, {}", w[0], w[1], w[2]);
        let pretty = format!("{},\n    {},\n    {}", w[0], w[1], w[2]);
        if text.contains(&dec) || text.contains(&pretty) {
            return Some(dec);
        }
    }
    None
}

fn assert_clean(what: &str, text: &str, secret: &[u8]) {
    if let Some(found) = leaks(text, secret) {
        panic!("{what} shows key bytes {found}: {text}");
    }
}

#[test]
fn no_protocol_instance_or_key_prints_key_bytes() {
    for protocol in Protocol::ALL {
        let mut net = Net::new(protocol, &["a", "b", "c"], 11);
        net.view(&["a", "b", "c"]).expect("view");
        net.settle().expect("run");
        let key: GroupKey = net.common_key(&["a", "b", "c"]).expect("agreed");
        for text in [format!("{key:?}"), format!("{key:#?}")] {
            assert_clean("GroupKey", &text, &key.secret);
        }
        for (m, inst) in &net.insts {
            for text in [format!("{inst:?}"), format!("{inst:#?}")] {
                assert_clean(&format!("{protocol:?} instance of {m}"), &text, &key.secret);
            }
        }
    }
}

#[test]
fn identity_debug_shows_no_seed() {
    let seed = [0x5au8, 0x17, 0xc3, 0x99, 0x01, 0x42, 0x7e, 0xee]
        .into_iter()
        .cycle()
        .take(32)
        .collect::<Vec<_>>();
    let mut array = [0u8; 32];
    array.copy_from_slice(&seed);
    let identity = Identity::from_seed(MemberId::new("a"), array);
    for text in [format!("{identity:?}"), format!("{identity:#?}")] {
        assert_clean("Identity", &text, &seed);
    }
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let generated = Identity::generate(id("b"), &mut rng);
    assert_eq!(format!("{generated:?}"), "Identity(b)");
}

#[test]
fn the_leak_detector_itself_finds_key_bytes() {
    // The check above must be able to fail: a derived Debug of the raw bytes is caught.
    let secret = [7u8, 200, 13, 99, 5, 6, 7, 8];
    assert!(leaks(&format!("{secret:?}"), &secret).is_some());
    assert!(leaks(&format!("{secret:#?}"), &secret).is_some());
    let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    assert!(leaks(&format!("fp {}", &hex[4..12]), &secret).is_some());
}
