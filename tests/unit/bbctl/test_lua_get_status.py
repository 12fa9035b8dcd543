"""`scontrol show bbstat` through burst_buffer.lua's slurm_bb_get_status: the real script, the real bbctl."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from bbctl import site, slurm_install
from tests.unit.bbctl.test_commands import bbctl, job_script

REPO = Path(__file__).resolve().parents[3]
HARNESS = REPO / "tests" / "lua" / "run_get_status.lua"
LUA = shutil.which("lua5.1")
pytestmark = pytest.mark.skipif(LUA is None, reason="lua5.1 is not installed (scripts/setup.sh installs it)")


@pytest.fixture
def slurm_dir(config_file: Path, tmp_path: Path) -> Path:
    """burst_buffer.lua installed beside a site file that calls this checkout's bbctl with config_file."""
    directory = tmp_path / "slurm"
    directory.mkdir()
    for source in slurm_install.LUA_FILES:
        shutil.copyfile(source, directory / source.name)
    values = slurm_install.site_values(site.load(config_file), {})
    (directory / "bbctl-site.lua").write_text(slurm_install.render_site_lua(values))
    return directory


def get_status(directory: Path, *words: str) -> tuple[str, str]:
    done = subprocess.run([LUA, str(HARNESS), str(directory / "burst_buffer.lua"), *words],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    rc, _newline, text = done.stdout.partition("\n")
    return rc, text


def test_bbstat_of_a_job_shows_its_stage_timings_as_slurm_23_and_22_pass_it(config_file, slurm_dir, tmp_path):
    script = job_script(tmp_path, "#DW jobdw capacity=1GiB")
    assert bbctl(config_file, "setup", "--job-id", "7", "--uid", "1001", "--gid", "1001", "--script", script) == 0
    for words in (("1001", "1001", "job=7"), ("job=7",)):
        rc, text = get_status(slurm_dir, *words)
        assert rc == "0", text
        lines = text.splitlines()
        assert lines[0].startswith("buffer 7 (bbjob-7): created"), text
        assert lines[1].split() == ["STAGE", "JOB", "STARTED", "SECONDS", "OUTCOME", "FILES", "BYTES"]
        assert lines[2].split()[0] == "setup" and lines[2].split()[-1] == "ok"


def test_bbstat_without_words_is_the_status_view(config_file, slurm_dir):
    rc, text = get_status(slurm_dir, "0", "0")
    assert rc == "0" and text.splitlines()[0].split()[:2] == ["POOL", "IN"], text
    assert "no buffers" in text
