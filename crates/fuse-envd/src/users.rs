//! Who an operation runs as. A request names its user in `Authorization: Basic
//! base64(user:)` (the SDK's way) or `?username=`; without one it is the default user
//! (`/init`'s `defaultUser`, else `user`, E2B's). A user that exists in the guest's
//! accounts is switched to when envd runs as root; one that does not exist runs as envd
//! itself, with a home of its name under [`HOMES`], so code written for E2B's `user`
//! works on any image.

use base64::Engine as _;
use std::path::PathBuf;

/// The guest directory the homes of users without an account are made in.
pub const HOMES: &str = "/home";

/// The home of a user without an account (or whose account names none).
pub fn home_of(name: &str) -> String {
    format!("{HOMES}/{name}")
}

/// A user to run as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Its name.
    pub name: String,
    /// Its uid.
    pub uid: u32,
    /// Its primary gid.
    pub gid: u32,
}

/// Who a request acts as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The name asked for (or the default).
    pub name: String,
    /// The account switched to, when there is one and envd may switch.
    pub account: Option<User>,
    /// Its home in the guest (a guest path).
    pub home: String,
}

/// The user named in an `Authorization: Basic` header, if any.
pub fn from_basic(header: Option<&str>) -> Option<String> {
    let b64 = header?.strip_prefix("Basic ")?.trim();
    let raw = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    let text = String::from_utf8(raw).ok()?;
    let name = text.split(':').next().unwrap_or("").trim().to_owned();
    (!name.is_empty()).then_some(name)
}

/// Resolves `name` against the guest's accounts.
pub fn identity(name: &str) -> Identity {
    let found = nix::unistd::User::from_name(name).ok().flatten();
    let root = nix::unistd::geteuid().is_root();
    match found {
        Some(u) => Identity {
            name: name.to_owned(),
            account: root.then(|| User {
                name: name.to_owned(),
                uid: u.uid.as_raw(),
                gid: u.gid.as_raw(),
            }),
            home: u
                .dir
                .to_str()
                .filter(|d| !d.is_empty())
                .map(str::to_owned)
                .unwrap_or_else(|| home_of(name)),
        },
        None => Identity {
            name: name.to_owned(),
            account: None,
            home: home_of(name),
        },
    }
}

/// The name of a uid (its number when it has none).
pub fn user_name(uid: u32) -> String {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| uid.to_string())
}

/// The name of a gid (its number when it has none).
pub fn group_name(gid: u32) -> String {
    nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid))
        .ok()
        .flatten()
        .map(|g| g.name)
        .unwrap_or_else(|| gid.to_string())
}

/// A guest path, joined to the user's home when relative and normalised (`.` and `..`
/// resolved lexically, never above `/`).
pub fn guest_path(home: &str, p: &str) -> String {
    let joined = if p.starts_with('/') {
        p.to_owned()
    } else if p.is_empty() {
        home.to_owned()
    } else {
        format!("{}/{p}", home.trim_end_matches('/'))
    };
    let mut parts: Vec<&str> = Vec::new();
    for c in joined.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    format!("/{}", parts.join("/"))
}

/// Where a guest path is on the machine envd runs on: under `root` (`/` in a real guest,
/// the VM's directory for the `process` backend).
pub fn host_path(root: &std::path::Path, guest: &str) -> PathBuf {
    root.join(guest.trim_start_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_auth_names_the_user() {
        assert_eq!(from_basic(Some("Basic dXNlcjo=")), Some("user".into()));
        assert_eq!(from_basic(Some("Basic cm9vdDo=")), Some("root".into()));
        assert_eq!(from_basic(Some("Bearer x")), None);
        assert_eq!(from_basic(None), None);
    }

    #[test]
    fn paths_are_joined_to_home_and_never_climb_above_the_root() {
        let home = "/srv/u";
        assert_eq!(guest_path(home, "a/b.txt"), "/srv/u/a/b.txt");
        assert_eq!(guest_path(home, "/tmp/./x"), "/tmp/x");
        assert_eq!(guest_path(home, "../../../etc"), "/etc");
        assert_eq!(guest_path(home, "/.."), "/");
        assert_eq!(guest_path(home, ""), home);
        assert_eq!(
            host_path(std::path::Path::new("/vm/guest"), "/etc/x"),
            PathBuf::from("/vm/guest/etc/x")
        );
    }

    #[test]
    fn an_unknown_user_gets_a_home_of_its_own_name() {
        let id = identity("fuse-envd-no-such-user");
        assert_eq!(id.account, None);
        assert_eq!(id.home, home_of("fuse-envd-no-such-user"));
        assert!(id.home.starts_with(HOMES));
    }
}
