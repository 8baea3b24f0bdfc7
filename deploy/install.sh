#!/usr/bin/env bash
# Install continuon-trainer as a systemd service on a robot (Raspberry Pi 5, Jetson).
#
#   sudo deploy/install.sh                         # venv with the pinned CPU torch
#   sudo deploy/install.sh --system-torch          # Jetson: keep NVIDIA's own torch
#   sudo deploy/install.sh --wheelhouse DIR        # offline: DIR from deploy/wheelhouse.sh
#   deploy/install.sh --dry-run                    # print every command, change nothing
#
# Safe to run again (upgrade): the venv is reused, the package reinstalled from this checkout,
# unit/sysusers/tmpfiles files replaced, and an existing /etc/continuon/trainer.yaml is never
# overwritten. It never enables or starts the service: it prints the commands that do.
set -euo pipefail

SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PREFIX=/opt/continuon-trainer
CONFIG_NAME=pi5-donkey
PYTHON=python3
SYSTEM_TORCH=0
DRY_RUN=0
WHEELHOUSE=""

ETC_CONFIG=/etc/continuon/trainer.yaml
ROBOT_ROOT=/opt/continuonos/brain
UNIT_DEST=/etc/systemd/system/continuon-trainer.service
SYSUSERS_DEST=/etc/sysusers.d/continuon-trainer.conf
TMPFILES_DEST=/etc/tmpfiles.d/continuon-trainer.conf
BIN_LINK=/usr/local/bin/continuon-trainer # the CLI on PATH (it finds $ETC_CONFIG by itself)
UNIT_PREFIX=/opt/continuon-trainer # the prefix written in deploy/systemd/continuon-trainer.service

usage() {
  cat <<EOF
usage: $0 [--prefix DIR] [--config NAME] [--python PATH] [--system-torch] [--wheelhouse DIR]
          [--dry-run]

  --prefix DIR     install root, the venv goes in DIR/venv (default: $PREFIX)
  --config NAME    configs/NAME.yaml becomes $ETC_CONFIG if that file is absent
                   (default: $CONFIG_NAME)
  --python PATH    interpreter for the venv, Python >= 3.11 (default: $PYTHON)
  --system-torch   venv with --system-site-packages; the torch already installed for --python
                   (NVIDIA's build on a Jetson) is pinned and never replaced
  --wheelhouse DIR install offline from DIR (made by deploy/wheelhouse.sh): its SHA256SUMS
                   are checked first, then pip runs with --no-index
  --dry-run        print every command instead of running it (no root needed)
EOF
}

die() {
  echo "install.sh: error: $*" >&2
  exit 1
}

while (($#)); do
  case "$1" in
    --prefix) PREFIX="${2:?--prefix needs a directory}"; shift 2 ;;
    --config) CONFIG_NAME="${2:?--config needs a name}"; shift 2 ;;
    --python) PYTHON="${2:?--python needs a path}"; shift 2 ;;
    --system-torch) SYSTEM_TORCH=1; shift ;;
    --wheelhouse) WHEELHOUSE="${2:?--wheelhouse needs a directory}"; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done

VENV="$PREFIX/venv"
CONFIG_SRC="$SRC/configs/$CONFIG_NAME.yaml"

# Every command that changes the machine goes through run: printed with --dry-run, else run.
show() {
  printf '+'
  printf ' %q' "$@"
}
run() {
  if ((DRY_RUN)); then
    show "$@"
    printf '\n'
  else
    "$@"
  fi
}
# run_to FILE CMD...: CMD's stdout becomes FILE.
run_to() {
  local file="$1"
  shift
  if ((DRY_RUN)); then
    show "$@"
    printf ' > %q\n' "$file"
  else
    "$@" >"$file"
  fi
}
# run_quiet CMD...: CMD's output is shown only when it fails.
run_quiet() {
  if ((DRY_RUN)); then
    show "$@"
    printf '\n'
  else
    local out
    out="$("$@" 2>&1)" || {
      printf '%s\n' "$out" >&2
      die "failed: $*"
    }
  fi
}

# Checks below only read; they run in --dry-run too, so a dry run fails where the real one would.
if ((!DRY_RUN)) && ((EUID != 0)); then
  die "run as root (sudo $0 ...), or with --dry-run to see the commands"
fi
[[ "$PREFIX" == /?* ]] || die "--prefix must be an absolute path (got $PREFIX)"
[[ -f "$CONFIG_SRC" ]] || die "no such config: $CONFIG_SRC (choose one with --config NAME)"
command -v "$PYTHON" >/dev/null || die "interpreter not found: $PYTHON (use --python PATH)"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
  die "$PYTHON is older than Python 3.11, which continuon-trainer requires (use --python PATH)"

# --wheelhouse: every wheel listed in SHA256SUMS, present and intact, and nothing unlisted,
# before pip sees the folder. Sets PIP_SOURCE (pip's options) and TARGET (what to install).
check_wheelhouse() {
  local dir="$1" sums="$1/SHA256SUMS" sum name actual found=0
  [[ -d "$dir" ]] || die "--wheelhouse: no such directory: $dir"
  [[ -f "$sums" ]] || die "--wheelhouse: $sums is missing (build the folder with deploy/wheelhouse.sh)"
  while read -r sum name; do
    [[ -n "$sum" ]] || continue
    name="${name#\*}"
    [[ "$name" != */* ]] || die "--wheelhouse: SHA256SUMS names a path, not a file: $name"
    [[ -f "$dir/$name" ]] || die "--wheelhouse: $name is listed in SHA256SUMS but missing from $dir (copy the whole folder again)"
    actual="$(sha256sum -- "$dir/$name" | cut -d' ' -f1)"
    [[ "$actual" == "$sum" ]] || die "--wheelhouse: checksum mismatch for $name (damaged or changed copy; copy the folder again)"
  done <"$sums"
  for name in "$dir"/*.whl; do
    [[ -e "$name" ]] || continue
    awk -v n="${name##*/}" '{ sub(/^\*/, "", $2) } $2 == n { f = 1 } END { exit !f }' "$sums" ||
      die "--wheelhouse: ${name##*/} is not listed in SHA256SUMS (refusing unverified wheels)"
    if [[ "${name##*/}" == continuon_trainer-* ]]; then
      found=$((found + 1))
      TARGET="$name"
    fi
  done
  ((found == 1)) || die "--wheelhouse: $dir must hold exactly one continuon_trainer wheel (found $found)"
  # Only what SHA256SUMS covers: no index, and no find-links or index from a pip config.
  PIP_ENV=(env -u PIP_FIND_LINKS -u PIP_INDEX_URL -u PIP_EXTRA_INDEX_URL -u PIP_CONSTRAINT
    PIP_CONFIG_FILE=/dev/null)
  PIP_SOURCE=(--no-index --find-links "$dir")
}
PIP_ENV=()
PIP_SOURCE=()
TARGET="$SRC"
if [[ -n "$WHEELHOUSE" ]]; then
  WHEELHOUSE="$(cd "$WHEELHOUSE" 2>/dev/null && pwd)" || die "--wheelhouse: no such directory"
  check_wheelhouse "$WHEELHOUSE"
fi

# pip_install ARGS...: pip install from the index, or offline from the wheelhouse; a package the
# wheelhouse lacks is named (pip's own message is long).
pip_install() {
  if ((DRY_RUN)) || [[ -z "$WHEELHOUSE" ]]; then
    run "${PIP_ENV[@]}" "$VENV/bin/python" -m pip install "${PIP_SOURCE[@]}" "$@"
    return
  fi
  local out missing
  out="$("${PIP_ENV[@]}" "$VENV/bin/python" -m pip install "${PIP_SOURCE[@]}" "$@" 2>&1)" && return
  printf '%s\n' "$out" | tail -20 >&2
  # pip names the package either directly or, under our constraints, as a conflict.
  missing="$(printf '%s\n' "$out" | sed -n -e 's/.*No matching distribution found for \([^ ]*\).*/\1/p' \
    -e 's/.* depends on \([A-Za-z0-9_.-]*\).*/\1/p' | head -1)"
  [[ -z "$missing" ]] || die "the wheelhouse $WHEELHOUSE has no wheel for $missing on this machine ($("$VENV/bin/python" -c 'import platform,sys; print(f"Python {sys.version_info[0]}.{sys.version_info[1]}, {platform.machine()}")')); rebuild it with deploy/wheelhouse.sh for this platform"
  die "pip install from the wheelhouse $WHEELHOUSE failed (output above)"
}

run install -d -m 0755 "$PREFIX"

if ((SYSTEM_TORCH)); then
  # Pin the exact torch the system interpreter already has (NVIDIA builds carry local version
  # labels such as 2.3.0a0+ebedce2) in a constraints file. pip then accepts the installed torch
  # for every requirement on it (ours, peft's, accelerate's) and, if any of them would need a
  # different one, stops with a conflict instead of downloading a CPU wheel over NVIDIA's.
  # (--no-deps plus a hand-kept list would not stop peft from pulling torch in transitively.)
  TORCH_VERSION="$("$PYTHON" -c 'import importlib.metadata as m; print(m.version("torch"))' 2>/dev/null)" ||
    die "--system-torch: $PYTHON has no torch installed; install NVIDIA's wheel first"
  PIN_FILE="$PREFIX/constraints-system-torch.txt"
  run "$PYTHON" -m venv --system-site-packages "$VENV"
  if ((!DRY_RUN)); then
    SEEN="$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("torch"))' 2>/dev/null)" || true
    [[ "$SEEN" == "$TORCH_VERSION" ]] ||
      die "$VENV does not see $PYTHON's torch $TORCH_VERSION (is --python itself a venv?)"
  fi
  run_to "$PIN_FILE" echo "torch==$TORCH_VERSION"
  pip_install -c "$PIN_FILE" "$TARGET"
  if ((!DRY_RUN)); then
    AFTER="$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("torch"))')"
    [[ "$AFTER" == "$TORCH_VERSION" ]] ||
      die "torch changed from $TORCH_VERSION to $AFTER inside the venv; remove $VENV and retry"
  fi
else
  # An existing venv is reused as it is (upgrade); a new one gets pip from ensurepip.
  [[ -x "$VENV/bin/python" ]] || run "$PYTHON" -m venv "$VENV"
  pip_install -c "$SRC/constraints.txt" "$TARGET"
fi
if [[ -n "$WHEELHOUSE" ]]; then
  # pip keeps an installed wheel of the same version ("already satisfied"), so a rebuilt
  # project wheel whose version was not bumped would leave the old code in place: replace the
  # project itself every time (its dependencies stay as resolved above).
  pip_install --no-deps --force-reinstall "$TARGET"
fi

run install -m 0644 "$SRC/README.md" "$PREFIX/README.md"
run ln -sfn "$VENV/bin/continuon-trainer" "$BIN_LINK"

# The user and group first: tmpfiles and the config copy chown to them.
run install -D -m 0644 "$SRC/deploy/systemd/continuon-trainer.sysusers" "$SYSUSERS_DEST"
run systemd-sysusers "$SYSUSERS_DEST"
run install -D -m 0644 "$SRC/deploy/systemd/continuon-trainer.tmpfiles" "$TMPFILES_DEST"
run systemd-tmpfiles --create "$TMPFILES_DEST"

if [[ -e "$ETC_CONFIG" ]]; then
  echo "keeping the existing $ETC_CONFIG (configs/$CONFIG_NAME.yaml not copied)"
else
  run install -m 0640 -o root -g continuon "$CONFIG_SRC" "$ETC_CONFIG"
fi
# Fail now, not at the first start, on a config the daemon would reject.
run_quiet "$VENV/bin/continuon-trainer" config check "$ETC_CONFIG" --root "$ROBOT_ROOT"

if [[ "$PREFIX" == "$UNIT_PREFIX" ]]; then
  run install -D -m 0644 "$SRC/deploy/systemd/continuon-trainer.service" "$UNIT_DEST"
else
  run_to "$UNIT_DEST" sed "s#$UNIT_PREFIX/venv/#$VENV/#g" \
    "$SRC/deploy/systemd/continuon-trainer.service"
  run chmod 0644 "$UNIT_DEST"
fi
if ((DRY_RUN)) || [[ -d /run/systemd/system ]]; then
  run systemctl daemon-reload
else
  echo "systemd is not running here: run 'systemctl daemon-reload' once it is"
fi

cat <<EOF

continuon-trainer is installed in $PREFIX (not started). Next:

  # once, unless continuonos already did it (this script never touches the robot's folders):
  # episodes readable by group continuon, the model folder writable by it
  sudo chgrp -R continuon $ROBOT_ROOT/rlds/episodes $ROBOT_ROOT/model
  sudo chmod -R g+rX $ROBOT_ROOT/rlds/episodes && sudo chmod -R g+rwX $ROBOT_ROOT/model
  sudo chmod g+s $ROBOT_ROOT/model

  sudoedit $ETC_CONFIG

  # a base policy, once: nothing trains without one (the journal says so if it is missing)
  sudo -u continuon-trainer continuon-trainer base init          # fresh weights, or:
  sudo -u continuon-trainer continuon-trainer base pretrain --episodes $ROBOT_ROOT/rlds/episodes

  sudo systemctl enable --now continuon-trainer
  journalctl -u continuon-trainer -f
  sudo -u continuon-trainer continuon-trainer status   # reads $ETC_CONFIG by itself
EOF
