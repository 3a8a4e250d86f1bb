//! The fleet: snapshots, templates, hosts, API keys and the status summary.

use crate::api::{enc, Client, Result};
use crate::cli::{ApikeyCmd, HostCmd, IdFormat, Out, SnapshotCmd, TemplateCmd};
use crate::output::{self, cell, table, used};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

fn snapshot_rows(items: &[Value]) -> Vec<Vec<String>> {
    items
        .iter()
        .map(|s| {
            vec![
                cell(&s["id"]),
                cell(&s["vm_id"]),
                cell(&s["state"]),
                cell(&s["kind"]),
                s["size_bytes"]
                    .as_u64()
                    .map(output::bytes)
                    .unwrap_or_else(|| "-".into()),
                cell(&s["created_at"]),
                cell(&s["comment"]),
            ]
        })
        .collect()
}

const SNAP: [&str; 7] = ["ID", "ENV", "STATE", "KIND", "SIZE", "CREATED", "COMMENT"];

fn one(v: &Value, o: Out, header: &[&str], rows: Vec<Vec<String>>) -> Result<()> {
    if !output::doc(v, o.output)? {
        table(header, &rows);
    }
    Ok(())
}

pub async fn snapshot(c: &Client, cmd: SnapshotCmd) -> Result<()> {
    match cmd {
        SnapshotCmd::Create {
            id,
            live,
            comment,
            out,
        } => {
            let mut body = Map::new();
            if live {
                body.insert("live".into(), true.into());
            }
            if let Some(cm) = comment {
                body.insert("comment".into(), cm.into());
            }
            let v = c
                .post(
                    &format!("/v1/environments/{}/snapshots", enc(&id)),
                    Some(Value::Object(body)),
                )
                .await?;
            match out.output {
                IdFormat::Id => println!("{}", cell(&v["id"])),
                IdFormat::Json => println!("{}", serde_json::to_string_pretty(&v)?),
                IdFormat::Yaml => print!("{}", serde_yaml::to_string(&v)?),
            }
        }
        SnapshotCmd::Ls { vm_id, out } => {
            let path = match vm_id {
                Some(v) => format!("/v1/snapshots?vm_id={}", enc(&v)),
                None => "/v1/snapshots".into(),
            };
            let items = c.list_all(&path, "snapshots").await?;
            one(
                &json!({ "snapshots": items }),
                out,
                &SNAP,
                snapshot_rows(&items),
            )?;
        }
        SnapshotCmd::Get(a) => {
            let v = c.get(&format!("/v1/snapshots/{}", enc(&a.id))).await?;
            one(&v, a.out, &SNAP, snapshot_rows(std::slice::from_ref(&v)))?;
        }
        SnapshotCmd::Rm { id } => {
            c.delete(&format!("/v1/snapshots/{}", enc(&id))).await?;
            eprintln!("{id}: deleted");
        }
        SnapshotCmd::Restore { id } => {
            c.post(&format!("/v1/snapshots/{}?action=restore", enc(&id)), None)
                .await?;
            eprintln!("{id}: restored");
        }
    }
    Ok(())
}

fn template_rows(items: &[Value]) -> Vec<Vec<String>> {
    items
        .iter()
        .map(|t| {
            vec![
                cell(&t["name"]),
                cell(&t["state"]),
                cell(&t["host_id"]),
                format!(
                    "{}/{}",
                    cell(&t["spec"]["cpus"]),
                    cell(&t["spec"]["ram_mb"])
                ),
                format!(
                    "{} ready, {} warming, {}/host",
                    t["pool"]["ready"].as_u64().unwrap_or(0),
                    t["pool"]["warming"].as_u64().unwrap_or(0),
                    t["pool"]["per_host"].as_u64().unwrap_or(0)
                ),
                cell(&t["snapshot_id"]),
            ]
        })
        .collect()
}

const TPL: [&str; 6] = ["NAME", "STATE", "HOST", "CPU/MB", "POOL", "SNAPSHOT"];

pub async fn template(c: &Client, cmd: TemplateCmd) -> Result<()> {
    match cmd {
        TemplateCmd::Create {
            name,
            from_env,
            from_snapshot,
            pool,
            out,
        } => {
            let mut body = json!({ "name": name });
            if let Some(e) = from_env {
                body["from_environment"] = e.into();
            }
            if let Some(s) = from_snapshot {
                body["from_snapshot"] = s.into();
            }
            if let Some(p) = pool {
                body["pool"] = json!({ "per_host": p });
            }
            let v = c.post("/v1/templates", Some(body)).await?;
            one(&v, out, &TPL, template_rows(std::slice::from_ref(&v)))?;
        }
        TemplateCmd::Ls(out) => {
            let v = c.get("/v1/templates").await?;
            let items = v["templates"].as_array().cloned().unwrap_or_default();
            one(&v, out, &TPL, template_rows(&items))?;
        }
        TemplateCmd::Get(a) => {
            let v = c.get(&format!("/v1/templates/{}", enc(&a.id))).await?;
            one(&v, a.out, &TPL, template_rows(std::slice::from_ref(&v)))?;
        }
        TemplateCmd::SetPool {
            name,
            per_host,
            out,
        } => {
            let v = c
                .call(
                    reqwest::Method::PATCH,
                    &format!("/v1/templates/{}", enc(&name)),
                    Some(json!({ "pool": { "per_host": per_host } })),
                )
                .await?;
            one(&v, out, &TPL, template_rows(std::slice::from_ref(&v)))?;
        }
        TemplateCmd::Rm { name } => {
            c.delete(&format!("/v1/templates/{}", enc(&name))).await?;
            eprintln!("{name}: deleted");
        }
    }
    Ok(())
}

fn host_rows(items: &[Value]) -> Vec<Vec<String>> {
    items
        .iter()
        .map(|h| {
            let (cap, al) = (&h["capacity"], &h["allocated"]);
            vec![
                cell(&h["id"]),
                cell(&h["state"]),
                cell(&h["backend"]),
                used(&al["cpus"], &cap["cpus"]),
                used(&al["ram_mb"], &cap["ram_mb"]),
                used(&al["vm_count"], &cap["vm_count"]),
                cell(&h["url"]),
                cell(&h["state_reason"]),
            ]
        })
        .collect()
}

const HOST: [&str; 8] = [
    "ID", "STATE", "BACKEND", "CPUS", "RAM_MB", "VMS", "URL", "REASON",
];

fn labels(items: &[String]) -> Result<Map<String, Value>> {
    let mut m = Map::new();
    for kv in items {
        let Some((k, v)) = kv.split_once('=') else {
            return crate::api::usage(format!("--label {kv:?} must be KEY=VALUE"));
        };
        m.insert(k.into(), v.into());
    }
    Ok(m)
}

pub async fn host(c: &Client, cmd: HostCmd) -> Result<()> {
    match cmd {
        HostCmd::Ls(out) => {
            let items = c.list_all("/v1/hosts", "hosts").await?;
            one(&json!({ "hosts": items }), out, &HOST, host_rows(&items))?;
        }
        HostCmd::Get(a) => {
            let v = c.get(&format!("/v1/hosts/{}", enc(&a.id))).await?;
            one(&v, a.out, &HOST, host_rows(std::slice::from_ref(&v)))?;
        }
        HostCmd::Add {
            id,
            agent_url: url,
            agent_token: token,
            region,
            labels: l,
            out,
        } => {
            let mut body = json!({ "id": id, "url": url, "token": token });
            if let Some(r) = region {
                body["region"] = r.into();
            }
            if !l.is_empty() {
                body["labels"] = Value::Object(labels(&l)?);
            }
            let v = c.post("/v1/hosts", Some(body)).await?;
            for w in v["warnings"].as_array().into_iter().flatten() {
                eprintln!("warning: {}", cell(w));
            }
            one(&v, out, &HOST, host_rows(std::slice::from_ref(&v)))?;
        }
        HostCmd::Rm { id } => {
            c.delete(&format!("/v1/hosts/{}", enc(&id))).await?;
            eprintln!("{id}: removed");
        }
        HostCmd::Cordon(a) => {
            let v = c
                .post(&format!("/v1/hosts/{}?action=cordon", enc(&a.id)), None)
                .await?;
            one(&v, a.out, &HOST, host_rows(std::slice::from_ref(&v)))?;
        }
        HostCmd::Uncordon(a) => {
            let v = c
                .post(&format!("/v1/hosts/{}?action=uncordon", enc(&a.id)), None)
                .await?;
            one(&v, a.out, &HOST, host_rows(std::slice::from_ref(&v)))?;
        }
    }
    Ok(())
}

pub async fn apikey(c: &Client, cmd: ApikeyCmd) -> Result<()> {
    let rows = |items: &[Value]| -> Vec<Vec<String>> {
        items
            .iter()
            .map(|k| {
                vec![
                    cell(&k["id"]),
                    cell(&k["label"]),
                    cell(&k["created_at"]),
                    cell(&k["last_used_at"]),
                    cell(&k["revoked_at"]),
                ]
            })
            .collect()
    };
    const H: [&str; 5] = ["ID", "LABEL", "CREATED", "LAST USED", "REVOKED"];
    match cmd {
        ApikeyCmd::Create { label, out } => {
            let body = label.map(|l| json!({ "label": l })).unwrap_or(json!({}));
            let v = c.post("/v1/api-keys", Some(body)).await?;
            if !output::doc(&v, out.output)? {
                table(&H, &rows(std::slice::from_ref(&v)));
                println!("\nkey (shown once): {}", cell(&v["key"]));
            }
        }
        ApikeyCmd::Ls(out) => {
            let v = c.get("/v1/api-keys").await?;
            let items = v["api_keys"].as_array().cloned().unwrap_or_default();
            one(&v, out, &H, rows(&items))?;
        }
        ApikeyCmd::Revoke { id } => {
            c.delete(&format!("/v1/api-keys/{}", enc(&id))).await?;
            eprintln!("{id}: revoked");
        }
    }
    Ok(())
}

/// Counts of `key` over `items`.
fn count_by(items: &[Value], key: &str) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for it in items {
        *m.entry(cell(&it[key])).or_insert(0) += 1;
    }
    m
}

fn counts(m: &BTreeMap<String, u64>) -> String {
    if m.is_empty() {
        return "none".into();
    }
    m.iter()
        .map(|(k, v)| format!("{v} {k}"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub async fn status(c: &Client, out: Out) -> Result<()> {
    let (version, hosts, envs, templates, bg) = futures::try_join!(
        c.get("/v1/version"),
        c.list_all("/v1/hosts", "hosts"),
        c.list_all("/v1/environments", "environments"),
        c.get("/v1/templates"),
        c.get("/v1/debug/background"),
    )?;
    let sum =
        |k: &str, f: &str| -> u64 { hosts.iter().map(|h| h[k][f].as_u64().unwrap_or(0)).sum() };
    let live: Vec<Value> = envs
        .iter()
        .filter(|e| e["state"] != "destroyed")
        .cloned()
        .collect();
    let doc = json!({
        "server": c.base,
        "version": version,
        "hosts": { "by_state": count_by(&hosts, "state"),
                   "cpus": { "allocated": sum("allocated", "cpus"), "capacity": sum("capacity", "cpus") },
                   "ram_mb": { "allocated": sum("allocated", "ram_mb"), "capacity": sum("capacity", "ram_mb") },
                   "vm_count": { "allocated": sum("allocated", "vm_count"), "capacity": sum("capacity", "vm_count") } },
        "environments": { "by_state": count_by(&live, "state") },
        "templates": templates["templates"],
        "background": bg["loops"],
        "dead_letters": bg["dead_letters"].as_array().map(|a| a.len()).unwrap_or(0),
    });
    if output::doc(&doc, out.output)? {
        return Ok(());
    }
    println!(
        "server        {} (fuse {}, api {})",
        c.base,
        cell(&version["version"]),
        cell(&version["api"])
    );
    println!("hosts         {}", counts(&count_by(&hosts, "state")));
    println!(
        "capacity      cpus {}  ram_mb {}  vms {}",
        used(
            &sum("allocated", "cpus").into(),
            &sum("capacity", "cpus").into()
        ),
        used(
            &sum("allocated", "ram_mb").into(),
            &sum("capacity", "ram_mb").into()
        ),
        used(
            &sum("allocated", "vm_count").into(),
            &sum("capacity", "vm_count").into()
        )
    );
    println!("environments  {}", counts(&count_by(&live, "state")));
    let tpl = templates["templates"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let pools: u64 = tpl
        .iter()
        .map(|t| t["pool"]["ready"].as_u64().unwrap_or(0))
        .sum();
    println!("templates     {} ({pools} warm VMs ready)", tpl.len());
    let loops = bg["loops"].as_array().cloned().unwrap_or_default();
    let failing: Vec<String> = loops
        .iter()
        .filter(|l| l["last_outcome"] != "ok" && !l["last_outcome"].is_null())
        .map(|l| format!("{} ({})", cell(&l["name"]), cell(&l["last_error"])))
        .collect();
    println!(
        "background    {} loops, {}",
        loops.len(),
        if failing.is_empty() {
            "all ok".to_owned()
        } else {
            format!("not ok: {}", failing.join(", "))
        }
    );
    println!("dead letters  {}", doc["dead_letters"]);
    Ok(())
}
