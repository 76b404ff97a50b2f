//! Where a request came from, as services record it in the audit trail
//! (services see no HTTP types).

use std::net::SocketAddr;

/// Where a request came from, for its audit event.
#[derive(Debug, Clone)]
pub struct Origin {
    /// The client's address.
    pub client: SocketAddr,
    /// The request's correlation id.
    pub correlation_id: String,
}

impl Origin {
    /// The client address as the audit trail shows it.
    pub fn client_addr(&self) -> Option<String> {
        Some(self.client.ip().to_string())
    }
}
