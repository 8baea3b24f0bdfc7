"""Does a wheelhouse install on its target? Every requirement the target needs, from the project
down, evaluated with the TARGET's environment markers (pip download --platform evaluates them
on the building machine), must have a wheel of a fitting version; a requirement of an nvidia-* or
cuda-* package means a CUDA build of torch (GB of libraries a Pi cannot use) and is refused.

    python deploy/wheelhouse_check.py WHEELHOUSE MACHINE PYTHON_VERSION   # e.g. aarch64 3.11

Exit 0 when it installs, 1 with one line per problem on stderr. Uses pip's own copy of
``packaging``, so it runs with any Python that has pip, as deploy/wheelhouse.sh does.
"""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

from pip._vendor.packaging.requirements import Requirement
from pip._vendor.packaging.utils import canonicalize_name, parse_wheel_filename

ROOT = "continuon-trainer"
CUDA_PREFIXES = ("nvidia-", "cuda-")


def target_environment(machine: str, python_version: str) -> dict[str, str]:
    """The marker environment of a Linux CPython ``python_version`` on ``machine``."""
    return {
        "platform_machine": machine,
        "sys_platform": "linux",
        "platform_system": "Linux",
        "os_name": "posix",
        "python_version": python_version,
        "python_full_version": f"{python_version}.0",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
    }


def read_wheels(folder: Path) -> dict[str, tuple[str, list[Requirement]]]:
    """name -> (version, Requires-Dist) of every wheel in ``folder``."""
    wheels = {}
    for whl in sorted(folder.glob("*.whl")):
        name, version, _, _ = parse_wheel_filename(whl.name)
        with zipfile.ZipFile(whl) as z:
            meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
            lines = z.read(meta).decode().splitlines()
        reqs = [Requirement(ln.split(":", 1)[1]) for ln in lines if ln.startswith("Requires-Dist:")]
        wheels[name] = (str(version), reqs)
    return wheels


def problems(folder: Path, machine: str, python_version: str) -> list[str]:
    """What keeps the wheelhouse in ``folder`` from installing on the target; empty if nothing."""
    wheels = read_wheels(folder)
    if ROOT not in wheels:
        return [f"no {ROOT} wheel"]
    env = target_environment(machine, python_version)
    found: set[str] = set()
    seen: set[tuple[str, str]] = set()
    todo = [(ROOT, "")]
    while todo:
        name, extra = todo.pop()
        if (name, extra) in seen:
            continue
        seen.add((name, extra))
        for req in wheels[name][1]:
            if req.marker and not req.marker.evaluate({**env, "extra": extra}):
                continue
            dep = canonicalize_name(req.name)
            if dep.startswith(CUDA_PREFIXES):
                found.add(f"{name} needs {req} on {machine}: a CUDA build")
            elif dep not in wheels:
                found.add(f"{name} needs {req}: no wheel for it")
            elif not req.specifier.contains(wheels[dep][0], prereleases=True):
                found.add(f"{name} needs {req}: the wheelhouse has {dep} {wheels[dep][0]}")
            else:
                todo += [(dep, "")] + [(dep, e) for e in sorted(req.extras)]
    return sorted(found)


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: wheelhouse_check.py WHEELHOUSE MACHINE PYTHON_VERSION", file=sys.stderr)
        return 2
    found = problems(Path(argv[0]), argv[1], argv[2])
    for line in found:
        print(f"wheelhouse_check: {line}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
