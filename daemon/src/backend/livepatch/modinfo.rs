//! What a kernel module says about itself (`.modinfo`), and the running kernel's build-id (`/sys/kernel/notes`).

use std::path::Path;

use object::{Object, ObjectSection};

/// The fields of a module's `.modinfo` that matter here.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ModInfo {
    pub name: String,
    pub livepatch: bool,
    pub vermagic: Option<String>,
    pub depends: Vec<String>,
    /// The checksum of the module's sources (modpost): with the name, what tells two builds apart in the
    /// running kernel (`/sys/module/<name>/srcversion`).
    pub srcversion: Option<String>,
}

impl ModInfo {
    /// Reads the `.modinfo` section of a module file.
    pub fn read(path: &Path) -> Result<ModInfo, String> {
        let data = std::fs::read(path).map_err(|e| format!("cannot read the module: {e}"))?;
        let file = object::File::parse(&*data).map_err(|e| format!("not an ELF kernel module: {e}"))?;
        let section = file.section_by_name(".modinfo").ok_or("no .modinfo section: not a kernel module")?;
        let bytes = section.data().map_err(|e| format!("unreadable .modinfo: {e}"))?;
        ModInfo::parse(bytes)
    }

    /// Parses NUL-separated `key=value` entries.
    pub fn parse(bytes: &[u8]) -> Result<ModInfo, String> {
        let mut info = ModInfo::default();
        for entry in bytes.split(|b| *b == 0).filter(|e| !e.is_empty()) {
            let text = String::from_utf8_lossy(entry);
            let Some((k, v)) = text.split_once('=') else { continue };
            match k {
                "name" => info.name = v.to_string(),
                "livepatch" => info.livepatch = v == "Y",
                "vermagic" => info.vermagic = Some(v.to_string()),
                "srcversion" => info.srcversion = Some(v.to_string()),
                "depends" => info.depends = v.split(',').filter(|d| !d.is_empty()).map(str::to_string).collect(),
                _ => {}
            }
        }
        if info.name.is_empty() {
            return Err(".modinfo has no name".into());
        }
        Ok(info)
    }

    /// Whether this module may be loaded into the running kernel: a livepatch, built for this release with the
    /// same vermagic flags as `reference` (a module of the running kernel, when one is known), and for the pinned
    /// build-id when the bundle pins one.
    pub fn check_against(
        &self,
        release: &str,
        reference: Option<&str>,
        pinned_build_id: Option<&str>,
        running_build_id: Option<&str>,
    ) -> Result<(), String> {
        if !self.livepatch {
            return Err(format!("module {} is not a livepatch (its .modinfo lacks livepatch=Y)", self.name));
        }
        let vermagic = self.vermagic.as_deref().ok_or_else(|| format!("module {} has no vermagic", self.name))?;
        let words: Vec<&str> = vermagic.split_whitespace().collect();
        if words.first() != Some(&release) {
            return Err(format!(
                "module {} was built for kernel {}, the running kernel is {release} (vermagic mismatch)",
                self.name,
                words.first().unwrap_or(&"?")
            ));
        }
        if let Some(r) = reference {
            let want: Vec<&str> = r.split_whitespace().collect();
            if want != words {
                return Err(format!(
                    "module {} has vermagic \"{}\", the running kernel's modules have \"{}\" (vermagic mismatch)",
                    self.name,
                    words.join(" "),
                    want.join(" ")
                ));
            }
        }
        if let Some(pin) = pinned_build_id {
            let running = running_build_id.unwrap_or("unknown");
            if !running.eq_ignore_ascii_case(pin) {
                return Err(format!(
                    "the bundle pins kernel build-id {pin}, the running kernel's is {running}: refused"
                ));
            }
        }
        Ok(())
    }
}

/// The GNU build-id in the kernel's ELF notes (`/sys/kernel/notes`), as hex.
pub fn kernel_build_id(notes: &Path) -> Result<String, String> {
    let data = std::fs::read(notes).map_err(|e| format!("{}: {e}", notes.display()))?;
    build_id_from_notes(&data).ok_or_else(|| format!("{}: no GNU build-id note", notes.display()))
}

/// Walks ELF notes (`namesz`, `descsz`, `type`, name, desc; 4-byte aligned, host endian) for NT_GNU_BUILD_ID.
pub fn build_id_from_notes(data: &[u8]) -> Option<String> {
    let u32_at = |o: usize| data.get(o..o + 4).map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize);
    let align = |n: usize| (n + 3) & !3;
    let mut off = 0usize;
    // Bounded by the data: every step moves forward by at least 12 bytes.
    while off + 12 <= data.len() {
        let (namesz, descsz, kind) = (u32_at(off)?, u32_at(off + 4)?, u32_at(off + 8)?);
        let name_start = off + 12;
        let desc_start = name_start.checked_add(align(namesz))?;
        let next = desc_start.checked_add(align(descsz))?;
        if next > data.len() {
            return None;
        }
        if kind == 3 && data.get(name_start..name_start + namesz) == Some(b"GNU\0") {
            return Some(data[desc_start..desc_start + descsz].iter().map(|b| format!("{b:02x}")).collect());
        }
        off = next;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const VERMAGIC: &str = "6.1.0-28-amd64 SMP preempt mod_unload modversions ";

    fn info(livepatch: bool, vermagic: &str) -> ModInfo {
        ModInfo { name: "otp_lp".into(), livepatch, vermagic: Some(vermagic.into()), depends: vec![], srcversion: None }
    }

    #[test]
    fn parses_modinfo_entries() {
        let raw = b"license=GPL\0name=otp_lp\0livepatch=Y\0depends=\0vermagic=6.1.0-28-amd64 SMP preempt \0";
        let i = ModInfo::parse(raw).unwrap();
        assert_eq!(i.name, "otp_lp");
        assert!(i.livepatch);
        assert_eq!(i.vermagic.as_deref(), Some("6.1.0-28-amd64 SMP preempt "));
        assert!(i.depends.is_empty());
        assert!(ModInfo::parse(b"livepatch=Y\0").unwrap_err().contains("no name"));
    }

    #[test]
    fn refuses_what_does_not_fit_the_running_kernel() {
        assert_eq!(info(true, VERMAGIC).check_against("6.1.0-28-amd64", Some(VERMAGIC), None, None), Ok(()));
        let e = info(false, VERMAGIC).check_against("6.1.0-28-amd64", None, None, None).unwrap_err();
        assert!(e.contains("not a livepatch"), "{e}");
        let e = info(true, VERMAGIC).check_against("6.1.0-30-amd64", None, None, None).unwrap_err();
        assert!(e.contains("built for kernel 6.1.0-28-amd64") && e.contains("6.1.0-30-amd64"), "{e}");
        let e = info(true, "6.1.0-28-amd64 SMP mod_unload ")
            .check_against("6.1.0-28-amd64", Some(VERMAGIC), None, None)
            .unwrap_err();
        assert!(e.contains("vermagic mismatch"), "{e}");
        let e = info(true, VERMAGIC).check_against("6.1.0-28-amd64", None, Some("abcd"), Some("ef01")).unwrap_err();
        assert!(e.contains("pins kernel build-id abcd"), "{e}");
        assert_eq!(info(true, VERMAGIC).check_against("6.1.0-28-amd64", None, Some("ABCD"), Some("abcd")), Ok(()));
    }

    #[test]
    fn finds_the_build_id_note() {
        let mut notes = Vec::new();
        // An unrelated note first (Xen-style), then the GNU build-id.
        for (name, kind, desc) in [(&b"Xen\0"[..], 1u32, &[1u8, 2, 3][..]), (b"GNU\0", 3, &[0xde, 0xad, 0xbe, 0xef])] {
            notes.extend((name.len() as u32).to_ne_bytes());
            notes.extend((desc.len() as u32).to_ne_bytes());
            notes.extend(kind.to_ne_bytes());
            notes.extend(name);
            notes.extend(desc);
            while notes.len() % 4 != 0 {
                notes.push(0);
            }
        }
        assert_eq!(build_id_from_notes(&notes).as_deref(), Some("deadbeef"));
        assert_eq!(build_id_from_notes(&notes[..20]), None, "truncated notes end the walk");
    }

    #[test]
    fn reads_modinfo_from_a_real_elf_object() {
        // gcc makes a relocatable ELF object with a .modinfo section, as kbuild does for a .ko.
        let d = tempfile::tempdir().unwrap();
        let c = d.path().join("m.c");
        std::fs::write(
            &c,
            "const char modinfo[] __attribute__((section(\".modinfo\"), used)) = \
             \"name=otp_lp\\0livepatch=Y\\0vermagic=6.1.0-28-amd64 SMP preempt mod_unload modversions \";\n",
        )
        .unwrap();
        let o = d.path().join("m.ko");
        let st = std::process::Command::new("cc").arg("-c").arg(&c).arg("-o").arg(&o).status().unwrap();
        assert!(st.success());
        let i = ModInfo::read(&o).unwrap();
        assert_eq!(i, info(true, VERMAGIC));
        let e = ModInfo::read(&c).unwrap_err();
        assert!(e.contains("not an ELF"), "{e}");
    }
}
