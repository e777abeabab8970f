//! `chunkd verify`: an offline check of a data directory (being written by a helper).

use std::process::ExitCode;

use crate::config::VerifyArgs;

/// Runs the check and prints its report; exit status 1 if a problem remains.
pub fn run(_args: &VerifyArgs) -> ExitCode {
    ExitCode::FAILURE
}
