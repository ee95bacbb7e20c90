//! Fault injection for tests: with the `failpoints` feature, `OTPATCH_FAILPOINTS` names points at which the
//! daemon crashes (SIGKILL to itself, as a power cut or OOM kill would) or fails an action.
//!
//! Syntax: comma-separated `<point>=<crash|error>`. Points: `journal:<state>` (right after a state is journaled,
//! before its actions run), `journal-write:<state>` (the journal write of that state fails, as on ENOSPC or a
//! read-only remount), `action:<action>` (before an action runs) and `rauc:completed` (the A/B updater, right
//! after RAUC reported the end of an install, before anything else), e.g.
//! `OTPATCH_FAILPOINTS=journal:applying=crash`. Without the feature nothing is read and nothing fires.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailAction {
    Crash,
    Error,
}

#[derive(Debug, Clone, Default)]
pub struct Failpoints {
    #[cfg_attr(not(feature = "failpoints"), allow(dead_code))]
    points: Vec<(String, FailAction)>,
}

impl Failpoints {
    /// Reads `OTPATCH_FAILPOINTS` (only with the `failpoints` feature).
    pub fn from_env() -> Result<Self, String> {
        #[cfg(feature = "failpoints")]
        if let Ok(text) = std::env::var("OTPATCH_FAILPOINTS") {
            return Self::parse(&text);
        }
        Ok(Failpoints::default())
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let mut points = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, action) =
                part.split_once('=').ok_or_else(|| format!("failpoint {part:?}: expected <point>=<crash|error>"))?;
            let action = match action {
                "crash" => FailAction::Crash,
                "error" => FailAction::Error,
                other => return Err(format!("failpoint {name}: unknown action {other:?} (crash or error)")),
            };
            points.push((name.to_string(), action));
        }
        Ok(Failpoints { points })
    }

    /// At a named point: crashes the process, or returns `Err` for an injected error.
    pub fn hit(&self, point: &str) -> Result<(), String> {
        #[cfg(feature = "failpoints")]
        for (name, action) in &self.points {
            if name == point {
                match action {
                    FailAction::Crash => {
                        tracing::warn!(point, "failpoint: crashing");
                        let _ = nix::sys::signal::kill(nix::unistd::getpid(), nix::sys::signal::Signal::SIGKILL);
                        std::process::abort();
                    }
                    FailAction::Error => return Err(format!("injected failure at {point}")),
                }
            }
        }
        let _ = point;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        let f = Failpoints::parse("journal:applying=crash, action:fetch=error").unwrap();
        assert_eq!(f.points.len(), 2);
        assert!(Failpoints::parse("journal:applying").unwrap_err().contains("expected"));
        assert!(Failpoints::parse("x=explode").unwrap_err().contains("explode"));
    }

    #[cfg(feature = "failpoints")]
    #[test]
    fn error_points_fire() {
        let f = Failpoints::parse("action:fetch=error").unwrap();
        assert!(f.hit("action:fetch").is_err());
        assert!(f.hit("action:verify").is_ok());
    }
}
