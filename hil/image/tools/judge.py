#!/usr/bin/env python3
"""Judges a gateway-image scenario from the host, standard library only.

  judge.py SCENARIO LOG QEMU_RC

LOG is the serial console as hil/tools/console.py wrote it (each line "h=MS <text>", MS since QEMU
started). The guest reports facts only (HIL-FACT TOPIC key=value ... up_ms=N, HIL-WATCH, HIL-STATE,
HIL-JOURNAL, HIL-SECURITY, HIL-GRUB, HIL-END); every check is decided here. Prints one line per check,
the timeline and the figures; exit 0 when every check passed, 1 otherwise.
"""
import os
import re
import sys

LINE = re.compile(r"^h=(\d+) (.*)$")
TAG = re.compile(r"(HIL-[A-Z]+) ?(.*)$")
KV = re.compile(r'([A-Za-z_][\w.-]*)=("([^"]*)"|(\S*))')


class Fact(dict):
    def __init__(self, topic, host_ms, text, boot=1):
        super().__init__()
        self.topic = topic
        self.h = host_ms
        # Which start of QEMU (a reboot starts it again: "HIL-HOST event=qemu-start boot=N" opens each one).
        self.boot = boot
        for m in KV.finditer(text):
            self[m.group(1)] = m.group(3) if m.group(3) is not None else m.group(4)


def parse(path):
    """(host ms, tag, text) of every HIL line; facts by topic; (boot, host ms, tag, text) of every line."""
    lines, facts, blines = [], [], []
    boot = 1
    # Only LF ends a line: the console carries bare CRs inside lines (GRUB, systemd status).
    for raw in open(path, errors="replace", newline="\n"):
        m = LINE.match(raw.rstrip("\n").replace("\r", ""))
        if not m:
            continue
        t = TAG.search(m.group(2))
        if not t:
            continue
        h, tag, text = int(m.group(1)), t.group(1), t.group(2)
        if tag == "HIL-HOST" and text.startswith("event=qemu-start "):
            boot = num(Fact("", h, text).get("boot"), boot)
        lines.append((h, tag, text))
        blines.append((boot, h, tag, text))
        if tag == "HIL-FACT":
            topic, _, rest = text.partition(" ")
            facts.append(Fact(topic, h, rest, boot))
    return lines, facts, blines


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
    # 0: committed; 10 (the window failed) where the kernel cannot be live-patched (below).
    want_rc = "watch-rc 0" if first(facts, "kernel").get("livepatch_sysfs") == "1" else "watch-rc 10"
    j.check("watch-exit-%s" % want_rc.split()[-1], any(t.endswith(want_rc) for t in watch),
            next((t for t in watch if "watch-rc" in t), "no watch-rc line"))
    out = first(facts, "window-outcome")
    states = [t for _, tag, t in lines if tag == "HIL-STATE"]
    after = first(facts, "window-after")
    kern = first(facts, "kernel")
    j.check("segmented-during-window", any("seg=1" in s for s in states))
    j.check("segmentation-lifted", out.get("segmentation_active") == "false" and "otpatch" not in after.get("tables", "x"),
            "segmentation_active=%s tables: %s" % (out.get("segmentation_active"), after.get("tables")))
    if kern.get("livepatch_sysfs") == "1":
        j.check("window-committed", out.get("last_outcome", "").startswith("committed"),
                "last_outcome=%s" % out.get("last_outcome"))
        j.check("livepatch-seen-during-window", any("lp=1" in s for s in states))
        j.check("livepatch-enabled", after.get("livepatch") == "1" and after.get("marker") == "otpatch.livepatch=v1",
                "enabled=%s %s" % (after.get("livepatch"), after.get("marker")))
        j.check("committed-recorded", '"1.0.0"' in after.get("committed", "") or "1.0.0" in after.get("committed", ""),
                after.get("committed", "")[:80])
    else:
        # A kernel without livepatching (Debian's arm64 6.1): the window downloads and verifies the bundle under
        # the unit's hardening, refuses it for this kernel (built for amd64's) and changes nothing.
        j.check("kernel has no livepatching (CONFIG_LIVEPATCH unset)", "CONFIG_LIVEPATCH=y" not in kern.get("config", ""),
                "%s %s: %s" % (kern.get("machine"), kern.get("release"), kern.get("config")))
        j.check("window-refused-the-livepatch", out.get("last_outcome", "").startswith("failed") and
                "kernel" in out.get("last_outcome", ""), "last_outcome=%s" % out.get("last_outcome"))
        j.check("nothing-loaded-nothing-committed", after.get("livepatch") == "none" and "1.0.0" not in after.get("committed", ""),
                "enabled=%s committed=%s" % (after.get("livepatch"), after.get("committed", "")[:60]))
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


def grub_choices(j):
    """{boot: the HIL-GRUB line of that start of QEMU}."""
    out = {}
    for b, _, tag, t in j.blines:
        if tag == "HIL-GRUB":
            out.setdefault(b, t)
    return out


def states(j, boot):
    """The otpatchd states the guest saw in one boot, in order, with their host ms."""
    return [(h, t.split(" ", 1)[1] if " " in t else t) for b, h, tag, t in j.blines if b == boot and tag == "HIL-STATE"]


def last_h(j, boot):
    return max((h for b, h, _, _ in j.blines if b == boot), default=-1)


def qemu_exit(j, boot):
    """When QEMU ended that boot (console.py's "HIL-HOST event=qemu-exit"), else its last line."""
    return next((h for b, h, tag, t in j.blines if b == boot and tag == "HIL-HOST" and t.startswith("event=qemu-exit")),
                last_h(j, boot))


def check_slot(j, f, label, slot, image, good=True):
    """A boot's report: the kernel, RAUC and otpatchctl status agree on the slot; the image it runs."""
    j.check("%s: runs %s (kernel, RAUC, otpatchctl status)" % (label, slot),
            f.get("cmdline_slot") == slot and f.get("rauc_booted") == slot and f.get("status_slot") == slot,
            "rauc.slot=%s RAUC %s status %s" % (f.get("cmdline_slot"), f.get("rauc_booted"), f.get("status_slot")))
    j.check("%s: image %s" % (label, image), f.get("image") == image, "image %s" % f.get("image"))
    if good:
        j.check("%s: %s marked good (RAUC)" % (label, slot), f.get("%s_status" % slot.lower()) == "good",
                "A %s, B %s; grubenv %s" % (f.get("a_status"), f.get("b_status"), f.get("grubenv")))


def env(f):
    """grubenv as RAUC left it, from a report."""
    return dict(kv.split("=", 1) for kv in f.get("grubenv", "").split() if "=" in kv)


def window_on_a(j, facts, after, wb=1):
    """The window of an A/B scenario, on boot `wb` (A): it installs into B and asks logind for the reboot.
    `after` is the first report after it (its audit log)."""
    b1 = first(facts, "boot", n=str(wb))
    check_slot(j, b1, "run %d" % wb, "A", "1.0.0")
    j.check("window-scheduled", first(facts, "window-scheduled").get("rc") == "0",
            first(facts, "window-scheduled").get("id", ""))
    seen = [t for _, t in states(j, wb)]
    j.check("boot %d: window reached applying" % wb, "applying" in seen, " -> ".join(seen))
    # The journal line of the request, when the console got it before the shutdown stopped the script (a figure
    # only: the audit record after the reboot is the proof).
    asked = [f for f in every(facts, "reboot-asked") if f.boot == wb]
    kinds = [k.split("*")[0] for k in after.get("kinds", "").split(",")]
    j.check("audit: reboot-requested recorded", "reboot-requested" in kinds, after.get("kinds", "")[:120])
    j.check("no error reported", not every(facts, "error"), ",".join(f.get("what", "") for f in every(facts, "error")))
    g = grub_choices(j)
    j.check("GRUB boot %d chose B (installed, primary)" % (wb + 1), g.get(wb + 1, "").startswith("slot=B "),
            g.get(wb + 1, "none"))
    fig = {}
    app = next((h for h, t in states(j, wb) if t == "applying"), None)
    arm = next((h for h, t in states(j, wb) if t in ("armed", "arming")), None)
    if arm is not None and app is not None:
        fig["window: armed -> applying (download, verify)"] = app - arm
    down = asked[0].h if asked else None
    if app is not None:
        fig["window: applying -> QEMU exit (RAUC install, logind reboot, shutdown)"] = qemu_exit(j, wb) - app
    if app is not None and down is not None:
        fig["window: applying -> reboot asked (RAUC install)"] = down - app
    if down is not None:
        fig["window: reboot asked -> QEMU exit (shutdown)"] = qemu_exit(j, wb) - down
    return fig, down


def committed_on_b(j, com, label, version):
    """The report after an A/B window committed on B (window_report): B runs, is good and first everywhere."""
    j.check("%s: committed %s" % (label, version), com.get("outcome", "").startswith("committed") and
            version in com.get("outcome", ""), "last_outcome=%s" % com.get("outcome"))
    check_slot(j, com, "after commit", "B", version)
    e = env(com)
    j.check("after commit: grubenv B first, B_OK=1 B_TRY=0", e.get("ORDER", "").startswith("B") and e.get("B_OK") == "1"
            and e.get("B_TRY") == "0", com.get("grubenv"))
    j.check("after commit: RAUC primary is B's slot", com.get("rauc_primary") == "rootfs.1", com.get("rauc_primary"))
    j.check("after commit: %s committed, install record gone" % version, version in com.get("committed_json", "")
            and com.get("install_record") == "0", com.get("committed_json", "")[:80])
    j.check("after commit: audit chain intact", "intact" in com.get("audit", "").lower(), com.get("audit", "")[:90])


def judge_ab_reboot(j, lines, facts):
    boots = every(facts, "boot")
    j.check("eight runs reported", [b.get("n") for b in boots] == [str(i) for i in range(1, 9)],
            ",".join(b.get("n", "?") for b in boots))
    g = grub_choices(j)
    # Three plain reboots before the update: boots 1-4 on A.
    for b in (1, 2, 3):
        f = first(facts, "boot", n=str(b))
        j.check("GRUB boot %d chose A" % b, g.get(b, "").startswith("slot=A "), g.get(b, "none"))
        check_slot(j, f, "before the update, boot %d" % b, "A", "1.0.0")
    j.check("GRUB boot 4 chose A", g.get(4, "").startswith("slot=A "), g.get(4, "none"))
    fig, reb = window_on_a(j, facts, first(facts, "committed", n="5"), wb=4)
    obs = first(facts, "observing", n="5")
    check_slot(j, obs, "observing on B", "B", "2.0.0", good=False)
    e = env(obs)
    j.check("observing: B not yet good (B_TRY=1, RAUC: not good)", e.get("B_TRY") == "1" and obs.get("b_status") != "good",
            "B %s; grubenv %s" % (obs.get("b_status"), obs.get("grubenv")))
    committed_on_b(j, first(facts, "committed", n="5"), "boot 5", "2.0.0")
    # Three plain reboots after it: boots 6-8 on B.
    for b in (6, 7, 8):
        j.check("GRUB boot %d chose B" % b, g.get(b, "").startswith("slot=B "), g.get(b, "none"))
        f = first(facts, "boot", n=str(b))
        check_slot(j, f, "after the update, boot %d" % b, "B", "2.0.0")
    resets = [t for _, _, tag, t in j.blines if tag == "HIL-GRUB" and t.startswith("no bootable slot")]
    j.check("GRUB never ran out of slots", not resets, resets[0] if resets else "")
    o2 = next((h for h, t in states(j, 5) if t == "observing"), None)
    c2 = next((h for h, t in states(j, 5) if t in ("closed", "idle")), None)
    if 5 in g:
        fig["boot 5: QEMU start -> GRUB chose B"] = next(h for b, h, tag, _ in j.blines if b == 5 and tag == "HIL-GRUB")
    if o2 is not None:
        fig["boot 5: QEMU start -> observing seen on B"] = o2
        if reb is not None:
            fig["reboot asked -> observing on B (shutdown, QEMU cold start, boot)"] = qemu_exit(j, 4) - reb + o2
    if o2 is not None and c2 is not None:
        fig["boot 5: observing -> committed (observation 30 s)"] = c2 - o2
    return fig


def judge_rollback(j, facts, run, why):
    """The report on A after a rollback (run `run` of the scenario): recorded, B bad, A good."""
    rb = first(facts, "rolled-back", n=str(run))
    check_slot(j, rb, "after rollback", "A", "1.0.0")
    j.check("rollback recorded: %s" % why, rb.get("outcome", "").startswith("rolled-back") and why in rb.get("outcome", ""),
            "last_outcome=%s" % rb.get("outcome"))
    j.check("after rollback: B marked bad", rb.get("b_status") == "bad", "B %s" % rb.get("b_status"))
    e = env(rb)
    j.check("after rollback: grubenv A first and good, B not bootable",
            e.get("ORDER", "").startswith("A") and e.get("A_OK") == "1" and e.get("A_TRY") == "0" and e.get("B_OK") == "0",
            rb.get("grubenv"))
    j.check("after rollback: install record gone", rb.get("install_record") == "0")
    j.check("after rollback: audit chain intact", "intact" in rb.get("audit", "").lower(), rb.get("audit", "")[:90])
    resets = [t for _, _, tag, t in j.blines if tag == "HIL-GRUB" and t.startswith("no bootable slot")]
    j.check("GRUB never ran out of slots", not resets, resets[0] if resets else "")


def judge_ab_health(j, lines, facts):
    fig, _ = window_on_a(j, facts, first(facts, "rolled-back", n="3"))
    obs = first(facts, "observing", n="2")
    check_slot(j, obs, "observing on B", "B", "2.0.0", good=False)
    inj = [(b, h, t) for b, h, tag, t in j.blines if tag == "HIL-HOST" and t.startswith("event=inject")]
    j.check("host broke the PLC during the observation on B", inj and inj[0][0] == 2 and 'reply="ok"' in inj[0][2],
            inj[0][2][:90] if inj else "no injection")
    seen = [t for _, t in states(j, 2)]
    # The 0.3 s state poll may miss `rolling-back` when the reboot back follows at once: then the rollback's record
    # on A (judge_rollback) is the proof that it began on B.
    rb3 = first(facts, "rolled-back", n="3").get("outcome", "")
    j.check("boot 2: observing -> rolling-back", "observing" in seen and ("rolling-back" in seen or
            rb3.startswith("rolled-back: health")), " -> ".join(seen) + ("" if "rolling-back" in seen else " (record: %s)" % rb3[:60]))
    g = grub_choices(j)
    j.check("GRUB boot 3 chose A (B marked bad)", g.get(3, "").startswith("slot=A "), g.get(3, "none"))
    judge_rollback(j, facts, 3, "health")
    if inj:
        rb = next((h for h, t in states(j, 2) if t == "rolling-back"), None)
        if rb is not None:
            fig["boot 2: PLC broken -> rolling-back"] = rb - inj[0][1]
    return fig


def judge_ab_panic(j, lines, facts):
    fig, _ = window_on_a(j, facts, first(facts, "rolled-back", n="2"))
    g = grub_choices(j)
    j.check("boot 2 (B) ran no scenario", not [f for f in facts if f.boot == 2], "")
    j.check("GRUB boot 3: B's try used, A chosen", g.get(3, "").startswith("slot=A ") and "B_TRY=1" in g.get(3, ""),
            g.get(3, "none"))
    j.check("GRUB boot 3: both slots in TRY state until one is marked good", "A_TRY=1" in g.get(3, "")
            and "B_TRY=1" in g.get(3, ""), g.get(3, "none"))
    judge_rollback(j, facts, 2, "came back on slot A, which runs image 1.0.0, not the updated 2.0.0")
    return fig


def judge_powercut(j, lines, facts):
    """A power cut at j.cut_at on path j.path (lp, ab): the window ended consistently after the next boot."""
    path, state = j.path, j.cut_at
    cuts = [(b, h, t) for b, h, tag, t in j.blines if tag == "HIL-HOST" and t.startswith("event=power-cut")]
    j.check("power cut at %s" % state, len(cuts) == 1, cuts[0][2][:110] if cuts else "the state was never reported")
    cut_boot = cuts[0][0] if cuts else 0
    fin = next((f for f in facts if f.topic == "final" and f.boot > cut_boot), Fact("final", -1, ""))
    slots = next((f for f in facts if f.topic == "final-slots" and f.boot > cut_boot), Fact("final-slots", -1, ""))
    j.check("booted again and reported", fin.h >= 0, "boot %d" % fin.boot if fin.h >= 0 else "no report after the cut")
    outcome = fin.get("outcome", "")
    j.check("window over, outcome recorded", fin.get("state") in ("closed", "idle") and outcome != "",
            "%s: %s" % (fin.get("state"), outcome))
    j.check("segmentation lifted", fin.get("seg_active") == "false" and "otpatch" not in fin.get("tables", "x"),
            "segmentation_active=%s tables: %s" % (fin.get("seg_active"), fin.get("tables")))
    j.check("applied at most once", num(fin.get("applying")) <= 1,
            "transitions to applying %s" % fin.get("applying"))
    # A commit is recorded at least once when the window committed (a cut right after `committed` was journaled
    # records it again on recovery, by design: the first record may not have been written), never otherwise.
    j.check("commit recorded if and only if committed", (num(fin.get("commits")) >= 1) == outcome.startswith("committed"),
            "commit records %s, outcome %s" % (fin.get("commits"), outcome[:40]))
    j.check("audit chain intact", "intact" in fin.get("audit", "").lower(), fin.get("audit", "")[:100])
    committed = outcome.startswith("committed")
    j.check("install record settled", fin.get("install_record") == "0")
    if path == "lp":
        lps = [x for x in fin.get("livepatches", "").split(",") if x]
        j.check("livepatch loaded once if committed, else not at all",
                (lps == ["otpatch_lp_cmdline"] and num(fin.get("modules")) == 1) if committed else
                (not lps and num(fin.get("modules")) == 0), "outcome %s; livepatches %s, modules %s" %
                (outcome[:40], lps, fin.get("modules")))
        j.check("committed record matches the outcome", ("1.0.0" in fin.get("committed_json", "")) == committed,
                fin.get("committed_json", "")[:80])
        # The boot that recovered the window still marks the slot it runs good: with RAUC's GRUB scheme an unmarked
        # slot has used its one try, and the next plain reboot would find nothing to boot.
        check_slot(j, slots, "after the cut", "A", "1.0.0")
    else:
        slot, image = ("B", "2.0.0") if committed else ("A", "1.0.0")
        check_slot(j, slots, "after the cut (%s)" % ("committed" if committed else "not committed"), slot, image)
        e = env(slots)
        j.check("grubenv: the running slot first, OK, no try pending",
                e.get("ORDER", "").startswith(slot) and e.get("%s_OK" % slot) == "1" and e.get("%s_TRY" % slot) == "0",
                slots.get("grubenv"))
        if not committed:
            j.check("B not bootable", slots.get("b_status") != "good" and e.get("B_OK") == "0", "B %s" % slots.get("b_status"))
    matrix = os.environ.get("HIL_MATRIX")
    if matrix:
        with open(matrix, "a") as m:
            # The state the journal held when the power went (the audit's recovery record): the cut lands a
            # fraction of a second after the watch saw the state, sometimes after the next one was journaled.
            m.write("  %-3s %-13s -> %-50s journal: %-13s %s\n" % (path, state, (outcome or "(none)")[:50],
                                                                 fin.get("recovered_from") or "-",
                                                                 "PASS" if j.passed() else "FAIL"))
    fig = {}
    if cuts:
        # Recovery: from the machine's start after the cut to the report that the window is over.
        fig["power cut -> QEMU start -> window over, reported (boot %d)" % fin.boot] = fin.h
    return fig


def judge_months(j, lines, facts):
    """A gateway's months (scenario 6): v1 committed, v2 rolled back with v1 kept, a power cut, v1 re-applied
    before READY, the clock past v1's expiry and v1 still re-applied, an A/B update to a newer kernel that v1
    does not fit: nothing loaded by force, status says so; committed with v1 kept beside it, then back on A
    (its old kernel) v1 is re-applied before READY."""
    lp = "otpatch_lp_cmdline"
    boots = every(facts, "boot")
    j.check("five runs reported", [b.get("n") for b in boots] == ["1", "2", "3", "4", "5"],
            ",".join(b.get("n", "?") for b in boots))
    v1 = first(facts, "v1", n="1")
    j.check("run 1: v1 committed", v1.get("outcome", "").startswith("committed") and "1.0.0" in v1.get("outcome", ""),
            "last_outcome=%s" % v1.get("outcome"))
    j.check("run 1: v1 loaded (sysfs, marker)", v1.get("livepatches") == lp and v1.get("marker") == "otpatch.livepatch=v1",
            "livepatches %s, %s" % (v1.get("livepatches"), v1.get("marker")))
    sf = first(facts, "serve-from", dir="image-months-v2")
    j.check("run 1: the site points the gateway at v2", sf.get("rc") == "0", "%s %s" % (sf.get("url"), sf.get("msg")))
    inj = [(b, t) for b, _, tag, t in j.blines if tag == "HIL-HOST" and t.startswith("event=inject")]
    broke = [t for b, t in inj if b == 1 and "u16 0\"" in t]
    j.check("run 1: host broke the PLC while v2 was observed", broke and 'reply="ok"' in broke[0],
            broke[0][:90] if broke else "no injection")
    seen = [t for _, t in states(j, 1)]
    j.check("run 1: v2 observed, then rolled back", "observing" in seen and "rolling-back" in seen, " -> ".join(seen))
    v2 = first(facts, "v2", n="1")
    j.check("run 1: v2 rolled back for health", v2.get("outcome", "").startswith("rolled-back") and
            "health" in v2.get("outcome", ""), "last_outcome=%s" % v2.get("outcome"))
    j.check("run 1: v1 active again, v2 gone", v2.get("livepatches") == lp and v2.get("marker") == "otpatch.livepatch=v1"
            and v2.get("modules") == "1", "livepatches %s, %s, modules %s" % (v2.get("livepatches"), v2.get("marker"),
                                                                            v2.get("modules")))
    j.check("run 1: committed.json still v1, not v2", "1.0.0" in v2.get("committed_json", "") and
            "1.1.0" not in v2.get("committed_json", ""), v2.get("committed_json", "")[:90])
    cuts = [(b, t) for b, _, tag, t in j.blines if tag == "HIL-HOST" and t.startswith("event=power-cut")]
    j.check("run 1: the power was cut", len(cuts) == 1 and cuts[0][0] == 1, cuts[0][1][:90] if cuts else "no cut")

    def reapplied_before_ready(run, label):
        r = first(facts, "reapply", n=str(run))
        try:
            line_us = int(float(r.get("line_s", "")) * 1e6)
        except ValueError:
            line_us = -1
        ready = num(r.get("ready_us"))
        j.check("%s: v1 re-applied before READY" % label, "re-applied at start" in r.get("msg", "") and
                0 < line_us <= ready, "re-applied at %.3f s, READY at %.3f s" % (line_us / 1e6, ready / 1e6))
        return r

    reapplied_before_ready(2, "run 2 (after the cut)")
    ac = first(facts, "after-cut", n="2")
    j.check("run 2: v1 loaded, nothing missing", ac.get("livepatches") == lp and ac.get("marker") == "otpatch.livepatch=v1"
            and ac.get("modules") == "1" and "[]" in ac.get("not_in_place", ""),
            "livepatches %s, %s, %s" % (ac.get("livepatches"), ac.get("marker"), ac.get("not_in_place")))
    j.check("run 2: audit chain intact after the cut", "intact" in ac.get("audit", "").lower(), ac.get("audit", "")[:90])
    check_slot(j, first(facts, "boot", n="2"), "run 2", "A", "1.0.0")

    # run.sh notes the clock before it starts that boot's QEMU: the line names the boot it is for.
    ahead = [t for _, tag, t in lines if tag == "HIL-HOST" and t.startswith("event=clock-ahead ") and
             Fact("", 0, t).get("boot") == "3"]
    ca = first(facts, "clock-ahead", n="3")
    # v1's manifest expires an hour after the host made it, before it wrote HOST_EPOCH.
    past = num(ca.get("clock")) - num(ca.get("host_epoch"))
    j.check("run 3: the clock is past v1's manifest expiry", ahead and num(ca.get("host_epoch")) > 0 and past > 3600 + 60,
            "guest clock %d s past the host's start of the run (v1 expires at +3600 s)" % past)
    reapplied_before_ready(3, "run 3 (clock past expiry)")
    j.check("run 3: v1 still loaded", ca.get("livepatches") == lp and ca.get("marker") == "otpatch.livepatch=v1",
            "livepatches %s, %s" % (ca.get("livepatches"), ca.get("marker")))

    fig, reb = window_on_a(j, facts, first(facts, "committed", n="4"), wb=3)
    obs = first(facts, "observing", n="4")
    check_slot(j, obs, "observing on B", "B", "3.0.0", good=False)
    nk = first(facts, "new-kernel", n="4")
    j.check("run 4: the newer kernel runs", nk.get("kernel", "").startswith("6.12") and
            nk.get("kernel") != first(facts, "v1", n="1").get("kernel"), "uname -r %s (was %s)" %
            (nk.get("kernel"), v1.get("kernel")))
    j.check("run 4: nothing loaded by force", nk.get("livepatches") == "" and nk.get("modules") == "0",
            "livepatches '%s', modules %s" % (nk.get("livepatches"), nk.get("modules")))
    j.check("run 4: status says v1 does not fit", "1.0.0" in nk.get("not_in_place", "") and
            "kernel" in nk.get("not_in_place", ""), nk.get("not_in_place", "")[:120])
    r4 = first(facts, "reapply", n="4")
    j.check("run 4: the journal says it could not re-apply", "could not re-apply" in r4.get("msg", ""),
            r4.get("msg", "")[:110])
    j.check("run 4: audit records the failed re-apply", "boot-reapply-failed" in nk.get("kinds", ""),
            nk.get("kinds", "")[-120:])
    committed_on_b(j, first(facts, "committed", n="4"), "run 4", "3.0.0")
    c4 = first(facts, "committed", n="4").get("committed_json", "")
    # (reports carry JSON without its quotes: see q in guest/lib.sh)
    kinds4 = c4[c4.find("kinds"):]
    j.check("run 4: committed.json keeps v1 beside 3.0.0",
            re.search(r"livepatch\s*:\s*\{\s*version\s*:\s*1\.0\.0\b", kinds4) is not None and
            re.search(r"\bab\s*:\s*\{\s*version\s*:\s*3\.0\.0\b", kinds4) is not None, kinds4[:160])
    ma = first(facts, "mark-active", n="4")
    j.check("run 4: the site switches back to slot A", ma.get("rc") == "0", ma.get("msg", "")[:100])
    check_slot(j, first(facts, "boot", n="5"), "run 5", "A", "1.0.0")
    reapplied_before_ready(5, "run 5 (back on A)")
    ba = first(facts, "back-on-a", n="5")
    j.check("run 5: A's kernel, v1 loaded, nothing missing", ba.get("kernel") == v1.get("kernel") and
            ba.get("livepatches") == lp and ba.get("marker") == "otpatch.livepatch=v1" and ba.get("modules") == "1"
            and "[]" in ba.get("not_in_place", ""), "uname -r %s, livepatches %s, %s, %s" % (
                ba.get("kernel"), ba.get("livepatches"), ba.get("marker"), ba.get("not_in_place")))
    since_commit = ba.get("kinds", "").split(",commit")[-1]
    j.check("run 5: audit records the re-apply", re.search(r"(^|,)boot-reapply(\*\d+)?(,|$)", since_commit) is not None,
            since_commit[-120:])
    j.check("run 5: audit chain intact", "intact" in ba.get("audit", "").lower(), ba.get("audit", "")[:90])
    resets = [t for _, _, tag, t in j.blines if tag == "HIL-GRUB" and t.startswith("no bootable slot")]
    j.check("GRUB never ran out of slots", not resets, resets[0] if resets else "")
    if ac.h >= 0:
        fig["power cut -> QEMU start -> v1 back and reported (run 2)"] = ac.h
    r2 = first(facts, "reapply", n="2")
    try:
        fig["run 2: v1 re-applied -> READY"] = (num(r2.get("ready_us")) - int(float(r2.get("line_s", "")) * 1e6)) // 1000
    except ValueError:
        pass
    o4 = next((h for h, t in states(j, 4) if t == "observing"), None)
    if o4 is not None and reb is not None:
        fig["reboot asked -> observing on B, newer kernel"] = qemu_exit(j, 3) - reb + o4
    return fig


JUDGES = {"months": judge_months, "systemd": judge_systemd, "ab-reboot": judge_ab_reboot,
          "ab-health": judge_ab_health, "ab-panic": judge_ab_panic,
          "lp-powercut": judge_powercut, "ab-powercut": judge_powercut}


def main():
    if len(sys.argv) != 4:
        sys.stderr.write("usage: judge.py SCENARIO LOG QEMU_RC\n")
        return 2
    scenario, path, qemu_rc = sys.argv[1], sys.argv[2], sys.argv[3]
    lines, facts, blines = parse(path)
    j = Judge(scenario)
    j.blines = blines
    # NAME@STATE: a power-cut run of NAME (lp-powercut, ab-powercut) at STATE.
    scenario, _, j.cut_at = scenario.partition("@")
    j.path = scenario.split("-", 1)[0]
    end = next((t for _, tag, t in reversed(lines) if tag == "HIL-END"), None)
    j.check("qemu-exited-by-poweroff", qemu_rc == "0", "qemu exit %s%s" % (qemu_rc, " (timed out)" if qemu_rc == "124" else ""))
    j.check("scenario-ran-to-its-end", end is not None and end.startswith("rc=0"), end or "no HIL-END line")
    fig = JUDGES[scenario](j, lines, facts)
    print("    timeline (boot, host ms since that start of QEMU):")
    for b, h, tag, text in blines:
        if tag in ("HIL-GRUB", "HIL-WATCH", "HIL-STATE", "HIL-END", "HIL-HOST", "HIL-ASK") or (
                tag == "HIL-FACT" and text.split(" ", 1)[0] in
                ("runner", "unit", "window-scheduled", "stopped", "watchdog-sample", "after-restart", "boot",
                 "observing", "committed", "rolled-back", "reboot", "error", "v1", "v2", "after-cut", "reapply",
                 "clock-ahead", "new-kernel", "serve-from", "mark-active", "back-on-a")):
            print("    b%d %8d  %-11s %s" % (b, h, tag[4:].lower(), text[:150]))
    print("    figures:")
    for k, v in fig.items():
        print("      %-64s %d ms" % (k, v))
    n = len(j.results)
    failed = sum(1 for _, ok in j.results if not ok)
    print("    %s: %d checks, %d failed" % (scenario, n, failed))
    return 0 if j.passed() else 1


if __name__ == "__main__":
    sys.exit(main())
