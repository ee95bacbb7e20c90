#!/usr/bin/env bash
# Checks of the meta-otpatch layer that run without BitBake: oelint-adv over every recipe, append, class,
# include and configuration file, then the consistency tests against the workspace (tests/test_layer.py).
# Needs the pinned Python tools of tests/requirements.txt (oelint-adv, kas); OTPATCH_PYTHON names their venv.
set -euo pipefail
cd "$(dirname "$0")"
py="${OTPATCH_PYTHON:-python3}"
passed=0
failed=0

# Suppressed for the whole layer, each for a reason:
#   oelint.vars.homepageping            it fetches HOMEPAGE over the network; checks here stay offline (and the
#                                       project's address is a placeholder until it is published)
#   oelint.var.suggestedvar.BUGTRACKER  the project has no public tracker yet
#   oelint.var.suggestedvar.CVE_PRODUCT otpatch is not in the NVD; the default (${BPN}) is right for it, and the
#                                       site config, image and example recipes have no CVE product at all
#   oelint.var.bbclassextend            the native otpatchctl is its own recipe (otpatchctl-native), so the
#                                       target recipes need no native/nativesdk variants
#   oelint.vars.inconspaces, oelint.vars.notneededspace
#                                       otpatch-crates.inc keeps the exact format OE-core's
#                                       `bitbake -c update_crates` writes (SRC_URI += " \), so that both tools
#                                       produce the same file
# Every other suppression is inline (# nooelint:) next to the line it covers, with its reason.
suppress=(
    --suppress oelint.vars.homepageping
    --suppress oelint.var.suggestedvar.BUGTRACKER
    --suppress oelint.var.suggestedvar.CVE_PRODUCT
    --suppress oelint.var.bbclassextend
    --suppress oelint.vars.inconspaces
    --suppress oelint.vars.notneededspace
)
oelint=("$py" -m oelint_adv --release wrynose --mode all --relpaths --quiet)

run_lint() {  # name, extra args..., -- files...
    local name=$1; shift
    local out
    if out=$("${oelint[@]}" "$@" 2>&1) && [ -z "$out" ]; then
        echo "ok   oelint-adv: $name"
        passed=$((passed + 1))
    else
        echo "FAIL oelint-adv: $name"
        echo "$out" | sed 's/^/     /'
        failed=$((failed + 1))
    fi
}

mapfile -t layer_files < <(find meta-otpatch -type f \
    \( -name '*.bb' -o -name '*.bbappend' -o -name '*.bbclass' -o -name '*.inc' -o -name '*.conf' \) \
    -not -path '*/files/*' -not -path '*/linux-yocto/*' -not -path 'meta-otpatch/templates/*' | sort)
run_lint "layer (${#layer_files[@]} files)" "${suppress[@]}" "${layer_files[@]}"

# The templates are copied into a board layer, where they belong to that board's machine; the rule that wants
# every bbappend variable tied to a MACHINE or DISTRO override cannot know that here.
mapfile -t template_files < <(find meta-otpatch/templates -type f -name '*.bbappend' | sort)
run_lint "templates (${#template_files[@]} files)" "${suppress[@]}" --suppress oelint.vars.noncoreoverride \
    "${template_files[@]}"

# Every shipped RAUC system.conf, parsed by RAUC itself: `rauc info` loads the system configuration before it
# opens the bundle, so with a bundle path that does not exist it either refuses the configuration ("Failed to
# load system config": a line that is not a key, an unknown key, a bad value) or gets as far as the missing
# bundle. The @...@ values are filled in as the template's bbappend does, once for each bootloader it names.
check_rauc_conf() {  # file
    local file=$1 tmp out bl ok=1
    if ! command -v rauc >/dev/null; then
        echo "FAIL rauc config: $file: rauc is not installed (Debian: rauc), the file cannot be checked"
        failed=$((failed + 1))
        return
    fi
    tmp=$(mktemp -d)
    for bl in grub efi uboot barebox; do
        sed -e 's,@OTPATCH_COMPATIBLE@,check-otpatch-gateway,g' \
            -e "s,@OTPATCH_RAUC_BOOTLOADER@,$bl,g" \
            -e 's,@OTPATCH_RAUC_SLOT_A@,/dev/disk/by-partlabel/rootfs-a,g' \
            -e 's,@OTPATCH_RAUC_SLOT_B@,/dev/disk/by-partlabel/rootfs-b,g' \
            "$file" >"$tmp/system.conf"
        out=$(rauc --conf="$tmp/system.conf" info --no-verify "$tmp/no-such.raucb" 2>&1 || true)
        if echo "$out" | grep -q 'Failed to load system config\|Failed to initialize context' \
            || ! echo "$out" | grep -q 'No such file'; then
            echo "FAIL rauc config: $file (bootloader=$bl)"
            echo "$out" | sed 's/^/     /'
            ok=0
            break
        fi
    done
    rm -rf "$tmp"
    if [ $ok = 1 ]; then
        echo "ok   rauc config: $file"
        passed=$((passed + 1))
    else
        failed=$((failed + 1))
    fi
}
mapfile -t rauc_confs < <(find meta-otpatch -type f -path '*rauc*' -name '*.conf' | sort)
if [ ${#rauc_confs[@]} -eq 0 ]; then
    echo "FAIL rauc config: no system.conf found under meta-otpatch"
    failed=$((failed + 1))
fi
for f in "${rauc_confs[@]}"; do check_rauc_conf "$f"; done

# Consistency with the workspace (includes the Cargo.lock drift check of otpatch-crates.inc).
set +e
out=$("$py" tests/test_layer.py 2>&1)
rc=$?
set -e
echo "$out" | grep -E '(ok|FAIL|ERROR|skipped.*)$' | sed 's/^/     /' || true
if [ $rc -ne 0 ]; then
    echo "$out" | sed -n '/^=\{10,\}/,/^Ran /p'
fi
result=$(echo "$out" | grep '^RESULT ' | tail -n 1)
if [ -z "$result" ]; then
    echo "FAIL tests/test_layer.py did not run"
    failed=$((failed + 1))
else
    p=$(echo "$result" | sed -E 's/.*passed=([0-9]+).*/\1/')
    f=$(echo "$result" | sed -E 's/.*failed=([0-9]+).*/\1/')
    s=$(echo "$result" | sed -E 's/.*skipped=([0-9]+).*/\1/')
    passed=$((passed + p))
    failed=$((failed + f))
    [ "$s" = 0 ] || echo "($s consistency test(s) skipped, see above)"
fi

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
