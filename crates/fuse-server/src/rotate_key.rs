//! `fuse rotate-key`: validates its flags ([`RotateKeyConfig`]), re-seals every stored
//! secret under a new key through the store's one-transaction rotation
//! ([`fuse_store::rotate_key`]) and says what it did. The store refuses while any `fuse`
//! process is connected, and when the old key does not open the data; then nothing has
//! changed.

use crate::config::{is_postgres_url, parse_key, ConfigError, Flags, RotateKeyFlags};
use fuse_store::crypto::Cipher;
use fuse_store::{RotateError, Rotated};

/// The validated configuration of `fuse rotate-key`.
#[derive(Debug, Clone)]
pub struct RotateKeyConfig {
    /// Postgres URL.
    pub database_url: String,
    /// The key the data is sealed with now.
    pub old_key: [u8; 32],
    /// The key to seal it with.
    pub new_key: [u8; 32],
}

impl RotateKeyConfig {
    /// Validates the flags `rotate-key` uses (the serving flags are not looked at), listing
    /// every problem.
    pub fn from_flags(f: &Flags, r: &RotateKeyFlags) -> Result<RotateKeyConfig, ConfigError> {
        let mut errs = Vec::new();
        if f.database_url.is_empty() {
            errs.push("DATABASE_URL: rotate-key needs the database".to_owned());
        } else if !is_postgres_url(&f.database_url) {
            errs.push("DATABASE_URL: must start with postgres:// or postgresql://".into());
        }
        let mut key = |name: &str, v: &str| -> Option<[u8; 32]> {
            if v.is_empty() {
                errs.push(format!("{name}: rotate-key needs it (64 hex characters)"));
                return None;
            }
            let k = parse_key(v);
            if k.is_none() {
                errs.push(format!(
                    "{name}: must be exactly 64 hex characters (got {} characters)",
                    v.len()
                ));
            }
            k
        };
        let old = key("TOKEN_ENCRYPTION_KEY", &f.token_encryption_key);
        let new = key("TOKEN_ENCRYPTION_KEY_NEW", &r.new_key);
        if old.is_some() && old == new {
            errs.push("TOKEN_ENCRYPTION_KEY_NEW: is the same key as TOKEN_ENCRYPTION_KEY".into());
        }
        match (old, new) {
            (Some(old_key), Some(new_key)) if errs.is_empty() => Ok(RotateKeyConfig {
                database_url: f.database_url.clone(),
                old_key,
                new_key,
            }),
            _ => Err(ConfigError(errs)),
        }
    }
}

/// Runs the rotation.
pub async fn run(cfg: &RotateKeyConfig) -> Result<Rotated, RotateError> {
    let old = Cipher::new(&cfg.old_key);
    let new = Cipher::new(&cfg.new_key);
    fuse_store::rotate_key(&cfg.database_url, &old, &new).await
}

/// The lines printed after a rotation: counts, what could not be re-sealed, what to do now.
pub fn report(r: &Rotated) -> Vec<String> {
    let mut out = Vec::new();
    if !r.migrations.is_empty() {
        out.push(format!("applied migrations {:?}", r.migrations));
    }
    out.push(format!(
        "re-sealed {} VM secret(s), {} host token(s) and the key check under the new key, in one transaction{}",
        r.vm_secrets,
        r.host_tokens,
        if r.had_check {
            ""
        } else {
            " (the database had no key check; the old key was verified on its secrets)"
        }
    ));
    for (what, ids) in [("VM", &r.unreadable_vms), ("host", &r.unreadable_hosts)] {
        if !ids.is_empty() {
            out.push(format!(
                "left {} {what} secret(s) as they were: the old key does not open them (sealed with an earlier key): {}",
                ids.len(),
                ids.join(", ")
            ));
        }
    }
    out.push(
        "start fuse with TOKEN_ENCRYPTION_KEY set to the new key; the old key no longer starts it"
            .into(),
    );
    out
}

/// The exit code of a refused or failed rotation: 2 when the inputs are wrong or replicas
/// are running (fix and run again), 1 when the database failed.
pub fn exit_code(e: &RotateError) -> u8 {
    match e {
        RotateError::OldKey(_) | RotateError::InUse { .. } => 2,
        RotateError::Store(_) => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Command;
    use clap::Parser as _;

    fn flags(args: &[&str]) -> Flags {
        let mut all = vec!["fuse"];
        all.extend_from_slice(args);
        Flags::try_parse_from(all).unwrap()
    }

    #[test]
    fn no_subcommand_serves_and_rotate_key_is_validated_on_its_own() {
        assert!(flags(&[]).command.is_none());
        let a = "aa".repeat(32);
        let b = "bb".repeat(32);
        // The global flags may come after the subcommand; serving flags are not validated.
        let f = flags(&[
            "--listen",
            "nonsense",
            "rotate-key",
            "--database-url",
            "postgres://h/db",
            "--token-encryption-key",
            &a,
            "--new-key",
            &b,
        ]);
        let Some(Command::RotateKey(r)) = &f.command else {
            panic!("{f:?}");
        };
        let c = RotateKeyConfig::from_flags(&f, r).unwrap();
        assert_eq!((c.old_key, c.new_key), ([0xaa; 32], [0xbb; 32]));
        let same = flags(&["rotate-key", "--token-encryption-key", &a, "--new-key", &a]);
        let Some(Command::RotateKey(r)) = &same.command else {
            panic!("{same:?}");
        };
        let err = RotateKeyConfig::from_flags(&same, r)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("DATABASE_URL: rotate-key needs the database"),
            "{err}"
        );
        assert!(err.contains("same key"), "{err}");
        let none = flags(&["rotate-key", "--new-key", "abc"]);
        let Some(Command::RotateKey(r)) = &none.command else {
            panic!("{none:?}");
        };
        let err = RotateKeyConfig::from_flags(&none, r).unwrap_err();
        assert_eq!(err.0.len(), 3, "{err}");
    }

    #[test]
    fn the_report_gives_counts_and_what_was_left() {
        let r = Rotated {
            vm_secrets: 3,
            host_tokens: 2,
            had_check: true,
            unreadable_vms: vec!["fuse-a".into()],
            unreadable_hosts: vec![],
            migrations: vec![],
        };
        let text = report(&r).join("\n");
        assert!(text.contains("re-sealed 3 VM secret(s), 2 host token(s) and the key check"));
        assert!(text.contains("left 1 VM secret(s) as they were"));
        assert!(text.contains("fuse-a"));
        assert!(!text.contains("host secret"));
        assert_eq!(exit_code(&RotateError::InUse { sessions: 1 }), 2);
    }
}
