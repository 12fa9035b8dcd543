"""The warm runner's protocol on its own: what a request may say, which inputs are believed, line framing."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

from bbctl.warm import protocol

GOOD = {"stage": "stage-in", "key": "4711", "run": "20261206T041236-stage-in.2"}


def request(**changes: object) -> bytes:
    return json.dumps({**GOOD, **changes}).encode()


def test_a_request_is_a_stage_a_key_and_a_run_directory_name():
    assert protocol.parse_request(request()) == protocol.Request("stage-in", "4711", "20261206T041236-stage-in.2")
    assert protocol.parse_request(request(key="shared.v2")).key == "shared.v2"  # a persistent buffer's name


@pytest.mark.parametrize("line", [
    b"not json", b"[]", json.dumps({**GOOD, "playbook": "/tmp/x.yml"}).encode(),
    json.dumps({"stage": "setup", "key": "1"}).encode(),
    request(stage="Setup"), request(stage="setup; rm -rf /"), request(key=".."), request(key="a/b"),
    request(key=""), request(key="a\0b"), request(key=7), request(run="../20261206T041236-stage-in"),
    request(run="20261206T041236-setup"),  # another stage's directory
])
def test_anything_else_is_refused(line):
    with pytest.raises(protocol.NotRun):
        protocol.parse_request(line)


def test_playbooks_come_from_the_given_directories_only(tmp_path):
    allowed = tmp_path / "playbooks"
    allowed.mkdir()
    (allowed / "stage_in.yml").write_text("---\n")
    (tmp_path / "evil.yml").write_text("---\n")
    assert protocol.allowed_playbook("stage_in.yml", [allowed]) == allowed / "stage_in.yml"
    assert protocol.allowed_playbook(str(allowed / "stage_in.yml"), [allowed]) == allowed / "stage_in.yml"
    for name in ("../evil.yml", str(tmp_path / "evil.yml"), "missing.yml", "stage_in.sh", "sub/stage_in.yml", 3):
        with pytest.raises(protocol.NotRun):
            protocol.allowed_playbook(name, [allowed])


def inputs(tmp_path: Path) -> tuple[Path, protocol.Request, Path]:
    runs = tmp_path / "runs"
    run_dir = runs / GOOD["key"] / GOOD["run"]
    run_dir.mkdir(parents=True)
    inventory = tmp_path / "inventory.yml"
    protocol.write_inputs(run_dir, playbook="stage_in.yml", limit="s1,localhost", timeout=600,
                          extravars={"bb_buffer": {"name": "bbjob-4711"}}, inventory=inventory)
    playbooks = tmp_path / "playbooks"
    playbooks.mkdir()
    (playbooks / "stage_in.yml").write_text("---\n")
    return runs, protocol.parse_request(request()), inventory


def test_inputs_written_by_bbctl_are_read_back(tmp_path):
    runs, parsed, inventory = inputs(tmp_path)
    stage = protocol.locate(runs, parsed, [tmp_path / "playbooks"], inventory)
    assert (stage.playbook.name, stage.limit, stage.timeout) == ("stage_in.yml", "s1,localhost", 600)
    assert json.loads(stage.extravars.read_text()) == {"bb_buffer": {"name": "bbjob-4711"}}
    assert stage.extravars.stat().st_mode & 0o777 == 0o600


def test_inputs_are_not_believed_when_someone_else_could_have_written_them(tmp_path):
    runs, parsed, inventory = inputs(tmp_path)
    run_dir = runs / GOOD["key"] / GOOD["run"]
    for loose in (runs, run_dir, run_dir / "warm" / "request.json"):
        os.chmod(loose, loose.stat().st_mode | 0o022)
        with pytest.raises(protocol.NotRun, match="only uid"):
            protocol.locate(runs, parsed, [tmp_path / "playbooks"], inventory)
        os.chmod(loose, loose.stat().st_mode & ~0o022)
    real = run_dir.rename(run_dir.with_name("elsewhere"))
    run_dir.symlink_to(real)
    with pytest.raises(protocol.NotRun):
        protocol.locate(runs, parsed, [tmp_path / "playbooks"], inventory)


def test_inputs_of_another_site_are_refused(tmp_path):
    runs, parsed, _inventory = inputs(tmp_path)
    with pytest.raises(protocol.NotRun, match="another release or site"):
        protocol.locate(runs, parsed, [tmp_path / "playbooks"], tmp_path / "other-inventory.yml")


def test_lines_are_framed_and_capped():
    left, right = socket.socketpair()
    with left, right:
        left.sendall(b'{"a": 1}\n{"b"')
        left.sendall(b': 2}\n' + b"x" * 100)
        left.shutdown(socket.SHUT_WR)
        reader = protocol.LineReader(right, max_line=64)
        assert reader.next() == {"a": 1}
        assert reader.next() == {"b": 2}
        with pytest.raises(ValueError):
            reader.next()
    left, right = socket.socketpair()
    with left, right:
        left.close()
        assert protocol.LineReader(right).next() is None
