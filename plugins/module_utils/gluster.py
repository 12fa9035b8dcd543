# -*- coding: utf-8 -*-
# Copyright: hpc.burstbuffer developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""GlusterFS: the gluster CLI as argv lists, and its ``--xml`` answers as plain dicts.

Three layers, so each can be tested alone:

* argv builders: pure functions of their arguments. Every command runs with
  ``--mode=script`` (gluster never waits for a "y/n" answer) and, when given,
  ``--glusterd-sock=PATH`` (a glusterd that is not the system one, as on the
  loopback test bed).
* parsers: pure functions of the XML text gluster printed.
* ``GlusterCli``: runs argv through a CommandRunner (module_utils.command_runner)
  and hands the output to the parsers.

What gluster would refuse or store differently (volume names, bricks, layouts,
option values) is checked before anything runs, in module_utils.gluster_rules.

Gluster 10.3 facts these rely on (recorded in tests/fixtures/gluster):

* With ``--xml`` the exit status is 0 even when the operation failed; only
  ``<opRet>`` tells. Errors found by the CLI's own parser (a bad volume name, a
  duplicate brick) come as plain text with exit status 1 instead.
* ``volume quota NAME list`` without a path reads quota.conf from the
  compiled-in /var/lib/glusterd, so it answers "No quota configured" for a
  glusterd with another working directory; ``list /`` asks glusterd and works
  everywhere.
* Quota can be read and changed only while the volume is started.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import time
import xml.etree.ElementTree as ET

from ansible_collections.hpc.burstbuffer.plugins.module_utils.command_runner import CommandError, CommandRunner, Retry
from ansible_collections.hpc.burstbuffer.plugins.module_utils.gluster_rules import option_text, split_brick

GLUSTER = "gluster"
# Read-only questions to another node's glusterd must not hang a task for the CLI's 120 s.
REMOTE_TIMEOUT = 10
VOLUME_STATUSES = {0: "created", 1: "started", 2: "stopped"}
TRANSPORTS = {0: "tcp", 1: "rdma", 2: "tcp,rdma"}
ERRNO_VOLUME_MISSING = 30806
# glusterd runs one transaction per volume (and peer changes) at a time across the pool;
# a command that meets another one's lock fails at once and may simply be tried again.
_LOCK_CONTENTION = ("another transaction is in progress", "locking failed on",
                    "please try again after some time")
# A quota command's staging mounts the volume on glusterd's host (an "aux mount"); under load that
# mount can fail to connect (seen in 1 of 130 jobs at once on the test bed, "Transport endpoint is
# not connected"). The command then did nothing, so it may be tried again like a lock contention.
_AUX_MOUNT_FAILED = ("failed to start aux mount",)
RETRY_DELAYS = (0.5, 1, 1, 2, 2, 3, 3, 4, 4, 5)
# What the CLI prints when glusterd did not answer within its timeout (120 s, or --timeout).
_TIMED_OUT = "request timed out"


class GlusterError(CommandError):
    """A gluster command failed or printed something unreadable; str() says what and why."""

    def __init__(self, message, argv=None, op_errno=None, output=None):
        super().__init__(message, argv=argv, out=output)
        self.op_errno = op_errno


# --- argv builders: pure --------------------------------------------------------------

def cli_argv(glusterd_socket, *words):
    """``gluster --mode=script [--glusterd-sock=S] WORDS... --xml``."""
    prefix = [GLUSTER, "--mode=script"]
    if glusterd_socket:
        prefix.append(f"--glusterd-sock={glusterd_socket}")
    return prefix + [str(word) for word in words] + ["--xml"]


def with_timeout(argv, seconds):
    """argv (a ``gluster --mode=script ...`` list) with ``--timeout=seconds`` after the mode; unchanged
    when seconds is None (the CLI's own 120 s)."""
    return argv if seconds is None else [*argv[:2], f"--timeout={int(seconds)}", *argv[2:]]


def remote_argv(host, *words):
    """A read-only question to the glusterd of host: ``--remote-host`` cannot change anything."""
    return [GLUSTER, "--mode=script", f"--remote-host={host}", f"--timeout={REMOTE_TIMEOUT}",
            *words, "--xml"]


def pool_list_argv(glusterd_socket):
    return cli_argv(glusterd_socket, "pool", "list")


def peer_probe_argv(glusterd_socket, host):
    return cli_argv(glusterd_socket, "peer", "probe", host)


def peer_detach_argv(glusterd_socket, host):
    return cli_argv(glusterd_socket, "peer", "detach", host)


def node_uuid_argv(host):
    return remote_argv(host, "system::", "uuid", "get")


def volume_info_argv(glusterd_socket, name=None):
    return cli_argv(glusterd_socket, "volume", "info", *([name] if name else []))


def volume_status_argv(glusterd_socket, name):
    return cli_argv(glusterd_socket, "volume", "status", name)


def volume_get_all_argv(glusterd_socket, name):
    return cli_argv(glusterd_socket, "volume", "get", name, "all")


def volume_create_argv(glusterd_socket, name, bricks, layout=None, transport="tcp", force=False):
    """``volume create``; layout holds replica/arbiter/disperse/redundancy counts (None = unset)."""
    words = ["volume", "create", name]
    for key in ("replica", "arbiter", "disperse", "redundancy"):
        count = (layout or {}).get(key)
        if count is not None:
            words += [key, count]
    words += ["transport", transport or "tcp", *list(bricks)]
    if force:
        words.append("force")
    return cli_argv(glusterd_socket, *words)


def volume_start_argv(glusterd_socket, name):
    return cli_argv(glusterd_socket, "volume", "start", name)


def volume_stop_argv(glusterd_socket, name):
    return cli_argv(glusterd_socket, "volume", "stop", name)


def volume_delete_argv(glusterd_socket, name):
    return cli_argv(glusterd_socket, "volume", "delete", name)


def volume_set_argv(glusterd_socket, name, key, value):
    return cli_argv(glusterd_socket, "volume", "set", name, key, option_text(value))


def quota_enable_argv(glusterd_socket, name):
    return cli_argv(glusterd_socket, "volume", "quota", name, "enable")


def quota_limit_argv(glusterd_socket, name, path, nbytes):
    """A plain byte count: gluster reads "8GB" as 8 GiB, so units are never handed over."""
    return cli_argv(glusterd_socket, "volume", "quota", name, "limit-usage", path, int(nbytes))


def quota_list_argv(glusterd_socket, name, path="/"):
    return cli_argv(glusterd_socket, "volume", "quota", name, "list", path)


# --- parsing: pure -------------------------------------------------------------------

def parse_cli_xml(text, argv=None):
    """The <cliOutput> element; GlusterError if the operation failed or the text is not XML."""
    try:
        root = ET.fromstring(text.strip())
    except ET.ParseError:
        raise GlusterError(plain_text_error(text), argv=argv, output=text) from None
    if root.tag != "cliOutput":
        raise GlusterError(f"unexpected gluster output: <{root.tag}>", argv=argv, output=text)
    op_ret = _int(root.findtext("opRet"), default=-1)
    if op_ret != 0:
        message = (root.findtext("opErrstr") or root.findtext("output") or "").strip()
        raise GlusterError(message or f"gluster failed (opRet {op_ret})", argv=argv,
                           op_errno=_int(root.findtext("opErrno")), output=text)
    return root


def plain_text_error(text):
    """The CLI parser's complaint without the usage text that follows it."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    kept = []
    for line in lines:
        if line.startswith("Usage:"):
            break
        kept.append(line)
    return " ".join(kept) or "gluster printed nothing"


def is_lock_contention(text):
    lowered = (text or "").lower()
    return any(pattern in lowered for pattern in _LOCK_CONTENTION)


def is_transient(text):
    """A failure that changed nothing and may pass when tried again: another transaction's
    cluster lock, or a quota command's aux mount that did not come up."""
    lowered = (text or "").lower()
    return is_lock_contention(text) or any(pattern in lowered for pattern in _AUX_MOUNT_FAILED)


def is_timed_out(text):
    return _TIMED_OUT in (text or "").lower()


def cli_message(root):
    """The human part of a successful answer ("Probe on localhost not needed", ...)."""
    return (root.findtext("output") or "").strip()


def parse_pool_list(text):
    """``pool list --xml`` -> [{uuid, hostname, hostnames, connected, state, state_str, local}]."""
    root = parse_cli_xml(text)
    return [_peer(element) for element in root.iter("peer")]


def _peer(element):
    hostname = element.findtext("hostname", "")
    aliases = [h.text for h in element.findall("hostnames/hostname") if h.text]
    return {
        "uuid": element.findtext("uuid", ""),
        "hostname": hostname,
        "hostnames": aliases or [hostname],
        "connected": element.findtext("connected") == "1",
        "state": _int(element.findtext("state")),
        "state_str": element.findtext("stateStr"),
        # glusterd lists itself as "localhost", with neither state nor aliases.
        "local": hostname == "localhost",
    }


def parse_volume_info(text):
    """``volume info [NAME] --xml`` -> list of volume dicts ([] if the named one is missing)."""
    try:
        root = parse_cli_xml(text)
    except GlusterError as error:
        if error.op_errno == ERRNO_VOLUME_MISSING:
            return []
        raise
    return [_volume(element) for element in root.iter("volume")]


def _volume(element):
    status = _int(element.findtext("status"))
    return {
        "name": element.findtext("name"),
        "id": element.findtext("id"),
        "status": VOLUME_STATUSES.get(status, str(status)),
        "started": status == 1,
        "type": element.findtext("typeStr"),
        "brick_count": _int(element.findtext("brickCount")),
        "dist_count": _int(element.findtext("distCount")),
        "replica": _int(element.findtext("replicaCount")),
        "arbiter": _int(element.findtext("arbiterCount")),
        "disperse": _int(element.findtext("disperseCount")),
        "redundancy": _int(element.findtext("redundancyCount")),
        "transport": TRANSPORTS.get(_int(element.findtext("transport")), "tcp"),
        "bricks": [_brick(b) for b in element.findall("bricks/brick")],
        "options": {o.findtext("name"): o.findtext("value", "")
                    for o in element.findall("options/option")},
    }


def _brick(element):
    name = element.findtext("name") or (element.text or "").strip()
    host, path = split_brick(name)
    return {"name": name, "host": host, "path": path,
            "host_uuid": element.findtext("hostUuid"),
            "arbiter": element.findtext("isArbiter") == "1"}


def parse_volume_status(text):
    """``volume status NAME --xml`` of a started volume -> {name, bricks: [{..., online}]}."""
    root = parse_cli_xml(text)
    volume = root.find("volStatus/volumes/volume")
    if volume is None:
        raise GlusterError("volume status printed no volume", output=text)
    bricks = []
    for node in volume.findall("node"):
        path = node.findtext("path", "")
        if not path.startswith("/"):
            continue  # self-heal and quota daemons are listed as nodes too
        bricks.append({"host": node.findtext("hostname"), "path": path,
                       "peer_uuid": node.findtext("peerid"),
                       "online": node.findtext("status") == "1",
                       "port": _int(node.findtext("port")), "pid": _int(node.findtext("pid"))})
    return {"name": volume.findtext("volName"), "bricks": bricks}


def parse_volume_get(text):
    """``volume get NAME all --xml`` -> {option: value}; " (DEFAULT)" stripped, "(null)" -> None.

    Gluster 10.3 lists a few options twice, performance.cache-size even with two defaults
    (32MB for io-cache, 128MB for quick-read): such a value is unknown (None), so a wanted
    value is always set.
    """
    root = parse_cli_xml(text)
    options = {}
    for opt in root.iter("Opt"):
        key, value = opt.findtext("Option"), opt.findtext("Value", "")
        if value.endswith(" (DEFAULT)"):
            value = value[:-len(" (DEFAULT)")]
        value = None if value == "(null)" else value
        options[key] = value if options.get(key, value) == value else None
    return options


def parse_quota_list(text):
    """``volume quota NAME list PATH --xml`` -> {path: {hard_limit, soft_limit_percent, used}}.

    A path without a limit is left out (gluster lists it with N/A values).
    """
    root = parse_cli_xml(text)
    limits = {}
    for limit in root.iter("limit"):
        hard = _int(limit.findtext("hard_limit"))
        if hard is None:
            continue
        limits[limit.findtext("path")] = {
            "hard_limit": hard,
            "soft_limit_percent": limit.findtext("soft_limit_percent"),
            "used": _int(limit.findtext("used_space")),
        }
    return limits


def parse_node_uuid(text):
    return parse_cli_xml(text).findtext("uuidGenerate/uuid")


def _int(text, default=None):
    try:
        return int(text)
    except (TypeError, ValueError):
        return default


# --- running ------------------------------------------------------------------------------

def gluster_text(done):
    """What a gluster command answered: its XML, else whatever it printed."""
    if done.out.lstrip().startswith("<"):
        return done.out
    text = "\n".join(part.strip() for part in (done.out, done.err) if part and part.strip())
    return text or f"gluster exited with status {done.rc} and printed nothing"


# Other tasks and people share glusterd: a command that meets the cluster lock is tried again.
TRANSIENT_RETRY = Retry(when=lambda _rc, out, err: is_transient(out) or is_transient(err), delays=RETRY_DELAYS)
# glusterd keeps the volume lock of a transaction its CLI gave up on until its lock timer ends,
# 180 s after it was taken: 60 s after the CLI's 120 s (seen 2026-12-07, a `quota list` under 50
# jobs at once: refused "Another transaction is in progress" until 06:30:47, taken at 06:27:52).
# A read asked again after a timeout waits out the lock that long (RETRY_DELAYS then 5 s steps:
# 85.5 s of waiting in all).
AFTER_TIMEOUT_RETRY = TRANSIENT_RETRY._replace(delays=RETRY_DELAYS + (5,) * 12)


class GlusterCli:
    """The gluster CLI through a CommandRunner: C locale, check mode, retries of transient failures."""

    def __init__(self, module, glusterd_socket=None, sleep=time.sleep, timeout=None, reask_timed_out=False):
        self.module = module
        self.socket = glusterd_socket
        self.timeout = timeout  # seconds glusterd has to answer a read (None: the CLI's 120)
        # Ask a read once more after "Request timed out" (AFTER_TIMEOUT_RETRY): it changed nothing
        # (50 jobs at once, 2026-12-07: a setup failed on `quota list` after 120 s, behind a dozen
        # setups on two cores). Off where a timeout is the finding (buffer_survey counts a hung
        # glusterd against its server).
        self.reask_timed_out = reask_timed_out
        self.sleep = sleep
        self.binary = module.get_bin_path(GLUSTER, required=True)
        self.runner = CommandRunner(module, retry=TRANSIENT_RETRY, sleep=sleep,
                                    binaries={GLUSTER: self.binary})

    def output(self, argv):
        """What argv (argv[0] = "gluster") printed, in check mode too; with reask_timed_out, asked
        once more if glusterd did not answer in time."""
        done = self.runner.read(argv, ok=None)
        if self.reask_timed_out and is_timed_out(done.out + done.err):
            done = self.runner.read(argv, ok=None, retry=AFTER_TIMEOUT_RETRY)
        return gluster_text(done)

    def execute(self, argv):
        """Run a change: its <cliOutput> (None in check mode), or GlusterError naming argv."""
        return self.runner.change(
            argv, ok=None, parse=lambda done: parse_cli_xml(gluster_text(done), argv=argv))

    def read(self, argv, parser):
        try:
            return parser(self.output(argv))
        except GlusterError as error:
            error.argv = error.argv or argv
            raise

    def pool(self):
        return self.read(pool_list_argv(self.socket), parse_pool_list)

    def volumes(self):
        return self.read(with_timeout(volume_info_argv(self.socket), self.timeout), parse_volume_info)

    def volume(self, name):
        return next((v for v in self.volumes() if v["name"] == name), None)

    def volume_status(self, name):
        return self.read(volume_status_argv(self.socket, name), parse_volume_status)

    def effective_options(self, volume):
        """Every option's value: gluster's defaults, overlaid with what was set on the volume."""
        options = self.read(volume_get_all_argv(self.socket, volume["name"]), parse_volume_get)
        options.update(volume["options"])
        return options

    def quota_limit(self, name, path="/"):
        """The hard limit in bytes on path of a started volume with quota enabled; None if unset."""
        limits = self.read(quota_list_argv(self.socket, name, path), parse_quota_list)
        return limits.get(path, {}).get("hard_limit")

    def node_uuid(self, host):
        """The UUID of the glusterd on host; None if it cannot be asked."""
        try:
            return self.read(node_uuid_argv(host), parse_node_uuid)
        except GlusterError:
            return None
