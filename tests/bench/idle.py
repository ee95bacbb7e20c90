#!/usr/bin/env python3
"""Idle cost of otpatchd: start-up time to READY=1 (sd_notify), resident memory and CPU while idle.

Runs the release build of otpatchd (production features only) on a private system bus with a policy of
10 Modbus probes and 4 recurring windows, none of them open. Prints the figures; asserts nothing.

    cargo build --release -p otpatchd && python3 tests/bench/idle.py [--runs 10] [--idle 30]
"""
import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))


def policy():
    p = [
        '[gateway]\nid = "bench-gw"\ncompatible = "bench"\n',
        '[trust]\nanchors = ["/etc/otpatch/trust/ca.pem"]\n',
        '[limits]\nmax_window = "2h"\n',
    ]
    for i, day in enumerate(["mon", "tue", "wed", "thu"]):
        p.append(f'[window.w{i}]\ndays = ["{day}"]\nstart = "03:00"\nduration = "90m"\ntimezone = "Europe/Berlin"\n')
    for i in range(10):
        p.append(f'[probe.p{i}]\ntcp = "127.0.0.1:{5020 + i}"\naddress = {i}\nmin = 0\nmax = 100\ninterval = "100ms"\n')
    return "\n".join(p)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10, help="start-ups to time")
    ap.add_argument("--idle", type=float, default=30.0, help="seconds of idle to measure CPU over")
    args = ap.parse_args()
    exe = os.path.join(REPO, "target", "release", "otpatchd")
    if not os.path.exists(exe):
        sys.exit("build first: cargo build --release -p otpatchd")
    work = tempfile.mkdtemp()
    os.chmod(work, 0o755)
    procs = []
    try:
        sock = os.path.join(work, "bus.sock")
        conf = os.path.join(work, "bus.conf")
        with open(conf, "w") as f:
            f.write(f"""<busconfig><type>system</type><listen>unix:path={sock}</listen><auth>EXTERNAL</auth>
<policy context="default"><allow user="*"/><allow own="*"/><allow send_destination="*"/>
<allow receive_type="method_call"/><allow receive_type="method_return"/><allow receive_type="error"/>
<allow receive_type="signal"/></policy></busconfig>""")
        procs.append(subprocess.Popen(["dbus-daemon", f"--config-file={conf}", "--nofork", "--nopidfile"]))
        for _ in range(200):
            if os.path.exists(sock):
                break
            time.sleep(0.02)
        root = os.path.join(work, "root")
        os.makedirs(os.path.join(root, "etc/otpatch/trust"))
        with open(os.path.join(root, "etc/otpatch/policy.toml"), "w") as f:
            f.write(policy())
        with open(os.path.join(root, "etc/otpatch/trust/ca.pem"), "w") as f:
            f.write("placeholder\n")
        notify_path = os.path.join(work, "notify.sock")
        ns = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        ns.bind(notify_path)
        ns.settimeout(20)
        env = dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS=f"unix:path={sock}", NOTIFY_SOCKET=notify_path,
                   OTPATCH_LOG="warn")
        ready_ms = []
        proc = None
        for run in range(args.runs):
            shutil.rmtree(os.path.join(root, "var"), ignore_errors=True)
            t0 = time.monotonic()
            proc = subprocess.Popen([exe, "--root", root, "--log", "text"], env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            while True:
                msg = ns.recv(4096).decode()
                if "READY=1" in msg:
                    ready_ms.append((time.monotonic() - t0) * 1000)
                    break
            if run < args.runs - 1:
                proc.terminate()
                proc.wait(10)
        procs.append(proc)
        time.sleep(2)
        tick = os.sysconf("SC_CLK_TCK")

        def cpu_ticks():
            with open(f"/proc/{proc.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return int(fields[11]) + int(fields[12])

        c0, w0 = cpu_ticks(), time.monotonic()
        time.sleep(args.idle)
        c1, w1 = cpu_ticks(), time.monotonic()
        status = {}
        with open(f"/proc/{proc.pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                status[k] = v.strip()
        print(f"otpatchd idle benchmark ({args.runs} start-ups, {args.idle:.0f} s idle; 10 probes, 4 windows)")
        print(f"  start to READY=1   median {statistics.median(ready_ms):7.1f} ms   min {min(ready_ms):6.1f} ms   max {max(ready_ms):6.1f} ms")
        print(f"  idle RSS           {status['VmRSS']}   (peak {status['VmHWM']})")
        print(f"  idle CPU           {(c1 - c0) / tick:.3f} s over {w1 - w0:.1f} s  = {100.0 * (c1 - c0) / tick / (w1 - w0):.3f} %")
        print(f"  threads            {status['Threads']}")
    finally:
        for p in reversed(procs):
            if p and p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
