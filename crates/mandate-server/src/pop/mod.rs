//! Proof of possession of a run's key, as the broker checks it: DPoP (RFC
//! 9449) at the token endpoint, and HTTP message signatures (RFC 9421) at
//! the token endpoint and the proxy. The rules themselves are in
//! `mandate_core::dpop` and `mandate_core::httpsig`; this module adds the
//! broker's replay caches and nonces.

pub mod dpop;
pub mod httpsig;
