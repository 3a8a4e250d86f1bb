//! The checks every fault scenario ends with (issue 6):
//!
//! 1. no environment is left `provisioning` or `destroying` past the deadline;
//! 2. `allocated` on every host equals what its live environments use (a paused one: its
//!    disk alone);
//! 3. no VM on a host that the control plane does not track as live there, and every live
//!    environment's VM is on its host (running, or paused for a paused one); nothing else of
//!    a VM (directory, namespace, link, process, NAT rule, a migration's staged files) is
//!    left on the machine, and no migration is in flight;
//! 5. every snapshot a host keeps is one the control plane knows there, and every `ready`
//!    one there is on the host;
//! 4. every transition of every environment is explained in the audit log (an unbroken
//!    chain of `state` events from `provisioning` to its state now, each with a reason).

use crate::harness::FuseProc;
use crate::hosts::Host;
use fuse_store::StateStore as _;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// Every environment, through the API's pages.
pub async fn environments(f: &FuseProc) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/environments?limit=200&cursor={c}"),
            None => "/v1/environments?limit=200".to_owned(),
        };
        let (s, b) = f.get(&path).await;
        assert!(s.is_success(), "listing environments: {s} {b}");
        out.extend(b["environments"].as_array().unwrap().iter().cloned());
        match b["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return out,
        }
    }
}

fn live(state: &str) -> bool {
    matches!(state, "running" | "draining")
}

/// Why the fleet is not consistent yet (empty when it is).
async fn problems(f: &FuseProc, hosts: &[&Host]) -> Vec<String> {
    let mut p = Vec::new();
    let envs = environments(f).await;
    for e in &envs {
        let s = e["state"].as_str().unwrap_or("");
        if matches!(s, "provisioning" | "destroying") {
            p.push(format!("{} still {s}", e["id"]));
        }
    }
    let snaps = {
        let (s, b) = f.get("/v1/snapshots?limit=200").await;
        assert!(s.is_success(), "listing snapshots: {s} {b}");
        b["snapshots"].as_array().cloned().unwrap_or_default()
    };
    for h in hosts {
        let mut want = (0u64, 0u64, 0u64, 0u64);
        let mut tracked = BTreeSet::new();
        let mut paused = BTreeSet::new();
        for e in envs.iter().filter(|e| e["host_id"] == h.id.as_str()) {
            let sp = &e["spec"];
            if live(e["state"].as_str().unwrap_or("")) {
                want.0 += sp["cpus"].as_u64().unwrap();
                want.1 += sp["ram_mb"].as_u64().unwrap();
                want.2 += sp["storage_gb"].as_u64().unwrap();
                want.3 += 1;
                tracked.insert(e["id"].as_str().unwrap().to_owned());
            } else if e["state"] == "paused" {
                want.2 += sp["storage_gb"].as_u64().unwrap();
                tracked.insert(e["id"].as_str().unwrap().to_owned());
                paused.insert(e["id"].as_str().unwrap().to_owned());
            }
        }
        let (s, hb) = f.get(&format!("/v1/hosts/{}", h.id)).await;
        assert!(s.is_success(), "{hb}");
        let a = &hb["allocated"];
        let got = (
            a["cpus"].as_u64().unwrap(),
            a["ram_mb"].as_u64().unwrap(),
            a["storage_gb"].as_u64().unwrap(),
            a["vm_count"].as_u64().unwrap(),
        );
        if got != want {
            p.push(format!(
                "host {}: allocated {got:?} but its live environments use {want:?}",
                h.id
            ));
        }
        let listed = h.vm_states().await;
        let on_host: BTreeSet<String> = listed.iter().map(|(id, _)| id.clone()).collect();
        let running: BTreeSet<String> = listed
            .iter()
            .filter(|(_, s)| s == "running")
            .map(|(id, _)| id.clone())
            .collect();
        for x in on_host.difference(&tracked) {
            p.push(format!(
                "host {}: VM {x} is not tracked as live there",
                h.id
            ));
        }
        let paused_there: BTreeSet<String> = listed
            .iter()
            .filter(|(_, s)| s == "paused")
            .map(|(id, _)| id.clone())
            .collect();
        for x in tracked.difference(&running) {
            if paused.contains(x) && paused_there.contains(x) {
                continue;
            }
            p.push(format!(
                "host {}: environment {x} has no {} VM",
                h.id,
                if paused.contains(x) {
                    "paused"
                } else {
                    "running"
                }
            ));
        }
        for x in running.intersection(&paused) {
            p.push(format!("host {}: paused environment {x} runs there", h.id));
        }
        let staged = std::fs::read_dir(h.dir.join("incoming"))
            .map(|rd| rd.count())
            .unwrap_or(0);
        if staged > 0 {
            p.push(format!("host {}: {staged} staged migration(s) left", h.id));
        }
        let kept = h.snapshots().await;
        let known: BTreeSet<(String, String)> = snaps
            .iter()
            .filter(|s| s["host_id"] == h.id.as_str())
            .map(|s| {
                (
                    s["vm_id"].as_str().unwrap_or("").to_owned(),
                    s["id"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect();
        for k in kept.difference(&known) {
            p.push(format!(
                "host {}: snapshot {k:?} is not known to fuse",
                h.id
            ));
        }
        for s in snaps
            .iter()
            .filter(|s| s["host_id"] == h.id.as_str() && s["state"] == "ready")
        {
            let k = (
                s["vm_id"].as_str().unwrap_or("").to_owned(),
                s["id"].as_str().unwrap_or("").to_owned(),
            );
            if !kept.contains(&k) {
                p.push(format!(
                    "host {}: ready snapshot {k:?} has no files there",
                    h.id
                ));
            }
        }
        let fp = h.footprint();
        let dirs: BTreeSet<String> = fp.dirs.iter().cloned().collect();
        if dirs != on_host {
            p.push(format!(
                "host {}: VM directories {dirs:?} but VMs {on_host:?}",
                h.id
            ));
        }
        let n = on_host.len();
        if fp.netns != n || fp.links != n || fp.procs != running.len() {
            p.push(format!(
                "host {}: {n} VMs but {} namespaces, {} links, {} processes",
                h.id, fp.netns, fp.links, fp.procs
            ));
        }
        for x in &fp.nat_vms {
            if !on_host.contains(x) {
                p.push(format!("host {}: NAT rules left for {x}", h.id));
            }
        }
    }
    p
}

/// Waits up to `limit` for the fleet to be consistent, then asserts it and the audit log.
pub async fn settled(f: &FuseProc, hosts: &[&Host], db: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let p = problems(f, hosts).await;
        if p.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not consistent {} s after the fault:\n  {}\n--- fuse log tail:\n{}",
            limit.as_secs(),
            p.join("\n  "),
            tail(&f.log_text(), 60)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    audit_explains(f, db).await;
}

fn tail(s: &str, lines: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

/// Every environment's state is reached by an unbroken chain of audited transitions.
pub async fn audit_explains(f: &FuseProc, db: &str) {
    let store = fuse_store::PgStore::new(fuse_store::PgOptions::new(
        db,
        Some(crate::harness::cipher()),
    ))
    .unwrap();
    store.prepare().await.unwrap();
    let envs = environments(f).await;
    let mut bad = BTreeMap::new();
    for e in &envs {
        let id = e["id"].as_str().unwrap();
        let events = fuse_store::StateStore::audit_list(&store, id)
            .await
            .unwrap();
        let mut at = None::<String>;
        let mut why = Vec::new();
        for ev in &events {
            match ev.event_type.as_str() {
                "created" => at = Some("provisioning".into()),
                "state" => {
                    let from = ev.payload["from"].as_str().unwrap_or("?");
                    let to = ev.payload["to"].as_str().unwrap_or("?");
                    let reason = ev.payload["reason"].as_str().unwrap_or("");
                    if at.as_deref() != Some(from) {
                        why.push(format!("{from}→{to} but it was {at:?}"));
                    }
                    if reason.is_empty() {
                        why.push(format!("{from}→{to} without a reason"));
                    }
                    at = Some(to.to_owned());
                }
                _ => {}
            }
        }
        let now = e["state"].as_str().unwrap();
        if at.as_deref() != Some(now) {
            why.push(format!("audit ends at {at:?}, environment is {now}"));
        }
        if !why.is_empty() {
            bad.insert(id.to_owned(), why);
        }
    }
    assert!(
        bad.is_empty(),
        "transitions not explained by the audit log: {bad:#?}"
    );
}
