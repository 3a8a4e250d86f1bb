//! Bearer token, CIDR allowlist and TLS.

use crate::harness::{start_with, test_flags};
use reqwest::StatusCode;

#[tokio::test]
async fn bearer_token_guards_v1_only() {
    let mut flags = test_flags();
    flags.auth_token = "s3cret-token-0123456789abcdef".into();
    let f = start_with(flags).await;
    let url = format!("{}/v1/environments", f.base);
    let none = f.http.get(&url).send().await.unwrap();
    assert_eq!(none.status(), StatusCode::UNAUTHORIZED);
    let body: serde_json::Value = none.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unauthorized");
    let wrong = f
        .http
        .get(&url)
        .bearer_auth("s3cret-token-0123456789abcdeF")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let short = f.http.get(&url).bearer_auth("s").send().await.unwrap();
    assert_eq!(short.status(), StatusCode::UNAUTHORIZED);
    let basic = f
        .http
        .get(&url)
        .basic_auth("s3cret-token-0123456789abcdef", None::<&str>)
        .send()
        .await
        .unwrap();
    assert_eq!(basic.status(), StatusCode::UNAUTHORIZED);
    let ok = f
        .http
        .get(&url)
        .bearer_auth("s3cret-token-0123456789abcdef")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    for open in ["/health", "/ready", "/metrics", "/openapi.json"] {
        let r = f
            .http
            .get(format!("{}{open}", f.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{open}");
    }
}

#[tokio::test]
async fn cidr_allowlist_is_checked_before_the_token() {
    let mut flags = test_flags();
    flags.allowed_cidrs = "10.0.0.0/8, 192.168.1.1".into();
    flags.auth_token = "tok-0123456789abcdef".into();
    let f = start_with(flags).await;
    let r = f
        .http
        .get(format!("{}/v1/hosts", f.base))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::FORBIDDEN,
        "403 even without a token"
    );
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "forbidden");
    assert_eq!(
        f.http
            .get(format!("{}/health", f.base))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    let mut flags = test_flags();
    flags.allowed_cidrs = "127.0.0.0/8".into();
    let f = start_with(flags).await;
    let r = f
        .http
        .get(format!("{}/v1/hosts", f.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn tls_serves_https_with_the_given_certificate() {
    let dir = std::env::temp_dir().join(format!("fuse-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert_pem = ck.cert.pem();
    std::fs::write(dir.join("cert.pem"), &cert_pem).unwrap();
    std::fs::write(dir.join("key.pem"), ck.key_pair.serialize_pem()).unwrap();
    let mut flags = test_flags();
    flags.tls_cert = dir.join("cert.pem").display().to_string();
    flags.tls_key = dir.join("key.pem").display().to_string();
    let f = start_with(flags).await;
    let port = f.running.addr.port();
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert_pem.as_bytes()).unwrap())
        .resolve("localhost", f.running.addr)
        .build()
        .unwrap();
    let r = client
        .get(format!("https://localhost:{port}/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()["status"], "ok");
    // Plain HTTP on the TLS port does not get an answer it could mistake for success.
    let plain = reqwest::get(format!("http://127.0.0.1:{port}/health")).await;
    assert!(plain.map(|r| !r.status().is_success()).unwrap_or(true));
    let _ = std::fs::remove_dir_all(dir);
}
