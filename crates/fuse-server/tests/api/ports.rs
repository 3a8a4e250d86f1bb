//! The ports proxy on the stub host, whose tunnels go to real servers this test starts on
//! the loopback: path- and host-based routing, headers both ways, streamed bodies both
//! ways (larger than the API's body limit), an upgraded stream, private and public
//! endpoints (bearer, API key, traffic token by header, cookie and query), the runtime
//! `?action=expose`, and the errors (404 unknown environment or port, 409 not running,
//! 502 nothing listening).

use crate::harness::{start, start_with, test_flags, Fuse};
use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MASTER: &str = "master-token-0123456789abcdef";

/// The guest's server: `/stream` answers a first line at once and the last one a second
/// later; `/upgrade` switches to an echo of raw bytes; anything else answers what it got
/// (method, path and query, headers, and the size and SHA-256 of the body, read as it
/// arrives).
async fn guest_server() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().fallback(|mut req: Request| async move {
        use futures::StreamExt as _;
        if req.uri().path() == "/stream" {
            let s = futures::stream::iter(0..2).then(|i| async move {
                if i == 1 {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Ok::<_, std::io::Error>(if i == 0 { "first\n" } else { "last\n" })
            });
            return Response::new(Body::from_stream(s));
        }
        if req.uri().path() == "/upgrade" {
            let on = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let up = on.await.unwrap();
                let mut io = hyper_util::rt::TokioIo::new(up);
                let mut buf = [0u8; 1024];
                loop {
                    let n = io.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    io.write_all(&buf[..n]).await.unwrap();
                }
            });
            return Response::builder()
                .status(101)
                .header("connection", "upgrade")
                .header("upgrade", "echo")
                .body(Body::empty())
                .unwrap();
        }
        let method = req.method().to_string();
        let uri = req.uri().to_string();
        let headers: serde_json::Map<String, Value> = req
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").into()))
            .collect();
        let mut body = req.into_body().into_data_stream();
        let (mut len, mut sha) = (0usize, Sha256::new());
        while let Some(chunk) = body.next().await {
            let chunk = chunk.unwrap();
            len += chunk.len();
            sha.update(&chunk);
        }
        let out = json!({"method": method, "uri": uri, "headers": headers,
                         "len": len, "sha256": hex::encode(sha.finalize())});
        Response::builder()
            .header("content-type", "application/json")
            .header("x-guest", "yes")
            .body(Body::from(out.to_string()))
            .unwrap()
    });
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// A stub whose tunnels reach this test's loopback servers.
fn tunnels_to_loopback(f: &Fuse) {
    f.default_stub()
        .set_tunnel_host(Some("127.0.0.1".parse().unwrap()));
}

async fn create_with_ports(f: &Fuse, task: &str, expose: Value) -> Value {
    let r = f
        .post(
            "/v1/environments",
            json!({"task_id": task, "expose": expose}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    r.body
}

#[tokio::test]
async fn path_based_requests_reach_the_guest_with_their_path_headers_and_streamed_bodies() {
    let f = start().await;
    tunnels_to_loopback(&f);
    let guest = guest_server().await;
    let port = guest.port();
    let env = create_with_ports(&f, "web", json!([{"port": port, "as": "web"}])).await;
    let ep = &env["endpoints"][0];
    let want = format!("/v1/environments/fuse-web/ports/{port}/");
    assert_eq!(ep["proxy_url"], want, "{env}");
    assert_eq!(ep["url"], want, "relative without FUSE_PUBLIC_URL: {env}");
    assert_eq!(ep["public"], false);
    assert!(
        ep["forward_url"].as_str().unwrap().starts_with("tcp://"),
        "{env}"
    );
    let url = format!("{}{want}a/b?x=1&y=2", f.base);
    let r = f
        .http
        .get(&url)
        .header("x-custom", "kept")
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "dropped")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["x-guest"], "yes");
    let seen: Value = r.json().await.unwrap();
    assert_eq!(seen["uri"], "/a/b?x=1&y=2", "{seen}");
    let h = &seen["headers"];
    assert_eq!(h["x-custom"], "kept", "{seen}");
    assert!(
        h.get("x-hop").is_none(),
        "a header Connection names is hop-by-hop: {seen}"
    );
    assert_eq!(
        h["x-forwarded-prefix"],
        format!("/v1/environments/fuse-web/ports/{port}")
    );
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert!(h["x-forwarded-host"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
    // An open API (no ORCH_AUTH_TOKEN) opens private ports too; an Authorization header
    // that is none of ours is the guest's.
    let seen: Value = f
        .http
        .get(&url)
        .header("authorization", "Bearer the-apps-own")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        seen["headers"]["authorization"], "Bearer the-apps-own",
        "{seen}"
    );
    // The port's root, with and without the slash.
    for root in [
        format!("{}{want}", f.base),
        format!("{}{}", f.base, want.trim_end_matches('/')),
    ] {
        let seen: Value = f
            .http
            .get(&root)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(seen["uri"], "/", "{root}");
    }
    // A body three times the API's body limit (1 MiB here) streams through.
    let big: Vec<u8> = (0..3 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    let r = f
        .http
        .put(format!("{}{want}upload", f.base))
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let seen: Value = r.json().await.unwrap();
    assert_eq!(seen["method"], "PUT");
    assert_eq!(seen["len"], big.len());
    assert_eq!(seen["sha256"], hex::encode(Sha256::digest(&big)));
    // A response streams: its first chunk arrives while the guest still writes.
    let t0 = Instant::now();
    let mut r = f
        .http
        .get(format!("{}{want}stream", f.base))
        .send()
        .await
        .unwrap();
    let first = r.chunk().await.unwrap().unwrap();
    let first_at = t0.elapsed();
    assert_eq!(&first[..], b"first\n");
    assert!(
        first_at < Duration::from_millis(800),
        "first chunk after {first_at:?}"
    );
    let rest = r.chunk().await.unwrap().unwrap();
    assert_eq!(&rest[..], b"last\n");
    assert!(t0.elapsed() >= Duration::from_millis(900));
}

#[tokio::test]
async fn an_upgrade_is_bridged_both_ways() {
    let f = start().await;
    tunnels_to_loopback(&f);
    let port = guest_server().await.port();
    create_with_ports(&f, "up", json!([{"port": port}])).await;
    let addr = f.running.addr;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "GET /v1/environments/fuse-up/ports/{port}/upgrade HTTP/1.1\r\nHost: {addr}\r\n\
         Connection: Upgrade\r\nUpgrade: echo\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut buf).await.unwrap();
        assert!(
            n > 0,
            "closed before the head: {}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 101"), "{text}");
    assert!(text.contains("upgrade: echo"), "{text}");
    for msg in [&b"hello"[..], &b"\x00\x01binary\xff"[..]] {
        s.write_all(msg).await.unwrap();
        let mut back = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut back))
            .await
            .expect("echo in time")
            .unwrap();
        assert_eq!(back, msg);
    }
}

#[tokio::test]
async fn private_ports_need_a_token_public_ones_do_not() {
    let mut flags = test_flags();
    flags.auth_token = MASTER.into();
    let f = start_with(flags).await;
    tunnels_to_loopback(&f);
    let port = guest_server().await.port();
    let public = guest_server().await.port();
    let env = create_with_ports(
        &f,
        "priv",
        json!([{"port": port}, {"port": public, "public": true}]),
    )
    .await;
    let traffic = env["traffic_token"].as_str().unwrap().to_owned();
    assert_eq!(traffic.len(), 64, "{env}");
    assert_eq!(env["endpoints"][1]["public"], true);
    let base = format!("{}/v1/environments/fuse-priv/ports/{port}/p", f.base);
    let anon = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = anon.get(&base).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "unauthorized");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("X-Fuse-Traffic-Token"),
        "{e}"
    );
    for bad in ["wrong", ""] {
        let r = anon
            .get(&base)
            .header("x-fuse-traffic-token", bad)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{bad:?}");
    }
    // The master token: what authenticated the request does not reach the guest.
    let r = anon.get(&base).bearer_auth(MASTER).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let seen: Value = r.json().await.unwrap();
    assert!(seen["headers"].get("authorization").is_none(), "{seen}");
    // An API key.
    let key = f.post("/v1/api-keys", json!({"label": "p"})).await;
    let key = key.body["key"].as_str().unwrap().to_owned();
    let r = anon.get(&base).bearer_auth(&key).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // The traffic token as a header.
    let r = anon
        .get(&base)
        .header("x-fuse-traffic-token", &traffic)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let seen: Value = r.json().await.unwrap();
    assert!(
        seen["headers"].get("x-fuse-traffic-token").is_none(),
        "{seen}"
    );
    // Once in the query (a browser): a redirect without it that sets the cookie.
    let r = anon
        .get(format!("{base}?a=1&fuse_token={traffic}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        r.headers()["location"],
        format!("/v1/environments/fuse-priv/ports/{port}/p?a=1")
    );
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        cookie.starts_with(&format!(
            "fuse_traffic_token={traffic}; Path=/v1/environments/fuse-priv/ports/{port}/; HttpOnly"
        )),
        "{cookie}"
    );
    let r = anon
        .get(&base)
        .header("cookie", format!("theirs=1; fuse_traffic_token={traffic}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let seen: Value = r.json().await.unwrap();
    assert_eq!(seen["headers"]["cookie"], "theirs=1", "{seen}");
    // Another environment's token does not open this one.
    let other = create_with_ports(&f, "other", json!([{"port": port}])).await;
    let r = anon
        .get(&base)
        .header(
            "x-fuse-traffic-token",
            other["traffic_token"].as_str().unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // A public port needs nothing, and its Authorization header is the guest's.
    let r = anon
        .get(format!(
            "{}/v1/environments/fuse-priv/ports/{public}/",
            f.base
        ))
        .header("authorization", "Bearer app-token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let seen: Value = r.json().await.unwrap();
    assert_eq!(seen["headers"]["authorization"], "Bearer app-token");
}

#[tokio::test]
async fn host_based_urls_route_by_name() {
    let mut flags = test_flags();
    flags.proxy_domain = "apps.fuse.test".into();
    flags.public_url = "https://fuse.example.com/".into();
    let f = start_with(flags).await;
    tunnels_to_loopback(&f);
    let port = guest_server().await.port();
    let env = create_with_ports(
        &f,
        "named",
        json!([{"port": port}, {"port": 53, "protocol": "udp"}]),
    )
    .await;
    let ep = &env["endpoints"][0];
    assert_eq!(
        ep["host_url"],
        format!("https://{port}-fuse-named.apps.fuse.test/")
    );
    assert_eq!(ep["url"], ep["host_url"]);
    assert_eq!(
        ep["proxy_url"],
        format!("https://fuse.example.com/v1/environments/fuse-named/ports/{port}/")
    );
    let udp = &env["endpoints"][1];
    assert!(udp["url"].as_str().unwrap().starts_with("udp://"), "{env}");
    assert!(udp.get("proxy_url").is_none(), "{env}");
    let r = f
        .http
        .get(format!("{}/x?y=1", f.base))
        .header("host", format!("{port}-fuse-named.apps.fuse.test"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let seen: Value = r.json().await.unwrap();
    assert_eq!(seen["uri"], "/x?y=1", "{seen}");
    assert!(seen["headers"].get("x-forwarded-prefix").is_none());
    // The API under the control plane's own name is untouched.
    let r = f.get("/v1/environments/fuse-named").await;
    assert_eq!(r.status, StatusCode::OK);
    for (host, code) in [
        ("web-fuse-named.apps.fuse.test", StatusCode::NOT_FOUND),
        ("9-fuse-nobody.apps.fuse.test", StatusCode::NOT_FOUND),
        ("9-fuse-named.apps.fuse.test", StatusCode::NOT_FOUND),
    ] {
        let r = f
            .http
            .get(format!("{}/", f.base))
            .header("host", host)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), code, "{host}");
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["error"]["code"], "not_found", "{host}: {e}");
    }
}

#[tokio::test]
async fn errors_say_what_is_wrong() {
    let f = start().await;
    tunnels_to_loopback(&f);
    let port = guest_server().await.port();
    // A port with nothing listening (bound, then closed).
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    create_with_ports(&f, "err", json!([{"port": port}, {"port": closed}])).await;
    let get = |path: String| {
        let f = &f;
        async move { f.get(&path).await }
    };
    let r = get(format!("/v1/environments/fuse-nobody/ports/{port}/")).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::NOT_FOUND, "not_found"),
        "{}",
        r.text
    );
    let r = get("/v1/environments/fuse-err/ports/9/".into()).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
    assert!(
        r.message().contains("port 9 of environment fuse-err"),
        "{}",
        r.text
    );
    let r = get("/v1/environments/fuse-err/ports/http/".into()).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    let r = get(format!("/v1/environments/fuse-err/ports/{closed}/")).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.text);
    assert_eq!(r.code(), "unavailable");
    assert!(r.message().contains("refused"), "{}", r.text);
    assert_eq!(r.body["error"]["details"]["reason"], "guest_refused");
    // Not running: a destroy in progress.
    f.default_stub().set_destroy_delay(Duration::from_secs(3));
    let base = f.base.clone();
    let http = f.http.clone();
    let del = tokio::spawn(async move {
        http.delete(format!("{base}/v1/environments/fuse-err"))
            .send()
            .await
            .unwrap()
            .status()
    });
    f.eventually("the environment to be destroying", || async {
        f.get("/v1/environments/fuse-err").await.body["state"] == "destroying"
    })
    .await;
    let r = get(format!("/v1/environments/fuse-err/ports/{port}/")).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::CONFLICT, "conflict"),
        "{}",
        r.text
    );
    assert!(r.message().contains("destroying"), "{}", r.text);
    assert_eq!(del.await.unwrap(), StatusCode::NO_CONTENT);
    let r = get(format!("/v1/environments/fuse-err/ports/{port}/")).await;
    assert_eq!(
        r.status,
        StatusCode::NOT_FOUND,
        "an ended environment: {}",
        r.text
    );
}

#[tokio::test]
async fn a_port_is_published_at_runtime() {
    let f = start().await;
    tunnels_to_loopback(&f);
    let port = guest_server().await.port();
    f.create_running("late").await;
    let r = f
        .get(&format!("/v1/environments/fuse-late/ports/{port}/"))
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = f
        .post(
            "/v1/environments/fuse-late?action=expose",
            json!({"port": port, "as": "web", "public": true}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let ep = &r.body["endpoints"][0];
    assert_eq!(
        (
            ep["port"].as_u64(),
            ep["as"].as_str(),
            ep["public"].as_bool()
        ),
        (Some(port as u64), Some("web"), Some(true)),
        "{}",
        r.text
    );
    assert_eq!(
        ep["url"],
        format!("/v1/environments/fuse-late/ports/{port}/")
    );
    assert!(ep["forward_url"].as_str().unwrap().starts_with("tcp://"));
    // Kept on the record, and reachable through the proxy at once.
    assert_eq!(
        f.get("/v1/environments/fuse-late").await.body["endpoints"],
        r.body["endpoints"]
    );
    let r2 = f
        .http
        .get(format!(
            "{}/v1/environments/fuse-late/ports/{port}/hi",
            f.base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r2.status(), StatusCode::OK);
    // The same port again changes its flags, not its forward.
    let again = f
        .post(
            "/v1/environments/fuse-late?action=expose",
            json!({"port": port}),
        )
        .await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.text);
    let eps = again.body["endpoints"].as_array().unwrap();
    assert_eq!(eps.len(), 1, "{}", again.text);
    assert_eq!(eps[0]["public"], false);
    assert_eq!(eps[0]["as"], "web");
    assert_eq!(eps[0]["forward_url"], ep["forward_url"]);
    // UDP is a forward only.
    let u = f
        .post(
            "/v1/environments/fuse-late?action=expose",
            json!({"port": 53, "protocol": "udp"}),
        )
        .await;
    assert_eq!(u.status, StatusCode::OK, "{}", u.text);
    assert!(u.body["endpoints"][1]["url"]
        .as_str()
        .unwrap()
        .starts_with("udp://"));
    for (body, needle) in [
        (json!({"port": 0}), "port must be from 1 to 65535"),
        (json!({"port": 70000}), "port must be from 1 to 65535"),
        (json!({"port": 80, "protocol": "sctp"}), "unknown protocol"),
        (json!({"port": "x"}), "port"),
    ] {
        let r = f
            .post("/v1/environments/fuse-late?action=expose", body.clone())
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {}", r.text);
        assert!(r.message().contains(needle), "{body}: {}", r.text);
    }
    let r = f
        .post(
            "/v1/environments/fuse-nobody?action=expose",
            json!({"port": 80}),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

/// The wildcard certificate answers names under the proxy's domain (SNI), the API's
/// certificate every other name; both on the one TLS listener.
#[tokio::test]
async fn the_wildcard_certificate_answers_the_proxy_domain() {
    let dir = std::env::temp_dir().join(format!("fuse-proxy-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, names: Vec<String>| {
        let ck = rcgen::generate_simple_self_signed(names).unwrap();
        std::fs::write(dir.join(format!("{name}.crt")), ck.cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{name}.key")), ck.key_pair.serialize_pem()).unwrap();
        ck.cert.pem()
    };
    let api_pem = write("api", vec!["fuse.test".into()]);
    let wild_pem = write("wild", vec!["*.apps.fuse.test".into()]);
    let path = |f: &str| dir.join(f).display().to_string();
    let mut flags = test_flags();
    flags.tls_cert = path("api.crt");
    flags.tls_key = path("api.key");
    flags.proxy_domain = "apps.fuse.test".into();
    flags.proxy_tls_cert = path("wild.crt");
    flags.proxy_tls_key = path("wild.key");
    let f = start_with(flags).await;
    tunnels_to_loopback(&f);
    let port = guest_server().await.port();
    let name = format!("{port}-fuse-tls.apps.fuse.test");
    let listen = f.running.addr.port();
    // Each client trusts one certificate only: the handshake shows which one was sent.
    let client = |pem: &str| {
        reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes()).unwrap())
            .tls_built_in_root_certs(false)
            .resolve(&name, f.running.addr)
            .resolve("fuse.test", f.running.addr)
            .build()
            .unwrap()
    };
    let r = client(&api_pem)
        .post(format!("https://fuse.test:{listen}/v1/environments"))
        .json(&json!({"task_id": "tls", "expose": [{"port": port}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let env: Value = r.json().await.unwrap();
    assert_eq!(
        env["endpoints"][0]["host_url"],
        format!("https://{name}:{listen}/"),
        "{env}"
    );
    let r = client(&wild_pem)
        .get(format!("https://{name}:{listen}/p"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let seen: Value = r.json().await.unwrap();
    assert_eq!(seen["uri"], "/p");
    assert_eq!(seen["headers"]["x-forwarded-proto"], "https");
    let r = client(&api_pem)
        .get(format!("https://fuse.test:{listen}/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        client(&api_pem)
            .get(format!("https://{name}:{listen}/p"))
            .send()
            .await
            .is_err(),
        "the API's certificate is not the one sent for the proxy's names"
    );
    let _ = std::fs::remove_dir_all(dir);
}
