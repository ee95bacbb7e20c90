//! Every path of the host the daemon touches (`/sys`, `/proc`, `/run`, `/var/lib`, `/etc`) goes through a
//! [`Sysroot`], so tests can build a fake tree in a temporary directory and run the real code against it.

use std::path::{Component, Path, PathBuf};

/// A root prefix: `/` on a gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sysroot {
    root: PathBuf,
}

impl Sysroot {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Sysroot { root: root.into() }
    }

    /// The real root, `/`.
    pub fn host() -> Self {
        Sysroot::new("/")
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `abs` (an absolute host path such as `/sys/kernel/livepatch`) under this root.
    /// `..` components are dropped so a path can never leave the root.
    pub fn path(&self, abs: impl AsRef<Path>) -> PathBuf {
        let mut out = self.root.clone();
        for c in abs.as_ref().components() {
            if let Component::Normal(part) = c {
                out.push(part);
            }
        }
        out
    }

    /// `/var/lib/otpatch`: journal, windows, committed bundles, downloads, audit log.
    pub fn state_dir(&self) -> PathBuf {
        self.path("/var/lib/otpatch")
    }

    /// `committed.json` ([`crate::committed`]): what this gateway committed. Its one owner: every reader and
    /// writer takes its path from here.
    pub fn committed_file(&self) -> PathBuf {
        self.state_dir().join(crate::committed::FILE_NAME)
    }

    /// `/run/otpatch`: what must not survive a reboot.
    pub fn runtime_dir(&self) -> PathBuf {
        self.path("/run/otpatch")
    }

    /// This boot's id (`/proc/sys/kernel/random/boot_id`): it changes with every boot. The error names the file.
    pub fn boot_id(&self) -> Result<String, String> {
        let p = self.path("/proc/sys/kernel/random/boot_id");
        let id = std::fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        match id.trim() {
            "" => Err(format!("{} is empty", p.display())),
            id => Ok(id.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_under_the_root() {
        let r = Sysroot::new("/tmp/fake");
        assert_eq!(r.path("/sys/kernel/livepatch"), PathBuf::from("/tmp/fake/sys/kernel/livepatch"));
        assert_eq!(r.path("/etc/../../etc/passwd"), PathBuf::from("/tmp/fake/etc/etc/passwd"));
        assert_eq!(Sysroot::host().path("/run/otpatch"), PathBuf::from("/run/otpatch"));
        assert_eq!(r.state_dir(), PathBuf::from("/tmp/fake/var/lib/otpatch"));
    }
}
