//! What only the global control plane offers through the API: zone tokens
//! and what a zone needs to join (`/tokens/zone`, `/kds-info`).

use crate::tokens::ZoneTokens;

/// Built by `meridian-global` and handed to the API through
/// [`crate::ServerConfig::global`]; zones have none.
#[derive(Debug)]
pub struct GlobalServices {
    /// Issues, verifies and revokes zone tokens.
    pub tokens: ZoneTokens,
    /// Where zones reach KDS, e.g. `grpcs://global.example:5685`.
    pub kds_address: String,
    /// The certificate (PEM) zones verify the KDS server with.
    pub ca_pem: String,
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use meridian_store::memory::MemoryStore;
    use meridian_store::Store;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::watch;

    use super::*;
    use crate::{Mode, ServerConfig};

    /// One HTTP/1.1 request; returns the status and the body.
    async fn call(
        (addr, token): &(std::net::SocketAddr, String),
        method: &str,
        path: &str,
        body: &str,
    ) -> (u16, String) {
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        conn.write_all(req.as_bytes()).await.unwrap();
        let mut resp = String::new();
        conn.read_to_string(&mut resp).await.unwrap();
        let status = resp[9..12].parse().unwrap();
        let body = resp
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (status, body)
    }

    async fn serve(
        mode: Mode,
        global: Option<Arc<GlobalServices>>,
        store: Arc<dyn Store>,
    ) -> (std::net::SocketAddr, String) {
        let dir = tempfile::tempdir().unwrap();
        let running = crate::start(
            ServerConfig {
                api_addr: "127.0.0.1:0".parse().unwrap(),
                spec_check: None,
                mode,
                create_default_mesh: false,
                global,
                zone: None,
                access: crate::access::AccessConfig::with_token_file(dir.path().join("admin-token")),
                instance_id: "test".into(),
                api_tls: None,
                api_limits: Default::default(),
                registry: Default::default(),
            },
            store,
            watch::channel(true).1,
            std::future::pending(),
        )
        .await
        .unwrap();
        (running.api_addr, running.admin_token)
    }

    #[tokio::test]
    async fn the_global_issues_tokens_that_verify() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let global = Arc::new(GlobalServices {
            tokens: ZoneTokens::new(store.clone()),
            kds_address: "grpcs://127.0.0.1:5685".into(),
            ca_pem: "PEM".into(),
        });
        let addr = serve(Mode::Global, Some(global.clone()), store).await;
        let (status, token) = call(&addr, "POST", "/tokens/zone", r#"{"zone":"east","validFor":"1h"}"#).await;
        assert_eq!(status, 200, "{token}");
        let claims = global.tokens.verify(&token).await.unwrap();
        assert_eq!(claims.zone, "east");
        assert!((3599..=3601).contains(&(claims.expires_at - claims.issued_at)));

        let (status, body) = call(
            &addr,
            "POST",
            "/tokens/zone/revoke",
            &format!(r#"{{"id":"{}"}}"#, claims.id),
        )
        .await;
        assert_eq!((status, body.as_str()), (200, "{}"));
        assert!(matches!(
            global.tokens.verify(&token).await,
            Err(crate::tokens::TokenError::Revoked { .. })
        ));

        let (status, body) = call(&addr, "GET", "/kds-info", "").await;
        assert_eq!(status, 200);
        let info: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            info,
            serde_json::json!({"kdsAddress": "grpcs://127.0.0.1:5685", "caCert": "PEM"})
        );
    }

    #[tokio::test]
    async fn zones_do_not_serve_tokens() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let addr = serve(Mode::Standalone { zone: "z".into() }, None, store).await;
        for (method, path, body) in [
            ("POST", "/tokens/zone", r#"{"zone":"east"}"#),
            ("POST", "/tokens/zone/revoke", r#"{"id":"abc"}"#),
            ("GET", "/kds-info", ""),
        ] {
            let (status, body) = call(&addr, method, path, body).await;
            assert_eq!(status, 404, "{path}: {body}");
            assert!(body.contains("served by the global control plane"), "{path}: {body}");
        }
    }
}
