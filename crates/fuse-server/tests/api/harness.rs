//! The API tests' harness is the workspace's one (`fuse-testkit`): the control plane
//! in-process with a client.

pub use fuse_testkit::server::*;
