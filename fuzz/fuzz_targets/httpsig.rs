//! RFC 9421 request signatures and RFC 8941 structured fields: the
//! `Signature-Input`, `Signature`, `Signature-Key` and `Content-Digest`
//! fields of a request, verified as bound to the run's key.
//! Input: four header values and a body, separated by `\n`.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mandate_core::httpsig::{
    Message, Policy, SignParams, check_content_digest, content_digest, parse_dictionary, sign,
    signature_key_field, verify_bound,
};
use mandate_fuzz::{NOW, fields, fixture, write_seeds};

const URL: &str = "https://broker.example/oauth/token";

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    write_seeds("httpsig", || {
        let body = b"grant_type=x";
        let digest = content_digest(body);
        let msg = Message::request(
            "POST",
            URL,
            vec![("content-digest".into(), digest.clone())],
        );
        let Ok((input, sig)) = sign(
            &msg,
            &f.run_key,
            &SignParams {
                label: "sig",
                components: &["@method", "@target-uri", "content-digest"],
                created: NOW,
                expires: Some(NOW + 30),
                nonce: Some("n1"),
                keyid: None,
                include_alg: true,
                tag: None,
            },
        ) else {
            return vec![];
        };
        let key = signature_key_field("sig", &f.run_key.public());
        vec![format!("{input}\n{sig}\n{key}\n{digest}\ngrant_type=x").into_bytes()]
    });
    let Some(v) = fields(data, 5) else {
        return;
    };
    for field in &v[..4] {
        let _ = parse_dictionary(field);
    }
    let _ = check_content_digest(v[3], v[4].as_bytes());
    let msg = Message::request(
        "POST",
        URL,
        vec![
            ("signature-input".into(), v[0].into()),
            ("signature".into(), v[1].into()),
            ("signature-key".into(), v[2].into()),
            ("content-digest".into(), v[3].into()),
        ],
    );
    let _ = verify_bound(
        &msg,
        &f.run_key.kid(),
        v[4].as_bytes(),
        &Policy {
            now: NOW,
            skew: 5,
            max_lifetime: 300,
            required: &["@method", "@target-uri"],
        },
    );
});
