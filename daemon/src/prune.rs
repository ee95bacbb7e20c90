//! What a long-lived gateway keeps under its state directory: `downloads/`, `bundles/` and `livepatch/` are
//! pruned at the end of each window (never during one) to the committed bundles and their extracted modules.
//!
//! The committed bundle is never deleted: a reboot puts its livepatch back from it, and a rollback of the next
//! window does too. If `committed.json` cannot be read, nothing is deleted.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::committed::Committed;

/// The directories pruned, under the state directory.
pub const PRUNED_DIRS: [&str; 3] = ["downloads", "bundles", "livepatch"];

/// Removes from `state_dir`'s pruned directories every file that is not a committed bundle or the module
/// extracted from one (`livepatch/<digest prefix>-<payload>`, as the verifier names it). Sub-directories are left
/// alone. Returns what was removed and the files that could not be.
pub fn prune(state_dir: &Path, committed: &Committed) -> (Vec<PathBuf>, Vec<String>) {
    let keep: BTreeSet<PathBuf> = committed
        .records()
        .flat_map(|(_, b)| [b.path.clone(), b.path.canonicalize().unwrap_or_else(|_| b.path.clone())])
        .collect();
    let modules: Vec<String> =
        committed.records().map(|(_, b)| format!("{}-", &b.digest[..16.min(b.digest.len())])).collect();
    let (mut removed, mut problems) = (Vec::new(), Vec::new());
    for dir in PRUNED_DIRS {
        let dir = state_dir.join(dir);
        let entries = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                problems.push(format!("{}: {e}", dir.display()));
                continue;
            }
        };
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            if entry.file_type().map(|t| t.is_dir()).unwrap_or(true) {
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            let committed_bundle = keep.contains(&path) || path.canonicalize().is_ok_and(|p| keep.contains(&p));
            let committed_module = dir.ends_with("livepatch")
                && !name.ends_with(".partial")
                && modules.iter().any(|m| name.starts_with(m.as_str()));
            if committed_bundle || committed_module {
                continue;
            }
            match std::fs::remove_file(&path) {
                Ok(()) => removed.push(path),
                Err(e) => problems.push(format!("{}: {e}", path.display())),
            }
        }
    }
    (removed, problems)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::committed::CommittedBundle;
    use crate::engine::PatchKind;

    #[test]
    fn keeps_the_committed_bundle_and_module_and_nothing_else() {
        let d = tempfile::tempdir().unwrap();
        let s = d.path();
        for f in [
            "bundles/lp-1.0.1.otb",
            "bundles/lp-1.0.2.otb",
            "downloads/lp-1.0.3.otb.part",
            "livepatch/aaaaaaaaaaaaaaaa-fix.ko",
            "livepatch/aaaaaaaaaaaaaaaa-fix.partial",
            "livepatch/bbbbbbbbbbbbbbbb-fix.ko",
        ] {
            std::fs::create_dir_all(s.join(f).parent().unwrap()).unwrap();
            std::fs::write(s.join(f), f).unwrap();
        }
        std::fs::create_dir_all(s.join("bundles/keep-me")).unwrap();
        let mut c = Committed::default();
        c.insert(
            "gw",
            CommittedBundle {
                version: "1.0.1".into(),
                digest: format!("{}{}", "a".repeat(16), "c".repeat(48)),
                kind: PatchKind::Livepatch,
                path: s.join("bundles/lp-1.0.1.otb"),
                signer: "CN=vendor".into(),
                committed_at: "2026-12-01T00:00:00Z".parse().unwrap(),
            },
        );
        let (removed, problems) = prune(s, &c);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(removed.len(), 4, "{removed:?}");
        assert!(s.join("bundles/lp-1.0.1.otb").exists());
        assert!(s.join("livepatch/aaaaaaaaaaaaaaaa-fix.ko").exists());
        assert!(s.join("bundles/keep-me").is_dir(), "directories are left alone");
        assert!(!s.join("bundles/lp-1.0.2.otb").exists());
        assert!(!s.join("livepatch/aaaaaaaaaaaaaaaa-fix.partial").exists());
        assert!(!s.join("downloads/lp-1.0.3.otb.part").exists());
        // Nothing to prune: a second run removes nothing.
        assert!(prune(s, &c).0.is_empty());
    }
}
