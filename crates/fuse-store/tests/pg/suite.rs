//! The conformance suite on both backends, one test per check.

mod memory {
    fuse_store::conformance_suite!(async { Some((fuse_store::MemoryStore::new(), ())) });
}

mod postgres {
    fuse_store::conformance_suite!(crate::fresh_store(Some(crate::KEY)));
}
