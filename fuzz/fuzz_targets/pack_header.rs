//! `pack::read_header` over an in-memory file: never panics, and what it
//! returns lies inside the pack, contiguous from the body start on.
//!
//! The input is always read as a whole pack. A mutated pack never decrypts,
//! so the first input byte can select a deeper mode:
//!
//! * `0x10`: the rest lists objects (a length byte and that many bytes,
//!   repeated, until a zero length) and then damage (position u16, xor mask
//!   u8, repeated; a last odd byte truncates). The objects are packed with
//!   `PackBuilder` and sealed; damage to the body nonce or the objects must
//!   not change the header read, any other damage may only make it an error.
//!   Before the damage, every object must read back through the body
//!   keystream.
//! * `0x11`: the header plaintext and trailer are chosen by the fuzzer and
//!   encrypted here: objects length u16, padding u8, flags u8 (bit 0: the
//!   trailer holds the next two u64 as header offset and length instead of
//!   pointing at the header; bit 1: the header's count is set to fit the
//!   entries given; bit 2: the pack states format 1, and its header and
//!   trailer are sealed for it), then the header plaintext.

#![no_main]

use dbox_store::pack::{
    apply_body_stream, read_body_stream, read_header, PackBuilder, PackEntry, BODY_START, PACK_FORMAT,
    PACK_FORMAT_XCHACHA20, PACK_MAGIC, PACK_PREFIX_LEN, TRAILER_LEN,
};
use dbox_store::ObjectId;
use dbox_store_fuzz::{forge, keys, pack_bytes, Cursor, Mem};
use libfuzzer_sys::fuzz_target;

fn read(file: &[u8]) -> Option<Vec<PackEntry>> {
    let mem = Mem(file.to_vec());
    let _ = read_body_stream(&mem);
    let entries = read_header(&mem, file.len() as u64, keys()).ok()?;
    let mut next = BODY_START as u64;
    for e in &entries {
        assert_eq!(e.offset, next, "entries are not contiguous");
        next += u64::from(e.len);
    }
    assert!(next + TRAILER_LEN as u64 <= file.len() as u64, "entries run past the pack");
    Some(entries)
}

fn built(c: &mut Cursor<'_>) {
    let mut b = PackBuilder::new(keys());
    let mut objects = Vec::new();
    for _ in 0..32 {
        let n = usize::from(c.u8());
        if n == 0 {
            break;
        }
        let stored = c.take(n);
        objects.push(stored);
        b.push(ObjectId::of(stored), stored);
    }
    let tail = b.seal().expect("sealing memory");
    let mut file = pack_bytes(&b, &tail);
    assert_eq!(read(&file).as_deref(), Some(b.entries()), "a sealed pack reads back");
    let body = read_body_stream(&Mem(file.clone())).expect("a sealed pack has a body nonce");
    for (e, stored) in b.entries().iter().zip(&objects) {
        let start = e.offset as usize;
        let mut got = file[start..start + e.len as usize].to_vec();
        apply_body_stream(keys(), &body, e.offset, &mut got);
        assert_eq!(&got[..], *stored, "object does not read back through the body keystream");
    }
    let mut harmless = true;
    while c.0.len() >= 3 {
        let pos = usize::from(c.u16()) % file.len();
        let mask = c.u8();
        file[pos] ^= mask;
        harmless &= (PACK_PREFIX_LEN..b.len()).contains(&pos) || mask == 0;
    }
    if !c.is_empty() {
        let keep = usize::from(c.u8()) % file.len();
        file.truncate(keep);
        harmless = false;
    }
    let got = read(&file);
    if harmless {
        assert_eq!(got.as_deref(), Some(b.entries()), "damage to object bytes changed the header");
    }
}

fn forged(c: &mut Cursor<'_>) {
    let objects_len = usize::from(c.u16());
    let pad = usize::from(c.u8());
    let flags = c.u8();
    let trailer = (flags & 1 != 0).then(|| (c.u64(), c.u64()));
    let mut header = c.rest().to_vec();
    if flags & 2 != 0 && header.len() >= 8 {
        let count = ((header.len() - 8) / 44) as u32;
        header[4..8].copy_from_slice(&count.to_le_bytes());
    }
    let format = if flags & 4 != 0 { PACK_FORMAT_XCHACHA20 } else { PACK_FORMAT };
    let mut objects = [&PACK_MAGIC[..], &format.to_le_bytes()].concat();
    objects.resize(BODY_START + objects_len, 0x5a);
    read(&forge().pack_file(&objects, &header, pad, trailer));
}

fuzz_target!(|data: &[u8]| {
    read(data);
    let mut c = Cursor(data);
    match c.u8() {
        0x10 => built(&mut c),
        0x11 => forged(&mut c),
        _ => {}
    }
});
