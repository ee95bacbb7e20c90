#!/usr/bin/env python3
"""Unprivileged readers never stall a window; D-Bus keeps answering while a large bundle is verified.

Two measurements on a private system bus, with the debug build that tests/run.sh makes (fake backends, and
OTPATCH_REAL_AB=1 so that the real bundle verifier runs):

  verify  GetStatus round trips (dbus-send, every 50 ms) while otpatchd verifies a signed bundle of SIZE MiB
          (signature, manifest, a SHA-256 of every payload byte): latency during the verification against the
          same client's latency while the daemon is idle.
  flood   the same window twice: alone, then with READERS GetStatus and GetAuditLog calls made as uid nobody
          (65534) from 4 client threads while it runs. The window's timeline (scheduled -> closed, from the audit
          log's transition records) is compared.

Prints figures; asserts nothing.

    cargo build --workspace --bins --features otpatchd/fake-backends,otpatchd/failpoints
    python3 tests/bench/readers.py [--size-mib 1024] [--readers 1000]
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
DEBUG = os.path.join(REPO, "target", "debug")
DEST = "io.otpatch.Daemon1"
PATH = "/io/otpatch/Daemon1"


def sh(args, **kw):
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)


def call(env, method, *args, uid=None):
    """One method call with dbus-send; returns (seconds, ok)."""
    argv = ["dbus-send", "--system", "--print-reply", f"--dest={DEST}", PATH, f"{DEST}.{method}", *args]
    if uid is not None:
        argv = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *argv]
    t0 = time.monotonic()
    r = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)
    return time.monotonic() - t0, r.returncode == 0


def status(env):
    out = subprocess.run(["dbus-send", "--system", "--print-reply=literal", f"--dest={DEST}", PATH,
                          f"{DEST}.GetStatus"], env=env, capture_output=True, text=True, timeout=30).stdout
    try:
        return json.loads(out.strip())
    except ValueError:
        return {}


def transitions(root):
    """(state, unix time) of the audit log's transition records."""
    out = []
    with open(os.path.join(root, "var/lib/otpatch/audit.log")) as f:
        for line in f:
            r = json.loads(line)
            if r.get("kind") == "transition":
                t = r["time"]
                out.append((r["detail"]["to"], t))
    return out


def iso_seconds(t):
    from datetime import datetime
    return datetime.fromisoformat(t.replace("Z", "+00:00")[:26] + "+00:00").timestamp() if "." in t else \
        datetime.fromisoformat(t.replace("Z", "+00:00")).timestamp()


class Bench:
    def __init__(self):
        self.work = tempfile.mkdtemp()
        os.chmod(self.work, 0o755)
        self.procs = []
        sock = os.path.join(self.work, "bus.sock")
        conf = os.path.join(self.work, "bus.conf")
        with open(conf, "w") as f:
            f.write(f"""<busconfig><type>system</type><listen>unix:path={sock}</listen><auth>EXTERNAL</auth>
<policy context="default"><allow user="*"/><allow own="*"/><allow send_destination="*"/>
<allow receive_type="method_call"/><allow receive_type="method_return"/><allow receive_type="error"/>
<allow receive_type="signal"/></policy></busconfig>""")
        self.procs.append(subprocess.Popen(["dbus-daemon", f"--config-file={conf}", "--nofork", "--nopidfile"]))
        for _ in range(250):
            if os.path.exists(sock):
                break
            time.sleep(0.02)
        os.chmod(sock, 0o777)
        self.env = dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS=f"unix:path={sock}", OTPATCH_LOG="warn")

    def gateway(self, name, policy, anchors=None):
        root = os.path.join(self.work, name)
        os.makedirs(os.path.join(root, "etc/otpatch/trust"))
        with open(os.path.join(root, "etc/otpatch/policy.toml"), "w") as f:
            f.write(policy)
        if anchors:
            shutil.copy(anchors, os.path.join(root, "etc/otpatch/trust/ca.pem"))
        else:
            with open(os.path.join(root, "etc/otpatch/trust/ca.pem"), "w") as f:
                f.write("placeholder\n")
        with open(os.path.join(root, "etc/group"), "w") as f:
            f.write("root:x:0:\notpatch:x:977:\nnogroup:x:65534:\n")
        return root

    def daemon(self, root, script, extra_env=None):
        env = dict(self.env, OTPATCH_FAKE_SCRIPT=script, **(extra_env or {}))
        p = subprocess.Popen([os.path.join(DEBUG, "otpatchd"), "--root", root, "--backends", "fake", "--log", "text"],
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(500):
            if call(self.env, "GetStatus")[1]:
                return p
            time.sleep(0.02)
        p.kill()
        sys.exit("otpatchd did not come on the bus")

    def schedule(self, secs_from_now, duration="10m"):
        start = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(time.time()) + secs_from_now))
        sh(["dbus-send", "--system", "--print-reply", f"--dest={DEST}", PATH, f"{DEST}.ScheduleWindow",
            f"string:{start}", f"string:{duration}", "string:UTC", "boolean:true"], env=self.env)

    def wait_closed(self, limit=600):
        t0 = time.monotonic()
        while time.monotonic() - t0 < limit:
            s = status(self.env)
            if s.get("last_outcome"):
                return s["last_outcome"]
            time.sleep(0.1)
        return "(not closed)"

    def close(self):
        for p in self.procs:
            p.kill()
            p.wait()
        shutil.rmtree(self.work, ignore_errors=True)


POLICY = """[gateway]
id = "bench-gw"
compatible = "bench"
[trust]
anchors = ["/etc/otpatch/trust/ca.pem"]
[rollback]
observation = "3s"
"""


def pki(d):
    o = lambda *a: sh(["openssl", *a], cwd=d)
    o("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "ca.key")
    o("req", "-x509", "-new", "-key", "ca.key", "-out", "ca.pem", "-days", "3", "-subj", "/CN=bench root",
      "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    o("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "signer.key")
    o("req", "-new", "-key", "signer.key", "-out", "signer.csr", "-subj", "/CN=bench signer")
    with open(os.path.join(d, "signer.ext"), "w") as f:
        f.write("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=codeSigning\n")
    o("x509", "-req", "-in", "signer.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-set_serial", "7", "-days", "3",
      "-extfile", "signer.ext", "-out", "signer.pem")


def verify_bench(b, size_mib):
    d = os.path.join(b.work, "pki")
    os.makedirs(d)
    pki(d)
    payload = os.path.join(b.work, "payload.bin")
    with open(payload, "wb") as f:
        chunk = os.urandom(1 << 20)
        for _ in range(size_mib):
            f.write(chunk)
    bundle = os.path.join(b.work, "big.otb")
    sh([os.path.join(DEBUG, "otpatchctl"), "bundle", "create", "--kind", "app", "--compatible", "bench",
        "--version", "1.0.0", "--payload", payload, "--signer-cert", os.path.join(d, "signer.pem"),
        "--signer-key", os.path.join(d, "signer.key"), "--out", bundle])
    os.remove(payload)
    root = b.gateway("verify", POLICY.replace('compatible = "bench"', 'compatible = "bench"'),
                     anchors=os.path.join(d, "ca.pem"))
    p = b.daemon(root, f"bundle={bundle}", {"OTPATCH_REAL_AB": "1"})
    idle = [call(b.env, "GetStatus")[0] for _ in range(40)]
    b.schedule(2)
    during, seen = [], False
    t_end = time.monotonic() + 900
    while time.monotonic() < t_end:
        s = status(b.env)
        if s.get("state") == "fetched":
            seen = True
            during.append(call(b.env, "GetStatus")[0])
            time.sleep(0.05)
        elif seen or s.get("last_outcome"):
            break
        else:
            time.sleep(0.01)
    outcome = b.wait_closed()
    p.kill()
    p.wait()
    ms = lambda v: f"median {statistics.median(v) * 1000:.1f} ms, max {max(v) * 1000:.1f} ms"
    print(f"verify: {size_mib} MiB bundle, window outcome: {outcome}")
    print(f"  GetStatus idle:                  {ms(idle)} ({len(idle)} calls)")
    if during:
        print(f"  GetStatus during verification:   {ms(during)} ({len(during)} calls)")
        print(f"  ratio of medians during/idle:    {statistics.median(during) / statistics.median(idle):.2f}")
    else:
        print("  (the verification ended before a call could be made during it)")


def window_seconds(root):
    tr = transitions(root)
    start = next(iso_seconds(t) for s, t in tr if s == "arming")
    end = [iso_seconds(t) for s, t in tr if s == "closed"][-1]
    return end - start


def flood_bench(b, readers):
    script = "delay=500ms"
    results = {}
    for label in ["alone", "flood"]:
        root = b.gateway(f"flood-{label}", POLICY)
        p = b.daemon(root, script)
        b.schedule(2)
        stop = threading.Event()
        lat, refused = [], [0]

        def reader(n):
            for i in range(n):
                if stop.is_set():
                    return
                method = ("GetStatus",) if i % 4 else ("GetAuditLog", "uint64:0", "uint32:10000")
                dt, ok = call(b.env, *method, uid=65534)
                lat.append(dt)
                if not ok:
                    refused[0] += 1

        threads = []
        if label == "flood":
            threads = [threading.Thread(target=reader, args=(readers // 4,)) for _ in range(4)]
            for t in threads:
                t.start()
        outcome = b.wait_closed()
        stop.set()
        for t in threads:
            t.join()
        p.kill()
        p.wait()
        results[label] = (window_seconds(root), outcome, len(lat), refused[0], lat)
    alone, flood = results["alone"], results["flood"]
    print(f"flood: {readers} reads (3/4 GetStatus, 1/4 GetAuditLog) as uid nobody during a window")
    print(f"  window alone:      {alone[0]:.2f} s  ({alone[1]})")
    print(f"  window with reads: {flood[0]:.2f} s  ({flood[1]}); {flood[2]} reads made, {flood[3]} refused")
    if flood[4]:
        print(f"  read latency:      median {statistics.median(flood[4]) * 1000:.1f} ms, "
              f"max {max(flood[4]) * 1000:.1f} ms")
    print(f"  ratio window with reads / alone: {flood[0] / alone[0]:.3f}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--readers", type=int, default=1000)
    args = ap.parse_args()
    if not os.path.exists(os.path.join(DEBUG, "otpatchd")):
        sys.exit("build first: cargo build --workspace --bins --features otpatchd/fake-backends,otpatchd/failpoints")
    b = Bench()
    try:
        verify_bench(b, args.size_mib)
        flood_bench(b, args.readers)
    finally:
        b.close()


if __name__ == "__main__":
    main()
