//! Egress rules through the API (issue 12): `egress` at create, checked entry by entry with
//! every problem in one 400, stored with the environment and reported in its `egress`
//! (the SDK's `EgressStatus` shape, with `allow` and `deny` besides); `PUT
//! /v1/environments/{id}/egress` replaces them live on the host; a host whose agent does not
//! advertise `egress` is refused rules other than the defaults with a clear message. On the
//! memory store, and on Postgres with `FUSE_API_STORE=postgres`.

use crate::harness::start;
use reqwest::{Method, StatusCode};
use serde_json::json;

#[tokio::test]
async fn egress_rules_are_checked_stored_reported_and_replaced_live() {
    let f = start().await;
    // The default: direct, nothing listed, nothing sent to the host.
    let env = f.create_running("eg-default").await;
    assert_eq!(
        env["egress"],
        json!({"mode": "direct", "provider": "", "protocol": "", "endpoint": "",
               "allow": [], "deny": []})
    );
    assert_eq!(
        f.default_stub().vm("fuse-eg-default").unwrap().spec.egress,
        None
    );
    // `direct` as the Go clients send it is the default too.
    let r = f
        .post(
            "/v1/environments",
            json!({"task_id": "eg-direct", "egress": {"mode": "direct"}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.body["egress"]["mode"], "direct");

    // An allowlist: canonical spellings, duplicates gone, sent to the host at create.
    let r = f
        .post(
            "/v1/environments",
            json!({"task_id": "eg-list", "egress": {"mode": "allowlist",
                "allow": ["API.Example.com.", "*.pypi.org", "10.1.0.0/16", "2001:db8::/32", "api.example.com"],
                "deny": ["10.1.2.3", "evil.pypi.org"]}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let want = json!({"mode": "allowlist", "provider": "", "protocol": "", "endpoint": "",
        "allow": ["api.example.com", "*.pypi.org", "10.1.0.0/16", "2001:db8::/32"],
        "deny": ["10.1.2.3/32", "evil.pypi.org"]});
    assert_eq!(r.body["egress"], want);
    assert_eq!(
        f.get("/v1/environments/fuse-eg-list").await.body["egress"],
        want
    );
    let sent = f
        .default_stub()
        .vm("fuse-eg-list")
        .unwrap()
        .spec
        .egress
        .unwrap();
    assert_eq!(sent.mode, fuse_types::EgressMode::Allowlist);
    assert_eq!(sent.deny, ["10.1.2.3/32", "evil.pypi.org"]);
    // The list shows them too.
    let list = f.get("/v1/environments?task_id=eg-list").await;
    assert_eq!(list.body["environments"][0]["egress"], want);

    // Every problem of a request in one 400, each naming its entry.
    let r = f
        .post(
            "/v1/environments",
            json!({"task_id": "eg-bad", "egress": {"mode": "allowlist",
                "allow": ["10.0.0.1/8", "not a name", "*.", "300.0.0.0/8"],
                "deny": ["localhost"]}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    let m = r.message();
    for needle in [
        "egress.allow[0]: \"10.0.0.1/8\" has host bits set; the network is 10.0.0.0/8",
        "egress.allow[1]",
        "egress.allow[2]",
        "egress.allow[3]: \"300.0.0.0/8\" is not a CIDR",
        "egress.deny[0]: \"localhost\": a domain name needs at least two labels",
    ] {
        assert!(m.contains(needle), "{needle} in {m}");
    }
    for (egress, needle) in [
        (
            json!({"mode": "sideways"}),
            "egress.mode must be direct, allow-all, deny-all, allowlist or proxy",
        ),
        (
            json!({"mode": "proxy", "provider": "mock"}),
            "egress.mode proxy is not available",
        ),
        (
            json!({"mode": "allow-all", "allow": ["a.test"]}),
            "only used with mode allowlist",
        ),
        (
            json!({"allow": ["a.test"]}),
            "only used with mode allowlist",
        ),
        (
            json!({"mode": "deny-all", "deny": ["a.test"]}),
            "deny-all takes no allow or deny",
        ),
        (
            json!({"mode": "allowlist", "allow": (0..300).map(|i| format!("10.0.{}.{}", i / 256, i % 256)).collect::<Vec<_>>()}),
            "egress.allow: at most 256 entries",
        ),
    ] {
        let r = f
            .post(
                "/v1/environments",
                json!({"task_id": "eg-bad", "egress": egress}),
            )
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{egress}: {}", r.text);
        assert!(r.message().contains(needle), "{egress}: {}", r.message());
        assert_eq!(r.code(), "invalid_argument");
    }
    assert_eq!(
        f.get("/v1/environments/fuse-eg-bad").await.status,
        StatusCode::NOT_FOUND,
        "a refused create leaves nothing"
    );

    // Live: replaced on the host, then stored.
    let path = "/v1/environments/fuse-eg-default/egress";
    let r = f
        .call(Method::PUT, path, Some(json!({"mode": "deny-all"})))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["id"], "fuse-eg-default");
    assert_eq!(r.body["egress"]["mode"], "deny-all");
    let vm = f.default_stub().vm("fuse-eg-default").unwrap();
    assert_eq!(
        (vm.egress_updates, vm.spec.egress.unwrap().mode),
        (1, fuse_types::EgressMode::DenyAll)
    );
    assert_eq!(
        f.get("/v1/environments/fuse-eg-default").await.body["egress"]["mode"],
        "deny-all"
    );
    let r = f
        .call(
            Method::PUT,
            path,
            Some(json!({"mode": "allow-all", "deny": ["169.254.0.0/16", "tracker.test"]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(
        r.body["egress"]["deny"],
        json!(["169.254.0.0/16", "tracker.test"])
    );
    assert_eq!(r.body["egress"]["mode"], "allow-all");
    // Back to the default.
    let r = f
        .call(Method::PUT, path, Some(json!({"mode": "direct"})))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["egress"]["mode"], "direct");
    assert_eq!(r.body["egress"]["deny"], json!([]));
    let vm = f.default_stub().vm("fuse-eg-default").unwrap();
    assert_eq!((vm.egress_updates, vm.spec.egress), (3, None));
    // Refused: bad rules (nothing changes on the host), an unknown environment, an ended one.
    let r = f
        .call(
            Method::PUT,
            path,
            Some(json!({"mode": "allowlist", "allow": ["10.0.0.1/24"]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    assert!(r.message().contains("host bits set"), "{}", r.message());
    assert_eq!(
        f.default_stub()
            .vm("fuse-eg-default")
            .unwrap()
            .egress_updates,
        3
    );
    let r = f
        .call(
            Method::PUT,
            "/v1/environments/fuse-nope/egress",
            Some(json!({"mode": "deny-all"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
    let r = f.call(Method::PUT, path, Some(json!("deny-all"))).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    // Draining still has its VM: rules change; destroyed is gone.
    let r = f
        .post("/v1/environments/fuse-eg-list?action=drain", json!({}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = f
        .call(
            Method::PUT,
            "/v1/environments/fuse-eg-list/egress",
            Some(json!({"mode": "deny-all"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(
        f.delete("/v1/environments/fuse-eg-list").await.status,
        StatusCode::NO_CONTENT
    );
    let r = f
        .call(
            Method::PUT,
            "/v1/environments/fuse-eg-list/egress",
            Some(json!({"mode": "deny-all"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
}

/// A host whose agent predates egress rules (the HTTP stub advertises no features) runs
/// environments with the defaults, and refuses anything else with a message that says why.
#[tokio::test]
async fn a_host_without_the_egress_feature_is_refused_rules_clearly() {
    use fuse_server::provider::{stub::StubProvider, stub_http};
    use std::sync::Arc;
    let f = start().await;
    let (addr, _join) = stub_http::serve(
        "127.0.0.1:0".parse().unwrap(),
        Arc::new(StubProvider::new()),
        "tk",
    )
    .await
    .unwrap();
    let r = f
        .post(
            "/v1/hosts",
            json!({"id": "old", "url": format!("http://{addr}"), "token": "tk"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    f.eventually("host active", || async {
        f.get("/v1/hosts/old").await.body["state"] == "active"
    })
    .await;
    let env = f.create_running("eg-old").await;
    assert_eq!(env["egress"]["mode"], "direct");
    // The defaults are what every host enforces: a PUT of them is fine.
    let r = f
        .call(
            Method::PUT,
            "/v1/environments/fuse-eg-old/egress",
            Some(json!({"mode": "direct"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = f
        .call(
            Method::PUT,
            "/v1/environments/fuse-eg-old/egress",
            Some(json!({"mode": "deny-all"})),
        )
        .await;
    assert!(
        r.status.is_client_error() || r.status.is_server_error(),
        "{}",
        r.text
    );
    assert!(
        r.message().contains("cannot enforce egress rules"),
        "{}",
        r.text
    );
    assert_eq!(
        f.get("/v1/environments/fuse-eg-old").await.body["egress"]["mode"],
        "direct",
        "nothing stored"
    );
    // A create with rules fails there with the reason, and leaves no VM on the host.
    let r = f
        .post(
            "/v1/environments",
            json!({"task_id": "eg-old2", "egress": {"mode": "deny-all"}}),
        )
        .await;
    assert_eq!(r.body["state"], "failed", "{}", r.text);
    assert!(
        r.body["error"]
            .as_str()
            .unwrap()
            .contains("cannot enforce egress rules"),
        "{}",
        r.text
    );
}
