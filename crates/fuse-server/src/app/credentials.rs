//! Per-VM credentials: a 64-hex bearer token and a self-signed TLS certificate (CN = VM id)
//! with its key, handed to the guest as the agent's files (with private modes). Rotation
//! replaces all three. The ports proxy's traffic token (64 hex) is made with them and
//! kept by a rotation (it is the environment's, not the agent's).

use super::random_token;
use super::validate::ValidCreate;
use crate::profile::Profile;
use base64::Engine as _;
use fuse_store::VmSecrets;
use fuse_types::hostagent::GuestFile;

/// Failure to generate a certificate.
#[derive(Debug, thiserror::Error)]
#[error("generating the agent's TLS certificate: {0}")]
pub struct CredentialError(#[from] rcgen::Error);

pub(super) fn tls_pair(vm_id: &str) -> Result<(String, String), CredentialError> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(vec![vm_id.to_owned(), "localhost".into()])?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, vm_id);
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Fresh credentials for a new environment.
pub fn generate(vm_id: &str, valid: &ValidCreate) -> Result<VmSecrets, CredentialError> {
    let (cert, key) = tls_pair(vm_id)?;
    Ok(VmSecrets {
        auth_token: random_token(),
        gateway_token: valid.gateway_token.clone(),
        secrets: valid.secrets.clone(),
        tls_cert_pem: cert,
        tls_key_pem: key,
        traffic_token: random_token(),
    })
}

/// New token, certificate and key; the rest is kept.
pub fn rotate(vm_id: &str, old: &VmSecrets) -> Result<VmSecrets, CredentialError> {
    let (cert, key) = tls_pair(vm_id)?;
    Ok(VmSecrets {
        auth_token: random_token(),
        tls_cert_pem: cert,
        tls_key_pem: key,
        ..old.clone()
    })
}

/// The credential files of an agent, with their modes: the secrets map (when any), the
/// token, the certificate and its key.
pub fn files(profile: &Profile, s: &VmSecrets) -> Vec<GuestFile> {
    let file = |path: String, bytes: &[u8], mode: u32| GuestFile {
        path,
        content_b64: base64::engine::general_purpose::STANDARD.encode(bytes),
        mode,
    };
    let mut out = Vec::with_capacity(4);
    if !s.secrets.is_empty() {
        // A map of strings always serialises.
        let body = serde_json::to_vec(&s.secrets).unwrap_or_default();
        out.push(file(profile.secrets_path(), &body, 0o600));
    }
    out.push(file(profile.token_path(), s.auth_token.as_bytes(), 0o600));
    out.push(file(profile.cert_path(), s.tls_cert_pem.as_bytes(), 0o644));
    out.push(file(profile.key_path(), s.tls_key_pem.as_bytes(), 0o600));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_names_the_vm_and_rotation_changes_everything_secret() {
        let (cert, key) = tls_pair("fuse-abc").unwrap();
        assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(key.contains("PRIVATE KEY"));
        let old = VmSecrets {
            auth_token: random_token(),
            gateway_token: "gw".into(),
            secrets: [("A".to_string(), "b".to_string())].into(),
            tls_cert_pem: cert,
            tls_key_pem: key,
            ..Default::default()
        };
        let new = rotate("fuse-abc", &old).unwrap();
        assert_ne!(new.auth_token, old.auth_token);
        assert_eq!(new.auth_token.len(), 64);
        assert_ne!(new.tls_cert_pem, old.tls_cert_pem);
        assert_ne!(new.tls_key_pem, old.tls_key_pem);
        assert_eq!(new.secrets, old.secrets);
        assert_eq!(new.gateway_token, "gw");
        assert!(
            !format!("{new:?}").contains(&new.auth_token),
            "Debug redacts"
        );
        let p = Profile::by_name("fused").unwrap();
        let f = files(p, &new);
        let modes: Vec<(&str, u32)> = f.iter().map(|f| (f.path.as_str(), f.mode)).collect();
        assert_eq!(
            modes,
            [
                ("/fuse/secrets.json", 0o600),
                ("/fuse/token", 0o600),
                ("/fuse/tls.crt", 0o644),
                ("/fuse/tls.key", 0o600)
            ]
        );
        let token = base64::engine::general_purpose::STANDARD
            .decode(&f[1].content_b64)
            .unwrap();
        assert_eq!(token, new.auth_token.as_bytes());
    }
}
