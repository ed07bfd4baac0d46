//! `pullgate diagnose`: the pull ladder, step by step.

use crate::cli::DiagnoseArgs;

#[derive(Debug, thiserror::Error)]
pub enum DiagnoseError {
    #[error("pullgate diagnose is not built yet")]
    NotBuilt,
}

pub async fn diagnose(_args: DiagnoseArgs) -> Result<bool, DiagnoseError> {
    Err(DiagnoseError::NotBuilt)
}
