//! Before a restore: the checkpointed tree's pids are freed, and only after the process under the root pid was
//! shown to be the checkpointed one (start time, executable) is anything signalled.

use super::*;

impl CriuCheckpointer {
    /// Stops what runs under a restore's pids: the checkpointed tree's root if it is still the checkpointed
    /// process (same start time and executable), and its descendants; then waits (bounded) until every pid of
    /// the checkpointed tree is free.
    pub(super) async fn stop_for_restore(&self, name: &str, m: &Manifest) -> BackendResult<()> {
        let who = format!("process {name} (pid {})", m.pid);
        let procfs = self.procfs.clone();
        // (pid, start time when found): a task is signalled only while it still has that start time.
        let mut victims: Vec<(i32, u64)> = Vec::new();
        if let Some(now) = self.procfs.stat(m.pid).filter(|s| s.state != 'Z' && s.state != 'X') {
            self.same_process(name, m, now.starttime)?;
            let (p2, n2, pid) = (procfs.clone(), name.to_string(), m.pid);
            // Its current tree (children first would race with reaping; order does not matter for SIGKILL).
            victims = match blocking(move || p2.inspect(&n2, pid)).await? {
                Ok(t) if t.start_times.first() == Some(&now.starttime) => {
                    t.pids.into_iter().zip(t.start_times).collect()
                }
                _ => vec![(m.pid, now.starttime)],
            };
        } else if m.start_time.is_none() {
            warn!(process = %name, pid = m.pid,
                "the checkpoint's manifest records no start time (written by an older otpatchd); the pid is free, \
                 nothing is stopped");
        }
        // Every pid the restore needs must be free or about to be (one of the victims).
        for &pid in &m.pids {
            if self.procfs.alive(pid) && !victims.iter().any(|&(v, _)| v == pid) {
                let comm = self.procfs.stat(pid).map(|s| s.comm).unwrap_or_default();
                return Err(BackendError::new(format!(
                    "{who}: pid {pid}, which the restore needs, is held by another process ({comm}); nothing was \
                     stopped, {name} was not restored"
                )));
            }
        }
        let mut stopped = Vec::new();
        // Each task is opened (a pidfd), then its start time checked again: a pidfd names one process for
        // good, so a process with the recorded start time after the open is the one the pidfd signals; a pid
        // reused before the open shows another start time, one reused after it leaves the pidfd on the exited
        // task (ESRCH). The root comes first: a refusal stops nothing.
        for &(pid, start) in &victims {
            let fd = match (self.cfg.open)(pid) {
                Ok(fd) => fd,
                Err(e) if e.raw_os_error() == Some(nix::libc::ESRCH) => continue,
                Err(e) => return Err(BackendError::new(format!("{who}: cannot open pid {pid} (pidfd_open): {e}"))),
            };
            match self.procfs.stat(pid).map(|s| s.starttime) {
                Some(now) if now == start => {}
                Some(now) if pid == m.pid => {
                    self.same_process(name, m, now)?;
                    continue;
                }
                // A child that exited since the tree was read; whatever holds its pid now is not signalled.
                _ => continue,
            }
            match fd.kill() {
                Ok(()) => stopped.push(pid),
                Err(e) if e.raw_os_error() == Some(nix::libc::ESRCH) => {}
                Err(e) => return Err(BackendError::new(format!("{who}: cannot stop pid {pid}: {e}"))),
            }
        }
        if !stopped.is_empty() {
            info!(process = %name, pids = ?stopped, "stopped the running process for the restore");
        }
        // A killed process keeps its pid as a zombie until its parent reaps it (init or systemd do at once).
        let deadline = Instant::now() + self.cfg.stop_timeout;
        loop {
            let taken: Vec<i32> = m.pids.iter().copied().filter(|&p| self.procfs.exists(p)).collect();
            if taken.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let why: Vec<String> = taken
                    .iter()
                    .map(|&p| match self.procfs.stat(p) {
                        Some(s) if s.state == 'Z' => format!("{p} is a zombie its parent {} has not reaped", s.ppid),
                        Some(s) => format!("{p} is still running ({})", s.comm),
                        None => format!("{p} is still taken"),
                    })
                    .collect();
                return Err(BackendError::new(format!(
                    "{who} was stopped but its pids are not free after {} s ({}); CRIU cannot restore it with the \
                     same pid",
                    self.cfg.stop_timeout.as_secs(),
                    why.join(", ")
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether the process running on the manifest's pid now (started at `start`) is the one checkpointed:
    /// same start time and executable. Anything else is refused, so nothing unrelated is ever signalled.
    pub(super) fn same_process(&self, name: &str, m: &Manifest, start: u64) -> BackendResult<()> {
        let who = format!("process {name} (pid {})", m.pid);
        match m.start_time {
            Some(t) if t != start => {
                return Err(BackendError::new(format!(
                    "{who}: pid {} was reused: the checkpointed process started at {t} (clock ticks after boot), \
                     the one running now at {start}; an unrelated process holds the pid, not stopped; {name} was \
                     not restored",
                    m.pid
                )))
            }
            Some(_) => {}
            // A manifest of an older otpatchd: the executable alone cannot tell the checkpointed process from a
            // later copy of the same program that got its pid, and killing a process that is not ours is worse
            // than a failed rollback; so the running pid is refused (a free pid is restored, above).
            None => {
                return Err(BackendError::new(format!(
                    "{who}: the checkpoint's manifest records no start time (written by an older otpatchd), so \
                     whether pid {} still runs the checkpointed process cannot be told; not stopped; {name} was \
                     not restored",
                    m.pid
                )))
            }
        }
        match self.procfs.exe(m.pid) {
            Some(exe) if exe == m.exe => Ok(()),
            other => Err(BackendError::new(format!(
                "{who}: pid {} now runs {}, not {}: an unrelated process holds the pid, not stopped; {name} was not \
                 restored",
                m.pid,
                other.map_or("an unknown executable".into(), |e| e.display().to_string()),
                m.exe.display()
            ))),
        }
    }
}
