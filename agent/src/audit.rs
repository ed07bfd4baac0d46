//! `pullgate audit`: the cluster-wide blast-radius report of pull secrets.

use crate::cli::AuditArgs;

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("pullgate audit is not built yet")]
    NotBuilt,
}

pub async fn audit(_args: AuditArgs) -> Result<bool, AuditError> {
    Err(AuditError::NotBuilt)
}
