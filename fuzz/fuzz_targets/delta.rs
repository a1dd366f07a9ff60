//! `delta::decode` on arbitrary bytes: never panics and never returns more
//! than the limit; and `encode` then `decode` gives the target back.
//!
//! Byte 0 picks the mode (bit 0) and, with byte 1, where the rest splits:
//! * even: the rest is a base and a delta, decoded with a 4 KiB limit;
//! * odd: the rest is a base and a target; the delta of the target against
//!   the base must decode to the target, and a delta damaged at a position
//!   picked by byte 1 must fail or give some bytes, never panic.

#![no_main]

use dbox_store::delta;
use libfuzzer_sys::fuzz_target;

const LIMIT: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let [mode, at, rest @ ..] = data else { return };
    let split = (usize::from(*mode >> 1) * 256 + usize::from(*at)) % (rest.len() + 1);
    let (base, other) = rest.split_at(split);
    if mode & 1 == 0 {
        if let Ok(out) = delta::decode(base, other, LIMIT) {
            assert!(out.len() <= LIMIT, "{} bytes over the limit", out.len());
        }
        return;
    }
    let Some(d) = delta::encode(base, other) else { return };
    match delta::decode(base, &d, other.len()) {
        Ok(out) => assert_eq!(out, other, "the delta does not give the target back"),
        Err(e) => panic!("a fresh delta does not decode: {e}"),
    }
    let mut bad = d.clone();
    let i = usize::from(*at) % bad.len();
    bad[i] ^= 0x5a;
    if let Ok(out) = delta::decode(base, &bad, LIMIT) {
        assert!(out.len() <= LIMIT);
    }
});
