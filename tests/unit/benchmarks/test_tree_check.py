"""benchmarks/tree_check.py finds each kind of difference (one test per kind), tree_gen.py is
deterministic and has every feature, and the copy engine's local copy of a generated tree matches
what ``rsync -aH`` makes of it."""

import os
import shutil
import subprocess

import pytest
import tree_check  # benchmarks/, on the path by this directory's conftest
import tree_gen
from ansible_collections.hpc.burstbuffer.plugins.module_utils import copy_engine as ce
from ansible_collections.hpc.burstbuffer.plugins.module_utils import stage_rules as sr

from tests.unit.plugins.module_utils.test_copy_engine import OLD, write

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="changing an owner needs root")


@pytest.fixture
def pair(tmp_path):
    """Two equal small trees (a file, a pair of links, a symlink, a directory), the second to spoil."""
    roots = []
    for side in ("a", "b"):
        root = tmp_path / side
        write(root / "dir" / "file", b"content")
        write(root / "one", b"linked")
        os.link(root / "one", root / "two")
        os.symlink("dir/file", root / "link")
        os.utime(root / "link", ns=(OLD, OLD), follow_symlinks=False)
        for directory in (root / "dir", root):
            os.utime(directory, ns=(OLD, OLD))
        roots.append(root)
    return roots


def differences(a, b, **options):
    return [(d.what, d.path) for d in tree_check.compare(tree_check.snapshot(a), tree_check.snapshot(b), **options)]


def touch_parent(path):
    os.utime(path.parent, ns=(OLD, OLD))


def test_equal_trees_have_no_difference_and_the_cli_exits_0(pair, capsys):
    assert differences(*pair) == []
    assert tree_check.main([str(pair[0]), str(pair[1])]) == 0


def test_a_missing_name(pair):
    (pair[1] / "dir" / "file").unlink()
    touch_parent(pair[1] / "dir" / "file")
    assert differences(*pair) == [("missing", "dir/file")]


def test_an_extra_name(pair):
    write(pair[1] / "dir" / "new")
    touch_parent(pair[1] / "dir" / "new")
    assert differences(*pair) == [("extra", "dir/new")]


def test_a_type(pair):
    (pair[1] / "dir" / "file").unlink()
    (pair[1] / "dir" / "file").mkdir()
    os.utime(pair[1] / "dir" / "file", ns=(OLD, OLD))
    touch_parent(pair[1] / "dir" / "file")
    assert differences(*pair) == [("type", "dir/file")]


def test_a_mode(pair):
    (pair[1] / "dir" / "file").chmod(0o4644)
    assert differences(*pair) == [("mode", "dir/file")]


@needs_root
def test_an_owner(pair):
    os.lchown(pair[1] / "link", 1001, 1001)
    assert differences(*pair) == [("owner", "link")]
    assert differences(*pair, owners=False) == []


def test_an_mtime_at_the_resolution_asked(pair):
    os.utime(pair[1] / "dir", ns=(OLD, OLD + 1))
    assert differences(*pair) == [("mtime", "dir")]
    a, b = (tree_check.snapshot(root, mtime_resolution_ns=1000) for root in pair)
    assert tree_check.compare(a, b) == []  # OLD ends in ...789: +1 ns stays in the same microsecond


def test_a_symlink_target(pair):
    (pair[1] / "link").unlink()
    os.symlink("dir/../dir/file", pair[1] / "link")
    os.utime(pair[1] / "link", ns=(OLD, OLD), follow_symlinks=False)
    touch_parent(pair[1] / "link")
    assert differences(*pair) == [("target", "link")]


def test_content_of_the_same_size(pair):
    write(pair[1] / "dir" / "file", b"CONTENT")
    assert differences(*pair) == [("content", "dir/file")]


def test_a_hard_link_group_split_into_copies_is_reported_once(pair, capsys):
    (pair[1] / "two").unlink()
    write(pair[1] / "two", b"linked")
    os.utime(pair[1] / "one", ns=(OLD, OLD))
    touch_parent(pair[1] / "two")
    assert differences(*pair) == [("links", "one")]
    assert tree_check.main([str(pair[0]), str(pair[1])]) == 1
    assert "links    'one': ['one', 'two'] | ['one']" in capsys.readouterr().out


def test_odd_names_are_compared_as_bytes_and_printed_escaped(pair, capsys):
    write(pair[0] / "new\nline \udcff")
    touch_parent(pair[0] / "x")
    assert tree_check.main([str(pair[0]), str(pair[1])]) == 1
    assert "missing  'new\\nline \\udcff'" in capsys.readouterr().out


# --- the generator ---------------------------------------------------------------------------------

def test_the_generator_is_deterministic_and_makes_every_feature(tmp_path):
    made = tree_gen.generate(tmp_path / "one", 600, size=64, seed=3, per_dir=20, fanout=4, hole=65536)
    tree_gen.generate(tmp_path / "two", 600, size=64, seed=3, per_dir=20, fanout=4, hole=65536)
    assert differences(tmp_path / "one", tmp_path / "two") == []
    tree_gen.generate(tmp_path / "other", 600, size=64, seed=4, per_dir=20, fanout=4, hole=65536)
    assert differences(tmp_path / "one", tmp_path / "other") != []
    for kind in ("hard-link groups of 2", "hard-link groups of 3 across directories", "symlinks inside",
                 "symlinks out (absolute)", "symlinks out (..)", "symlinks dangling", "sparse files"):
        assert made.get(kind, 0) >= 1, kind
    snap = tree_check.snapshot(tmp_path / "one")
    names = "".join(snap)
    assert "\n" in names and " " in names and "\udcff" in names
    assert {0o4755, 0o444, 0o600}.issubset({e.mode for e in snap.values() if e.kind == "file"})
    assert 0o555 in {e.mode for e in snap.values() if e.kind == "dir"}
    assert any(e.kind == "dir" for p, e in snap.items() if p.startswith("nested-empty/a/b/c"))
    assert max(len(e.links) for e in snap.values()) >= 2  # groups of three names or more


# --- the engine against rsync -aH -----------------------------------------------------------------------

@pytest.mark.skipif(shutil.which("rsync") is None, reason="rsync is not installed")
@pytest.mark.parametrize("direction", ["in", "out"])
def test_the_engines_copy_of_a_generated_tree_is_what_rsync_makes(tmp_path, direction):
    source = tmp_path / "buffer" / "tree" if direction == "out" else tmp_path / "pfs" / "tree"
    source.parent.mkdir(parents=True)
    tree_gen.generate(source, 3000, size=256, seed=7)
    destination = tmp_path / "pfs" / "copy" if direction == "out" else tmp_path / "buffer" / "copy"
    destination.parent.mkdir(parents=True, exist_ok=True)
    result = ce.stage(sr.StageRequest(direction, "directory", str(source), str(destination),
                                      str(tmp_path / "buffer")), workers=4)
    assert result["failed_files"] == [] and result["hardlinks"] > 0
    subprocess.run(["rsync", "-aH", f"{source}/", f"{tmp_path / 'rsynced'}/"], check=True)
    assert differences(tmp_path / "rsynced", destination) == []
    assert differences(source, destination) == []
