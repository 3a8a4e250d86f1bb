//! Bounded logs and reading them: a [`RotatingLog`] that a writer appends to and that
//! rotates at a size (the current file becomes `<path>.1`, replacing the previous one, so a
//! log never holds more than twice its limit), and the reads the log routes need: the
//! offset of the last N lines ([`tail_offset`]) and a chunk from an offset that follows a
//! rotation ([`read_chunk`]). The same reads serve the guest's logs (agent, startup) and
//! the host's console files (`fc-agent` links this crate), which are truncated in place
//! rather than renamed (their writer is the VMM).
//!
//! A log is named by its file's inode (`id`), so a reader that polls with the id and offset
//! it was given last finishes the rotated file (`.1`) before it moves on to the new one.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The startup script's log (guest path).
pub const STARTUP_LOG: &str = "/var/log/fuse-startup.log";

/// A log's default size limit before it rotates.
pub const DEFAULT_MAX_BYTES: u64 = 1 << 20;

/// Lines a tail may ask for.
pub const MAX_TAIL_LINES: usize = 10_000;

/// Bytes one chunk carries at most.
pub const MAX_CHUNK: usize = 64 << 10;

/// How far back a tail looks at most, whatever the number of lines.
pub const MAX_TAIL_BYTES: u64 = 4 << 20;

/// The previous generation of a rotated log.
pub fn rotated(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".1");
    PathBuf::from(s)
}

/// A log file appended to by one writer, rotated when it would pass `max` bytes.
#[derive(Debug)]
pub struct RotatingLog {
    path: PathBuf,
    file: Option<File>,
    size: u64,
    max: u64,
}

impl RotatingLog {
    /// Opens (appending to) the log at `path`, parents created.
    pub fn open(path: &Path, max: u64) -> std::io::Result<RotatingLog> {
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d)?;
        }
        let file = open_append(path)?;
        let size = file.metadata()?.len();
        Ok(RotatingLog {
            path: path.to_owned(),
            file: Some(file),
            size,
            max: max.max(1024),
        })
    }

    /// Appends `data`, rotating first when it would pass the limit. A failed write drops
    /// the data (a full disk must not stop the writer).
    pub fn append(&mut self, data: &[u8]) {
        if self.size > 0 && self.size + data.len() as u64 > self.max {
            self.file = None;
            let _ = std::fs::rename(&self.path, rotated(&self.path));
            self.size = 0;
        }
        if self.file.is_none() {
            self.file = open_append(&self.path).ok();
        }
        if let Some(f) = self.file.as_mut() {
            if f.write_all(data).is_ok() {
                self.size += data.len() as u64;
            }
        }
    }
}

fn open_append(path: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

/// Truncates a log that a process of its own keeps appending to (a VMM's console, opened
/// with `O_APPEND`) once it passes `max`: its last `max / 2` bytes are kept in `<path>.1`
/// first. Returns whether it was truncated.
pub fn truncate_if_over(path: &Path, max: u64) -> std::io::Result<bool> {
    let len = match std::fs::metadata(path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if len <= max {
        return Ok(false);
    }
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    let keep = (max / 2).min(len);
    f.seek(SeekFrom::Start(len - keep))?;
    let tmp = {
        let mut s = rotated(path).into_os_string();
        s.push(".tmp");
        PathBuf::from(s)
    };
    let mut out = File::create(&tmp)?;
    std::io::copy(&mut (&mut f).take(keep), &mut out)?;
    drop(out);
    std::fs::rename(&tmp, rotated(path))?;
    f.set_len(0)?;
    Ok(true)
}

/// The id of the file at `path` (its inode), `None` when there is none.
pub fn file_id(path: &Path) -> Option<u64> {
    std::fs::metadata(path).ok().map(|m| m.ino())
}

/// The offset where the last `lines` lines of the file at `path` start (0 when it has
/// fewer), looking back at most [`MAX_TAIL_BYTES`]. A missing file is offset 0.
pub fn tail_offset(path: &Path, lines: usize) -> std::io::Result<u64> {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    if lines == 0 {
        return Ok(len);
    }
    let lines = lines.min(MAX_TAIL_LINES);
    let floor = len.saturating_sub(MAX_TAIL_BYTES);
    let mut pos = len;
    let mut seen = 0usize;
    let mut buf = vec![0u8; 8192];
    while pos > floor {
        let n = ((pos - floor) as usize).min(buf.len());
        pos -= n as u64;
        f.seek(SeekFrom::Start(pos))?;
        f.read_exact(&mut buf[..n])?;
        for i in (0..n).rev() {
            let at = pos + i as u64;
            // The newline that ends the file ends the last line; it starts none.
            if buf[i] != b'\n' || at + 1 == len {
                continue;
            }
            seen += 1;
            if seen == lines {
                return Ok(at + 1);
            }
        }
    }
    Ok(floor)
}

/// A chunk of a log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Chunk {
    /// The bytes (at most the `max` asked for).
    pub data: Vec<u8>,
    /// The id of the file the next read continues in.
    pub id: u64,
    /// The offset the next read starts at.
    pub next: u64,
}

/// Reads up to `max` bytes of the log at `path` from `offset` of the file `id` (`None`:
/// the current file). When `id` names the rotated generation (`.1`), its rest is read
/// first; a file that is now shorter than `offset` (truncated) is read from its start; an
/// id that is neither generation starts the current file from its start.
pub fn read_chunk(path: &Path, id: Option<u64>, offset: u64, max: usize) -> std::io::Result<Chunk> {
    let max = max.clamp(1, MAX_CHUNK);
    let cur = file_id(path);
    let (file, mut offset) = match id {
        None => (path.to_owned(), offset),
        Some(i) if Some(i) == cur => (path.to_owned(), offset),
        Some(i) if Some(i) == file_id(&rotated(path)) => {
            let old = rotated(path);
            let c = read_at(&old, offset, max)?;
            if !c.is_empty() {
                return Ok(Chunk {
                    next: offset + c.len() as u64,
                    data: c,
                    id: i,
                });
            }
            // The rotated generation is done: on to the current one.
            (path.to_owned(), 0)
        }
        Some(_) => (path.to_owned(), 0),
    };
    let len = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
    if len < offset {
        offset = 0;
    }
    let data = read_at(&file, offset, max)?;
    Ok(Chunk {
        next: offset + data.len() as u64,
        data,
        id: file_id(&file).unwrap_or(0),
    })
}

fn read_at(path: &Path, offset: u64, max: usize) -> std::io::Result<Vec<u8>> {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    f.seek(SeekFrom::Start(offset))?;
    let mut out = Vec::with_capacity(max.min(8192));
    (&mut f).take(max as u64).read_to_end(&mut out)?;
    Ok(out)
}

/// The last `max` bytes of the log at `path` (its rotated generation included when the
/// current file is shorter), lossy UTF-8, trimmed: what a failure message quotes.
pub fn tail_text(path: &Path, max: usize) -> String {
    let read_tail = |p: &Path, n: u64| -> Vec<u8> {
        let Ok(len) = std::fs::metadata(p).map(|m| m.len()) else {
            return Vec::new();
        };
        read_at(p, len.saturating_sub(n), n as usize).unwrap_or_default()
    };
    let mut bytes = read_tail(path, max as u64);
    if bytes.len() < max {
        let mut older = read_tail(&rotated(path), (max - bytes.len()) as u64);
        older.extend_from_slice(&bytes);
        bytes = older;
    }
    let text = String::from_utf8_lossy(&bytes);
    let text = text.trim();
    // Whole lines: the first, cut, line is dropped when there are others.
    match (bytes.len() >= max, text.split_once('\n')) {
        (true, Some((_, rest))) => rest.trim().to_owned(),
        _ => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("fuse-logs-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn tail_offsets_count_lines_from_the_end() {
        let d = dir("tail");
        let p = d.join("log");
        std::fs::write(&p, "a\nbb\nccc\n").unwrap();
        for (n, want) in [(0, 9), (1, 5), (2, 2), (3, 0), (10, 0)] {
            assert_eq!(tail_offset(&p, n).unwrap(), want, "{n} lines");
        }
        std::fs::write(&p, "a\nbb\nccc").unwrap();
        assert_eq!(tail_offset(&p, 1).unwrap(), 5, "an unterminated last line");
        assert_eq!(tail_offset(&p, 2).unwrap(), 2);
        assert_eq!(tail_offset(&d.join("none"), 5).unwrap(), 0);
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn a_rotating_log_stays_bounded_and_a_reader_follows_the_rotation() {
        let d = dir("rotate");
        let p = d.join("agent.log");
        let mut log = RotatingLog::open(&p, 1024).unwrap();
        log.append(&[b'a'; 1020]);
        let first = read_chunk(&p, None, 0, MAX_CHUNK).unwrap();
        assert_eq!(first.data.len(), 1020);
        log.append(b"0123456789\n");
        log.append(b"more\n");
        assert_eq!(std::fs::read(&p).unwrap(), b"0123456789\nmore\n");
        assert_eq!(std::fs::metadata(rotated(&p)).unwrap().len(), 1020);
        // The reader was at the end of the old file: it goes on in the new one.
        let next = read_chunk(&p, Some(first.id), first.next, MAX_CHUNK).unwrap();
        assert_eq!(next.data, b"0123456789\nmore\n");
        for _ in 0..100 {
            log.append(&[b'x'; 100]);
        }
        let total =
            std::fs::metadata(&p).unwrap().len() + std::fs::metadata(rotated(&p)).unwrap().len();
        assert!(total <= 2048, "bounded at twice the limit: {total}");
        // A reader of the old generation finishes it first.
        let mid = read_chunk(&p, None, 0, 10).unwrap();
        log.append(&[b'y'; 1000]);
        let rest = read_chunk(&p, Some(mid.id), mid.next, MAX_CHUNK).unwrap();
        assert_eq!(rest.id, mid.id, "still the rotated file");
        assert!(rest.data.iter().all(|&b| b == b'x'));
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn a_console_is_truncated_in_place_and_its_tail_kept() {
        let d = dir("console");
        let p = d.join("console.log");
        let mut w = open_append(&p).unwrap();
        w.write_all(&[b'a'; 3000]).unwrap();
        w.write_all(b"\nlast line\n").unwrap();
        assert!(!truncate_if_over(&p, 10_000).unwrap());
        let before = read_chunk(&p, None, 0, MAX_CHUNK).unwrap();
        assert!(truncate_if_over(&p, 1000).unwrap());
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 0);
        assert!(std::fs::read_to_string(rotated(&p))
            .unwrap()
            .ends_with("last line\n"));
        // The writer (O_APPEND) goes on at the new end.
        w.write_all(b"after\n").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"after\n");
        let c = read_chunk(&p, Some(before.id), before.next, MAX_CHUNK).unwrap();
        assert_eq!(c.data, b"after\n", "a shorter file is read from its start");
        assert_eq!(tail_text(&p, 100), "last line\nafter");
        std::fs::remove_dir_all(d).unwrap();
    }
}
