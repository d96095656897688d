//! The client side of a zone's xDS port: a TLS channel that verifies the
//! zone with its CA (`GET /xds-ca`), and the bearer token every call
//! carries. `meridian-dp` dials the zone with these; so do the tests and the
//! benchmarks.

use std::sync::{Arc, RwLock};

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use tonic::metadata::AsciiMetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Request, Status};

/// Why a channel to a zone cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The address is not `https://HOST:PORT` (or `HOST:PORT`).
    #[error("zone address {address:?}: {why}")]
    Address { address: String, why: String },
    /// The TLS settings were refused.
    #[error("TLS settings for {address}: {why}")]
    Tls { address: String, why: String },
    /// The token cannot go into a header.
    #[error("the token is not usable as a header value: {0}")]
    Token(String),
}

/// `https://HOST:PORT` (or `HOST:PORT`) → the URI to dial and the name the
/// zone's certificate must carry.
pub fn parse_address(address: &str) -> Result<(String, String), ClientError> {
    let bad = |why: &str| ClientError::Address {
        address: address.to_string(),
        why: why.to_string(),
    };
    let rest = match address.split_once("://") {
        Some(("https" | "grpcs", rest)) => rest,
        Some((scheme, _)) => {
            return Err(bad(&format!(
                "the scheme {scheme:?} is not https: the zone's xDS port speaks TLS only"
            )))
        }
        None => address,
    };
    let rest = rest.trim_end_matches('/');
    let (host, port) = rest.rsplit_once(':').ok_or_else(|| bad("no port"))?;
    port.parse::<u16>()
        .map_err(|_| bad("the port is not a number from 0 to 65535"))?;
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    if host.is_empty() || host.contains(['/', '@', '?', '#', ' ']) {
        return Err(bad("the host is not a DNS name or an IP address"));
    }
    Ok((format!("https://{rest}"), host.to_string()))
}

/// An endpoint that dials `address` over TLS, trusting only `ca_pem`.
pub fn endpoint(address: &str, ca_pem: &str) -> Result<Endpoint, ClientError> {
    let (uri, host) = parse_address(address)?;
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name(host);
    Endpoint::from_shared(uri)
        .map_err(|e| ClientError::Address {
            address: address.to_string(),
            why: e.to_string(),
        })?
        .tls_config(tls)
        .map_err(|e| ClientError::Tls {
            address: address.to_string(),
            why: e.to_string(),
        })
        .map(|e| e.tcp_nodelay(true))
}

/// Adds `authorization: Bearer <token>` to every call; the token can be
/// replaced while calls go on (a renewed token file).
#[derive(Clone)]
pub struct Bearer(Arc<RwLock<AsciiMetadataValue>>);

fn header(token: &str) -> Result<AsciiMetadataValue, ClientError> {
    format!("Bearer {}", token.trim())
        .parse()
        .map_err(|e: tonic::metadata::errors::InvalidMetadataValue| ClientError::Token(e.to_string()))
}

impl Bearer {
    pub fn new(token: &str) -> Result<Self, ClientError> {
        Ok(Bearer(Arc::new(RwLock::new(header(token)?))))
    }

    /// Replaces the token of the calls made from now on.
    pub fn set(&self, token: &str) -> Result<(), ClientError> {
        let value = header(token)?;
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = value;
        Ok(())
    }
}

impl std::fmt::Debug for Bearer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Bearer(…)")
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        let value = self.0.read().unwrap_or_else(|p| p.into_inner()).clone();
        req.metadata_mut().insert("authorization", value);
        Ok(req)
    }
}

/// An ADS client whose calls carry a token.
pub type AdsClient = AggregatedDiscoveryServiceClient<InterceptedService<Channel, Bearer>>;

/// An ADS client over `channel` presenting `bearer`.
pub fn ads_client(channel: Channel, bearer: Bearer) -> AdsClient {
    AggregatedDiscoveryServiceClient::with_interceptor(channel, bearer).max_decoding_message_size(64 * 1024 * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(
            parse_address("https://zone.example:5678").unwrap(),
            ("https://zone.example:5678".to_string(), "zone.example".to_string())
        );
        assert_eq!(
            parse_address("127.0.0.1:5678").unwrap(),
            ("https://127.0.0.1:5678".to_string(), "127.0.0.1".to_string())
        );
        assert_eq!(parse_address("https://[::1]:5678/").unwrap().1, "::1");
        for bad in ["http://z:1", "z", "https://z:x", "https://:1", "https://a b:1"] {
            assert!(parse_address(bad).is_err(), "{bad}");
        }
        let err = parse_address("http://z:5678").unwrap_err().to_string();
        assert!(err.contains("TLS only"), "{err}");
    }

    #[test]
    fn bearer_sets_the_header_and_can_be_replaced() {
        let mut b = Bearer::new("abc\n").unwrap();
        let req = b.call(Request::new(())).unwrap();
        assert_eq!(req.metadata().get("authorization").unwrap(), "Bearer abc");
        b.set("def").unwrap();
        let req = b.clone().call(Request::new(())).unwrap();
        assert_eq!(req.metadata().get("authorization").unwrap(), "Bearer def");
        assert!(Bearer::new("a\u{7}b").is_err());
    }
}
