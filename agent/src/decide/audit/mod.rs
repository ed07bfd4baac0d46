//! `pullgate audit`'s judgement: per-namespace pull secrets, the registries they cover, who uses
//! them by the pod rule, and the findings (`analysis`); credentials compared by a keyed HMAC
//! fingerprint, never by value (`fingerprint`). Plain types in, a report out.

pub mod analysis;
pub mod fingerprint;
