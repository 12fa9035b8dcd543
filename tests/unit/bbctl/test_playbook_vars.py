"""bbctl.playbook_vars against the roles that read it: every key of ``bb_buffer`` is one they accept.

ansible-core validates a role's arguments (meta/argument_specs.yml) and refuses a key it does not
know, so a key bbctl adds without adding it to every role that takes ``bb_buffer`` fails every job
at that role's stage (seen 2026-12-07: ``bb_buffer.quota`` refused by buffer_client at teardown).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bbctl import playbook_vars
from bbctl.pools import Brick
from bbctl.state import Buffer, BufferState
from tests.conftest import REPO
from tests.unit.bbctl.test_lifecycle import make_config

ROLES = ("gluster_buffer", "buffer_client", "lustre_buffer")


def accepted(role: str) -> set[str]:
    specs = yaml.safe_load((REPO / "roles" / role / "meta" / "argument_specs.yml").read_text())
    return set(specs["argument_specs"]["main"]["options"]["bb_buffer"]["options"])


def buffer(fs: str = "gluster", **meta) -> Buffer:
    bricks = tuple(Brick(pool="nvme", server=f"bbnode{n}", address=f"127.1.1.{n}", path=f"/bricks/n{n}/nvme1",
                         device=f"/dev/loop{n}") for n in (1, 2, 3))
    return Buffer(key="42", owner_uid=1001, owner_gid=1001, pool="nvme", capacity=8 * 1024**3, fs=fs,
                  state=BufferState.CREATED, bricks=bricks, created_at=0.0, updated_at=0.0,
                  meta={"layout": {"data_bricks": 2, "sets": 1, "redundancy": 1}, **meta})


@pytest.mark.parametrize("fs", ["gluster", "lustre"])
@pytest.mark.parametrize("role", ROLES)
def test_every_key_of_a_buffer_is_one_each_role_accepts(role: str, fs: str):
    assert set(playbook_vars.buffer_vars(buffer(fs), {})) - accepted(role) == set()


def test_a_lustre_buffer_gets_its_unique_fsname_a_gluster_one_none():
    assert playbook_vars.buffer_vars(buffer("lustre"), {})["fsname"] == "j16"  # job 42 in base 36
    assert "fsname" not in playbook_vars.buffer_vars(buffer(), {})


@pytest.mark.parametrize("meta", [{}, {playbook_vars.PRIVATE: True, playbook_vars.SWAP: "1GiB"},
                                  {playbook_vars.CACHE: "/pfs/me/data"}])
def test_every_key_of_the_client_paths_is_one_buffer_client_accepts(meta: dict, tmp_path: Path):
    record = buffer(**meta)
    written = playbook_vars.buffer_vars(record, playbook_vars.client_paths(make_config(tmp_path), record))
    assert set(written) - accepted("buffer_client") == set()
