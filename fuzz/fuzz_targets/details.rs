//! RFC 9396 `authorization_details` of type `mandate`.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mandate_core::policy::{Details, MAX_AMOUNT};
use mandate_fuzz::write_seeds;

fuzz_target!(|data: &[u8]| {
    write_seeds("details", || {
        vec![
            br#"[{"type":"mandate","amount":2500,"currency":"EUR","target":"acct_1"}]"#.to_vec(),
            br#"[{"type":"mandate","amount":1e20}]"#.to_vec(),
        ]
    });
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok((d, _)) = Details::parse(text) {
        // What is accepted is within the bounds policy relies on.
        assert!(d.amount.is_none_or(|a| (0..=MAX_AMOUNT).contains(&a)));
    }
});
