"""The systemd deployment: unit, Jetson drop-in, sysusers.d, tmpfiles.d and deploy/install.sh.

Checked with the real systemd tools (Debian's ``systemd`` package; CI installs it) and a real
bash; nothing here needs a running systemd. ``systemd-analyze verify`` insists that ExecStart
names an existing executable, so the unit is verified from a copy whose ExecStart points at this
venv's ``continuon-trainer`` instead of /opt/continuon-trainer/venv/bin/continuon-trainer.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
UNIT = DEPLOY / "systemd" / "continuon-trainer.service"
JETSON = DEPLOY / "systemd" / "jetson-cuda.conf"
SYSUSERS = DEPLOY / "systemd" / "continuon-trainer.sysusers"
TMPFILES = DEPLOY / "systemd" / "continuon-trainer.tmpfiles"
INSTALL = DEPLOY / "install.sh"

INSTALLED_EXEC = "/opt/continuon-trainer/venv/bin/continuon-trainer"
MAX_EXPOSURE = 2.0

needs_systemd = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze not installed (apt-get install systemd; .ci/run does it)",
)


def service_section(text: str) -> dict[str, list[str]]:
    """Every key of the [Service] section with its values in order (keys may repeat)."""
    keys: dict[str, list[str]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
            continue
        if section == "[Service]":
            key, _, value = line.partition("=")
            keys.setdefault(key, []).append(value)
    return keys


def stage_unit(tmp_path: Path, *, extra: str = "", dropins: tuple[Path, ...] = ()) -> Path:
    """A copy of the unit that verify accepts here: ExecStart -> this venv's console script."""
    exe = Path(sys.executable).parent / "continuon-trainer"
    assert exe.is_file(), f"{exe} missing: install the package into the venv (make setup)"
    text = UNIT.read_text()
    assert text.count(INSTALLED_EXEC) == 1, "ExecStart no longer names the installed venv"
    unit = tmp_path / UNIT.name
    unit.write_text(text.replace(INSTALLED_EXEC, str(exe)) + extra)
    if dropins:
        d = tmp_path / f"{UNIT.name}.d"
        d.mkdir()
        for p in dropins:
            shutil.copy(p, d / p.name)
    return unit


def analyze(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", *map(str, args)], capture_output=True, text=True, timeout=120
    )


def exposure(unit: Path) -> float:
    """The "Overall exposure level" of ``systemd-analyze security --offline=yes``."""
    res = analyze("security", "--offline=yes", unit)
    m = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", res.stdout)
    assert m, f"no exposure line (rc={res.returncode}):\n{res.stdout}\n{res.stderr}"
    return float(m.group(1))


# --- the unit file ---------------------------------------------------------------------------


@needs_systemd
def test_unit_verifies_without_a_word(tmp_path: Path) -> None:
    res = analyze("verify", stage_unit(tmp_path))
    assert (res.returncode, res.stdout + res.stderr) == (0, "")


@needs_systemd
def test_verify_reports_a_bad_key(tmp_path: Path) -> None:
    # The check above is only worth something if verify speaks up on a mistake.
    unit = stage_unit(tmp_path, extra="RestartStepz=5\n")
    res = analyze("verify", unit)
    assert "RestartStepz" in res.stdout + res.stderr


@needs_systemd
def test_unit_exposure_is_at_most_2(tmp_path: Path) -> None:
    assert exposure(stage_unit(tmp_path)) <= MAX_EXPOSURE


@needs_systemd
def test_jetson_dropin_verifies_and_stays_hardened(tmp_path: Path) -> None:
    unit = stage_unit(tmp_path, dropins=(JETSON,))
    res = analyze("verify", unit)
    assert (res.returncode, res.stdout + res.stderr) == (0, "")
    assert exposure(unit) <= MAX_EXPOSURE


REQUIRED = [
    ("Type", "notify"),
    ("NotifyAccess", "main"),
    ("ExecStart", f"{INSTALLED_EXEC} run --config /etc/continuon/trainer.yaml"),
    ("ExecReload", "/bin/kill -HUP $MAINPID"),
    ("WatchdogSec", "60s"),
    ("Restart", "on-failure"),
    ("KillMode", "mixed"),
    ("OOMPolicy", "continue"),
    ("CPUWeight", "idle"),
    ("Nice", "19"),
    ("IOSchedulingClass", "idle"),
    ("Environment", "CONTINUON_TRAINER_ROOT=/opt/continuonos/brain"),
    ("Environment", "PYTHONUNBUFFERED=1"),
    ("StateDirectory", "continuon-trainer"),
    ("RuntimeDirectory", "continuon-trainer"),
    ("ConfigurationDirectory", "continuon"),
    ("ReadWritePaths", "-/opt/continuonos/brain/model"),
    ("ProtectSystem", "strict"),
    ("ProtectProc", "invisible"),
    ("IPAddressAllow", "localhost"),
]


@pytest.mark.parametrize(("key", "value"), REQUIRED, ids=[f"{k}={v}" for k, v in REQUIRED])
def test_unit_sets(key: str, value: str) -> None:
    assert value in service_section(UNIT.read_text()).get(key, [])


@pytest.mark.parametrize(
    ("key", "why"),
    [
        ("MemoryDenyWriteExecute", "torch JITs CPU kernels into executable memory"),
        ("ProcSubset", "psutil reads /proc/stat and /proc/meminfo"),
        ("PrivateNetwork", "the robot's status endpoint is on the host's loopback"),
        ("ReadOnlyPaths", "a bind mount pins the inode of a file the robot replaces"),
    ],
)
def test_unit_leaves_out(key: str, why: str) -> None:
    assert key not in service_section(UNIT.read_text()), why


def test_oom_order_puts_the_job_child_first() -> None:
    from daemon.supervisor import CHILD_OOM_SCORE_ADJ

    daemon_adj = int(service_section(UNIT.read_text())["OOMScoreAdjust"][-1])
    assert 0 < daemon_adj < CHILD_OOM_SCORE_ADJ


def test_stop_timeout_covers_the_child_grace() -> None:
    from trainer_core.config import JobConfig

    stop = service_section(UNIT.read_text())["TimeoutStopSec"][-1]
    assert stop.endswith("s")
    assert float(stop[:-1]) >= JobConfig().grace_s + 20, "grace + checkpoint save + margin"


# --- sysusers.d / tmpfiles.d -----------------------------------------------------------------


def conf_lines(path: Path) -> list[list[str]]:
    rows = []
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            rows.append(re.findall(r'"[^"]*"|\S+', line))
    return rows


def test_unit_user_group_and_dirs_match_sysusers_and_tmpfiles() -> None:
    unit = service_section(UNIT.read_text())
    users = {r[1] for r in conf_lines(SYSUSERS) if r[0] == "u"}
    groups = {r[1] for r in conf_lines(SYSUSERS) if r[0] == "g"}
    members = {(r[1], r[2]) for r in conf_lines(SYSUSERS) if r[0] == "m"}
    assert unit["User"] == ["continuon-trainer"] and "continuon-trainer" in users
    assert unit["Group"] == ["continuon"] and "continuon" in groups
    assert ("continuon-trainer", "continuon") in members
    dirs = {r[1]: r for r in conf_lines(TMPFILES)}
    state = dirs[f"/var/lib/{unit['StateDirectory'][0]}"]
    assert state[2:5] == [unit["StateDirectoryMode"][0], unit["User"][0], unit["Group"][0]]
    assert f"/etc/{unit['ConfigurationDirectory'][0]}" in dirs
    assert not [d for d in dirs if d.startswith("/opt/continuonos")], "robot folders are not ours"


@pytest.mark.skipif(shutil.which("systemd-sysusers") is None, reason="systemd-sysusers missing")
def test_sysusers_and_tmpfiles_apply_to_an_empty_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    if os.geteuid() != 0:
        # Without root, sysusers/tmpfiles cannot chown: check that the files parse and would
        # create what the unit expects.
        res = subprocess.run(
            ["systemd-sysusers", f"--root={root}", "--dry-run", SYSUSERS],
            capture_output=True,
            text=True,
        )
        assert res.returncode == 0, res.stderr
        assert "Creating user 'continuon-trainer'" in res.stdout + res.stderr
        return
    for cmd in (
        ["systemd-sysusers", f"--root={root}", SYSUSERS],
        ["systemd-tmpfiles", f"--root={root}", "--create", TMPFILES],
    ):
        res = subprocess.run(cmd, capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
    passwd = {line.split(":")[0]: line.split(":") for line in (root / "etc/passwd").open()}
    group = {line.split(":")[0]: line.split(":") for line in (root / "etc/group").open()}
    user = passwd["continuon-trainer"]
    assert user[5] == "/var/lib/continuon-trainer"
    assert "continuon-trainer" in group["continuon"][3].strip().split(",")
    state = (root / "var/lib/continuon-trainer").stat()
    assert (state.st_mode & 0o7777, state.st_uid, state.st_gid) == (
        0o750,
        int(user[2]),
        int(group["continuon"][2]),
    )
    assert (root / "etc/continuon").is_dir()


# --- install.sh ------------------------------------------------------------------------------


def install(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", INSTALL, *map(str, args)], capture_output=True, text=True, timeout=120
    )


def commands(out: str) -> list[str]:
    return [line[2:] for line in out.splitlines() if line.startswith("+ ")]


def test_install_sh_parses() -> None:
    res = subprocess.run(["bash", "-n", INSTALL], capture_output=True, text=True)
    assert (res.returncode, res.stderr) == (0, "")


def test_install_dry_run_lists_every_step_in_order(tmp_path: Path) -> None:
    res = install("--dry-run", "--config", "default", "--python", sys.executable)
    assert res.returncode == 0, res.stderr
    venv = "/opt/continuon-trainer/venv"
    expected = [
        "install -d -m 0755 /opt/continuon-trainer",
        f"{sys.executable} -m venv {venv}",
        f"{venv}/bin/python -m pip install -c {REPO}/constraints.txt {REPO}",
        f"ln -sfn {venv}/bin/continuon-trainer /usr/local/bin/continuon-trainer",
        "install -D -m 0644 ",
        "systemd-sysusers /etc/sysusers.d/continuon-trainer.conf",
        "install -D -m 0644 ",
        "systemd-tmpfiles --create /etc/tmpfiles.d/continuon-trainer.conf",
        f"{venv}/bin/continuon-trainer config check /etc/continuon/trainer.yaml",
        f"install -D -m 0644 {UNIT} /etc/systemd/system/continuon-trainer.service",
        "systemctl daemon-reload",
    ]
    cmds = commands(res.stdout)
    it = iter(cmds)
    for want in expected:
        assert any(c.startswith(want) for c in it), f"{want!r} missing or out of order:\n{cmds}"
    assert not [c for c in cmds if c.startswith("systemctl") and "daemon-reload" not in c]
    assert "systemctl enable --now continuon-trainer" in res.stdout
    assert "journalctl -u continuon-trainer -f" in res.stdout
    assert "continuon-trainer base init" in res.stdout  # nothing trains without a base
    assert "continuon-trainer base pretrain --episodes" in res.stdout


def test_install_dry_run_changes_nothing_and_follows_the_prefix(tmp_path: Path) -> None:
    prefix = tmp_path / "prefix"
    res = install("--dry-run", "--config", "default", "--prefix", prefix)
    assert res.returncode == 0, res.stderr
    assert not prefix.exists()
    unit_cmd = [c for c in commands(res.stdout) if "/etc/systemd/system/" in c]
    assert unit_cmd == [
        f"sed s#/opt/continuon-trainer/venv/#{prefix}/venv/#g {UNIT}"
        " > /etc/systemd/system/continuon-trainer.service",
        "chmod 0644 /etc/systemd/system/continuon-trainer.service",
    ]


def test_install_system_torch_pins_the_installed_torch(tmp_path: Path) -> None:
    prefix = tmp_path / "p"
    res = install(
        "--dry-run",
        "--system-torch",
        "--config",
        "default",
        "--python",
        sys.executable,
        "--prefix",
        prefix,
    )
    assert res.returncode == 0, res.stderr
    pin = prefix / "constraints-system-torch.txt"
    cmds = commands(res.stdout)
    assert f"{sys.executable} -m venv --system-site-packages {prefix}/venv" in cmds
    assert f"echo torch=={importlib.metadata.version('torch')} > {pin}" in cmds
    assert f"{prefix}/venv/bin/python -m pip install -c {pin} {REPO}" in cmds


def test_install_system_torch_without_torch_fails(tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", bare], check=True)
    res = install(
        "--dry-run", "--system-torch", "--config", "default", "--python", bare / "bin/python"
    )
    assert res.returncode != 0
    assert "has no torch installed" in res.stderr


def test_install_unknown_config_fails_naming_the_file() -> None:
    res = install("--dry-run", "--config", "no-such-robot")
    assert res.returncode != 0
    assert f"{REPO}/configs/no-such-robot.yaml" in res.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--frobnicate"], "unknown argument: --frobnicate"),
        (["--prefix", "relative/dir"], "--prefix must be an absolute path"),
    ],
)
def test_install_rejects_bad_arguments(args: list[str], message: str) -> None:
    res = install("--dry-run", "--config", "default", *args)
    assert res.returncode != 0
    assert message in res.stderr


# --- uninstall.sh ----------------------------------------------------------------------------

UNINSTALL = DEPLOY / "uninstall.sh"


def test_uninstall_dry_run_keeps_config_and_state_unless_purged() -> None:
    plain = subprocess.run(["bash", UNINSTALL, "--dry-run"], capture_output=True, text=True)
    purge = subprocess.run(
        ["bash", UNINSTALL, "--dry-run", "--purge"], capture_output=True, text=True
    )
    assert plain.returncode == purge.returncode == 0
    assert "systemctl disable --now continuon-trainer.service" in commands(plain.stdout)
    assert "rm -rf /opt/continuon-trainer" in commands(plain.stdout)
    assert "rm -f /usr/local/bin/continuon-trainer" in commands(plain.stdout)
    assert "/var/lib/continuon-trainer" not in plain.stdout
    assert "rm -rf /var/lib/continuon-trainer" in commands(purge.stdout)
    for out in (plain.stdout, purge.stdout):
        assert "continuonos" not in out, "the robot's folders are never removed"
        assert "userdel" not in out and "groupdel" not in out


def test_uninstall_refuses_a_prefix_that_is_not_an_install(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    res = subprocess.run(
        ["bash", UNINSTALL, "--dry-run", "--prefix", tmp_path], capture_output=True, text=True
    )
    assert res.returncode != 0
    assert "does not look like a continuon-trainer install" in res.stderr
