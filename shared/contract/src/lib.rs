//! The wire contract between the renewal services: the protobuf messages compiled from
//! `proto/*.proto`, and every subject and stream name, built from a configurable prefix
//! so that tests (and tenants) can share one NATS server without seeing each other.
//!
//! `proto/SUBJECTS.md` is the human-readable table of the same facts; keep them together.

/// Facts from the insurer's core policy system (an external producer).
pub mod core {
    include!(concat!(env!("OUT_DIR"), "/renewal.core.v1.rs"));
}
/// Facts published by the lists service.
pub mod lists {
    include!(concat!(env!("OUT_DIR"), "/renewal.lists.v1.rs"));
}
/// Facts published by the assignment service.
pub mod assignment {
    include!(concat!(env!("OUT_DIR"), "/renewal.assignment.v1.rs"));
}
/// Commands produced by the scheduler service.
pub mod scheduler {
    include!(concat!(env!("OUT_DIR"), "/renewal.scheduler.v1.rs"));
}
/// Facts published by the dispatch service.
pub mod dispatch {
    include!(concat!(env!("OUT_DIR"), "/renewal.dispatch.v1.rs"));
}
/// Facts every service publishes about itself (dead letters).
pub mod platform {
    include!(concat!(env!("OUT_DIR"), "/renewal.platform.v1.rs"));
}

pub mod permissions;
pub mod sms_templates;
mod subjects;
pub use subjects::{InvalidPrefix, Stream, Subjects, subject};
