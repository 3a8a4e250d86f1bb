//! The healthcheck's HTTP probe, run inside the guest so it reaches ports bound to the
//! guest's loopback: `GET {path}` to `127.0.0.1:{port}` over plain TCP as HTTP/1.0 (the
//! server closes the connection after its answer; no keep-alive, no TLS), reading only the
//! status line. The whole exchange is bounded by one deadline.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// The status line is read up to this many bytes.
const STATUS_LINE_MAX: usize = 1024;

/// The status code of `GET path` on the guest's `127.0.0.1:port`, or why there is none.
pub fn http_get(port: u16, path: &str, limit: Duration) -> Result<u16, String> {
    let path = if path.is_empty() { "/" } else { path };
    if !path.starts_with('/') || path.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err(format!("bad probe path {path:?}"));
    }
    let deadline = Instant::now() + limit;
    let left = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| format!("no answer within {} ms", limit.as_millis()))
    };
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut s = TcpStream::connect_timeout(&addr, left()?)
        .map_err(|e| format!("connecting to 127.0.0.1:{port}: {e}"))?;
    s.set_write_timeout(Some(left()?))
        .map_err(|e| e.to_string())?;
    let req = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: fuse-guest\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes())
        .map_err(|e| format!("sending the request: {e}"))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 256];
    while !head.contains(&b'\n') && head.len() < STATUS_LINE_MAX {
        s.set_read_timeout(Some(left()?))
            .map_err(|e| e.to_string())?;
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("reading the answer: {e}")),
        }
    }
    status_of(&head)
}

/// The code of an `HTTP/1.x NNN …` status line.
fn status_of(head: &[u8]) -> Result<u16, String> {
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut words = line.split_whitespace();
    match (words.next(), words.next().map(str::parse::<u16>)) {
        (Some(v), Some(Ok(code))) if v.starts_with("HTTP/") && (100..1000).contains(&code) => {
            Ok(code)
        }
        _ if head.is_empty() => Err("the connection closed without an answer".into()),
        _ => Err(format!("not an HTTP answer: {:?}", line.trim_end())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn status_lines() {
        assert_eq!(status_of(b"HTTP/1.0 200 OK\r\n"), Ok(200));
        assert_eq!(status_of(b"HTTP/1.1 503 Service Unavailable\r\nx"), Ok(503));
        assert!(status_of(b"").unwrap_err().contains("closed"));
        assert!(status_of(b"SSH-2.0-x\r\n")
            .unwrap_err()
            .contains("not an HTTP"));
    }

    #[test]
    fn probes_a_local_server() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            let mut req = [0u8; 512];
            let n = c.read(&mut req).unwrap();
            c.write_all(b"HTTP/1.0 204 No Content\r\n\r\n").unwrap();
            String::from_utf8_lossy(&req[..n]).into_owned()
        });
        assert_eq!(http_get(port, "/ready", Duration::from_secs(5)), Ok(204));
        assert!(server
            .join()
            .unwrap()
            .starts_with("GET /ready HTTP/1.0\r\n"));
        // Nothing listens there any more.
        let e = http_get(port, "", Duration::from_secs(5)).unwrap_err();
        assert!(e.contains("connecting to 127.0.0.1"), "{e}");
        assert!(http_get(port, "no-slash", Duration::from_secs(1)).is_err());
    }

    #[test]
    fn a_silent_server_times_out() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let t = Instant::now();
        let e = http_get(port, "/", Duration::from_millis(200)).unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(3), "{e}");
        drop(l);
    }
}
