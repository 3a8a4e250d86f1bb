//! The HTTP server: the routes, the access token, who a request acts as, and the RPC
//! dispatch of both services.
//!
//! | Route | What |
//! |---|---|
//! | `GET /health` | `204`, no token needed |
//! | `GET /envs` | the sandbox's environment variables (JSON object) |
//! | `POST /init` | sets them, the access token, the default user and workdir |
//! | `GET /files?path=` | a file's bytes, streamed |
//! | `POST /files?path=` | writes files: an `application/octet-stream` body, or `multipart/form-data` parts |
//! | `POST /process.Process/*` | Start, Connect (server streaming), StreamInput (client streaming), List, SendInput, SendSignal, CloseStdin, Update |
//! | `POST /filesystem.Filesystem/*` | Stat, ListDir, MakeDir, Move, Remove, WatchDir (server streaming), CreateWatcher, GetWatcherEvents, RemoveWatcher |

use crate::connect::{self, full, Body, Code, Codec, RpcError};
use crate::fs::{self, Place};
use crate::pb;
use crate::process::{Launch, Processes};
use crate::users::{self, Identity};
use hyper::body::Incoming;
use hyper::{header, Method, Request, Response, StatusCode};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// The envd version this implements, as the SDK's feature checks read it.
pub const ENVD_VERSION: &str = "0.6.4";
/// The default user when a request names none and `/init` set none (E2B's).
pub const DEFAULT_USER: &str = "user";
/// The keep-alive interval of streams when the client asks for none.
const KEEPALIVE: Duration = Duration::from_secs(50);
/// The search path of commands.
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Where the control plane writes envd's configuration (an [`InitRequest`] as JSON, mode
/// 0600), over the VM's private link, before anyone is told the VM exists. Until it is
/// there (or a token was given at start) envd answers nothing but `/health`: an envd that
/// was never configured is not open to whoever reaches the guest first.
pub const CONFIG_PATH: &str = "/run/fuse-envd/config.json";

#[derive(Default)]
struct Init {
    env_vars: BTreeMap<String, String>,
    token: Option<String>,
    default_user: Option<String>,
    default_workdir: Option<String>,
    /// The configuration file's modification time when it was read last.
    read_at: Option<std::time::SystemTime>,
}

impl Init {
    fn apply(&mut self, r: InitRequest) {
        if let Some(v) = r.env_vars {
            self.env_vars = v;
        }
        if let Some(t) = r.access_token.filter(|t| !t.is_empty()) {
            self.token = Some(t);
        }
        if let Some(u) = r.default_user.filter(|u| !u.is_empty()) {
            self.default_user = Some(u);
        }
        if let Some(w) = r.default_workdir.filter(|w| !w.is_empty()) {
            self.default_workdir = Some(w);
        }
    }
}

/// envd's state.
pub struct Envd {
    /// Where guest paths are (`/` in a real guest).
    pub root: PathBuf,
    init: RwLock<Init>,
    /// The commands it runs.
    pub procs: Arc<Processes>,
    polled: fs::Polled,
}

/// `/init`'s body (the fields envd uses; others are ignored).
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct InitRequest {
    /// Variables every command gets.
    pub env_vars: Option<BTreeMap<String, String>>,
    /// The token every request but `/health` must then carry as `X-Access-Token`.
    pub access_token: Option<String>,
    /// The user of requests that name none.
    pub default_user: Option<String>,
    /// The working directory of commands that name none.
    pub default_workdir: Option<String>,
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A plain HTTP error in envd's shape: `{"code": <status>, "message": "…"}`.
pub fn http_error(status: StatusCode, message: impl Into<String>) -> Response<Body> {
    let body = serde_json::json!({"code": status.as_u16(), "message": message.into()});
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(full(body.to_string()))
        .unwrap_or_default()
}

/// The query parameters of a request.
pub fn query(req: &Request<Incoming>) -> BTreeMap<String, String> {
    req.uri()
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default()
}

impl Envd {
    /// envd with guest paths under `root` and, if given, an access token already set.
    pub fn new(root: PathBuf, token: Option<String>) -> Arc<Envd> {
        // A scratch directory every image has (a `process` VM's root starts empty).
        let tmp = root.join("tmp");
        if !tmp.exists() && std::fs::create_dir_all(&tmp).is_ok() {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o1777));
        }
        Arc::new(Envd {
            root,
            init: RwLock::new(Init {
                token,
                ..Default::default()
            }),
            procs: Arc::new(Processes::default()),
            polled: fs::Polled::default(),
        })
    }

    /// Reads the configuration file again if it changed since it was read.
    fn refresh(&self) {
        let file = users::host_path(&self.root, CONFIG_PATH);
        let Ok(modified) = std::fs::metadata(&file).and_then(|m| m.modified()) else {
            return;
        };
        if self.init.read().unwrap_or_else(|e| e.into_inner()).read_at == Some(modified) {
            return;
        }
        let parsed = std::fs::read(&file)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice::<InitRequest>(&b).map_err(|e| e.to_string()));
        let mut init = self.init.write().unwrap_or_else(|e| e.into_inner());
        init.read_at = Some(modified);
        match parsed {
            Ok(r) => init.apply(r),
            Err(e) => eprintln!("fuse-envd: {CONFIG_PATH}: {e}"),
        }
    }

    /// Whether the request may go on: envd is configured and it carries the token.
    fn gate(&self, req: &Request<Incoming>) -> Result<(), (StatusCode, &'static str)> {
        self.refresh();
        let init = self.init.read().unwrap_or_else(|e| e.into_inner());
        let Some(want) = &init.token else {
            return Err((
                StatusCode::SERVICE_UNAVAILABLE,
                "envd has not been configured by the control plane yet",
            ));
        };
        let ok = req
            .headers()
            .get("x-access-token")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| ct_eq(t.as_bytes(), want.as_bytes()));
        if ok {
            Ok(())
        } else {
            Err((
                StatusCode::UNAUTHORIZED,
                "the X-Access-Token header is missing or wrong",
            ))
        }
    }

    /// Who the request acts as (its home made when missing).
    pub fn identity(&self, req: &Request<Incoming>, q: &BTreeMap<String, String>) -> Identity {
        let asked = users::from_basic(
            req.headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok()),
        )
        .or_else(|| q.get("username").filter(|u| !u.is_empty()).cloned());
        let name = asked.unwrap_or_else(|| {
            let init = self.init.read().unwrap_or_else(|e| e.into_inner());
            init.default_user
                .clone()
                .unwrap_or_else(|| DEFAULT_USER.to_owned())
        });
        let id = users::identity(&name);
        let home = users::host_path(&self.root, &id.home);
        if !home.exists() && std::fs::create_dir_all(&home).is_ok() {
            if let Some(a) = &id.account {
                let _ = nix::unistd::chown(
                    &home,
                    Some(nix::unistd::Uid::from_raw(a.uid)),
                    Some(nix::unistd::Gid::from_raw(a.gid)),
                );
            }
        }
        id
    }

    /// Answers one request.
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path().to_owned();
        if path == "/health" {
            return Response::builder()
                .status(StatusCode::NO_CONTENT)
                .body(full(""))
                .unwrap_or_default();
        }
        if let Err((status, msg)) = self.gate(&req) {
            if path.starts_with("/process.") || path.starts_with("/filesystem.") {
                let code = if status == StatusCode::UNAUTHORIZED {
                    Code::Unauthenticated
                } else {
                    Code::Unavailable
                };
                return connect::error_response(&RpcError::new(code, msg));
            }
            return http_error(status, msg);
        }
        match (req.method().clone(), path.as_str()) {
            (Method::GET, "/envs") => {
                let init = self.init.read().unwrap_or_else(|e| e.into_inner());
                let body = serde_json::to_string(&init.env_vars).unwrap_or_default();
                Response::builder()
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(full(body))
                    .unwrap_or_default()
            }
            (Method::POST, "/init") => self.init(req).await,
            (Method::GET, "/files") => crate::files::download(&self, req).await,
            (Method::POST, "/files") => crate::files::upload(&self, req).await,
            (Method::POST, p) if p.starts_with("/process.Process/") => {
                let method = p["/process.Process/".len()..].to_owned();
                self.rpc(req, Service::Process, &method).await
            }
            (Method::POST, p) if p.starts_with("/filesystem.Filesystem/") => {
                let method = p["/filesystem.Filesystem/".len()..].to_owned();
                self.rpc(req, Service::Filesystem, &method).await
            }
            (_, "/envs" | "/init" | "/files") => {
                http_error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
            }
            _ => http_error(StatusCode::NOT_FOUND, format!("no route {path}")),
        }
    }

    async fn init(&self, req: Request<Incoming>) -> Response<Body> {
        let body = match connect::read_unary(req.into_body()).await {
            Ok(b) => b,
            Err(e) => return http_error(StatusCode::BAD_REQUEST, e.message),
        };
        let r: InitRequest = if body.iter().all(u8::is_ascii_whitespace) {
            InitRequest::default()
        } else {
            match serde_json::from_slice(&body) {
                Ok(r) => r,
                Err(e) => {
                    return http_error(StatusCode::BAD_REQUEST, format!("invalid /init body: {e}"))
                }
            }
        };
        self.init
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .apply(r);
        Response::builder()
            .status(StatusCode::NO_CONTENT)
            .body(full(""))
            .unwrap_or_default()
    }

    async fn rpc(
        self: Arc<Self>,
        req: Request<Incoming>,
        svc: Service,
        method: &str,
    ) -> Response<Body> {
        let ct = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let Some((codec, streaming)) = connect::content_type(ct) else {
            return http_error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("content type {ct:?} is not a Connect codec (json or proto)"),
            );
        };
        let keepalive = req
            .headers()
            .get("keepalive-ping-interval")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|s| *s > 0)
            .map(Duration::from_secs)
            .unwrap_or(KEEPALIVE);
        let q = query(&req);
        let who = self.identity(&req, &q);
        let c = Call {
            codec,
            streaming,
            keepalive,
            who,
        };
        match (svc, method) {
            (Service::Process, "Start") => self.start(c, req.into_body()).await,
            (Service::Process, "Connect") => self.connect(c, req.into_body()).await,
            (Service::Process, "StreamInput") => self.stream_input(c, req.into_body()).await,
            (Service::Process, m) => {
                let m = m.to_owned();
                let r = self.process_unary(&c, &m, req.into_body()).await;
                match r {
                    Ok(resp) => resp,
                    Err(e) => connect::error_response(&e),
                }
            }
            (Service::Filesystem, "WatchDir") => self.watch_dir(c, req.into_body()).await,
            (Service::Filesystem, m) => {
                let m = m.to_owned();
                match self.fs_unary(&c, &m, req.into_body()).await {
                    Ok(resp) => resp,
                    Err(e) => connect::error_response(&e),
                }
            }
        }
    }

    /// The running command `sel` names (`not_found` otherwise).
    fn proc_of(
        &self,
        sel: Option<&pb::ProcessSelector>,
    ) -> Result<Arc<crate::process::Proc>, RpcError> {
        self.procs.find(sel).map_err(RpcError::not_found)
    }

    fn launch(&self, c: &Call, r: pb::StartRequest) -> Result<Launch, RpcError> {
        let config = r
            .process
            .ok_or_else(|| RpcError::invalid("StartRequest.process is required"))?;
        if config.cmd.is_empty() {
            return Err(RpcError::invalid("process.cmd must not be empty"));
        }
        // Images without bash (a busybox root): E2B's `/bin/bash -l -c CMD` runs in `sh`.
        let cmd = if config.cmd == "/bin/bash" && !std::path::Path::new("/bin/bash").exists() {
            "/bin/sh".to_owned()
        } else {
            config.cmd.clone()
        };
        let init = self.init.read().unwrap_or_else(|e| e.into_inner());
        let home = users::host_path(&self.root, &c.who.home);
        let mut env = BTreeMap::new();
        env.insert(
            "PATH".to_owned(),
            std::env::var("PATH").unwrap_or_else(|_| PATH.to_owned()),
        );
        env.insert("HOME".to_owned(), home.to_string_lossy().into_owned());
        env.insert("USER".to_owned(), c.who.name.clone());
        env.insert("LOGNAME".to_owned(), c.who.name.clone());
        if let Ok(lang) = std::env::var("LANG") {
            env.insert("LANG".to_owned(), lang);
        }
        env.extend(init.env_vars.clone());
        env.extend(config.envs.clone());
        let cwd_guest = config
            .cwd
            .clone()
            .filter(|c| !c.is_empty())
            .or_else(|| init.default_workdir.clone());
        let cwd = match &cwd_guest {
            Some(p) => {
                let place = Place::of(&self.root, &c.who.home, p);
                if !place.host.is_dir() {
                    return Err(RpcError::invalid(format!(
                        "cwd '{}' does not exist or is not a directory",
                        place.guest
                    )));
                }
                place.host
            }
            None => home,
        };
        env.insert("PWD".to_owned(), cwd.to_string_lossy().into_owned());
        let pty = r
            .pty
            .map(|p| p.size.unwrap_or(pb::PtySize { cols: 80, rows: 24 }));
        Ok(Launch {
            cmd,
            args: config.args.clone(),
            env,
            cwd,
            user: c.who.account.clone(),
            stdin: r.stdin.unwrap_or(false),
            pty,
            config,
            tag: r.tag,
        })
    }

    async fn start(self: Arc<Self>, c: Call, body: Incoming) -> Response<Body> {
        let r: pb::StartRequest = match connect::request(c.codec, c.streaming, body).await {
            Ok(r) => r,
            Err(e) => return connect::error_response(&e),
        };
        let started = self
            .launch(&c, r)
            .and_then(|l| self.procs.start(l).map_err(RpcError::invalid));
        let (proc, rx) = match started {
            Ok(s) => s,
            Err(e) => return connect::error_response(&e),
        };
        let (tx, resp) = connect::stream::<pb::StartResponse>(c.codec);
        tokio::spawn(pump(tx, proc.pid, rx, c.keepalive));
        resp
    }

    async fn connect(self: Arc<Self>, c: Call, body: Incoming) -> Response<Body> {
        let r: pb::SelectRequest = match connect::request(c.codec, c.streaming, body).await {
            Ok(r) => r,
            Err(e) => return connect::error_response(&e),
        };
        let (tx, resp) = connect::stream::<pb::StartResponse>(c.codec);
        match self.procs.find(r.process.as_ref()) {
            Ok(p) => {
                let rx = p.subscribe();
                tokio::spawn(pump(tx, p.pid, rx, c.keepalive));
            }
            Err(e) => {
                tokio::spawn(tx.end(Some(RpcError::not_found(e))));
            }
        }
        resp
    }

    async fn stream_input(self: Arc<Self>, c: Call, body: Incoming) -> Response<Body> {
        let mut env = connect::Envelopes::new(body);
        let mut target = None;
        let result: Result<(), RpcError> = async {
            while let Some(data) = env.next().await? {
                let m: pb::StreamInputRequest = connect::decode(c.codec, &data)?;
                match m.event {
                    Some(pb::StreamInput::Start(s)) => {
                        target = Some(self.proc_of(s.process.as_ref())?);
                    }
                    Some(pb::StreamInput::Data(d)) => {
                        let p = target.clone().ok_or_else(|| {
                            RpcError::invalid("the input stream must start with a start event")
                        })?;
                        write_input(p, d.input).await?;
                    }
                    Some(pb::StreamInput::Keepalive(_)) | None => {}
                }
            }
            Ok(())
        }
        .await;
        if !c.streaming {
            return connect::unary(c.codec, result.map(|_| pb::Empty {}));
        }
        let (tx, resp) = connect::stream::<pb::Empty>(c.codec);
        tokio::spawn(async move {
            match result {
                Ok(()) => {
                    tx.send(&pb::Empty {}).await;
                    tx.end(None).await;
                }
                Err(e) => tx.end(Some(e)).await,
            }
        });
        resp
    }

    async fn process_unary(
        &self,
        c: &Call,
        method: &str,
        body: Incoming,
    ) -> Result<Response<Body>, RpcError> {
        let data = connect::read_unary(body).await?;
        let codec = c.codec;
        match method {
            "List" => Ok(connect::unary(
                codec,
                Ok(pb::ListResponse {
                    processes: self.procs.list(),
                }),
            )),
            "SendInput" => {
                let r: pb::SendInputRequest = connect::decode(codec, &data)?;
                let p = self.proc_of(r.process.as_ref())?;
                write_input(p, r.input).await?;
                Ok(connect::unary(codec, Ok(pb::Empty {})))
            }
            "SendSignal" => {
                let r: pb::SendSignalRequest = connect::decode(codec, &data)?;
                let sig = match r.signal {
                    15 => nix::sys::signal::Signal::SIGTERM,
                    9 => nix::sys::signal::Signal::SIGKILL,
                    other => {
                        return Err(RpcError::invalid(format!(
                            "signal {other} is not one of SIGNAL_SIGTERM, SIGNAL_SIGKILL"
                        )))
                    }
                };
                let p = self.proc_of(r.process.as_ref())?;
                self.procs.signal(&p, sig).map_err(RpcError::internal)?;
                Ok(connect::unary(codec, Ok(pb::Empty {})))
            }
            "CloseStdin" => {
                let r: pb::SelectRequest = connect::decode(codec, &data)?;
                let p = self.proc_of(r.process.as_ref())?;
                p.close_stdin()
                    .map_err(|e| RpcError::new(Code::FailedPrecondition, e))?;
                Ok(connect::unary(codec, Ok(pb::Empty {})))
            }
            "Update" => {
                let r: pb::UpdateRequest = connect::decode(codec, &data)?;
                let p = self.proc_of(r.process.as_ref())?;
                if let Some(size) = r.pty.and_then(|p| p.size) {
                    p.resize(&size)
                        .map_err(|e| RpcError::new(Code::FailedPrecondition, e))?;
                }
                Ok(connect::unary(codec, Ok(pb::Empty {})))
            }
            other => Err(RpcError::new(
                Code::Unimplemented,
                format!("process.Process/{other} is not a method"),
            )),
        }
    }

    async fn fs_unary(
        &self,
        c: &Call,
        method: &str,
        body: Incoming,
    ) -> Result<Response<Body>, RpcError> {
        let data = connect::read_unary(body).await?;
        let codec = c.codec;
        let root = self.root.clone();
        let home = c.who.home.clone();
        let place = move |p: &str| Place::of(&root, &home, p);
        match method {
            "Stat" => {
                let r: pb::PathRequest = connect::decode(codec, &data)?;
                let p = place(&r.path);
                let e = blocking(move || fs::stat(&p)).await?;
                Ok(connect::unary(
                    codec,
                    Ok(pb::EntryResponse { entry: Some(e) }),
                ))
            }
            "ListDir" => {
                let r: pb::ListDirRequest = connect::decode(codec, &data)?;
                let p = place(&r.path);
                let entries = blocking(move || fs::list_dir(&p, r.depth)).await?;
                Ok(connect::unary(codec, Ok(pb::ListDirResponse { entries })))
            }
            "MakeDir" => {
                let r: pb::PathRequest = connect::decode(codec, &data)?;
                let p = place(&r.path);
                let account = c.who.account.clone();
                let e = blocking(move || {
                    let e = fs::make_dir(&p)?;
                    crate::files::own(&p.host, account.as_ref());
                    Ok(e)
                })
                .await?;
                Ok(connect::unary(
                    codec,
                    Ok(pb::EntryResponse { entry: Some(e) }),
                ))
            }
            "Move" => {
                let r: pb::MoveRequest = connect::decode(codec, &data)?;
                let (from, to) = (place(&r.source), place(&r.destination));
                let e = blocking(move || fs::rename(&from, &to)).await?;
                Ok(connect::unary(
                    codec,
                    Ok(pb::EntryResponse { entry: Some(e) }),
                ))
            }
            "Remove" => {
                let r: pb::PathRequest = connect::decode(codec, &data)?;
                let p = place(&r.path);
                blocking(move || fs::remove(&p)).await?;
                Ok(connect::unary(codec, Ok(pb::Empty {})))
            }
            "CreateWatcher" => {
                let r: pb::WatchDirRequest = connect::decode(codec, &data)?;
                let (w, rx) = fs::watch(&place(&r.path), r.recursive, r.include_entry)?;
                let watcher_id = self.polled.create(w, rx);
                Ok(connect::unary(codec, Ok(pb::WatcherId { watcher_id })))
            }
            "GetWatcherEvents" => {
                let r: pb::WatcherId = connect::decode(codec, &data)?;
                let events = self.polled.take(&r.watcher_id)?;
                Ok(connect::unary(codec, Ok(pb::WatcherEvents { events })))
            }
            "RemoveWatcher" => {
                let r: pb::WatcherId = connect::decode(codec, &data)?;
                self.polled.remove(&r.watcher_id)?;
                Ok(connect::unary(codec, Ok(pb::Empty {})))
            }
            other => Err(RpcError::new(
                Code::Unimplemented,
                format!("filesystem.Filesystem/{other} is not a method"),
            )),
        }
    }

    async fn watch_dir(self: Arc<Self>, c: Call, body: Incoming) -> Response<Body> {
        let r: pb::WatchDirRequest = match connect::request(c.codec, c.streaming, body).await {
            Ok(r) => r,
            Err(e) => return connect::error_response(&e),
        };
        let place = Place::of(&self.root, &c.who.home, &r.path);
        let (tx, resp) = connect::stream::<pb::WatchDirResponse>(c.codec);
        match fs::watch(&place, r.recursive, r.include_entry) {
            Err(e) => {
                tokio::spawn(tx.end(Some(e)));
            }
            Ok((w, mut rx)) => {
                tokio::spawn(async move {
                    let _w = w;
                    let start = pb::WatchDirResponse {
                        event: Some(pb::Watch::Start(pb::Empty {})),
                    };
                    if !tx.send(&start).await {
                        return;
                    }
                    let mut tick = tokio::time::interval(c.keepalive);
                    tick.tick().await;
                    loop {
                        let m = tokio::select! {
                            ev = rx.recv() => match ev {
                                Some(ev) => pb::Watch::Filesystem(ev),
                                None => break,
                            },
                            _ = tick.tick() => pb::Watch::Keepalive(pb::Empty {}),
                            _ = tx.closed() => return,
                        };
                        if !tx.send(&pb::WatchDirResponse { event: Some(m) }).await {
                            return;
                        }
                    }
                    tx.end(None).await;
                });
            }
        }
        resp
    }
}

/// A call's codec, kind, keep-alive and caller.
pub struct Call {
    codec: Codec,
    streaming: bool,
    keepalive: Duration,
    who: Identity,
}

#[derive(Clone, Copy)]
enum Service {
    Process,
    Filesystem,
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, RpcError> + Send + 'static,
) -> Result<T, RpcError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| RpcError::internal(format!("worker: {e}")))?
}

async fn write_input(
    p: Arc<crate::process::Proc>,
    input: Option<pb::ProcessInput>,
) -> Result<(), RpcError> {
    let data = match input.and_then(|i| i.input) {
        Some(pb::Input::Stdin(b)) | Some(pb::Input::Pty(b)) => b,
        None => return Ok(()),
    };
    blocking(move || {
        p.write_input(&data)
            .map_err(|e| RpcError::new(Code::FailedPrecondition, e))
    })
    .await
}

/// Sends a command's start, output and end to a stream (keep-alives between), until it
/// ends or the client goes.
async fn pump(
    tx: connect::Sender<pb::StartResponse>,
    pid: u32,
    mut rx: crate::process::Events,
    keepalive: Duration,
) {
    let wrap = |e: pb::Event| pb::StartResponse {
        event: Some(pb::ProcessEvent { event: Some(e) }),
    };
    if !tx
        .send(&wrap(pb::Event::Start(pb::StartEvent { pid })))
        .await
    {
        return;
    }
    let mut tick = tokio::time::interval(keepalive);
    tick.tick().await;
    loop {
        let ev = tokio::select! {
            ev = rx.recv() => ev,
            _ = tick.tick() => Some(pb::Event::Keepalive(pb::Empty {})),
            _ = tx.closed() => return,
        };
        let Some(ev) = ev else {
            break;
        };
        let end = matches!(ev, pb::Event::End(_));
        if !tx.send(&wrap(ev)).await {
            return;
        }
        if end {
            break;
        }
    }
    tx.end(None).await;
}
