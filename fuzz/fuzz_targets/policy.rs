//! Cedar policy upload: bounded before Cedar's recursive parser sees it
//! (issue 10, item 13), then parsed and validated against the schema.
#![no_main]
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use mandate_core::policy::Engine;
use mandate_fuzz::write_seeds;

fuzz_target!(|data: &[u8]| {
    write_seeds("policy", || {
        vec![
            br#"@id("allow-read") permit (principal, action, resource) when { context.actions.containsAll(["read"]) };"#.to_vec(),
            br#"@id("big") @approval("principal") forbid (principal, action, resource) when { context has amount && context.amount > 10000 } unless { context.approved };"#.to_vec(),
        ]
    });
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    let engine = ENGINE.get_or_init(|| Engine::new().expect("schema"));
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = engine.parse_policies("fuzz", text);
});
