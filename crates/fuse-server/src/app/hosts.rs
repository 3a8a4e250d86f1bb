//! Host registration, listing, cordon/uncordon and deletion (DESIGN §4). A host that does
//! not answer at registration is accepted with a warning and stays `unreachable` (not
//! schedulable) until the host monitor sees it answer. Registration makes the control plane
//! call the given URL with the given token, so link-local URLs (cloud metadata) are refused
//! unless allowed (`host_addr`).

use super::error::AppError;
use super::App;
use crate::config::check_http_url;
use fuse_store::{AuditEvent, HostRecord, HostUpsert};
use fuse_types::{HostId, HostState, RegisterHost};

fn parse_host_id(id: &str) -> Result<HostId, AppError> {
    HostId::parse(id).map_err(|e| AppError::invalid(e.0))
}

impl App {
    /// Registers or updates a host.
    pub async fn host_register(&self, req: RegisterHost) -> Result<HostRecord, AppError> {
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
        if let Some(c) = &req.capacity {
            if c.cpus == 0 || c.ram_mb == 0 || c.storage_gb == 0 || c.vm_count == 0 {
                errs.push("capacity: cpus, ram_mb, storage_gb and vm_count must all be positive when capacity is given".into());
            }
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
        let (capacity, state, reason, seen) = match &health {
            Ok(h) => (
                req.capacity.unwrap_or(h.capacity),
                HostState::Active,
                None,
                true,
            ),
            Err(e) => {
                tracing::warn!(host_id = %id, url = %url, error = %e,
                    "host did not answer at registration; accepted as unreachable");
                (
                    req.capacity
                        .or(existing.as_ref().map(|h| h.capacity))
                        .unwrap_or_default(),
                    HostState::Unreachable,
                    Some(format!(
                        "did not answer at registration: {}",
                        e.client_message()
                    )),
                    false,
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
                capacity,
                initial_state: state,
                initial_reason: reason,
                seen,
            })
            .await?;
        self.providers.install(&rec);
        tracing::info!(host_id = %rec.id, created, state = %rec.state, "host registered");
        Ok(rec)
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
