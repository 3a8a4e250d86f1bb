//! The runtime surface of a running environment: files in and out, exec (buffered or
//! streamed, with environment, directory and standard input) and terminals. Each call
//! checks the environment can be reached (running or draining), validates what the guest
//! would otherwise refuse less clearly, and goes to the VM's own host; the bytes stream
//! through (`provider::runtime`), nothing is held whole here.

use super::error::AppError;
use super::validate;
use super::App;
use crate::provider::runtime::{Attached, ByteStream, ExecStream, FileDownload, FileUpload};
use crate::provider::Provider;
use base64::Engine as _;
use fuse_store::VmRecord;
use fuse_types::hostagent::{AgentExec, FileList, FileWritten};
use fuse_types::{ExecRequest, ExecResponse, VmState};
use std::sync::Arc;

/// How exec output is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Lossy UTF-8 (the default, as the Go original).
    Text,
    /// Base64 of the exact bytes.
    Base64,
}

/// Checks a guest path: absolute, no `..` component, no NUL.
pub fn guest_path(p: &str) -> Result<String, AppError> {
    let bad = |why: &str| AppError::Invalid(vec![format!("path {p:?} {why}")]);
    if p.is_empty() {
        return Err(AppError::Invalid(vec![
            "query parameter path is required (an absolute guest path)".into(),
        ]));
    }
    if !p.starts_with('/') {
        return Err(bad("must be absolute"));
    }
    if p.contains('\0') || p.split('/').any(|c| c == "..") {
        return Err(bad("must not contain '..' or NUL"));
    }
    Ok(p.to_owned())
}

/// An exec request checked and turned into the host's: argv, limit, environment,
/// directory, standard input; and how to answer its output.
pub fn exec_job(req: &ExecRequest) -> Result<(AgentExec, Output), AppError> {
    let (argv, timeout) = validate::exec(req).map_err(AppError::Invalid)?;
    let mut errs = Vec::new();
    for k in req.env.keys() {
        if k.is_empty() || k.contains('=') || k.contains('\0') {
            errs.push(format!(
                "env name {k:?} must be non-empty without '=' or NUL"
            ));
        }
    }
    if req.env.values().any(|v| v.contains('\0')) {
        errs.push("env values must not contain NUL".into());
    }
    if let Some(c) = &req.cwd {
        if let Err(AppError::Invalid(mut e)) = guest_path(c) {
            errs.push(format!("cwd: {}", e.remove(0)));
        }
    }
    if let Some(s) = &req.stdin {
        if base64::engine::general_purpose::STANDARD.decode(s).is_err() {
            errs.push("stdin must be base64".into());
        }
    }
    let output = match req.output.as_deref() {
        None | Some("text") => Output::Text,
        Some("base64") => Output::Base64,
        Some(o) => {
            errs.push(format!("output {o:?} must be \"text\" or \"base64\""));
            Output::Text
        }
    };
    if !errs.is_empty() {
        return Err(AppError::Invalid(errs));
    }
    Ok((
        AgentExec {
            cmd: argv,
            timeout_ms: Some(timeout.as_millis() as u64),
            env: req.env.clone(),
            cwd: req.cwd.clone(),
            stdin: req.stdin.clone(),
        },
        output,
    ))
}

impl App {
    /// The environment and its host's provider, when it can be reached at runtime.
    async fn reachable(
        &self,
        id: &str,
        what: &str,
    ) -> Result<(VmRecord, Arc<dyn Provider>), AppError> {
        let rec = self.env_get(id).await?;
        // A paused one is resumed first when it asks for it (else: 409 with what to do).
        let rec = self.awake(rec).await?;
        if !matches!(rec.state, VmState::Running | VmState::Draining) {
            return Err(AppError::conflict(format!(
                "environment {} is {}; {what} only in running or draining environments",
                rec.id, rec.state
            )));
        }
        let provider = self.provider_of(&rec).await?;
        Ok((rec, provider))
    }

    /// Runs a command in a running (or draining) environment and answers its output.
    pub async fn env_exec(&self, id: &str, req: ExecRequest) -> Result<ExecResponse, AppError> {
        let (job, output) = exec_job(&req)?;
        let (rec, provider) = self.reachable(id, "commands run").await?;
        let r = provider.exec_job(rec.id.as_str(), &job).await?;
        // The command ran for a while: it counts as activity at its end too.
        self.touch(&rec).await;
        let conv = |s: String| -> Result<String, AppError> {
            match output {
                Output::Base64 => Ok(s),
                Output::Text => base64::engine::general_purpose::STANDARD
                    .decode(&s)
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .map_err(|e| AppError::Internal(format!("exec output is not base64: {e}"))),
            }
        };
        Ok(ExecResponse {
            exit_code: r.exit_code,
            stdout: conv(r.stdout)?,
            stderr: conv(r.stderr)?,
            truncated: r.truncated,
        })
    }

    /// Runs a command and streams its output; dropping the stream kills it.
    pub async fn env_exec_stream(
        &self,
        id: &str,
        req: ExecRequest,
    ) -> Result<ExecStream, AppError> {
        let (job, _) = exec_job(&req)?;
        let (rec, provider) = self.reachable(id, "commands run").await?;
        self.touch(&rec).await;
        Ok(provider.exec_stream(rec.id.as_str(), &job).await?)
    }

    /// Writes a file from a stream.
    pub async fn env_file_put(
        &self,
        id: &str,
        path: &str,
        mode: Option<u32>,
        sha256: Option<String>,
        body: ByteStream,
    ) -> Result<FileWritten, AppError> {
        let path = guest_path(path)?;
        if let Some(s) = &sha256 {
            if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(AppError::Invalid(vec![
                    "sha256 must be 64 hex digits".into()
                ]));
            }
        }
        let (rec, provider) = self.reachable(id, "files are written").await?;
        let file = FileUpload {
            path,
            mode,
            sha256,
            body,
        };
        let w = provider.file_put(rec.id.as_str(), file).await?;
        self.touch(&rec).await;
        Ok(w)
    }

    /// Reads a file as a stream.
    pub async fn env_file_get(&self, id: &str, path: &str) -> Result<FileDownload, AppError> {
        let path = guest_path(path)?;
        let (rec, provider) = self.reachable(id, "files are read").await?;
        self.touch(&rec).await;
        Ok(provider.file_get(rec.id.as_str(), &path).await?)
    }

    /// Lists a directory.
    pub async fn env_file_list(&self, id: &str, path: &str) -> Result<FileList, AppError> {
        let path = guest_path(path)?;
        let (rec, provider) = self.reachable(id, "files are listed").await?;
        Ok(provider.file_list(rec.id.as_str(), &path).await?)
    }

    /// Removes a file or a directory tree.
    pub async fn env_file_delete(
        &self,
        id: &str,
        path: &str,
        recursive: bool,
    ) -> Result<(), AppError> {
        let path = guest_path(path)?;
        if path.trim_end_matches('/').is_empty() {
            return Err(AppError::Invalid(vec!["refusing to remove /".into()]));
        }
        let (rec, provider) = self.reachable(id, "files are removed").await?;
        provider
            .file_delete(rec.id.as_str(), &path, recursive)
            .await?;
        self.touch(&rec).await;
        Ok(())
    }

    /// Opens a terminal on the environment's host.
    pub async fn env_attach(
        &self,
        id: &str,
        query: &str,
        headers: &[(String, String)],
    ) -> Result<Attached, AppError> {
        let (rec, provider) = self.reachable(id, "terminals open").await?;
        self.touch(&rec).await;
        Ok(provider.attach(rec.id.as_str(), query, headers).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_paths() {
        assert!(guest_path("/a/b").is_ok());
        for bad in ["", "a/b", "/a/../b", "/a\0b"] {
            assert!(guest_path(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn exec_requests_are_checked_whole() {
        let req = ExecRequest {
            cmd: Some(vec!["ls".into()]),
            env: [("A=B".to_owned(), "x".to_owned())].into(),
            cwd: Some("rel".into()),
            stdin: Some("%%%".into()),
            output: Some("hex".into()),
            ..ExecRequest::default()
        };
        let Err(AppError::Invalid(errs)) = exec_job(&req) else {
            panic!("accepted")
        };
        assert_eq!(errs.len(), 4, "{errs:?}");
        let ok = ExecRequest {
            shell: Some("echo hi".into()),
            stdin: Some("aGk=".into()),
            output: Some("base64".into()),
            ..ExecRequest::default()
        };
        let (job, out) = exec_job(&ok).unwrap();
        assert_eq!(job.cmd, ["sh", "-lc", "echo hi"]);
        assert_eq!(out, Output::Base64);
    }
}
