//! An environment's published ports as the ports proxy sees them: the URLs its endpoints
//! carry, the runtime `expose`, the traffic token, and the checks that pick the target of
//! a proxied request (unknown environment 404, port not published 404, not running 409)
//! before a tunnel to the guest's port is opened on the VM's own host.

use super::error::AppError;
use super::App;
use crate::config::proxy::ProxyConfig;
use crate::provider::Tunnel;
use fuse_store::VmRecord;
use fuse_types::hostagent::PortExpose;
use fuse_types::lifecycle::Event;
use fuse_types::{Endpoint, Environment, ExposeRequest, ExposeSpec, Protocol, VmState};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The path of a port under the API: `/v1/environments/{id}/ports/{port}`.
pub fn port_path(id: &str, port: u16) -> String {
    format!("/v1/environments/{id}/ports/{port}")
}

/// Fills the proxy's URLs of a TCP endpoint: `proxy_url` (path-based, always),
/// `host_url` (with a domain), and `url` (the host-based one when there is a domain, else
/// the path-based one). A UDP endpoint keeps its forward as its `url`.
pub fn endpoint_urls(cfg: &ProxyConfig, id: &str, e: &mut Endpoint) {
    if e.protocol != Protocol::Tcp.as_str() {
        return;
    }
    e.proxy_url = format!("{}{}/", cfg.public_url, port_path(id, e.port));
    e.host_url = match &cfg.domain {
        Some(d) => format!("{}://{}-{id}.{d}{}/", cfg.scheme, e.port, cfg.port_suffix()),
        None => String::new(),
    };
    e.url = if e.host_url.is_empty() {
        e.proxy_url.clone()
    } else {
        e.host_url.clone()
    };
}

/// SHA-256 (hex) of a traffic token: what the record keeps to check it.
pub fn token_digest(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Whether `token` is the environment's traffic token (constant time).
pub fn traffic_token_ok(rec: &VmRecord, token: &str) -> bool {
    let Some(want) = rec.extras.traffic_token_sha256.as_deref() else {
        return false;
    };
    !token.is_empty() && bool::from(token_digest(token).as_bytes().ct_eq(want.as_bytes()))
}

/// Splits `{port}-{id}` (the first label of a host-based name).
pub fn parse_host_label(label: &str) -> Option<(u16, &str)> {
    let (port, id) = label.split_once('-')?;
    let port: u16 = port.parse().ok().filter(|p| *p > 0)?;
    (!id.is_empty()).then_some((port, id))
}

impl App {
    /// The environment and endpoint a proxied request to `port` goes to: 404 for an
    /// unknown or ended environment or a port it does not publish over TCP, 409 unless
    /// it runs (or drains).
    pub async fn proxy_target(
        &self,
        id: &str,
        port: u16,
    ) -> Result<(VmRecord, Endpoint), AppError> {
        let rec = self.env_get(id).await?;
        if !matches!(rec.state, VmState::Running | VmState::Draining) {
            return Err(AppError::Conflict {
                message: format!(
                    "environment {} is {}; its ports are reachable while it is running",
                    rec.id,
                    rec.state.as_str()
                ),
                details: Default::default(),
            });
        }
        let ep = rec
            .extras
            .endpoints
            .iter()
            .find(|e| e.port == port && e.protocol == Protocol::Tcp.as_str())
            .cloned()
            .ok_or_else(|| AppError::NotFound {
                kind: "port",
                id: format!("{port} of environment {}", rec.id),
            })?;
        Ok((rec, ep))
    }

    /// Opens a byte stream to `port` of the environment's guest, on its own host.
    pub async fn proxy_open(&self, rec: &VmRecord, port: u16) -> Result<Tunnel, AppError> {
        let provider = self.provider_of(rec).await?;
        Ok(provider.tunnel(rec.id.as_str(), port).await?)
    }

    /// `?action=expose`: publishes one more port of a running environment (a forward on
    /// its host, and an endpoint with the proxy's URLs). The same port and protocol again
    /// answers the environment as it is, with `public` updated.
    pub async fn env_expose(&self, id: &str, req: ExposeRequest) -> Result<Environment, AppError> {
        let asked = ExposeSpec {
            port: req.port,
            as_: req.as_,
            protocol: req.protocol,
            public: req.public,
        };
        let mut errs = Vec::new();
        let mut valid = super::validate::check_expose(std::slice::from_ref(&asked), &mut errs);
        if !errs.is_empty() {
            let errs = errs
                .into_iter()
                .map(|e| {
                    e.replacen("expose[0].", "", 1)
                        .replacen("expose[0]: ", "", 1)
                })
                .collect();
            return Err(AppError::Invalid(errs));
        }
        let Some(asked) = valid.pop() else {
            return Err(AppError::invalid("port must be from 1 to 65535"));
        };
        let rec = self.env_get(id).await?;
        if table_refuses(&rec) {
            return Err(AppError::Conflict {
                message: format!(
                    "environment {} is {}; ports are published while it is running",
                    rec.id,
                    rec.state.as_str()
                ),
                details: Default::default(),
            });
        }
        let proto: Protocol = asked
            .protocol
            .as_deref()
            .unwrap_or("")
            .parse()
            .unwrap_or_default();
        let port = asked.port as u16;
        let provider = self.provider_of(&rec).await?;
        let made = provider
            .expose(
                rec.id.as_str(),
                &PortExpose {
                    port,
                    protocol: proto,
                },
            )
            .await?;
        let mut extras = rec.extras.clone();
        let same = |e: &ExposeSpec| {
            e.port == asked.port && e.protocol.as_deref() == asked.protocol.as_deref()
        };
        match extras.expose.iter_mut().find(|e| same(e)) {
            Some(e) => {
                e.public = asked.public;
                if asked.as_.is_some() {
                    e.as_ = asked.as_.clone();
                }
            }
            None => extras.expose.push(asked.clone()),
        }
        let entry = extras
            .expose
            .iter()
            .find(|e| same(e))
            .cloned()
            .unwrap_or(asked);
        let mut ep = super::environments::endpoints(std::slice::from_ref(&entry), &[made])
            .pop()
            .ok_or_else(|| AppError::Internal("the host answered another port".into()))?;
        endpoint_urls(&self.config.proxy, rec.id.as_str(), &mut ep);
        extras
            .endpoints
            .retain(|e| !(e.port == ep.port && e.protocol == ep.protocol));
        extras.endpoints.push(ep.clone());
        let change = super::lifecycle::Change::new(Event::PortExposed)
            .extras(extras)
            .payload(serde_json::json!({
                "port": ep.port, "protocol": ep.protocol, "public": ep.public,
            }));
        let rec = self.transition(&rec, change).await?;
        tracing::info!(vm_id = %rec.id, port = ep.port, protocol = %ep.protocol, public = ep.public, "port published");
        Ok(rec.to_wire())
    }
}

fn table_refuses(rec: &VmRecord) -> bool {
    fuse_types::lifecycle::step(Some(rec.state), Event::PortExposed).is_err()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_labels() {
        assert_eq!(parse_host_label("8080-fuse-web"), Some((8080, "fuse-web")));
        assert_eq!(parse_host_label("0-fuse-web"), None);
        assert_eq!(parse_host_label("x-fuse"), None);
        assert_eq!(parse_host_label("8080-"), None);
        assert_eq!(parse_host_label("70000-a"), None);
    }

    #[test]
    fn urls_of_tcp_endpoints() {
        let mut cfg = ProxyConfig {
            public_url: "https://fuse.example.com".into(),
            scheme: "https",
            public_port: Some(None),
            ..ProxyConfig::default()
        };
        let mut e = Endpoint {
            protocol: "tcp".into(),
            port: 8080,
            url: "tcp://10.0.0.5:20001".into(),
            ..Endpoint::default()
        };
        endpoint_urls(&cfg, "fuse-a", &mut e);
        assert_eq!(
            e.proxy_url,
            "https://fuse.example.com/v1/environments/fuse-a/ports/8080/"
        );
        assert_eq!(e.url, e.proxy_url);
        assert_eq!(e.host_url, "");
        cfg.domain = Some("apps.example.com".into());
        endpoint_urls(&cfg, "fuse-a", &mut e);
        assert_eq!(e.host_url, "https://8080-fuse-a.apps.example.com/");
        assert_eq!(e.url, e.host_url);
        let mut u = Endpoint {
            protocol: "udp".into(),
            port: 53,
            url: "udp://10.0.0.5:20002".into(),
            ..Endpoint::default()
        };
        endpoint_urls(&cfg, "fuse-a", &mut u);
        assert_eq!(u.url, "udp://10.0.0.5:20002");
        assert_eq!(u.proxy_url, "");
    }
}
