"""Consistency of meta-otpatch with the workspace it packages.

BitBake cannot run on the machines that run these checks, so this test reads both sides as text: what the
workspace builds (Cargo manifests, Cargo.lock, daemon/dist, the CLI definition, policies) and what the
recipes, classes, fragments and kas files say. A rename on either side that the other does not follow fails
here instead of in a BSP team's build weeks later.
"""

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
import unittest

YOCTO = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
WS = os.path.normpath(os.path.join(YOCTO, ".."))
LAYER = os.path.join(YOCTO, "meta-otpatch")
RECIPES = os.path.join(LAYER, "recipes-otpatch", "otpatch")
SITE = os.path.join(LAYER, "recipes-otpatch", "otpatch-site-config")
KERNEL = os.path.join(LAYER, "recipes-kernel")


def read(*parts):
    with open(os.path.join(*parts), encoding="utf-8") as f:
        return f.read()


def toml(*parts):
    with open(os.path.join(*parts), "rb") as f:
        return tomllib.load(f)


_ASSIGN = re.compile(r'^([A-Za-z0-9_\-]+(?:\[[^\]]+\])?(?::[A-Za-z0-9_\-${}.]+)*)\s*(\?\?=|\?=|:=|\+=|=\+|\.=|=)\s*"(.*)"\s*$')


def bb_vars(text):
    """name -> list of (operator, value) of the plain assignments of a BitBake file (continuations joined)."""
    joined = re.sub(r"\\\n", " ", text)
    out = {}
    for line in joined.splitlines():
        m = _ASSIGN.match(line.strip())
        if m:
            out.setdefault(m.group(1), []).append((m.group(2), " ".join(m.group(3).split())))
    return out


def bb_value(text, name):
    """Concatenation of every assignment to name (enough for the += style the layer uses)."""
    return " ".join(v for _, v in bb_vars(text).get(name, []))


def cargo_bins(manifest_dir):
    data = toml(WS, manifest_dir, "Cargo.toml")
    return data["package"]["name"], [b["name"] for b in data.get("bin", [])]


class WorkspaceBuild(unittest.TestCase):
    """The recipes build and install exactly the workspace's programs."""

    @classmethod
    def setUpClass(cls):
        cls.inc = read(RECIPES, "otpatch.inc")
        cls.target = read(RECIPES, "otpatch_git.bb")
        cls.native = read(RECIPES, "otpatchctl-native_git.bb")
        cls.workspace = toml(WS, "Cargo.toml")

    def packages_flag(self, text):
        return re.findall(r"-p\s+([A-Za-z0-9_\-]+)", text)

    def test_target_builds_daemon_and_ctl_only(self):
        daemon_pkg, daemon_bins = cargo_bins("daemon")
        ctl_pkg, ctl_bins = cargo_bins("ctl")
        self.assertEqual(daemon_bins, ["otpatchd"], "daemon/Cargo.toml [[bin]] changed: update the recipe")
        self.assertEqual(ctl_bins, ["otpatchctl"], "ctl/Cargo.toml [[bin]] changed: update the recipe")
        selected = self.packages_flag(bb_value(self.inc, "OTPATCH_CARGO_PACKAGES"))
        self.assertEqual(sorted(selected), sorted([daemon_pkg, ctl_pkg]),
                         "otpatch.inc must build exactly -p %s -p %s" % (daemon_pkg, ctl_pkg))
        self.assertIn("CARGO_BUILD_FLAGS:append", self.inc)
        self.assertIn("${OTPATCH_CARGO_PACKAGES}", bb_value(self.inc, "CARGO_BUILD_FLAGS:append"))

    def test_native_builds_ctl_only(self):
        ctl_pkg, _ = cargo_bins("ctl")
        self.assertEqual(self.packages_flag(bb_value(self.native, "OTPATCH_CARGO_PACKAGES")), [ctl_pkg])
        self.assertIn("DEPENDS", bb_vars(self.target))
        self.assertIn("otpatchctl-native", bb_value(self.target, "DEPENDS"))

    def test_test_members_and_features_stay_out(self):
        members = self.workspace["workspace"]["members"]
        shipped = {cargo_bins("daemon")[0], cargo_bins("ctl")[0]}
        for member in members:
            data = toml(WS, member, "Cargo.toml")
            name = data["package"]["name"]
            if name in shipped or member == "common":
                continue
            for text in (self.inc, self.target, self.native):
                self.assertNotIn("-p " + name, text, "workspace member %s must not be built" % name)
        features = toml(WS, "daemon", "Cargo.toml").get("features", {})
        for text in (self.inc, self.target, self.native):
            self.assertNotIn("--features", text)
            self.assertNotIn("--all-features", text)
            for feature in features:
                self.assertNotIn(feature, text.replace("fake-backends and failpoints exist", ""),
                                 "cargo feature %s must not reach a production build" % feature)

    def test_binaries_are_packaged(self):
        for pkg_dir, package in (("daemon", "otpatchd"), ("ctl", "otpatchctl")):
            for binary in cargo_bins(pkg_dir)[1]:
                self.assertIn("${bindir}/%s" % binary, bb_value(self.target, "FILES:%s" % package),
                              "binary %s is not in package %s" % (binary, package))

    def test_version_license_and_rust(self):
        wp = self.workspace["workspace"]["package"]
        self.assertEqual(bb_value(self.inc, "PV"), wp["version"] + "+git")
        self.assertEqual(bb_value(self.inc, "LICENSE"), wp["license"])
        self.assertEqual(bb_value(self.inc, "OTPATCH_MIN_RUST"), wp["rust-version"])

    def test_srcrev_is_a_commit_id(self):
        self.assertRegex(bb_value(self.inc, "SRCREV"), r"^[0-9a-f]{40}$")


class DistFiles(unittest.TestCase):
    """Every file of daemon/dist is installed where systemd and D-Bus look for it."""

    EXPECTED = {
        "otpatchd.service": ("${systemd_system_unitdir}/otpatchd.service", "otpatchd"),
        "io.otpatch.Daemon1.conf": ("${datadir}/dbus-1/system.d/io.otpatch.Daemon1.conf", "otpatchd"),
        "io.otpatch.Daemon1.xml": ("${datadir}/dbus-1/interfaces/io.otpatch.Daemon1.xml", "${PN}-dev"),
        "otpatch.sysusers.conf": ("${nonarch_libdir}/sysusers.d/otpatch.conf", "otpatchd"),
        "otpatch.tmpfiles.conf": ("${nonarch_libdir}/tmpfiles.d/otpatch.conf", "otpatchd"),
        "otpatchd-criu.conf": ("${systemd_system_unitdir}/otpatchd.service.d/criu.conf", "otpatchd-criu"),
    }

    @classmethod
    def setUpClass(cls):
        cls.target = read(RECIPES, "otpatch_git.bb")
        cls.dist = sorted(os.listdir(os.path.join(WS, "daemon", "dist")))

    def test_no_dist_file_is_forgotten(self):
        self.assertEqual(self.dist, sorted(self.EXPECTED),
                         "daemon/dist changed: install the new files in otpatch_git.bb and list them here")

    def test_each_dist_file_is_installed_and_packaged(self):
        joined = re.sub(r"\\\n\s*", " ", self.target)
        for name, (dest, package) in self.EXPECTED.items():
            self.assertIn("${S}/daemon/dist/%s" % name, joined, "%s is not installed" % name)
            self.assertIn("${D}" + dest if not dest.endswith("otpatchd.service") else
                          "${D}${systemd_system_unitdir}/otpatchd.service", joined)
            files = bb_value(self.target, "FILES:%s" % package)
            self.assertTrue(any(dest.startswith(f) for f in files.split()),
                            "%s (%s) is in no FILES:%s entry" % (name, dest, package))

    def test_unit_name_and_exec(self):
        unit = read(WS, "daemon", "dist", "otpatchd.service")
        self.assertEqual(bb_value(self.target, "SYSTEMD_SERVICE:otpatchd"), "otpatchd.service")
        self.assertEqual(bb_value(self.target, "SYSTEMD_PACKAGES"), "otpatchd")
        exec_start = re.search(r"^ExecStart=(\S+)", unit, re.M).group(1)
        self.assertEqual(os.path.basename(exec_start), cargo_bins("daemon")[1][0])
        # The recipe rewrites the path; the pattern must still match the unit.
        self.assertIn("s,%s," % exec_start, self.target)

    def test_bus_name_group_and_files_agree(self):
        conf = read(WS, "daemon", "dist", "io.otpatch.Daemon1.conf")
        owned = re.search(r'<allow own="([^"]+)"', conf).group(1)
        self.assertEqual(owned, "io.otpatch.Daemon1")
        xml = read(WS, "daemon", "dist", "io.otpatch.Daemon1.xml")
        self.assertIn('<interface name="%s">' % owned, xml)
        group = re.search(r'<policy group="([^"]+)"', conf).group(1)
        sysusers = read(WS, "daemon", "dist", "otpatch.sysusers.conf")
        self.assertRegex(sysusers, r"(?m)^g\s+%s\s" % re.escape(group))
        self.assertEqual(bb_value(self.target, "GROUPADD_PARAM:otpatchd"), "--system " + group)
        self.assertEqual(toml(WS, "policies", "vendor", "00-defaults.toml")["access"]["group"], group)

    def test_vendor_defaults_installed(self):
        self.assertTrue(os.path.isfile(os.path.join(WS, "policies", "vendor", "00-defaults.toml")))
        self.assertIn("${S}/policies/vendor/00-defaults.toml "
                      "${D}${nonarch_libdir}/otpatch/policy.d/00-defaults.toml", self.target)

    def test_tmpfiles_dirs_match_site_config(self):
        tmpfiles = read(WS, "daemon", "dist", "otpatch.tmpfiles.conf")
        dirs = re.findall(r"(?m)^d\s+(\S+)", tmpfiles)
        self.assertIn("/etc/otpatch/trust", dirs)
        self.assertIn("/etc/otpatch/policy.d", dirs)


class GatewayImage(unittest.TestCase):
    """hil/image (the gateway image booted in QEMU) installs the recipe's files from the same sources to the
    same paths, so what the image proves is what the layer ships."""

    # The layer's paths for a merged-/usr distro (what the image is).
    PATHS = {"${systemd_system_unitdir}": "/usr/lib/systemd/system", "${datadir}": "/usr/share",
             "${nonarch_libdir}": "/usr/lib", "${bindir}": "/usr/bin", "${sysconfdir}": "/etc"}
    # Installed by the recipe, deliberately not in the image: package otpatchd-criu lifts the unit's
    # sandboxing, and the image proves the shipped hardening.
    NOT_IN_IMAGE = {"daemon/dist/otpatchd-criu.conf"}

    def expand(self, path):
        for var, value in self.PATHS.items():
            path = path.replace(var, value)
        return path

    def test_image_installs_what_the_recipe_installs(self):
        recipe = re.sub(r"\\\n\s*", " ", read(RECIPES, "otpatch_git.bb"))
        from_recipe = set()
        for mode, src, dest in re.findall(r"install -Dm (\d+) \$\{S\}/(\S+) \$\{D\}(\S+)", recipe):
            if src not in self.NOT_IN_IMAGE:
                from_recipe.add((src, self.expand(dest), mode))
        # The unit goes through sed (bindir) and chmod 0644.
        unit = re.search(r"\$\{S\}/(daemon/dist/otpatchd.service)\s*>\s*\$\{D\}(\S+)", recipe)
        self.assertIsNotNone(unit, "the recipe no longer installs the unit with sed")
        self.assertIn("chmod 0644 ${D}%s" % unit.group(2), recipe)
        from_recipe.add((unit.group(1), self.expand(unit.group(2)), "0644"))
        build = read(WS, "hil", "image", "build.sh")
        block = re.search(r'^OTPATCH_FILES="\n(.*?)^"', build, re.M | re.S)
        self.assertIsNotNone(block, "hil/image/build.sh has no OTPATCH_FILES list")
        from_image = set()
        for line in block.group(1).splitlines():
            src, dest, mode = line.replace("$D/", "daemon/dist/").split()
            from_image.add((src, dest, mode))
        self.assertEqual(from_image, from_recipe, "hil/image/build.sh and otpatch_git.bb install different files")
        # The programs and the site's drop-in directory, to the recipe's paths too.
        for path in ("/usr/bin/otpatchd", "/usr/bin/otpatchctl"):
            self.assertIn('"$ST%s"' % path, build)
        self.assertIn("install -d ${D}${sysconfdir}/otpatch/policy.d", recipe)
        self.assertIn('install -d "$ST/etc/otpatch/policy.d"', build)

    def test_no_second_mark_good(self):
        # otpatchd marks ordinary boots good and the boot into an update only after its observation; meta-rauc's
        # rauc-mark-good (recommended by rauc) would mark every boot good. Neither image may have it.
        image = read(LAYER, "recipes-core", "images", "otpatch-gateway-image.bb")
        self.assertIn("rauc-mark-good", bb_value(image, "BAD_RECOMMENDATIONS").split())
        self.assertNotIn("mark-good", read(WS, "hil", "image", "rootfs.sh"))


class CompletionsAndMan(unittest.TestCase):
    """The recipe asks otpatchctl for exactly the shells and pages the CLI offers."""

    def test_shells(self):
        cli = read(WS, "ctl", "src", "cli.rs")
        enum = re.search(r"pub enum CompletionShell \{(.*?)\}", cli, re.S).group(1)
        shells = sorted(v.lower() for v in re.findall(r"\b([A-Z][a-z]+)\b", enum))
        target = read(RECIPES, "otpatch_git.bb")
        asked = sorted(re.findall(r"\$\{OTPATCHCTL_NATIVE\} completions (\w+)", target))
        self.assertEqual(asked, shells)
        for pkg in ("${PN}-zsh-completion", "${PN}-fish-completion"):
            self.assertIn(pkg, bb_value(target, "PACKAGE_BEFORE_PN"))
        self.assertIn("inherit", target)
        self.assertRegex(target, r"(?m)^inherit .*\bbash-completion\b")

    def test_man(self):
        cli = read(WS, "ctl", "src", "cli.rs")
        self.assertRegex(cli, r"Man \{")
        self.assertIn("${OTPATCHCTL_NATIVE} man --out ${D}${mandir}/man1", read(RECIPES, "otpatch_git.bb"))

    def test_bundle_interface_when_present(self):
        """kernel-livepatch.bbclass uses `otpatchctl bundle create` with these flags."""
        cls_text = read(LAYER, "classes-recipe", "kernel-livepatch.bbclass")
        flags = ["--kind livepatch", "--compatible", "--version", "--kernel-release", "--payload",
                 "--signer-cert", "--signer-key", "--chain", "--out"]
        self.assertIn("otpatchctl bundle create", cls_text)
        for flag in flags:
            self.assertIn(flag, cls_text)
        cli = read(WS, "ctl", "src", "cli.rs")
        if "Bundle" not in cli:
            self.skipTest("otpatchctl has no bundle subcommand yet; flags checked against the class only")
        for flag in flags:
            field = flag.split()[0][2:].replace("-", "_")
            if field != "kind":
                self.assertRegex(cli, r"\b%s\b" % field, "otpatchctl bundle create has no %s" % flag)


class CratesInc(unittest.TestCase):
    def test_inc_matches_cargo_lock(self):
        script = os.path.join(YOCTO, "scripts", "update-crates.py")
        res = subprocess.run([sys.executable, script, "--check"], capture_output=True, text=True)
        self.assertEqual(res.returncode, 0, res.stderr.strip())

    def test_every_crate_has_a_checksum(self):
        inc = read(RECIPES, "otpatch-crates.inc")
        uris = re.findall(r"crate://crates\.io/([^/\s]+)/(\S+)", inc)
        sums = set(re.findall(r"SRC_URI\[([^\]]+)\.sha256sum\]", inc))
        self.assertTrue(uris)
        self.assertEqual({"%s-%s" % u for u in uris}, sums)
        self.assertIn("require otpatch-crates.inc", read(RECIPES, "otpatch.inc"))


class SiteConfig(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.recipe = read(SITE, "otpatch-site-config_1.0.bb")
        cls.policy_template = read(SITE, "files", "policy.toml")

    def rendered_policy(self):
        return (self.policy_template.replace("@OTPATCH_GATEWAY_ID@", "gw-test")
                .replace("@OTPATCH_COMPATIBLE@", "otpatch-test"))

    def test_sample_follows_site_minimal(self):
        sample = tomllib.loads(self.rendered_policy())
        minimal = toml(WS, "policies", "site-minimal.toml")
        self.assertEqual({k: sorted(v) for k, v in sample.items()}, {k: sorted(v) for k, v in minimal.items()})
        self.assertNotIn("@", self.rendered_policy().split("\n[", 1)[1])

    def test_anchors_are_installed_where_the_policy_names_them(self):
        anchors = tomllib.loads(self.rendered_policy())["trust"]["anchors"]
        installed = ["/etc/otpatch/trust/" + n for n in bb_value(self.recipe, "OTPATCH_TRUST_ANCHORS").split()]
        self.assertEqual(sorted(anchors), sorted(installed))
        for name in bb_value(self.recipe, "OTPATCH_TRUST_ANCHORS").split():
            self.assertTrue(os.path.isfile(os.path.join(SITE, "files", name)))

    def test_samples_are_marked_and_not_keys(self):
        marker = bb_value(self.recipe, "OTPATCH_SAMPLE_MARKER")
        self.assertEqual(marker, "OTPATCH-SAMPLE-DO-NOT-DEPLOY")
        self.assertIn(marker, read(LAYER, "classes-recipe", "otpatch-image.bbclass"))
        for name in os.listdir(os.path.join(SITE, "files")):
            text = read(SITE, "files", name)
            self.assertIn(marker, text, "%s lacks the sample marker" % name)
            self.assertNotIn("-----BEGIN ", text.replace('"-----BEGIN CERTIFICATE-----"', ""),
                             "%s must not contain key material" % name)

    def test_virtual_provider(self):
        self.assertIn("virtual-otpatch-site-config", bb_value(self.recipe, "RPROVIDES:${PN}"))
        self.assertIn("virtual-otpatch-site-config",
                      bb_value(read(RECIPES, "otpatch_git.bb"), "RRECOMMENDS:otpatchd"))

    def test_policy_check_with_built_otpatchctl(self):
        """The sample, as installed, passes `otpatchctl policy check` (needs a built otpatchctl)."""
        ctl = os.environ.get("OTPATCHCTL") or os.path.join(WS, "target", "debug", "otpatchctl")
        if not os.access(ctl, os.X_OK):
            self.skipTest("no built otpatchctl (set OTPATCHCTL)")
        with tempfile.TemporaryDirectory() as root:
            os.makedirs(os.path.join(root, "usr/lib/otpatch/policy.d"))
            os.makedirs(os.path.join(root, "etc/otpatch/trust"))
            shutil.copy(os.path.join(WS, "policies/vendor/00-defaults.toml"),
                        os.path.join(root, "usr/lib/otpatch/policy.d"))
            with open(os.path.join(root, "etc/otpatch/policy.toml"), "w") as f:
                f.write(self.rendered_policy())
            shutil.copy(os.path.join(SITE, "files", "site-ca.pem"), os.path.join(root, "etc/otpatch/trust"))
            res = subprocess.run([ctl, "policy", "check", "--root", root], capture_output=True, text=True)
            self.assertEqual(res.returncode, 0, res.stdout + res.stderr)


class Kernel(unittest.TestCase):
    REQUIRED = ["LIVEPATCH", "FTRACE", "FUNCTION_TRACER", "DYNAMIC_FTRACE", "MODULES", "MODULE_UNLOAD",
                "KALLSYMS_ALL", "CHECKPOINT_RESTORE", "NF_TABLES", "NF_TABLES_INET", "NFT_CT", "NFT_REJECT",
                "NFT_LOG", "UNIX_DIAG", "INET_DIAG", "INET_TCP_DIAG", "INET_UDP_DIAG", "NETLINK_DIAG",
                "PACKET_DIAG", "SQUASHFS", "DM_VERITY", "BLK_DEV_LOOP"]

    def fragment(self, name):
        text = read(KERNEL, "linux", "linux-yocto", name)
        opts = {}
        for line in text.splitlines():
            if not line.strip() or (line.startswith("#") and "is not set" not in line):
                continue
            m = re.match(r"^CONFIG_([A-Z0-9_]+)=(y|m|\d+|\".*\")$", line) or \
                re.match(r"^# CONFIG_([A-Z0-9_]+) is not set$", line)
            self.assertIsNotNone(m, "%s: not a Kconfig line: %r" % (name, line))
            opts[m.group(1)] = m.group(2) if m.lastindex == 2 else "n"
        return opts

    def test_fragment_has_what_otpatchd_needs(self):
        opts = self.fragment("otpatch.cfg")
        for opt in self.REQUIRED:
            self.assertEqual(opts.get(opt), "y", "otpatch.cfg: CONFIG_%s=y missing" % opt)
        self.assertEqual(opts.get("TRIM_UNUSED_KSYMS"), "n")
        self.assertEqual(self.fragment("otpatch-x86-64.cfg").get("DYNAMIC_FTRACE_WITH_REGS"), "y")
        self.assertEqual(self.fragment("otpatch-arm64.cfg").get("DYNAMIC_FTRACE_WITH_ARGS"), "y")

    def test_every_fragment_is_applied(self):
        inc = read(KERNEL, "linux", "linux-yocto-otpatch.inc")
        for name in os.listdir(os.path.join(KERNEL, "linux", "linux-yocto")):
            self.assertIn("file://" + name, inc)
        self.assertIn("linux-yocto-otpatch.inc", read(KERNEL, "linux", "linux-yocto_%.bbappend"))

    def test_os_release_names_the_image_version(self):
        # otpatchd reads IMAGE_VERSION for the rollback it records after a bootloader fallback.
        d = os.path.join(LAYER, "recipes-core", "os-release")
        self.assertIn("'otpatch', 'os-release-otpatch.inc'", read(d, "os-release.bbappend"))
        inc = read(d, "os-release-otpatch.inc")
        self.assertIn('OS_RELEASE_FIELDS:append = " IMAGE_VERSION"', inc)
        self.assertIn('IMAGE_VERSION = "${OTPATCH_IMAGE_VERSION}"', inc)

    def test_example_license_checksum(self):
        recipe = read(KERNEL, "livepatch-otpatch-example", "livepatch-otpatch-example_1.0.bb")
        m = re.search(r"file://([^;]+);beginline=(\d+);endline=(\d+);md5=([0-9a-f]{32})", recipe)
        with open(os.path.join(KERNEL, "livepatch-otpatch-example", "files", m.group(1)), "rb") as f:
            lines = f.readlines()[int(m.group(2)) - 1:int(m.group(3))]
        self.assertEqual(hashlib.md5(b"".join(lines)).hexdigest(), m.group(4))
        src = read(KERNEL, "livepatch-otpatch-example", "files", m.group(1))
        self.assertIn('MODULE_INFO(livepatch, "Y")', src)
        module = bb_value(recipe, "LIVEPATCH_MODULE")
        self.assertIn("obj-m := %s.o" % module, read(KERNEL, "livepatch-otpatch-example", "files", "Makefile"))


class LayerAndKas(unittest.TestCase):
    def test_layer_conf(self):
        conf = read(LAYER, "conf", "layer.conf")
        self.assertEqual(bb_value(conf, "LAYERSERIES_COMPAT_otpatch"), "wrynose")
        self.assertIn("otpatch", bb_value(conf, "BBFILE_COLLECTIONS").split())
        self.assertEqual(bb_value(conf, "LAYERDEPENDS_otpatch"), "core")

    def test_kas_files(self):
        try:
            import yaml
            import jsonschema
            from kas import configschema
        except ImportError as e:  # pinned in tests/requirements.txt
            self.fail("kas (tests/requirements.txt) is not installed: %s" % e)
        kasdir = os.path.join(YOCTO, "kas")
        names = sorted(n for n in os.listdir(kasdir) if n.endswith(".yml"))
        self.assertEqual(names, ["otpatch.yml", "qemuarm64.yml", "qemux86-64.yml"])
        machines = set()
        maxver = configschema.CONFIGSCHEMA["properties"]["header"]["properties"]["version"]["anyOf"][1]["maximum"]
        for name in names:
            with open(os.path.join(kasdir, name), encoding="utf-8") as f:
                doc = yaml.safe_load(f)
            jsonschema.validate(doc, configschema.CONFIGSCHEMA)
            self.assertEqual(doc["header"]["version"], maxver, "%s: use the current kas format" % name)
            for inc in doc["header"].get("includes", []):
                self.assertTrue(os.path.isfile(os.path.join(kasdir, inc)), "%s includes %s" % (name, inc))
            if "machine" in doc:
                machines.add(doc["machine"])
            for repo in (doc.get("repos") or {}).values():
                if repo and "url" not in repo:
                    for layer in repo.get("layers", {}):
                        self.assertTrue(os.path.isfile(os.path.join(WS, layer, "conf", "layer.conf")))
                if repo and "branch" in repo and "url" in repo and "bitbake" not in repo["url"]:
                    self.assertEqual(repo["branch"], "wrynose")
        self.assertEqual(machines, {"qemux86-64", "qemuarm64"})

    def test_no_paths_of_this_machine(self):
        for dirpath, _, files in os.walk(YOCTO):
            if "__pycache__" in dirpath:
                continue
            for name in files:
                text = read(dirpath, name)
                # Spelt in two parts so that this file does not match itself.
                for bad in ("/" + "work/", "/" + "root/"):
                    self.assertFalse(bad in text, "%s contains %s" % (os.path.join(dirpath, name), bad))


if __name__ == "__main__":
    runner = unittest.TextTestRunner(verbosity=2, stream=sys.stdout)
    result = runner.run(unittest.defaultTestLoader.loadTestsFromModule(sys.modules[__name__]))
    failed = len(result.failures) + len(result.errors)
    skipped = len(result.skipped)
    passed = result.testsRun - failed - skipped
    print("RESULT passed=%d failed=%d skipped=%d" % (passed, failed, skipped))
    sys.exit(1 if failed else 0)
