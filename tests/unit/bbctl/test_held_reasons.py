"""Every reason a stage can fail with has a row in docs/USER_GUIDE.md (found by reason_finder)."""

from __future__ import annotations

from pathlib import Path

from tests.unit.bbctl import reason_finder as finder

GUIDE = finder.ROOT / "docs" / "USER_GUIDE.md"
HEADING = "## 5. When a job is held: every reason"


def guide_rows() -> list[tuple[str, ...]]:
    return finder.guide_rows(GUIDE.read_text(), HEADING)


def test_every_reason_in_the_source_has_a_row_in_the_user_guide():
    reasons, _ = finder.project_reasons()
    missing = finder.missing_from(reasons, guide_rows())
    assert not missing, ("reasons with no row in docs/USER_GUIDE.md section 5 (write the message with <name> "
                         "for each value):\n" + "\n".join(f"{r.where}: {r.readable()}" for r in missing))


def test_every_reason_is_written_where_it_is_raised():
    _, unidentified = finder.project_reasons()
    assert not unidentified, "\n".join(unidentified)


def test_the_finder_sees_the_stages_reasons():
    """A floor, so that a finder that finds nothing cannot pass: reasons from each source it reads."""
    reasons, _ = finder.project_reasons()
    where = {r.where.split(":")[0] for r in reasons}
    assert {"src/bbctl/lifecycle.py", "src/bbctl/runner.py", "src/bbctl/layouts.py", "src/bbctl/state/base.py",
            "src/bbctl/pools.py", "src/bbctl/datawarp/dw_wlm_cli.py", "slurm/burst_buffer.lua"} <= where
    assert len(reasons) >= 70
    assert len(guide_rows()) >= 70


def test_the_check_fails_on_a_reason_the_guide_lacks():
    """The negative check: new reasons in Python and Lua, and a computed message, are all caught."""
    python = '''
from bbctl.errors import BBError
class Busy(BBError):
    def __init__(self, key):
        super().__init__(f"buffer {key} is busy with {key!r}; come back later")
def stage(key, text):
    raise BBError(f"buffer {key}: the flux capacitor is empty")
def other(text):
    raise BBError(text)
def relay(exc):
    raise BBError(str(exc))
'''
    sources = {"x.py": python}
    family, own_init = finder.error_classes(sources)
    assert family == {"BBError", "Busy"} and own_init == {"Busy"}
    reasons, unidentified = finder.python_reasons(python, "x.py", family, own_init, {})
    assert sorted(r.readable() for r in reasons) == ["buffer <...> is busy with <...>; come back later",
                                                     "buffer <...>: the flux capacitor is empty"]
    assert [u.split(":")[:2] for u in unidentified] == [["x.py", "9"]]
    lua = 'if x then\n    return slurm.ERROR, "the " .. name .. " broke: call " ..\n        tostring(y)\nend\n'
    lua_found = finder.lua_reasons(lua, "x.lua")
    assert [r.readable() for r in lua_found] == ["the <...> broke: call <...>"]
    rows = guide_rows()
    assert finder.missing_from(reasons + lua_found, rows) == reasons + lua_found
    written = finder.guide_rows("## 5. X\n\n| m | w |\n| --- | --- |\n"
                                "| `buffer <key>: the flux capacitor is empty` | fill it |\n", "## 5. X")
    assert [r.readable() for r in finder.missing_from(reasons, written)] == [
        "buffer <...> is busy with <...>; come back later"]


TABLE = "# T\n\n| message | what |\n| --- | --- |\n"


def test_a_row_must_keep_the_messages_words():
    reason = finder.Reason(f"buffer {finder.HOLE}: not enough", "x.py:1")
    assert not finder.missing_from([reason], finder.guide_rows(TABLE + "| `buffer <job>: not enough` | - |\n", "# T"))
    assert finder.missing_from([reason], finder.guide_rows(TABLE + "| `buffer <job>: not enough!` | - |\n", "# T"))
    assert finder.missing_from([reason], finder.guide_rows(TABLE + "| `buffer: not enough` | - |\n", "# T"))


def test_rows_are_read_from_the_reasons_table_only(tmp_path: Path):
    text = ("## 5. When a job is held: every reason\n\n| message | what |\n| --- | --- |\n"
            "| `a <x> b` | c |\n| ``see `bbctl status` <y>`` | d |\n\n## 6. Next\n\n| `other` | e |\n")
    assert finder.guide_rows(text, HEADING) == [("a", "b"), ("see `bbctl status`", "")]


def test_every_row_of_the_table_is_a_reason_we_emit():
    """A message changed in the source leaves no stale row behind."""
    reasons, _ = finder.project_reasons()
    emitted = {r.parts() for r in reasons}
    stale = [" <> ".join(row) for row in guide_rows() if row not in emitted]
    assert not stale, "rows of docs/USER_GUIDE.md section 5 that no source emits:\n" + "\n".join(stale)
