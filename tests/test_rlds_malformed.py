"""A corpus of malformed episodes, each rejected with its specific reason (file, line/step/record,
field), never an uncaught exception; and one folder holding all of them beside valid episodes,
where a scan rejects exactly the bad ones and still ingests the good ones."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from daemon.ingest import scan
from daemon.ledger import Ledger
from tests.rlds_writers import (
    continuonos_step,
    example,
    frame,
    step,
    tfrecord_bytes,
    write_a,
    write_b,
    write_tfrecord,
)
from trainer_core.config import IngestConfig
from trainer_core.rlds import EpisodeError, read_episode

LIMITS = IngestConfig(max_file_mb=1, max_steps=50, max_line_bytes=4096, max_depth=32, settle_s=0)
NOW = 2_000_000_000.0  # far after every mtime: everything has settled

Builder = Callable[[Path], str]


def _a(steps: list, **kw) -> Builder:
    def build(folder: Path, name: str) -> None:
        write_a(folder, name, steps, **kw)

    return build


def _b(doc) -> Builder:
    def build(folder: Path, name: str) -> None:
        write_b(folder, name, doc)

    return build


def _tf(data: bytes) -> Builder:
    def build(folder: Path, name: str) -> None:
        (folder / name).write_bytes(data)

    return build


def _ok_steps(n: int = 3) -> list[dict]:
    return [step(i) for i in range(n)]


def _raw_line(text: str, at: int = 1, n: int = 3) -> list:
    steps: list = _ok_steps(n)
    steps[at] = text
    return steps


def _with(i: int, n: int = 3, **fields) -> list:
    steps = _ok_steps(n)
    steps[i] = {**steps[i], **fields}
    return steps


def _deep(depth: int) -> str:
    return "[" * depth + "]" * depth


_GOOD_TF = tfrecord_bytes([continuonos_step(i, 3) for i in range(3)])
_REC0 = len(frame(example(continuonos_step(0, 3))))


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]


def _bad_length_keeping_crc(data: bytes) -> bytes:
    from trainer_core.rlds.crc32c import masked_crc32c

    length = struct.pack("<Q", 10**9)
    return length + struct.pack("<I", masked_crc32c(length)) + data[12:]


def _no_metadata(folder: Path, name: str) -> None:
    (folder / name / "steps").mkdir(parents=True)
    (folder / name / "steps" / "000000.jsonl").write_text(json.dumps(step(0)) + "\n")


def _no_shards(folder: Path, name: str) -> None:
    write_a(folder, name, [step(0)])
    (folder / name / "steps" / "000000.jsonl").unlink()


def _empty_shard(folder: Path, name: str) -> None:
    write_a(folder, name, [step(0)])
    (folder / name / "steps" / "000000.jsonl").write_bytes(b"")


def _truncated(folder: Path, name: str) -> None:
    write_a(folder, name, _ok_steps())
    shard = folder / name / "steps" / "000000.jsonl"
    shard.write_bytes(shard.read_bytes()[:-25])


def _symlink_out(folder: Path, name: str) -> None:
    outside = folder.parent / "outside"
    outside.mkdir(exist_ok=True)
    write_a(outside, "real", _ok_steps())
    os.symlink(outside / "real", folder / name)


def _inner_symlink_out(folder: Path, name: str) -> None:
    outside = folder.parent / "outside2"
    outside.mkdir(exist_ok=True)
    (outside / "000000.jsonl").write_text(json.dumps(step(0)) + "\n")
    write_a(folder, name, [step(0)])
    (folder / name / "steps" / "000000.jsonl").unlink()
    os.symlink(outside / "000000.jsonl", folder / name / "steps" / "000000.jsonl")


def _gz_truncated(folder: Path, name: str) -> None:
    (folder / name).write_bytes(gzip.compress(_GOOD_TF)[:-30])


# (entry name, builder, expected substring of the reason, caught only by the folder scan)
CASES: list[tuple[str, Builder, str, bool]] = [
    # -- layout A structure and JSONL
    ("truncated_jsonl", _truncated, "steps/000000.jsonl: line 3: not valid JSON", False),
    ("junk_line", _a(_raw_line("{not json")), "line 2: not valid JSON", False),
    ("binary_line", _a(_raw_line('{"a": "\udcff\udcfe"}')), "line 2: not UTF-8 text", False),
    ("step_is_list", _a(_raw_line("[1, 2]")), "line 2: not an object (got list)", False),
    ("missing_metadata", _no_metadata, "metadata.json: missing", False),
    ("metadata_list", _a(_ok_steps(), metadata="[]"), "metadata.json: top level is not", False),
    ("metadata_junk", _a(_ok_steps(), metadata="{"), "metadata.json: not valid JSON", False),
    ("no_shards", _no_shards, "steps/: no *.jsonl shards", False),
    ("empty_shard", _empty_shard, "steps/: no steps", False),
    ("empty_episode_id", _a(_ok_steps(), metadata={"episode_id": ""}), "episode_id: not a", False),
    # -- numbers
    (
        "nan_literal",
        _a(_raw_line('{"observation": {}, "action": {"command": [0.1, NaN]}}')),
        "line 2: action.command[1]: not a finite number (got NaN)",
        False,
    ),
    (
        "inf_in_observation",
        _a(_with(0, observation={"robot_state": {"speed": "x"}, "v": 1e999})),
        "line 1: observation.v: not a finite number (got Infinity)",
        False,
    ),
    (
        "neg_infinity_literal",
        _a(_raw_line('{"observation": {"a": -Infinity}, "action": {"command": [1, 2]}}', at=2)),
        "line 3: observation.a: not a finite number (got -Infinity)",
        False,
    ),
    (
        "nan_string_command",
        _a(_with(1, action={"command": [0.1, "NaN"]})),
        'line 2: action.command[1]: not a finite number (got "NaN")',
        False,
    ),
    (
        "string_number_command",
        _a(_with(0, action={"command": ["0.5", 0.1]})),
        'line 1: action.command[0]: not a number (got "0.5")',
        False,
    ),
    (
        "null_in_command",
        _a(_with(2, action={"command": [0.5, None]})),
        "line 3: action.command[1]: not a number (got null)",
        False,
    ),
    (
        "command_is_string",
        _a(_with(0, action={"command": "fast"})),
        'action.command: not a number (got "fast")',
        False,
    ),
    (
        "named_action_as_string",
        _a([{"observation": {"pose": [0, 0, 0]}, "action": {"steering": "0.1", "throttle": 0.2}}]),
        'line 1: action.steering: not a number (got "0.1")',
        False,
    ),
    (
        "nan_string_metadata",
        _a(_with(1, step_metadata={"human_distance_m": "nan"})),
        'line 2: step_metadata.human_distance_m: not a finite number (got "nan")',
        False,
    ),
    (
        "string_in_joint_positions",
        _a(_with(1, observation={"robot_state": {"joint_positions": [0.1, "a"]}})),
        'line 2: observation.robot_state.joint_positions[1]: not a number (got "a")',
        False,
    ),
    (
        "pose_not_list",
        _a([{"observation": {"pose": "here"}, "action": {"lift": 0.1}}]),
        "line 1: observation.pose: not a list of numbers",
        False,
    ),
    ("reward_string", _a(_with(1, reward="1")), 'line 2: reward: not a number (got "1")', False),
    # -- actions
    (
        "action_missing",
        _a(_with(0, action=None)),
        "line 1: action: missing or not an object",
        False,
    ),
    (
        "observation_missing",
        _a(_with(2, observation=[1])),
        "line 3: observation: missing or not an object",
        False,
    ),
    (
        "action_not_numeric",
        _a(_with(1, action={"source": "vla", "annotation": {"x": 1}})),
        "line 2: action: nothing numeric",
        False,
    ),
    (
        "action_size_changes",
        _a(_with(2, action={"command": [0.1, 0.2, 0.3]})),
        "line 3: action.command: has 3 values, step 0 had 2",
        False,
    ),
    (
        "action_fields_change",
        _a(
            [
                {"observation": {}, "action": {"steering": 0.1, "throttle": 0.1}},
                {"observation": {}, "action": {"steering": 0.1}},
            ]
        ),
        "line 2: action: fields changed from step 0 (missing ['action.throttle']",
        False,
    ),
    # -- RLDS flags
    (
        "is_first_in_middle",
        _a(_with(2, n=4, is_first=True)),
        "line 3: is_first: true on a step that is not the first",
        False,
    ),
    (
        "is_last_in_middle",
        _a(_with(1, is_last=True)),
        "line 2: is_last: true on a step that is not the last",
        False,
    ),
    (
        "is_last_false_at_end",
        _a(_with(2, is_last=False)),
        "line 3: is_last: false on the last step",
        False,
    ),
    (
        "is_terminal_in_middle",
        _a(_with(0, is_terminal=True)),
        "line 1: is_terminal: true on a step that is not the last",
        False,
    ),
    ("is_first_not_bool", _a(_with(0, is_first="yes")), "line 1: is_first: not a boolean", False),
    # -- limits
    (
        "deep_nesting_line",
        _a(_raw_line('{"observation": {"x": ' + _deep(40) + "}}")),
        "line 2: nested deeper than 32 levels",
        False,
    ),
    (
        "huge_line",
        _a(_raw_line(json.dumps(step(1, note="x" * 5000)))),
        "steps/000000.jsonl: line 2: longer than 4096 bytes",
        False,
    ),
    ("too_many_steps", _a(_ok_steps(51)), "line 51: more than 50 steps", False),
    # -- layout B
    ("b_zero_bytes.json", _b(b""), "b_zero_bytes.json: empty file", False),
    ("b_binary_junk.json", _b(b"\xff\xfe\x00\x01garbage\x00"), "not UTF-8 text", False),
    (
        "b_no_metadata.json",
        _b({"steps": _ok_steps()}),
        "b_no_metadata.json: metadata: missing",
        False,
    ),
    (
        "b_steps_not_list.json",
        _b({"metadata": {}, "steps": {}}),
        "steps: missing or not a list",
        False,
    ),
    ("b_empty_steps.json", _b({"metadata": {}, "steps": []}), "no steps", False),
    (
        "b_nan_step.json",
        _b(
            '{"metadata": {}, "steps": [{"observation": {}, "action": '
            '{"command": [1]}}, {"observation": {"x": NaN}, "action": '
            '{"command": [1]}}]}'
        ),
        "b_nan_step.json: step 1: observation.x: not a finite number (got NaN)",
        False,
    ),
    (
        "b_deep.json",
        _b('{"metadata": {}, "steps": ' + _deep(100_000) + "}"),
        "b_deep.json: nested deeper than 32 levels",
        False,
    ),
    (
        "b_too_big.json",
        _b({"metadata": {}, "steps": _ok_steps(), "pad": "x" * 1_100_000}),
        "over the 1 MB limit",
        False,
    ),
    ("b_top_list.json", _b("[]"), "top level is not an object", False),
    # -- other shapes
    (
        "v2_tool_trace.json",
        _b(
            {
                "metadata": {"schema_version": "2.0", "episode_id": "t"},
                "steps": [{"observation": {}, "action": {"action_type": "tool", "name": "search"}}],
            }
        ),
        "tool-use trace, no numeric action",
        False,
    ),
    (
        "adapter_promotion_20240101.json",
        _b({"metadata": {}, "steps": _ok_steps()}),
        "promotion audit record, not training data",
        False,
    ),
    # -- layout D
    (
        "bad_data_crc.tfrecord",
        _tf(_flip(_GOOD_TF, _REC0 + 40)),
        f"bad_data_crc.tfrecord: record 1 at byte {_REC0}: data CRC mismatch",
        False,
    ),
    (
        "bad_length_crc.tfrecord",
        _tf(_flip(_GOOD_TF, _REC0 + 2)),
        f"record 1 at byte {_REC0}: length CRC mismatch",
        False,
    ),
    (
        "bad_length_field.tfrecord",
        _tf(_bad_length_keeping_crc(_GOOD_TF)),
        "record 0 at byte 0: length 1000000000 runs past the end of the file",
        False,
    ),
    ("truncated.tfrecord", _tf(_GOOD_TF[:-10]), "record 2 at byte", False),
    ("truncated_header.tfrecord", _tf(_GOOD_TF + b"\x01\x02\x03"), "record 3 at byte", False),
    ("zero_bytes.tfrecord", _tf(b""), "zero_bytes.tfrecord: no records (empty file)", False),
    ("junk.tfrecord", _tf(os.urandom(64)), "junk.tfrecord: record 0 at byte 0:", False),
    (
        "not_protobuf.tfrecord",
        _tf(frame(b"\x0a\xff\xff\xff\xff\x0f")),
        "record 0: not a tf.train.Example",
        False,
    ),
    (
        "step_gap.tfrecord",
        _tf(
            tfrecord_bytes(
                [continuonos_step(i, 3, step_index=("int64", [i * 2])) for i in range(3)]
            )
        ),
        "record 1: step_index: 2, expected 1",
        False,
    ),
    (
        "nan_float_list.tfrecord",
        _tf(
            tfrecord_bytes(
                [
                    continuonos_step(
                        0,
                        1,
                        action_command=("float", [float("nan")]),
                        action=("bytes", ['{"source": "t"}']),
                    )
                ]
            )
        ),
        "record 0: action_command[0]: not a finite number",
        False,
    ),
    (
        "nan_json_feature.tfrecord",
        _tf(tfrecord_bytes([continuonos_step(0, 1, action=("bytes", ['{"command": [NaN]}']))])),
        "record 0: action.command[0]: not a finite number (got NaN)",
        False,
    ),
    (
        "two_episodes.tfrecord",
        _tf(tfrecord_bytes([continuonos_step(0, 2), continuonos_step(1, 2, episode_id="other")])),
        "record 1: episode_id 'other' differs from record 0's 'tf_ep'",
        False,
    ),
    (
        "rlds_uneven.tfrecord",
        _tf(
            frame(
                example({"steps/action": ("float", [1.0] * 5), "steps/is_first": ("int64", [1, 0])})
            )
        ),
        "steps/action: 5 values do not split evenly into 2 steps",
        False,
    ),
    ("truncated.tfrecord.gz", _gz_truncated, "truncated.tfrecord.gz:", False),
    # -- folder level
    ("symlink_out", _symlink_out, "leaves the episodes folder (refused)", True),
    ("inner_symlink_out", _inner_symlink_out, "steps/000000.jsonl: symlink to", True),
]


@pytest.mark.parametrize(
    ("name", "build", "reason"),
    [(n, b, r) for n, b, r, folder_only in CASES if not folder_only],
    ids=[c[0] for c in CASES if not c[3]],
)
def test_reader_rejects_with_specific_reason(
    tmp_path: Path, name: str, build: Builder, reason: str
) -> None:
    folder = tmp_path / "episodes"
    folder.mkdir()
    build(folder, name)
    with pytest.raises(EpisodeError) as err:
        read_episode(folder / name, LIMITS)
    assert reason in str(err.value)


def test_corpus_is_large_enough() -> None:
    assert len(CASES) >= 40
    assert len({c[0] for c in CASES}) == len(CASES)


def _write_valid_neighbours(folder: Path, samples: Path) -> list[str]:
    for src in (samples / "episodes").iterdir():
        dest = folder / src.name
        if src.is_dir():
            shutil.copytree(src, dest)
        else:
            shutil.copy2(src, dest)
    for src in (samples / "tfrecord_raw").iterdir():
        shutil.copy2(src, folder / ("raw_" + src.name))
    write_a(folder, "valid_a", _ok_steps(5))
    write_tfrecord(folder, "valid.tfrecord", n=4, episode_id="valid_tf")
    (folder / "valid_gz.tfrecord.gz").write_bytes(
        gzip.compress(tfrecord_bytes([continuonos_step(i, 2, episode_id="gz") for i in range(2)]))
    )
    (folder / ".hidden.json").write_text("not an episode: ignored")
    (folder / "partial.json.tmp").write_text("{")
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith((".", "partial")))


def test_scan_of_one_folder_rejects_each_and_keeps_valid_neighbours(
    tmp_path: Path, samples: Path
) -> None:
    folder = tmp_path / "episodes"
    folder.mkdir()
    for name, build, _, _ in CASES:
        build(folder, name)
    valid = _write_valid_neighbours(folder, samples)
    with Ledger.open(tmp_path / "state" / "ledger.sqlite3") as ledger:
        report = scan(folder, ledger, LIMITS, eval_fraction=0.25, now=NOW)
        reasons = dict(ledger.rejected(limit=1000))
        rows = ledger.valid_episodes("train") + ledger.valid_episodes("eval")
    assert report.error is None
    for name, _, reason, _ in CASES:
        assert reason in reasons.pop(str(folder / name)), name
    assert reasons == {}
    valid_names = sorted(Path(r.path).name for r in rows)
    assert valid_names == sorted(set(valid) - {c[0] for c in CASES})
    assert len(valid_names) == 11
    assert report.rejected == len(CASES)
    assert report.new == len(CASES) + 11
    assert report.pending == 0
