//! Environments: create (with live progress from the event stream), list, get, the
//! lifecycle verbs, ports.

use crate::api::{enc, fail, usage, Client, Result, SseReader};
use crate::cli::{
    CreateArgs, DestroyArgs, EnvCmd, ForkArgs, Format, IdFormat, ListArgs, Out, OutId, PortsArgs,
};
use crate::output::{self, cell, table};
use base64::Engine as _;
use serde_json::{json, Map, Value};
use std::io::Write;
use std::time::Instant;

pub async fn env(c: &Client, cmd: EnvCmd) -> Result<u8> {
    match cmd {
        EnvCmd::Create(a) => create(c, *a).await,
        EnvCmd::Ls(a) => list(c, a).await.map(|_| 0),
        EnvCmd::Get(a) => {
            let v = c.get(&format!("/v1/environments/{}", enc(&a.id))).await?;
            show(&v, a.out.output)?;
            Ok(0)
        }
    }
}

/// `K=V` pairs into a map; `K` alone takes `$K` when `from_env`.
fn pairs(items: &[String], what: &str, from_env: bool) -> Result<Map<String, Value>> {
    let mut m = Map::new();
    for it in items {
        match it.split_once('=') {
            Some((k, v)) if !k.is_empty() => {
                m.insert(k.to_owned(), Value::String(v.to_owned()));
            }
            None if from_env && !it.is_empty() => match std::env::var(it) {
                Ok(v) => {
                    m.insert(it.clone(), Value::String(v));
                }
                Err(_) => return usage(format!("{what} {it:?}: ${it} is not set")),
            },
            _ => return usage(format!("{what} {it:?} must be KEY=VALUE")),
        }
    }
    Ok(m)
}

/// The create request the flags describe.
fn create_body(a: &CreateArgs) -> Result<Value> {
    let mut spec = Map::new();
    let mut put = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            spec.insert(k.to_owned(), v);
        }
    };
    put("cpus", a.cpus.map(Value::from));
    put("ram_mb", a.ram_mb.map(Value::from));
    put("storage_gb", a.storage_gb.map(Value::from));
    put("arch", a.arch.clone().map(Value::from));
    put("region", a.region.clone().map(Value::from));
    put("host_id", a.host_id.clone().map(Value::from));
    put("idle_timeout_seconds", a.idle_timeout.map(Value::from));
    put("on_idle", a.on_idle.clone().map(Value::from));
    put("max_runtime_seconds", a.max_runtime.map(Value::from));
    if !a.labels.is_empty() {
        spec.insert(
            "labels".into(),
            Value::Object(pairs(&a.labels, "--label", false)?),
        );
    }
    let task = a.task_id.clone().unwrap_or_else(random_task);
    let mut body = json!({ "task_id": task });
    if !spec.is_empty() {
        body["spec"] = Value::Object(spec);
    }
    if let Some(t) = &a.template {
        body["template"] = t.clone().into();
    }
    if !a.files.is_empty() {
        let mut files = Map::new();
        for f in &a.files {
            let Some((local, guest)) = f.rsplit_once(':') else {
                return usage(format!("--file {f:?} must be LOCAL:GUEST"));
            };
            if !guest.starts_with('/') {
                return usage(format!("--file {f:?}: the guest path must be absolute"));
            }
            let bytes = std::fs::read(local)
                .or_else(|e| fail(format!("--file {f:?}: reading {local}: {e}")))?;
            files.insert(
                guest.to_owned(),
                base64::engine::general_purpose::STANDARD
                    .encode(bytes)
                    .into(),
            );
        }
        body["files"] = Value::Object(files);
    }
    if !a.secrets.is_empty() {
        body["secrets"] = Value::Object(pairs(&a.secrets, "--secret", true)?);
    }
    if let Some(s) = &a.startup {
        let script = match s.strip_prefix('@') {
            Some(path) => std::fs::read_to_string(path)
                .or_else(|e| fail(format!("--startup @{path}: {e}")))?,
            None => s.clone(),
        };
        body["startup_script"] = script.into();
    }
    if !a.expose.is_empty() {
        let mut ports = Vec::new();
        for e in &a.expose {
            ports.push(expose_spec(e, false)?);
        }
        body["expose"] = Value::Array(ports);
    }
    if a.egress.is_some() || !a.allow.is_empty() || !a.deny.is_empty() {
        let mode = a.egress.clone().unwrap_or_else(|| {
            if a.allow.is_empty() {
                "direct".into()
            } else {
                "allowlist".into()
            }
        });
        body["egress"] = json!({ "mode": mode, "allow": a.allow, "deny": a.deny });
    }
    Ok(body)
}

/// `PORT` or `PORT/udp` as an expose entry.
pub fn expose_spec(e: &str, public: bool) -> Result<Value> {
    let (port, proto) = e.split_once('/').unwrap_or((e, "tcp"));
    let Ok(port) = port.parse::<u16>() else {
        return usage(format!(
            "--expose {e:?}: a port is a number 1-65535 (PORT or PORT/udp)"
        ));
    };
    let mut v = json!({ "port": port, "protocol": proto });
    if public {
        v["public"] = true.into();
    }
    Ok(v)
}

fn random_task() -> String {
    let mut b = [0u8; 4];
    let _ = std::fs::File::open("/dev/urandom").and_then(|mut f| {
        use std::io::Read;
        f.read_exact(&mut b)
    });
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("cli-{:08x}", u32::from_le_bytes(b) ^ nanos)
}

async fn create(c: &Client, a: CreateArgs) -> Result<u8> {
    let body = create_body(&a)?;
    let started = Instant::now();
    let env = c.post("/v1/environments?wait=false", Some(body)).await?;
    let id = env["id"].as_str().unwrap_or_default().to_owned();
    let env = if a.no_wait {
        env
    } else {
        follow_until_settled(c, &id, started).await?
    };
    print_id(&env, a.out)?;
    if env["state"] == "failed" {
        return fail(format!(
            "{id} failed: {}",
            env["error"].as_str().unwrap_or("no reason recorded")
        ));
    }
    Ok(0)
}

/// Follows an environment's events until it is no longer provisioning, showing each
/// state and the time taken on standard error; the environment as it ended up.
pub async fn follow_until_settled(c: &Client, id: &str, started: Instant) -> Result<Value> {
    let tty = output::stderr_tty();
    let resp = c
        .send(c.request(
            reqwest::Method::GET,
            &format!("/v1/environments/{}/events", enc(id)),
        ))
        .await?;
    let mut rd = SseReader::new(resp);
    let mut last = String::new();
    let mut ticker = tokio::time::interval(std::time::Duration::from_millis(200));
    let progress = |state: &str, final_line: bool| {
        let secs = started.elapsed().as_secs_f64();
        let mut err = std::io::stderr();
        if tty {
            let _ = write!(err, "\r\x1b[2K{id}: {state} ({secs:.1}s)");
            if final_line {
                let _ = writeln!(err);
            }
        } else {
            let _ = writeln!(err, "{id}: {state} ({secs:.1}s)");
        }
        let _ = err.flush();
    };
    loop {
        tokio::select! {
            ev = rd.next() => {
                let Some(ev) = ev? else { break };
                if ev.name != "message" {
                    continue;
                }
                let v: Value = serde_json::from_str(&ev.data).unwrap_or(Value::Null);
                let Some(state) = v["state"].as_str() else { continue };
                let settled = state != "provisioning";
                if state != last || settled {
                    progress(state, settled);
                    last = state.to_owned();
                }
                if settled {
                    break;
                }
            }
            _ = ticker.tick(), if tty && !last.is_empty() => progress(&last, false),
        }
    }
    c.get(&format!("/v1/environments/{}", enc(id))).await
}

fn print_id(v: &Value, o: OutId) -> Result<()> {
    match o.output {
        IdFormat::Id => println!("{}", v["id"].as_str().unwrap_or_default()),
        IdFormat::Json => println!("{}", serde_json::to_string_pretty(v)?),
        IdFormat::Yaml => print!("{}", serde_yaml::to_string(v)?),
    }
    Ok(())
}

fn row(e: &Value, wide: bool) -> Vec<String> {
    let s = &e["spec"];
    let mut r = vec![
        cell(&e["id"]),
        cell(&e["state"]),
        cell(&e["host_id"]),
        format!("{}/{}", cell(&s["cpus"]), cell(&s["ram_mb"])),
        cell(&e["created_at"]),
    ];
    if wide {
        r.push(cell(&e["task_id"]));
        r.push(cell(&e["url"]));
        r.push(
            e["endpoints"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|p| cell(&p["port"]))
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "-".into()),
        );
        r.push(cell(&e["error"]));
    }
    r
}

const HEADER: [&str; 5] = ["ID", "STATE", "HOST", "CPU/MB", "CREATED"];
const WIDE: [&str; 4] = ["TASK", "URL", "PORTS", "ERROR"];

fn show(v: &Value, f: Format) -> Result<()> {
    if output::doc(v, f)? {
        return Ok(());
    }
    let wide = f == Format::Wide;
    let mut h: Vec<&str> = HEADER.to_vec();
    if wide {
        h.extend(WIDE);
    }
    table(&h, &[row(v, wide)]);
    Ok(())
}

async fn list(c: &Client, a: ListArgs) -> Result<()> {
    let mut q = Vec::new();
    for (k, v) in [
        ("state", &a.state),
        ("host_id", &a.host),
        ("task_id", &a.task_id),
    ] {
        if let Some(v) = v {
            q.push(format!("{k}={}", enc(v)));
        }
    }
    let path = if q.is_empty() {
        "/v1/environments".to_owned()
    } else {
        format!("/v1/environments?{}", q.join("&"))
    };
    let items = c.list_all(&path, "environments").await?;
    if output::doc(&json!({ "environments": items }), a.out.output)? {
        return Ok(());
    }
    let wide = a.out.output == Format::Wide;
    let mut h: Vec<&str> = HEADER.to_vec();
    if wide {
        h.extend(WIDE);
    }
    let rows: Vec<Vec<String>> = items.iter().map(|e| row(e, wide)).collect();
    table(&h, &rows);
    Ok(())
}

/// `POST /v1/environments/{id}?action=…`, printing the environment.
pub async fn action(c: &Client, id: &str, verb: &str, body: Option<Value>, out: Out) -> Result<u8> {
    let v = c
        .post(&format!("/v1/environments/{}?action={verb}", enc(id)), body)
        .await?;
    show(&v, out.output)?;
    Ok(0)
}

pub async fn fork(c: &Client, a: ForkArgs) -> Result<u8> {
    let mut body = Map::new();
    if let Some(s) = a.snapshot {
        body.insert("reuse_snapshot_id".into(), s.into());
    }
    if let Some(s) = a.comment {
        body.insert("comment".into(), s.into());
    }
    let v = c
        .post(
            &format!("/v1/environments/{}?action=fork", enc(&a.id)),
            Some(Value::Object(body)),
        )
        .await?;
    print_id(&v, a.out)?;
    if v["state"] == "failed" {
        return fail(format!("the fork failed: {}", cell(&v["error"])));
    }
    Ok(0)
}

pub async fn destroy(c: &Client, a: DestroyArgs) -> Result<()> {
    for id in &a.ids {
        c.delete(&format!("/v1/environments/{}", enc(id))).await?;
        eprintln!("{id}: destroyed");
    }
    Ok(())
}

pub async fn ports(c: &Client, a: PortsArgs) -> Result<()> {
    let v = match &a.expose {
        Some(e) => {
            c.post(
                &format!("/v1/environments/{}?action=expose", enc(&a.id)),
                Some(expose_spec(e, a.public)?),
            )
            .await?
        }
        None => c.get(&format!("/v1/environments/{}", enc(&a.id))).await?,
    };
    let eps = v["endpoints"].clone();
    if output::doc(&eps, a.out.output)? {
        return Ok(());
    }
    let rows: Vec<Vec<String>> = eps
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            vec![
                cell(&p["port"]),
                cell(&p["protocol"]),
                cell(&p["public"]),
                cell(&p["url"]),
                cell(&p["forward_url"]),
            ]
        })
        .collect();
    table(&["PORT", "PROTOCOL", "PUBLIC", "URL", "FORWARD"], &rows);
    Ok(())
}
