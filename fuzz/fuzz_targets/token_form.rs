//! The token endpoint's `application/x-www-form-urlencoded` body (RFC 6749
//! §3.2: no duplicate parameters) and the RFC 9396 `authorization_details`
//! it may carry.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mandate_core::policy::Details;
use mandate_fuzz::write_seeds;
use mandate_server::form::Form;

fuzz_target!(|data: &[u8]| {
    write_seeds("token_form", || {
        vec![
            b"grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange&subject_token=x&subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Abiscuit&audience=crm&scope=read".to_vec(),
            b"a=1&a=2".to_vec(),
            b"authorization_details=%5B%7B%22type%22%3A%22mandate%22%2C%22amount%22%3A2500%7D%5D".to_vec(),
        ]
    });
    if let Ok(form) = Form::parse(data)
        && let Some(d) = form.opt("authorization_details")
    {
        let _ = Details::parse(d);
    }
});
