//! The ports proxy's part of the configuration: the public base URL, the domain of
//! host-based URLs, its wildcard certificate and its time limit, validated with the rest.

use super::Flags;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// How the ports proxy is reached and bounded.
#[derive(Debug, Clone, Default)]
pub struct ProxyConfig {
    /// Base of path-based URLs, without a trailing `/` (empty: relative URLs).
    pub public_url: String,
    /// Domain of host-based URLs (lower case, no leading dot).
    pub domain: Option<String>,
    /// `http` or `https`: the scheme of host-based URLs.
    pub scheme: &'static str,
    /// The port of host-based URLs from `FUSE_PUBLIC_URL` (`None`: the listener's).
    pub public_port: Option<Option<u16>>,
    /// The configured listen port.
    pub listen_port: u16,
    /// The port actually bound (differs from `listen_port` when that is 0); set once at
    /// start.
    pub bound_port: std::sync::OnceLock<u16>,
    /// Wildcard certificate and key for names under `domain`.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// How long a guest may take to answer a request's head.
    pub timeout: Duration,
}

impl ProxyConfig {
    /// Reads the proxy's flags; problems go to `errs`.
    pub(super) fn from_flags(
        f: &Flags,
        api_tls: bool,
        listen: SocketAddr,
        errs: &mut Vec<String>,
    ) -> ProxyConfig {
        let public_url = f.public_url.trim().trim_end_matches('/').to_owned();
        let mut public_parts = None;
        if !public_url.is_empty() {
            match reqwest::Url::parse(&public_url) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {
                    public_parts = Some((u.scheme() == "https", u.port()));
                }
                _ => errs.push(format!(
                    "FUSE_PUBLIC_URL: {public_url:?} must be an http:// or https:// URL with a host"
                )),
            }
        }
        let domain = f
            .proxy_domain
            .trim()
            .trim_start_matches('.')
            .to_ascii_lowercase();
        let domain = if domain.is_empty() {
            None
        } else if valid_domain(&domain) {
            Some(domain)
        } else {
            errs.push(format!(
                "FUSE_PROXY_DOMAIN: {domain:?} is not a domain name (labels of a-z, 0-9 and -, \
                 separated by dots, e.g. fuse.example.com)"
            ));
            None
        };
        let tls = match (f.proxy_tls_cert.as_str(), f.proxy_tls_key.as_str()) {
            ("", "") => None,
            ("", _) | (_, "") => {
                errs.push("FUSE_PROXY_TLS_CERT and FUSE_PROXY_TLS_KEY must be set together".into());
                None
            }
            (c, k) => {
                for (name, p) in [("FUSE_PROXY_TLS_CERT", c), ("FUSE_PROXY_TLS_KEY", k)] {
                    if !std::path::Path::new(p).is_file() {
                        errs.push(format!("{name}: {p} is not a readable file"));
                    }
                }
                if domain.is_none() {
                    errs.push("FUSE_PROXY_TLS_CERT needs FUSE_PROXY_DOMAIN".into());
                }
                Some((PathBuf::from(c), PathBuf::from(k)))
            }
        };
        let timeout = match f.proxy_timeout_secs.trim() {
            "" => 60,
            t => match t.parse::<u64>() {
                Ok(n) if (1..=3600).contains(&n) => n,
                _ => {
                    errs.push(format!(
                        "FUSE_PROXY_TIMEOUT_SECS: {t:?} must be a whole number from 1 to 3600"
                    ));
                    60
                }
            },
        };
        // Host-based URLs take the public URL's scheme and port when it is set, else what
        // this listener speaks and where it listens.
        let https = match public_parts {
            Some((https, _)) => https,
            None => api_tls || tls.is_some(),
        };
        ProxyConfig {
            public_url,
            domain,
            scheme: if https { "https" } else { "http" },
            public_port: public_parts.map(|(_, p)| p),
            listen_port: listen.port(),
            bound_port: std::sync::OnceLock::new(),
            tls,
            timeout: Duration::from_secs(timeout),
        }
    }
}

impl ProxyConfig {
    /// `:port` of host-based URLs (empty for the scheme's default port).
    pub fn port_suffix(&self) -> String {
        let port = match self.public_port {
            Some(p) => p,
            None => Some(*self.bound_port.get().unwrap_or(&self.listen_port)),
        };
        let default_port = if self.scheme == "https" { 443 } else { 80 };
        match port {
            Some(p) if p != default_port => format!(":{p}"),
            _ => String::new(),
        }
    }
}

fn valid_domain(d: &str) -> bool {
    d.len() <= 253
        && d.contains('.')
        && d.split('.').all(|l| {
            (1..=63).contains(&l.len())
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(public: &str, domain: &str, listen: &str) -> (ProxyConfig, Vec<String>) {
        let f = Flags {
            public_url: public.into(),
            proxy_domain: domain.into(),
            ..Flags::default()
        };
        let mut errs = Vec::new();
        let c = ProxyConfig::from_flags(&f, false, listen.parse().unwrap(), &mut errs);
        (c, errs)
    }

    #[test]
    fn urls_take_the_public_url_or_the_listener() {
        let (c, e) = cfg(
            "https://fuse.example.com/",
            "Apps.Example.com",
            "0.0.0.0:8080",
        );
        assert!(e.is_empty(), "{e:?}");
        assert_eq!(c.public_url, "https://fuse.example.com");
        assert_eq!(c.domain.as_deref(), Some("apps.example.com"));
        assert_eq!((c.scheme, c.port_suffix().as_str()), ("https", ""));
        let (c, _) = cfg("", "apps.example.com", "0.0.0.0:8080");
        assert_eq!((c.scheme, c.port_suffix().as_str()), ("http", ":8080"));
        let _ = c.bound_port.set(9090);
        assert_eq!(
            c.port_suffix(),
            ":9090",
            "the port bound wins over the one asked"
        );
        assert_eq!(c.timeout, Duration::from_secs(60));
        let (c, _) = cfg("http://10.0.0.1:9000", "", "0.0.0.0:8080");
        assert_eq!(c.domain, None);
        assert_eq!(c.port_suffix(), ":9000");
    }

    #[test]
    fn bad_values_are_named() {
        let (_, e) = cfg("ftp://x", "bad_domain", "0.0.0.0:8080");
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(e[0].starts_with("FUSE_PUBLIC_URL"), "{e:?}");
        assert!(e[1].starts_with("FUSE_PROXY_DOMAIN"), "{e:?}");
        for d in ["localhost", "-a.b", "a..b", "a.b-"] {
            assert!(!valid_domain(d), "{d}");
        }
        assert!(valid_domain("fuse.example.com"));
    }
}
