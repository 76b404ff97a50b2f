//! The proxy's HTTP client: HTTP/1.1 to the upstream, TLS by rustls (ring)
//! with the Mozilla roots (webpki-roots), pooled connections.

use axum::body::Body;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// The pooled upstream client.
pub type Upstream = Client<HttpsConnector<HttpConnector>, Body>;

/// A client for upstream calls.
pub fn client() -> Upstream {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(std::time::Duration::from_secs(10)));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(std::time::Duration::from_secs(30))
        .pool_max_idle_per_host(64)
        .build(https)
}
