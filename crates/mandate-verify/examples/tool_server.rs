//! A small tool server that accepts only Mandate credentials with their DPoP
//! proofs, and answers with who called.
//!
//! ```sh
//! mandate tool create --tenant acme crm --audience https://crm.acme.example --action read
//! mandate feed-token create --out feed.token
//! MANDATE_URL=http://127.0.0.1:8407 MANDATE_FEED_TOKEN_FILE=feed.token \
//! TOOL_AUDIENCE=https://crm.acme.example TOOL_PUBLIC_URL=http://127.0.0.1:9000 \
//!   cargo run -p mandate-verify --example tool_server
//! ```
#![allow(clippy::print_stderr)]

use axum::{Extension, Json, Router, middleware, routing::get};
use mandate_verify::Identity;
use mandate_verify::live::{Live, LiveConfig};
use mandate_verify::middleware::{MandateAuth, require_mandate};
use serde_json::json;

fn env(name: &str) -> Result<String, String> {
    std::env::var(name).map_err(|_| format!("set {name}"))
}

async fn contacts(Extension(who): Extension<Identity>) -> Json<serde_json::Value> {
    Json(json!({
        "tenant": who.tenant, "agent": who.agent, "run": who.run, "on_behalf_of": who.subject,
        "actors": who.actors, "scopes": who.scopes, "contacts": ["ada@example.com"],
    }))
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let token_file = env("MANDATE_FEED_TOKEN_FILE")?;
    let feed_token = std::fs::read_to_string(&token_file)
        .map_err(|e| format!("{token_file}: {e}"))?
        .trim()
        .to_owned();
    let live = Live::start(LiveConfig::new(
        &env("MANDATE_URL")?,
        &env("TOOL_AUDIENCE")?,
        &feed_token,
    ))
    .await
    .map_err(|e| e.to_string())?;
    let public = env("TOOL_PUBLIC_URL")?;
    let listen = std::env::var("LISTEN").unwrap_or_else(|_| "127.0.0.1:9000".into());
    let app =
        Router::new()
            .route("/contacts", get(contacts))
            .layer(middleware::from_fn_with_state(
                MandateAuth::new(live, &public),
                require_mandate,
            ));
    let l = tokio::net::TcpListener::bind(&listen)
        .await
        .map_err(|e| format!("{listen}: {e}"))?;
    eprintln!("tool server on {listen}, public URL {public}");
    axum::serve(l, app).await.map_err(|e| e.to_string())
}
