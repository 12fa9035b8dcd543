"""bbctl.site's volume names: valid GlusterFS names, one per buffer name, whatever the grammar lets through."""

from __future__ import annotations

import importlib
import random

import pytest

import bbctl.collection  # noqa: F401  (puts the collection on the import path)
from bbctl import site
from bbctl.directives import KINDS

# The gluster module's own rule for volume names, importable now.
gluster = importlib.import_module("ansible_collections.hpc.burstbuffer.plugins.module_utils.gluster_rules")

NAME_CHARS = "abcXYZ019_.-"


def random_names(count: int) -> list[str]:
    rng = random.Random(9)
    names = set()
    while len(names) < count:
        first = rng.choice("abXY_")
        length = rng.randint(0, KINDS["buffer_name"]["max"] - 1)
        names.add(first + "".join(rng.choice(NAME_CHARS) for _ in range(length)))
    return sorted(names)


@pytest.mark.parametrize("name, volume", [
    ("results", "bbp-results"),  # names from before dots were allowed keep their volume
    ("my_buf", "bbp-my_buf"),
    ("4711", "bbjob-4711"),
])
def test_plain_names_keep_their_volume(name, volume):
    assert site.volume_name(name) == volume


def test_slurms_dotted_test_names_get_a_valid_volume():
    volume = site.volume_name("test35.1")
    assert volume.startswith("bbp-test35_1-") and gluster.volume_name_problem(volume) is None
    assert site.volume_name("test35-1") != volume != site.volume_name("test35_1")


def test_every_name_the_grammar_accepts_gets_a_distinct_valid_short_volume():
    names = sorted({*random_names(20000), "x." * 32, "_", "a-", "a--b", "a.-b"})
    volumes = {}
    for name in names:
        volume = site.volume_name(name)
        assert gluster.volume_name_problem(volume) is None, (name, volume)
        assert len(volume) <= len(site.PERSISTENT_VOLUME_PREFIX) + 64, (name, volume)
        assert volume not in volumes, f"{name!r} and {volumes[volume]!r} share {volume}"
        volumes[volume] = name


def test_the_hash_is_the_documented_polynomial():
    assert site.name_hash("") == 0
    assert site.name_hash("a.") == (97 * 131 + 46) % site.NAME_HASH_MODULUS


# The lustre_target module's own rule for fsnames (1-8 of A-Z a-z 0-9 _ -).
lustre = importlib.import_module("ansible_collections.hpc.burstbuffer.plugins.module_utils.lustre")


@pytest.mark.parametrize("key, fsname", [("4711", "j3mv"), ("0", "j0"), ("9999999999", "j4ldqpdr"),
                                         ("results", None), ("test35.1", None)])
def test_lustre_fsnames_are_valid_and_name_jobs_by_their_id(key, fsname):
    made = site.lustre_fsname(key)
    assert lustre.validate_fsname(made) == made and len(made) <= 8
    if fsname is not None:
        assert made == fsname
    assert int(made[1:], 36) == (int(key) if key.isdigit() else site.name_hash(key))


def test_jobs_that_share_a_volume_names_first_8_characters_get_distinct_fsnames():
    assert site.volume_name("4711")[:8] == site.volume_name("4799")[:8]  # what the role's default would use
    jobs = {site.lustre_fsname(str(job)) for job in range(0, 200_000, 7)}
    assert len(jobs) == len(range(0, 200_000, 7))
    names = random_names(5000)
    persistent = {site.lustre_fsname(name) for name in names}
    assert len(persistent) == len(names) and not persistent & jobs
