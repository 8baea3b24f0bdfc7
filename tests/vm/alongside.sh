#!/bin/bash
# `make test`: run COMMAND (the pytest suite) while the real-systemd VM suite (tests/vm: image
# build when its recipe changed, then one qemu boot) runs beside it in the background, and fail
# when either fails.
#
#   usage: tests/vm/alongside.sh PYTHON COMMAND...
#   env:   CONTINUON_VMTEST=0   leave the VM suite out (said so, not silently)
#          CONTINUON_VMTEST=1   run it even under software emulation (see below)
# By default the VM suite runs here only where qemu has hardware acceleration (KVM). Under
# software emulation (TCG) on a 2-core machine it needs about 18 minutes of both cores beside a
# pytest suite of about 17: together on clean clones 26-33 minutes, not well under CI's 30; it
# is then left out with that reason, and `make test-vm` runs it alone. Where it runs, it skips,
# saying why, if no image can be built here (not root, tools missing); every other failure
# fails make test.
set -uo pipefail
(($# >= 2)) || { sed -n '2,14p' "$0"; exit 2; }
PY=$1
shift
HERE=$(cd "$(dirname "$0")" && pwd)
ACCEL=$("$HERE/run-vm.sh" --accel 2>/dev/null || echo none)
if [[ ${CONTINUON_VMTEST:-} == 0 ]]; then
  echo "VM suite (tests/vm) left out: CONTINUON_VMTEST=0"
  exec env -u CONTINUON_VMTEST "$@"
elif [[ ${CONTINUON_VMTEST:-} != 1 && $ACCEL != kvm ]]; then
  echo "VM suite (tests/vm) left out: qemu has only software emulation here (no usable KVM);"
  echo "  beside pytest it would take CI past its time limit. Run it alone: make test-vm"
  echo "  (or CONTINUON_VMTEST=1 make test)."
  exec env -u CONTINUON_VMTEST "$@"
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
