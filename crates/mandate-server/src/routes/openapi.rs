//! `GET /openapi.json`: the API described in OpenAPI 3.1, with this
//! broker's issuer as its server. The document is `src/openapi.json`; a
//! test checks that it names every route of [`super::router`], and the
//! test command fuzzes a real broker with it (schemathesis).

use std::sync::LazyLock;

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use super::S;

/// The document as shipped.
pub const DOCUMENT: &str = include_str!("../openapi.json");

static PARSED: LazyLock<Value> =
    LazyLock::new(|| serde_json::from_str(DOCUMENT).unwrap_or_else(|_| json!({})));

/// `GET /openapi.json`.
pub async fn document(State(s): State<S>) -> Json<Value> {
    let mut v = PARSED.clone();
    v["servers"] = json!([{"url": s.config.issuer}]);
    Json(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every route of the router is in the document (the proxy's, which
    /// forward other APIs, are not), and the document names no route the
    /// router lacks.
    #[test]
    fn the_document_names_every_route_and_no_other() {
        let doc: Value = serde_json::from_str(DOCUMENT).expect("openapi.json is JSON");
        assert!(doc["openapi"].as_str().unwrap_or("").starts_with("3.1"));
        let documented: std::collections::BTreeSet<String> = doc["paths"]
            .as_object()
            .expect("paths")
            .keys()
            .cloned()
            .collect();
        let source = include_str!("mod.rs");
        let mut routed = std::collections::BTreeSet::new();
        for part in source.split(".route(").skip(1) {
            let Some(path) = part
                .trim_start()
                .strip_prefix('"')
                .and_then(|p| p.split('"').next())
            else {
                continue;
            };
            // The proxy and the MCP gateway are data paths (any HTTP API,
            // JSON-RPC), documented in docs/, not JSON API operations.
            if !path.starts_with("/proxy/") && !path.starts_with("/mcp/") {
                routed.insert(path.to_owned());
            }
        }
        assert!(routed.len() > 30, "{routed:?}");
        assert_eq!(documented, routed);
    }
}
