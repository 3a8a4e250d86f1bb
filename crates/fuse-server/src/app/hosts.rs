//! Host registration, listing, cordon/uncordon and deletion (DESIGN §4). A host that does
//! not answer at registration is accepted with a warning and stays `unreachable` (not
//! schedulable) until the host monitor sees it answer. Registration makes the control plane
//! call the given URL with the given token, so link-local URLs (cloud metadata) are refused
//! unless allowed (`host_addr`).

use super::error::AppError;
use super::App;
use crate::config::check_http_url;
use fuse_store::{capped, AuditEvent, HostRecord, HostUpsert};
use fuse_types::{HostId, HostList, HostState, RegisterHost, Resources};
use std::collections::BTreeMap;

/// Most labels on one host (and selectors in one spec).
pub const MAX_LABELS: usize = 64;

/// Checks a label map: keys 1-63 bytes of `[A-Za-z0-9._/-]`, values at most 256 bytes.
pub fn check_labels(what: &str, labels: &BTreeMap<String, String>, errs: &mut Vec<String>) {
    if labels.len() > MAX_LABELS {
        errs.push(format!("{what}: at most {MAX_LABELS} labels"));
    }
    for (k, v) in labels {
        let ok = (1..=63).contains(&k.len())
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._/-".contains(&b));
        if !ok {
            errs.push(format!(
                "{what}: key {:?} must be 1-63 characters of letters, digits, '.', '_', '/', '-'",
                k.chars().take(70).collect::<String>()
            ));
        }
        if v.len() > 256 {
            errs.push(format!("{what}[{k:?}]: value must be at most 256 bytes"));
        }
    }
}

/// Checks an architecture name (Go's vocabulary: `amd64`, `arm64`, …).
pub fn check_arch(what: &str, arch: &str, errs: &mut Vec<String>) {
    let ok = arch.len() <= 16
        && arch
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if !ok {
        errs.push(format!(
            "{what} must be an architecture name such as amd64 or arm64 (got {:?})",
            arch.chars().take(20).collect::<String>()
        ));
    }
}

/// Where a declared capacity is above what the host reports (the host's value is used).
fn capacity_warnings(declared: Resources, reported: Resources) -> Vec<String> {
    let mut w = Vec::new();
    let mut over = |what: &str, d: u64, r: u64| {
        if d > r {
            w.push(format!(
                "declared capacity.{what} {d} is above the {r} the host reports; {r} is used"
            ));
        }
    };
    over("cpus", declared.cpus.into(), reported.cpus.into());
    over("ram_mb", declared.ram_mb, reported.ram_mb);
    over("storage_gb", declared.storage_gb, reported.storage_gb);
    over(
        "vm_count",
        declared.vm_count.into(),
        reported.vm_count.into(),
    );
    w
}

fn parse_host_id(id: &str) -> Result<HostId, AppError> {
    HostId::parse(id).map_err(|e| AppError::invalid(e.0))
}

impl App {
    /// Registers or updates a host; returns it with the registration's warnings.
    pub async fn host_register(
        &self,
        req: RegisterHost,
    ) -> Result<(HostRecord, Vec<String>), AppError> {
        let mut errs = Vec::new();
        let id = match req.id.as_deref() {
            None | Some("") => {
                errs.push("id is required".to_owned());
                None
            }
            Some(s) => HostId::parse(s).map_err(|e| errs.push(e.0)).ok(),
        };
        if id
            .as_ref()
            .is_some_and(|i| i.as_str() == crate::provider::DEFAULT_HOST)
        {
            errs.push("id \"default\" is reserved for the default provider".into());
        }
        let url = req.url.clone().unwrap_or_default();
        if url.is_empty() {
            errs.push("url is required".into());
        } else if url.starts_with("stub://") {
            if !self.providers.allow_stub_hosts() {
                errs.push(
                    "url: stub:// hosts are only accepted when fuse runs with the stub provider"
                        .into(),
                );
            } else if url.len() <= "stub://".len() {
                errs.push("url: stub:// needs a name, e.g. stub://a".into());
            }
        } else if let Err(e) = check_http_url(&url) {
            errs.push(format!("url: {e}"));
        }
        let region = req.region.clone().unwrap_or_default();
        if region.len() > 64 {
            errs.push("region must be at most 64 characters".into());
        }
        let labels = req.labels.clone().unwrap_or_default();
        check_labels("labels", &labels, &mut errs);
        let declared = req
            .capacity
            .as_ref()
            .map(|c| c.resources())
            .unwrap_or_default();
        let declared_arch = req
            .capacity
            .as_ref()
            .map(|c| c.arch.clone())
            .unwrap_or_default();
        check_arch("capacity.arch", &declared_arch, &mut errs);
        if req.capacity.as_ref().is_some_and(|c| c.gpus > 0) {
            errs.push("capacity.gpus: GPU hosts are not supported yet".into());
        }
        let declared_backend = req.backend.clone().unwrap_or_default();
        if declared_backend.len() > 32 {
            errs.push("backend must be at most 32 characters".into());
        }
        if errs.is_empty() && !url.starts_with("stub://") && !self.config.allow_link_local_hosts {
            if let Err(e) = super::host_addr::check(&url).await {
                errs.push(e.to_string());
            }
        }
        if !errs.is_empty() {
            return Err(AppError::Invalid(errs));
        }
        let id = id.unwrap_or_else(|| unreachable!("errors were empty"));
        let token = req.token.clone().unwrap_or_default();
        let provider = self.providers.build(&url, &token);
        let health = provider.health().await;
        let existing = self.store.host_get(&id).await?;
        let mut warnings = Vec::new();
        let (capacity, state, reason, seen, backend, arch) = match &health {
            Ok(h) => {
                warnings.extend(capacity_warnings(declared, h.capacity));
                if !declared_arch.is_empty() && !h.arch.is_empty() && declared_arch != h.arch {
                    warnings.push(format!(
                        "declared capacity.arch {declared_arch} differs from the host's {}; {} is used",
                        h.arch, h.arch
                    ));
                }
                (
                    capped(h.capacity, declared),
                    HostState::Active,
                    None,
                    true,
                    if h.backend.is_empty() {
                        declared_backend.clone()
                    } else {
                        h.backend.clone()
                    },
                    if h.arch.is_empty() {
                        declared_arch.clone()
                    } else {
                        h.arch.clone()
                    },
                )
            }
            Err(e) => {
                tracing::warn!(host_id = %id, url = %url, error = %e,
                    "host did not answer at registration; accepted as unreachable");
                let why = format!("did not answer at registration: {}", e.client_message());
                warnings.push(format!(
                    "host {why}; it stays unreachable (not schedulable) until it answers"
                ));
                let known = existing.as_ref().map(|h| h.capacity).unwrap_or_default();
                (
                    if declared == Resources::default() {
                        known
                    } else {
                        declared
                    },
                    HostState::Unreachable,
                    Some(why),
                    false,
                    declared_backend.clone(),
                    declared_arch.clone(),
                )
            }
        };
        let (rec, created) = self
            .store
            .host_upsert(HostUpsert {
                id,
                url,
                token,
                region,
                backend,
                arch,
                labels,
                declared,
                capacity,
                initial_state: state,
                initial_reason: reason,
                seen,
            })
            .await?;
        self.providers.install(&rec);
        tracing::info!(host_id = %rec.id, created, state = %rec.state, ?warnings, "host registered");
        Ok((rec, warnings))
    }

    /// Reads one host or 404.
    pub async fn host_get(&self, id: &str) -> Result<HostRecord, AppError> {
        let id = parse_host_id(id)?;
        self.store
            .host_get(&id)
            .await?
            .ok_or_else(|| AppError::not_found("host", &id))
    }

    /// Every host.
    pub async fn host_list(&self) -> Result<Vec<HostRecord>, AppError> {
        Ok(self.store.host_list().await?)
    }

    /// One page of hosts, by id.
    pub async fn host_page(
        &self,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<HostList, AppError> {
        let all = self.store.host_list().await?;
        let (hosts, next_cursor) = super::paging::page(all, |h| h.id.to_string(), limit, cursor)?;
        Ok(HostList {
            hosts: hosts.iter().map(HostRecord::to_wire).collect(),
            next_cursor,
        })
    }

    /// Deletes a host; 409 while environments live there.
    pub async fn host_delete(&self, id: &str) -> Result<(), AppError> {
        let id = parse_host_id(id)?;
        self.store.host_delete(&id).await?;
        self.providers.remove(id.as_str());
        tracing::info!(host_id = %id, "host deleted");
        Ok(())
    }

    /// Stops scheduling on a host; its environments keep running.
    pub async fn host_cordon(&self, id: &str) -> Result<(), AppError> {
        let h = self.host_get(id).await?;
        self.store
            .host_set_state(
                &h.id,
                HostState::Cordoned,
                Some("cordoned by operator".into()),
            )
            .await?;
        Ok(())
    }

    /// Counts a failed boot on `host`; the `quarantine_after`-th in a row (with no
    /// successful boot between, as seen by this replica) cordons it with the reason, an
    /// audit event and a metric. An operator's uncordon lifts it.
    pub async fn count_boot_failure(&self, host: &HostId, error: &str) {
        let limit = self.config.quarantine_after;
        if limit == 0 || host.as_str() == crate::provider::DEFAULT_HOST {
            return;
        }
        let n = {
            let mut g = self.boot_failures.lock();
            let n = g.entry(host.to_string()).or_insert(0);
            *n += 1;
            *n
        };
        if n < limit {
            return;
        }
        let Ok(Some(h)) = self.store.host_get(host).await else {
            return;
        };
        if h.state != HostState::Active {
            return;
        }
        let reason = format!(
            "quarantined: {n} boot failures in a row; last: {}",
            error.chars().take(300).collect::<String>()
        );
        match self
            .store
            .host_set_state(host, HostState::Cordoned, Some(reason.clone()))
            .await
        {
            Ok(_) => {
                self.boot_failures.lock().remove(host.as_str());
                self.metrics
                    .host_quarantines
                    .with_label_values(&[host.as_str()])
                    .inc();
                tracing::error!(host_id = %host, reason = %reason, "host quarantined (cordoned); uncordon it once fixed");
                let _ = self
                    .store
                    .audit_append(AuditEvent {
                        entity_kind: "host",
                        entity_id: host.to_string(),
                        event_type: "quarantined".into(),
                        payload: serde_json::json!({"boot_failures": n, "reason": reason}),
                    })
                    .await;
            }
            Err(e) => tracing::warn!(host_id = %host, error = %e, "could not quarantine host"),
        }
    }

    /// Makes a cordoned host schedulable again.
    pub async fn host_uncordon(&self, id: &str) -> Result<(), AppError> {
        let h = self.host_get(id).await?;
        self.boot_failures.lock().remove(h.id.as_str());
        match h.state {
            HostState::Active => Ok(()),
            HostState::Cordoned => {
                self.store
                    .host_set_state(&h.id, HostState::Active, None)
                    .await?;
                Ok(())
            }
            s => Err(AppError::conflict(format!(
                "host {} is {s}; it becomes active by itself once it answers",
                h.id
            ))),
        }
    }
}
