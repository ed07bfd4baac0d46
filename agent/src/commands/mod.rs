//! One-shot commands for operators: `auth resolve`, `check`, `diagnose`, `audit`, `status` and
//! `canary` (the local API's client side).

pub mod audit;
pub mod auth;
pub mod check;
pub mod diagnose;
pub mod one_shot;
pub mod status;
pub mod table;
