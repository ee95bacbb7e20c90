//! otpatchctl's exit codes: one enum, from which `--help`'s table is made and against which the READMEs' tables
//! are checked (a test). They are part of the interface: scripts and SCADA integrations test them.

/// Every exit code otpatchctl can end with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ExitCode {
    Ok = 0,
    Failure = 1,
    /// clap exits with this itself.
    Usage = 2,
    Unreachable = 3,
    Denied = 4,
    Refused = 5,
    PolicyInvalid = 6,
    ChainBroken = 7,
    NotFound = 8,
    RolledBack = 9,
    WindowFailed = 10,
    WaitTimeout = 11,
    BundleRefused = 12,
    RebootPending = 13,
    /// 128 + SIGINT, as shells report it.
    Interrupted = 130,
}

impl ExitCode {
    /// All of them, in order.
    pub const ALL: [ExitCode; 15] = [
        ExitCode::Ok,
        ExitCode::Failure,
        ExitCode::Usage,
        ExitCode::Unreachable,
        ExitCode::Denied,
        ExitCode::Refused,
        ExitCode::PolicyInvalid,
        ExitCode::ChainBroken,
        ExitCode::NotFound,
        ExitCode::RolledBack,
        ExitCode::WindowFailed,
        ExitCode::WaitTimeout,
        ExitCode::BundleRefused,
        ExitCode::RebootPending,
        ExitCode::Interrupted,
    ];

    pub const fn code(self) -> u8 {
        self as u8
    }

    /// What it means, as `otpatchctl --help` says it (lines after the first are indented by the table).
    pub const fn meaning(self) -> &'static str {
        match self {
            ExitCode::Ok => "success",
            ExitCode::Failure => "other failure",
            ExitCode::Usage => "usage error (bad command line)",
            ExitCode::Unreachable => {
                "daemon not reachable: no system bus, or io.otpatch.Daemon1 is not on it (see DBUS_SYSTEM_BUS_ADDRESS),\n\
                 or the daemon did not answer within --timeout"
            }
            ExitCode::Denied => "access denied: must be root or in group otpatch",
            ExitCode::Refused => "refused by the daemon: invalid arguments, window refused, invalid state or policy rejected",
            ExitCode::PolicyInvalid => "policy invalid (policy check)",
            ExitCode::ChainBroken => "audit chain broken (log --verify)",
            ExitCode::NotFound => "not found (no such window, or a version retry names that was not rolled back)",
            ExitCode::RolledBack => "watch --exit-on-complete: the window rolled back",
            ExitCode::WindowFailed => "watch --exit-on-complete: the window failed",
            ExitCode::WaitTimeout => "watch --max-wait: gave up waiting",
            ExitCode::BundleRefused => {
                "bundle inspect: the policy would refuse the bundle; bundle create: an input was refused"
            }
            ExitCode::RebootPending => {
                "watch --exit-on-complete: an A/B update was installed and waits for a reboot the policy does not\n\
                 allow in the window"
            }
            ExitCode::Interrupted => "interrupted with Ctrl-C",
        }
    }

    /// The table `otpatchctl --help` ends with.
    pub fn help_table() -> String {
        let mut s = String::from("Exit codes:\n");
        for c in Self::ALL {
            let mut lines = c.meaning().lines();
            s.push_str(&format!("  {:<3} {}\n", c.code(), lines.next().unwrap_or_default()));
            for more in lines {
                s.push_str(&format!("      {more}\n"));
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::ExitCode;

    #[test]
    fn every_exit_code_is_in_the_help_table_and_in_both_readmes() {
        let table = ExitCode::help_table();
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
        let ctl_readme = std::fs::read_to_string(root.join("ctl/README.md")).unwrap();
        for c in ExitCode::ALL {
            let row = format!("| {} |", c.code());
            assert!(table.contains(&format!("  {:<3} ", c.code())), "--help lacks {}:\n{table}", c.code());
            assert!(readme.contains(&row), "README.md's exit-code table has no row {row}");
            assert!(ctl_readme.contains(&row), "ctl/README.md's exit-code table has no row {row}");
        }
        let codes: Vec<u8> = ExitCode::ALL.iter().map(|c| c.code()).collect();
        let mut sorted = codes.clone();
        sorted.dedup();
        assert_eq!(codes, sorted, "ALL lists each code once, in order");
    }
}
