//! VM network namespaces as files: where a named one lives, which namespace a file or a
//! process is in (the nsfs device and inode, as `ip netns identify` compares them), and
//! killing what still runs in one. Blocking filesystem work: callers run it off the async
//! workers.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

/// Where named network namespaces are bind-mounted (as `ip netns` does).
pub const RUN_DIR: &str = "/run/netns";

/// What [`create`] made: the namespace's name and identity, a route socket inside it, and
/// an open handle of it (for the veth's peer).
pub struct Made {
    /// Its name under [`RUN_DIR`].
    pub name: String,
    /// Its identity.
    pub id: Option<NsId>,
    /// A netlink route socket bound inside it.
    pub inside: nlink::netlink::Connection<nlink::netlink::Route>,
    /// The namespace (an open nsfs file).
    pub fd: std::os::fd::OwnedFd,
}

/// Makes the named network namespace `name` (bound at [`path`]) with its loopback up. The
/// work happens on a short-lived thread of its own: it unshares, makes the namespace's
/// route socket and exits, so no thread of the agent ever has to switch back. Blocking:
/// call it off the async workers.
pub fn make(name: &str, rt: &tokio::runtime::Handle) -> Result<Made, nlink::Error> {
    let file = path(name);
    std::fs::create_dir_all(RUN_DIR)?;
    // The bind-mount target; `create_new` fails if a namespace (or a stale marker) is there.
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&file)?;
    let (target, rt, n) = (file.clone(), rt.clone(), name.to_owned());
    let made = std::thread::Builder::new()
        .name("fuse-netns".into())
        .spawn(move || -> Result<Made, nlink::Error> {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(std::io::Error::from)?;
            nix::mount::mount(
                Some("/proc/thread-self/ns/net"),
                &target,
                None::<&str>,
                nix::mount::MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(std::io::Error::from)?;
            let fd: std::os::fd::OwnedFd = std::fs::File::open("/proc/thread-self/ns/net")?.into();
            let _rt = rt.enter();
            let inside = nlink::netlink::Connection::<nlink::netlink::Route>::new()?;
            rt.block_on(inside.set_link_up("lo"))?;
            Ok(Made {
                id: id_of(&target),
                name: n,
                inside,
                fd,
            })
        })
        .map_err(nlink::Error::from)
        .and_then(|t| {
            t.join().unwrap_or_else(|_| {
                Err(std::io::Error::other("the namespace thread panicked").into())
            })
        });
    if made.is_err() {
        let _ = nix::mount::umount2(&file, nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_file(&file);
    }
    made
}

/// [`make`], off the async workers.
pub async fn create(name: &str) -> Result<Made, nlink::Error> {
    let (n, rt) = (name.to_owned(), tokio::runtime::Handle::current());
    tokio::task::spawn_blocking(move || make(&n, &rt))
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e).into()))
}

/// The path of the named namespace `name`.
pub fn path(name: &str) -> PathBuf {
    Path::new(RUN_DIR).join(name)
}

/// A network namespace's identity: the (device, inode) of its nsfs file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NsId {
    /// The nsfs device.
    pub dev: u64,
    /// The namespace's inode.
    pub ino: u64,
}

/// The identity of the namespace `file` is (a `/run/netns` entry, a `/proc/<pid>/ns/net`
/// link). `None` when it is not a namespace: a marker file nothing is mounted on (seen
/// from another mount namespace, or left by a crash) has the device of the filesystem it
/// lies on, not nsfs's.
pub fn id_of(file: &Path) -> Option<NsId> {
    let m = std::fs::metadata(file).ok()?;
    let nsfs = std::fs::metadata("/proc/self/ns/net").ok()?.dev();
    (m.dev() == nsfs).then(|| NsId {
        dev: m.dev(),
        ino: m.ino(),
    })
}

/// A process's network namespace held open: while it is, the namespace cannot go away and
/// its inode cannot be handed to a new namespace (nsfs reuses freed inode numbers at once,
/// so a recorded identity of a namespace that is gone may name someone else's).
#[derive(Debug)]
pub struct Pin(std::fs::File);

impl Pin {
    /// Holds the network namespace process `pid` is in.
    pub fn of_pid(pid: i32) -> Option<Pin> {
        std::fs::File::open(format!("/proc/{pid}/ns/net"))
            .ok()
            .map(Pin)
    }

    /// The held namespace's identity.
    pub fn id(&self) -> Option<NsId> {
        let m = self.0.metadata().ok()?;
        let nsfs = std::fs::metadata("/proc/self/ns/net").ok()?.dev();
        (m.dev() == nsfs).then(|| NsId {
            dev: m.dev(),
            ino: m.ino(),
        })
    }
}

/// Kills (SIGKILL) every process in namespace `id`, found by their `/proc/<pid>/ns/net`;
/// returns how many.
pub fn kill_all_in(id: NsId) -> usize {
    let me = std::process::id();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return 0;
    };
    // The link's text names the namespace's inode (`net:[4026532]`), and reading it is
    // much cheaper than a `stat` through it (which opens the namespace's nsfs dentry):
    // this runs over every process on the host for every destroy. All namespaces share
    // the one nsfs device, so the inode alone identifies it.
    let want = std::ffi::OsString::from(format!("net:[{}]", id.ino));
    let mut n = 0;
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(link) = std::fs::read_link(e.path().join("ns/net")) else {
            continue;
        };
        if link.as_os_str() == want
            && nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            )
            .is_ok()
        {
            n += 1;
        }
    }
    n
}

/// The names of the namespaces under [`RUN_DIR`] that start with `prefix`.
pub fn list(prefix: &str) -> Vec<String> {
    std::fs::read_dir(RUN_DIR)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_own_namespace_is_found_and_a_plain_file_is_none() {
        let me = id_of(Path::new("/proc/self/ns/net")).expect("nsfs");
        // What `kill_all_in` compares: the link names the same inode `id_of` reads.
        let link = std::fs::read_link("/proc/self/ns/net").unwrap();
        assert_eq!(link.to_string_lossy(), format!("net:[{}]", me.ino));
        assert_eq!(
            id_of(Path::new(&format!("/proc/{}/ns/net", std::process::id()))),
            Some(me)
        );
        assert_eq!(id_of(Path::new("/proc/self/cmdline")), None);
        assert_eq!(id_of(Path::new("/nonexistent")), None);
        assert_eq!(path("fvab"), Path::new("/run/netns/fvab"));
    }
}
