//! Running the `criu` binary: bounded in time, off the async runtime (a child process awaited by tokio), and
//! its failures turned into an operator's message carrying the end of CRIU's own log.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crate::backend::{BackendError, BackendResult};

/// Lines of CRIU's log an error carries at most.
pub const EXCERPT_LINES: usize = 15;

/// The `criu` binary and how long one command may take.
#[derive(Debug, Clone)]
pub struct Criu {
    pub program: PathBuf,
    pub timeout: Duration,
}

/// What a successful run printed.
#[derive(Debug, Clone, Default)]
pub struct Output {
    pub stdout: String,
    pub stderr: String,
}

impl Criu {
    /// Runs `criu ARGS`. `log` is the file the command writes its log to (`-o`), read for the excerpt when it
    /// fails; without one, the excerpt comes from what it printed. `what` names the action for the message.
    pub async fn run(&self, args: &[OsString], log: Option<&Path>, what: &str) -> BackendResult<Output> {
        let mut cmd = tokio::process::Command::new(&self.program);
        cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
        let child = cmd.spawn().map_err(|e| {
            BackendError::new(format!("{what}: cannot run {}: {e} (is CRIU installed?)", self.program.display()))
        })?;
        let out = match tokio::time::timeout(self.timeout, child.wait_with_output()).await {
            Ok(Ok(out)) => out,
            Ok(Err(e)) => return Err(BackendError::new(format!("{what}: waiting for criu: {e}"))),
            // The child is dropped, and kill_on_drop stops it: CRIU's tasks are released by the kernel when
            // their tracer dies.
            Err(_) => {
                let tail = log.map(log_excerpt).unwrap_or_default();
                return Err(BackendError::new(format!(
                    "{what}: criu did not finish within {} and was killed{}",
                    otpatch_common::units::format_duration(self.timeout),
                    indent_block(&tail, log)
                )));
            }
        };
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if out.status.success() {
            return Ok(Output { stdout, stderr });
        }
        let code = out.status.code().map_or_else(|| "killed by a signal".to_string(), |c| format!("exit {c}"));
        let mut tail = log.map(log_excerpt).unwrap_or_default();
        if tail.is_empty() {
            tail = excerpt(&format!("{stdout}\n{stderr}"));
        }
        Err(BackendError::new(format!("{what}: criu failed ({code}){}", indent_block(&tail, log))))
    }
}

fn indent_block(lines: &str, log: Option<&Path>) -> String {
    if lines.is_empty() {
        return String::new();
    }
    let from = log.and_then(Path::file_name).map_or("criu".into(), |n| n.to_string_lossy().into_owned());
    let mut s = format!("; {from} says:");
    for l in lines.lines() {
        s.push_str("\n  ");
        s.push_str(l);
    }
    s
}

/// The excerpt of a CRIU log file (empty if it cannot be read).
pub fn log_excerpt(path: &Path) -> String {
    std::fs::read(path).map(|b| excerpt(&String::from_utf8_lossy(&b))).unwrap_or_default()
}

/// At most [`EXCERPT_LINES`] lines of a CRIU log: its `Error` lines first (CRIU logs the cause where it
/// happens, then unwinds with more lines), then the last lines, each line once, in log order within each part.
pub fn excerpt(log: &str) -> String {
    let lines: Vec<&str> = log.lines().map(str::trim_end).filter(|l| !l.trim().is_empty()).collect();
    let errors: Vec<usize> = lines.iter().enumerate().filter(|(_, l)| l.contains("Error")).map(|(i, _)| i).collect();
    // Up to two thirds for errors (the last ones: the first may be harmless probes CRIU tolerates).
    let max_errors = EXCERPT_LINES * 2 / 3;
    let mut picked: Vec<usize> = errors.iter().rev().take(max_errors).rev().copied().collect();
    let room = EXCERPT_LINES - picked.len();
    let tail: Vec<usize> = (0..lines.len()).rev().filter(|i| !picked.contains(i)).take(room).collect();
    picked.extend(tail.into_iter().rev());
    picked.iter().map(|&i| lines[i]).collect::<Vec<_>>().join("\n")
}
