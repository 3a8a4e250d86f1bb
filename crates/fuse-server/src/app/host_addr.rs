//! Which addresses a registered host URL may point at. Registering a host makes the control
//! plane call that URL with the given bearer token (health at once, then every poll, every
//! provision), so the API is a way to make `fuse` send requests from inside its network. The
//! one destination refused by default is link-local (169.254.0.0/16, where cloud metadata
//! services answer with instance credentials, and fe80::/10), literal or resolved from the
//! host name; `FUSE_ALLOW_LINK_LOCAL_HOSTS` lifts it. The rule is pure ([`is_link_local`],
//! [`url_host`]); [`check`] resolves.

use std::net::IpAddr;

/// Why a host URL's address is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostAddrError {
    /// The URL names, or its host name resolves to, a link-local address.
    #[error(
        "url: {host} {how}a link-local address ({addr}; cloud metadata services answer there); \
         set FUSE_ALLOW_LINK_LOCAL_HOSTS=true (--allow-link-local-hosts) to register it"
    )]
    LinkLocal {
        /// The host as written in the URL.
        host: String,
        /// The refused address.
        addr: IpAddr,
        /// `"is "` or `"resolves to "`.
        how: &'static str,
    },
}

/// Whether `ip` is link-local: 169.254.0.0/16, fe80::/10, or either behind an
/// IPv4-mapped (`::ffff:169.254.x.y`) address.
pub fn is_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.is_link_local(),
            None => (v6.segments()[0] & 0xffc0) == 0xfe80,
        },
    }
}

/// The host and port of an `http(s)://` URL (already checked by `check_http_url`): the
/// host without IPv6 brackets, the port explicit or the scheme's.
pub fn url_host(url: &str) -> Option<(String, u16)> {
    let (rest, default_port) = if let Some(r) = url.strip_prefix("https://") {
        (r, 443)
    } else {
        (url.strip_prefix("http://")?, 80)
    };
    let authority = rest.split(['/', '?', '#']).next()?;
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6.split_once(']')?;
        // An IPv6 zone (`fe80::1%25eth0`) says which interface, not which address.
        let h = h.split('%').next().unwrap_or(h);
        (h, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    let port = match port {
        None | Some("") => default_port,
        Some(p) => p.parse().ok()?,
    };
    (!host.is_empty()).then(|| (host.to_owned(), port))
}

/// Refuses a URL whose host is, or resolves to, a link-local address. A name that does not
/// resolve passes: the registration then stores the host `unreachable`, and nothing is
/// called until it answers.
pub async fn check(url: &str) -> Result<(), HostAddrError> {
    check_with(url, |host, port| async move {
        match tokio::net::lookup_host((host.as_str(), port)).await {
            Ok(addrs) => addrs.map(|a| a.ip()).collect(),
            Err(_) => Vec::new(),
        }
    })
    .await
}

/// [`check`] with the name resolution given (tests resolve names to whatever they need).
pub async fn check_with<F, Fut>(url: &str, resolve: F) -> Result<(), HostAddrError>
where
    F: FnOnce(String, u16) -> Fut,
    Fut: std::future::Future<Output = Vec<IpAddr>>,
{
    let Some((host, port)) = url_host(url) else {
        return Ok(());
    };
    if let Ok(ip) = host.parse::<IpAddr>() {
        return refuse_if_link_local(&host, ip, "is ");
    }
    for ip in resolve(host.clone(), port).await {
        refuse_if_link_local(&host, ip, "resolves to ")?;
    }
    Ok(())
}

fn refuse_if_link_local(host: &str, ip: IpAddr, how: &'static str) -> Result<(), HostAddrError> {
    if is_link_local(ip) {
        Err(HostAddrError::LinkLocal {
            host: host.to_owned(),
            addr: ip,
            how,
        })
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_link_local_rule() {
        for (ip, link_local) in [
            ("169.254.169.254", true),
            ("169.254.0.0", true),
            ("169.254.255.255", true),
            ("169.253.255.255", false),
            ("169.255.0.1", false),
            ("10.0.0.5", false),
            ("127.0.0.1", false),
            ("0.0.0.0", false),
            ("fe80::1", true),
            ("fe80::a:b:c:d", true),
            ("febf:ffff::1", true),
            ("fec0::1", false),
            ("fd00:ec2::254", false),
            ("::1", false),
            ("::ffff:169.254.169.254", true),
            ("::ffff:10.0.0.1", false),
            ("2001:db8::1", false),
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(is_link_local(ip), link_local, "{ip}");
        }
    }

    #[test]
    fn hosts_and_ports_of_urls() {
        for (url, want) in [
            ("http://10.0.0.5:8090", Some(("10.0.0.5", 8090))),
            ("http://10.0.0.5", Some(("10.0.0.5", 80))),
            ("https://h.example/x?y", Some(("h.example", 443))),
            ("http://h:8090/path#f", Some(("h", 8090))),
            ("http://[fe80::1]:8090/", Some(("fe80::1", 8090))),
            ("http://[::1]", Some(("::1", 80))),
            ("http://[fe80::1%25eth0]:1", Some(("fe80::1", 1))),
            ("http://h:", Some(("h", 80))),
            ("http://h:notaport", None),
            ("http://[fe80::1", None),
            ("ftp://h", None),
        ] {
            let got = url_host(url);
            assert_eq!(got.as_ref().map(|(h, p)| (h.as_str(), *p)), want, "{url}");
        }
    }

    #[tokio::test]
    async fn literal_and_resolved_link_local_are_refused() {
        let fake = |host: String, _port: u16| async move {
            match host.as_str() {
                "metadata.internal" => vec!["169.254.169.254".parse().unwrap()],
                "mixed.example" => vec!["10.0.0.7".parse().unwrap(), "fe80::7".parse().unwrap()],
                "host.example" => vec!["10.0.0.7".parse().unwrap()],
                _ => vec![],
            }
        };
        for (url, refused) in [
            (
                "http://169.254.169.254/latest/meta-data",
                Some("is a link-local"),
            ),
            ("http://[fe80::1]:8090", Some("is a link-local")),
            ("http://[fe80::1%25eth0]:8090", Some("is a link-local")),
            ("http://[::ffff:169.254.169.254]", Some("is a link-local")),
            (
                "http://metadata.internal/",
                Some("resolves to a link-local"),
            ),
            (
                "http://mixed.example:8090",
                Some("resolves to a link-local"),
            ),
            ("http://host.example:8090", None),
            ("http://10.0.0.5:8090", None),
            ("http://[::1]:8090", None),
            ("http://unresolvable.example", None),
        ] {
            match (check_with(url, fake).await, refused) {
                (Ok(()), None) => {}
                (Err(e), Some(needle)) => {
                    let msg = e.to_string();
                    assert!(msg.contains(needle), "{url}: {msg}");
                    assert!(msg.contains("FUSE_ALLOW_LINK_LOCAL_HOSTS"), "{msg}");
                }
                (got, want) => panic!("{url}: got {got:?}, want refused={want:?}"),
            }
        }
        // The real resolver: loopback names are not link-local.
        assert_eq!(check("http://localhost:8090").await, Ok(()));
    }
}
