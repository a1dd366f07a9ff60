//! `index::Segment` on an arbitrary file: opening, lookups, a full scan and
//! `check_file` never panic, and a segment that passes `check_file` finds
//! every entry it scans.
//!
//! The input is always written as a whole segment. A mutated segment fails
//! its BLAKE3 checks, so the first input byte can select a deeper mode:
//!
//! * `0x10`: a segment is built here, checks included, from fanout bits
//!   selector u8, pack count u8, flags u8, damage position u16 and value u32,
//!   then entries of 8 bytes (id prefix 3, pack number 1, offset u16, length
//!   u16 where 0xffff means u32::MAX). Flags: bit 0 sorts and dedups the
//!   entries, bit 1 adds the value to one fanout slot, bit 2 damages one
//!   entry check, bit 3 sets the entry count to the last fanout slot.
//!   A segment built without damage must open, check and find every entry.

#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use dbox_store::index::{Location, Segment};
use dbox_store::limits::MAX_OBJECT_SIZE;
use dbox_store::vfs::OsFs;
use dbox_store::{ObjectId, PackId};
use dbox_store_fuzz::Cursor;
use libfuzzer_sys::fuzz_target;

/// One file per process, rewritten for every input.
fn path() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| std::env::temp_dir().join(format!("dbox-fuzz-index-{}.idx", std::process::id())))
}

fn exercise(bytes: &[u8], expected: Option<&[(ObjectId, Location)]>) {
    // A new file rather than a truncated one: ext4 flushes a file truncated
    // and rewritten on close, which made this target a hundred times slower.
    let _ = std::fs::remove_file(path());
    std::fs::write(path(), bytes).expect("writing the temp file");
    let seg = match Segment::open(&OsFs, path()) {
        Ok(seg) => seg,
        Err(e) => {
            assert!(expected.is_none(), "a well-formed segment does not open: {e}");
            return;
        }
    };
    let scanned: Vec<_> = seg.scan().collect();
    assert!(scanned.len() as u64 <= seg.count(), "scan gives more entries than the count");
    let mut probes = vec![ObjectId([0; 32]), ObjectId([0xff; 32]), ObjectId([0x80; 32])];
    probes.extend(scanned.iter().filter_map(|r| r.as_ref().ok()).map(|(id, _)| *id).take(8));
    for id in &probes {
        let _ = seg.lookup(id);
    }
    let checked = seg.check_file();
    if let Some(expected) = expected {
        if let Err(e) = &checked {
            panic!("a well-formed segment fails its check: {e}");
        }
        let got: Vec<_> = scanned.iter().filter_map(|r| r.as_ref().ok()).copied().collect();
        assert_eq!(got, expected, "scan differs from what was written");
    }
    if checked.is_ok() {
        assert_eq!(scanned.len() as u64, seg.count(), "a checked segment scans short");
        for r in &scanned {
            let (id, loc) = r.as_ref().expect("a checked segment scans without error");
            assert_eq!(seg.lookup(id).ok().flatten().as_ref(), Some(loc), "lookup misses a scanned entry");
        }
    }
}

fn prefix(id: &ObjectId, bits: u32) -> usize {
    let b = id.as_bytes();
    (u32::from_be_bytes([b[0], b[1], b[2], b[3]]) >> (32 - bits)) as usize
}

fn built(c: &mut Cursor<'_>) {
    let bits = 8 + u32::from(c.u8() % 3);
    let npacks = u32::from(c.u8() % 5);
    let flags = c.u8();
    let pos = usize::from(c.u16());
    let value = c.u32();
    let mut entries = Vec::new();
    while c.0.len() >= 8 && entries.len() < 512 {
        let e = c.take(8);
        let mut id = [0u8; 32];
        id[..3].copy_from_slice(&e[..3]);
        id[31] = e[0] ^ e[2];
        let len = u16::from_le_bytes([e[6], e[7]]);
        let len = if len == u16::MAX { u32::MAX } else { u32::from(len) };
        entries.push((ObjectId(id), u32::from(e[3]), u64::from(u16::from_le_bytes([e[4], e[5]])), len));
    }
    let mut well_formed = true;
    if flags & 1 != 0 {
        entries.sort_by_key(|e| e.0);
        entries.dedup_by_key(|e| e.0);
    } else {
        well_formed &= entries.windows(2).all(|w| w[0].0 < w[1].0);
    }
    let packs: Vec<PackId> = (0..npacks).map(|i| PackId([i as u8 + 1; 32])).collect();
    well_formed &= entries.iter().all(|e| e.1 < npacks && e.3 as usize <= MAX_OBJECT_SIZE);

    let mut fanout = vec![0u32; 1 << bits];
    for e in &entries {
        fanout[prefix(&e.0, bits)] += 1;
    }
    for i in 1..fanout.len() {
        fanout[i] += fanout[i - 1];
    }
    if flags & 2 != 0 && value != 0 {
        let i = pos % fanout.len();
        fanout[i] = fanout[i].wrapping_add(value);
        well_formed = false;
    }
    let mut count = entries.len() as u64;
    if flags & 8 != 0 {
        let last = u64::from(fanout[fanout.len() - 1]);
        if last <= count + 64 {
            well_formed &= last == count;
            count = last;
        }
    }

    let mut out = Vec::new();
    out.extend_from_slice(b"DBOXIDX\0");
    out.extend_from_slice(&1u32.to_le_bytes());
    out.extend_from_slice(&bits.to_le_bytes());
    out.extend_from_slice(&npacks.to_le_bytes());
    out.extend_from_slice(&count.to_le_bytes());
    for p in &packs {
        out.extend_from_slice(p.as_bytes());
    }
    for f in &fanout {
        out.extend_from_slice(&f.to_le_bytes());
    }
    let check = blake3::hash(&out);
    out.extend_from_slice(check.as_bytes());
    for i in 0..count as usize {
        let (id, pack, offset, len) = entries.get(i).copied().unwrap_or((ObjectId([0xee; 32]), 0, 0, 0));
        let mut rec = [0u8; 52];
        rec[..32].copy_from_slice(id.as_bytes());
        rec[32..36].copy_from_slice(&pack.to_le_bytes());
        rec[36..44].copy_from_slice(&offset.to_le_bytes());
        rec[44..48].copy_from_slice(&len.to_le_bytes());
        let h = blake3::hash(&rec[..48]);
        rec[48..].copy_from_slice(&h.as_bytes()[..4]);
        out.extend_from_slice(&rec);
    }
    if flags & 4 != 0 && count > 0 {
        let i = pos % count as usize;
        let at = out.len() - (count as usize - i) * 52 + 48;
        out[at] ^= 1;
        well_formed = false;
    }
    let check = blake3::hash(&out);
    out.extend_from_slice(check.as_bytes());

    let expected: Vec<(ObjectId, Location)> = entries
        .iter()
        .filter_map(|&(id, pack, offset, len)| {
            let pack = *packs.get(pack as usize)?;
            Some((id, Location { pack, offset, len }))
        })
        .collect();
    exercise(&out, well_formed.then_some(&expected[..]));
}

fuzz_target!(|data: &[u8]| {
    exercise(data, None);
    let mut c = Cursor(data);
    if c.u8() == 0x10 {
        built(&mut c);
    }
});
