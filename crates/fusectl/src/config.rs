//! Contexts: named (URL, token) pairs in `$XDG_CONFIG_HOME/fusectl/config.yaml` (else
//! `$HOME/.config/fusectl/config.yaml`), written with mode 0600 since they hold tokens.
//! `--url`/`--token`/`--context` and `FUSE_URL`/`FUSE_TOKEN`/`FUSE_CONTEXT` override it.

use crate::api::{fail, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// One server.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Context {
    pub url: String,
    #[serde(default)]
    pub token: String,
}

/// The file.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Config {
    /// The context used when none is named.
    #[serde(default)]
    pub current: String,
    #[serde(default)]
    pub contexts: BTreeMap<String, Context>,
}

/// Where the file lives.
pub fn path() -> Result<PathBuf> {
    let dir = match std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        Some(d) => PathBuf::from(d),
        None => match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
            Some(h) => PathBuf::from(h).join(".config"),
            None => return fail("neither XDG_CONFIG_HOME nor HOME is set: no place for contexts"),
        },
    };
    Ok(dir.join("fusectl").join("config.yaml"))
}

impl Config {
    /// The file's contents (empty when there is none).
    pub fn load() -> Result<Config> {
        let p = path()?;
        match std::fs::read_to_string(&p) {
            Ok(text) => {
                serde_yaml::from_str(&text).or_else(|e| fail(format!("{}: {e}", p.display())))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Config::default()),
            Err(e) => fail(format!("reading {}: {e}", p.display())),
        }
    }

    /// Writes the file atomically, private to the user.
    pub fn save(&self) -> Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let p = path()?;
        let dir = p.parent().map(PathBuf::from).unwrap_or_default();
        std::fs::create_dir_all(&dir)
            .or_else(|e| fail(format!("creating {}: {e}", dir.display())))?;
        let tmp = p.with_extension("yaml.tmp");
        let text = serde_yaml::to_string(self)?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .or_else(|e| fail(format!("writing {}: {e}", tmp.display())))?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &p).or_else(|e| fail(format!("writing {}: {e}", p.display())))?;
        Ok(())
    }
}

/// The server a command talks to, and how it was chosen.
pub struct Target {
    pub url: String,
    pub token: String,
}

/// Resolves flags, environment and the file, in that order.
pub fn resolve(
    url: Option<String>,
    token: Option<String>,
    context: Option<String>,
) -> Result<Target> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let url = url.or_else(|| env("FUSE_URL"));
    let token = token.or_else(|| env("FUSE_TOKEN"));
    let named = context.or_else(|| env("FUSE_CONTEXT"));
    let cfg = Config::load()?;
    let ctx = match &named {
        Some(n) => match cfg.contexts.get(n) {
            Some(c) => Some(c.clone()),
            None => {
                return fail(format!(
                    "no context named {n:?} (fusectl context ls lists them)"
                ))
            }
        },
        None if !cfg.current.is_empty() => cfg.contexts.get(&cfg.current).cloned(),
        None => None,
    };
    let Some(url) = url.or_else(|| ctx.as_ref().map(|c| c.url.clone())) else {
        return fail(
            "no server configured: run `fusectl context add NAME --url http://HOST:8080 --token TOKEN`, \
             or set FUSE_URL (and FUSE_TOKEN)",
        );
    };
    let token = token.or_else(|| ctx.map(|c| c.token)).unwrap_or_default();
    Ok(Target { url, token })
}
