//! The private link over a virtio-serial port (QEMU without vsock). A port is one byte
//! stream that only one side may open at a time, so requests are multiplexed on it: every
//! line is `<channel> <payload>`, where the payload is one line of the ordinary protocol
//! (`proto`). The host opens a channel by sending its one request line on a fresh channel
//! number; the guest answers with that channel's response line(s) and then an empty
//! payload (`<channel> ` alone), which ends the channel. Channels run concurrently (one
//! thread each), so a long command never blocks a health check.
//!
//! Further frames of an open channel are its [`crate::proto::Input`] lines (a file's bytes,
//! keystrokes, acks); the host's empty payload on an open channel is its hang-up. Channel
//! numbers only grow within one host's connection, so a late frame of a finished channel
//! is ignored rather than taken for a new request.
//!
//! Invariants: a response line is written whole under one lock, so channels never
//! interleave inside a line; a host that disconnects (agent restart, VM restore) loses its
//! open channels and nothing else: the guest keeps the port open and serves the next host.

use crate::Guest;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Cursor, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Input frames queued per channel before the port's reader waits.
const CHANNEL_QUEUE: usize = 64;

/// Finds the device of the port named `name` (`/sys/class/virtio-ports/*/name`).
pub fn find_port(name: &str) -> Option<PathBuf> {
    let rd = std::fs::read_dir("/sys/class/virtio-ports").ok()?;
    rd.flatten().find_map(|e| {
        let n = std::fs::read_to_string(e.path().join("name")).ok()?;
        (n.trim() == name).then(|| Path::new("/dev").join(e.file_name()))
    })
}

/// The writing side of one channel: frames its writes.
struct Channel {
    id: u64,
    pending: Vec<u8>,
    out: Output,
}

/// The shared writing side of the port.
type Output = Arc<Mutex<Box<dyn Write + Send>>>;

impl Channel {
    fn send(&self, payload: &[u8]) {
        let mut frame = format!("{} ", self.id).into_bytes();
        frame.extend_from_slice(payload);
        frame.push(b'\n');
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        // A host that went away loses this answer; the next host opens new channels.
        let _ = out.write_all(&frame).and_then(|_| out.flush());
    }
}

/// The reading side of one channel: its request line, then its input frames as lines;
/// end of input when the host ends the channel or disconnects.
struct ChannelIn {
    current: Cursor<Vec<u8>>,
    rx: Receiver<Vec<u8>>,
}

impl Read for ChannelIn {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            let n = self.current.read(buf)?;
            if n > 0 || buf.is_empty() {
                return Ok(n);
            }
            match self.rx.recv() {
                Ok(next) => self.current = Cursor::new(next),
                Err(_) => return Ok(0),
            }
        }
    }
}

impl Write for Channel {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.pending.extend_from_slice(buf);
        while let Some(i) = self.pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=i).collect();
            let line = &line[..line.len() - 1];
            if !line.is_empty() {
                self.send(line);
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Channel {
    fn drop(&mut self) {
        if !self.pending.is_empty() {
            let rest = std::mem::take(&mut self.pending);
            self.send(&rest);
        }
        // The end of the channel.
        self.send(b"");
    }
}

/// Splits a frame into its channel and payload.
pub fn parse_frame(line: &str) -> Option<(u64, &str)> {
    let (ch, payload) = line.split_once(' ')?;
    Some((ch.parse().ok()?, payload))
}

/// Serves the port at `dev` forever (a port reads end-of-file while no host is connected;
/// the next host is served on the same open port).
pub fn serve(guest: Arc<Guest>, dev: &Path) -> std::io::Error {
    let file = match std::fs::OpenOptions::new().read(true).write(true).open(dev) {
        Ok(f) => f,
        Err(e) => return e,
    };
    let out = match file.try_clone() {
        Ok(f) => f,
        Err(e) => return e,
    };
    eprintln!(
        "fuse-guest {} ready on {}",
        env!("CARGO_PKG_VERSION"),
        dev.display()
    );
    run(guest, file, Box::new(out), false);
    std::io::Error::other("the port loop ended")
}

/// Serves one multiplexed byte stream until it ends (tests, and any stream transport).
pub fn serve_stream<R: Read, W: Write + Send + 'static>(guest: Arc<Guest>, reader: R, writer: W) {
    run(guest, reader, Box::new(writer), true);
}

fn run<R: Read>(guest: Arc<Guest>, reader: R, out: Box<dyn Write + Send>, stop_at_eof: bool) {
    let out: Output = Arc::new(Mutex::new(out));
    let mut reader = BufReader::new(reader);
    let mut line = Vec::new();
    // The open channels' input queues, and the newest channel number of this host.
    let mut open: HashMap<u64, SyncSender<Vec<u8>>> = HashMap::new();
    let mut newest = 0u64;
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => {
                // The host is gone: its channels hang up, the next host numbers afresh.
                open.clear();
                newest = 0;
                if stop_at_eof {
                    return;
                }
                // No host connected (reads end at once): wait for one.
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
            Ok(_) => {}
        }
        if line.last() != Some(&b'\n') {
            continue;
        }
        let text = String::from_utf8_lossy(&line);
        let Some((id, payload)) = parse_frame(text.trim_end_matches('\n')) else {
            continue;
        };
        if payload.is_empty() {
            // The host ends (hangs up) a channel.
            open.remove(&id);
            continue;
        }
        let mut input = payload.as_bytes().to_vec();
        input.push(b'\n');
        if let Some(tx) = open.get(&id) {
            // An input frame of an open channel (waits while the channel's queue is full).
            if tx.send(input).is_err() {
                open.remove(&id);
            }
            continue;
        }
        if id <= newest {
            // A late frame of a finished channel.
            continue;
        }
        newest = id;
        let (tx, rx) = mpsc::sync_channel(CHANNEL_QUEUE);
        open.insert(id, tx);
        let ch_in = ChannelIn {
            current: Cursor::new(input),
            rx,
        };
        let ch = Channel {
            id,
            pending: Vec::new(),
            out: out.clone(),
        };
        let g = guest.clone();
        std::thread::spawn(move || g.serve(ch_in, ch));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames() {
        assert_eq!(
            parse_frame("12 {\"op\":\"health\"}"),
            Some((12, "{\"op\":\"health\"}"))
        );
        assert_eq!(parse_frame("7 "), Some((7, "")));
        assert_eq!(parse_frame("x {}"), None);
        assert_eq!(parse_frame("nospace"), None);
    }

    #[test]
    fn a_channel_frames_whole_lines_and_ends() {
        let dir = std::env::temp_dir().join(format!("fuse-vport-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("out");
        let f = std::fs::File::create(&p).unwrap();
        {
            let (tx, rx) = mpsc::sync_channel(4);
            let mut ch_in = ChannelIn {
                current: Cursor::new(b"req\n".to_vec()),
                rx,
            };
            tx.send(b"more\n".to_vec()).unwrap();
            drop(tx);
            let mut s = String::new();
            ch_in.read_to_string(&mut s).unwrap();
            assert_eq!(s, "req\nmore\n");
            let mut ch = Channel {
                id: 5,
                pending: Vec::new(),
                out: Arc::new(Mutex::new(Box::new(f))),
            };
            ch.write_all(b"{\"a\":").unwrap();
            ch.write_all(b"1}\n{\"b\":2}\n").unwrap();
        }
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            "5 {\"a\":1}\n5 {\"b\":2}\n5 \n"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
