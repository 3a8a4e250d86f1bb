//! Egress rules of an environment (issue 12): a mode and two lists of entries, each a CIDR
//! (IPv4 or IPv6; a bare address is its /32 or /128), a domain name, or a wildcard
//! `*.example.com`. Parsed and checked here once, for the control plane (a 400 names the
//! entry) and for the host agent that enforces them (nftables for addresses, its resolver
//! for names).
//!
//! Matching: a name entry matches exactly that name (case-insensitive, a trailing dot
//! ignored); a wildcard `*.example.com` matches every name below `example.com` at any depth,
//! but not `example.com` itself. A deny entry always wins over an allow entry.

use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// Most entries in each of `allow` and `deny`.
pub const MAX_ENTRIES: usize = 256;

/// What a VM may reach.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EgressMode {
    /// Everything but `deny` (the default; the wire's `direct` is this).
    #[default]
    AllowAll,
    /// Nothing.
    DenyAll,
    /// Only `allow`, less `deny`.
    Allowlist,
}

impl EgressMode {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            EgressMode::AllowAll => "allow-all",
            EgressMode::DenyAll => "deny-all",
            EgressMode::Allowlist => "allowlist",
        }
    }
}

/// An environment's egress rules, as the host agent enforces them. Entries are kept in
/// their canonical spelling ([`EgressEntry::canonical`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EgressRules {
    /// The mode.
    #[serde(default)]
    pub mode: EgressMode,
    /// Allowed CIDRs and names (only with [`EgressMode::Allowlist`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    /// Refused CIDRs and names (not with [`EgressMode::DenyAll`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
}

/// One entry of `allow` or `deny`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EgressEntry {
    /// A network: its (host-bits-zero) address and prefix length.
    Net {
        /// Network address.
        addr: IpAddr,
        /// Prefix length.
        prefix: u8,
    },
    /// Exactly this name (lowercase, no trailing dot).
    Name(String),
    /// Every name below this one (lowercase, without the `*.`).
    Below(String),
}

fn check_name(n: &str) -> Result<(), String> {
    if n.len() > 253 {
        return Err("a domain name is at most 253 characters".into());
    }
    let labels: Vec<&str> = n.split('.').collect();
    if labels.len() < 2 {
        return Err("a domain name needs at least two labels (example.com)".into());
    }
    for l in labels {
        if l.is_empty() || l.len() > 63 {
            return Err("each label of a domain name is 1 to 63 characters".into());
        }
        if !l
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err("a domain name has only letters, digits, '-', '_' and dots (a wildcard only as a leading '*.')".into());
        }
        if l.starts_with('-') || l.ends_with('-') {
            return Err("a label of a domain name does not start or end with '-'".into());
        }
    }
    Ok(())
}

fn mask(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let m = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(prefix))
            };
            IpAddr::V4((u32::from(a) & m).into())
        }
        IpAddr::V6(a) => {
            let m = if prefix == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(prefix))
            };
            IpAddr::V6((u128::from(a) & m).into())
        }
    }
}

impl EgressEntry {
    /// Parses one entry; the error says what is allowed.
    pub fn parse(s: &str) -> Result<EgressEntry, String> {
        let t = s.trim();
        if t.is_empty() {
            return Err("an entry is a CIDR (10.0.0.0/8, 2001:db8::/32), an address, a domain (example.com) or a wildcard (*.example.com); got an empty string".into());
        }
        if let Some((a, p)) = t.split_once('/') {
            let addr: IpAddr = a
                .parse()
                .map_err(|_| format!("{t:?} is not a CIDR: {a:?} is not an IP address"))?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            let prefix: u8 = p
                .parse()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{t:?}: the prefix length must be 0 to {max}"))?;
            let net = mask(addr, prefix);
            if net != addr {
                return Err(format!(
                    "{t:?} has host bits set; the network is {net}/{prefix}"
                ));
            }
            return Ok(EgressEntry::Net { addr, prefix });
        }
        if let Ok(addr) = t.parse::<IpAddr>() {
            let prefix = if addr.is_ipv4() { 32 } else { 128 };
            return Ok(EgressEntry::Net { addr, prefix });
        }
        let lower = t.trim_end_matches('.').to_ascii_lowercase();
        let (below, name) = match lower.strip_prefix("*.") {
            Some(rest) => (true, rest.to_owned()),
            None => (false, lower),
        };
        check_name(&name).map_err(|e| format!("{t:?}: {e}"))?;
        if name.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            return Err(format!("{t:?} is neither an IP address nor a domain name"));
        }
        Ok(if below {
            EgressEntry::Below(name)
        } else {
            EgressEntry::Name(name)
        })
    }

    /// Its canonical spelling (what is stored and reported).
    pub fn canonical(&self) -> String {
        match self {
            EgressEntry::Net { addr, prefix } => format!("{addr}/{prefix}"),
            EgressEntry::Name(n) => n.clone(),
            EgressEntry::Below(n) => format!("*.{n}"),
        }
    }

    /// Whether this entry matches the (normalized) name `name`.
    pub fn matches_name(&self, name: &str) -> bool {
        match self {
            EgressEntry::Net { .. } => false,
            EgressEntry::Name(n) => n == name,
            EgressEntry::Below(n) => name.len() > n.len() + 1 && name.ends_with(&format!(".{n}")),
        }
    }

    /// The network, for a CIDR entry.
    pub fn net(&self) -> Option<(IpAddr, u8)> {
        match self {
            EgressEntry::Net { addr, prefix } => Some((*addr, *prefix)),
            _ => None,
        }
    }
}

/// `name` as the rules compare it: lowercase, without a trailing dot.
pub fn normalize_name(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

impl EgressRules {
    /// Builds the rules from a mode and the lists as asked, checking every entry; every
    /// problem is reported (prefixed with `what`, e.g. `egress`).
    pub fn build(
        what: &str,
        mode: EgressMode,
        allow: &[String],
        deny: &[String],
    ) -> Result<EgressRules, Vec<String>> {
        let mut errs = Vec::new();
        let mut list = |field: &str, items: &[String]| -> Vec<String> {
            if items.len() > MAX_ENTRIES {
                errs.push(format!("{what}.{field}: at most {MAX_ENTRIES} entries"));
            }
            let mut out: Vec<String> = Vec::new();
            for (i, s) in items.iter().enumerate() {
                match EgressEntry::parse(s) {
                    Ok(e) => {
                        let c = e.canonical();
                        if !out.contains(&c) {
                            out.push(c);
                        }
                    }
                    Err(e) => errs.push(format!("{what}.{field}[{i}]: {e}")),
                }
            }
            out
        };
        let allow = list("allow", allow);
        let deny = list("deny", deny);
        match mode {
            EgressMode::Allowlist => {}
            EgressMode::AllowAll if !allow.is_empty() => errs.push(format!(
                "{what}.allow is only used with mode allowlist (mode allow-all allows everything not denied)"
            )),
            EgressMode::DenyAll if !allow.is_empty() || !deny.is_empty() => errs.push(format!(
                "{what}: mode deny-all takes no allow or deny entries; use mode allowlist to let some through"
            )),
            _ => {}
        }
        if errs.is_empty() {
            Ok(EgressRules { mode, allow, deny })
        } else {
            Err(errs)
        }
    }

    /// Whether these are the default rules (allow everything, deny nothing), which every
    /// host enforces without being told.
    pub fn is_default(&self) -> bool {
        self.mode == EgressMode::AllowAll && self.allow.is_empty() && self.deny.is_empty()
    }

    /// The parsed entries of a list (entries that do not parse are skipped: stored rules
    /// were checked when they were built).
    pub fn entries(list: &[String]) -> impl Iterator<Item = EgressEntry> + '_ {
        list.iter().filter_map(|s| EgressEntry::parse(s).ok())
    }

    /// Whether the resolver answers `name` (normalized or not): never in deny-all, never a
    /// denied name, any other name in allow-all, only an allowed one in allowlist.
    pub fn name_allowed(&self, name: &str) -> bool {
        let n = normalize_name(name);
        if self.mode == EgressMode::DenyAll || Self::entries(&self.deny).any(|e| e.matches_name(&n))
        {
            return false;
        }
        match self.mode {
            EgressMode::AllowAll => true,
            EgressMode::DenyAll => false,
            EgressMode::Allowlist => Self::entries(&self.allow).any(|e| e.matches_name(&n)),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn entries_parse_to_their_canonical_spelling() {
        for (input, want) in [
            ("10.0.0.0/8", "10.0.0.0/8"),
            ("10.1.2.3", "10.1.2.3/32"),
            ("2001:DB8::/32", "2001:db8::/32"),
            ("::1", "::1/128"),
            ("0.0.0.0/0", "0.0.0.0/0"),
            ("Example.COM.", "example.com"),
            ("*.example.com", "*.example.com"),
            ("a_b.example-1.org", "a_b.example-1.org"),
        ] {
            assert_eq!(
                EgressEntry::parse(input).unwrap().canonical(),
                want,
                "{input}"
            );
        }
        for (input, says) in [
            ("", "empty"),
            ("10.0.0.1/24", "host bits set; the network is 10.0.0.0/24"),
            ("10.0.0.0/33", "prefix length must be 0 to 32"),
            ("2001:db8::/129", "0 to 128"),
            ("300.1.1.1/8", "not an IP address"),
            ("localhost", "at least two labels"),
            ("*.com.*", "only letters"),
            ("a.*.com", "only letters"),
            ("-a.com", "start or end"),
            ("1.2.3", "neither an IP address nor a domain name"),
            ("exa mple.com", "only letters"),
            ("*", "at least two labels"),
        ] {
            let e = EgressEntry::parse(input).unwrap_err();
            assert!(e.contains(says), "{input}: {e}");
        }
    }

    #[test]
    fn names_match_exactly_or_below_a_wildcard() {
        let exact = EgressEntry::parse("example.com").unwrap();
        let below = EgressEntry::parse("*.example.com").unwrap();
        assert!(exact.matches_name("example.com"));
        assert!(!exact.matches_name("www.example.com"));
        assert!(below.matches_name("www.example.com"));
        assert!(below.matches_name("a.b.example.com"));
        assert!(!below.matches_name("example.com"));
        assert!(!below.matches_name("badexample.com"));
    }

    #[test]
    fn rules_check_modes_and_deny_wins() {
        let r = EgressRules::build(
            "egress",
            EgressMode::Allowlist,
            &[
                "*.example.com".into(),
                "10.0.0.0/8".into(),
                "ok.test".into(),
            ],
            &["bad.example.com".into()],
        )
        .unwrap();
        assert!(r.name_allowed("www.example.com"));
        assert!(r.name_allowed("OK.test."));
        assert!(!r.name_allowed("bad.example.com"), "deny wins");
        assert!(!r.name_allowed("other.test"));
        let all =
            EgressRules::build("egress", EgressMode::AllowAll, &[], &["bad.test".into()]).unwrap();
        assert!(all.name_allowed("anything.test") && !all.name_allowed("bad.test"));
        let none = EgressRules::build("egress", EgressMode::DenyAll, &[], &[]).unwrap();
        assert!(!none.name_allowed("example.com"));
        assert!(EgressRules::default().is_default() && !all.is_default());

        let errs = EgressRules::build(
            "egress",
            EgressMode::AllowAll,
            &["x.test".into()],
            &["nope".into()],
        )
        .unwrap_err();
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(errs[0].starts_with("egress.deny[0]: \"nope\""), "{errs:?}");
        assert!(
            errs[1].contains("only used with mode allowlist"),
            "{errs:?}"
        );
        let errs = EgressRules::build("egress", EgressMode::DenyAll, &[], &["1.2.3.4".into()])
            .unwrap_err();
        assert!(errs[0].contains("deny-all takes no"), "{errs:?}");
        let many: Vec<String> = (0..=MAX_ENTRIES)
            .map(|i| format!("10.0.{}.{}", i / 256, i % 256))
            .collect();
        let errs = EgressRules::build("egress", EgressMode::Allowlist, &many, &[]).unwrap_err();
        assert!(errs[0].contains("at most 256"), "{errs:?}");
        // Duplicates collapse to one canonical entry.
        let r = EgressRules::build(
            "egress",
            EgressMode::Allowlist,
            &["A.test".into(), "a.test.".into()],
            &[],
        )
        .unwrap();
        assert_eq!(r.allow, ["a.test"]);
    }

    #[test]
    fn rules_round_trip_as_json() {
        let r: EgressRules =
            serde_json::from_str(r#"{"mode":"allowlist","allow":["a.test"]}"#).unwrap();
        assert_eq!(r.mode, EgressMode::Allowlist);
        assert_eq!(
            serde_json::to_string(&EgressRules::default()).unwrap(),
            r#"{"mode":"allow-all"}"#
        );
    }
}
