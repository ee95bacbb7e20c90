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

    /// The version of the OS image this system runs: `IMAGE_VERSION=` of os-release(5) (`/etc/os-release`, else
    /// `/usr/lib/os-release` when the first does not exist), as an image build stamps it. `None` when the file
    /// names none. Only printable ASCII is kept, at most 64 characters: the value goes into outcomes and the audit
    /// log.
    pub fn image_version(&self) -> Option<String> {
        let text = ["/etc/os-release", "/usr/lib/os-release"]
            .iter()
            .find_map(|f| std::fs::read_to_string(self.path(f)).ok())?;
        let value = text.lines().find_map(|l| l.trim().strip_prefix("IMAGE_VERSION="))?.trim();
        let unquoted = ['"', '\''].iter().find_map(|q| value.strip_prefix(*q)?.strip_suffix(*q)).unwrap_or(value);
        let clean: String = unquoted.chars().filter(|c| c.is_ascii_graphic() || *c == ' ').take(64).collect();
        (!clean.trim().is_empty()).then(|| clean.trim().to_string())
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

    #[test]
    fn the_image_version_comes_from_os_release() {
        let d = tempfile::tempdir().unwrap();
        let r = Sysroot::new(d.path());
        assert_eq!(r.image_version(), None, "no os-release");
        std::fs::create_dir_all(d.path().join("usr/lib")).unwrap();
        std::fs::write(d.path().join("usr/lib/os-release"), "ID=debian\nIMAGE_VERSION=\"1.0.0\"\n").unwrap();
        assert_eq!(r.image_version().as_deref(), Some("1.0.0"));
        std::fs::create_dir_all(d.path().join("etc")).unwrap();
        std::fs::write(d.path().join("etc/os-release"), "ID=poky\nIMAGE_VERSION='2.1.0-rc1'\n").unwrap();
        assert_eq!(r.image_version().as_deref(), Some("2.1.0-rc1"), "/etc first");
        std::fs::write(d.path().join("etc/os-release"), "IMAGE_VERSION=\"3.0\x1b[2J\"\nVERSION_ID=12\n").unwrap();
        assert_eq!(r.image_version().as_deref(), Some("3.0[2J"), "no control characters");
        std::fs::write(d.path().join("etc/os-release"), "VERSION_ID=12\n").unwrap();
        assert_eq!(r.image_version(), None, "/etc/os-release without IMAGE_VERSION: not looked up further");
    }
}
