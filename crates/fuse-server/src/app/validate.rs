//! Validation of create requests: every problem is collected, so a client learns all of
//! them from one 400. Secret values never appear in a message.

use crate::config::check_http_url;
use base64::Engine as _;
use fuse_types::{CreateEnvironment, ExecRequest, Spec, TaskId};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::time::Duration;

/// Limits on secrets (count, key bytes, value bytes, total bytes).
pub const MAX_SECRETS: usize = 256;
/// Longest secret key.
pub const MAX_SECRET_KEY: usize = 256;
/// Largest secret value.
pub const MAX_SECRET_VALUE: usize = 64 << 10;
/// Largest total of keys and values.
pub const MAX_SECRETS_TOTAL: usize = 1 << 20;
/// Most files in one request.
pub const MAX_FILES: usize = 1024;
/// Default command limit.
pub const EXEC_DEFAULT_MS: u64 = 30_000;
/// Longest command limit.
pub const EXEC_MAX_MS: u64 = 600_000;

/// A create request that passed validation, with its payloads decoded.
#[derive(Debug, Clone)]
pub struct ValidCreate {
    /// Task id.
    pub task_id: TaskId,
    /// Resolved spec.
    pub spec: Spec,
    /// Decoded manifest.
    pub manifest: Option<Vec<u8>>,
    /// Secrets.
    pub secrets: BTreeMap<String, String>,
    /// Decoded files.
    pub files: Vec<(String, Vec<u8>)>,
    /// Startup script.
    pub startup_script: Option<String>,
    /// Gateway URL.
    pub gateway_url: String,
    /// Gateway token.
    pub gateway_token: String,
    /// Fingerprint for idempotent create.
    pub request_hash: String,
    /// Ports to publish, as asked (validated).
    pub expose: Vec<fuse_types::ExposeSpec>,
    /// The readiness probe (validated).
    pub healthcheck: Option<fuse_types::HealthcheckSpec>,
    /// For a fork: the snapshot whose disk the VM starts from.
    pub from_snapshot: Option<fuse_types::hostagent::SnapshotSource>,
    /// Egress rules other than the defaults (checked, canonical).
    pub egress: Option<fuse_types::EgressRules>,
    /// The template it starts from (its memory restored), by name.
    pub template: Option<String>,
    /// A warm VM of that template's pool, drawn for it (claimed instead of restored).
    pub warm_from: Option<String>,
    /// When its time is up (E2B's timeout), if not `max_runtime_seconds` after it starts.
    pub ends_at: Option<fuse_types::Timestamp>,
    /// What the E2B-compatible API was asked for, for a sandbox.
    pub e2b: Option<fuse_store::E2bSandbox>,
}

/// Checks an `egress` object (of a create or of `PUT …/egress`): the routing mode and the
/// rules; `None` for the defaults (direct routing, nothing denied).
pub fn check_egress(
    e: &fuse_types::EgressSpec,
    errs: &mut Vec<String>,
) -> Option<fuse_types::EgressRules> {
    use fuse_types::EgressMode;
    let mode = match e.mode.as_deref().unwrap_or("") {
        "" | "direct" | "allow-all" => EgressMode::AllowAll,
        "deny-all" => EgressMode::DenyAll,
        "allowlist" => EgressMode::Allowlist,
        "proxy" => {
            errs.push(
                "egress.mode proxy is not available on this control plane; use direct (the default), allow-all, deny-all or allowlist"
                    .into(),
            );
            return None;
        }
        m => {
            errs.push(format!(
                "egress.mode must be direct, allow-all, deny-all, allowlist or proxy (got {m:?})"
            ));
            return None;
        }
    };
    let none: Vec<String> = Vec::new();
    match fuse_types::EgressRules::build(
        "egress",
        mode,
        e.allow.as_ref().unwrap_or(&none),
        e.deny.as_ref().unwrap_or(&none),
    ) {
        Ok(r) if r.is_default() && e.mode.as_deref() != Some("allow-all") => None,
        Ok(r) => Some(r),
        Err(mut es) => {
            errs.append(&mut es);
            None
        }
    }
}

/// Most published ports of one environment.
pub const MAX_EXPOSE: usize = 32;
/// Longest idle timeout (30 days).
pub const MAX_IDLE_SECS: u64 = 30 * 86_400;

/// Checks `expose`; returns the entries with their protocol spelled out.
pub(crate) fn check_expose(
    expose: &[fuse_types::ExposeSpec],
    errs: &mut Vec<String>,
) -> Vec<fuse_types::ExposeSpec> {
    if expose.len() > MAX_EXPOSE {
        errs.push(format!("expose: at most {MAX_EXPOSE} ports"));
    }
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    for (i, e) in expose.iter().enumerate() {
        if !(1..=65535).contains(&e.port) {
            errs.push(format!(
                "expose[{i}].port must be from 1 to 65535 (got {})",
                e.port
            ));
            continue;
        }
        let proto = match e
            .protocol
            .as_deref()
            .unwrap_or("")
            .parse::<fuse_types::Protocol>()
        {
            Ok(p) => p,
            Err(m) => {
                errs.push(format!("expose[{i}].protocol: {m}"));
                continue;
            }
        };
        if e.as_.as_deref().is_some_and(|a| a.len() > 63) {
            errs.push(format!("expose[{i}].as must be at most 63 characters"));
        }
        if !seen.insert((e.port, proto)) {
            errs.push(format!(
                "expose[{i}]: port {} over {} is listed twice",
                e.port,
                proto.as_str()
            ));
        }
        out.push(fuse_types::ExposeSpec {
            port: e.port,
            as_: e.as_.clone().filter(|a| !a.is_empty()),
            protocol: Some(proto.as_str().into()),
            public: e.public,
        });
    }
    out
}

/// Checks a healthcheck: exactly one of `http` and `exec`, sane timing.
pub fn check_healthcheck(h: &fuse_types::HealthcheckSpec, errs: &mut Vec<String>) {
    match (&h.http, &h.exec) {
        (Some(_), Some(_)) => {
            errs.push("healthcheck: set exactly one of http and exec, not both".into())
        }
        (None, None) => errs.push("healthcheck: set one of http or exec".into()),
        (Some(http), None) => {
            if http.port == 0 {
                errs.push("healthcheck.http.port must be from 1 to 65535".into());
            }
            if !http.path.is_empty() && !http.path.starts_with('/') {
                errs.push(format!(
                    "healthcheck.http.path must start with '/' (got {:?})",
                    http.path.chars().take(40).collect::<String>()
                ));
            }
            if http.path.len() > 2048 || http.path.chars().any(char::is_control) {
                errs.push("healthcheck.http.path must be at most 2048 printable bytes".into());
            }
        }
        (None, Some(argv)) => {
            if argv.is_empty() || argv[0].is_empty() {
                errs.push("healthcheck.exec must be a non-empty argument vector".into());
            }
        }
    }
    let t = fuse_types::health::Timing::of(h);
    if t.timeout > t.interval {
        errs.push(format!(
            "healthcheck.timeout_seconds ({}) must not be above interval_seconds ({})",
            t.timeout.as_secs(),
            t.interval.as_secs()
        ));
    }
    if h.interval_seconds > 3600 || h.start_period_seconds > 86_400 || h.retries > 100 {
        errs.push(
            "healthcheck: interval_seconds at most 3600, start_period_seconds at most 86400, \
             retries at most 100"
                .into(),
        );
    }
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// What is wrong with a guest path (the message completes "path …").
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum GuestPathError {
    /// Relative.
    #[error("must be an absolute path")]
    Relative,
    /// Too long, or with a NUL.
    #[error("must be at most 4096 bytes without NUL")]
    TooLongOrNul,
    /// With a `..` component.
    #[error("must not contain '..'")]
    Traversal,
    /// Ending in `/`.
    #[error("must name a file, not a directory")]
    Directory,
}

/// Checks a guest path: absolute, no `..`, no NUL, at most 4096 bytes.
pub fn check_guest_path(p: &str) -> Result<(), GuestPathError> {
    if !p.starts_with('/') {
        return Err(GuestPathError::Relative);
    }
    if p.len() > 4096 || p.contains('\0') {
        return Err(GuestPathError::TooLongOrNul);
    }
    if p.split('/').any(|c| c == "..") {
        return Err(GuestPathError::Traversal);
    }
    if p.ends_with('/') {
        return Err(GuestPathError::Directory);
    }
    Ok(())
}

/// Validates a create request.
pub fn create(req: &CreateEnvironment) -> Result<ValidCreate, Vec<String>> {
    let mut errs = Vec::new();
    let task_id = match req.task_id.as_deref() {
        None | Some("") => {
            errs.push("task_id is required".to_owned());
            None
        }
        Some(t) => TaskId::parse(t).map_err(|e| errs.push(e.0)).ok(),
    };
    let s = &req.spec;
    let spec = Spec {
        cpus: s.cpus.unwrap_or(1),
        ram_mb: s.ram_mb.unwrap_or(512),
        storage_gb: s.storage_gb.unwrap_or(1),
        region: s.region.clone().unwrap_or_default(),
        max_runtime_seconds: s.max_runtime_seconds.unwrap_or(7200),
        arch: s.arch.clone().unwrap_or_default(),
        idle_timeout_seconds: s.idle_timeout_seconds.unwrap_or(0),
        on_idle: s.on_idle.clone().unwrap_or_default(),
        auto_resume: s.auto_resume.unwrap_or(false),
        image: s.image.clone().unwrap_or_default(),
        host_id: s.host_id.clone().unwrap_or_default(),
        labels: s.labels.clone().unwrap_or_default(),
        huge_pages: s.huge_pages.unwrap_or(false),
        gpus: s.gpus.unwrap_or(0),
        gpu_kind: s.gpu_kind.clone().unwrap_or_default(),
        gpu_profile: s.gpu_profile.clone().unwrap_or_default(),
    };
    if !(1..=64).contains(&spec.cpus) {
        errs.push(format!(
            "spec.cpus must be from 1 to 64 (got {})",
            spec.cpus
        ));
    }
    if !(128..=262_144).contains(&spec.ram_mb) {
        errs.push(format!(
            "spec.ram_mb must be from 128 to 262144 (got {})",
            spec.ram_mb
        ));
    }
    if !(1..=2048).contains(&spec.storage_gb) {
        errs.push(format!(
            "spec.storage_gb must be from 1 to 2048 (got {})",
            spec.storage_gb
        ));
    }
    if !(1..=30 * 86_400).contains(&spec.max_runtime_seconds) {
        errs.push(format!(
            "spec.max_runtime_seconds must be from 1 to 2592000 (got {})",
            spec.max_runtime_seconds
        ));
    }
    if spec.region.len() > 64 {
        errs.push("spec.region must be at most 64 characters".into());
    }
    super::hosts::check_arch("spec.arch", &spec.arch, &mut errs);
    super::hosts::check_labels("spec.labels", &spec.labels, &mut errs);
    if !spec.host_id.is_empty() {
        if let Err(e) = fuse_types::HostId::parse(&spec.host_id) {
            errs.push(format!("spec.host_id: {}", e.0));
        }
    }
    if spec.idle_timeout_seconds > MAX_IDLE_SECS {
        errs.push(format!(
            "spec.idle_timeout_seconds must be at most {MAX_IDLE_SECS} (got {})",
            spec.idle_timeout_seconds
        ));
    }
    if !matches!(spec.on_idle.as_str(), "" | "destroy" | "pause") {
        errs.push(format!(
            "spec.on_idle must be destroy or pause (got {:?})",
            spec.on_idle
        ));
    }
    if spec.image.len() > 256 {
        errs.push("spec.image must be at most 256 characters".into());
    }
    if spec.gpus > 0 || !spec.gpu_kind.is_empty() || !spec.gpu_profile.is_empty() {
        errs.push("spec.gpus: GPU environments are not supported by this control plane yet".into());
    }
    let expose = check_expose(req.expose.as_deref().unwrap_or(&[]), &mut errs);
    if let Some(h) = &req.healthcheck {
        check_healthcheck(h, &mut errs);
    }
    let egress = req.egress.as_ref().and_then(|e| check_egress(e, &mut errs));
    if let Some(d) = &req.desktop {
        if !(320..=3840).contains(&d.width) || !(320..=3840).contains(&d.height) {
            errs.push("desktop.width and desktop.height must each be from 320 to 3840".into());
        }
    }
    let manifest = match req.manifest_inline.as_deref() {
        None | Some("") => None,
        Some(m) => match b64().decode(m) {
            Ok(bytes) => {
                match serde_json::from_slice::<serde_json::Value>(&bytes) {
                    Ok(doc) => {
                        for name in manifest_secret_refs(&doc) {
                            if !req.secrets.contains_key(&name) {
                                errs.push(format!(
                                    "manifest references secret {name:?}, which is missing from secrets"
                                ));
                            }
                        }
                    }
                    Err(_) => errs.push("manifest_inline must be base64 of a JSON document".into()),
                }
                Some(bytes)
            }
            Err(_) => {
                errs.push("manifest_inline is not valid standard base64".into());
                None
            }
        },
    };
    if req.secrets.len() > MAX_SECRETS {
        errs.push(format!(
            "secrets: at most {MAX_SECRETS} keys (got {})",
            req.secrets.len()
        ));
    }
    let mut total = 0usize;
    for (k, v) in &req.secrets {
        total += k.len() + v.len();
        if k.is_empty() || k.len() > MAX_SECRET_KEY {
            errs.push(format!(
                "secrets: key {:?} must be 1-{MAX_SECRET_KEY} bytes",
                k.chars().take(40).collect::<String>()
            ));
        }
        if v.len() > MAX_SECRET_VALUE {
            errs.push(format!(
                "secrets[{k:?}]: value is {} bytes; at most {MAX_SECRET_VALUE}",
                v.len()
            ));
        }
    }
    if total > MAX_SECRETS_TOTAL {
        errs.push(format!(
            "secrets: {total} bytes in total; at most {MAX_SECRETS_TOTAL}"
        ));
    }
    if req.files.len() > MAX_FILES {
        errs.push(format!("files: at most {MAX_FILES} files"));
    }
    let mut files = Vec::new();
    for (path, content) in &req.files {
        if let Err(e) = check_guest_path(path) {
            errs.push(format!("files[{path:?}]: path {e}"));
            continue;
        }
        match b64().decode(content) {
            Ok(bytes) => files.push((path.clone(), bytes)),
            Err(_) => errs.push(format!(
                "files[{path:?}]: content is not valid standard base64"
            )),
        }
    }
    if let Some(sc) = &req.startup_script {
        if sc.len() > 1 << 20 {
            errs.push("startup_script must be at most 1 MiB".into());
        }
    }
    let gateway_url = req.gateway_url.clone().unwrap_or_default();
    if !gateway_url.is_empty() {
        if let Err(e) = check_http_url(&gateway_url) {
            errs.push(format!("gateway_url: {e}"));
        }
    }
    if let Some(a) = &req.agent {
        if let Some(u) = a.download_url.as_deref().filter(|u| !u.is_empty()) {
            if let Err(e) = check_http_url(u) {
                errs.push(format!("agent.download_url: {e}"));
            }
        }
        if a.command.as_deref().is_some_and(|c| c.trim().is_empty()) {
            errs.push("agent.command must not be empty when given".into());
        }
        if let Some(l) = a.listen.as_deref().filter(|l| !l.is_empty()) {
            if l.parse::<std::net::SocketAddr>().is_err() {
                errs.push(format!(
                    "agent.listen: {l:?} is not an address like 0.0.0.0:8443"
                ));
            }
        }
        errs.extend(check_agent_install(a));
    }
    if !errs.is_empty() {
        return Err(errs);
    }
    let request_hash = {
        let bytes = serde_json::to_vec(req).unwrap_or_default();
        let mut h = Sha256::new();
        h.update(b"fuse-create-v1\0");
        h.update(&bytes);
        hex::encode(h.finalize())
    };
    Ok(ValidCreate {
        task_id: task_id.unwrap_or_else(|| unreachable!("errors were empty")),
        spec,
        manifest,
        secrets: req.secrets.clone(),
        files,
        startup_script: req.startup_script.clone().filter(|s| !s.trim().is_empty()),
        gateway_url,
        gateway_token: req.gateway_token.clone().unwrap_or_default(),
        request_hash,
        expose,
        healthcheck: req.healthcheck.clone(),
        from_snapshot: None,
        template: None,
        warm_from: None,
        egress,
        ends_at: None,
        e2b: None,
    })
}

/// The secret names a manifest references: its top-level `secrets` field, as a list of
/// names, a list of objects with a `name`, or an object whose keys are names.
pub fn manifest_secret_refs(doc: &serde_json::Value) -> Vec<String> {
    match doc.get("secrets") {
        Some(serde_json::Value::Array(items)) => items
            .iter()
            .filter_map(|i| match i {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Object(o) => {
                    o.get("name").and_then(|n| n.as_str()).map(str::to_owned)
                }
                _ => None,
            })
            .collect(),
        Some(serde_json::Value::Object(o)) => o.keys().cloned().collect(),
        _ => Vec::new(),
    }
}

/// Validates an exec request into an argv and a limit.
pub fn exec(req: &ExecRequest) -> Result<(Vec<String>, Duration), Vec<String>> {
    let mut errs = Vec::new();
    let argv = match (&req.cmd, &req.shell) {
        (Some(_), Some(_)) => {
            errs.push("give either cmd or shell, not both".to_owned());
            vec![]
        }
        (None, None) => {
            errs.push("one of cmd (argv list) or shell (string) is required".to_owned());
            vec![]
        }
        (Some(c), None) if c.is_empty() || c[0].is_empty() => {
            errs.push("cmd must be a non-empty list whose first element is the program".into());
            vec![]
        }
        (Some(c), None) => c.clone(),
        (None, Some(s)) if s.trim().is_empty() => {
            errs.push("shell must not be empty".into());
            vec![]
        }
        // As the Go original: a login shell, so the image's profile sets PATH.
        (None, Some(s)) => vec!["sh".into(), "-lc".into(), s.clone()],
    };
    // As the Go original: unset or 0 is the default, anything above the ceiling is clamped.
    let ms = match req.timeout_ms {
        None | Some(0) => EXEC_DEFAULT_MS,
        Some(ms) => ms.min(EXEC_MAX_MS),
    };
    if errs.is_empty() {
        Ok((argv, Duration::from_millis(ms)))
    } else {
        Err(errs)
    }
}

/// The problems of an agent override's install fields: `binary_path` absolute and clean,
/// `sha256` 64 hex digits and only with a `download_url`, `start_window_ms` bounded.
fn check_agent_install(a: &fuse_types::AgentOverride) -> Vec<String> {
    let mut errs = Vec::new();
    if let Some(p) = a.binary_path.as_deref() {
        if !p.starts_with('/') || p.ends_with('/') || p.split('/').any(|c| c == "..") {
            errs.push(format!(
                "agent.binary_path: {p:?} must be an absolute file path without '..'"
            ));
        } else if p.len() > 4096 || p.contains('\0') {
            errs.push("agent.binary_path must be at most 4096 bytes without NUL".into());
        }
    }
    if let Some(h) = a.sha256.as_deref() {
        if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
            errs.push("agent.sha256 must be 64 hex digits (a SHA-256)".into());
        } else if a.download_url.as_deref().unwrap_or("").is_empty() {
            errs.push("agent.sha256 needs agent.download_url (it checks the download)".into());
        }
    }
    if let Some(ms) = a.start_window_ms {
        if !(100..=600_000).contains(&ms) {
            errs.push(format!(
                "agent.start_window_ms: {ms} must be from 100 to 600000"
            ));
        }
    }
    errs
}

/// Replaces every secret value (at least 4 bytes long) found in `text` with `[redacted]`.
pub fn redact(text: &str, secrets: &[String]) -> String {
    let mut out = text.to_owned();
    // Longest first, so a secret that contains another is replaced whole.
    let mut sorted: Vec<&String> = secrets.iter().filter(|s| s.len() >= 4).collect();
    sorted.sort_by_key(|s| std::cmp::Reverse(s.len()));
    for s in sorted {
        if out.contains(s.as_str()) {
            out = out.replace(s.as_str(), "[redacted]");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use fuse_types::{AgentOverride, SpecInput};

    #[test]
    fn agent_install_fields_are_checked() {
        let ok = AgentOverride {
            download_url: Some("http://dl/a".into()),
            binary_path: Some("/opt/a/agent".into()),
            sha256: Some("AB".repeat(32)),
            start_window_ms: Some(5000),
            ..AgentOverride::default()
        };
        assert!(check_agent_install(&ok).is_empty());
        let bad = AgentOverride {
            binary_path: Some("opt/a".into()),
            sha256: Some("12".into()),
            start_window_ms: Some(5),
            ..AgentOverride::default()
        };
        let all = check_agent_install(&bad).join("\n");
        for needle in [
            "agent.binary_path",
            "agent.sha256 must be 64",
            "agent.start_window_ms",
        ] {
            assert!(all.contains(needle), "{needle} in {all}");
        }
        let no_url = AgentOverride {
            sha256: Some("a".repeat(64)),
            binary_path: Some("/a/../b".into()),
            ..AgentOverride::default()
        };
        let all = check_agent_install(&no_url).join("\n");
        assert!(all.contains("needs agent.download_url"), "{all}");
        assert!(all.contains("without '..'"), "{all}");
    }

    #[test]
    fn every_problem_is_reported() {
        let mut req = CreateEnvironment {
            task_id: Some("Bad Id".into()),
            spec: SpecInput {
                cpus: Some(0),
                ram_mb: Some(1),
                storage_gb: Some(0),
                ..SpecInput::default()
            },
            manifest_inline: Some("%%%".into()),
            gateway_url: Some("ftp://x".into()),
            agent: Some(AgentOverride {
                command: Some(" ".into()),
                listen: Some("nope".into()),
                ..AgentOverride::default()
            }),
            ..CreateEnvironment::default()
        };
        req.files.insert("relative".into(), "aGk=".into());
        req.files.insert("/ok".into(), "not base64!".into());
        req.files.insert("/a/../b".into(), "aGk=".into());
        req.secrets.insert(String::new(), "x".into());
        let errs = create(&req).unwrap_err();
        let all = errs.join("\n");
        for needle in [
            "task_id must be",
            "spec.cpus",
            "spec.ram_mb",
            "spec.storage_gb",
            "manifest_inline is not valid",
            "gateway_url",
            "agent.command",
            "agent.listen",
            "files[\"relative\"]: path must be an absolute path",
            "files[\"/ok\"]: content is not valid standard base64",
            "files[\"/a/../b\"]: path must not contain '..'",
            "secrets: key",
        ] {
            assert!(all.contains(needle), "{needle:?} missing from:\n{all}");
        }
        assert_eq!(errs.len(), 12, "{all}");
    }

    #[test]
    fn secret_values_never_in_messages() {
        let mut req = CreateEnvironment {
            task_id: Some("t".into()),
            ..CreateEnvironment::default()
        };
        req.secrets
            .insert("BIG".into(), "s3cr3t-".repeat(MAX_SECRET_VALUE / 7 + 1));
        let errs = create(&req).unwrap_err();
        assert!(!errs.join(" ").contains("s3cr3t"));
        assert!(errs[0].contains("secrets[\"BIG\"]"));
    }

    #[test]
    fn defaults_and_hash() {
        let req = CreateEnvironment {
            task_id: Some("t1".into()),
            ..CreateEnvironment::default()
        };
        let v = create(&req).unwrap();
        assert_eq!((v.spec.cpus, v.spec.ram_mb, v.spec.storage_gb), (1, 512, 1));
        assert_eq!(v.spec.max_runtime_seconds, 7200);
        let mut other = req.clone();
        other.startup_script = Some("echo hi".into());
        assert_ne!(v.request_hash, create(&other).unwrap().request_hash);
        assert_eq!(v.request_hash, create(&req).unwrap().request_hash);
    }

    #[test]
    fn manifest_secret_references_must_be_present() {
        let manifest = |v: serde_json::Value| b64().encode(v.to_string());
        let mut req = CreateEnvironment {
            task_id: Some("t".into()),
            manifest_inline: Some(manifest(
                serde_json::json!({"secrets": ["A", {"name": "B"}]}),
            )),
            ..CreateEnvironment::default()
        };
        req.secrets.insert("A".into(), "a".into());
        let errs = create(&req).unwrap_err();
        assert_eq!(errs.len(), 1);
        assert!(errs[0].contains("\"B\""), "{errs:?}");
        req.secrets.insert("B".into(), "b".into());
        assert!(create(&req).is_ok());
        req.manifest_inline = Some(manifest(serde_json::json!({"secrets": {"C": {}}})));
        assert!(create(&req).unwrap_err()[0].contains("\"C\""));
        req.manifest_inline = Some(manifest(serde_json::json!({"name": "no refs"})));
        assert!(create(&req).is_ok());
    }

    #[test]
    fn secret_limits() {
        let mut req = CreateEnvironment {
            task_id: Some("t".into()),
            ..CreateEnvironment::default()
        };
        for i in 0..=MAX_SECRETS {
            req.secrets.insert(format!("k{i}"), "v".into());
        }
        req.secrets
            .insert("K".repeat(MAX_SECRET_KEY + 1), "v".into());
        for i in 0..20 {
            req.secrets
                .insert(format!("big{i}"), "x".repeat(MAX_SECRET_VALUE));
        }
        let all = create(&req).unwrap_err().join("\n");
        assert!(all.contains("at most 256 keys"), "{all}");
        assert!(all.contains("must be 1-256 bytes"), "{all}");
        assert!(all.contains("bytes in total"), "{all}");
    }

    #[test]
    fn exec_table() {
        let ok = |r: ExecRequest| exec(&r).is_ok();
        assert!(ok(ExecRequest {
            cmd: Some(vec!["ls".into()]),
            ..ExecRequest::default()
        }));
        assert!(ok(ExecRequest {
            shell: Some("ls".into()),
            timeout_ms: Some(600_000),
            ..ExecRequest::default()
        }));
        assert!(!ok(ExecRequest::default()));
        assert!(!ok(ExecRequest {
            cmd: Some(vec![]),
            ..ExecRequest::default()
        }));
        assert!(!ok(ExecRequest {
            cmd: Some(vec!["a".into()]),
            shell: Some("b".into()),
            ..ExecRequest::default()
        }));
        let limit = |ms| {
            exec(&ExecRequest {
                shell: Some("ls".into()),
                timeout_ms: ms,
                ..ExecRequest::default()
            })
            .unwrap()
            .1
        };
        assert_eq!(limit(Some(0)), Duration::from_secs(30), "0 is the default");
        assert_eq!(limit(Some(5)), Duration::from_millis(5));
        assert_eq!(limit(Some(10_000_000)), Duration::from_secs(600), "clamped");
        let (argv, t) = exec(&ExecRequest {
            shell: Some("echo hi".into()),
            ..ExecRequest::default()
        })
        .unwrap();
        assert_eq!(argv, ["sh", "-lc", "echo hi"]);
        assert_eq!(t, Duration::from_secs(30));
    }

    #[test]
    fn redaction() {
        let s = vec!["hunter22".to_string(), "ab".to_string()];
        assert_eq!(redact("pw=hunter22 ab", &s), "pw=[redacted] ab");
        let nested = vec!["abcd".to_string(), "abcd1234".to_string()];
        assert_eq!(
            redact("x abcd1234 y abcd", &nested),
            "x [redacted] y [redacted]"
        );
    }
}
