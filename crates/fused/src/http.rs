//! A deliberately small HTTP/1.1 server (one request per connection, `Connection: close`):
//! the agent has two read-only routes and must link statically into small images, so it
//! carries no server framework.

use crate::Agent;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

/// Longest request head accepted.
const MAX_HEAD: usize = 16 << 10;

/// Serves one connection, over TLS when `tls` is set.
pub fn serve(agent: &Agent, conn: TcpStream, tls: Option<Arc<rustls::ServerConfig>>) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = conn.set_write_timeout(Some(Duration::from_secs(10)));
    match tls {
        Some(cfg) => {
            let Ok(server) = rustls::ServerConnection::new(cfg) else {
                return;
            };
            handle(agent, rustls::StreamOwned::new(server, conn));
        }
        None => handle(agent, conn),
    }
}

fn handle<S: Read + Write>(agent: &Agent, stream: S) {
    let mut r = BufReader::new(stream);
    let mut head = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        match r.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if line == "\r\n" || line == "\n" {
            break;
        }
        head.push(line.trim_end().to_owned());
        if head.iter().map(String::len).sum::<usize>() > MAX_HEAD {
            return;
        }
    }
    let mut parts = head.first().map(|l| l.split(' ')).into_iter().flatten();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let bearer = head.iter().skip(1).find_map(|h| {
        let (k, v) = h.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("authorization")
            .then(|| v.trim().strip_prefix("Bearer ").unwrap_or("").to_owned())
    });
    let (status, body) = route(agent, method, path, bearer.as_deref());
    let mut w = r.into_inner();
    let text = body.to_string();
    let _ = write!(
        w,
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
        text.len()
    );
    let _ = w.flush();
}

/// The routes, as a pure function of the request.
pub fn route(
    agent: &Agent,
    method: &str,
    path: &str,
    bearer: Option<&str>,
) -> (&'static str, serde_json::Value) {
    let path = path.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET", "/health") => ("200 OK", serde_json::json!({"status": "ok"})),
        ("GET", "/v1/info") => {
            let ok = bearer.is_some_and(|b| ct_eq(b.as_bytes(), agent.token.as_bytes()));
            if !ok {
                return (
                    "401 Unauthorized",
                    serde_json::json!({"error": {"code": "unauthorized", "message": "missing or invalid bearer token"}}),
                );
            }
            (
                "200 OK",
                serde_json::json!({
                    "agent": "fused",
                    "version": env!("CARGO_PKG_VERSION"),
                    "vm_id": agent.config["vm_id"],
                    "task_id": agent.config["task_id"],
                    "gateway_url": agent.config["gateway_url"],
                    "manifest": agent.manifest,
                    "secret_names": agent.secret_names,
                    "tls": agent.tls,
                    "uptime_seconds": agent.started.elapsed().as_secs(),
                }),
            )
        }
        (_, "/health" | "/v1/info") => (
            "405 Method Not Allowed",
            serde_json::json!({"error": {"code": "invalid_argument", "message": "only GET"}}),
        ),
        _ => (
            "404 Not Found",
            serde_json::json!({"error": {"code": "not_found", "message": "no such route"}}),
        ),
    }
}

/// Constant-time comparison (the length is not secret).
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn agent() -> Agent {
        Agent {
            token: "t".repeat(64),
            manifest: serde_json::json!({"name": "m"}),
            secret_names: vec!["API_KEY".into()],
            config: serde_json::json!({"vm_id": "fuse-a", "task_id": "a"}),
            tls: false,
            started: Instant::now(),
        }
    }

    #[test]
    fn routes() {
        let a = agent();
        let good = "t".repeat(64);
        let cases: &[(&str, &str, Option<&str>, &str)] = &[
            ("GET", "/health", None, "200 OK"),
            ("GET", "/health?x=1", None, "200 OK"),
            ("GET", "/v1/info", None, "401 Unauthorized"),
            ("GET", "/v1/info", Some("wrong"), "401 Unauthorized"),
            ("GET", "/v1/info", Some(&good), "200 OK"),
            ("POST", "/v1/info", Some(&good), "405 Method Not Allowed"),
            ("GET", "/nope", None, "404 Not Found"),
        ];
        for (m, p, b, want) in cases {
            assert_eq!(route(&a, m, p, *b).0, *want, "{m} {p} {b:?}");
        }
        let (_, info) = route(&a, "GET", "/v1/info", Some(&good));
        assert_eq!(info["vm_id"], "fuse-a");
        assert_eq!(info["manifest"]["name"], "m");
        assert_eq!(info["secret_names"][0], "API_KEY");
        assert!(!info.to_string().contains(&good), "never echoes the token");
    }

    #[test]
    fn serves_http_over_a_socket() {
        let a = Arc::new(agent());
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let a2 = a.clone();
        std::thread::spawn(move || {
            for c in l.incoming().flatten() {
                serve(&a2, c, None);
            }
        });
        let get = |req: &str| {
            let mut c = TcpStream::connect(addr).unwrap();
            c.write_all(req.as_bytes()).unwrap();
            let mut s = String::new();
            c.read_to_string(&mut s).unwrap();
            s
        };
        assert!(get("GET /health HTTP/1.1\r\nhost: x\r\n\r\n").starts_with("HTTP/1.1 200 OK"));
        let auth = format!(
            "GET /v1/info HTTP/1.1\r\nAuthorization: Bearer {}\r\n\r\n",
            "t".repeat(64)
        );
        let r = get(&auth);
        assert!(r.starts_with("HTTP/1.1 200 OK"), "{r}");
        assert!(r.contains("\"task_id\":\"a\""), "{r}");
    }
}
