//! `decode_key_file` on arbitrary bytes: never panics, and a decoded key
//! file re-encodes to the input. The input is also tried with its check
//! value recomputed, so the fuzzer reaches past the hash.

#![no_main]

use dbox_store::keyfile::{decode_key_file, encode_key_file, KEY_FILE_LEN};
use libfuzzer_sys::fuzz_target;

fn check(data: &[u8]) -> bool {
    match decode_key_file(data) {
        Ok((repo, key)) => {
            assert_eq!(encode_key_file(&repo, &key), data, "re-encoding differs from the input");
            true
        }
        Err(_) => false,
    }
}

fuzz_target!(|data: &[u8]| {
    check(data);
    if data.len() >= KEY_FILE_LEN - 32 {
        let body = &data[..KEY_FILE_LEN - 32];
        let fixed = [body, blake3::hash(body).as_bytes()].concat();
        let well_formed = &body[..8] == b"DBOXKEY\0" && body[8..12] == 1u32.to_le_bytes();
        assert_eq!(check(&fixed), well_formed, "a key file with a right check value");
    }
});
