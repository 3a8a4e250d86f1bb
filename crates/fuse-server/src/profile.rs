//! Agent profiles: the one place that knows where an agent's files live in the guest and how
//! it is launched and drained. A create request's `files` and `agent` fields override a
//! profile per environment.

use fuse_types::{AgentOverride, AgentSpec};

/// A reference agent layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    /// Profile name.
    pub name: &'static str,
    /// Directory of the agent's files in the guest.
    pub dir: &'static str,
    /// The agent binary.
    pub binary_path: &'static str,
    /// Launch command.
    pub command: &'static str,
    /// Drain command.
    pub drain_command: &'static str,
    /// Default listen address.
    pub listen: &'static str,
    /// Whether the profile's agent serves HTTPS with the uploaded per-VM certificate (then
    /// an environment's `url` says `https://` while it runs the profile's own command).
    pub serves_tls: bool,
}

const FUSED: Profile = Profile {
    name: "fused",
    dir: "/fuse",
    binary_path: "/usr/local/bin/fused",
    command: "/usr/local/bin/fused --dir /fuse",
    drain_command: "systemctl stop fused 2>/dev/null || pkill -TERM fused",
    listen: "0.0.0.0:8443",
    serves_tls: true,
};

const SURFD: Profile = Profile {
    name: "surfd",
    dir: "/surf",
    binary_path: "/usr/local/bin/surfd",
    command: "/usr/local/bin/surfd --dir /surf",
    drain_command: "systemctl stop surfd 2>/dev/null || pkill -TERM surfd",
    listen: "0.0.0.0:8443",
    // The original agent's scheme is kept as its hosts report it.
    serves_tls: false,
};

impl Profile {
    /// Known profile names.
    pub const NAMES: [&'static str; 2] = ["fused", "surfd"];

    /// Looks a profile up by name.
    pub fn by_name(name: &str) -> Option<&'static Profile> {
        match name {
            "fused" => Some(&FUSED),
            "surfd" => Some(&SURFD),
            _ => None,
        }
    }

    /// The URL to publish for an agent the host reaches at `url`: `https://` when this
    /// profile's agent serves TLS and `command` is the profile's own.
    pub fn public_url(&self, url: &str, command: &str) -> String {
        match url.strip_prefix("http://") {
            Some(rest) if self.serves_tls && command == self.command => format!("https://{rest}"),
            _ => url.to_owned(),
        }
    }

    /// The manifest file (from `manifest_inline`).
    pub fn manifest_path(&self) -> String {
        format!("{}/manifest.json", self.dir)
    }

    /// The secrets file (JSON object).
    pub fn secrets_path(&self) -> String {
        format!("{}/secrets.json", self.dir)
    }

    /// The agent's bearer token.
    pub fn token_path(&self) -> String {
        format!("{}/token", self.dir)
    }

    /// The agent's TLS certificate.
    pub fn cert_path(&self) -> String {
        format!("{}/tls.crt", self.dir)
    }

    /// The agent's TLS key.
    pub fn key_path(&self) -> String {
        format!("{}/tls.key", self.dir)
    }

    /// The agent's runtime config (listen address, gateway).
    pub fn config_path(&self) -> String {
        format!("{}/config.json", self.dir)
    }

    /// Resolves the launch for one environment: the profile, then the server's default
    /// download URL, then the request's override, field by field.
    pub fn resolve(
        &self,
        default_download_url: &str,
        over: Option<&AgentOverride>,
        gateway: &str,
    ) -> AgentSpec {
        let pick = |o: Option<&Option<String>>, d: &str| -> String {
            o.and_then(|x| x.clone()).unwrap_or_else(|| d.to_owned())
        };
        let overridden = over.is_some_and(|o| o.command.is_some());
        let listen = pick(over.map(|o| &o.listen), self.listen);
        AgentSpec {
            profile: if overridden { "custom" } else { self.name }.to_owned(),
            download_url: pick(over.map(|o| &o.download_url), default_download_url),
            binary_path: pick(over.map(|o| &o.binary_path), self.binary_path),
            sha256: pick(over.map(|o| &o.sha256), "").to_ascii_lowercase(),
            start_window_ms: over.and_then(|o| o.start_window_ms),
            command: pick(over.map(|o| &o.command), self.command),
            drain_command: pick(over.map(|o| &o.drain_command), self.drain_command),
            port: listen
                .parse::<std::net::SocketAddr>()
                .ok()
                .map(|a| a.port()),
            listen,
            gateway: gateway.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fused_layout() {
        let p = Profile::by_name("fused").unwrap();
        assert_eq!(p.manifest_path(), "/fuse/manifest.json");
        assert_eq!(p.secrets_path(), "/fuse/secrets.json");
        assert_eq!(
            p.drain_command,
            "systemctl stop fused 2>/dev/null || pkill -TERM fused"
        );
        let s = Profile::by_name("surfd").unwrap();
        assert_eq!(s.manifest_path(), "/surf/manifest.json");
        assert!(Profile::by_name("x").is_none());
    }

    #[test]
    fn url_scheme_follows_what_the_agent_serves() {
        let p = Profile::by_name("fused").unwrap();
        assert_eq!(
            p.public_url("http://10.0.0.5:20001", p.command),
            "https://10.0.0.5:20001"
        );
        assert_eq!(
            p.public_url("http://10.0.0.5:20001", "/opt/a/run"),
            "http://10.0.0.5:20001",
            "a custom agent command: unknown, left as the host said"
        );
        let s = Profile::by_name("surfd").unwrap();
        assert_eq!(
            s.public_url("http://10.0.0.5:20001", s.command),
            "http://10.0.0.5:20001"
        );
    }

    #[test]
    fn override_wins_field_by_field() {
        let p = Profile::by_name("fused").unwrap();
        let base = p.resolve("http://dl/fused", None, "");
        assert_eq!(base.download_url, "http://dl/fused");
        assert_eq!(base.profile, "fused");
        let o = AgentOverride {
            drain_command: Some(String::new()),
            listen: Some("0.0.0.0:9000".into()),
            ..AgentOverride::default()
        };
        let r = p.resolve("http://dl/fused", Some(&o), "http://gw");
        assert_eq!(
            r.drain_command, "",
            "an empty drain command is kept (skips drain)"
        );
        assert_eq!(r.listen, "0.0.0.0:9000");
        assert_eq!(r.port, Some(9000));
        assert_eq!(base.port, Some(8443));
        let none = AgentOverride {
            listen: Some(String::new()),
            ..AgentOverride::default()
        };
        assert_eq!(p.resolve("", Some(&none), "").port, None, "listens nowhere");
        assert_eq!(r.command, p.command);
        assert_eq!(r.gateway, "http://gw");
        let c = AgentOverride {
            command: Some("/bin/agent".into()),
            ..AgentOverride::default()
        };
        assert_eq!(p.resolve("", Some(&c), "").profile, "custom");
    }
}
