//! # mandate-core
//!
//! The pure core of Mandate, an identity and credential broker for AI agents.
//!
//! This crate owns the *meaning* of everything the broker decides:
//!
//! - [`ids`]: tenants, agents, runs and their SPIFFE-style identities;
//! - [`capability`]: `tool:action` capability patterns and their intersection;
//! - [`keys`] and [`jose`]: signing keys, JWKs (RFC 7517), thumbprints (RFC 7638)
//!   and compact JWS with an explicit algorithm allow-list (no `none`, no HMAC);
//! - [`mandate`]: the run's Biscuit token (mint and verify);
//! - [`attenuation`]: offline narrowing and hand-over of a mandate by its holders;
//! - [`credential`]: RFC 9068-shaped JWT access tokens;
//! - [`dpop`]: RFC 9449 proof-of-possession checks;
//! - [`httpsig`]: RFC 9421 HTTP message signatures and RFC 9530 digests;
//! - [`policy`]: the Cedar schema and exchange decisions;
//! - [`policy_limits`]: bounds on untrusted policy text, checked before Cedar parses it;
//! - [`pgrole`]: which database roles a `postgres` credential may never reach;
//! - [`revocation`]: which ids revoke a token, and whether it is revoked;
//! - [`audit`]: audit events and their hash chain;
//! - [`limits`]: connection slots per client and the throttle for unauthenticated refusals;
//! - [`secret`]: secret types and authenticated encryption at rest;
//! - [`paths`]: which paths a path prefix covers (segment by segment);
//! - [`forwarding`]: what the proxy lets through (method overrides,
//!   amounts in request bodies); [`scrub`]: the upstream key kept out of
//!   responses.
//!
//! It must not do IO: no files, no sockets, no clock, no global randomness.
//! Time (`now`, in seconds since the Unix epoch) and random number generators
//! are passed in, so every expiry, skew and replay rule is testable with fixed
//! inputs.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod approval;
pub mod attenuation;
pub mod audit;
pub mod capability;
pub mod client;
pub mod clock;
pub mod credential;
pub mod dpop;
pub mod error;
pub mod exchange;
pub mod forwarding;
pub mod httpsig;
pub mod ids;
pub mod jose;
pub mod keys;
pub mod limits;
pub mod mandate;
pub mod mcp;
pub mod model;
pub mod paths;
pub mod pgrole;
pub mod policy;
pub mod policy_limits;
pub mod revocation;
pub mod scrub;
pub mod secret;
pub mod tooling;

pub use error::Error;

/// Seconds since the Unix epoch. The core never reads a clock: callers pass this in.
pub type UnixTime = u64;
