//! Files at runtime: streamed writes (atomic, checksummed), streamed reads (checksummed),
//! directory listings and removal. Nothing here holds a whole file in memory: a write
//! goes to a temp file chunk by chunk and is renamed over the target only after its last
//! byte and its checksum arrived; a read sends the file in chunks within the host's window.

use crate::error::GuestError;
use crate::inbox::Outbox;
use crate::ops::{b64, random_u64};
use crate::proto::{code, DirEntry, Response};
use crate::Guest;
use base64::Engine as _;
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Raw bytes per data line of a read (64 KiB of base64).
pub const CHUNK: usize = 48 << 10;
/// How long a write waits for its next input line before giving up.
const INPUT_IDLE: Duration = Duration::from_secs(300);
/// Most entries a listing answers.
const MAX_ENTRIES: u32 = 10_000;

/// Creates an exclusive temp file next to `target` with its final mode from the start
/// (a key is never readable by others, not even briefly), never through a symlink.
pub fn create_temp(target: &Path, mode: u32) -> std::io::Result<(std::fs::File, PathBuf)> {
    let dir = target.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir)?;
    let name = target
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("file");
    let tmp = dir.join(format!(
        ".{name}.fuse-tmp-{}-{:016x}",
        std::process::id(),
        random_u64()
    ));
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode & 0o7777)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(&tmp)?;
    Ok((f, tmp))
}

/// Sets the final mode (the umask may have narrowed it), syncs and renames into place.
pub fn commit(f: std::fs::File, tmp: &Path, target: &Path, mode: u32) -> std::io::Result<()> {
    f.set_permissions(std::fs::Permissions::from_mode(mode & 0o7777))?;
    f.sync_all()?;
    std::fs::rename(tmp, target)
}

/// As [`commit`] without the sync: atomic for readers, durable once the kernel writes it
/// back.
pub fn commit_unsynced(
    f: std::fs::File,
    tmp: &Path,
    target: &Path,
    mode: u32,
) -> std::io::Result<()> {
    f.set_permissions(std::fs::Permissions::from_mode(mode & 0o7777))?;
    drop(f);
    std::fs::rename(tmp, target)
}

fn not_found(path: &str) -> Response {
    Response::err_code(
        code::NOT_FOUND,
        format!("{path}: no such file or directory"),
    )
}

fn io_err(what: &'static str, path: &str, e: std::io::Error) -> Response {
    if e.kind() == std::io::ErrorKind::NotFound {
        return not_found(path);
    }
    Response::err(GuestError::io(what, Path::new(path))(e).message())
}

fn resolve(g: &Guest, path: &str) -> Result<PathBuf, Box<Response>> {
    g.resolve(path)
        .map_err(|e| Box::new(Response::err_code(code::INVALID, e.message())))
}

/// `write_file`: answers `more` once the temp file exists (so a host learns of a bad path
/// before it sends the bytes), then takes the bytes from input lines and answers what it
/// wrote.
pub fn write<W: Write>(g: &Guest, path: &str, mode: u32, out: &mut Outbox<'_, W>) {
    let r = write_inner(g, path, mode, out);
    out.send(&r);
}

fn write_inner<W: Write>(g: &Guest, path: &str, mode: u32, out: &mut Outbox<'_, W>) -> Response {
    let inbox = out.inbox();
    let target = match resolve(g, path) {
        Ok(t) => t,
        Err(r) => return *r,
    };
    if path.ends_with('/') || target.is_dir() {
        return Response::err_code(code::WRONG_TYPE, format!("{path} is a directory"));
    }
    let (mut f, tmp) = match create_temp(&target, mode) {
        Ok(x) => x,
        Err(e) => return io_err("creating", path, e),
    };
    let fail = |r: Response| {
        let _ = std::fs::remove_file(&tmp);
        r
    };
    if !out.send(&Response {
        more: true,
        ..Response::default()
    }) {
        return fail(Response::err("the host hung up"));
    }
    let mut hash = Sha256::new();
    let mut size = 0u64;
    loop {
        let input = match inbox.recv_timeout(INPUT_IDLE) {
            Ok(Some(i)) => i,
            Ok(None) => return fail(Response::err("the host hung up before the end of the file")),
            Err(()) => return fail(Response::err("no input for 300 s; the write was abandoned")),
        };
        if let Some(d) = &input.data_b64 {
            let bytes = match b64().decode(d) {
                Ok(b) => b,
                Err(_) => return fail(Response::err_code(code::INVALID, "data is not base64")),
            };
            hash.update(&bytes);
            size += bytes.len() as u64;
            if let Err(e) = f.write_all(&bytes) {
                return fail(io_err("writing", path, e));
            }
        }
        if input.eof {
            let sum = hex(&hash.finalize());
            if let Some(want) = &input.sha256 {
                if !want.eq_ignore_ascii_case(&sum) {
                    return fail(Response::err_code(
                        code::INVALID,
                        format!("checksum mismatch: received {size} bytes with sha256 {sum}, the host sent {want}"),
                    ));
                }
            }
            if let Err(e) = commit(f, &tmp, &target, mode) {
                return fail(io_err("writing", path, e));
            }
            return Response {
                size: Some(size),
                sha256: Some(sum),
                ..Response::default()
            };
        }
    }
}

fn sha256_of(f: &mut std::fs::File) -> std::io::Result<(u64, String)> {
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 256 << 10];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok((size, hex(&hash.finalize())));
        }
        size += n as u64;
        hash.update(&buf[..n]);
    }
}

/// `read_file`: a header with the checksum, the bytes in chunks, the checksum of what was
/// sent (the host compares the two: a file that changed while it was read is an error).
pub fn read<W: Write>(g: &Guest, path: &str, out: &mut Outbox<'_, W>) {
    let target = match resolve(g, path) {
        Ok(t) => t,
        Err(r) => {
            out.send(&r);
            return;
        }
    };
    let meta = match std::fs::metadata(&target) {
        Ok(m) => m,
        Err(e) => {
            out.send(&io_err("reading", path, e));
            return;
        }
    };
    if meta.is_dir() {
        out.send(&Response::err_code(
            code::WRONG_TYPE,
            format!("{path} is a directory (list it instead)"),
        ));
        return;
    }
    let opened = std::fs::File::open(&target).and_then(|mut f| Ok((sha256_of(&mut f)?, f)));
    let ((size, sum), mut f) = match opened {
        Ok(x) => x,
        Err(e) => {
            out.send(&io_err("reading", path, e));
            return;
        }
    };
    if !out.send(&Response {
        more: true,
        size: Some(size),
        sha256: Some(sum),
        mode: Some(meta.mode() & 0o7777),
        ..Response::default()
    }) {
        return;
    }
    use std::io::Seek;
    if let Err(e) = f.seek(std::io::SeekFrom::Start(0)) {
        out.send(&io_err("reading", path, e));
        return;
    }
    let mut hash = Sha256::new();
    let mut sent = 0u64;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match f.read(&mut buf) {
            Ok(n) => n,
            Err(e) => {
                out.send(&io_err("reading", path, e));
                return;
            }
        };
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
        sent += n as u64;
        if !out.send(&Response {
            data_b64: Some(b64().encode(&buf[..n])),
            ..Response::default()
        }) {
            return;
        }
    }
    out.send(&Response {
        size: Some(sent),
        sha256: Some(hex(&hash.finalize())),
        ..Response::default()
    });
}

/// `list_dir`.
pub fn list(g: &Guest, path: &str, limit: Option<u32>) -> Response {
    let dir = match resolve(g, path) {
        Ok(t) => t,
        Err(r) => return *r,
    };
    let limit = limit.unwrap_or(MAX_ENTRIES).clamp(1, MAX_ENTRIES) as usize;
    match std::fs::metadata(&dir) {
        Ok(m) if !m.is_dir() => {
            return Response::err_code(code::WRONG_TYPE, format!("{path} is not a directory"))
        }
        Ok(_) => {}
        Err(e) => return io_err("listing", path, e),
    }
    let rd = match std::fs::read_dir(&dir) {
        Ok(r) => r,
        Err(e) => return io_err("listing", path, e),
    };
    let mut names: Vec<String> = rd
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    let truncated = names.len() > limit;
    names.truncate(limit);
    let base = path.trim_end_matches('/');
    let entries = names
        .into_iter()
        .filter_map(|name| {
            let m = std::fs::symlink_metadata(dir.join(&name)).ok()?;
            let ft = m.file_type();
            let kind = if ft.is_symlink() {
                "symlink"
            } else if ft.is_dir() {
                "dir"
            } else if ft.is_file() {
                "file"
            } else {
                "other"
            };
            Some(DirEntry {
                path: format!("{base}/{name}"),
                name,
                kind: kind.into(),
                size: m.len(),
                mode: m.mode() & 0o7777,
                modified_unix: m.mtime(),
            })
        })
        .collect();
    Response {
        entries: Some(entries),
        truncated,
        ..Response::default()
    }
}

/// `remove`.
pub fn remove(g: &Guest, path: &str, recursive: bool) -> Response {
    let target = match resolve(g, path) {
        Ok(t) => t,
        Err(r) => return *r,
    };
    if path.trim_end_matches('/').is_empty() {
        return Response::err_code(code::INVALID, "refusing to remove /");
    }
    let meta = match std::fs::symlink_metadata(&target) {
        Ok(m) => m,
        Err(e) => return io_err("removing", path, e),
    };
    let r = if meta.is_dir() {
        if recursive {
            std::fs::remove_dir_all(&target)
        } else {
            std::fs::remove_dir(&target).map_err(|e| {
                if e.raw_os_error() == Some(nix::libc::ENOTEMPTY) {
                    std::io::Error::other("the directory is not empty (remove it recursively)")
                } else {
                    e
                }
            })
        }
    } else {
        std::fs::remove_file(&target)
    };
    match r {
        Ok(()) => Response::default(),
        Err(e) => io_err("removing", path, e),
    }
}

/// Lower-case hex.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
