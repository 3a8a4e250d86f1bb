//! Starts `fuse-envd` (E2B's envd for Fuse guests, its own crate) and keeps it running: it
//! is found beside the helper's own binary (`/usr/local/bin/fuse-envd` in the guest image,
//! `target/<profile>/fuse-envd` for the `process` backend) or named by `--envd PATH`, and
//! runs with the helper's guest root and network namespace. A missing binary is said once
//! and is not an error: only the E2B API needs it. One that keeps failing at once is given
//! up on after a few tries, one whose port is taken (exit code 3) at once.
//!
//! It listens on every address of the guest, except for a `process` VM without a network
//! namespace of its own (it shares the host's network): there on loopback only, which is
//! where the host's tunnel reaches such a VM's ports.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Starts this many times in a row that each last less than [`QUICK`] end the tries.
const TRIES: u32 = 5;
/// A run shorter than this counts as failing at once.
const QUICK: Duration = Duration::from_secs(2);

/// The `fuse-envd` beside the running binary, if there is one.
pub fn beside_me() -> Option<PathBuf> {
    let me = std::env::current_exe().ok()?;
    let bin = me.parent()?.join("fuse-envd");
    bin.is_file().then_some(bin)
}

/// Supervises `bin` with guest root `root` on a thread of its own; `shared_net`: the
/// helper runs in the host's network (a `process` VM without a namespace).
pub fn start(bin: PathBuf, root: &Path, shared_net: bool) {
    let root = root.to_owned();
    let listen = if shared_net {
        "127.0.0.1:49983"
    } else {
        "0.0.0.0:49983"
    };
    std::thread::spawn(move || {
        let mut quick = 0;
        loop {
            let began = Instant::now();
            // The root goes in the environment, not the command line: the host's tools
            // find a VM's own processes by its directory on their command lines.
            let run = Command::new(&bin)
                .arg("--listen")
                .arg(listen)
                .env("FUSE_ENVD_ROOT", &root)
                .stdin(Stdio::null())
                .spawn()
                .and_then(|mut c| c.wait());
            match run {
                Ok(st) if st.code() == Some(3) => {
                    eprintln!("fuse-guest: fuse-envd's port is taken; not restarting it");
                    return;
                }
                Ok(st) => eprintln!("fuse-guest: fuse-envd exited ({st})"),
                Err(e) => eprintln!("fuse-guest: starting {}: {e}", bin.display()),
            }
            if began.elapsed() < QUICK {
                quick += 1;
                if quick >= TRIES {
                    eprintln!(
                        "fuse-guest: fuse-envd failed {TRIES} times at start; not restarting it"
                    );
                    return;
                }
            } else {
                quick = 0;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    });
}
