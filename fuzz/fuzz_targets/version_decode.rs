//! `SignedVersion::from_stored` on arbitrary bytes: never panics, and a
//! decoded version keeps exactly the bytes it was given.
//!
//! A mutated envelope never carries a valid signature, so the first input
//! byte can select a deeper mode:
//!
//! * `0x10`: the rest is a version body, signed here with a fixed author key,
//!   so the body decoder is reached; a decoded body re-signs and decodes to
//!   the same body.
//! * `0x11`: the rest is the plaintext of a version's info block, sealed here
//!   with the info key, so `VersionInfo::open` is reached; a decoded info
//!   seals and opens to the same info.

#![no_main]

use dbox_store::{RepoId, SignedVersion, VersionInfo};
use dbox_store_fuzz::{author, keys, sign_envelope};
use libfuzzer_sys::fuzz_target;

fn check_stored(stored: &[u8]) -> Option<SignedVersion> {
    let v = SignedVersion::from_stored(stored).ok()?;
    assert_eq!(v.stored(), stored, "stored() differs from the input");
    assert_eq!(v.id().0, *blake3::hash(stored).as_bytes(), "id is not the hash of the stored bytes");
    Some(v)
}

fuzz_target!(|data: &[u8]| {
    check_stored(data);
    let Some((&mode, rest)) = data.split_first() else { return };
    match mode {
        0x10 => {
            let Some(v) = check_stored(&sign_envelope(rest)) else { return };
            let _ = v.info(keys());
            let again = SignedVersion::sign(v.body().clone(), &author()).expect("a decoded body re-signs");
            let back = SignedVersion::from_stored(again.stored()).expect("a signed version decodes");
            assert_eq!(back.body(), v.body(), "body changed by re-signing");
        }
        0x11 => {
            let repo = RepoId([1; 32]);
            let aad = [&b"dbox version info v1"[..], repo.as_bytes()].concat();
            let sealed = keys().info.seal_random(&aad, rest).expect("random nonce");
            let Ok(info) = VersionInfo::open(keys(), &repo, &sealed) else { return };
            let resealed = info.seal(keys(), &repo).expect("a decoded info seals");
            let back = VersionInfo::open(keys(), &repo, &resealed).expect("a sealed info opens");
            assert_eq!(back, info, "info changed by sealing");
        }
        _ => {}
    }
});
