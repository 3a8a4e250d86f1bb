//! envd over real HTTP: a server on a loopback port with a temp directory as its root,
//! spoken to by a plain HTTP client in both Connect codecs (the SDK compatibility test
//! drives it with E2B's own SDK).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use fuse_envd::pb;
use prost::Message as _;
use std::path::PathBuf;

const TOKEN: &str = "envd-test-token";

struct Server {
    base: String,
    root: PathBuf,
    http: reqwest::Client,
}

async fn server() -> Server {
    let root = std::env::temp_dir().join(format!("fuse-envd-it-{}", fuse_guest::ops::random_u64()));
    std::fs::create_dir_all(&root).unwrap();
    let envd = fuse_envd::Envd::new(root.clone(), None);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(fuse_envd::serve(envd, l));
    Server {
        base,
        root,
        http: reqwest::Client::new(),
    }
}

impl Server {
    fn configure(&self) {
        let f = fuse_envd::users::host_path(&self.root, fuse_envd::server::CONFIG_PATH);
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        let cfg = serde_json::json!({"accessToken": TOKEN, "envVars": {"FROM_INIT": "yes"}});
        std::fs::write(f, cfg.to_string()).unwrap();
    }

    fn post(&self, path: &str, ct: &str, body: Vec<u8>) -> reqwest::RequestBuilder {
        self.http
            .post(format!("{}{path}", self.base))
            .header("content-type", ct)
            .header("x-access-token", TOKEN)
            .header("connect-protocol-version", "1")
            .body(body)
    }
}

fn envelope(data: &[u8]) -> Vec<u8> {
    let mut v = vec![0u8];
    v.extend((data.len() as u32).to_be_bytes());
    v.extend(data);
    v
}

/// The envelopes of a streaming answer: `(flags, bytes)`.
fn envelopes(mut b: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while b.len() >= 5 {
        let len = u32::from_be_bytes([b[1], b[2], b[3], b[4]]) as usize;
        out.push((b[0], b[5..5 + len].to_vec()));
        b = &b[5 + len..];
    }
    out
}

#[tokio::test]
async fn nothing_but_health_answers_before_the_control_plane_configures_it() {
    let s = server().await;
    let h = s
        .http
        .get(format!("{}/health", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(h.status(), 204);
    let r = s
        .post("/process.Process/List", "application/json", b"{}".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["code"], "unavailable");
    // Nor may anyone configure it over HTTP first.
    let init = s
        .post(
            "/init",
            "application/json",
            br#"{"accessToken":"mine"}"#.to_vec(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(init.status(), 503);

    s.configure();
    let wrong = s
        .http
        .post(format!("{}/process.Process/List", s.base))
        .header("content-type", "application/json")
        .header("x-access-token", "nope")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let ok = s
        .post("/process.Process/List", "application/json", b"{}".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.text().await.unwrap(), r#"{"processes":[]}"#);
    let envs: serde_json::Value = s
        .http
        .get(format!("{}/envs", s.base))
        .header("x-access-token", TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(envs["FROM_INIT"], "yes");
}

#[tokio::test]
async fn a_command_streams_in_binary_protobuf_and_sees_the_init_variables() {
    let s = server().await;
    s.configure();
    let req = pb::StartRequest {
        process: Some(pb::ProcessConfig {
            cmd: "/bin/sh".into(),
            args: vec!["-c".into(), "echo $FROM_INIT; echo bad >&2; exit 4".into()],
            ..Default::default()
        }),
        ..Default::default()
    };
    let r = s
        .post(
            "/process.Process/Start",
            "application/connect+proto",
            envelope(&req.encode_to_vec()),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/connect+proto");
    let frames = envelopes(&r.bytes().await.unwrap());
    let (last_flags, last) = frames.last().unwrap().clone();
    assert_eq!(
        last_flags, 2,
        "the stream ends with an end-of-stream envelope"
    );
    assert_eq!(last, b"{}");
    let mut events = Vec::new();
    for (flags, data) in &frames[..frames.len() - 1] {
        assert_eq!(*flags, 0);
        events.push(
            pb::StartResponse::decode(data.as_slice())
                .unwrap()
                .event
                .unwrap()
                .event
                .unwrap(),
        );
    }
    assert!(matches!(events[0], pb::Event::Start(pb::StartEvent { pid }) if pid > 0));
    let mut out: Vec<u8> = Vec::new();
    let mut err: Vec<u8> = Vec::new();
    for e in &events {
        if let pb::Event::Data(pb::DataEvent { output: Some(o) }) = e {
            match o {
                pb::Output::Stdout(b) => out.extend(b),
                pb::Output::Stderr(b) => err.extend(b),
                pb::Output::Pty(_) => panic!("no terminal was asked for"),
            }
        }
    }
    assert_eq!(out, b"yes\n");
    assert_eq!(err, b"bad\n");
    let Some(pb::Event::End(end)) = events.last() else {
        panic!("no end event: {events:?}");
    };
    assert_eq!((end.exit_code, end.exited), (4, true));
}

#[tokio::test]
async fn unknown_processes_and_paths_are_not_found_in_both_codecs() {
    let s = server().await;
    s.configure();
    let r = s
        .post(
            "/process.Process/SendSignal",
            "application/json",
            br#"{"process":{"pid":999999},"signal":"SIGNAL_SIGKILL"}"#.to_vec(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["code"],
        "not_found"
    );
    let stat = pb::PathRequest {
        path: "/nope".into(),
    };
    let r = s
        .post(
            "/filesystem.Filesystem/Stat",
            "application/proto",
            stat.encode_to_vec(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    // A streaming call fails inside its stream, with status 200.
    let connect = serde_json::to_vec(&serde_json::json!({"process": {"tag": "none"}})).unwrap();
    let r = s
        .post(
            "/process.Process/Connect",
            "application/connect+json",
            envelope(&connect),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let frames = envelopes(&r.bytes().await.unwrap());
    assert_eq!(frames.len(), 1);
    let end: serde_json::Value = serde_json::from_slice(&frames[0].1).unwrap();
    assert_eq!(end["error"]["code"], "not_found");
}

#[tokio::test]
async fn files_go_up_as_octet_stream_or_form_and_come_back_whole() {
    let s = server().await;
    s.configure();
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let r = s
        .post(
            "/files?path=dir/a.bin",
            "application/octet-stream",
            data.clone(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let w: serde_json::Value = r.json().await.unwrap();
    let home = fuse_envd::users::home_of(fuse_envd::server::DEFAULT_USER);
    assert_eq!(w[0]["path"], format!("{home}/dir/a.bin"));
    assert_eq!(w[0]["type"], "file");
    assert!(fuse_envd::users::host_path(&s.root, &format!("{home}/dir/a.bin")).is_file());
    let back = s
        .http
        .get(format!("{}/files?path={home}/dir/a.bin", s.base))
        .header("x-access-token", TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(back.status(), 200);
    assert_eq!(back.bytes().await.unwrap().to_vec(), data);

    let form = b"--XYZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"/tmp/f.txt\"\r\n\r\nform body\r\n--XYZ--\r\n".to_vec();
    let r = s
        .post("/files", "multipart/form-data; boundary=XYZ", form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        std::fs::read(s.root.join("tmp/f.txt")).unwrap(),
        b"form body"
    );
    let missing = s
        .http
        .get(format!("{}/files?path=/nope", s.base))
        .header("x-access-token", TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(
        missing.json::<serde_json::Value>().await.unwrap()["code"],
        404
    );
}

#[tokio::test]
async fn a_gzip_upload_is_written_decompressed() {
    use std::io::Write as _;
    let s = server().await;
    s.configure();
    let plain = b"compressed on the way, plain on disk\n".repeat(1000);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&plain).unwrap();
    let body = gz.finish().unwrap();
    assert!(body.len() < plain.len() / 10);
    let r = s
        .post("/files?path=/tmp/z.txt", "application/octet-stream", body)
        .header("content-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(std::fs::read(s.root.join("tmp/z.txt")).unwrap(), plain);
    let bad = s
        .post(
            "/files?path=/tmp/y.txt",
            "application/octet-stream",
            b"not gzip".to_vec(),
        )
        .header("content-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    assert!(
        !s.root.join("tmp/y.txt").exists(),
        "a failed upload leaves nothing"
    );
    let br = s
        .post(
            "/files?path=/tmp/x.txt",
            "application/octet-stream",
            b"x".to_vec(),
        )
        .header("content-encoding", "br")
        .send()
        .await
        .unwrap();
    assert_eq!(br.status(), 415);
}

#[tokio::test]
async fn an_uploads_metadata_is_kept_on_the_file_and_replaced_by_the_next() {
    let s = server().await;
    s.configure();
    let r = s
        .post(
            "/files?path=/tmp/m.txt",
            "application/octet-stream",
            b"m".to_vec(),
        )
        .header("x-metadata-owner", "alice")
        .header("X-Metadata-Purpose", "test")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let w: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        w[0]["metadata"],
        serde_json::json!({"owner": "alice", "purpose": "test"})
    );
    let stat = |s: &Server| {
        s.post(
            "/filesystem.Filesystem/Stat",
            "application/json",
            br#"{"path": "/tmp/m.txt"}"#.to_vec(),
        )
        .send()
    };
    let st: serde_json::Value = stat(&s).await.unwrap().json().await.unwrap();
    assert_eq!(
        st["entry"]["metadata"],
        serde_json::json!({"owner": "alice", "purpose": "test"}),
        "{st}"
    );
    let r = s
        .post(
            "/files?path=/tmp/m.txt",
            "application/octet-stream",
            b"n".to_vec(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let st: serde_json::Value = stat(&s).await.unwrap().json().await.unwrap();
    assert_eq!(
        st["entry"]["metadata"],
        serde_json::json!({}),
        "an upload without metadata clears it"
    );
}
