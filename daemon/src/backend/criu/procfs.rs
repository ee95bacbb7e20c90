//! What `/proc` says about a critical process: which pid a selector names, the process tree CRIU would dump
//! from it, and whether that tree can be dumped (alive, no terminal, its session and process group inside the
//! tree, its TCP connections). Everything is read through the [`Sysroot`], so tests build a fake `/proc`.

use std::collections::BTreeSet;
use std::fmt;
use std::fs;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use otpatch_common::policy::{CriticalProcess, ProcessSelector};

use tracing::debug;

use crate::sysroot::Sysroot;

/// One task of `/proc/PID/stat`, the fields CRIU cares about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    pub pid: i32,
    pub comm: String,
    /// `R`, `S`, `D`, `Z` (zombie), `X` (dead), ...
    pub state: char,
    pub ppid: i32,
    pub pgrp: i32,
    pub session: i32,
    /// The controlling terminal's device number; 0 when there is none.
    pub tty_nr: i64,
    /// When the process started, in clock ticks after boot (field 22, `starttime`): with the pid, the
    /// process's identity within a boot (a reused pid has a later start time).
    pub starttime: u64,
}

/// Parses `/proc/PID/stat`. The command name sits in parentheses and may itself hold spaces, `(` and `)`:
/// it ends at the last `)`. `None` for anything else (never a panic).
pub fn parse_stat(text: &str) -> Option<Stat> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let pid = text.get(..open)?.trim().parse().ok()?;
    let comm = text.get(open.checked_add(1)?..close)?.to_string();
    let rest: Vec<&str> = text.get(close.checked_add(1)?..)?.split_whitespace().collect();
    // After the name, from field 3: state ppid pgrp session tty_nr ... starttime (field 22).
    let field = |n: usize| rest.get(n.checked_sub(3)?).copied();
    let mut state = field(3)?.chars();
    let st = state.next()?;
    if state.next().is_some() {
        return None;
    }
    Some(Stat {
        pid,
        comm,
        state: st,
        ppid: field(4)?.parse().ok()?,
        pgrp: field(5)?.parse().ok()?,
        session: field(6)?.parse().ok()?,
        tty_nr: field(7)?.parse().ok()?,
        starttime: field(22)?.parse().ok()?,
    })
}

/// Why a process cannot be checkpointed. The message names the process and the pid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal(pub String);

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A TCP connection (any state but LISTEN and CLOSE) held by a task of the tree.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct TcpConn {
    pub local: String,
    pub remote: String,
    pub state: &'static str,
    pub pid: i32,
}

impl fmt::Display for TcpConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} <-> {} ({}, pid {})", self.local, self.remote, self.state, self.pid)
    }
}

/// A process tree as CRIU would dump it, rooted at the critical process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tree {
    pub root: Stat,
    /// The root's executable (`/proc/PID/exe`), ` (deleted)` removed.
    pub exe: PathBuf,
    /// Every task of the tree, the root first.
    pub pids: Vec<i32>,
    /// The start time of each task (`Stat::starttime`), in the order of `pids`.
    pub start_times: Vec<u64>,
    /// Resident memory of the whole tree (sum of `VmRSS`), bytes.
    pub rss: u64,
    pub tcp: Vec<TcpConn>,
}

/// Reads `/proc` below a [`Sysroot`].
#[derive(Debug, Clone)]
pub struct Procfs {
    root: Sysroot,
}

impl Procfs {
    pub fn new(root: Sysroot) -> Self {
        Procfs { root }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.path(format!("/proc/{rel}"))
    }

    pub fn stat(&self, pid: i32) -> Option<Stat> {
        parse_stat(&fs::read_to_string(self.path(&format!("{pid}/stat"))).ok()?)
    }

    /// `/proc/PID/exe`, without the ` (deleted)` the kernel appends once the file was replaced.
    pub fn exe(&self, pid: i32) -> Option<PathBuf> {
        let link = fs::read_link(self.path(&format!("{pid}/exe"))).ok()?;
        let s = link.to_string_lossy();
        Some(PathBuf::from(s.strip_suffix(" (deleted)").unwrap_or(&s)))
    }

    /// Whether `pid` runs: it exists and is neither a zombie nor dead.
    pub fn alive(&self, pid: i32) -> bool {
        self.stat(pid).is_some_and(|s| s.state != 'Z' && s.state != 'X')
    }

    /// Whether the pid is taken at all (a zombie still holds its pid until its parent reaps it).
    pub fn exists(&self, pid: i32) -> bool {
        self.path(&pid.to_string()).exists()
    }

    /// `/proc/sys/kernel/random/boot_id`: differs after every boot (an A/B switch reboots).
    pub fn boot_id(&self) -> Option<String> {
        self.root.boot_id().ok()
    }

    /// Every pid in `/proc`.
    pub fn pids(&self) -> Vec<i32> {
        let mut out: Vec<i32> = fs::read_dir(self.path(""))
            .map(|rd| rd.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect())
            .unwrap_or_default();
        out.sort_unstable();
        out
    }

    fn rss(&self, pid: i32) -> u64 {
        let text = fs::read_to_string(self.path(&format!("{pid}/status"))).unwrap_or_default();
        text.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    }

    /// `(fd, link target)` of every open descriptor of `pid`.
    pub fn fds(&self, pid: i32) -> Vec<(String, String)> {
        let dir = self.path(&format!("{pid}/fd"));
        let mut out: Vec<(String, String)> = fs::read_dir(&dir)
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| {
                        let target = fs::read_link(e.path()).ok()?;
                        Some((e.file_name().to_string_lossy().into_owned(), target.to_string_lossy().into_owned()))
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    }

    /// The namespace link `/proc/PID/ns/KIND` (`self` for the daemon itself).
    pub fn namespace(&self, pid: &str, kind: &str) -> Option<String> {
        Some(fs::read_link(self.path(&format!("{pid}/ns/{kind}"))).ok()?.to_string_lossy().into_owned())
    }

    /// The pid a selector names now. Exactly one process must match.
    pub async fn resolve(&self, p: &CriticalProcess, units: &dyn super::UnitResolver) -> Result<i32, Refusal> {
        let name = &p.name;
        match &p.selector {
            ProcessSelector::Unit(unit) => match units.main_pid(unit).await {
                Ok(0) => Err(Refusal(format!("process {name}: unit {unit} has no main process (not running?)"))),
                Ok(pid) => i32::try_from(pid)
                    .map_err(|_| Refusal(format!("process {name}: unit {unit} reports main pid {pid}"))),
                Err(e) => Err(Refusal(format!("process {name}: cannot ask systemd for {unit}'s main pid: {e}"))),
            },
            ProcessSelector::Pidfile(file) => self.resolve_pidfile(name, file),
            ProcessSelector::Exe(exe) => self.resolve_exe(name, exe, p.user.as_deref()),
        }
    }

    /// The pid in a pidfile, trusted only when nobody but root and the process's own user can have written
    /// it: a regular file (a symbolic link is refused, not followed: whoever can write its directory could
    /// point it anywhere), owned by root or by the effective user of the pid it names, not writable by group
    /// or others. The checks are made on the opened file (`O_NOFOLLOW`, then `fstat`), not on its name.
    fn resolve_pidfile(&self, name: &str, file: &Path) -> Result<i32, Refusal> {
        use std::io::Read;
        use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
        let shown = file.display();
        let mut f = fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
            .open(self.root.path(file))
            .map_err(|e| match e.raw_os_error() {
                Some(nix::libc::ELOOP) => {
                    Refusal(format!("process {name}: pidfile {shown} is a symbolic link; not followed"))
                }
                _ => Refusal(format!("process {name}: cannot read pidfile {shown}: {e}")),
            })?;
        let meta = f.metadata().map_err(|e| Refusal(format!("process {name}: pidfile {shown}: {e}")))?;
        let (owner, mode) = (meta.uid(), meta.mode() & 0o7777);
        let what = format!("process {name}: pidfile {shown} (owner uid {owner}, mode {mode:04o})");
        if !meta.is_file() {
            return Err(Refusal(format!("{what} is not a regular file")));
        }
        if mode & 0o022 != 0 {
            return Err(Refusal(format!(
                "{what} is writable by group or others, who could make otpatchd checkpoint and restore (kill) \
                 any process: chmod go-w it"
            )));
        }
        let mut text = String::new();
        // A pid is a few bytes; a larger file is not a pidfile.
        (&mut f)
            .take(64)
            .read_to_string(&mut text)
            .map_err(|e| Refusal(format!("process {name}: cannot read pidfile {shown}: {e}")))?;
        let pid = match text.trim().parse::<i32>() {
            Ok(pid) if pid > 0 => pid,
            _ => return Err(Refusal(format!("process {name}: pidfile {shown} holds {:?}, not a pid", text.trim()))),
        };
        if owner != 0 {
            match self.uid(pid) {
                Some(uid) if uid == owner => {}
                uid => {
                    return Err(Refusal(format!(
                        "{what} is owned neither by root nor by the user of pid {pid} ({}), who alone may name \
                         it",
                        uid.map_or("which does not run".into(), |u| format!("uid {u}"))
                    )))
                }
            }
        }
        Ok(pid)
    }

    /// The effective user of a process (`Uid:` of `/proc/PID/status`, second field).
    pub fn uid(&self, pid: i32) -> Option<u32> {
        let text = fs::read_to_string(self.path(&format!("{pid}/status"))).ok()?;
        text.lines().find_map(|l| l.strip_prefix("Uid:"))?.split_whitespace().nth(1)?.parse().ok()
    }

    /// A user's uid: numeric, or from the sysroot's `/etc/passwd`.
    pub fn user_uid(&self, user: &str) -> Option<u32> {
        if let Ok(uid) = user.parse() {
            return Some(uid);
        }
        let passwd = fs::read_to_string(self.root.path("/etc/passwd")).ok()?;
        passwd.lines().find_map(|l| {
            let mut f = l.split(':');
            (f.next()? == user).then_some(())?;
            f.nth(1)?.parse().ok()
        })
    }

    /// The process running `exe` as `user`: the one match, or the root of the matches when it forked copies of
    /// itself. Copies run by other users (an engineer testing a program) are not the critical process: ignored.
    /// `user` `None` is root.
    fn resolve_exe(&self, name: &str, exe: &Path, user: Option<&str>) -> Result<i32, Refusal> {
        let (uid, user) = match user {
            None => (0, "root"),
            Some(user) => (
                self.user_uid(user).ok_or_else(|| {
                    Refusal(format!("process {name}: user {user} is neither a uid nor in /etc/passwd"))
                })?,
                user,
            ),
        };
        let (mut matches, mut others) = (Vec::new(), Vec::new());
        for s in self
            .pids()
            .into_iter()
            .filter(|&pid| self.exe(pid).as_deref() == Some(exe))
            .filter_map(|pid| self.stat(pid))
            .filter(|s| s.state != 'Z' && s.state != 'X')
        {
            match self.uid(s.pid) {
                Some(u) if u == uid => matches.push(s),
                u => others.push((s.pid, u)),
            }
        }
        if !others.is_empty() {
            debug!(process = %name, exe = %exe.display(), uid, ignored = ?others,
                "processes of other users run the executable; ignored");
        }
        let pids: BTreeSet<i32> = matches.iter().map(|s| s.pid).collect();
        let roots: Vec<i32> = matches.iter().filter(|s| !pids.contains(&s.ppid)).map(|s| s.pid).collect();
        match roots.as_slice() {
            [pid] => Ok(*pid),
            [] => Err(Refusal(format!(
                "process {name}: no running process has executable {} as uid {uid} ({user}){}",
                exe.display(),
                if others.is_empty() {
                    String::new()
                } else {
                    let o: Vec<String> = others
                        .iter()
                        .map(|(p, u)| format!("{p} (uid {})", u.map_or("?".into(), |u| u.to_string())))
                        .collect();
                    format!("; other users' copies ignored: {}", o.join(", "))
                }
            ))),
            many => Err(Refusal(format!(
                "process {name}: {} separate processes of uid {uid} run {} (pids {}); name it by pidfile or unit \
                 instead",
                many.len(),
                exe.display(),
                many.iter().map(i32::to_string).collect::<Vec<_>>().join(", ")
            ))),
        }
    }

    /// The tree rooted at `pid` and whether CRIU can dump it: refused when the pid does not run, the tree
    /// holds a terminal, or a task's session or process group is led from outside the tree (CRIU restores
    /// sessions only within the tree; a process started from a shell or a console without `setsid` fails).
    pub fn inspect(&self, name: &str, pid: i32) -> Result<Tree, Refusal> {
        let who = format!("process {name} (pid {pid})");
        let root = self.stat(pid).ok_or_else(|| Refusal(format!("{who} does not exist: it has exited")))?;
        match root.state {
            'Z' | 'X' => return Err(Refusal(format!("{who} has exited (zombie, not reaped yet)"))),
            _ => {}
        }
        let exe = self
            .exe(pid)
            .ok_or_else(|| Refusal(format!("{who} has no executable (a kernel thread, or it has just exited)")))?;

        // The tree: every task whose parent chain reaches the root.
        let all: Vec<Stat> = self.pids().into_iter().filter_map(|p| self.stat(p)).collect();
        let mut pids = vec![pid];
        let mut i = 0;
        // Bounded: each pass adds children of one already-found task; a pid enters once.
        while i < pids.len() && pids.len() <= all.len() {
            let parent = pids[i];
            for s in &all {
                if s.ppid == parent && !pids.contains(&s.pid) {
                    pids.push(s.pid);
                }
            }
            i += 1;
        }
        let stats: Vec<Stat> =
            pids.iter().filter_map(|&p| if p == pid { Some(root.clone()) } else { self.stat(p) }).collect();
        // A task that exited since the scan is left out of the tree.
        let pids: Vec<i32> = stats.iter().map(|s| s.pid).collect();
        let start_times: Vec<u64> = stats.iter().map(|s| s.starttime).collect();
        let in_tree: BTreeSet<i32> = pids.iter().copied().collect();

        for s in &stats {
            let task = if s.pid == pid { who.clone() } else { format!("{who}: its child {} ({})", s.pid, s.comm) };
            if s.tty_nr != 0 {
                return Err(Refusal(format!(
                    "{task} has a controlling terminal (tty {}:{}); CRIU cannot dump it: start it with setsid and \
                     without a terminal",
                    (s.tty_nr >> 8) & 0xfff,
                    (s.tty_nr & 0xff) | ((s.tty_nr >> 12) & 0xfff00)
                )));
            }
            for (fd, target) in self.fds(s.pid) {
                if is_terminal(&target) {
                    return Err(Refusal(format!(
                        "{task} holds a terminal (fd {fd} -> {target}); CRIU cannot dump it: redirect its stdio to \
                         files, pipes or /dev/null"
                    )));
                }
            }
            if !in_tree.contains(&s.session) {
                return Err(Refusal(format!(
                    "{task} belongs to session {}, whose leader is outside its process tree (not started with \
                     setsid?); CRIU cannot restore it",
                    s.session
                )));
            }
            if !in_tree.contains(&s.pgrp) {
                return Err(Refusal(format!(
                    "{task} belongs to process group {}, whose leader is outside its process tree; CRIU cannot \
                     restore it",
                    s.pgrp
                )));
            }
        }
        let rss = pids.iter().map(|&p| self.rss(p)).sum();
        let tcp = self.tcp_connections(&pids);
        Ok(Tree { root, exe, pids, start_times, rss, tcp })
    }

    /// The TCP connections (not listeners) whose sockets the tasks hold, from each task's `/proc/PID/net/tcp*`
    /// (its own network namespace).
    pub fn tcp_connections(&self, pids: &[i32]) -> Vec<TcpConn> {
        let mut out = BTreeSet::new();
        for &pid in pids {
            let inodes: BTreeSet<u64> = self
                .fds(pid)
                .into_iter()
                .filter_map(|(_, t)| t.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok())
                .collect();
            if inodes.is_empty() {
                continue;
            }
            for (file, v6) in [("tcp", false), ("tcp6", true)] {
                let text = fs::read_to_string(self.path(&format!("{pid}/net/{file}"))).unwrap_or_default();
                for c in parse_tcp_table(&text, v6) {
                    if inodes.contains(&c.inode) {
                        out.insert(TcpConn { local: c.local, remote: c.remote, state: c.state, pid });
                    }
                }
            }
        }
        out.into_iter().collect()
    }
}

/// Whether a descriptor's link target is a terminal: the serial and virtual consoles, pseudo-terminals.
pub fn is_terminal(target: &str) -> bool {
    target == "/dev/console"
        || target == "/dev/tty"
        || target == "/dev/ptmx"
        || target.starts_with("/dev/pts/")
        || target.strip_prefix("/dev/tty").is_some_and(|rest| !rest.is_empty())
}

/// One row of `/proc/net/tcp{,6}` that is a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpRow {
    pub local: String,
    pub remote: String,
    pub state: &'static str,
    pub inode: u64,
}

/// The connections of a `/proc/net/tcp` (or `tcp6`) table: rows in any state but LISTEN (0A) and CLOSE (07).
pub fn parse_tcp_table(text: &str, v6: bool) -> Vec<TcpRow> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let state = match *f.get(3)? {
                "01" => "established",
                "02" => "syn-sent",
                "03" => "syn-received",
                "04" => "fin-wait-1",
                "05" => "fin-wait-2",
                "06" => "time-wait",
                "08" => "close-wait",
                "09" => "last-ack",
                "0B" => "closing",
                _ => return None,
            };
            Some(TcpRow {
                local: hex_endpoint(f.get(1)?, v6)?,
                remote: hex_endpoint(f.get(2)?, v6)?,
                state,
                inode: f.get(9)?.parse().ok()?,
            })
        })
        .collect()
}

/// `0100007F:1F90` -> `127.0.0.1:8080`: the kernel prints each 32-bit word of the address in host order.
fn hex_endpoint(s: &str, v6: bool) -> Option<String> {
    let (addr, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    // Each word is the address's bytes read as a native integer: its native bytes are the address again (the
    // table is only ever read on the machine that wrote it).
    let words: Vec<u32> = (0..addr.len() / 8)
        .map(|i| u32::from_str_radix(addr.get(i * 8..i * 8 + 8)?, 16).ok())
        .collect::<Option<_>>()?;
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
    if v6 {
        let b: [u8; 16] = bytes.try_into().ok()?;
        let a = Ipv6Addr::from(b);
        Some(match a.to_ipv4_mapped() {
            Some(v4) => format!("{v4}:{port}"),
            None => format!("[{a}]:{port}"),
        })
    } else {
        let b: [u8; 4] = bytes.try_into().ok()?;
        Some(format!("{}:{port}", Ipv4Addr::from(b)))
    }
}
