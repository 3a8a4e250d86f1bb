//! API keys, as the Go original has them: `POST /v1/api-keys {label}` answers the raw key
//! once; only its SHA-256 is stored, so a lost key is revoked and replaced, never shown
//! again. A key is a bearer token with fewer rights than the master token
//! (`ORCH_AUTH_TOKEN`): it cannot manage keys and cannot run commands in guests. Every
//! request with a key looks its hash up in the store, so a revoke is refused at once by
//! every replica. `last_used_at` is written at most once a minute per key and replica.

use super::error::AppError;
use super::App;
use fuse_store::ApiKeyRecord;
use fuse_types::{now, ApiKey, CreatedApiKey};
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::time::{Duration, Instant};

/// Who a request authenticated as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// The master token, or no token on a server that requires none.
    Master,
    /// An API key (its id).
    Key(String),
}

impl Caller {
    /// The tenant its snapshots are filed under (empty for the master token).
    pub fn tenant(&self) -> &str {
        match self {
            Caller::Master => "",
            Caller::Key(id) => id,
        }
    }

    /// Refuses anything but the master token for `what`.
    pub fn require_master(&self, what: &str) -> Result<(), AppError> {
        match self {
            Caller::Master => Ok(()),
            Caller::Key(_) => Err(AppError::Forbidden(format!(
                "{what} needs the master token (ORCH_AUTH_TOKEN); an API key cannot"
            ))),
        }
    }
}

/// What a token that is not the master token turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyLookup {
    /// A live key.
    Live(Caller),
    /// A key that was revoked (refused even where no token is required).
    Revoked,
    /// Not a key this control plane made.
    Unknown,
}

/// Raw keys start with this, so they are recognisable in a secret scanner.
const KEY_PREFIX: &str = "fuse_ak_";
/// How often `last_used_at` is written per key.
const TOUCH_EVERY: Duration = Duration::from_secs(60);

fn hash(raw: &str) -> [u8; 32] {
    Sha256::digest(raw.as_bytes()).into()
}

fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut b);
    hex::encode(b)
}

impl App {
    /// Creates a key; the answer carries the raw key, which is not stored.
    pub async fn api_key_create(&self, label: Option<String>) -> Result<CreatedApiKey, AppError> {
        let label = label.unwrap_or_default();
        if label.len() > 256 {
            return Err(AppError::invalid("label must be at most 256 bytes"));
        }
        let raw = format!("{KEY_PREFIX}{}", random_hex(32));
        let rec = ApiKeyRecord {
            id: format!("ak_{}", random_hex(8)),
            label,
            hash: hash(&raw),
            created_at: now(),
            last_used_at: None,
            revoked_at: None,
        };
        self.store.api_key_create(rec.clone()).await?;
        tracing::info!(api_key_id = %rec.id, "api key created");
        Ok(CreatedApiKey {
            meta: rec.to_wire(),
            key: raw,
        })
    }

    /// Every key's metadata, oldest first.
    pub async fn api_key_list(&self) -> Result<Vec<ApiKey>, AppError> {
        Ok(self
            .store
            .api_key_list()
            .await?
            .iter()
            .map(ApiKeyRecord::to_wire)
            .collect())
    }

    /// Revokes a key; it is refused from the next request on.
    pub async fn api_key_revoke(&self, id: &str) -> Result<(), AppError> {
        let k = self.store.api_key_revoke(id).await.map_err(|e| match e {
            fuse_store::StoreError::NotFound { .. } => AppError::not_found("api key", id),
            e => e.into(),
        })?;
        tracing::info!(api_key_id = %k.id, "api key revoked");
        Ok(())
    }

    /// What a bearer token that is not the master token names (one store read, and only
    /// for a token shaped like a key).
    pub async fn api_key_lookup(&self, token: &str) -> Result<KeyLookup, AppError> {
        if !token.starts_with(KEY_PREFIX) {
            return Ok(KeyLookup::Unknown);
        }
        let Some(k) = self.store.api_key_by_hash(&hash(token)).await? else {
            return Ok(KeyLookup::Unknown);
        };
        if k.revoked_at.is_some() {
            return Ok(KeyLookup::Revoked);
        }
        let due = {
            let mut g = self.key_touches.lock();
            let due = g.get(&k.id).is_none_or(|t| t.elapsed() >= TOUCH_EVERY);
            if due {
                g.insert(k.id.clone(), Instant::now());
            }
            due
        };
        if due {
            if let Err(e) = self.store.api_key_touch(&k.id, now()).await {
                tracing::debug!(api_key_id = %k.id, error = %e, "recording api key use");
            }
        }
        Ok(KeyLookup::Live(Caller::Key(k.id)))
    }
}
