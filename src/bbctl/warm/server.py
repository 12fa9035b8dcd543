"""``bbctl warm-runner``: the listening process. Warm ansible-core once, then fork a supervisor per stage.

It runs as root (a systemd service, docs/OPERATOR_GUIDE.md) and holds no state of its own:
every stage's inputs and artifacts are in the stage's run directory, and bbctl runs the
stage through ansible-runner whenever this process is not there. It accepts connections
only from its own uid (SO_PEERCRED), on a socket made 0600 in a directory made 0700.

Started, it sets the environment bbctl gives ansible-runner (bbctl.runner.ANSIBLE_ENV:
ansible-core reads its settings once, at import), changes to the collection's playbooks
directory (the working directory ansible-runner gives ansible-playbook), imports the
playbook machinery and loads the plugins a stage uses. Each stage's playbook process is a
fork of this one and starts from there. The AnsiballZ cache (ansible-core's modules
zipped with their module_utils) lives in this process's temporary directory, so every
stage after the first reuses it: when the code under it changes (the collection's
plugins, bbctl, ansible-core) the server refuses the next request and exits, and systemd
starts a fresh one.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import stat
import sys
import time
import warnings
from pathlib import Path

from bbctl import cache_file
from bbctl.collection import COLLECTION_ROOT, PLAYBOOKS, linux_process
from bbctl.errors import BBError
from bbctl.site import Site
from bbctl.warm import protocol, stage

ACCEPT_POLL_SECONDS = 1.0
CHECK_SECONDS = 1.0  # how often the code under the runner is compared with what it loaded
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def serve(site: Site, *, socket_path: Path | None = None, playbook_dirs: list[Path] | None = None) -> int:
    """Serve stages until SIGTERM or SIGINT; 0 then, 75 (EX_TEMPFAIL) when the code changed under it."""
    path = socket_path or site.warm_runner_socket
    dirs = [PLAYBOOKS, *(d.resolve() for d in playbook_dirs or [])]
    started = time.monotonic()
    notify = os.environ.pop("NOTIFY_SOCKET", None)  # systemd's, for this process: not for the modules it runs
    prepare_environment()
    warm_ansible()
    code = CodeWatch()
    listener = listen(path)
    bound = os.lstat(path).st_ino
    stop = _stop_on_signals()
    _log(f"ready on {path} in {time.monotonic() - started:.2f} s (pid {os.getpid()}; playbooks from "
         f"{', '.join(map(str, dirs))})")
    _notify_systemd(notify, "READY=1")
    try:
        while not stop:
            _reap()
            try:
                conn, _address = listener.accept()
            except (TimeoutError, InterruptedError):
                continue
            with conn:
                if code.changed():
                    _refuse(conn, "the warm runner's code changed since it started; it restarts")
                    _log("the code under the runner changed: exiting so that a fresh one starts")
                    return 75
                if _admit(conn):
                    _fork_supervisor(conn, listener, site, dirs)
    finally:
        _close(listener, path, bound)
    _log("stopped (stages already running finish on their own)")
    return 0


def prepare_environment() -> None:
    """The environment and working directory ansible-runner gives ansible-playbook for bbctl."""
    from bbctl.runner import ANSIBLE_ENV

    os.environ.update(ANSIBLE_ENV)
    # What ansible-runner adds to every run it starts, that changes how a playbook runs (the rest names
    # its own callback, artifacts and fact cache): the ansible-runner path never checks SSH host keys.
    os.environ["ANSIBLE_HOST_KEY_CHECKING"] = "False"
    os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH") or SYSTEM_PATH])
    os.chdir(PLAYBOOKS)


def warm_ansible() -> None:
    """Import what a playbook run imports and load the plugins bbctl's stages use (their
    configuration definitions are YAML parsed on first use: 0.2 s of a cold run)."""
    if "ansible.constants" in sys.modules:  # ansible-core read its settings before they were set
        raise BBError("ansible-core was imported before the warm runner set its environment")
    # bbctl imported the collection's module_utils as a plain package (bbctl.collection); ansible-core's
    # collection loader must own ``ansible_collections`` or it finds none of the collection's roles.
    for name in [name for name in sys.modules if name.split(".")[0] == "ansible_collections"]:
        del sys.modules[name]
    from ansible.cli.playbook import PlaybookCLI  # noqa: F401 - the import is the point
    from ansible.executor import playbook_executor, task_queue_manager  # noqa: F401
    from ansible.plugins import loader

    # Every stage's PlaybookCLI initialises the plugin loader again: harmless, and said each time.
    warnings.filterwarnings("ignore", message="AnsibleCollectionFinder has already been configured")
    loader.init_plugin_loader()
    for plugins in (loader.connection_loader, loader.shell_loader, loader.become_loader, loader.callback_loader):
        list(plugins.all(class_only=True))
    # Not the vars plugins: one loaded as a class here is later handed out where an instance is expected.
    for plugins, name in ((loader.action_loader, "ansible.builtin.normal"), (loader.strategy_loader, "linear"),
                          (loader.strategy_loader, "free")):
        plugins.get(name, class_only=True)


class CodeWatch:
    """Whether the code under the runner changed since it was loaded, looked at no more than once
    every CHECK_SECONDS: a burst of stages is not slowed by a file walk each, and a stage that
    starts within that second of a change runs with the code the runner loaded."""

    def __init__(self) -> None:
        self.loaded = code_fingerprint()
        self.checked = float("-inf")

    def changed(self) -> bool:
        now = time.monotonic()
        if now - self.checked < CHECK_SECONDS:
            return False
        self.checked = now
        return code_fingerprint() != self.loaded


def code_fingerprint() -> tuple:
    """What the warm process holds in memory or in its AnsiballZ cache: ansible-core's version and
    the size and mtime of every file of bbctl and of the collection's plugins."""
    from ansible.release import __version__

    files: list[tuple[str, int, int]] = []
    for root in (Path(__file__).resolve().parents[1], COLLECTION_ROOT / "plugins"):
        for directory, _dirs, names in os.walk(root):
            for name in names:
                if name.endswith(".py"):
                    with contextlib.suppress(OSError):
                        status = os.stat(os.path.join(directory, name))
                        files.append((os.path.join(directory, name), status.st_mtime_ns, status.st_size))
    return __version__, tuple(sorted(files))


def listen(path: Path) -> socket.socket:
    """A listening socket at path, mode 0600, in a directory of mode 0700 owned by this user."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    directory = os.lstat(path.parent)
    if not cache_file.trusted(directory, stat.S_ISDIR):
        raise BBError(f"{path.parent}: not a directory only uid {os.geteuid()} can write to")
    os.chmod(path.parent, 0o700)
    _remove_stale_socket(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    old_umask = os.umask(0o177)
    try:
        listener.bind(str(path))
    finally:
        os.umask(old_umask)
    listener.listen(256)  # Slurm may start 128 stage-ins at once (burst_buffer/lua's cap)
    listener.settimeout(ACCEPT_POLL_SECONDS)
    return listener


def _remove_stale_socket(path: Path) -> None:
    """Remove a socket left by a runner that died; refuse to start beside one that still answers."""
    try:
        status = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(status.st_mode):
        raise BBError(f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink()
        return
    finally:
        probe.close()
    raise BBError(f"another warm runner answers on {path}")


def _admit(conn: socket.socket) -> bool:
    """Whether to run this connection's stage: its peer runs as this user (root)."""
    uid = protocol.peer_uid(conn)
    if uid != os.geteuid():
        _log(f"refused a connection from uid {uid}")
        _refuse(conn, f"only uid {os.geteuid()} may use the warm runner")
        return False
    return True


def _refuse(conn: socket.socket, why: str) -> None:
    with contextlib.suppress(OSError):
        conn.sendall(protocol.encode({"refused": why}))


def _fork_supervisor(conn: socket.socket, listener: socket.socket, site: Site, dirs: list[Path]) -> None:
    if os.fork():
        return
    code = 1
    try:
        listener.close()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL)
        linux_process.set_niceness(site.stage_nice)  # this stage only: the listener keeps its own
        code = stage.supervise(conn, site.runs_dir, site.inventory, dirs, log=_log)
    finally:
        os._exit(code)  # not the server's atexit handlers (see stage._playbook_process)


def _reap() -> None:
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass


def _stop_on_signals() -> list[int]:
    """A list that becomes true on SIGTERM or SIGINT (the accept loop looks at it every second)."""
    stop: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: stop.append(signum))
    return stop


def _close(listener: socket.socket, path: Path, bound: int) -> None:
    """Close and remove the socket, unless another runner has replaced it meanwhile."""
    with contextlib.suppress(OSError):
        if os.lstat(path).st_ino == bound:
            path.unlink()
    listener.close()


def _notify_systemd(address: str | None, state: str) -> None:
    """sd_notify(3) without libsystemd: Type=notify units learn the runner is warm."""
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.sendto(state.encode(), address)


def _log(message: str) -> None:
    print(f"bbctl warm-runner: {message}", file=sys.stderr, flush=True)
