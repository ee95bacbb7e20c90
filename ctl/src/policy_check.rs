//! `otpatchctl policy check`: validates site policies offline, with the loader the daemon uses.

use otpatch_common::policy::{self, LoadOptions, PolicyErrors, PolicyPaths};
use serde_json::json;

use crate::cli::PolicyCheckArgs;
use crate::error::{exit, names, CtlError};
use crate::out;

pub fn run(args: &PolicyCheckArgs, json: bool) -> Result<u8, CtlError> {
    let opts = LoadOptions { check_files: !args.no_files, file_root: args.root.clone() };
    let loaded = if args.files.is_empty() {
        policy::load(&PolicyPaths::under(&args.root), &opts)
    } else {
        policy::load_files(&args.files, &opts)
    };
    match loaded {
        Ok(settings) => {
            if json {
                let v = serde_json::to_value(&settings)
                    .map_err(|e| CtlError::failed(format!("cannot write the policy as JSON: {e}")))?;
                out::json(&v);
            } else {
                out::line(&format!(
                    "policy OK: {} files, {} windows, {} probes, {} flows",
                    settings.sources.len(),
                    settings.windows.len(),
                    settings.probes.len(),
                    settings.segmentation.allow.len()
                ));
            }
            Ok(exit::OK)
        }
        Err(PolicyErrors(errors)) => {
            for e in &errors {
                out::error_line(&e.to_string());
            }
            let summary = match errors.len() {
                0 => "policy invalid".to_string(),
                1 => "policy invalid: 1 error".to_string(),
                n => format!("policy invalid: {n} errors"),
            };
            eprintln!("otpatchctl: {summary}");
            if json {
                let list: Vec<serde_json::Value> = errors
                    .iter()
                    .map(|e| {
                        json!({
                            "file": e.file.display().to_string(),
                            "line": e.line,
                            "column": e.column,
                            "key": e.key,
                            "message": e.message,
                        })
                    })
                    .collect();
                out::json(&json!({"error": {"name": names::POLICY_INVALID, "message": summary}, "errors": list}));
            }
            Ok(exit::POLICY_INVALID)
        }
    }
}
