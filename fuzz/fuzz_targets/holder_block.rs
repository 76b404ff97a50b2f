//! What a holder can append with its own key (issue 10, item 1): any
//! Datalog block, signed as a third-party block by the run's key, appended
//! to a valid mandate, then verified as the broker does. Must refuse fast
//! anything but the narrowing vocabulary, and never panic.
#![no_main]
use biscuit_auth::UnverifiedBiscuit;
use biscuit_auth::builder::BlockBuilder;
use libfuzzer_sys::fuzz_target;
use mandate_core::mandate;
use mandate_fuzz::{NOW, fixture, write_seeds};

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    write_seeds("holder_block", || {
        vec![
            br#"only("crm", "read"); check if only_ok("crm", "read");"#.to_vec(),
            b"uses_max(3);\nholder(\"abc\");".to_vec(),
            br#"resource_prefix("/repos/alice"); check if resource($r), $r.starts_with("/repos/alice/");"#.to_vec(),
            b"p(1); p(2); check if p($a), p($b), $a != $b;".to_vec(),
        ]
    });
    let Ok(src) = std::str::from_utf8(data) else {
        return;
    };
    // Biscuit's own parser (the holder's side, not the broker's) recurses:
    // keep the harness from overflowing its stack on deep input.
    if src.len() > 4096 || src.chars().filter(|c| *c == '(' || *c == '[').count() > 32 {
        return;
    }
    let Ok(block) = BlockBuilder::new().code(src) else {
        return;
    };
    let Ok(t) = UnverifiedBiscuit::from_base64(&f.mandate) else {
        return;
    };
    let Ok(req) = t.third_party_request() else {
        return;
    };
    let holder = biscuit_auth::PrivateKey::from_bytes(
        f.run_key.to_secret().expose(),
        biscuit_auth::Algorithm::Ed25519,
    )
    .expect("run key");
    let Ok(blk) = req.create_block(&holder, block) else {
        return;
    };
    let Ok(bytes) = blk.serialize() else {
        return;
    };
    let Ok(token) = t.append_third_party(&bytes).and_then(|t| t.to_base64()) else {
        return;
    };
    let root = mandate::root_public(&f.keys.mandate_root).expect("root");
    let _ = mandate::verify(root, &token, NOW);
});
