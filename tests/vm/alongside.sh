#!/bin/bash
# `make test`: run COMMAND (the pytest suite) while the real-systemd VM suite (tests/vm: image
# build when its recipe changed, then one qemu boot) runs beside it in the background, and fail
# when either fails. The VM suite waits mostly on software emulation (one niced qemu), so
# overlapping the two keeps CI well under its time limit on 2 cores; serially they would not.
#
#   usage: tests/vm/alongside.sh PYTHON COMMAND...
#   env:   CONTINUON_VMTEST=0   leave the VM suite out (said so, not silently)
# The VM suite skips, saying why, where qemu cannot run (not installed, or no image can be
# built here: not root); with qemu present every failure fails make test.
set -uo pipefail
(($# >= 2)) || { sed -n '2,10p' "$0"; exit 2; }
PY=$1
shift
if [[ ${CONTINUON_VMTEST:-1} == 0 ]]; then
  echo "VM suite (tests/vm) left out: CONTINUON_VMTEST=0"
  exec "$@"
fi
LOG=$(mktemp "${TMPDIR:-/tmp}/continuon-vmtest.XXXXXX.log")
t0=$(date +%s)
# Its own process group (setsid), so that an interrupted make test stops qemu with it.
# Its own basetemp: two pytest sessions must not prune each other's numbered tmp folders.
BT=$(mktemp -d "${TMPDIR:-/tmp}/continuon-vmtest.XXXXXX")
CONTINUON_VMTEST=1 setsid nice -n 10 "$PY" -m pytest -p no:cacheprovider --basetemp="$BT" tests/vm \
  >"$LOG" 2>&1 &
VM=$!
trap 'kill -- "-$VM" 2>/dev/null' EXIT INT TERM
echo "VM suite (tests/vm) running in the background (pid $VM, log $LOG)"
env -u CONTINUON_VMTEST "$@"  # the main suite never collects tests/vm itself
rc=$?
echo "waiting for the VM suite (tests/vm) ..."
wait "$VM"
vrc=$?
trap - EXIT INT TERM
echo "===== VM suite (tests/vm): exit $vrc after $(($(date +%s) - t0)) s ====="
tail -n 40 "$LOG"
((rc == 0 && vrc == 0)) || { echo "make test: pytest exit $rc, VM suite exit $vrc (full VM log: $LOG)" >&2; exit 1; }
rm -rf "$LOG" "$BT"
