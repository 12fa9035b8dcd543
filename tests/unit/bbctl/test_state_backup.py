"""The SQLite backup docs/OPERATOR_GUIDE.md section 15 gives: `sqlite3 state.db ".backup 'COPY'"`
while bbctl holds the store open, then the copy read back by bbctl's own store."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from bbctl.pools import Brick, Pool
from bbctl.state import BufferSpec, BufferState, SQLiteStore

GiB = 1024**3
POOL = Pool("nvme", GiB, tuple(Brick(pool="nvme", server=f"s{n}", address=f"s{n}", path="/bricks/nvme0",
                                     device="/dev/nvme0n1") for n in range(1, 5)))


def sqlite3_program() -> str:
    found = shutil.which("sqlite3")
    if found is None:  # scripts/setup.sh installs it: a missing one is a broken machine
        pytest.fail("the sqlite3 program is missing (Debian package sqlite3; scripts/setup.sh installs it)")
    return found


def backup(source: Path, copy: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sqlite3_program(), str(source), f".backup '{copy}'"], capture_output=True, text=True,
                          timeout=60, check=False)


def test_an_online_backup_holds_every_buffer_and_opens_as_a_store(tmp_path):
    path, copy = tmp_path / "state.db", tmp_path / "backup" / "state-copy.db"
    copy.parent.mkdir()
    running = SQLiteStore(path)  # a bbctl process with the store open (WAL: its writes sit in state.db-wal)
    running.allocate(BufferSpec(key="42", owner_uid=1000, owner_gid=1000, capacity=2 * GiB, fs="gluster"), POOL)
    running.transition("42", BufferState.ALLOCATING, BufferState.CREATING)
    running.allocate(BufferSpec(key="shared", owner_uid=1000, owner_gid=1000, capacity=GiB, fs="gluster"), POOL)
    assert Path(f"{path}-wal").stat().st_size > 0, "the newest writes are in the WAL, not yet in state.db"

    done = backup(path, copy)
    assert done.returncode == 0, done.stderr
    check = subprocess.run([sqlite3_program(), str(copy), "PRAGMA integrity_check"], capture_output=True,
                           text=True, check=True)
    assert check.stdout.strip() == "ok"

    restored = SQLiteStore(copy)
    assert restored.buffers() == running.buffers()
    assert restored.get("42").state is BufferState.CREATING
    assert restored.allocated_brick_ids("nvme") == running.allocated_brick_ids("nvme")
    running.transition("42", BufferState.CREATING, BufferState.CREATED)  # the running store writes on
    assert restored.get("42").state is BufferState.CREATING, "the copy is a snapshot, apart from the store"
    restored.close()
    running.close()


def test_a_plain_copy_of_state_db_alone_can_miss_the_newest_writes(tmp_path):
    """Why the guide says never `cp state.db` while bbctl runs: the WAL holds what was written last."""
    path, copied = tmp_path / "state.db", tmp_path / "copied.db"
    running = SQLiteStore(path)
    running.allocate(BufferSpec(key="42", owner_uid=1000, owner_gid=1000, capacity=GiB, fs="gluster"), POOL)
    shutil.copyfile(path, copied)  # without state.db-wal
    assert SQLiteStore(copied).get("42") is None
    running.close()
