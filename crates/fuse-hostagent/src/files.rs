//! Files that hold secrets, and the directories that hold them: created with their final
//! mode (`0600` files, `0700` directories) and set again explicitly, so the process umask
//! never decides who can read a VM's token.

use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;

/// The mode of a file holding a secret.
pub const PRIVATE_FILE: u32 = 0o600;
/// The mode of a directory holding such files.
pub const PRIVATE_DIR: u32 = 0o700;

/// Writes `bytes` to `path` readable by the owner only (replacing it).
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(PRIVATE_FILE)
        .open(path)?;
    // An existing file keeps its mode through `open`: set it.
    f.set_permissions(std::fs::Permissions::from_mode(PRIVATE_FILE))?;
    f.write_all(bytes)?;
    f.sync_data()
}

/// Writes `bytes` to `path` atomically (a private temporary file renamed over it).
pub fn write_private_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    write_private(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// Creates `path` (and missing parents) accessible by the owner only; an existing
/// directory is made so.
pub fn create_private_dir(path: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(PRIVATE_DIR)
        .create(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(PRIVATE_DIR))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_do_not_depend_on_the_umask() {
        // A permissive umask, as a careless service manager might leave.
        let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o000));
        let dir = std::env::temp_dir().join(format!("fuse-private-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        create_private_dir(&dir).unwrap();
        let sub = dir.join("a/b");
        create_private_dir(&sub).unwrap();
        let f = sub.join("token");
        std::fs::write(&f, b"old").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o666)).unwrap();
        write_private(&f, b"secret").unwrap();
        let g = sub.join("vm.json");
        write_private_atomic(&g, b"{}").unwrap();
        nix::sys::stat::umask(old);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&sub), 0o700);
        assert_eq!(mode(&f), 0o600);
        assert_eq!(mode(&g), 0o600);
        assert_eq!(std::fs::read(&f).unwrap(), b"secret");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
