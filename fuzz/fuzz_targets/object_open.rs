//! `object::open` and `ObjectKind::of_stored` on arbitrary bytes: never
//! panic, and never return a payload over the kind's limit.
//!
//! A mutated object never decrypts, so the first input byte can select a
//! deeper mode (bit 0 picks chunk or tree):
//!
//! * `0x10`/`0x11`: the rest is an object's plaintext (compression flag and
//!   payload), encrypted here, so decompression is reached.
//! * `0x12`/`0x13`: two bytes pick a position and an xor mask, the rest is a
//!   payload; it is zstd-compressed, damaged there, and encrypted.
//! * `0x14`/`0x15`: the rest is a payload; `seal` then `open` returns it.

#![no_main]

use dbox_store::limits::{MAX_CHUNK_SIZE, MAX_TREE_SIZE};
use dbox_store::{object, ObjectKind};
use dbox_store_fuzz::{forge, keys, Cursor};
use libfuzzer_sys::fuzz_target;

fn limit(kind: ObjectKind) -> usize {
    if kind == ObjectKind::Tree {
        MAX_TREE_SIZE
    } else {
        MAX_CHUNK_SIZE
    }
}

fn open(kind: ObjectKind, stored: &[u8]) -> Option<Vec<u8>> {
    let payload = object::open(keys(), kind, stored).ok()?;
    assert!(payload.len() <= limit(kind), "{kind} payload of {} bytes", payload.len());
    Some(payload)
}

fuzz_target!(|data: &[u8]| {
    let _ = ObjectKind::of_stored(data);
    for kind in [ObjectKind::Chunk, ObjectKind::Tree] {
        open(kind, data);
    }
    let mut c = Cursor(data);
    let mode = c.u8();
    let kind = if mode & 1 == 0 { ObjectKind::Chunk } else { ObjectKind::Tree };
    let other = if kind == ObjectKind::Tree { ObjectKind::Chunk } else { ObjectKind::Tree };
    match mode & !1 {
        0x10 => {
            let plain = c.rest();
            let stored = forge().object(kind, &[5; 24], plain);
            let payload = open(kind, &stored);
            if plain.first() == Some(&0) {
                assert_eq!(payload.as_deref(), Some(&plain[1..]), "uncompressed payload");
            }
            assert!(open(other, &stored).is_none(), "opened as the other kind");
        }
        0x12 => {
            let pos = usize::from(c.u16());
            let mask = c.u8();
            let payload = c.rest();
            let mut frame = zstd::bulk::compress(payload, 1).expect("compressing memory");
            let n = frame.len();
            frame[pos % n] ^= mask;
            let stored = forge().object(kind, &[6; 24], &[&[1], &frame[..]].concat());
            let opened = open(kind, &stored);
            if mask == 0 {
                assert_eq!(opened.as_deref(), Some(payload), "zstd payload");
            }
        }
        0x14 => {
            let payload = c.rest();
            let (id, stored) = object::seal(keys(), kind, payload);
            object::check_id(&id, &stored).expect("seal gives the id of its bytes");
            assert_eq!(open(kind, &stored).as_deref(), Some(payload), "open(seal(p)) != p");
        }
        _ => {}
    }
});
