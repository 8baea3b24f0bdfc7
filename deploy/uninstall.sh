#!/usr/bin/env bash
# Remove what deploy/install.sh installed.
#
#   sudo deploy/uninstall.sh            # service, venv, unit, sysusers/tmpfiles files
#   sudo deploy/uninstall.sh --purge    # also /etc/continuon/trainer.yaml and the state folder
#   deploy/uninstall.sh --dry-run       # print every command, change nothing
#
# Never touched: the robot's folders (episodes, model/ with the promoted releases and manifest),
# and the continuon-trainer user and continuon group (sysusers convention: a removed UID could be
# handed to another account that would then own files left behind).
set -euo pipefail

PREFIX=/opt/continuon-trainer
PURGE=0
DRY_RUN=0

die() {
  echo "uninstall.sh: error: $*" >&2
  exit 1
}

while (($#)); do
  case "$1" in
    --prefix) PREFIX="${2:?--prefix needs a directory}"; shift 2 ;;
    --purge) PURGE=1; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h | --help) echo "usage: $0 [--prefix DIR] [--purge] [--dry-run]"; exit 0 ;;
    *) die "unknown argument: $1" ;;
  esac
done

run() {
  if ((DRY_RUN)); then
    printf '+'
    printf ' %q' "$@"
    printf '\n'
  else
    "$@"
  fi
}

if ((!DRY_RUN)) && ((EUID != 0)); then
  die "run as root (sudo $0 ...), or with --dry-run to see the commands"
fi

# rm -rf only what is recognisably an install: a mistyped --prefix must not cost a folder.
[[ "$PREFIX" == /?* && (! -e "$PREFIX" || -f "$PREFIX/venv/pyvenv.cfg") ]] ||
  die "$PREFIX does not look like a continuon-trainer install (no venv/pyvenv.cfg)"

if ((DRY_RUN)) || [[ -d /run/systemd/system ]]; then
  # The daemon stops its job child first (resume checkpoint), then exits.
  run systemctl disable --now continuon-trainer.service
fi
run rm -f /etc/systemd/system/continuon-trainer.service
run rm -rf /etc/systemd/system/continuon-trainer.service.d
run rm -f /etc/sysusers.d/continuon-trainer.conf /etc/tmpfiles.d/continuon-trainer.conf
# The PATH link install.sh made, only when it is ours (points into this prefix).
if ((DRY_RUN)) || [[ "$(readlink /usr/local/bin/continuon-trainer)" == "$PREFIX/venv/"* ]]; then
  run rm -f /usr/local/bin/continuon-trainer
fi
run rm -rf "$PREFIX"
if ((PURGE)); then
  run rm -f /etc/continuon/trainer.yaml
  run rmdir --ignore-fail-on-non-empty /etc/continuon
  run rm -rf /var/lib/continuon-trainer
fi
if ((DRY_RUN)) || [[ -d /run/systemd/system ]]; then
  run systemctl daemon-reload
fi
