//! `filesystem.Filesystem`: entries (`Stat`, `ListDir`), directories, moves, removal, and
//! watchers (`WatchDir` streams; `CreateWatcher`/`GetWatcherEvents`/`RemoveWatcher` poll),
//! on inotify. Paths are guest paths (relative ones under the user's home), found under
//! envd's root.

use crate::connect::{Code, RpcError};
use crate::pb;
use crate::users;
use fuse_guest::ops::random_u64;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use std::collections::HashMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// The extended attributes a file's user metadata is kept in: `user.e2b.<key>`.
pub const METADATA_XATTR: &str = "user.e2b.";

/// A file's user metadata (from uploads' `X-Metadata-*` headers).
pub fn metadata_of(host: &Path) -> std::collections::BTreeMap<String, String> {
    let mut out = std::collections::BTreeMap::new();
    let Ok(names) = xattr::list(host) else {
        return out;
    };
    for n in names {
        let Some(key) = n.to_str().and_then(|n| n.strip_prefix(METADATA_XATTR)) else {
            continue;
        };
        if let Ok(Some(v)) = xattr::get(host, &n) {
            out.insert(key.to_owned(), String::from_utf8_lossy(&v).into_owned());
        }
    }
    out
}

/// Most entries a listing answers.
const MAX_ENTRIES: usize = 100_000;
/// How often a watcher looks for events when there were none.
const WATCH_POLL: Duration = Duration::from_millis(50);
/// Events a polled watcher keeps between two `GetWatcherEvents`.
const MAX_BUFFERED: usize = 10_000;

/// `ls -l`'s permission string of a mode (`drwxr-xr-x`).
pub fn permissions(mode: u32, kind: i32) -> String {
    let t = match kind {
        k if k == pb::FileType::Directory as i32 => 'd',
        k if k == pb::FileType::Symlink as i32 => 'L',
        _ => '-',
    };
    let mut s = String::with_capacity(10);
    s.push(t);
    for shift in [6, 3, 0] {
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    s
}

/// The entry of the guest path `guest` at host path `host`.
pub fn entry(guest: &str, host: &Path) -> std::io::Result<pb::EntryInfo> {
    let lmeta = std::fs::symlink_metadata(host)?;
    let (kind, symlink_target, meta) = if lmeta.file_type().is_symlink() {
        let target = std::fs::read_link(host)
            .ok()
            .map(|t| t.to_string_lossy().into_owned());
        (
            pb::FileType::Symlink as i32,
            target,
            std::fs::metadata(host).unwrap_or(lmeta),
        )
    } else if lmeta.is_dir() {
        (pb::FileType::Directory as i32, None, lmeta)
    } else {
        (pb::FileType::File as i32, None, lmeta)
    };
    let mode = meta.permissions().mode() & 0o7777;
    let name = Path::new(guest)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "/".into());
    Ok(pb::EntryInfo {
        name,
        r#type: kind,
        path: guest.to_owned(),
        size: meta.len() as i64,
        mode,
        permissions: permissions(mode, kind),
        owner: users::user_name(meta.uid()),
        group: users::group_name(meta.gid()),
        modified_time: Some(pb::Timestamp {
            seconds: meta.mtime(),
            nanos: meta.mtime_nsec() as i32,
        }),
        symlink_target,
        metadata: metadata_of(host),
    })
}

/// A path of a request: its guest form and where it is.
#[derive(Debug, Clone)]
pub struct Place {
    /// The guest path.
    pub guest: String,
    /// The host path.
    pub host: PathBuf,
}

impl Place {
    /// `p` as the user with home `home` means it, under `root`.
    pub fn of(root: &Path, home: &str, p: &str) -> Place {
        let guest = users::guest_path(home, p);
        let host = users::host_path(root, &guest);
        Place { guest, host }
    }
}

/// `Stat`.
pub fn stat(p: &Place) -> Result<pb::EntryInfo, RpcError> {
    entry(&p.guest, &p.host).map_err(|e| RpcError::io("stat", &p.guest, &e))
}

/// `ListDir`: entries to `depth` levels (at least one).
pub fn list_dir(p: &Place, depth: u32) -> Result<Vec<pb::EntryInfo>, RpcError> {
    let meta = std::fs::metadata(&p.host).map_err(|e| RpcError::io("listing", &p.guest, &e))?;
    if !meta.is_dir() {
        return Err(RpcError::invalid(format!("{} is not a directory", p.guest)));
    }
    let mut out = Vec::new();
    walk(&p.guest, &p.host, depth.max(1), &mut out)?;
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

fn walk(
    guest: &str,
    host: &Path,
    depth: u32,
    out: &mut Vec<pb::EntryInfo>,
) -> Result<(), RpcError> {
    let rd = std::fs::read_dir(host).map_err(|e| RpcError::io("listing", guest, &e))?;
    for d in rd.flatten() {
        if out.len() >= MAX_ENTRIES {
            return Err(RpcError::new(
                Code::ResourceExhausted,
                format!("{guest} has more than {MAX_ENTRIES} entries at this depth"),
            ));
        }
        let name = d.file_name().to_string_lossy().into_owned();
        let g = format!("{}/{name}", guest.trim_end_matches('/'));
        let Ok(e) = entry(&g, &d.path()) else {
            continue;
        };
        let is_dir = e.r#type == pb::FileType::Directory as i32;
        out.push(e);
        if is_dir && depth > 1 {
            let _ = walk(&g, &d.path(), depth - 1, out);
        }
    }
    Ok(())
}

/// `MakeDir`: the directory and its parents; `already_exists` when it was there.
pub fn make_dir(p: &Place) -> Result<pb::EntryInfo, RpcError> {
    if p.host.exists() {
        return Err(RpcError::new(
            Code::AlreadyExists,
            format!("{} already exists", p.guest),
        ));
    }
    std::fs::create_dir_all(&p.host).map_err(|e| RpcError::io("creating", &p.guest, &e))?;
    stat(p)
}

/// `Move`: a rename (the destination's parents are made).
pub fn rename(from: &Place, to: &Place) -> Result<pb::EntryInfo, RpcError> {
    std::fs::symlink_metadata(&from.host).map_err(|e| RpcError::io("moving", &from.guest, &e))?;
    if let Some(parent) = to.host.parent() {
        std::fs::create_dir_all(parent).map_err(|e| RpcError::io("creating", &to.guest, &e))?;
    }
    std::fs::rename(&from.host, &to.host).map_err(|e| RpcError::io("moving", &from.guest, &e))?;
    stat(to)
}

/// `Remove`: a file, a link or a whole directory.
pub fn remove(p: &Place) -> Result<(), RpcError> {
    let meta =
        std::fs::symlink_metadata(&p.host).map_err(|e| RpcError::io("removing", &p.guest, &e))?;
    let r = if meta.is_dir() {
        std::fs::remove_dir_all(&p.host)
    } else {
        std::fs::remove_file(&p.host)
    };
    r.map_err(|e| RpcError::io("removing", &p.guest, &e))
}

/// A running watcher: its events arrive on the channel until it is stopped.
pub struct Watcher {
    stop: Arc<AtomicBool>,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn watch_flags() -> AddWatchFlags {
    AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_MODIFY
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_ATTRIB
        | AddWatchFlags::IN_DELETE_SELF
}

/// Starts watching `p` (and its subdirectories when `recursive`).
pub fn watch(
    p: &Place,
    recursive: bool,
    include_entry: bool,
) -> Result<(Watcher, mpsc::UnboundedReceiver<pb::FilesystemEvent>), RpcError> {
    let meta = std::fs::metadata(&p.host).map_err(|e| RpcError::io("watching", &p.guest, &e))?;
    if !meta.is_dir() {
        return Err(RpcError::invalid(format!("{} is not a directory", p.guest)));
    }
    let ino = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
        .map_err(|e| RpcError::internal(format!("inotify: {e}")))?;
    let mut dirs: HashMap<WatchDescriptor, (String, PathBuf)> = HashMap::new();
    add_tree(&ino, &mut dirs, "", &p.host, recursive)
        .map_err(|e| RpcError::internal(format!("watching {}: {e}", p.guest)))?;
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::unbounded_channel();
    let (stop2, base) = (stop.clone(), p.guest.clone());
    std::thread::spawn(move || {
        let mut dirs = dirs;
        while !stop2.load(Ordering::Relaxed) && !tx.is_closed() {
            let evs = match ino.read_events() {
                Ok(evs) => evs,
                Err(nix::errno::Errno::EAGAIN) => {
                    std::thread::sleep(WATCH_POLL);
                    continue;
                }
                Err(_) => return,
            };
            for ev in evs {
                let Some((rel_dir, host_dir)) = dirs.get(&ev.wd).cloned() else {
                    continue;
                };
                let Some(name) = ev.name.as_ref().map(|n| n.to_string_lossy().into_owned()) else {
                    continue;
                };
                if is_upload_temp(&name) {
                    continue;
                }
                let rel = if rel_dir.is_empty() {
                    name.clone()
                } else {
                    format!("{rel_dir}/{name}")
                };
                let m = ev.mask;
                let kind = if m.intersects(AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_TO) {
                    pb::EventType::Create
                } else if m.contains(AddWatchFlags::IN_MODIFY) {
                    pb::EventType::Write
                } else if m.contains(AddWatchFlags::IN_DELETE) {
                    pb::EventType::Remove
                } else if m.contains(AddWatchFlags::IN_MOVED_FROM) {
                    pb::EventType::Rename
                } else if m.contains(AddWatchFlags::IN_ATTRIB) {
                    pb::EventType::Chmod
                } else {
                    continue;
                };
                let host = host_dir.join(&name);
                if recursive && kind == pb::EventType::Create && m.contains(AddWatchFlags::IN_ISDIR)
                {
                    let _ = add_tree(&ino, &mut dirs, &rel, &host, true);
                }
                let entry = include_entry
                    .then(|| entry(&format!("{}/{rel}", base.trim_end_matches('/')), &host).ok())
                    .flatten();
                let _ = tx.send(pb::FilesystemEvent {
                    name: rel,
                    r#type: kind as i32,
                    entry,
                });
            }
        }
    });
    Ok((Watcher { stop }, rx))
}

/// An upload's temp file (`.NAME.envd-HEX`, see `files`): not an event of its own; its
/// rename into place is the target's create.
fn is_upload_temp(name: &str) -> bool {
    name.starts_with('.')
        && name
            .rsplit_once(".envd-")
            .is_some_and(|(_, hex)| hex.len() == 16 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn add_tree(
    ino: &Inotify,
    dirs: &mut HashMap<WatchDescriptor, (String, PathBuf)>,
    rel: &str,
    host: &Path,
    recursive: bool,
) -> nix::Result<()> {
    let wd = ino.add_watch(host, watch_flags())?;
    dirs.insert(wd, (rel.to_owned(), host.to_owned()));
    if recursive {
        for d in std::fs::read_dir(host).into_iter().flatten().flatten() {
            if d.file_type().is_ok_and(|t| t.is_dir()) {
                let name = d.file_name().to_string_lossy().into_owned();
                let r = if rel.is_empty() {
                    name
                } else {
                    format!("{rel}/{name}")
                };
                let _ = add_tree(ino, dirs, &r, &d.path(), true);
            }
        }
    }
    Ok(())
}

/// Watchers created by `CreateWatcher`, their events kept until fetched.
#[derive(Default)]
pub struct Polled {
    watchers: Mutex<HashMap<String, PolledWatcher>>,
}

struct PolledWatcher {
    _w: Watcher,
    events: Arc<Mutex<Vec<pb::FilesystemEvent>>>,
}

impl Polled {
    /// Adds a watcher; its id.
    pub fn create(
        &self,
        w: Watcher,
        mut rx: mpsc::UnboundedReceiver<pb::FilesystemEvent>,
    ) -> String {
        let id = format!("w{:016x}", random_u64());
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = events.clone();
        tokio::spawn(async move {
            while let Some(ev) = rx.recv().await {
                let mut e = sink.lock().unwrap_or_else(|e| e.into_inner());
                if e.len() < MAX_BUFFERED {
                    e.push(ev);
                }
            }
        });
        self.watchers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.clone(), PolledWatcher { _w: w, events });
        id
    }

    /// The events since the last call.
    pub fn take(&self, id: &str) -> Result<Vec<pb::FilesystemEvent>, RpcError> {
        let ws = self.watchers.lock().unwrap_or_else(|e| e.into_inner());
        let w = ws
            .get(id)
            .ok_or_else(|| RpcError::not_found(format!("watcher {id} not found")))?;
        let mut e = w.events.lock().unwrap_or_else(|e| e.into_inner());
        Ok(std::mem::take(&mut *e))
    }

    /// Stops a watcher.
    pub fn remove(&self, id: &str) -> Result<(), RpcError> {
        self.watchers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id)
            .map(|_| ())
            .ok_or_else(|| RpcError::not_found(format!("watcher {id} not found")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test user's home (any guest directory serves).
    const HOME: &str = "/srv/u";

    fn place(root: &Path, p: &str) -> Place {
        Place::of(root, HOME, p)
    }

    #[test]
    fn entries_list_make_move_and_remove_under_the_root() {
        let dir = std::env::temp_dir().join(format!("fuse-envd-fs-{}", random_u64()));
        let root = dir.as_path();
        let d = make_dir(&place(root, "proj/sub")).unwrap();
        assert_eq!(d.path, "/srv/u/proj/sub");
        assert_eq!(d.r#type, pb::FileType::Directory as i32);
        assert_eq!(
            make_dir(&place(root, "proj/sub")).unwrap_err().code,
            Code::AlreadyExists
        );
        std::fs::write(root.join("srv/u/proj/a.txt"), b"abc").unwrap();
        let a = stat(&place(root, "/srv/u/proj/a.txt")).unwrap();
        assert_eq!((a.name.as_str(), a.size), ("a.txt", 3));
        assert!(a.permissions.starts_with('-'));
        let one = list_dir(&place(root, "proj"), 1).unwrap();
        let names: Vec<_> = one.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["a.txt", "sub"]);
        let moved = rename(&place(root, "proj/a.txt"), &place(root, "proj/sub/b.txt")).unwrap();
        assert_eq!(moved.path, "/srv/u/proj/sub/b.txt");
        let two = list_dir(&place(root, "proj"), 2).unwrap();
        assert_eq!(two.len(), 2, "{two:?}");
        remove(&place(root, "proj")).unwrap();
        assert_eq!(stat(&place(root, "proj")).unwrap_err().code, Code::NotFound);
        assert_eq!(
            remove(&place(root, "proj")).unwrap_err().code,
            Code::NotFound
        );
        std::fs::remove_dir_all(root).unwrap();
    }

    #[tokio::test]
    async fn a_watcher_reports_creates_writes_and_removes() {
        let dir = std::env::temp_dir().join(format!("fuse-envd-watch-{}", random_u64()));
        std::fs::create_dir_all(dir.join("srv/u/w")).unwrap();
        let p = Place::of(&dir, HOME, "w");
        let (_w, mut rx) = watch(&p, true, true).unwrap();
        std::fs::create_dir(p.host.join("sub")).unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
        std::fs::write(p.host.join("sub/f"), b"x").unwrap();
        std::fs::remove_file(p.host.join("sub/f")).unwrap();
        let mut seen = Vec::new();
        while seen.len() < 4 {
            let ev = tokio::time::timeout(Duration::from_secs(5), rx.recv())
                .await
                .expect("an event within 5 s")
                .unwrap();
            seen.push((ev.name.clone(), ev.r#type));
            if ev.name == "sub" {
                assert_eq!(ev.entry.unwrap().path, "/srv/u/w/sub");
            }
        }
        assert!(
            seen.contains(&("sub".into(), pb::EventType::Create as i32)),
            "{seen:?}"
        );
        assert!(
            seen.contains(&("sub/f".into(), pb::EventType::Create as i32)),
            "{seen:?}"
        );
        assert!(
            seen.contains(&("sub/f".into(), pb::EventType::Write as i32)),
            "{seen:?}"
        );
        assert!(
            seen.contains(&("sub/f".into(), pb::EventType::Remove as i32)),
            "{seen:?}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
