#!/usr/bin/env python3
"""Judges a gateway-image scenario from the host, standard library only.

  judge.py SCENARIO LOG QEMU_RC

LOG is the serial console as hil/tools/console.py wrote it (each line "h=MS <text>", MS since QEMU
started). The guest reports facts only (HIL-FACT TOPIC key=value ... up_ms=N, HIL-WATCH, HIL-STATE,
HIL-JOURNAL, HIL-SECURITY, HIL-GRUB, HIL-END); every check is decided here. Prints one line per check,
the timeline and the figures; exit 0 when every check passed, 1 otherwise.
"""
import re
import sys

LINE = re.compile(r"^h=(\d+) (.*)$")
TAG = re.compile(r"(HIL-[A-Z]+) ?(.*)$")
KV = re.compile(r'([A-Za-z_][\w.-]*)=("([^"]*)"|(\S*))')


class Fact(dict):
    def __init__(self, topic, host_ms, text):
        super().__init__()
        self.topic = topic
        self.h = host_ms
        for m in KV.finditer(text):
            self[m.group(1)] = m.group(3) if m.group(3) is not None else m.group(4)


def parse(path):
    """(host ms, tag, text) of every HIL line; facts by topic."""
    lines, facts = [], []
    # Only LF ends a line: the console carries bare CRs inside lines (GRUB, systemd status).
    for raw in open(path, errors="replace", newline="\n"):
        m = LINE.match(raw.rstrip("\n").replace("\r", ""))
        if not m:
            continue
        t = TAG.search(m.group(2))
        if not t:
            continue
        h, tag, text = int(m.group(1)), t.group(1), t.group(2)
        lines.append((h, tag, text))
        if tag == "HIL-FACT":
            topic, _, rest = text.partition(" ")
            facts.append(Fact(topic, h, rest))
    return lines, facts


class Judge:
    def __init__(self, scenario):
        self.scenario = scenario
        self.results = []

    def check(self, name, ok, evidence=""):
        self.results.append((name, bool(ok)))
        print("    %s %-44s %s" % ("ok  " if ok else "FAIL", name, evidence))

    def passed(self):
        return bool(self.results) and all(ok for _, ok in self.results)


def first(facts, topic, **match):
    for f in facts:
        if f.topic == topic and all(f.get(k) == v for k, v in match.items()):
            return f
    return Fact(topic, -1, "")


def every(facts, topic, **match):
    return [f for f in facts if f.topic == topic and all(f.get(k) == v for k, v in match.items())]


def num(v, default=-1):
    try:
        return int(v)
    except (TypeError, ValueError):
        return default


MUTATING = ["ScheduleWindow", "CancelWindow", "Apply", "Rollback", "Reload", "Retry"]
DENIED = "org.freedesktop.DBus.Error.AccessDenied"


def judge_systemd(j, lines, facts):
    boot = first(facts, "unit", phase="boot")
    j.check("unit-type-notify", boot.get("Type") == "notify" and boot.get("NotifyAccess") == "main",
            "Type=%s NotifyAccess=%s" % (boot.get("Type"), boot.get("NotifyAccess")))
    # Type=notify: systemd leaves "activating" only on READY=1 (or fails the start after TimeoutStartSec).
    j.check("otpatchd-active-after-boot", boot.get("wait_rc") == "0" and boot.get("ActiveState") == "active"
            and boot.get("SubState") == "running",
            "%s/%s pid %s" % (boot.get("ActiveState"), boot.get("SubState"), boot.get("MainPID")))
    j.check("watchdog-configured", boot.get("WatchdogUSec") == "1min", "WatchdogUSec=%s" % boot.get("WatchdogUSec"))
    start_us, ready_us = num(boot.get("ExecMainStartTimestampMonotonic")), num(boot.get("ActiveEnterTimestampMonotonic"))
    j.check("ready-after-exec", 0 < start_us <= ready_us,
            "exec -> READY %d ms" % ((ready_us - start_us) // 1000) if start_us > 0 else "")
    journal = [t for _, tag, t in lines if tag == "HIL-JOURNAL"]
    served = next((l for l in journal if "otpatchd[" in l and "D-Bus interface served" in l), "")
    started_line = next((l for l in journal if "systemd[1]" in l and "Started otpatchd.service" in l), "")
    mono = lambda l: float(re.search(r"\[\s*([0-9.]+)\]", l).group(1)) if re.search(r"\[\s*([0-9.]+)\]", l) else -1
    # Type=notify: systemd says "Started" only once the daemon said READY=1, which it says after it serves
    # its D-Bus interface (a Type=simple unit would be "Started" at exec, before that).
    j.check("systemd-started-it-only-after-it-served-dbus", served and started_line
            and 0 <= mono(served) <= mono(started_line),
            "D-Bus interface served at %.3f s, Started at %.3f s" % (mono(served), mono(started_line)))
    system = first(facts, "system")
    j.check("no-failed-units", system.get("failed_units", "x") == "",
            "is-system-running=%s failed=%s" % (system.get("state"), system.get("failed_units")))
    bs = first(facts, "boot-slot")
    j.check("booted-slot-A", bs.get("cmdline_slot") == "A" and bs.get("rauc_booted") == "A",
            "rauc.slot=%s, RAUC says booted %s, primary %s" % (bs.get("cmdline_slot"), bs.get("rauc_booted"),
                                                             bs.get("rauc_primary")))
    clock = first(facts, "clock")
    j.check("guest-clock-is-host-clock", abs(num(clock.get("guest")) - num(clock.get("host_made"))) < 600,
            "guest %s, host made the run at %s" % (clock.get("guest"), clock.get("host_made")))

    grp = first(facts, "group").get("otpatch", "")
    j.check("sysusers-made-group-otpatch", grp.startswith("otpatch:x:"), grp)
    modes = {f.get("path"): f.get("mode") for f in every(facts, "path")}
    want = {"/var/lib/otpatch": "750 root:root", "/etc/otpatch/policy.d": "755 root:root",
            "/etc/otpatch/trust": "755 root:root", "/run/otpatch": "750 root:root"}
    for p, m in want.items():
        j.check("mode %s" % p, modes.get(p) == m, "%s (want %s)" % (modes.get(p), m))
    mnt = first(facts, "mount")
    j.check("state-on-data-partition", mnt.get("data") == "/dev/vda4" and
            mnt.get("source", "").startswith("/dev/vda4[/otpatch]"),
            "/var/lib/otpatch from %s, /data from %s" % (mnt.get("source"), mnt.get("data")))
    bn = first(facts, "busname")
    j.check("bus-name-owned-by-main-pid", bn.get("owner_pid") == bn.get("main_pid") != "0",
            "owner %s, MainPID %s" % (bn.get("owner_pid"), bn.get("main_pid")))

    j.check("operator-in-group-otpatch", "(otpatch)" in first(facts, "user").get("hil-op", ""),
            first(facts, "user").get("hil-op", ""))
    for method in MUTATING:
        f = first(facts, "ctl", user="nobody", method=method)
        j.check("nobody-refused %s" % method, f.get("rc") not in ("0", None) and f.get("error") == DENIED,
                "rc=%s %s" % (f.get("rc"), f.get("error")))
        r = first(facts, "raw", user="nobody", method=method)
        # Refused by the bus policy (io.otpatch.Daemon1.conf) before it reaches the daemon.
        j.check("bus-refused %s" % method, r.get("error") == DENIED and "Rejected send message" in r.get("msg", ""),
                (r.get("msg") or "")[:110])
    for method in MUTATING:
        f = first(facts, "ctl", user="hil-op", method=method)
        if method in ("ScheduleWindow", "CancelWindow", "Reload"):
            ok = f.get("rc") == "0"
        else:
            # No window is open, nothing to roll back, no such version: the daemon's own answer, not a refusal.
            ok = f.get("rc") not in ("0", None) and f.get("error", "").startswith("io.otpatch.Error.")
        j.check("operator-allowed %s" % method, ok, "rc=%s %s" % (f.get("rc"), f.get("error") or ""))
    for method in ("GetStatus", "ListWindows"):
        f = first(facts, "ctl", user="nobody", method=method)
        j.check("nobody-may-read %s" % method, f.get("rc") == "0", "rc=%s" % f.get("rc"))

    watch = [t for _, tag, t in lines if tag == "HIL-WATCH"]
    j.check("window-scheduled", first(facts, "window-scheduled").get("rc") == "0",
            first(facts, "window-scheduled").get("id", ""))
    j.check("watch-exit-0", any(t.endswith("watch-rc 0") for t in watch),
            next((t for t in watch if "watch-rc" in t), "no watch-rc line"))
    out = first(facts, "window-outcome")
    j.check("window-committed", out.get("last_outcome", "").startswith("committed"), "last_outcome=%s" % out.get("last_outcome"))
    states = [t for _, tag, t in lines if tag == "HIL-STATE"]
    j.check("segmented-during-window", any("seg=1" in s for s in states))
    j.check("livepatch-seen-during-window", any("lp=1" in s for s in states))
    after = first(facts, "window-after")
    j.check("segmentation-lifted", out.get("segmentation_active") == "false" and "otpatch" not in after.get("tables", "x"),
            "segmentation_active=%s tables: %s" % (out.get("segmentation_active"), after.get("tables")))
    j.check("livepatch-enabled", after.get("livepatch") == "1" and after.get("marker") == "otpatch.livepatch=v1",
            "enabled=%s %s" % (after.get("livepatch"), after.get("marker")))
    j.check("committed-recorded", '"1.0.0"' in after.get("committed", "") or "1.0.0" in after.get("committed", ""),
            after.get("committed", "")[:80])
    j.check("audit-chain-intact", "intact" in after.get("audit_verify", "").lower() or
            "ok" in after.get("audit_verify", "").lower(), after.get("audit_verify", ""))
    aw = first(facts, "unit", phase="after-window")
    j.check("no-restart-during-window", aw.get("NRestarts") == "0" and aw.get("MainPID") == boot.get("MainPID"),
            "NRestarts=%s pid %s" % (aw.get("NRestarts"), aw.get("MainPID")))

    score = first(facts, "security").get("score", "")
    j.check("security-score-recorded", re.match(r"^\d+(\.\d+)?$", score or ""), "exposure %s" % score)

    stopped = first(facts, "stopped")
    j.check("sigstop-stopped-the-daemon", stopped.get("proc_state") == "T", "pid %s state %s" %
            (stopped.get("pid"), stopped.get("proc_state")))
    aft = first(facts, "unit", phase="after-watchdog")
    j.check("watchdog-restarted-it", aft.get("ActiveState") == "active" and aft.get("MainPID") not in
            ("0", None, stopped.get("pid")) and num(aft.get("NRestarts")) == num(stopped.get("nrestarts")) + 1,
            "pid %s -> %s, NRestarts %s -> %s, %s" % (stopped.get("pid"), aft.get("MainPID"), stopped.get("nrestarts"),
                                                      aft.get("NRestarts"), aft.get("ActiveState")))
    wj = [f.get("msg", "") for f in every(facts, "watchdog-journal")]
    j.check("systemd-logged-watchdog-timeout", any("Watchdog timeout" in m for m in wj),
            next((m for m in wj if "Watchdog timeout" in m), "")[:100])
    j.check("restarted-daemon-answers", first(facts, "after-restart").get("status_rc") == "0")

    end = first(facts, "system-at-end")
    j.check("no-failed-units-at-end", end.get("failed_units", "x") == "", "failed=%s" % end.get("failed_units"))

    # Figures.
    fig = {}
    grub = next((h for h, tag, _ in lines if tag == "HIL-GRUB"), None)
    runner = first(facts, "runner")
    if grub is not None:
        fig["QEMU start -> GRUB chose the slot"] = grub
    if runner.h >= 0 and ready_us > 0:
        ready_h = runner.h - (num(runner.get("uptime_ms")) - ready_us // 1000)
        fig["QEMU start -> otpatchd READY (systemd: active)"] = ready_h
        fig["kernel start -> otpatchd READY"] = ready_us // 1000
        fig["otpatchd exec -> READY"] = (ready_us - start_us) // 1000
    man = first(facts, "manager")
    if num(man.get("UserspaceTimestampMonotonic")) > 0:
        fig["kernel start -> systemd (initramfs included)"] = num(man.get("UserspaceTimestampMonotonic")) // 1000
    if runner.h >= 0:
        fig["QEMU start -> scenario runner"] = runner.h
    w_open = next((h for h, tag, t in lines if tag == "HIL-WATCH" and "-> arming" in t), None)
    w_comm = next((h for h, tag, t in lines if tag == "HIL-WATCH" and "-> committed" in t), None)
    if w_open is not None and w_comm is not None:
        fig["window open -> committed"] = w_comm - w_open
    if stopped.h >= 0 and aft.h >= 0:
        fig["SIGSTOP -> restarted and active (WatchdogSec=60s, RestartSec=5s)"] = aft.h - stopped.h
    return fig


def judge_plain_reboots(j, lines, facts):
    grub = [(h, t) for h, tag, t in lines if tag == "HIL-GRUB"]
    chosen = [t for _, t in grub if t.startswith("slot=")]
    resets = [t for _, t in grub if t.startswith("no bootable slot")]
    boots = every(facts, "boot")
    j.check("four-boots-reported", [b.get("n") for b in boots] == ["1", "2", "3", "4"],
            "boots %s" % ",".join(b.get("n", "?") for b in boots))
    j.check("grub-chose-A-every-time", chosen and all(c.startswith("slot=A ") for c in chosen),
            " | ".join(c.split(" ")[0] for c in chosen))
    j.check("grub-never-ran-out-of-slots", not resets, resets[0] if resets else "")
    for b in boots:
        n = b.get("n")
        j.check("boot %s runs A (kernel and RAUC)" % n, b.get("cmdline_slot") == "A" and b.get("rauc_booted") == "A",
                "rauc.slot=%s RAUC booted %s" % (b.get("cmdline_slot"), b.get("rauc_booted")))
        j.check("boot %s: otpatchd active" % n, b.get("otpatchd") == "active", b.get("otpatchd", ""))
        # Marked good on this boot: RAUC (from grubenv) calls A good only with A_OK=1 and A_TRY=0.
        j.check("boot %s: A marked good (RAUC)" % n, b.get("a_status") == "good",
                "A %s, B %s, primary %s; grubenv %s" % (b.get("a_status"), b.get("b_status"),
                                                        b.get("rauc_primary") or "none", b.get("grubenv")))
    fig = {}
    for i, (h, t) in enumerate(grub, 1):
        fig["GRUB #%d: %s" % (i, t[:56])] = h
    return fig


JUDGES = {"systemd": judge_systemd, "plain-reboots": judge_plain_reboots}


def main():
    if len(sys.argv) != 4:
        sys.stderr.write("usage: judge.py SCENARIO LOG QEMU_RC\n")
        return 2
    scenario, path, qemu_rc = sys.argv[1], sys.argv[2], sys.argv[3]
    lines, facts = parse(path)
    j = Judge(scenario)
    end = next((t for _, tag, t in reversed(lines) if tag == "HIL-END"), None)
    j.check("qemu-exited-by-poweroff", qemu_rc == "0", "qemu exit %s%s" % (qemu_rc, " (timed out)" if qemu_rc == "124" else ""))
    j.check("scenario-ran-to-its-end", end is not None and end.startswith("rc=0"), end or "no HIL-END line")
    fig = JUDGES[scenario](j, lines, facts)
    print("    timeline (host ms since QEMU started):")
    for h, tag, text in lines:
        if tag in ("HIL-GRUB", "HIL-WATCH", "HIL-STATE", "HIL-END") or (
                tag == "HIL-FACT" and text.split(" ", 1)[0] in
                ("runner", "unit", "window-scheduled", "stopped", "watchdog-sample", "after-restart")):
            print("    %8d  %-11s %s" % (h, tag[4:].lower(), text[:150]))
    print("    figures:")
    for k, v in fig.items():
        print("      %-64s %d ms" % (k, v))
    n = len(j.results)
    failed = sum(1 for _, ok in j.results if not ok)
    print("    %s: %d checks, %d failed" % (scenario, n, failed))
    return 0 if j.passed() else 1


if __name__ == "__main__":
    sys.exit(main())
