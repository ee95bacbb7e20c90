//! The manifest of an otpatch bundle: a small TOML document, the only thing the CMS signature covers directly. It
//! pins every payload by name, size and SHA-256 and says what the bundle is for (see FORMAT.md).

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::BundleError;

/// Largest manifest accepted: enough for 64 payloads with long names, small enough to hold in memory.
pub const MAX_MANIFEST_LEN: u64 = 64 * 1024;
/// Most payloads one bundle may carry.
pub const MAX_PAYLOADS: usize = 64;

/// One payload as the manifest pins it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PayloadInfo {
    pub name: String,
    pub size: u64,
    /// Lowercase hex SHA-256.
    pub sha256: String,
    /// RAUC only: the slot class the image is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot_class: Option<String>,
}

/// What a bundle states about itself, once its signature is checked. For RAUC bundles `kind` is `rauc`,
/// `expires` is `None` (RAUC manifests carry no expiry) and `payloads` are the images.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    pub kind: String,
    pub compatible: String,
    pub version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kernel_releases: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_id: Option<String>,
    #[serde(default)]
    pub payloads: Vec<PayloadInfo>,
}

fn bad(field: &str, reason: impl Into<String>) -> BundleError {
    BundleError::Manifest { reason: format!("{field}: {}", reason.into()) }
}

fn check_text(field: &str, value: &str, max: usize, allowed: impl Fn(char) -> bool) -> Result<(), BundleError> {
    if value.is_empty() {
        return Err(bad(field, "is empty"));
    }
    if value.len() > max {
        return Err(bad(field, format!("is longer than {max} bytes")));
    }
    if let Some(c) = value.chars().find(|c| !allowed(*c)) {
        return Err(bad(field, format!("{value:?} contains {c:?}, which is not allowed")));
    }
    Ok(())
}

fn version_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '+' | '_' | '~')
}

impl Manifest {
    /// Parses and validates an otpatch manifest. The bytes are already known to be signed.
    pub fn parse_otpatch(bytes: &[u8]) -> Result<Manifest, BundleError> {
        let text = std::str::from_utf8(bytes)
            .map_err(|e| BundleError::Manifest { reason: format!("not UTF-8 at byte {}", e.valid_up_to()) })?;
        let m: Manifest = toml::from_str(text).map_err(|e| BundleError::Manifest { reason: e.to_string() })?;
        m.validate()?;
        Ok(m)
    }

    /// The rules FORMAT.md states; `create` applies them too, so it never writes what `verify` refuses.
    pub fn validate(&self) -> Result<(), BundleError> {
        if self.format != 1 {
            return Err(bad("format", format!("{} is not a known format (expected 1)", self.format)));
        }
        if self.kind != "livepatch" && self.kind != "app" {
            return Err(bad("kind", format!("{:?} is neither \"livepatch\" nor \"app\"", self.kind)));
        }
        check_text("compatible", &self.compatible, 128, |c| !c.is_control())?;
        check_text("version", &self.version, 64, version_char)?;
        if self.expires.is_none() {
            return Err(bad("expires", "is missing; every otpatch bundle must expire"));
        }
        if self.kind == "livepatch" && self.kernel_releases.is_empty() {
            return Err(bad("kernel_releases", "a livepatch must name the kernel release(s) it is for"));
        }
        for r in &self.kernel_releases {
            check_text("kernel_releases", r, 128, |c| c.is_ascii_graphic())?;
        }
        if let Some(id) = &self.build_id {
            if id.is_empty() || id.len() > 128 || id.len() % 2 != 0 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad("build_id", format!("{id:?} is not an even-length hex string of at most 128 digits")));
            }
        }
        if self.payloads.is_empty() {
            return Err(bad("payloads", "a bundle needs at least one payload"));
        }
        if self.payloads.len() > MAX_PAYLOADS {
            return Err(bad("payloads", format!("{} payloads, more than {MAX_PAYLOADS}", self.payloads.len())));
        }
        for (i, p) in self.payloads.iter().enumerate() {
            let field = format!("payloads[{i}]");
            check_text(&format!("{field}.name"), &p.name, 255, |c| !c.is_control() && c != '/' && c != '\\')?;
            if p.name == "." || p.name == ".." {
                return Err(bad(&format!("{field}.name"), format!("{:?} is not a file name", p.name)));
            }
            if self.payloads[..i].iter().any(|q| q.name == p.name) {
                return Err(bad(&format!("{field}.name"), format!("{:?} appears twice", p.name)));
            }
            if p.sha256.len() != 64 || !p.sha256.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
                return Err(bad(&format!("{field}.sha256"), format!("{:?} is not 64 lowercase hex digits", p.sha256)));
            }
            if p.slot_class.is_some() {
                return Err(bad(&format!("{field}.slot_class"), "only RAUC images have a slot class"));
            }
        }
        Ok(())
    }

    /// The manifest as `create` writes it.
    pub fn to_toml(&self) -> Result<String, BundleError> {
        toml::to_string(self).map_err(|e| BundleError::Manifest { reason: e.to_string() })
    }
}
