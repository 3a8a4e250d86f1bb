//! Logs written to a file are plain text: `fuse` and `fc-agent` colour their logs only on
//! a terminal (and never with `NO_COLOR` set), so a log file or journald carries no ANSI
//! escape codes. `fuse`'s start line says what a server with no host yet will do.

use crate::harness::spawn_fuse;
use crate::hosts::Host;

#[tokio::test]
async fn logs_to_a_file_carry_no_colour_codes() {
    // An empty NO_COLOR is the same as none: the processes must find out for themselves
    // that their output is not a terminal.
    let fuse = spawn_fuse("", &[("NO_COLOR", "")]);
    fuse.ready().await;
    let (status, _) = fuse.get("/v1/environments").await;
    assert_eq!(status, 200);
    let log = fuse.log_text();
    assert!(log.contains("fuse started"), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "ANSI codes in fuse's log file:\n{log:?}"
    );
    // Real VMs start once a host registers: the start line does not claim otherwise.
    assert!(
        log.contains("until one is registered, the in-memory stub"),
        "{log}"
    );
    let Some(mut host) = Host::create("plain") else {
        return;
    };
    host.start_agent();
    host.wait_up().await;
    let agent = host.log_text();
    assert!(!agent.trim().is_empty(), "the agent logged nothing");
    assert!(
        !agent.contains('\u{1b}'),
        "ANSI codes in fc-agent's log file:\n{agent:?}"
    );
}
