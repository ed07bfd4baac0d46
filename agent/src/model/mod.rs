//! What pullgate talks about: plain data types, no I/O. Image references, the PullSet and its
//! validation, the objects sources produce and the snapshot the daemon passes around, node
//! identity, verdicts, the report records, and wall-clock times (RFC 3339, epoch seconds).

pub mod image_ref;
pub mod inventory;
pub mod node;
pub mod outcome;
pub mod pod_images;
pub mod printable;
pub mod pullset;
pub mod snapshot;
pub mod time;
pub mod verdict;
