//! `fuse rotate-key`: re-seals every stored secret under a new key through the store's
//! one-transaction rotation ([`fuse_store::rotate_key`]) and says what it did. The store
//! refuses while any `fuse` process is connected, and when the old key does not open the
//! data; then nothing has changed.

use crate::config::RotateKeyConfig;
use fuse_store::crypto::Cipher;
use fuse_store::{RotateError, Rotated};

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
