#!/bin/bash
# Build (or reuse) the VM image for the systemd suite: Debian 12 with systemd as PID 1 and
# journald, no network inside, and the project's dependencies (torch included) baked into
# /opt/continuon-trainer/venv at native speed in a chroot. Each stage is cached under a key
# of its recipe, so an unchanged recipe costs nothing.
#
#   usage: tests/vm/image.sh            prints the image folder on the last line of stdout
#   env:   CONTINUON_VMTEST_CACHE       cache folder (default /var/cache/continuon-vmtest as
#                                       root, else ${XDG_CACHE_HOME:-~/.cache}/continuon-vmtest)
#          VMTEST_NO_APT=1              never apt-get install the tools (fail instead)
#   exit:  0 built or cached; 3 it cannot be built on this machine (tools missing, not root:
#          test_vm.py skips, saying why); anything else is a failure
#
# Stages: tools (apt: qemu-system-x86 mmdebstrap e2fsprogs) -> base (mmdebstrap tree, kernel,
# initrd; key: customize.sh, guest/*, package list) -> wheelhouse (deploy/wheelhouse.sh; key:
# pyproject.toml, constraints.txt, wheelhouse.sh) -> image (base + venv of every dependency;
# key: base key + the dependencies' wheel file names).
# Safe on a host that is not booted with systemd: mmdebstrap's package scripts run in a chroot
# without /run/systemd/system and with a policy-rc.d that refuses to start services; the
# venv bake runs the guest's python3 in a chroot with nothing mounted.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
SRC=$(cd "$HERE/../.." && pwd)
if ((EUID == 0)); then DEFAULT_CACHE=/var/cache/continuon-vmtest; else DEFAULT_CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/continuon-vmtest; fi
C=${CONTINUON_VMTEST_CACHE:-$DEFAULT_CACHE}
VENV=/opt/continuon-trainer/venv
BASE_PKGS=systemd,systemd-sysv,udev,dbus,python3,python3-venv,procps,kmod,linux-image-cloud-amd64,initramfs-tools
log() { echo "image.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }
cannot() { log "cannot build here: $*"; exit 3; }
key_of() { sha256sum | cut -c1-16; }
now() { date +%s; }

ensure_tools() {
  local missing=()
  for t in qemu-system-x86_64 mmdebstrap mkfs.ext4 debugfs; do command -v "$t" >/dev/null || missing+=("$t"); done
  ((${#missing[@]})) || return 0
  ((EUID == 0)) && [[ ${VMTEST_NO_APT:-0} != 1 ]] && command -v apt-get >/dev/null ||
    cannot "missing ${missing[*]}: apt-get install --no-install-recommends qemu-system-x86 mmdebstrap e2fsprogs"
  log "installing qemu-system-x86 mmdebstrap e2fsprogs"
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    qemu-system-x86 mmdebstrap e2fsprogs >/dev/null
}

build_base() {
  local key
  key=$( (cd "$HERE" && cat customize.sh guest/*; echo "$BASE_PKGS") | key_of)
  BASE_KEY=$key
  [[ "$(cat "$C/base/key" 2>/dev/null)" == "$key" ]] && { log "base image cached ($key)"; return; }
  ((EUID == 0)) || cannot "building the base image needs root (mmdebstrap --mode=root, chroot)"
  log "building the base tree with mmdebstrap (about 1-2 min)"
  local t0 src=()
  t0=$(now)
  rm -rf --one-file-system "$C/base"
  mkdir -p "$C/base"
  [[ -f /etc/apt/sources.list.d/debian.sources ]] && src=(/etc/apt/sources.list.d/debian.sources)
  mmdebstrap --mode=root --variant=apt --include="$BASE_PKGS" \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-include=/usr/share/locale/locale.alias' \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --customize-hook="\"$HERE/customize.sh\" \"\$1\"" \
    bookworm "$C/base/rootfs" "${src[@]}" >"$C/base/build.log" 2>&1 ||
    { tail -30 "$C/base/build.log" >&2; die "mmdebstrap failed (log: $C/base/build.log)"; }
  cp -L "$(ls "$C"/base/rootfs/boot/vmlinuz-* | sort -V | tail -1)" "$C/base/vmlinuz"
  cp -L "$(ls "$C"/base/rootfs/boot/initrd.img-* | sort -V | tail -1)" "$C/base/initrd.img"
  echo "$key" >"$C/base/key"
  log "base built in $(($(now) - t0)) s"
}

build_wheelhouse() {
  local key
  key=$( (cd "$SRC" && cat pyproject.toml constraints.txt deploy/wheelhouse.sh) | key_of)
  [[ "$(cat "$C/wheelhouse.key" 2>/dev/null)" == "$key" && -f "$C/wheelhouse/SHA256SUMS" ]] &&
    { log "wheelhouse cached ($key)"; return; }
  rm -rf "$C/wheelhouse" "$C/wheelhouse.key"
  PYTHON=${PYTHON:-$(command -v python3.11 || echo python3)} "$SRC/deploy/wheelhouse.sh" --out "$C/wheelhouse" >&2
  echo "$key" >"$C/wheelhouse.key"
}

# The venv gets every dependency but not the project: each VM run installs the project's own
# wheel through deploy/install.sh --wheelhouse, as an operator would.
bake_image() {
  local key t0 tree=$C/bake-tree
  # Keyed by the dependencies' file names (name, version, tags), not their bytes: a rebuilt
  # sdist wheel of the same version differs in its zip timestamps only.
  key=$( (echo "$BASE_KEY"; awk '$2 !~ /^continuon_trainer-/ { print $2 }' "$C/wheelhouse/SHA256SUMS") | key_of)
  [[ "$(cat "$C/image/key" 2>/dev/null)" == "$key" && -f "$C/image/rootfs.img" ]] &&
    { log "image cached ($key)"; return; }
  ((EUID == 0)) || cannot "baking the image needs root (chroot)"
  log "baking the dependencies into the image (chroot, native speed)"
  t0=$(now)
  rm -rf --one-file-system "$tree" "$C/image"
  mkdir -p "$C/image"
  cp -a "$C/base/rootfs" "$tree"
  mkdir -p "$tree/tmp/wh"
  cp -a "$C/wheelhouse/." "$tree/tmp/wh/"
  local chr=(env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 PIP_NO_CACHE_DIR=1
    PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_CONFIG_FILE=/dev/null chroot "$tree")
  "${chr[@]}" /usr/bin/python3 -m venv "$VENV"
  local whl
  whl=$(basename "$(ls "$C"/wheelhouse/continuon_trainer-*.whl)")
  "${chr[@]}" "$VENV/bin/pip" install -q --no-index --find-links /tmp/wh "/tmp/wh/$whl"
  "${chr[@]}" "$VENV/bin/pip" uninstall -q -y continuon-trainer
  rm -rf "$tree/tmp/wh" "$tree/root/.cache"
  mkfs.ext4 -q -F -L ctvm-root -d "$tree" "$C/image/rootfs.img" 6G
  rm -rf --one-file-system "$tree"
  cp "$C/base/vmlinuz" "$C/base/initrd.img" "$C/image/"
  echo "$key" >"$C/image/key"
  log "image baked in $(($(now) - t0)) s ($(du -h "$C/image/rootfs.img" | cut -f1) on disk)"
}

mkdir -p "$C"
exec 9>"$C/.lock"
flock 9
ensure_tools
build_base
build_wheelhouse
bake_image
echo "$C/image"
