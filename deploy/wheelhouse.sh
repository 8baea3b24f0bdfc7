#!/usr/bin/env bash
# Build, on a connected machine, a wheelhouse for installing continuon-trainer on a robot that
# has no network: the project's wheel, a wheel of every dependency for the target, and a
# SHA256SUMS list that `deploy/install.sh --wheelhouse DIR` checks before it installs anything.
#
#   deploy/wheelhouse.sh --out DIR                          # this machine (x86_64 tests, a VM)
#   deploy/wheelhouse.sh --out DIR --platform manylinux_2_28_aarch64   # Pi 5, Bookworm, cp311
#
# Copy DIR and this checkout to the robot (USB stick, scp) and run there:
#   sudo deploy/install.sh --wheelhouse DIR
set -euo pipefail

SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT=""
PLATFORM=""
PYVER=3.11
PYTHON=${PYTHON:-python3}
# The CPU build of torch: PyPI's aarch64 torch wheels are CUDA builds that pull in several GB
# of NVIDIA libraries a Pi cannot use; the CPU ones live on PyTorch's own index.
TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_WHEEL=""
PROJECT_ONLY=0

usage() {
  cat <<EOF
usage: $0 --out DIR [--platform TAG] [--python-version X.Y] [--torch-index URL] [--torch-wheel FILE]
       $0 --out DIR --project-only

  --out DIR            the wheelhouse (created; must be empty or absent)
  --platform TAG       target platform tag, e.g. manylinux_2_28_aarch64 (default: this machine;
                       then wheels are built with pip wheel, sdists included)
  --python-version X.Y target Python for --platform (default $PYVER; Bookworm has 3.11)
  --torch-index URL    where the CPU torch wheel for --platform comes from (default $TORCH_INDEX)
  --torch-wheel FILE   use this torch wheel for --platform instead (already downloaded)
  --project-only       only the project's wheel (an upgrade where the dependencies are in place)
EOF
}
die() {
  echo "wheelhouse.sh: error: $*" >&2
  exit 1
}

while (($#)); do
  case "$1" in
    --out) OUT="${2:?--out needs a directory}"; shift 2 ;;
    --platform) PLATFORM="${2:?--platform needs a tag}"; shift 2 ;;
    --python-version) PYVER="${2:?--python-version needs X.Y}"; shift 2 ;;
    --torch-index) TORCH_INDEX="${2:?--torch-index needs a URL}"; shift 2 ;;
    --torch-wheel) TORCH_WHEEL="$(realpath "${2:?--torch-wheel needs a file}")"; shift 2 ;;
    --project-only) PROJECT_ONLY=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done
[[ -n "$OUT" ]] || { usage >&2; die "--out DIR is required"; }
[[ ! -e "$OUT" || -z "$(ls -A "$OUT")" ]] || die "$OUT is not empty"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
PIP=("$PYTHON" -m pip)

# From a clean copy: setuptools reuses an in-tree build/ folder, which can carry stale files.
build_project_wheel() {
  mkdir "$TMP/src"
  tar -C "$SRC" --exclude=./.git --exclude=./.venv --exclude=./build --exclude='*.egg-info' \
    --exclude=__pycache__ --exclude=./demo-root --exclude=./bench/out -cf - . | tar -C "$TMP/src" -xf -
  "${PIP[@]}" wheel -q --no-deps -w "$OUT" "$TMP/src"
  PROJECT_WHEEL="$(ls "$OUT"/continuon_trainer-*.whl)"
}

# This machine: pip wheel resolves with the pinned torch and builds sdist-only packages
# (sdnotify) into pure wheels.
native_dependencies() {
  "${PIP[@]}" wheel -q -c "$SRC/constraints.txt" -w "$OUT" "$PROJECT_WHEEL"
}

# Another platform: binary wheels only, resolved for the target. Pure wheels built here first
# cover the packages published only as sdists; the CPU torch wheel comes from its own index.
cross_dependencies() {
  local tags=(--only-binary=:all: --platform "$PLATFORM" --python-version "$PYVER"
    --implementation cp --abi "cp${PYVER/./}")
  local torch_pin torch_file torch_version
  torch_pin="$(grep -E '^torch==' "$SRC/constraints.txt" | head -1)"
  [[ -n "$torch_pin" ]] || die "constraints.txt pins no torch"
  "${PIP[@]}" wheel -q -c "$SRC/constraints.txt" -w "$TMP/native" "$PROJECT_WHEEL"
  cp "$TMP"/native/*-none-any.whl "$OUT/"
  rm -f "$OUT"/torch-*.whl
  if [[ -n "$TORCH_WHEEL" ]]; then
    cp "$TORCH_WHEEL" "$OUT/"
  else
    "${PIP[@]}" download -q --no-deps "${tags[@]}" -d "$OUT" --index-url "$TORCH_INDEX" \
      "$torch_pin+cpu" ||
      die "no CPU torch wheel ($torch_pin+cpu, $PLATFORM, cp${PYVER/./}) from $TORCH_INDEX.
  Download it where that index is reachable and pass --torch-wheel FILE. (PyPI's own aarch64
  torch is a CUDA build whose dependencies are GB of NVIDIA libraries; it is not used.)"
  fi
  torch_file="$(basename "$(ls "$OUT"/torch-*.whl)")"
  torch_version="${torch_file#torch-}"
  torch_version="${torch_version%%-*}"
  grep -v '^torch==' "$SRC/constraints.txt" >"$TMP/constraints.txt" || true
  echo "torch==$torch_version" >>"$TMP/constraints.txt"
  "${PIP[@]}" download -q "${tags[@]}" -d "$OUT" --find-links "$OUT" \
    -c "$TMP/constraints.txt" "$PROJECT_WHEEL"
}

write_checksums() {
  (cd "$OUT" && sha256sum -- *.whl >SHA256SUMS)
}

build_project_wheel
if ((PROJECT_ONLY)); then :; elif [[ -z "$PLATFORM" ]]; then native_dependencies; else cross_dependencies; fi
write_checksums
echo "wheelhouse: $OUT: $(wc -l <"$OUT/SHA256SUMS") wheels, $(du -sh "$OUT" | cut -f1)"
