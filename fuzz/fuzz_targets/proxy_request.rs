//! What the broker's proxy judges in a request before it goes upstream:
//! the path (encodings, segments), the route table (case folding), the
//! query and body (method overrides), the amount in the body, and a path
//! prefix. Input: method, path, query, content type and body, by `\n`.
#![no_main]
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use mandate_core::forwarding::{self, BodyKind};
use mandate_core::paths::path_within;
use mandate_core::tooling::{ProxySpec, check_request_path};
use mandate_fuzz::{fields, write_seeds};

fuzz_target!(|data: &[u8]| {
    write_seeds("proxy_request", || {
        vec![
            b"GET\n/emails/42\nlimit=1\n\n".to_vec(),
            b"POST\n/payments\n\napplication/json\n{\"amount\": 2500}".to_vec(),
            b"POST\n/forms/pay\n\napplication/x-www-form-urlencoded\namount=10&to=x".to_vec(),
            b"GET\n/files/..;/admin\n_method=DELETE\n\n".to_vec(),
        ]
    });
    static SPEC: OnceLock<ProxySpec> = OnceLock::new();
    let spec = SPEC.get_or_init(|| {
        serde_json::from_value(serde_json::json!({
            "upstream": "https://api.example.com",
            "routes": [
                {"method": "GET", "path": "/emails/*", "action": "read"},
                {"method": "GET", "path": "/emails/admin", "action": "admin"},
                {"method": "POST", "path": "/payments", "action": "pay", "amount": {"json": "/amount"}},
                {"method": "POST", "path": "/forms/pay", "action": "pay", "amount": {"form": "amount"}},
                {"method": "*", "path": "/files/**", "action": "files"}
            ],
            "inject": {"header": "Authorization", "format": "Bearer {secret}"}
        }))
        .expect("proxy spec")
    });
    let Some(v) = fields(data, 5) else {
        return;
    };
    let (method, path, query, ctype, body) = (v[0], v[1], v[2], v[3], v[4].as_bytes());
    let _ = path_within("/repos/alice", path);
    let _ = path_within(path, "/repos/alice/x");
    if check_request_path(path).is_err() {
        return;
    }
    let Ok(Some(route)) = spec.judge(method, path) else {
        return;
    };
    let _ = forwarding::check_query(query);
    let kind = BodyKind::of((!ctype.is_empty()).then_some(ctype));
    let _ = forwarding::check_body_overrides(kind, body);
    if let Some(at) = &route.amount {
        let _ = forwarding::amount_in(at, kind, body, (!query.is_empty()).then_some(query));
    }
    let _ = forwarding::strict_json(body);
});
