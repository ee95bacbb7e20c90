# criu-bench (on demand, not in the default list: bash hil/run.sh criu-bench): freeze time and dump time of
# otpatchd's CRIU checkpointer (daemon/examples/criu_bench.rs) against the same dumps done with the criu
# command line, for processes of 10, 100 and 300 MiB resident (memhog: every page written, then idle),
# without and with pre-dump, 3 runs each; images on the guest's /tmp (tmpfs). Figures under TCG: compare
# them as ratios. Needs `cargo build --release -p otpatchd --example criu_bench` before the guest is built.
check criu-bench-present command -v criu_bench
B=/tmp/bench
for mib in 10 100 300; do
  rm -f /run/bench.pid /tmp/memhog.log
  ( setsid sh -c "echo \$\$ >/run/bench.pid; exec memhog $mib" </dev/null >/tmp/memhog.log 2>&1 & )
  check "memhog-$mib-ready" wait_for 120000 grep -q ready /tmp/memhog.log
  PID=$(cat /run/bench.pid)
  info "memhog $mib MiB: pid $PID, $(grep VmRSS /proc/$PID/status | tr -s ' \t' ' ')"
  check "bench-$mib" criu_bench --pidfile /run/bench.pid --images "$B" --runs 3
  kill "$PID"
  wait_for 5000 sh -c "[ ! -d /proc/$PID ]" || true
  rm -rf "$B"
done
