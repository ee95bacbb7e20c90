//! `otpatchctl bundle create|inspect`: signed bundles, offline. `inspect` gives the verdict of the gateway's own
//! policy (trust anchors, compatible, committed version, running kernel) under `--root`, without applying anything.

use std::path::Path;

use otpatch_common::bundle::{self, CreateRequest, Expectations, InspectReport, TrustStore, Verdict};
use otpatch_common::policy::{self, LoadOptions, PolicyPaths};
use serde_json::json;

use crate::cli::{BundleCreateArgs, BundleInspectArgs};
use crate::error::{exit, names, CtlError};
use crate::out;

pub fn create(a: &BundleCreateArgs, json: bool) -> Result<u8, CtlError> {
    let req = CreateRequest {
        kind: a.kind.clone(),
        compatible: a.compatible.clone(),
        version: a.version.clone(),
        expires: a.expires,
        kernel_releases: a.kernel_release.clone(),
        build_id: a.build_id.clone(),
        payloads: a.payloads.clone(),
        signer_cert: a.signer_cert.clone(),
        signer_key: a.signer_key.clone(),
        chain: a.chain.clone(),
    };
    bundle::create(&req, &a.out)
        .map_err(|e| CtlError::new(exit::BUNDLE_REFUSED, names::BUNDLE_REFUSED, format!("bundle not created: {e}")))?;
    let size = std::fs::metadata(&a.out).map(|m| m.len()).unwrap_or(0);
    if json {
        out::json(&json!({"bundle": a.out, "size": size, "version": a.version, "compatible": a.compatible}));
    } else {
        out::line(&format!("{} ({size} bytes): {} {} for {}", a.out.display(), a.kind, a.version, a.compatible));
    }
    Ok(exit::OK)
}

/// The expectations of the gateway under `root`: its policy, what it committed, its kernel.
fn gateway_expectations(root: &Path) -> Result<(TrustStore, Expectations), String> {
    let opts = LoadOptions { check_files: true, file_root: root.to_path_buf() };
    let settings = policy::load(&PolicyPaths::under(root), &opts)
        .map_err(|e| format!("the policy under {} is invalid:\n{e}", root.display()))?;
    let under = |p: &Path| root.join(p.strip_prefix("/").unwrap_or(p));
    let anchors: Vec<_> = settings.trust.anchors.iter().map(|p| under(p)).collect();
    let crl = settings.trust.crl.as_ref().map(|p| under(p));
    let issuer = settings.trust.crl_issuer.as_ref().map(|p| under(p));
    let trust =
        TrustStore::from_trust_files(&anchors, &settings.trust.allowed_signers, crl.as_deref(), issuer.as_deref())
            .map_err(|e| e.to_string())?;
    let committed =
        committed_versions(&under(Path::new("/var/lib/otpatch/committed.json")), &settings.gateway.compatible)?;
    let kernel_release =
        std::fs::read_to_string(under(Path::new("/proc/sys/kernel/osrelease"))).ok().map(|s| s.trim().to_string());
    let exp = Expectations {
        compatible: settings.gateway.compatible.clone(),
        last_committed: committed,
        allow_downgrade: settings.trust.allow_downgrade,
        now: jiff::Timestamp::now(),
        kernel_release,
    };
    Ok((trust, exp))
}

/// The versions the gateway committed for `compatible`, by the manifest's kind, as the daemon's anti-rollback
/// compares them (daemon/src/committed.rs owns the file: `kinds` by compatible and kind, with `bundles`, the
/// last commit of any kind, for older releases; the newer record of a kind wins). A missing file is nothing
/// committed; an unreadable one is an error, so a downgrade is never shown as valid.
fn committed_versions(path: &Path, compatible: &str) -> Result<std::collections::BTreeMap<String, String>, String> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Default::default()),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let v: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| format!("{}: not what the daemon writes: {e}", path.display()))?;
    let manifest_kind = |k: &str| if k == "ab" { "rauc".to_string() } else { k.to_string() };
    // (version, committed_at) by manifest kind.
    let mut out: std::collections::BTreeMap<String, (String, Option<jiff::Timestamp>)> = Default::default();
    let mut take = |kind: &str, rec: &serde_json::Value, at_key: &str| -> Result<(), String> {
        let (Some(version), Some(at)) =
            (rec["version"].as_str(), rec["committed_at"].as_str().and_then(|t| t.parse::<jiff::Timestamp>().ok()))
        else {
            return Err(format!("{}: {at_key}: no version or commit time: not what the daemon writes", path.display()));
        };
        let e = out.entry(manifest_kind(kind)).or_insert_with(|| (version.to_string(), Some(at)));
        if Some(at) > e.1 {
            *e = (version.to_string(), Some(at));
        }
        Ok(())
    };
    if let Some(kinds) = v["kinds"][compatible].as_object() {
        for (kind, rec) in kinds {
            take(kind, rec, &format!("kinds.{compatible}.{kind}"))?;
        }
    }
    let last = &v["bundles"][compatible];
    if !last.is_null() {
        let Some(kind) = last["kind"].as_str() else {
            return Err(format!("{}: bundles.{compatible}: no kind: not what the daemon writes", path.display()));
        };
        take(kind, last, &format!("bundles.{compatible}"))?;
    }
    Ok(out.into_iter().map(|(k, (v, _))| (k, v)).collect())
}

pub fn inspect(a: &BundleInspectArgs, json: bool) -> Result<u8, CtlError> {
    let (checked, why_not) = if a.no_policy {
        (None, Some("--no-policy".to_string()))
    } else {
        match gateway_expectations(&a.root) {
            Ok(te) => (Some(te), None),
            Err(e) => (None, Some(e)),
        }
    };
    let report = match &checked {
        Some((trust, exp)) => bundle::inspect(&a.file, Some(trust), Some(exp)),
        None => bundle::inspect(&a.file, None, None),
    }
    .map_err(|e| CtlError::new(exit::BUNDLE_REFUSED, names::BUNDLE_REFUSED, format!("{}: {e}", a.file.display())))?;
    if json {
        let mut v = serde_json::to_value(&report).map_err(|e| CtlError::failed(e.to_string()))?;
        if let Some(w) = &why_not {
            v["unchecked_because"] = json!(w);
        }
        out::json(&v);
    } else {
        out::write(&render(&report, why_not.as_deref()));
    }
    Ok(match report.verdict {
        Verdict::Invalid { .. } => exit::BUNDLE_REFUSED,
        _ => exit::OK,
    })
}

/// The human page of `bundle inspect`.
pub fn render(r: &InspectReport, unchecked_because: Option<&str>) -> String {
    let m = &r.manifest;
    let mut s = String::new();
    s.push_str(&format!("Bundle:       {} ({:?}, {} bytes)\n", r.path.display(), r.format, r.size));
    s.push_str(&format!("Kind:         {}\nCompatible:   {}\nVersion:      {}\n", m.kind, m.compatible, m.version));
    if let Some(e) = m.expires {
        s.push_str(&format!("Expires:      {e}\n"));
    }
    if !m.kernel_releases.is_empty() {
        s.push_str(&format!("Kernels:      {}\n", m.kernel_releases.join(", ")));
    }
    if let Some(b) = &m.build_id {
        s.push_str(&format!("Build-id:     {b}\n"));
    }
    s.push_str(&format!("Manifest:     sha256 {}\n", r.manifest_digest));
    for p in &m.payloads {
        s.push_str(&format!("Payload:      {} ({} bytes, sha256 {})\n", p.name, p.size, p.sha256));
    }
    s.push_str(&format!(
        "Signer:       {} ({}{})\n",
        r.signer.as_deref().unwrap_or("-"),
        r.digest_algorithm,
        r.signing_time.map(|t| format!(", signed {t}")).unwrap_or_default()
    ));
    for c in &r.chain {
        s.push_str(&format!(
            "  cert:       {} (issuer {}, valid {} to {})\n",
            c.subject, c.issuer, c.not_before, c.not_after
        ));
    }
    let verdict = match (&r.verdict, unchecked_because) {
        (Verdict::Valid, _) => "ACCEPTED by the gateway's policy".to_string(),
        (Verdict::Invalid { error }, _) => format!("REFUSED: {error}"),
        (Verdict::Unchecked, Some(why)) => format!("not checked against a policy ({why})"),
        (Verdict::Unchecked, None) => "not checked against a policy".to_string(),
    };
    s.push_str(&format!("Verdict:      {verdict}\n"));
    s
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a test's failure is its panic
mod tests {
    use super::committed_versions;

    #[test]
    fn committed_versions_are_read_by_kind_as_the_daemon_writes_them() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("committed.json");
        assert_eq!(committed_versions(&p, "gw"), Ok(Default::default()), "no file: nothing committed");
        let rec = |v: &str, kind: &str, at: &str| {
            serde_json::json!({"version": v, "digest": "d", "kind": kind, "path": "/b", "signer": "CN=v",
                               "committed_at": at})
        };
        let file = serde_json::json!({
            "bundles": {"gw": rec("3.0.0", "ab", "2026-12-01T00:00:01.5Z")},
            "kinds": {"gw": {"livepatch": rec("1.1.0", "livepatch", "2026-11-01T00:00:00Z"),
                             "ab": rec("3.0.0", "ab", "2026-12-01T00:00:01.5Z")}},
            "time_floor": null
        });
        std::fs::write(&p, serde_json::to_vec(&file).unwrap()).unwrap();
        let v = committed_versions(&p, "gw").unwrap();
        assert_eq!(v.get("livepatch").map(String::as_str), Some("1.1.0"));
        assert_eq!(v.get("rauc").map(String::as_str), Some("3.0.0"));
        // Written by an older release after this one: `bundles` holds a newer livepatch (fractions of a second
        // of different lengths compare as times, not as text).
        let mut file = file;
        file["bundles"]["gw"] = rec("1.2.0", "livepatch", "2026-12-01T00:00:01.25Z");
        file["kinds"]["gw"]["livepatch"] = rec("1.1.0", "livepatch", "2026-12-01T00:00:01.2Z");
        std::fs::write(&p, serde_json::to_vec(&file).unwrap()).unwrap();
        assert_eq!(committed_versions(&p, "gw").unwrap().get("livepatch").map(String::as_str), Some("1.2.0"));
        std::fs::write(&p, b"{ torn").unwrap();
        let e = committed_versions(&p, "gw").unwrap_err();
        assert!(e.contains("committed.json"), "{e}");
        std::fs::write(&p, br#"{"bundles": {"gw": {"version": "2.0.0"}}}"#).unwrap();
        let e = committed_versions(&p, "gw").unwrap_err();
        assert!(e.contains("bundles.gw: no kind"), "{e}");
    }
}
