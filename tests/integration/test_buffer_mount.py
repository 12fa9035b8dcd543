"""buffer_mount through real ansible-playbook against real GlusterFS volumes of the test bed.

The tests make their own two-brick volumes (bm-<random>) on test-bed nodes 1 and 2 and
mount them with FUSE under a temporary directory in /var/tmp. Finalizers unmount
everything under that directory, stop and delete the volumes and remove their brick
directories; nothing else of the test bed (which other people use at the same time) is
touched. Skipped when ``bbctl testbed status`` says the test bed is not up.
"""

import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from tests.integration.module_task import ModuleTask

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = REPO / ".venv" / "bin"
TESTBED = Path("/var/lib/bbctl-testbed")
GLUSTERD_SOCKET = TESTBED / "node1" / "run" / "glusterd.socket"
BRICK_HOSTS = [("127.1.1.1", TESTBED / "node1" / "bricks" / "nvme2"),
               ("127.1.1.2", TESTBED / "node2" / "bricks" / "nvme2")]
JOB_UID = 4242  # an unprivileged job owner; a numeric id need not exist in passwd
OTHER_UID = 4243

pytestmark = pytest.mark.testbed


def sh(*argv, check=True, timeout=120):
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, check=check,
                          timeout=timeout, env=dict(os.environ, LANG="C", LC_ALL="C"))


def gluster(*args, check=True):
    return sh("gluster", "--mode=script", f"--glusterd-sock={GLUSTERD_SOCKET}", *args, check=check)


def bed_is_up():
    bbctl = VENV_BIN / "bbctl"
    return bbctl.exists() and sh(bbctl, "testbed", "status", check=False).returncode == 0


def mounts():
    """{target: (fstype, source)} of the current mounts, targets unescaped."""
    table = {}
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        before, after = line.split(" - ", 1)
        target = before.split()[4].encode().decode("unicode_escape")
        fstype, source = after.split()[:2]
        table[target] = (fstype, source)
    return table


def unmount_under(directory):
    prefix = str(directory) + "/"
    for target in sorted(mounts(), reverse=True):
        if target.startswith(prefix) and sh("umount", target, check=False).returncode != 0:
            sh("umount", "-l", target, check=False)


@pytest.fixture(scope="module")
def volumes():
    """Two started volumes, bm-a... and bm-b..., each over one brick on node 1 and node 2."""
    if not bed_is_up():
        pytest.skip("the test bed is not up (`.venv/bin/bbctl testbed up --slurm none` builds it)")
    tag = uuid.uuid4().hex[:8]
    names, created = [f"bm-a{tag}", f"bm-b{tag}"], []
    try:
        for name in names:
            gluster("volume", "create", name,
                    *[f"{host}:{root / name}" for host, root in BRICK_HOSTS], "force")
            created.append(name)
            gluster("volume", "start", name)
        yield names
    finally:
        for name in created:
            gluster("volume", "stop", name, check=False)
            gluster("volume", "delete", name, check=False)
            for _host, root in BRICK_HOSTS:
                shutil.rmtree(root / name, ignore_errors=True)


@pytest.fixture
def workdir():
    path = Path(tempfile.mkdtemp(prefix="bb-buffer-mount-", dir="/var/tmp"))
    path.chmod(0o755)  # the job's uid must be able to reach the buffer below it
    try:
        yield path
    finally:
        unmount_under(path)
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def buffer_mount(workdir):
    return ModuleTask("hpc.burstbuffer.buffer_mount", workdir)


def as_uid(uid, *argv):
    return sh("setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *argv, check=False)


def test_mount_for_a_job_check_mode_idempotence_and_unmount(volumes, workdir, buffer_mount):
    path, src = str(workdir / "job42"), f"127.1.1.1:/{volumes[0]}"
    wanted = dict(path=path, src=src, backup_servers=["127.1.1.2"], owner=str(JOB_UID),
                  group=str(JOB_UID), mode="0700")

    planned = buffer_mount(check=True, **wanted)
    assert planned["changed"] is True
    assert planned["commands"] == [
        ["mkdir", "-p", path],
        ["mount", "-t", "glusterfs", "-o", "backup-volfile-servers=127.1.1.2", src, path],
        ["chown", f"{JOB_UID}:{JOB_UID}", path], ["chmod", "0700", path]]
    assert not os.path.exists(path)

    mounted = buffer_mount(**wanted)
    assert not mounted.get("failed"), mounted.get("msg")
    assert (mounted["changed"], mounted["mounted"]) == (True, True)
    assert mounts()[path] == ("fuse.glusterfs", src)
    stat = os.stat(path)
    assert (stat.st_uid, stat.st_gid, stat.st_mode & 0o7777) == (JOB_UID, JOB_UID, 0o700)
    assert as_uid(JOB_UID, "touch", f"{path}/written-by-the-job").returncode == 0
    assert as_uid(OTHER_UID, "ls", path).returncode != 0  # 0700: other users are kept out

    again = buffer_mount(**wanted)
    assert (again["changed"], again["commands"], again["mounted"]) == (False, [], True)

    would = buffer_mount(check=True, **dict(wanted, mode="0750"))
    assert (would["changed"], would["commands"]) == (True, [["chmod", "0750", path]])
    assert os.stat(path).st_mode & 0o7777 == 0o700

    would_unmount = buffer_mount(check=True, path=path, state="unmounted", remove_dir=True)
    assert would_unmount["commands"] == [["umount", "--no-canonicalize", path], ["rmdir", path]]
    assert path in mounts()

    unmounted = buffer_mount(path=path, state="unmounted", remove_dir=True)
    assert (unmounted["changed"], unmounted["mounted"]) == (True, False)
    assert path not in mounts()
    assert not os.path.exists(path)

    idempotent = buffer_mount(path=path, state="unmounted", remove_dir=True)
    assert (idempotent["changed"], idempotent["commands"]) == (False, [])


def test_another_source_mounted_at_the_path_is_refused(volumes, workdir, buffer_mount):
    path = workdir / "job43"
    path.mkdir()
    other = f"127.1.1.1:/{volumes[1]}"
    sh("mount", "-t", "glusterfs", other, path)

    refused = buffer_mount(path=str(path), src=f"127.1.1.1:/{volumes[0]}")
    assert refused["failed"] is True
    assert f"has {other} (fuse.glusterfs) mounted, not 127.1.1.1:/{volumes[0]}" in refused["msg"]
    assert refused["commands"] == []

    not_ours = buffer_mount(path=str(path), src=f"127.1.1.1:/{volumes[0]}", state="unmounted")
    assert not_ours["failed"] is True
    assert mounts()[str(path)] == ("fuse.glusterfs", other)


def test_unmount_waits_out_a_busy_mount(volumes, workdir, buffer_mount):
    path, src = str(workdir / "job44"), f"127.1.1.1:/{volumes[0]}"
    assert buffer_mount(path=path, src=src)["changed"] is True
    # Its working directory keeps the mount busy for longer than ansible-playbook takes to
    # reach the umount, so the first attempts fail with "target is busy".
    holder = subprocess.Popen(["sleep", "5"], cwd=path)
    try:
        unmounted = buffer_mount(path=path, state="unmounted", retries=6, delay=0.5)
        # The kernel unmounts nothing busy: success means the module outlasted the holder.
        assert holder.poll() is not None
    finally:
        holder.kill()
        holder.wait(timeout=30)
    assert not unmounted.get("failed"), unmounted.get("msg")
    assert unmounted["changed"] is True
    assert path not in mounts()


def client_pid(path):
    """The pid of the glusterfs client that mount.glusterfs started for path (the last word of
    its command line is the mount point, unique to this test)."""
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if entry.name.isdigit() and argv[0].endswith(b"glusterfs") and path.encode() in argv[-2:]:
            return int(entry.name)
    raise AssertionError(f"no glusterfs client serves {path}")


def test_a_mount_whose_client_no_longer_answers_is_released_not_waited_on(volumes, workdir, buffer_mount):
    """A FUSE mount whose daemon reads /dev/fuse no more blocks every access, `umount PATH`'s own
    stat included, for good (seen under load, 2026-12-06). A stopped client is such a daemon."""
    path, src = str(workdir / "job45"), f"127.1.1.1:/{volumes[0]}"
    assert buffer_mount(path=path, src=src)["changed"] is True
    pid = client_pid(path)
    os.kill(pid, signal.SIGSTOP)
    try:
        stuck = subprocess.Popen(["stat", path], stdout=subprocess.DEVNULL)  # a job's process, stuck
        released = buffer_mount(path=path, state="unmounted", answer_timeout=3, remove_dir=True)
        assert not released.get("failed"), released.get("msg")
        assert released["changed"] is True and path not in mounts()
        assert any("did not answer a stat within 3 s; aborted FUSE connection" in warning
                   for warning in released.get("warnings", [])), released.get("warnings")
        assert stuck.wait(timeout=10) != 0  # the abort let it go, with an error
        assert not os.path.exists(path)
    finally:
        os.kill(pid, signal.SIGCONT)
    # Its connection gone, the client ends by itself.
    deadline = time.monotonic() + 30
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    if Path(f"/proc/{pid}").exists():
        os.kill(pid, signal.SIGKILL)
        raise AssertionError(f"glusterfs client {pid} outlived its aborted connection")


@pytest.fixture
def refusing_volume():
    """A started one-brick volume whose brick refuses its clients at the handshake: it takes privileged
    ports only (server.allow-insecure off) and its clients bind unprivileged ones (client.bind-insecure
    on), as a client that found no privileged port free does."""
    if not bed_is_up():
        pytest.skip("the test bed is not up (`.venv/bin/bbctl testbed up --slurm none` builds it)")
    name, (host, root) = f"bm-r{uuid.uuid4().hex[:8]}", BRICK_HOSTS[0]
    gluster("volume", "create", name, f"{host}:{root / name}", "force")
    try:
        gluster("volume", "set", name, "server.allow-insecure", "off")
        gluster("volume", "set", name, "client.bind-insecure", "on")
        gluster("volume", "start", name)
        yield name
    finally:
        gluster("volume", "stop", name, "force", check=False)
        gluster("volume", "delete", name, check=False)
        shutil.rmtree(root / name, ignore_errors=True)


def test_a_mount_whose_brick_refuses_the_handshake_is_killed_released_and_refused(refusing_volume, workdir,
                                                                                  buffer_mount):
    """mount.glusterfs's own stat of such a mount never returned (seen with the host's privileged ports
    taken, 2026-12-07): the mount is killed at twice answer_timeout, its mount released, tried again."""
    path = str(workdir / "job45")
    began = time.monotonic()
    refused = buffer_mount(path=path, src=f"127.1.1.1:/{refusing_volume}", answer_timeout=3, retries=1, delay=0.5)
    took = time.monotonic() - began
    assert refused["failed"] is True
    assert "did not answer a stat within 3 s, 2 times" in refused["msg"], refused["msg"]
    assert took < 90  # two mounts killed at 6 s each, not a wait for good
    assert path not in mounts()
    assert client_gone(path, within=15)  # a released client ends once its connection is aborted


def client_gone(path, within):
    """Whether no glusterfs client serves path any more, waiting up to ``within`` s."""
    deadline = time.monotonic() + within
    while True:
        try:
            client_pid(path)
        except AssertionError:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
