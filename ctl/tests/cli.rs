//! otpatchctl as a process, for what needs no daemon: help, completions, man pages, offline policy checks, and the
//! exit code when the bus is not there.

#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

fn otpatchctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_otpatchctl"))
        .args(args)
        // Never talk to this machine's real bus from a test.
        .env("DBUS_SYSTEM_BUS_ADDRESS", "unix:path=/nonexistent/otpatchctl-test/bus")
        .output()
        .expect("otpatchctl runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

const SUBCOMMANDS: [&str; 13] = [
    "status",
    "health",
    "livepatch",
    "window",
    "apply",
    "rollback",
    "reload",
    "watch",
    "log",
    "policy",
    "bundle",
    "completions",
    "man",
];

#[test]
fn help_documents_the_exit_codes() {
    let o = otpatchctl(&["--help"]);
    assert_eq!(o.status.code(), Some(0));
    let text = stdout(&o);
    for needle in ["Exit codes:", "3   daemon not reachable", "7   audit chain broken", "DBUS_SYSTEM_BUS_ADDRESS"] {
        assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
    }
}

#[test]
fn usage_errors_exit_2() {
    assert_eq!(otpatchctl(&["frobnicate"]).status.code(), Some(2));
    assert_eq!(otpatchctl(&["window", "schedule", "--start", "2026-12-01T02:00"]).status.code(), Some(2));
    assert_eq!(otpatchctl(&["window", "schedule", "--start", "x", "--duration", "ninety"]).status.code(), Some(2));
}

#[test]
fn completions_name_the_subcommands() {
    for shell in ["bash", "zsh", "fish"] {
        let o = otpatchctl(&["completions", shell]);
        assert_eq!(o.status.code(), Some(0), "{shell}: {}", stderr(&o));
        let script = stdout(&o);
        assert!(!script.is_empty(), "{shell}");
        for sub in SUBCOMMANDS {
            assert!(script.contains(sub), "{shell} completion does not mention {sub}");
        }
        assert!(script.contains("schedule"), "{shell} completion does not mention window schedule");
    }
    assert_eq!(otpatchctl(&["completions", "tcsh"]).status.code(), Some(2));
}

#[test]
fn man_page_on_stdout() {
    let o = otpatchctl(&["man"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let page = stdout(&o);
    assert!(page.starts_with(".ie") || page.contains(".TH"), "not roff:\n{page}");
    for sub in SUBCOMMANDS {
        assert!(page.contains(sub), "man page does not mention {sub}");
    }
    assert!(page.contains("Exit codes"), "man page lacks the exit codes");
}

#[test]
fn man_pages_into_a_directory() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("man1");
    let o = otpatchctl(&["man", "--out", out.to_str().expect("utf-8 path")]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    for page in ["otpatchctl.1", "otpatchctl-window.1", "otpatchctl-window-schedule.1", "otpatchctl-policy-check.1"] {
        let text = fs::read_to_string(out.join(page)).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(text.contains(".TH"), "{page} is not a man page");
    }
    assert!(!out.join("otpatchctl-help.1").exists(), "no page for the help subcommand");
    assert!(stdout(&o).contains("otpatchctl-watch.1"), "lists what it wrote:\n{}", stdout(&o));
}

const GOOD: &str = r#"[gateway]
id = "gw-01"
compatible = "acme-gw-x86"

[trust]
anchors = ["/etc/otpatch/trust/site-ca.pem"]

[window.sunday]
days = ["sun"]
start = "02:00"
duration = "2h"
timezone = "Europe/Berlin"

[segmentation.allow.historian]
address = "10.0.5.20"
port = 4840
"#;

/// A root with the site policy in its standard place and the trust anchor it names.
fn root_with(policy: &str) -> tempfile::TempDir {
    let root = tempfile::tempdir().expect("temp dir");
    write(root.path(), "etc/otpatch/policy.toml", policy);
    write(root.path(), "etc/otpatch/trust/site-ca.pem", "-----BEGIN CERTIFICATE-----\n");
    root
}

fn write(root: &Path, rel: &str, text: &str) {
    let path = root.join(rel);
    fs::create_dir_all(path.parent().expect("has a parent")).expect("mkdir");
    fs::write(path, text).expect("write");
}

#[test]
fn good_policy_in_the_standard_place() {
    let root = root_with(GOOD);
    let o = otpatchctl(&["policy", "check", "--root", root.path().to_str().expect("utf-8")]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o), "policy OK: 1 files, 1 windows, 0 probes, 1 flows\n");
}

#[test]
fn good_policy_as_json() {
    let root = root_with(GOOD);
    let o = otpatchctl(&["--json", "policy", "check", "--root", root.path().to_str().expect("utf-8")]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("JSON on stdout");
    assert_eq!(v["gateway"]["id"], "gw-01");
}

#[test]
fn missing_anchor_is_found_unless_files_are_not_checked() {
    let root = tempfile::tempdir().expect("temp dir");
    write(root.path(), "etc/otpatch/policy.toml", GOOD);
    let r = root.path().to_str().expect("utf-8");
    let o = otpatchctl(&["policy", "check", "--root", r]);
    assert_eq!(o.status.code(), Some(6), "{}", stdout(&o));
    assert!(stderr(&o).contains("policy.toml:6:"), "{}", stderr(&o));
    assert!(stderr(&o).contains("trust.anchors"), "{}", stderr(&o));
    let o = otpatchctl(&["policy", "check", "--root", r, "--no-files"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

#[test]
fn broken_policy_files_exit_6_with_positions() {
    let dir = tempfile::tempdir().expect("temp dir");
    let site = dir.path().join("site.toml");
    let line3 = dir.path().join("line3.toml");
    fs::write(&site, GOOD).expect("write");
    fs::write(&line3, "[limits]\nmax_window = \"90 fortnights\"\n\n[rollback]\non_degraded = \"maybe\"\n")
        .expect("write");
    let o =
        otpatchctl(&["policy", "check", site.to_str().expect("utf-8"), line3.to_str().expect("utf-8"), "--no-files"]);
    assert_eq!(o.status.code(), Some(6), "{}", stdout(&o));
    let err = stderr(&o);
    let line3_name = line3.display().to_string();
    assert!(err.contains(&format!("{line3_name}:2:")), "{err}");
    assert!(err.contains("limits.max_window"), "{err}");
    assert!(err.contains(&format!("{line3_name}:5:")), "{err}");
    assert!(err.contains("rollback.on_degraded"), "{err}");
    assert!(stdout(&o).is_empty(), "errors go to stderr: {}", stdout(&o));

    let o = otpatchctl(&[
        "--json",
        "policy",
        "check",
        site.to_str().expect("utf-8"),
        line3.to_str().expect("utf-8"),
        "--no-files",
    ]);
    assert_eq!(o.status.code(), Some(6));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("JSON on stdout");
    assert_eq!(v["error"]["name"], "otpatchctl.PolicyInvalid");
    let errors = v["errors"].as_array().expect("an error list");
    assert_eq!(errors.len(), 2, "{v}");
    assert_eq!(errors[0]["file"], line3_name.as_str());
    assert_eq!(errors[0]["line"], 2);
    assert_eq!(errors[0]["key"], "limits.max_window");
}

#[test]
fn syntax_errors_are_positioned() {
    let dir = tempfile::tempdir().expect("temp dir");
    let site = dir.path().join("site.toml");
    fs::write(&site, "[gateway]\nid = \"gw-01\ncompatible = \"x\"\n").expect("write");
    let o = otpatchctl(&["policy", "check", site.to_str().expect("utf-8")]);
    assert_eq!(o.status.code(), Some(6));
    assert!(stderr(&o).contains(&format!("{}:2:", site.display())), "{}", stderr(&o));
}

#[test]
fn no_policy_at_all() {
    let root = tempfile::tempdir().expect("temp dir");
    let o = otpatchctl(&["policy", "check", "--root", root.path().to_str().expect("utf-8")]);
    assert_eq!(o.status.code(), Some(6));
    assert!(stderr(&o).contains("no policy files found"), "{}", stderr(&o));
}

#[test]
fn no_bus_exits_3() {
    let o = otpatchctl(&["status"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.starts_with("otpatchctl: cannot connect to the system bus"), "{err}");
    assert!(err.contains("DBUS_SYSTEM_BUS_ADDRESS"), "{err}");

    let o = otpatchctl(&["--json", "window", "list"]);
    assert_eq!(o.status.code(), Some(3));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("JSON on stdout");
    assert_eq!(v["error"]["name"], "otpatchctl.NoBus");
    assert!(v["error"]["message"].as_str().expect("a message").contains("DBUS_SYSTEM_BUS_ADDRESS"));
}

fn openssl(dir: &Path, args: &[&str]) {
    let o = Command::new("openssl").args(args).current_dir(dir).output().expect("openssl runs");
    assert!(o.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn bundle_create_then_inspect_against_the_gateways_policy() {
    let d = tempfile::tempdir().unwrap();
    let k = d.path().join("keys");
    fs::create_dir_all(&k).unwrap();
    openssl(&k, &["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "ca.key"]);
    openssl(
        &k,
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "3",
            "-subj",
            "/CN=site root",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign",
        ],
    );
    openssl(&k, &["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "s.key"]);
    openssl(&k, &["req", "-new", "-key", "s.key", "-out", "s.csr", "-subj", "/CN=vendor signing"]);
    fs::write(k.join("s.ext"), "basicConstraints=CA:FALSE\nextendedKeyUsage=codeSigning\n").unwrap();
    openssl(
        &k,
        &[
            "x509",
            "-req",
            "-in",
            "s.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "s.pem",
            "-days",
            "2",
            "-extfile",
            "s.ext",
        ],
    );
    fs::write(k.join("fix.ko"), b"module bytes").unwrap();
    let root = d.path().join("gw");
    fs::create_dir_all(root.join("etc/otpatch/trust")).unwrap();
    fs::copy(k.join("ca.pem"), root.join("etc/otpatch/trust/ca.pem")).unwrap();
    fs::write(
        root.join("etc/otpatch/policy.toml"),
        "[gateway]\nid = \"gw\"\ncompatible = \"acme-gw\"\n[trust]\nanchors = [\"/etc/otpatch/trust/ca.pem\"]\n",
    )
    .unwrap();
    let s = |p: &str| k.join(p).to_str().unwrap().to_string();
    let out = d.path().join("fix.otb");
    let o = otpatchctl(&[
        "bundle",
        "create",
        "--kind",
        "app",
        "--compatible",
        "acme-gw",
        "--version",
        "1.2.0",
        "--payload",
        &s("fix.ko"),
        "--signer-cert",
        &s("s.pem"),
        "--signer-key",
        &s("s.key"),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let r = root.to_str().unwrap();
    let o = otpatchctl(&["bundle", "inspect", "--root", r, out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("ACCEPTED") && stdout(&o).contains("fix.ko"), "{}", stdout(&o));
    // The gateway committed an A/B image 3.0.0: another kind's series, so the app bundle 1.2.0 is no downgrade.
    fs::create_dir_all(root.join("var/lib/otpatch")).unwrap();
    let committed = |kind: &str, version: &str| {
        let rec = serde_json::json!({"version": version, "digest": "d", "kind": kind, "path": "/b", "signer": "CN=v",
                                     "committed_at": "2026-12-01T00:00:00Z"});
        let file =
            serde_json::json!({"bundles": {"acme-gw": rec}, "kinds": {"acme-gw": {kind: rec}}, "time_floor": null});
        fs::write(root.join("var/lib/otpatch/committed.json"), file.to_string()).unwrap();
    };
    committed("ab", "3.0.0");
    let o = otpatchctl(&["bundle", "inspect", "--root", r, out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    // The gateway already committed a newer version of this kind: refused, exit 12.
    committed("app", "2.0.0");
    let o = otpatchctl(&["bundle", "inspect", "--root", r, out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(12), "{}", stdout(&o));
    assert!(stdout(&o).contains("REFUSED"), "{}", stdout(&o));
    let o = otpatchctl(&["--json", "bundle", "inspect", "--no-policy", out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["manifest"]["version"], "1.2.0");
    assert_eq!(v["verdict"]["status"], "unchecked");
    // A signer key that does not match the certificate: nothing written, exit 12.
    let bad = d.path().join("bad.otb");
    let o = otpatchctl(&[
        "bundle",
        "create",
        "--kind",
        "app",
        "--compatible",
        "acme-gw",
        "--version",
        "1.2.1",
        "--payload",
        &s("fix.ko"),
        "--signer-cert",
        &s("s.pem"),
        "--signer-key",
        &s("ca.key"),
        "--out",
        bad.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(12), "{}", stderr(&o));
    assert!(!bad.exists());
}

#[test]
fn control_characters_from_input_never_reach_the_terminal() {
    // A policy key (TOML allows any character in a quoted key) and a value that would clear the screen, set the
    // window title and reverse the text if printed raw.
    let dir = tempfile::tempdir().expect("temp dir");
    let site = dir.path().join("site.toml");
    let line3 = dir.path().join("line3.toml");
    let evil = "[rollback]\n\"id\\u001b[2J\\u001b]0;owned\\u0007\" = 1\non_degraded = \"x\\u009b31m\\u202eyxe\"\n";
    fs::write(&site, GOOD).expect("write");
    fs::write(&line3, evil).expect("write");
    for json in [false, true] {
        let files = [site.to_str().expect("utf-8"), line3.to_str().expect("utf-8")];
        let mut args = vec!["policy", "check", "--no-files", files[0], files[1]];
        if json {
            args.insert(0, "--json");
        }
        let o = otpatchctl(&args);
        assert_eq!(o.status.code(), Some(6), "{}", stderr(&o));
        for (name, text) in [("stdout", stdout(&o)), ("stderr", stderr(&o))] {
            let raw: Vec<char> = text
                .chars()
                .filter(|c| (c.is_control() && *c != '\n') || ('\u{202a}'..='\u{202e}').contains(c))
                .collect();
            assert!(raw.is_empty(), "{name} (json {json}) carries raw control characters {raw:?}:\n{text}");
        }
        assert!(stderr(&o).contains("[2J"), "the key is shown, escaped: {}", stderr(&o));
        if json {
            let v: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("still JSON");
            assert_eq!(v["errors"].as_array().map(Vec::len), Some(2), "{v}");
        }
    }
}
