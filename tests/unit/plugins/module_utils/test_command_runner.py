"""CommandRunner: (argv, rc, out, err) -> result or CommandError; check mode; retries; results."""

import pytest
from ansible_collections.hpc.burstbuffer.plugins.module_utils.command_runner import (
    C_LOCALE,
    CommandError,
    CommandRunner,
    Completed,
    Retry,
    diff_of,
)

UMOUNT = ["umount", "/mnt/bb"]
BUSY = (32, "", "umount: /mnt/bb: target is busy.")
OK = (0, "", "")


def busy(rc, _out, err):
    return rc != 0 and "busy" in err


# argv, ok, (rc, out, err) -> Completed (None: CommandError with this message)
CASES = {
    "success": (["mkdir", "-p", "/x"], (0,), (0, "", ""), Completed(["mkdir", "-p", "/x"], 0, "", "", 1)),
    "failure names argv, rc and stderr": (
        ["wipefs", "-a", "/dev/loop9"], (0,), (1, "", "wipefs: /dev/loop9: Device busy\n"),
        "wipefs -a /dev/loop9 failed (rc 1): wipefs: /dev/loop9: Device busy"),
    "stdout when stderr is empty": (["mount", "h:/v", "/x"], (0,), (32, "Mounting failed.\n", ""),
                                    "mount h:/v /x failed (rc 32): Mounting failed."),
    "another accepted exit status": (["findmnt", "/x"], (0, 1), (1, "", ""),
                                     Completed(["findmnt", "/x"], 1, "", "", 1)),
    "a status not accepted": (["findmnt", "/x"], (0, 1), (2, "", "bad usage"),
                              "findmnt /x failed (rc 2): bad usage"),
    "any status (the output tells)": (["blkid", "-p", "/x"], None, (2, "", ""),
                                      Completed(["blkid", "-p", "/x"], 2, "", "", 1)),
}


@pytest.mark.parametrize(("argv", "ok", "answer", "expected"), CASES.values(), ids=CASES)
@pytest.mark.parametrize("method", ["read", "change"])
def test_one_command(fake_module, method, argv, ok, answer, expected):
    module = fake_module([answer])
    runner = CommandRunner(module)
    if isinstance(expected, str):
        with pytest.raises(CommandError) as raised:
            getattr(runner, method)(argv, ok=ok)
        assert str(raised.value) == expected
        assert raised.value.details() == {"cmd": argv, "rc": answer[0], "stdout": answer[1],
                                          "stderr": answer[2]}
        assert runner.commands == []
    else:
        assert getattr(runner, method)(argv, ok=ok) == expected
        assert runner.commands == ([argv] if method == "change" else [])
    assert module.calls == [(argv, C_LOCALE)]


def test_check_mode_records_changes_and_runs_only_reads(fake_module):
    module = fake_module([(0, "DEVNAME=/dev/loop9\n", "")], check_mode=True)
    runner = CommandRunner(module)
    steps = []
    assert runner.change(["mkfs.xfs", "/dev/loop9"], before=lambda: steps.append("before"),
                         after=lambda: steps.append("after")) is None
    assert runner.read(["blkid", "-p", "/dev/loop9"]).out == "DEVNAME=/dev/loop9\n"
    runner.change_all([["mkdir", "-p", "/x"], ["mount", "/dev/loop9", "/x"]])
    assert runner.act(steps.append, "acted") is None
    assert runner.commands == [["mkfs.xfs", "/dev/loop9"], ["mkdir", "-p", "/x"],
                               ["mount", "/dev/loop9", "/x"]]
    assert [argv for argv, _env in module.calls] == [["blkid", "-p", "/dev/loop9"]]
    assert steps == []


def test_a_real_run_steps_around_a_change_and_acts(fake_module):
    module = fake_module([OK])
    runner = CommandRunner(module)
    steps = []
    runner.change(["mount", "/dev/loop9", "/x"], before=lambda: steps.append("before"),
                  after=lambda: steps.append(runner.commands[-1][0]))
    assert runner.act(lambda word: steps.append(word) or word, "acted") == "acted"
    assert steps == ["before", "mount", "acted"]


def test_a_refusal_before_a_change_runs_and_records_nothing(fake_module):
    module = fake_module()

    def refuse():
        raise ValueError("no longer a block device")

    with pytest.raises(ValueError, match="no longer a block device"):
        CommandRunner(module).change(["mkfs.xfs", "/x"], before=refuse)
    assert module.calls == []


def test_after_a_failure_commands_are_those_that_succeeded(fake_module):
    module = fake_module([OK, (5, "", "mount.lustre: Is the MGS running?\n")])
    runner = CommandRunner(module)
    with pytest.raises(CommandError) as raised:
        runner.change_all([["mkfs.lustre", "/dev/loop9"], ["mount", "/dev/loop9", "/x"],
                           ["umount", "/x"]])
    assert runner.commands == [["mkfs.lustre", "/dev/loop9"]]
    assert runner.failure(raised.value, label="fs-OST0000") == {
        "msg": "mount /dev/loop9 /x failed (rc 5): mount.lustre: Is the MGS running?",
        "commands": [["mkfs.lustre", "/dev/loop9"]], "cmd": ["mount", "/dev/loop9", "/x"],
        "rc": 5, "stdout": "", "stderr": "mount.lustre: Is the MGS running?\n",
        "label": "fs-OST0000"}


def test_a_refusal_fails_with_msg_and_commands_only(fake_module):
    runner = CommandRunner(fake_module())
    assert runner.failure(ValueError("carries ext4")) == {"msg": "carries ext4", "commands": []}
    assert runner.failure(ValueError("x"), msg="y")["msg"] == "y"


# answers -> (attempts and sleeps, or the message of giving up)
RETRIES = {
    "busy twice, then done": ([BUSY, BUSY, OK], (3, [0.5, 1.0])),
    "another failure is not retried": ([(32, "", "umount: /mnt/bb: not mounted.")],
                                       "umount /mnt/bb failed (rc 32): umount: /mnt/bb: not mounted."),
    "still busy after every delay": ([BUSY] * 3, "umount /mnt/bb: still busy (3 attempts)"),
}


@pytest.mark.parametrize(("answers", "expected"), RETRIES.values(), ids=RETRIES)
def test_retry(fake_module, answers, expected):
    module = fake_module(answers)
    slept = []
    retry = Retry(when=busy, delays=[0.5, 1.0],
                  gave_up=lambda argv, attempts: f"{' '.join(argv)}: still busy ({attempts} attempts)")
    runner = CommandRunner(module, retry=retry, sleep=slept.append)
    if isinstance(expected, str):
        with pytest.raises(CommandError, match=expected.replace("(", r"\(").replace(")", r"\)")):
            runner.change(UMOUNT)
    else:
        assert (runner.change(UMOUNT).attempts, slept) == expected
    assert len(module.calls) == len(answers)


def test_a_retry_without_gave_up_judges_the_last_answer(fake_module):
    module = fake_module([BUSY, BUSY])
    done = CommandRunner(module, retry=Retry(when=busy, delays=[0]), sleep=lambda _s: None).read(
        UMOUNT, ok=None)
    assert (done.rc, done.attempts) == (32, 2)


def test_a_retry_applies_only_to_the_programs_named(fake_module):
    module = fake_module([(1, "", "chown: device busy")])
    runner = CommandRunner(module, retry=Retry(when=busy, delays=[0.001], only=("umount",)))
    with pytest.raises(CommandError, match="chown 1001 /x failed"):
        runner.change(["chown", "1001", "/x"])
    assert len(module.calls) == 1


def test_a_call_may_set_its_own_retry(fake_module):
    module = fake_module([BUSY])
    runner = CommandRunner(module, retry=Retry(when=busy, delays=[0.001]))
    with pytest.raises(CommandError):
        runner.change(UMOUNT, retry=None)
    assert len(module.calls) == 1


def test_parse_reads_the_output_and_may_refuse(fake_module):
    runner = CommandRunner(fake_module([(0, "<cliOutput/>", ""), (0, "<opRet>-1</opRet>", "")]))
    assert runner.change(["gluster", "volume", "start", "v"], ok=None,
                         parse=lambda done: done.out) == "<cliOutput/>"

    def refuse(done):
        raise CommandError("volume start: failed", done.argv, done.rc, done.out, done.err)

    with pytest.raises(CommandError, match="volume start: failed"):
        runner.change(["gluster", "volume", "start", "w"], ok=None, parse=refuse)
    assert runner.commands == [["gluster", "volume", "start", "v"]]


def test_a_binary_found_on_this_host_runs_under_the_recorded_name(fake_module):
    module = fake_module([OK])
    runner = CommandRunner(module, binaries={"gluster": "/usr/sbin/gluster"})
    runner.change(["gluster", "volume", "start", "v"])
    assert module.calls[0][0] == ["/usr/sbin/gluster", "volume", "start", "v"]
    assert runner.commands == [["gluster", "volume", "start", "v"]]


@pytest.mark.parametrize(("commands", "changed", "diff"), [
    ([["umount", "/x"]], None, {"before": {"mounted": True}, "after": {"mounted": False}}),
    ([], None, {"before": {"mounted": True}, "after": {"mounted": True}}),
    ([], True, {"before": {"mounted": True}, "after": {"mounted": False}}),
])
def test_result_shape(fake_module, commands, changed, diff):
    runner = CommandRunner(fake_module(check_mode=True))
    runner.change_all(commands)
    result = runner.result({"mounted": True}, {"mounted": False}, changed=changed, path="/x")
    assert result == {"changed": bool(commands) or bool(changed), "commands": commands,
                      "diff": diff, "path": "/x"}
    assert diff_of(1, 2, False) == {"before": 1, "after": 1}


def test_a_program_with_a_deadline_runs_under_timeout_and_is_recorded_as_planned(fake_module):
    module = fake_module([OK, OK])
    runner = CommandRunner(module, deadlines={"mount": 60})
    runner.change(["mount", "h:/v", "/x"])
    runner.change(["mkdir", "-p", "/x"])  # no deadline of its own
    assert [call[0] for call in module.calls] == [["timeout", "--signal=KILL", "60", "mount", "h:/v", "/x"],
                                                  ["mkdir", "-p", "/x"]]
    assert runner.commands == [["mount", "h:/v", "/x"], ["mkdir", "-p", "/x"]]


def test_a_command_killed_at_its_deadline_fails_saying_so(fake_module):
    runner = CommandRunner(fake_module([(-9, "", "")]), deadlines={"mount": 60})
    with pytest.raises(CommandError, match=r"mount h:/v /x failed \(rc -9\): killed: no end within 60 s") as failed:
        runner.change(["mount", "h:/v", "/x"])
    assert failed.value.argv == ["mount", "h:/v", "/x"] and runner.commands == []


def test_what_a_killed_command_printed_stays_before_the_deadline_note(fake_module):
    runner = CommandRunner(fake_module([(-9, "", "mount.glusterfs: waiting\n")]), deadlines={"mount": 6})
    with pytest.raises(CommandError) as failed:
        runner.change(["mount", "h:/v", "/x"])
    assert failed.value.err == "mount.glusterfs: waiting\nkilled: no end within 6 s"
