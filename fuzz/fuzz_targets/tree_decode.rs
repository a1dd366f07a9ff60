//! `Tree::decode` on arbitrary bytes: never panics, and a decoded tree
//! re-encodes to bytes that decode to the same tree.

#![no_main]

use dbox_store::Tree;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(tree) = Tree::decode(data) else { return };
    let bytes = tree.encode();
    let again = Tree::decode(&bytes).expect("an encoded tree decodes");
    assert_eq!(again, tree, "decode(encode(t)) != t");
    assert_eq!(again.encode(), bytes, "encoding is not deterministic");
    let rebuilt = Tree::new(tree.entries().to_vec()).expect("a decoded tree's entries are valid");
    assert_eq!(rebuilt, tree);
    for e in tree.entries() {
        assert_eq!(tree.get(e.name.as_bytes()), Some(e));
    }
});
