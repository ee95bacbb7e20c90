# Helpers for /init and the scenarios (busybox ash). Sourced, not run.

HIL_CHECKS=/run/hil-checks   # one line per check: "1 name" or "0 name"

hil_ms() { /bin/hil-ms; }

# hil_time WHAT START_MS: prints the time since START_MS (0: the boot clock itself).
hil_time() {
  echo "HIL-TIME what=$1 ms=$(( $(hil_ms) - $2 ))"
}

# check NAME CMD...: runs CMD, records and prints the outcome, returns its status
# (so under set -e a failed check ends the scenario: later steps depend on it).
check() {
  _name="$1"; shift
  if "$@"; then
    echo "1 $_name" >>"$HIL_CHECKS"
    echo "HIL-CHECK scenario=$SCENARIO name=$_name ok=1"
    return 0
  fi
  echo "0 $_name" >>"$HIL_CHECKS"
  echo "HIL-CHECK scenario=$SCENARIO name=$_name ok=0 cmd=\"$*\""
  return 1
}

# info TEXT: a line of evidence for the log.
info() { echo "HIL-INFO $*"; }

# wait_for TIMEOUT_MS CMD...: runs CMD every 20 ms until it succeeds; 1 on timeout.
wait_for() {
  _limit=$(( $(hil_ms) + $1 )); shift
  until "$@"; do
    [ "$(hil_ms)" -lt "$_limit" ] || return 1
    usleep 20000
  done
}

# sysfs_is FILE VALUE: the file exists and reads VALUE (read is a builtin: no fork).
sysfs_is() {
  [ -r "$1" ] || return 1
  read -r _v <"$1" 2>/dev/null || return 1
  [ "$_v" = "$2" ]
}

gone() { [ ! -e "$1" ]; }
module_loaded() { grep -q "^$1 " /proc/modules; }
module_unloaded() { ! module_loaded "$1"; }

# hil_result NAME RC: the scenario's verdict from its checks and its exit status.
hil_result() {
  _n=0; _f=0
  if [ -f "$HIL_CHECKS" ]; then
    _n=$(wc -l <"$HIL_CHECKS")
    _f=$(grep -c '^0 ' "$HIL_CHECKS" || true)
  fi
  _ok=0
  [ "$2" -eq 0 ] && [ "$_f" -eq 0 ] && [ "$_n" -gt 0 ] && _ok=1
  echo "HIL-RESULT name=$1 ok=$_ok checks=$_n failed=$_f rc=$2"
}
