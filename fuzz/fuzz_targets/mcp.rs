//! The MCP gateway's parsers of untrusted input: a JSON-RPC message as an
//! agent sends it, an `inputSchema` as an MCP server describes a tool, and
//! a call's `arguments` checked against the type made from it.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mandate_core::mcp::args::{self, Extra};
use mandate_core::mcp::jsonrpc::{self, Message};
use mandate_core::mcp::schema::arguments_type;
use mandate_fuzz::write_seeds;

fuzz_target!(|data: &[u8]| {
    write_seeds("mcp", || {
        vec![
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"pay","arguments":{"amount":5,"currency":"EUR"}}}"#.to_vec(),
            br#"{"jsonrpc":"2.0","id":"a","method":"tools/list","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}"#.to_vec(),
            br#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#.to_vec(),
        ]
    });
    // The first byte splits the input: a schema, then a message whose
    // `arguments` are checked against it.
    let Some((&cut, rest)) = data.split_first() else {
        return;
    };
    let cut = usize::from(cut).min(rest.len());
    let (schema, body) = rest.split_at(cut);
    let ty = serde_json::from_slice(schema)
        .ok()
        .and_then(|v| arguments_type(&v).ok())
        .unwrap_or_default();
    let Ok(msg) = jsonrpc::parse(body) else {
        return;
    };
    if let Message::Request { params, .. } = msg {
        for extra in [Extra::Refuse, Extra::Pass] {
            if let Ok(c) = args::check(&ty, params.get("arguments"), extra) {
                // What is forwarded is an object, and re-serialises.
                assert!(serde_json::to_vec(&c.forward).is_ok());
            }
        }
    }
});
