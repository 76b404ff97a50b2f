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
    /// An event of an admin's request from here, decided `ok` (the caller
    /// fills in the rest).
    pub fn admin_event(
        &self,
        event_type: mandate_core::audit::EventType,
        tenant: Option<&str>,
        time_ms: u64,
    ) -> mandate_core::audit::EventBody {
        mandate_core::audit::EventBody {
            time_ms,
            event_type,
            decision: mandate_core::audit::Decision::Ok,
            tenant: tenant.map(str::to_owned),
            actor: Some("admin".into()),
            correlation_id: Some(self.correlation_id.clone()),
            client_addr: self.client_addr(),
            ..Default::default()
        }
    }

    /// The client address as the audit trail shows it.
    pub fn client_addr(&self) -> Option<String> {
        Some(self.client.ip().to_string())
    }
}
