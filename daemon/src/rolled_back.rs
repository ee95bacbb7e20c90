//! Versions a window rolled back on this gateway. The next window does not install one of them again on its own
//! (the patch channel skips it); `otpatchctl retry VERSION` (D-Bus `Retry`) allows it again.
//!
//! Kept in `<state>/rolled-back.json`, beside `committed.json`, written atomically. An unreadable file is an
//! error, never "nothing recorded": that would put a version that failed the plant back in by itself.

use std::path::Path;

use otpatch_common::api::RolledBackVersion;
use serde::{Deserialize, Serialize};

use crate::fsutil::write_atomic;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolledBack {
    pub versions: Vec<RolledBackVersion>,
}

impl RolledBack {
    /// Reads the file; a missing file is "nothing rolled back".
    pub fn load(path: &Path) -> Result<RolledBack, String> {
        Ok(crate::fsutil::load_json(path, "which versions were rolled back")?.unwrap_or_default())
    }

    /// The record of `version` for `compatible`, if it was rolled back.
    pub fn find(&self, compatible: &str, version: &str) -> Option<&RolledBackVersion> {
        self.versions.iter().find(|r| r.compatible == compatible && r.version == version)
    }

    fn save(&self, path: &Path) -> Result<(), String> {
        let text = serde_json::to_vec_pretty(self).map_err(|e| e.to_string())?;
        write_atomic(path, &text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Records a rollback (the latest one of the same compatible and version replaces an older record).
    pub fn record(path: &Path, rec: RolledBackVersion) -> Result<(), String> {
        let mut r = RolledBack::load(path)?;
        r.versions.retain(|v| !(v.compatible == rec.compatible && v.version == rec.version));
        r.versions.push(rec);
        r.save(path)
    }

    /// Forgets `version` (every compatible); returns the records removed, empty when it was not recorded.
    pub fn forget(path: &Path, version: &str) -> Result<Vec<RolledBackVersion>, String> {
        let mut r = RolledBack::load(path)?;
        let (gone, kept): (Vec<_>, Vec<_>) = r.versions.into_iter().partition(|v| v.version == version);
        r.versions = kept;
        if !gone.is_empty() {
            r.save(path)?;
        }
        Ok(gone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(v: &str) -> RolledBackVersion {
        RolledBackVersion {
            compatible: "gw".into(),
            version: v.into(),
            digest: format!("d-{v}"),
            rolled_back_at: "2026-12-01T00:20:00Z".parse().unwrap(),
            why: "health failed: boiler".into(),
        }
    }

    #[test]
    fn records_finds_and_forgets() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("rolled-back.json");
        assert_eq!(RolledBack::load(&p).unwrap(), RolledBack::default());
        RolledBack::record(&p, rec("1.0.2")).unwrap();
        RolledBack::record(&p, rec("1.0.2")).unwrap();
        RolledBack::record(&p, rec("1.0.3")).unwrap();
        let r = RolledBack::load(&p).unwrap();
        assert_eq!(r.versions.len(), 2);
        assert_eq!(r.find("gw", "1.0.2").unwrap().digest, "d-1.0.2");
        assert!(r.find("other", "1.0.2").is_none());
        assert_eq!(RolledBack::forget(&p, "1.0.2").unwrap().len(), 1);
        assert!(RolledBack::forget(&p, "1.0.2").unwrap().is_empty());
        assert!(RolledBack::load(&p).unwrap().find("gw", "1.0.2").is_none());
        assert!(RolledBack::load(&p).unwrap().find("gw", "1.0.3").is_some());
    }

    #[test]
    fn an_unreadable_file_is_an_error_not_a_blank_slate() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("rolled-back.json");
        std::fs::write(&p, b"[ torn").unwrap();
        let e = RolledBack::load(&p).unwrap_err();
        assert!(e.contains("refusing to guess"), "{e}");
        assert!(RolledBack::record(&p, rec("1.0.2")).is_err(), "an unreadable record is not overwritten");
    }
}
