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
# The CPU build of torch: PyPI's aarch64 torch wheels from 2.11 on are CUDA builds that pull in
# several GB of NVIDIA libraries a Pi cannot use; the CPU ones live on PyTorch's own index.
TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_WHEEL=""
TORCH_VERSION=""
PROJECT_ONLY=0

usage() {
  cat <<EOF
usage: $0 --out DIR [--platform TAG] [--python-version X.Y]
          [--torch-index URL | --torch-wheel FILE | --torch-version V]
       $0 --out DIR --project-only

  --out DIR            the wheelhouse (created; must be empty or absent)
  --platform TAG       target platform tag, e.g. manylinux_2_28_aarch64 (default: this machine;
                       then wheels are built with pip wheel, sdists included)
  --python-version X.Y target Python for --platform (default $PYVER; Bookworm has 3.11)
  --torch-index URL    where the CPU torch wheel for --platform comes from (default $TORCH_INDEX)
  --torch-wheel FILE   use this torch wheel for --platform instead (already downloaded)
  --torch-version V    take torch V for --platform from pip's own index (PyPI), where that
                       build is a CPU one: for aarch64 the last is 2.10.0 (2.11 and later pull
                       in CUDA); a CUDA build is refused whichever way it came
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
    --torch-version) TORCH_VERSION="${2:?--torch-version needs a version}"; shift 2 ;;
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

# pip takes a wheel for --platform only under exactly the tags given, unlike a native install:
# manylinux_2_28_aarch64 also admits manylinux_2_17 .. 2_27 and manylinux2014 wheels
# (pydantic_core, safetensors, tokenizers and watchfiles publish only those for aarch64).
platform_tags() {
  local arch minor m
  if [[ $PLATFORM =~ ^manylinux_2_([0-9]+)_(.+)$ ]]; then
    minor=${BASH_REMATCH[1]} arch=${BASH_REMATCH[2]}
    for ((m = minor; m >= 17; m--)); do echo "--platform=manylinux_2_${m}_${arch}"; done
    echo "--platform=manylinux2014_${arch}"
  else
    echo "--platform=$PLATFORM"
  fi
}

# Another platform: binary wheels only. pip evaluates environment markers for --platform
# against THIS machine (torch 2.10.0's `platform_machine == "x86_64"` CUDA packages included), so
# the set of packages is the native resolution, each fetched for the target by name and version
# (pure wheels built here cover the packages published only as sdists), and then checked against
# the target's own markers (check_target). torch comes from its CPU index, --torch-wheel or
# --torch-version.
cross_dependencies() {
  local tags torch_pin whl name dist ver pins=()
  mapfile -t tags < <(platform_tags)
  tags+=(--only-binary=:all: --python-version "$PYVER" --implementation cp --abi "cp${PYVER/./}")
  torch_pin="$(grep -E '^torch==' "$SRC/constraints.txt" | head -1)"
  [[ -n "$torch_pin" ]] || die "constraints.txt pins no torch"
  "${PIP[@]}" wheel -q -c "$SRC/constraints.txt" -w "$TMP/native" "$PROJECT_WHEEL"
  for whl in "$TMP"/native/*.whl; do
    name=$(basename "$whl") dist=${name%%-*} ver=${name#*-} ver=${ver%%-*}
    case $dist in continuon_trainer | torch) continue ;; esac
    if [[ $name == *-none-any.whl ]]; then cp "$whl" "$OUT/"; else pins+=("$dist==$ver"); fi
  done
  "${PIP[@]}" download -q --no-deps "${tags[@]}" -d "$OUT" "${pins[@]}" ||
    die "a dependency has no wheel for $PLATFORM, cp${PYVER/./} (pinned as resolved here: ${pins[*]})"
  if [[ -n "$TORCH_WHEEL" ]]; then
    cp "$TORCH_WHEEL" "$OUT/"
  elif [[ -n "$TORCH_VERSION" ]]; then
    "${PIP[@]}" download -q --no-deps "${tags[@]}" -d "$OUT" "torch==$TORCH_VERSION" ||
      die "no torch $TORCH_VERSION wheel for $PLATFORM, cp${PYVER/./} on pip's index"
  else
    "${PIP[@]}" download -q --no-deps "${tags[@]}" -d "$OUT" --index-url "$TORCH_INDEX" \
      "$torch_pin+cpu" ||
      die "no CPU torch wheel ($torch_pin+cpu, $PLATFORM, cp${PYVER/./}) from $TORCH_INDEX.
  Download it where that index is reachable and pass --torch-wheel FILE, or take PyPI's last
  CPU build for aarch64 with --torch-version 2.10.0."
  fi
}

# Every requirement the target needs is in the wheelhouse, and no CUDA package (see the script).
check_target() {
  local machine
  machine=$(uname -m)
  [[ $PLATFORM =~ ^manylinux_[0-9]+_[0-9]+_(.+)$ || $PLATFORM =~ ^manylinux[0-9]+_(.+)$ ]] &&
    machine=${BASH_REMATCH[1]}
  "$PYTHON" "$SRC/deploy/wheelhouse_check.py" "$OUT" "$machine" "$PYVER" ||
    die "the wheelhouse would not install on ${PLATFORM:-this machine} (above)"
}

write_checksums() {
  (cd "$OUT" && sha256sum -- *.whl >SHA256SUMS)
}

build_project_wheel
if ((PROJECT_ONLY)); then :; elif [[ -z "$PLATFORM" ]]; then native_dependencies; else cross_dependencies; fi
((PROJECT_ONLY)) || check_target
write_checksums
echo "wheelhouse: $OUT: $(wc -l <"$OUT/SHA256SUMS") wheels, $(du -sh "$OUT" | cut -f1)"
