//! Mandates as presented: any bytes as a Biscuit token (base64url), and any
//! text as the token string, verified against the broker's root.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mandate_core::jose::{b64, unb64};
use mandate_core::mandate;
use mandate_fuzz::{NOW, fixture, write_seeds};

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    write_seeds("mandate", || {
        [&f.mandate, &f.narrowed]
            .iter()
            .filter_map(|t| unb64("seed", t).ok())
            .collect()
    });
    let root = mandate::root_public(&f.keys.mandate_root).expect("root");
    let _ = mandate::verify(root, &b64(data), NOW);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = mandate::verify(root, text, NOW);
    }
});
