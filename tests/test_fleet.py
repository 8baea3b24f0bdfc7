"""The fleet path (issue 18, part 2): Flower rounds on loopback inside each robot's rules.

The loopback fleet test runs the real verbs as processes: one ``fleet serve`` and three
``fleet join`` on three robot roots sharing one base, each with its own synthetic episodes, all
on 127.0.0.1, two rounds that stop by themselves. The rest are quick checks of the optional
extra, the config and the weight layout.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import tomllib

import pytest

from daemon.config import ConfigError, FleetConfig, load_config
from tests.daemon_harness import CLI, REPO, deep_merge, make_root, write_mode
from tests.import_checks import assert_imports_without

needs_flwr = pytest.mark.skipif(
    importlib.util.find_spec("flwr") is None,
    reason="the fleet extra (flwr) is not installed: pip install -e '.[fleet]'",
)


def test_daemon_imports_neither_flwr_nor_torch():
    daemon = ["daemon.cli", "daemon.service", "daemon.status", "daemon.fleet"]
    assert_imports_without(daemon, ["flwr", "grpc", "torch"])


def test_core_install_does_not_pull_flower():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert not [d for d in project["dependencies"] if d.lower().startswith("flwr")]
    assert any(d.startswith("flwr") for d in project["optional-dependencies"]["fleet"])


@pytest.mark.parametrize("verb", ["join", "serve"])
def test_without_flower_the_verbs_say_how_to_install_it(tmp_path, verb):
    root, config = make_root(tmp_path)
    # flwr made unimportable in this interpreter, as on a core install
    code = (
        "import sys; sys.modules['flwr'] = None; from daemon.cli import main;"
        f"sys.exit(main(['fleet', '{verb}', '--root', {str(root)!r}, '--config', {str(config)!r}]))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 2, done.stderr
    assert "pip install 'continuon-trainer[fleet]'" in done.stderr
    assert not (root / "state" / "fleet.json").exists()


def test_addresses_default_to_loopback_and_remote_needs_tls(tmp_path):
    cfg, _ = load_config(None)
    assert cfg.fleet.server_address.startswith("127.0.0.1:")
    bad = tmp_path / "remote.yaml"
    bad.write_text("fleet: {server_address: 'fleet.example.org:9092'}\n")
    with pytest.raises(ConfigError, match=r"fleet: .*not loopback: set fleet.tls"):
        load_config(bad)
    ok = tmp_path / "tls.yaml"
    ok.write_text(
        "fleet:\n  server_address: 'fleet.example.org:9092'\n"
        "  tls: {ca_certificate: certs/ca.crt, server_certificate: certs/s.crt, "
        "server_private_key: certs/s.key}\n"
    )
    cfg, _ = load_config(ok, str(tmp_path))
    assert cfg.fleet.tls.ca_certificate == tmp_path / "certs" / "ca.crt"  # root-resolved
    assert FleetConfig(server_address="[::1]:9092").host == "[::1]"


def test_tls_files_go_to_flower_as_it_takes_them(tmp_path):
    from daemon.fleet import FleetError, robot_certificates, server_certificates

    for name in ("ca.crt", "s.crt", "s.key"):
        (tmp_path / name).write_bytes(name.encode())
    tls = FleetConfig(
        tls={
            "ca_certificate": tmp_path / "ca.crt",
            "server_certificate": tmp_path / "s.crt",
            "server_private_key": tmp_path / "s.key",
        }
    ).tls
    assert server_certificates(tls) == (b"ca.crt", b"s.crt", b"s.key")
    assert robot_certificates(tls) == b"ca.crt"
    assert server_certificates(FleetConfig().tls) is None
    half = FleetConfig(tls={"ca_certificate": tmp_path / "ca.crt"}).tls
    with pytest.raises(FleetError, match="server_certificate is not set"):
        server_certificates(half)
    gone = FleetConfig(tls={"ca_certificate": tmp_path / "nope.crt"}).tls
    with pytest.raises(FleetError, match=r"nope\.crt"):
        robot_certificates(gone)


@needs_flwr
def test_weights_that_do_not_fit_are_refused():
    import numpy as np

    from trainer_core.fleet_client import Layout, LayoutError

    state = {"b": np.zeros((2, 3), np.float32), "a": np.ones(4, np.float32)}
    layout = Layout.of(state)
    arrays = layout.to_list(state)
    assert [a.shape for a in arrays] == [(4,), (2, 3)]  # sorted names: one order fleet-wide
    assert layout.from_list(arrays).keys() == state.keys()
    assert layout.nbytes == 40
    with pytest.raises(LayoutError, match="1 tensors received"):
        layout.from_list(arrays[:1])
    with pytest.raises(LayoutError, match=r"b: shape \(3, 2\)"):
        layout.from_list([arrays[0], np.zeros((3, 2), np.float32)])
    with pytest.raises(LayoutError, match="non-finite"):
        layout.from_list([np.full(4, np.nan, np.float32), arrays[1]])


def test_status_shows_fleet_role_round_and_last_result(tmp_path):
    root, config = make_root(tmp_path)
    (root / "state").mkdir()
    (root / "state" / "fleet.json").write_text(
        json.dumps(
            {
                "role": "robot",
                "server_address": "127.0.0.1:9092",
                "round": 2,
                "rounds": 3,
                "phase": "waiting",
                "last_result": "round 2 update sent (6752 bytes)",
            }
        )
    )
    args = ["--root", str(root), "--config", str(config), "status"]
    done = subprocess.run([*CLI, *args], capture_output=True, text=True, cwd=REPO)
    assert "fleet      robot 127.0.0.1:9092 round 2/3 waiting: round 2 update sent" in done.stdout
    done = subprocess.run([*CLI, *args, "--json"], capture_output=True, text=True, cwd=REPO)
    assert json.loads(done.stdout)["fleet"]["robot"]["round"] == 2


@needs_flwr
@pytest.mark.slow
def test_loopback_fleet_of_three_robots(tmp_path):
    """Robots A and B (different data) improve on their own held-out episodes; A promotes the
    aggregate, B's stricter rule rejects it and B keeps its release; C's gate closes while it
    trains in round 1: it is dropped from both rounds and the rounds go on without it."""
    from tests.fleet_world import (
        current_release,
        factory_base,
        fleet_status,
        free_port,
        make_robot,
        seed_release,
        spawn,
        wait_for,
    )

    base = factory_base(tmp_path / "factory")
    port = free_port()
    steps = {"fleet": {"local_steps": 200, "round_timeout_s": 900, "max_run_s": 1500}}
    # the robots' calibrations differ from the base's data and from one another
    a = make_robot(tmp_path, "robot-a", base, port, steps, "--seed", "11", "--steering-bias", "0.2")
    b = make_robot(
        tmp_path,
        "robot-b",
        base,
        port,
        deep_merge(steps, {"promotion": {"min_improvement": 0.99}}),  # its own, stricter rule
        "--seed",
        "12",
        "--steering-bias",
        "0.3",
    )
    # C trains "forever" unless stopped: its gate is closed while it trains
    long = {"fleet": {"local_steps": 10**7}, "job": {"max_wall_time_s": 1200}}
    c_extra = deep_merge(steps, long)
    c = make_robot(
        tmp_path, "robot-c", base, port, c_extra, "--seed", "13", "--steering-bias", "0.25"
    )
    b_release = seed_release(b)
    b_manifest = (b / "model" / "manifest.json").read_text()
    server, _ = make_root(tmp_path / "server", {"fleet": {"server_address": f"127.0.0.1:{port}"}})
    procs = [spawn(server, "fleet", "serve", "--rounds", "2", "--min-clients", "3")]
    procs += [spawn(r, "fleet", "join") for r in (a, b, c)]
    try:
        wait_for(
            lambda: fleet_status(c).get("phase") == "training" and fleet_status(c).get("step"),
            900,
            "robot C training in round 1",
            procs,
        )
        write_mode(c, "manual_control")  # an operator takes the robot: the gate closes
        for p in procs:
            p.wait(timeout=1500)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    logs = {r.parent.name: (r / "fleet-join.log").read_text()[-3000:] for r in (a, b, c)}
    assert [p.returncode for p in procs] == [0, 0, 0, 1], logs

    rounds = fleet_status(server, "fleet-server.json")["log"]
    assert [r["round"] for r in rounds] == [1, 2]
    for r in rounds:
        assert r["trained"] == ["robot-a", "robot-b"]
        [declined] = r["declined"]
        assert declined["robot"] == "robot-c" and "teleop" in declined["reason"], declined
        assert set(r["heldout_mse"]) == {"robot-a", "robot-b"}
    assert "gate closed during training" in rounds[0]["declined"][0]["reason"]
    # Robots whose data differ both improve on their own held-out episodes.
    last = rounds[-1]["heldout_mse"]
    for robot in ("robot-a", "robot-b"):
        assert last[robot]["aggregate"] < last[robot]["base"], last

    sa, sb, sc = fleet_status(a), fleet_status(b), fleet_status(c)
    assert sa["verdict"] == "promoted", sa
    release = current_release(a)
    assert release == sa["release"]
    card = json.loads((a / "model" / "adapters" / "releases" / release / "card.json").read_text())
    assert card["fleet"]["round"] == 2
    # Only LoRA tensors travel: a fraction of the whole model.
    assert 0 < sa["update_bytes"] < sa["full_model_bytes"] / 2

    assert sb["verdict"] == "rejected", sb
    assert any("FAIL improvement" in reason for reason in sb["reasons"]), sb["reasons"]
    assert current_release(b) == b_release
    assert (b / "model" / "manifest.json").read_text() == b_manifest

    assert sc["verdict"] == "none" and current_release(c) is None
    [r1] = (c / "state" / "runs").glob("fleet-*-r1")
    assert json.loads((r1 / "result.json").read_text())["status"] == "preempted"
    assert not list((c / "state" / "runs").glob("fleet-*-r2"))  # declined before any child


@needs_flwr
def test_a_round_that_cannot_run_is_declined_not_raised():
    """Whatever goes wrong in a round (closed gate, weights of another layout, a failing child
    start) comes back as a non-OK answer naming the robot: an exception would end the client."""
    from types import SimpleNamespace

    import numpy as np
    from flwr.common import Code, FitIns, ndarrays_to_parameters

    from trainer_core.fleet_client import FleetClient, Layout, RoundOutcome

    fresh = {"w": np.zeros(3, np.float32)}
    model = SimpleNamespace(layout=Layout.of(fresh), fresh=fresh)
    gate: list[str | None] = [None]
    notes: list[dict] = []

    def train(rnd, weights):
        if rnd == 3:
            raise OSError(28, "No space left on device")
        return RoundOutcome({"w": weights["w"] + 1}, samples=5, metrics={"steps": 1})

    client = FleetClient("robot-x", model, lambda: gate[0], train, lambda **f: notes.append(f))
    ok = client.fit(FitIns(ndarrays_to_parameters([np.zeros(3, np.float32)]), {"server_round": 1}))
    assert ok.status.code == Code.OK and ok.num_examples == 5
    assert ok.metrics["robot"] == "robot-x" and ok.metrics["update_bytes"] == 12
    wrong = client.fit(FitIns(ndarrays_to_parameters([np.zeros(4, np.float32)]), {}))
    assert wrong.status.code != Code.OK and "robot-x: weights do not fit" in wrong.status.message
    broken = client.fit(FitIns(ok.parameters, {"server_round": 3}))
    assert "robot-x: local round could not run: OSError" in broken.status.message
    gate[0] = "teleop (manual_control)"
    closed = client.fit(FitIns(ok.parameters, {"server_round": 4}))
    assert closed.status.message == "robot-x: teleop (manual_control)"
    assert notes[-1]["phase"] == "declined"
