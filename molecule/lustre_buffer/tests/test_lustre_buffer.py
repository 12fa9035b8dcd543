"""After converge, as recorded by the Lustre fake: the first brick's device was
formatted as the combined MGS+MDT and mounted before any OST, the other two as
OST0000 and OST0001 registered with that MGS. No real Lustre runs here
(docs/LUSTRE.md)."""

import json
from pathlib import Path

LUSTRE = Path("/var/lib/bbctl-testbed/lustre")


def recorded():
    return [json.loads(line) for line in (LUSTRE / "fake-log.jsonl").read_text().splitlines()]


def tool(argv):
    return Path(argv[0]).name


def step(argv):
    """'mkfs:mgs_mdt', 'mkfs:ost', 'mount:/dev/..' for the recorded calls that matter here."""
    if tool(argv) == "mkfs.lustre":
        return "mkfs:" + ("mgs_mdt" if "--mgs" in argv and "--mdt" in argv else "ost")
    if tool(argv) == "mount" and "lustre" in argv:
        return "mount"
    return None


def test_mgs_and_mdt_are_formatted_and_mounted_before_the_osts():
    steps = [s for s in map(step, recorded()) if s]
    assert steps.count("mkfs:mgs_mdt") == 1 and steps.count("mkfs:ost") == 2
    assert steps.count("mount") == 3
    assert steps[:2] == ["mkfs:mgs_mdt", "mount"]


def test_osts_carry_consecutive_indexes_and_the_mgs_nid():
    osts = [argv for argv in recorded() if tool(argv) == "mkfs.lustre" and "--ost" in argv]
    indexes = [a.removeprefix("--index=") for argv in osts for a in argv if a.startswith("--index=")]
    assert sorted(indexes) == ["0", "1"]  # servers format their OSTs in parallel
    assert all("--mgsnode=127.1.1.1@tcp" in argv for argv in osts)
    assert all("--fsname=molbb" in argv for argv in osts)


def test_each_target_is_formatted_for_its_role_and_mounted():
    targets = json.loads((LUSTRE / "fake-state.json").read_text())["targets"].values()
    found = sorted((t["fsname"], "+".join(sorted(t["roles"])), t["index"], bool(t["mounted"])) for t in targets)
    assert found == [("molbb", "MDT+MGS", 0, True), ("molbb", "OST", 0, True), ("molbb", "OST", 1, True)]
