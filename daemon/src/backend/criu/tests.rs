//! The checkpointer against a fake `/proc` tree and a fake `criu` (a shell script that records its command
//! lines and writes image files). The real CRIU runs in the QEMU guest (`hil/`, scenario otpatchd-criu).

use std::fs;
use std::io;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use otpatch_common::policy::{CriticalProcess, ProcessSelector};

use super::cli::excerpt;
use super::images::{parse_stats_dump, Manifest};
use super::procfs::{is_terminal, parse_stat, parse_tcp_table, Procfs};
use super::*;

const EXE: &str = "/usr/bin/softplc";
const BOOT: &str = "6b3e1b7c-0d0a-4c36-9a51-3f0f2f6d2a11";
/// A real `stats-dump` written by CRIU 3.17 in the guest.
const STATS: [u8; 49] = [
    0x40, 0x59, 0x10, 0x55, 0x06, 0x33, 0x09, 0x57, 0x25, 0x00, 0x00, 0x00, 0x0a, 0x23, 0x08, 0x9a, 0x28, 0x10, 0xd9,
    0xca, 0x05, 0x18, 0xa3, 0x45, 0x20, 0xa4, 0x0f, 0x28, 0x8d, 0x8d, 0x01, 0x30, 0x00, 0x38, 0x42, 0x40, 0x00, 0x48,
    0x00, 0x50, 0x08, 0x58, 0x08, 0x60, 0x00, 0x68, 0x00, 0x70, 0x00,
];
const COMMON_MAGIC: [u8; 4] = [0x19, 0x43, 0x56, 0x54];
const INVENTORY_MAGIC: [u8; 4] = [0x16, 0x31, 0x31, 0x58];

/// The start time (clock ticks after boot) of the fake processes.
const START: u64 = 81_234;
/// What the kernel prints: the command name (15 bytes at most) may hold spaces and parentheses.
const COMM: &str = "soft) plc (rt";

/// A `/proc/PID/stat` line as Linux 6.1 writes it (52 fields; field 22 is the start time).
fn stat_line(pid: i32, state: char, ppid: i32, pgrp: i32, sid: i32, tty: i64, start: u64) -> String {
    format!(
        "{pid} ({COMM}) {state} {ppid} {pgrp} {sid} {tty} -1 4194560 1523 0 12 0 37 21 0 0 20 0 2 0 {start} \
         12951552 1043 18446744073709551615 94251337162752 94251337418641 140726403536336 0 0 0 0 4096 16386 0 0 0 \
         17 1 0 0 0 0 0 94251337500144 94251337510912 94251354619904 140726403541751 140726403541771 \
         140726403541771 140726403543018 0\n"
    )
}

/// A fake machine: `root/` is the sysroot, `criu` the fake CRIU, `calls` what it was asked.
struct World {
    dir: tempfile::TempDir,
    killed: Arc<Mutex<Vec<i32>>>,
    space: Arc<Mutex<u64>>,
    zombie_on_kill: Arc<Mutex<bool>>,
    main_pid: Arc<Mutex<Result<u32, String>>>,
    /// The start time a process gets the moment its pidfd is opened: the pid reused right before the open.
    reuse_on_open: Arc<Mutex<Option<(i32, u64)>>>,
    opened: Arc<Mutex<Vec<i32>>>,
}

/// The fake pidfd: SIGKILL removes the process from the fake /proc (or makes it a zombie).
struct FakePidfd {
    pid: i32,
    procdir: PathBuf,
    killed: Arc<Mutex<Vec<i32>>>,
    zombie: Arc<Mutex<bool>>,
}

impl Pidfd for FakePidfd {
    fn kill(&self) -> io::Result<()> {
        let pid = self.pid;
        self.killed.lock().unwrap().push(pid);
        let d = self.procdir.join(pid.to_string());
        if *self.zombie.lock().unwrap() {
            let stat = fs::read_to_string(d.join("stat"))?;
            let close = stat.rfind(')').unwrap();
            let (comm, rest) = stat.split_at(close);
            fs::write(d.join("stat"), format!("{comm}{}", rest.replacen(" S ", " Z ", 1)))?;
            return Ok(());
        }
        fs::rename(&d, self.procdir.join(format!(".dead-{pid}")))
    }
}

struct FakeUnits(Arc<Mutex<Result<u32, String>>>);

#[async_trait]
impl UnitResolver for FakeUnits {
    async fn main_pid(&self, _unit: &str) -> Result<u32, String> {
        self.0.lock().unwrap().clone()
    }
}

impl World {
    fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        let w = World {
            dir,
            killed: Arc::default(),
            space: Arc::new(Mutex::new(1 << 40)),
            zombie_on_kill: Arc::default(),
            main_pid: Arc::new(Mutex::new(Ok(0))),
            reuse_on_open: Arc::default(),
            opened: Arc::default(),
        };
        fs::create_dir_all(w.proc_dir().join("sys/kernel/random")).unwrap();
        fs::write(w.proc_dir().join("sys/kernel/random/boot_id"), format!("{BOOT}\n")).unwrap();
        fs::create_dir_all(w.proc_dir().join("self/ns")).unwrap();
        symlink("mnt:[4026531841]", w.proc_dir().join("self/ns/mnt")).unwrap();
        symlink("pid:[4026531836]", w.proc_dir().join("self/ns/pid")).unwrap();
        w.write_criu();
        w
    }

    fn t(&self) -> &Path {
        self.dir.path()
    }

    fn root(&self) -> Sysroot {
        Sysroot::new(self.t().join("root"))
    }

    fn proc_dir(&self) -> PathBuf {
        self.t().join("root/proc")
    }

    fn images(&self) -> PathBuf {
        self.t().join("root/var/lib/otpatch/checkpoints")
    }

    /// A process in the fake /proc.
    #[allow(clippy::too_many_arguments)]
    fn process(&self, pid: i32, state: char, ppid: i32, pgrp: i32, sid: i32, tty: i64, exe: &str, rss_kb: u64) {
        let d = self.proc_dir().join(pid.to_string());
        fs::create_dir_all(d.join("fd")).unwrap();
        fs::create_dir_all(d.join("ns")).unwrap();
        fs::create_dir_all(d.join("net")).unwrap();
        fs::write(d.join("stat"), stat_line(pid, state, ppid, pgrp, sid, tty, START)).unwrap();
        let uid = nix::unistd::getuid();
        fs::write(
            d.join("status"),
            format!("Name:\tsoftplc\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\nVmRSS:\t {rss_kb} kB\nThreads:\t2\n"),
        )
        .unwrap();
        let _ = fs::remove_file(d.join("exe"));
        symlink(exe, d.join("exe")).unwrap();
        let _ = symlink("mnt:[4026531841]", d.join("ns/mnt"));
        let _ = symlink("pid:[4026531836]", d.join("ns/pid"));
        self.fd(pid, 0, "/dev/null");
    }

    /// Gives a fake process another start time (what a new process holding a reused pid has).
    fn restarted(&self, pid: i32, start: u64) {
        let p = self.proc_dir().join(format!("{pid}/stat"));
        let stat = parse_stat(&fs::read_to_string(&p).unwrap()).unwrap();
        let line = stat_line(pid, stat.state, stat.ppid, stat.pgrp, stat.session, stat.tty_nr, start);
        fs::write(p, line).unwrap();
    }

    /// Makes a fake process run as `uid` (real and effective).
    fn uid(&self, pid: i32, uid: u32) {
        let p = self.proc_dir().join(format!("{pid}/status"));
        let text: Vec<String> = fs::read_to_string(&p)
            .unwrap()
            .lines()
            .map(|l| if l.starts_with("Uid:") { format!("Uid:\t{uid}\t{uid}\t{uid}\t{uid}") } else { l.to_string() })
            .collect();
        fs::write(p, text.join("\n") + "\n").unwrap();
    }

    fn fd(&self, pid: i32, fd: u32, target: &str) {
        let p = self.proc_dir().join(format!("{pid}/fd/{fd}"));
        let _ = fs::remove_file(&p);
        symlink(target, p).unwrap();
    }

    /// The usual critical process: pid 300, its own session, no terminal, 40 MiB resident.
    fn plc(&self) -> i32 {
        self.process(300, 'S', 1, 300, 300, 0, EXE, 40 * 1024);
        300
    }

    fn write_criu(&self) {
        let t = self.t().display().to_string();
        let script = format!(
            r#"#!/bin/sh
T={t}
echo "$*" >>"$T/calls"
cmd=$1; shift
D=; PID=
while [ $# -gt 0 ]; do
  case "$1" in -D) D=$2; shift ;; -t) PID=$2; shift ;; esac
  shift
done
mode=$(cat "$T/mode" 2>/dev/null || true)
case "$cmd" in
check)
  if [ "$mode" = check-fails ]; then echo "Error (criu/cr-check.c:1001): CONFIG_CHECKPOINT_RESTORE is off"; exit 1; fi
  echo "Looks good." ;;
pre-dump|dump)
  if [ "$mode" = "fail-$cmd" ]; then
    i=0
    while [ $i -lt 30 ]; do echo "($i.0) step $i"; i=$((i+1)); done >"$D/$cmd.log"
    echo "(40.0) Error (criu/sk-unix.c:900): sk unix: Unix socket 0x1234 without peer 0x99" >>"$D/$cmd.log"
    echo "(41.0) Error (criu/cr-dump.c:1600): Dump files (pid: $PID) failed with -1" >>"$D/$cmd.log"
    echo "(42.0) Unlock network" >>"$D/$cmd.log"
    exit 1
  fi
  cp -r "$T/template/." "$D/"
  echo "(00.1) Dumping finished successfully" >"$D/$cmd.log" ;;
restore)
  if [ "$mode" = fail-restore ]; then echo "(1.0) Error (criu/cr-restore.c:1): Can't fork for 300: File exists" >"$D/restore.log"; exit 1; fi
  mv "$T/root/proc/.dead-300" "$T/root/proc/300"
  echo "(00.2) Restore finished successfully. Tasks resumed." >"$D/restore.log" ;;
esac
exit 0
"#
        );
        let p = self.t().join("criu");
        fs::write(&p, script).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        // What a dump of pid 300 writes.
        let tpl = self.t().join("template");
        fs::create_dir_all(&tpl).unwrap();
        let img = |name: &str, magic: [u8; 4]| {
            let mut b = magic.to_vec();
            b.extend_from_slice(&[0x57, 0x09, 0x33, 0x06, 1, 2, 3, 4]);
            fs::write(tpl.join(name), b).unwrap();
        };
        fs::write(tpl.join("inventory.img"), [&INVENTORY_MAGIC[..], &[9, 9, 9]].concat()).unwrap();
        for n in ["pstree.img", "core-300.img", "mm-300.img", "pagemap-300.img", "files.img"] {
            img(n, COMMON_MAGIC);
        }
        fs::write(tpl.join("pages-1.img"), vec![0xaa; 8192]).unwrap();
        fs::write(tpl.join("stats-dump"), STATS).unwrap();
    }

    fn mode(&self, m: &str) {
        fs::write(self.t().join("mode"), m).unwrap();
    }

    fn calls(&self) -> Vec<String> {
        fs::read_to_string(self.t().join("calls")).unwrap_or_default().lines().map(str::to_string).collect()
    }

    fn checkpointer(&self, processes: Vec<CriticalProcess>) -> CriuCheckpointer {
        let (killed, procdir, zombie) = (self.killed.clone(), self.proc_dir(), self.zombie_on_kill.clone());
        let (reuse, opened) = (self.reuse_on_open.clone(), self.opened.clone());
        let space = self.space.clone();
        let cfg = CriuConfig {
            criu: self.t().join("criu"),
            images: self.images(),
            timeout: Duration::from_secs(20),
            stop_timeout: Duration::from_millis(300),
            units: Arc::new(FakeUnits(self.main_pid.clone())),
            space: Arc::new(move |_| Ok(*space.lock().unwrap())),
            open: Arc::new(move |pid| {
                let stat = procdir.join(format!("{pid}/stat"));
                let text = fs::read_to_string(&stat).map_err(|_| io::Error::from_raw_os_error(nix::libc::ESRCH))?;
                opened.lock().unwrap().push(pid);
                let mut reuse = reuse.lock().unwrap();
                if let Some((_, start)) = reuse.take_if(|(p, _)| *p == pid) {
                    // The process exits and another takes its pid between the check and the open: the pidfd
                    // names the new one.
                    let s = parse_stat(&text).unwrap();
                    fs::write(&stat, stat_line(pid, s.state, s.ppid, s.pgrp, s.session, s.tty_nr, start))?;
                }
                let (procdir, killed, zombie) = (procdir.clone(), killed.clone(), zombie.clone());
                Ok(Box::new(FakePidfd { pid, procdir, killed, zombie }) as Box<dyn Pidfd>)
            }),
        };
        CriuCheckpointer::new(self.root(), processes, cfg)
    }
}

fn by_pidfile(w: &World, pid: i32) -> CriticalProcess {
    let pf = w.t().join("root/run/softplc.pid");
    fs::create_dir_all(pf.parent().unwrap()).unwrap();
    fs::write(&pf, format!("{pid}\n")).unwrap();
    fs::set_permissions(&pf, fs::Permissions::from_mode(0o644)).unwrap();
    CriticalProcess {
        name: "plc".into(),
        selector: ProcessSelector::Pidfile("/run/softplc.pid".into()),
        tcp_established: false,
        pre_dump: false,
        user: None,
    }
}

/// A world with the usual PLC and a checkpointer for it.
fn one_plc() -> (World, CriuCheckpointer) {
    let w = World::new();
    let pid = w.plc();
    let c = w.checkpointer(vec![by_pidfile(&w, pid)]);
    (w, c)
}

fn window(id: &str) -> WindowCtx {
    WindowCtx { id: id.into(), start: jiff::Timestamp::UNIX_EPOCH, end: jiff::Timestamp::UNIX_EPOCH, auto_start: true }
}

fn err<T: fmt::Debug>(r: BackendResult<T>) -> String {
    r.expect_err("expected an error").0
}

// ---------------------------------------------------------------- /proc parsing

#[test]
fn stat_parsing_survives_odd_command_names() {
    let s = parse_stat(&stat_line(42, 'S', 1, 42, 42, 34816, 777_001)).unwrap();
    assert_eq!(
        (s.pid, s.comm.as_str(), s.state, s.ppid, s.pgrp, s.session, s.tty_nr, s.starttime),
        (42, COMM, 'S', 1, 42, 42, 34816, 777_001)
    );
    // A name that looks like the fields after it: only the last `)` ends it.
    let s = parse_stat("7 (x) S 1 2 3 0 9) R 1 7 7 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 99 0 0\n").unwrap();
    assert_eq!((s.comm.as_str(), s.state, s.ppid, s.starttime), ("x) S 1 2 3 0 9", 'R', 1, 99));
    for bad in [
        "garbage",
        "",
        ")(",
        "42 (plc) S 1 42 42 0",                                    // cut before the start time
        "42 (plc) S 1 42 42 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 -5 0", // a negative start time
        "42 (plc) SS 1 42 42 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 5 0",
        "x42 (plc) S 1 42 42 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 5 0",
        "4\u{e9}2 (pl\u{e9}) \u{e9} 1",
        "42 (plc)",
    ] {
        assert!(parse_stat(bad).is_none(), "{bad:?}");
    }
}

#[test]
fn terminals_are_recognised() {
    for t in ["/dev/pts/0", "/dev/ttyS0", "/dev/tty1", "/dev/console", "/dev/tty", "/dev/ptmx"] {
        assert!(is_terminal(t), "{t}");
    }
    for t in ["/dev/null", "socket:[1]", "/var/log/plc.log", "pipe:[7]", "/dev/ttyfoo-not/../x"] {
        assert!(!is_terminal(t) || t.starts_with("/dev/tty"), "{t}");
    }
    assert!(!is_terminal("/dev/null"));
}

#[test]
fn tcp_tables_give_connections_not_listeners() {
    let v4 = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
       0: 00000000:05DE 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 7613 1\n\
       1: 0F02000A:05DE 0202000A:9C40 01 00000000:00000000 00:00000000 00000000     0        0 7700 1\n";
    let rows = parse_tcp_table(v4, false);
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].local.as_str(), rows[0].remote.as_str()), ("10.0.2.15:1502", "10.0.2.2:40000"));
    assert_eq!((rows[0].state, rows[0].inode), ("established", 7700));
    let v6 = "sl local remote st\n 0: 0000000000000000FFFF00000100007F:05DE 0000000000000000FFFF00000100007F:D431 01 0:0 0:0 0 0 0 8800 1\n";
    let rows = parse_tcp_table(v6, true);
    assert_eq!(rows[0].local, "127.0.0.1:1502");
}

// ---------------------------------------------------------------- selectors

#[tokio::test]
async fn selectors_name_exactly_one_process() {
    let w = World::new();
    let pid = w.plc();
    let procfs = Procfs::new(w.root());
    let units = FakeUnits(w.main_pid.clone());
    assert_eq!(procfs.resolve(&by_pidfile(&w, pid), &units).await, Ok(300));

    let p = by_pidfile(&w, pid);
    fs::write(w.t().join("root/run/softplc.pid"), "x1\n").unwrap();
    let e = procfs.resolve(&p, &units).await.unwrap_err().0;
    assert!(e.contains("process plc: pidfile /run/softplc.pid holds \"x1\", not a pid"), "{e}");

    // The fake processes run as the test's user.
    let me = nix::unistd::getuid().to_string();
    let exe = CriticalProcess { selector: ProcessSelector::Exe(EXE.into()), user: Some(me.clone()), ..p.clone() };
    assert_eq!(procfs.resolve(&exe, &units).await, Ok(300));
    // A worker it forked runs the same executable: the tree's root is the process.
    w.process(301, 'S', 300, 300, 300, 0, EXE, 1024);
    assert_eq!(procfs.resolve(&exe, &units).await, Ok(300));
    // A second, separate instance: ambiguous.
    w.process(400, 'S', 1, 400, 400, 0, EXE, 1024);
    let e = procfs.resolve(&exe, &units).await.unwrap_err().0;
    assert!(e.contains(&format!("2 separate processes of uid {} run /usr/bin/softplc (pids 300, 400)", me)), "{e}");
    let none = CriticalProcess { selector: ProcessSelector::Exe("/usr/bin/other".into()), ..p.clone() };
    let e = procfs.resolve(&none, &units).await.unwrap_err().0;
    assert!(e.contains("no running process has executable /usr/bin/other"), "{e}");

    let unit = CriticalProcess { selector: ProcessSelector::Unit("softplc.service".into()), ..p };
    *w.main_pid.lock().unwrap() = Ok(300);
    assert_eq!(procfs.resolve(&unit, &units).await, Ok(300));
    *w.main_pid.lock().unwrap() = Ok(0);
    let e = procfs.resolve(&unit, &units).await.unwrap_err().0;
    assert!(e.contains("unit softplc.service has no main process"), "{e}");
    *w.main_pid.lock().unwrap() = Err("Unit softplc.service not loaded.".into());
    let e = procfs.resolve(&unit, &units).await.unwrap_err().0;
    assert!(e.contains("cannot ask systemd for softplc.service's main pid: Unit softplc.service not loaded."), "{e}");
}

#[tokio::test]
async fn an_exe_selector_ignores_copies_run_by_other_users() {
    let w = World::new();
    let pid = w.plc();
    w.uid(pid, 0);
    let procfs = Procfs::new(w.root());
    let units = FakeUnits(w.main_pid.clone());
    let exe = CriticalProcess { selector: ProcessSelector::Exe(EXE.into()), ..by_pidfile(&w, pid) };
    // An engineer runs a copy of the PLC runtime to test a program: not the critical process.
    w.process(400, 'S', 1, 400, 400, 0, EXE, 1024);
    w.uid(400, 1000);
    assert_eq!(procfs.resolve(&exe, &units).await, Ok(300));
    // A second root copy is still ambiguous.
    w.process(500, 'S', 1, 500, 500, 0, EXE, 1024);
    w.uid(500, 0);
    let e = procfs.resolve(&exe, &units).await.unwrap_err().0;
    assert!(e.contains("2 separate processes of uid 0 run /usr/bin/softplc (pids 300, 500)"), "{e}");

    // A policy naming the user: its copy, by name (the sysroot's /etc/passwd) or by uid.
    fs::create_dir_all(w.t().join("root/etc")).unwrap();
    fs::write(w.t().join("root/etc/passwd"), "root:x:0:0::/root:/bin/sh\nplc:x:1000:1000::/home/plc:/bin/sh\n")
        .unwrap();
    for user in ["plc", "1000"] {
        let by_user = CriticalProcess { user: Some(user.into()), ..exe.clone() };
        assert_eq!(procfs.resolve(&by_user, &units).await, Ok(400), "{user}");
    }
    let nobody = CriticalProcess { user: Some("historian".into()), ..exe.clone() };
    let e = procfs.resolve(&nobody, &units).await.unwrap_err().0;
    assert!(e.contains("process plc: user historian is neither a uid nor in /etc/passwd"), "{e}");
    let by_uid = CriticalProcess { user: Some("2000".into()), ..exe };
    let e = procfs.resolve(&by_uid, &units).await.unwrap_err().0;
    assert!(
        e.contains(
            "no running process has executable /usr/bin/softplc as uid 2000 (2000); other users' copies ignored: \
             300 (uid 0), 400 (uid 1000), 500 (uid 0)"
        ),
        "{e}"
    );
}

#[tokio::test]
async fn a_pidfile_others_can_write_or_a_symlink_is_refused() {
    let w = World::new();
    let pid = w.plc();
    let procfs = Procfs::new(w.root());
    let units = FakeUnits(w.main_pid.clone());
    let p = by_pidfile(&w, pid);
    let pf = w.t().join("root/run/softplc.pid");
    let me = nix::unistd::getuid().as_raw();
    fs::set_permissions(&pf, fs::Permissions::from_mode(0o644)).unwrap();
    assert_eq!(procfs.resolve(&p, &units).await, Ok(300));

    for mode in [0o664, 0o646, 0o666] {
        fs::set_permissions(&pf, fs::Permissions::from_mode(mode)).unwrap();
        let e = procfs.resolve(&p, &units).await.unwrap_err().0;
        assert!(
            e.contains(&format!(
                "process plc: pidfile /run/softplc.pid (owner uid {me}, mode {mode:04o}) is writable by group or \
                 others"
            )),
            "{e}"
        );
    }
    fs::set_permissions(&pf, fs::Permissions::from_mode(0o644)).unwrap();

    // Owned by a user who is neither root nor the process's: that user could name any pid.
    let (owner, process_uid) = if me == 0 {
        nix::unistd::chown(&pf, Some(nix::unistd::Uid::from_raw(1234)), None).unwrap();
        (1234, 0)
    } else {
        (me, me + 1)
    };
    w.uid(300, process_uid);
    let e = procfs.resolve(&p, &units).await.unwrap_err().0;
    assert!(
        e.contains(&format!(
            "process plc: pidfile /run/softplc.pid (owner uid {owner}, mode 0644) is owned neither by root nor by \
             the user of pid 300 (uid {process_uid})"
        )),
        "{e}"
    );
    // The process's own user may own its pidfile.
    w.uid(300, owner);
    assert_eq!(procfs.resolve(&p, &units).await, Ok(300));

    // A symlink is refused, not followed (whoever can write its directory could point it anywhere).
    fs::write(w.t().join("root/run/real.pid"), "300\n").unwrap();
    fs::remove_file(&pf).unwrap();
    symlink("real.pid", &pf).unwrap();
    let e = procfs.resolve(&p, &units).await.unwrap_err().0;
    assert!(e.contains("process plc: pidfile /run/softplc.pid is a symbolic link; not followed"), "{e}");
}

// ---------------------------------------------------------------- preflight

#[tokio::test]
async fn preflight_passes_for_a_dumpable_process() {
    let (w, c) = one_plc();
    c.preflight().await.unwrap();
    assert_eq!(w.calls(), vec!["check"]);
    assert!(w.images().is_dir());
}

#[tokio::test]
async fn preflight_refuses_a_process_holding_a_terminal() {
    let w = World::new();
    let pid = w.plc();
    w.fd(pid, 1, "/dev/pts/3");
    let c = w.checkpointer(vec![by_pidfile(&w, pid)]);
    let e = err(c.preflight().await);
    assert!(e.contains("process plc (pid 300) holds a terminal (fd 1 -> /dev/pts/3)"), "{e}");

    // A controlling terminal, no descriptor on it.
    w.fd(pid, 1, "/dev/null");
    w.process(300, 'S', 1, 300, 300, 0x400, EXE, 1024);
    let e = err(c.preflight().await);
    assert!(e.contains("process plc (pid 300) has a controlling terminal (tty 4:0)"), "{e}");

    // A child holding the serial console counts too: CRIU dumps the whole tree.
    w.process(300, 'S', 1, 300, 300, 0, EXE, 1024);
    w.process(310, 'S', 300, 300, 300, 0, "/bin/sh", 100);
    w.fd(310, 2, "/dev/ttyS0");
    let e = err(c.preflight().await);
    assert!(e.contains("its child 310 (soft) plc (rt) holds a terminal (fd 2 -> /dev/ttyS0)"), "{e}");
}

#[tokio::test]
async fn preflight_refuses_a_session_led_from_outside() {
    let w = World::new();
    // Started from a shell without setsid: session and group of pid 250.
    w.process(300, 'S', 250, 250, 250, 0, EXE, 1024);
    let c = w.checkpointer(vec![by_pidfile(&w, 300)]);
    let e = err(c.preflight().await);
    assert!(
        e.contains("process plc (pid 300) belongs to session 250, whose leader is outside its process tree"),
        "{e}"
    );
}

#[tokio::test]
async fn preflight_refuses_an_exited_process() {
    let w = World::new();
    let c = w.checkpointer(vec![by_pidfile(&w, 777)]);
    let e = err(c.preflight().await);
    assert!(e.contains("process plc (pid 777) does not exist: it has exited"), "{e}");
    w.process(777, 'Z', 1, 777, 777, 0, EXE, 0);
    let e = err(c.preflight().await);
    assert!(e.contains("process plc (pid 777) has exited (zombie"), "{e}");
}

#[tokio::test]
async fn preflight_names_every_refused_process_and_criu_check_failures() {
    let w = World::new();
    w.plc();
    w.fd(300, 1, "/dev/console");
    let mut other = by_pidfile(&w, 300);
    other.name = "historian".into();
    other.selector = ProcessSelector::Exe("/usr/bin/historian".into());
    let c = w.checkpointer(vec![by_pidfile(&w, 300), other]);
    let e = err(c.preflight().await);
    assert!(e.contains("process plc (pid 300) holds a terminal") && e.contains("process historian: no running"), "{e}");

    w.mode("check-fails");
    let e = err(c.preflight().await);
    assert!(e.contains("criu check") && e.contains("CONFIG_CHECKPOINT_RESTORE is off"), "{e}");
}

#[tokio::test]
async fn preflight_refuses_another_mount_namespace_and_checks_pre_dump_support() {
    let w = World::new();
    let pid = w.plc();
    let mut p = by_pidfile(&w, pid);
    p.pre_dump = true;
    let c = w.checkpointer(vec![p]);
    c.preflight().await.unwrap();
    assert_eq!(w.calls(), vec!["check", "check --feature mem_dirty_track"]);
    fs::remove_file(w.proc_dir().join("self/ns/mnt")).unwrap();
    symlink("mnt:[4026532999]", w.proc_dir().join("self/ns/mnt")).unwrap();
    let e = err(c.preflight().await);
    assert!(e.contains("is in another mnt namespace (mnt:[4026531841]) than otpatchd (mnt:[4026532999])"), "{e}");
}

// ---------------------------------------------------------------- checkpoint

#[tokio::test]
async fn checkpoint_dumps_with_leave_running_and_writes_a_manifest() {
    let (w, c) = one_plc();
    let cp = c.checkpoint(&window("w-1")).await.unwrap();
    assert_eq!((cp.id.as_str(), cp.processes.clone()), ("w-1", vec!["plc".to_string()]));
    let dir = w.images().join("w-1/plc");
    assert_eq!(
        w.calls(),
        vec![format!("dump -t 300 --leave-running -o dump.log -v4 -D {} --tcp-close", dir.display())]
    );
    let m = Manifest::load(&dir).unwrap();
    assert_eq!((m.pid, m.exe.as_path(), m.boot_id.as_str(), m.rss), (300, Path::new(EXE), BOOT, 40 * 1024 * 1024));
    assert_eq!(m.pids, vec![300]);
    let s = m.stats.unwrap();
    assert_eq!((s.freezing_us, s.frozen_us, s.pages_written), (5146, 91481, 66));
    let pages = m.files.iter().find(|f| f.name == "pages-1.img").unwrap();
    assert_eq!((pages.size, pages.sha256.is_none()), (8192, true));
    assert!(m.files.iter().find(|f| f.name == "core-300.img").unwrap().sha256.is_some());
}

#[tokio::test]
async fn checkpoint_pre_dumps_and_passes_tcp_established() {
    let w = World::new();
    let pid = w.plc();
    let mut p = by_pidfile(&w, pid);
    p.pre_dump = true;
    p.tcp_established = true;
    let c = w.checkpointer(vec![p]);
    c.checkpoint(&window("w-2")).await.unwrap();
    let dir = w.images().join("w-2/plc");
    assert_eq!(
        w.calls(),
        vec![
            format!("pre-dump -t 300 --track-mem -o pre-dump.log -v4 -D {}/pre", dir.display()),
            format!(
                "dump -t 300 --leave-running -o dump.log -v4 -D {} --track-mem --prev-images-dir pre --tcp-established",
                dir.display()
            ),
        ]
    );
    let m = Manifest::load(&dir).unwrap();
    assert!(m.pre_stats.is_some() && m.files.iter().any(|f| f.name == "pre/pages-1.img"));
}

#[tokio::test]
async fn checkpoint_removes_older_windows_images_first() {
    let w = World::new();
    let pid = w.plc();
    let old = w.images().join("w-old/plc");
    fs::create_dir_all(&old).unwrap();
    fs::write(old.join("pages-1.img"), b"old").unwrap();
    let c = w.checkpointer(vec![by_pidfile(&w, pid)]);
    let cp = c.checkpoint(&window("w-new")).await.unwrap();
    assert!(!w.images().join("w-old").exists());
    assert!(w.images().join("w-new/plc/manifest.json").is_file());
    // After a commit the window's own set goes too.
    c.discard(&cp).await.unwrap();
    assert!(!w.images().join("w-new").exists());
    c.discard(&cp).await.unwrap();
}

#[tokio::test]
async fn checkpoint_refuses_without_space_and_never_runs_criu() {
    let w = World::new();
    let pid = w.plc();
    *w.space.lock().unwrap() = 20 * 1024 * 1024;
    let c = w.checkpointer(vec![by_pidfile(&w, pid)]);
    let e = err(c.checkpoint(&window("w-3")).await);
    assert!(
        e.contains("not enough space for the checkpoint images")
            && e.contains("need about 64 MiB (plc (pid 300) 40 MiB resident")
            && e.contains("20 MiB available"),
        "{e}"
    );
    assert!(w.calls().is_empty());
    assert!(!w.images().join("w-3").exists());
}

#[tokio::test]
async fn a_failed_dump_carries_criu_log_excerpt_and_keeps_no_images() {
    let w = World::new();
    let pid = w.plc();
    w.mode("fail-dump");
    let c = w.checkpointer(vec![by_pidfile(&w, pid)]);
    let e = err(c.checkpoint(&window("w-4")).await);
    assert!(e.starts_with("dump of process plc (pid 300): criu failed (exit 1); dump.log says:"), "{e}");
    let lines: Vec<&str> = e.lines().skip(1).collect();
    assert_eq!(lines.len(), 15, "{e}");
    assert!(lines[0].contains("Error (criu/sk-unix.c:900)") && lines[1].contains("Error (criu/cr-dump.c:1600)"), "{e}");
    assert!(lines[14].contains("Unlock network"), "{e}");
    // The log stays for diagnosis.
    assert!(w.images().join("w-4/plc/dump.log").is_file());
}

#[test]
fn excerpts_put_errors_first_then_the_tail() {
    let mut log: Vec<String> = (0..40).map(|i| format!("({i}.0) line {i}")).collect();
    log[3] = "(3.0) Error (criu/util.c:642): exited, status=1".into();
    log[30] = "(30.0) Error (criu/mem.c:1): Can't dump page".into();
    let e = excerpt(&log.join("\n"));
    let lines: Vec<&str> = e.lines().collect();
    assert_eq!(lines.len(), 15);
    assert!(lines[0].contains("util.c:642") && lines[1].contains("mem.c:1"), "{e}");
    assert_eq!(lines[2], "(26.0) line 26"); // 13 tail lines: 26..=39 without the error at 30
    assert_eq!(lines[14], "(39.0) line 39");
    assert_eq!(excerpt("a\n\nb"), "a\nb");
}

#[test]
fn stats_dump_decodes_and_rejects_other_images() {
    let s = parse_stats_dump(&STATS).unwrap();
    assert_eq!((s.freezing_us, s.frozen_us, s.memdump_us, s.memwrite_us), (5146, 91481, 8867, 1956));
    assert_eq!((s.pages_scanned, s.pages_skipped_parent, s.pages_written), (18061, 0, 66));
    let mut other = STATS;
    other[4] = 0;
    assert!(parse_stats_dump(&other).is_none());
    assert!(parse_stats_dump(&STATS[..20]).is_none());
}

// ---------------------------------------------------------------- restore

async fn checkpointed(w: &World) -> (CriuCheckpointer, CheckpointRef) {
    let pid = w.plc();
    let c = w.checkpointer(vec![by_pidfile(w, pid)]);
    let cp = c.checkpoint(&window("w-5")).await.unwrap();
    (c, cp)
}

#[tokio::test]
async fn restore_stops_the_process_and_restores_it_with_the_same_pid() {
    let w = World::new();
    let (c, cp) = checkpointed(&w).await;
    c.restore(&cp).await.unwrap();
    assert_eq!(*w.killed.lock().unwrap(), vec![300]);
    let dir = w.images().join("w-5/plc");
    assert_eq!(w.calls()[1], format!("restore -d -o restore.log -v4 -D {} --tcp-close", dir.display()));
    assert!(Procfs::new(w.root()).alive(300));
    // A rolled-back window keeps its images (discard is for commits).
    assert!(dir.join("manifest.json").is_file());
}

#[tokio::test]
async fn a_corrupted_image_set_is_refused_before_anything_is_stopped() {
    let w = World::new();
    let (c, cp) = checkpointed(&w).await;
    let dir = w.images().join("w-5/plc");
    let mut core = fs::read(dir.join("core-300.img")).unwrap();
    core[6] ^= 0xff;
    fs::write(dir.join("core-300.img"), &core).unwrap();
    let e = err(c.restore(&cp).await);
    assert!(e.contains("core-300.img: content changed since the dump") && e.contains("nothing was stopped"), "{e}");

    core[6] ^= 0xff;
    fs::write(dir.join("core-300.img"), &core).unwrap();
    fs::write(dir.join("pages-1.img"), b"short").unwrap();
    let e = err(c.restore(&cp).await);
    assert!(e.contains("pages-1.img: 5 bytes, the dump wrote 8192"), "{e}");

    fs::remove_file(dir.join("manifest.json")).unwrap();
    let e = err(c.restore(&cp).await);
    assert!(e.contains("manifest.json: No such file"), "{e}");
    fs::write(dir.join("manifest.json"), b"{\"format\":1").unwrap();
    let e = err(c.restore(&cp).await);
    assert!(e.contains("not a manifest"), "{e}");

    assert!(w.killed.lock().unwrap().is_empty());
    assert_eq!(w.calls().len(), 1, "only the dump ran");
    assert!(Procfs::new(w.root()).alive(300));
}

#[tokio::test]
async fn restore_after_a_reboot_leaves_the_restarted_process_alone() {
    let w = World::new();
    let (c, cp) = checkpointed(&w).await;
    fs::write(w.proc_dir().join("sys/kernel/random/boot_id"), "another-boot\n").unwrap();
    c.restore(&cp).await.unwrap();
    assert!(w.killed.lock().unwrap().is_empty());
    assert_eq!(w.calls().len(), 1);
}

#[tokio::test]
async fn restore_never_stops_an_unrelated_process_holding_the_pid() {
    let w = World::new();
    let (c, cp) = checkpointed(&w).await;
    // The process died in the window and its pid went to something else.
    w.process(300, 'S', 1, 300, 300, 0, "/usr/sbin/sshd", 1024);
    let e = err(c.restore(&cp).await);
    assert!(e.contains("pid 300 now runs /usr/sbin/sshd, not /usr/bin/softplc"), "{e}");
    assert!(w.killed.lock().unwrap().is_empty());
}

#[tokio::test]
async fn restore_never_kills_a_new_process_of_the_same_executable_on_the_pid() {
    let w = World::new();
    let (c, cp) = checkpointed(&w).await;
    // The PLC died in the window, pid 300 was reused by another softplc started later.
    w.restarted(300, START + 5000);
    let e = err(c.restore(&cp).await);
    assert!(
        e.contains(&format!(
            "pid 300 was reused: the checkpointed process started at {START} (clock ticks after boot), the one \
             running now at {}",
            START + 5000
        )) && e.contains("not stopped"),
        "{e}"
    );
    assert!(w.killed.lock().unwrap().is_empty());
    assert_eq!(w.calls().len(), 1, "only the dump ran");
}

#[tokio::test]
async fn a_pid_reused_between_the_check_and_the_pidfd_is_not_signalled() {
    let w = World::new();
    let (c, cp) = checkpointed(&w).await;
    *w.reuse_on_open.lock().unwrap() = Some((300, START + 9));
    let e = err(c.restore(&cp).await);
    assert!(e.contains(&format!("started at {START}")) && e.contains(&format!("now at {}", START + 9)), "{e}");
    assert_eq!(*w.opened.lock().unwrap(), vec![300]);
    assert!(w.killed.lock().unwrap().is_empty());
    assert_eq!(w.calls().len(), 1, "only the dump ran");
}

#[test]
fn the_kernel_pidfd_kills_the_process_it_opened() {
    let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
    let pid = i32::try_from(child.id()).unwrap();
    let fd = open_pidfd(pid).unwrap();
    fd.kill().unwrap();
    let status = child.wait().unwrap();
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(9));
    // Reaped: the pidfd names the exited process, never a later holder of the pid.
    assert_eq!(fd.kill().unwrap_err().raw_os_error(), Some(nix::libc::ESRCH));
}

#[tokio::test]
async fn a_child_pid_reused_before_the_signal_is_not_signalled() {
    let w = World::new();
    w.plc();
    w.process(310, 'S', 300, 300, 300, 0, EXE, 1024);
    let c = w.checkpointer(vec![by_pidfile(&w, 300)]);
    let cp = c.checkpoint(&window("w-6")).await.unwrap();
    // The worker exits after the tree was read and its pid goes to another process before the pidfd is open.
    *w.reuse_on_open.lock().unwrap() = Some((310, START + 70));
    let e = err(c.restore(&cp).await);
    assert!(e.contains("310 is still running"), "{e}");
    assert_eq!(*w.opened.lock().unwrap(), vec![300, 310]);
    assert_eq!(*w.killed.lock().unwrap(), vec![300]);
}

#[tokio::test]
async fn a_manifest_without_start_time_never_stops_a_running_pid() {
    let w = World::new();
    let (c, cp) = checkpointed(&w).await;
    let dir = w.images().join("w-5/plc");
    let mut m = Manifest::load(&dir).unwrap();
    assert_eq!(m.start_time, Some(START));
    // What an older otpatchd wrote: no start_time key.
    m.start_time = None;
    let mut json: serde_json::Value = serde_json::to_value(&m).unwrap();
    json.as_object_mut().unwrap().remove("start_time");
    fs::write(dir.join("manifest.json"), serde_json::to_vec(&json).unwrap()).unwrap();
    let e = err(c.restore(&cp).await);
    assert!(e.contains("records no start time") && e.contains("not stopped"), "{e}");
    assert!(w.killed.lock().unwrap().is_empty());
    // Once the pid is free there is nothing to mistake: the set is restored.
    fs::rename(w.proc_dir().join("300"), w.proc_dir().join(".dead-300")).unwrap();
    c.restore(&cp).await.unwrap();
    assert!(w.killed.lock().unwrap().is_empty());
    assert!(Procfs::new(w.root()).alive(300));
}

#[tokio::test]
async fn restore_reports_a_zombie_that_keeps_the_pid_and_criu_failures() {
    let w = World::new();
    let (c, cp) = checkpointed(&w).await;
    *w.zombie_on_kill.lock().unwrap() = true;
    let e = err(c.restore(&cp).await);
    assert!(e.contains("300 is a zombie its parent 1 has not reaped"), "{e}");

    let w = World::new();
    let (c, cp) = checkpointed(&w).await;
    w.mode("fail-restore");
    let e = err(c.restore(&cp).await);
    assert!(
        e.contains("restore of process plc (pid 300) (it was stopped and is not running): criu failed (exit 1)")
            && e.contains("Can't fork for 300: File exists"),
        "{e}"
    );
}

#[tokio::test]
async fn a_hanging_criu_is_killed_at_its_deadline() {
    let w = World::new();
    let p = w.t().join("criu");
    fs::write(&p, "#!/bin/sh\nexec sleep 30\n").unwrap();
    let mut c = w.checkpointer(Vec::new());
    c.criu.timeout = Duration::from_millis(300);
    let t = std::time::Instant::now();
    let e = err(c.preflight().await);
    assert!(e.contains("criu did not finish within 300ms and was killed"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(10));
}
