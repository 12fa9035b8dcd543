"""The site configuration bbctl runs with, and every path and name derived from it.

One YAML file (``--config``, else ``$BBCTL_CONFIG``, else /etc/bbctl/bbctl.yml)::

    inventory: /etc/bbctl/inventory.yml   # storage servers (bb_storage) and clients (bb_clients)
    state: /var/lib/bbctl/state.db        # or http://etcd1:2379,http://etcd2:2379,...
    pools: {nvme: {granularity: 4GiB, hosts: all}}
    work_dir: /var/lib/bbctl              # runs/, stage/ mounts, bbctl.log
    mount_root: /mnt/bb                   # where compute nodes mount buffers
    slurm_dir: /etc/slurm                 # burst_buffer.lua, bbctl-site.lua, bbctl-pools.json
    keep_runs: 200                        # ansible-runner dirs kept for finished buffers
    brick_wait: 10                        # seconds setup waits for bricks Slurm counts as free
    server_fail_limit: 3                  # consecutive failed runs that make a storage server unusable
    drain_nodes: true                     # drain a compute node where a buffer could not be unmounted
    stage_nice: 10                        # niceness of stage processes and their playbooks (0: full priority)
    stage_workers: 32                     # copy threads per stage (bb_stage's default)
    policy: {max_capacity: 1TiB}          # limits, persistent creators, presets (bbctl.policy)

Settings that passed validation are cached in <work_dir>/site-cache/ (see
_cached_settings).

This module is the one source of truth for names and paths: the volume of a
job or persistent buffer, where it is mounted on the stage host and on compute
nodes, and the job's environment (burst_buffer.lua gets the same values
through bbctl-site.lua, which ``bbctl slurm install`` writes from here).
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from bbctl import cache_file, entry, policy
from bbctl.collection import stage_threads
from bbctl.errors import BBError
from bbctl.policy import Policy

if TYPE_CHECKING:
    from ansible.module_utils.errors import AnsibleValidationError

DEFAULT_CONFIG = Path("/etc/bbctl/bbctl.yml")
CONFIG_ENV = "BBCTL_CONFIG"

# Volume names: a job's is derived from its id, a persistent buffer's from its name
# (names never start with a digit, job ids are digits, so the two never collide).
JOB_VOLUME_PREFIX = "bbjob-"
PERSISTENT_VOLUME_PREFIX = "bbp-"
JOB_ID_RE = re.compile(r"^[0-9]{1,10}$")
# A persistent name GlusterFS accepts as it is (the only names before dots and dashes were allowed).
PLAIN_NAME_RE = re.compile(r"^[A-Za-z0-9_]+$")
NAME_HASH_MODULUS = 4294967291  # the largest prime below 2**32: the hash stays exact in Lua's doubles
NAME_HASH_PREFIX = 40  # characters of a sanitised name kept before its hash
# Bytes one file of a job's striped buffer can hold, set only when less than the buffer (job_environment).
MAX_FILE_VARIABLE = "BB_JOB_STRIPED_MAX_FILE"
# A cache buffer's mount point also under DataWarp's cache name (DW_JOB_STRIPED_CACHE, with its BB_ twin)
# and the name Kyoto-style job scripts look for (their $QSUB_BB_DIR).
CACHE_VARIABLE = "DW_JOB_STRIPED_CACHE"
CACHE_DIR_VARIABLE = "BB_CACHE_DIR"
# Compute nodes mount a cache buffer's volume here (mount_root/<volume>SUFFIX); the job's cache is at mount_path.
CACHE_VOLUME_SUFFIX = "-cache"
# The settings of a bbctl.yml that passed validation, under <work_dir>/SETTINGS_CACHE (see load).
SETTINGS_CACHE = Path("site-cache", "settings.json")


class ConfigError(BBError):
    """The site configuration is missing or wrong."""


def positive_int(value: Any) -> int:
    """An argument-spec type: a whole number above 0 (YAML's true/false are not numbers here)."""
    return _whole_number_from(value, 1, f"expected a whole number above 0, not {value!r}")


def niceness(value: Any) -> int:
    """An argument-spec type: a niceness, a whole number from 0 to 19 (setpriority's range for us)."""
    number = _whole_number_from(value, 0, f"expected a niceness from 0 to 19, not {value!r}")
    if number > 19:
        raise ValueError(f"expected a niceness from 0 to 19, not {value!r}")
    return number


def whole_number(value: Any) -> int:
    """An argument-spec type: a whole number, 0 or more (YAML's true/false are not numbers here)."""
    return _whole_number_from(value, 0, f"expected a whole number, 0 or more, not {value!r}")


def _whole_number_from(value: Any, least: int, expected: str) -> int:
    """value as an int of at least ``least``; TypeError or ValueError saying ``expected`` otherwise."""
    from ansible.module_utils.common.validation import check_type_int  # see _validated_settings

    if isinstance(value, bool):
        raise TypeError(expected)
    try:
        number = check_type_int(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: YAML's .inf
        raise TypeError(expected) from None
    if number < least:
        raise ValueError(expected)
    return number


# The settings of bbctl.yml in the argument-spec language of the roles' meta/argument_specs.yml,
# checked by ansible-core's own validator (which ignores `description`). This is the one
# definition: docs/CONFIGURATION.md is generated from it (`bbctl config reference`, see
# bbctl.config_reference), so every setting carries its description here. The keys of each
# pool under `pools` are bbctl.pools.POOL_SETTINGS.
SETTINGS: dict[str, dict[str, Any]] = {
    "inventory": {
        "type": "path", "required": True,
        "description": "The Ansible inventory of the storage servers (group `bb_storage`, each with its "
                       "`bb_bricks`) and the compute nodes (group `bb_clients`): the collection's, as "
                       "`inventories/example/hosts.yml`. bbctl limits each run to the servers holding the "
                       "buffer's bricks, the stage host (`localhost`) and the job's compute nodes."},
    "pools": {
        "type": "dict", "required": True,
        "description": "The pools of bricks, by name as Slurm and `pool=` see them; the first is the default "
                       "pool. Each pool is a mapping of the keys under Pools below."},
    "state": {
        "type": "str",
        "description": "The state store: a path to an SQLite database (the default, `<work_dir>/state.db`), "
                       "or the etcd v3 members' client URLs `http://HOST:PORT` or `https://...`, several separated "
                       "by commas (their JSON gateway; keys under `/bbctl`) for controllers that share one store."},
    "work_dir": {
        "type": "path", "default": "/var/lib/bbctl",
        "description": "bbctl's own files: `runs/` (one ansible-runner directory per buffer and stage), "
                       "`stage/` (buffers mounted on the stage host for staging), `bbctl.log`, `site-cache/` "
                       "(these settings once validated) and, by default, `state.db`."},
    "mount_root": {
        "type": "path", "default": "/mnt/bb",
        "description": "Where compute nodes mount buffers: `$DW_JOB_STRIPED` is `<mount_root>/bbjob-<job id>`. "
                       "Made a shared mount point on each node so that containers see buffers come and go."},
    "slurm_dir": {
        "type": "path",
        "description": "The directory of slurm.conf: `bbctl slurm-install` writes burst_buffer.lua and its "
                       "files there, bbctl rewrites `bbctl-pools.json` there on every allocation, and "
                       "`scontrol` is run with `SLURM_CONF=<slurm_dir>/slurm.conf`. Unset: no pools file is "
                       "written (burst_buffer/datawarp reads the pools from `dw_wlm_cli`)."},
    "burst_buffer_conf": {
        "type": "path",
        "description": "burst_buffer.conf, read for `StageInTimeout`, `StageOutTimeout` and `OtherTimeout` "
                       "(a stage's playbook gets the stage's timeout less 10 %, or less 30 s when that is "
                       "less, so that it fails with bbctl's message before Slurm kills it; Slurm's defaults "
                       "where the file sets none). Unset: `<slurm_dir>/burst_buffer.conf`."},
    "keep_runs": {
        "type": positive_int, "default": 200,
        "description": "Run directories under `<work_dir>/runs/` kept for buffers that are gone; older ones "
                       "are pruned at each teardown."},
    "brick_wait": {
        "type": positive_int, "default": 10,
        "description": "Seconds setup (and create_persistent) waits for free bricks when a pool has too few "
                       "(bbctl.allocation). Slurm admits a job on its own books, which run ahead of bbctl's: a "
                       "striped buffer's redundancy bricks are not in them, and a torn-down buffer's bricks come "
                       "free seconds after Slurm frees its space. After the wait a job buffer's build is left to "
                       "the job's stage-in, which waits up to half of StageInTimeout for bricks, so the job stays "
                       "pending in stage-in and runs when they come free; a persistent buffer's creation fails. "
                       "Waiting builds take turns: a later, smaller one does not take the bricks an earlier one "
                       "waits for."},
    "server_fail_limit": {
        "type": whole_number, "default": 3,
        "description": "Consecutive failed playbook runs on one storage server after which bbctl marks it "
                       "unusable (`failing`): no new buffer gets a brick on it, and the pools Slurm reads "
                       "(`bbctl pools`, `scontrol show burst`) stop counting its bricks. A run that fails on a "
                       "compute node or the stage host counts against no server; a successful run on the "
                       "server resets its count. `bbctl servers` lists the servers, `bbctl servers --resume "
                       "NAME` returns one (docs/OPERATOR_GUIDE.md, \"Draining and returning a storage "
                       "server\"). 0: never mark one."},
    "drain_nodes": {
        "type": "bool", "default": True,
        "description": "Drain, in Slurm, a compute node on which a buffer could not be unmounted (post-run or "
                       "teardown failed there, or its playbook timed out before the node had unmounted) or on "
                       "which pre-run's mount hung until its timeout: a hung or busy mount is the node's, and "
                       "the next job there would meet it. The reason names "
                       "the job and the cause; `scontrol update NodeName=N State=RESUME` returns the node once "
                       "it is clean (docs/OPERATOR_GUIDE.md, \"A compute node bbctl drained\")."},
    "stage_nice": {
        "type": niceness, "default": entry.DEFAULT_STAGE_NICE,
        "description": "The niceness (0-19) of bbctl's stage processes: the stages that run playbooks "
                       "(`bbctl setup`, `stage-in`, `pre-run`, `post-run`, `stage-out`, `teardown`, persistent "
                       "buffers, `gc`, `reconcile`, `sweep`; dw_wlm_cli's setup, data_in, pre_run, post_run, "
                       "data_out, teardown, create_persistent), their playbooks and what those start on the "
                       "controller, through the warm runner too; a playbook's session (ansible-runner's "
                       "pty) gets it as its scheduling autogroup's niceness, without which the kernel would "
                       "weigh each playbook as much as slurmctld. They start at 10 before bbctl.yml is read "
                       "(bbctl.entry) and take this value then. Quick calls (job_process, paths, pools, status) "
                       "keep their caller's priority. Many stages at once can keep every core busy, and "
                       "slurmctld's quick calls then wait for the CPU: burst_buffer/datawarp kills `dw_wlm_cli "
                       "--function job_process` after ValidateTimeout (5 s by default) and refuses the "
                       "submission (docs/RELIABILITY.md, \"Load\"). 0: stages run at full priority."},
    "stage_workers": {
        "type": positive_int, "default": stage_threads.DEFAULT_WORKERS,
        "description": "Copy threads per stage-in or stage-out (`bb_stage`'s `workers`)."},
    "warm_runner_socket": {
        "type": "path", "default": "/run/bbctl/warm-runner.sock",
        "description": "The unix socket of `bbctl warm-runner`, the resident process that runs stages with "
                       "ansible-core already imported (0.5-1 s less per stage; docs/OPERATOR_GUIDE.md, \"The warm "
                       "runner\"). bbctl tries it before each playbook run and runs the stage through "
                       "ansible-runner itself when nothing answers there; its directory is made mode 0700."},
    "policy": {
        "type": "dict", "default": {},
        "description": "Site policy (bbctl.policy): the largest buffer a user or a pool allows, who may create "
                       "persistent buffers, and presets. Refused requests fail at sbatch with a message naming "
                       "the token and the setting; checks that need the user's identity run at sbatch only where "
                       "Slurm passes it (burst_buffer/lua from Slurm 23.02), and always again at setup. Rerun "
                       "`bbctl slurm-install` after changing it, or when group membership changes: sbatch reads "
                       "users and groups resolved then.",
        "options": {
            "max_capacity": {
                "type": "str",
                "description": "The largest buffer (a size, e.g. 1TiB) one jobdw or create_persistent line of "
                               "any user may ask for, unless user_max_capacity or group_max_capacity says "
                               "otherwise. Unset: no limit."},
            "user_max_capacity": {
                "type": "dict", "default": {},
                "description": "User name -> the largest buffer that user may ask for. Wins over the user's "
                               "groups and max_capacity, in either direction."},
            "group_max_capacity": {
                "type": "dict", "default": {},
                "description": "Group name -> the largest buffer its members may ask for (primary or "
                               "supplementary group). A user in several listed groups gets the largest; "
                               "wins over max_capacity, in either direction."},
            "pool_max_capacity": {
                "type": "dict", "default": {},
                "description": "Pool name -> the largest buffer anyone may ask for in that pool, on top of the "
                               "user's limit."},
            "persistent_creators": {
                "type": "dict",
                "description": "Who may create persistent buffers (#BB create_persistent, dw_wlm_cli "
                               "create_persistent, bbctl create-persistent). Unset: everyone; set: only these.",
                "options": {
                    "users": {"type": "list", "elements": "str", "default": [],
                              "description": "User names allowed."},
                    "groups": {"type": "list", "elements": "str", "default": [],
                               "description": "Group names whose members are allowed."},
                }},
            "presets": {
                "type": "dict", "default": {},
                "description": "Preset name -> the keys `preset=NAME` on a jobdw or create_persistent line "
                               "stands for: any of pool, access_mode, type, fs (values as on a jobdw line; "
                               "create_persistent takes access_mode striped or private, and fs gluster). A "
                               "key the line gives itself wins; the limits apply to the result. capacity= "
                               "stays on the line: Slurm reads it there to book the space."},
        },
    },
}


@dataclass(frozen=True)
class Site:
    path: Path
    inventory: Path
    state: str
    pools: Mapping[str, Any]
    work_dir: Path
    mount_root: Path
    slurm_dir: Path | None = None
    burst_buffer_conf: Path | None = None
    keep_runs: int = 200
    brick_wait: int = 10  # seconds
    server_fail_limit: int = 3  # consecutive failed runs; 0: never mark a server unusable
    drain_nodes: bool = True  # drain a compute node where a buffer could not be unmounted
    stage_nice: int = entry.DEFAULT_STAGE_NICE  # niceness of stage processes (bbctl.entry)
    stage_workers: int = stage_threads.DEFAULT_WORKERS
    policy: Policy = field(default_factory=Policy)
    warm_runner_socket: Path = Path("/run/bbctl/warm-runner.sock")
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False)

    # --- where bbctl keeps its own files -------------------------------------------
    @property
    def runs_dir(self) -> Path:
        return self.work_dir / "runs"

    @property
    def stage_root(self) -> Path:
        return self.work_dir / "stage"

    @property
    def log_file(self) -> Path:
        return self.work_dir / "bbctl.log"

    @property
    def pools_json(self) -> Path | None:
        return self.slurm_dir / "bbctl-pools.json" if self.slurm_dir else None

    @property
    def bb_conf(self) -> Path | None:
        if self.burst_buffer_conf:
            return self.burst_buffer_conf
        return self.slurm_dir / "burst_buffer.conf" if self.slurm_dir else None


def load(path: Path | str | None = None) -> Site:
    """The site configuration from path, $BBCTL_CONFIG or the default location (see _cached_settings)."""
    where = Path(path or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG)
    try:
        text = where.read_text()
        data = yaml.safe_load(text) or {}
    except FileNotFoundError:
        raise ConfigError(f"no bbctl configuration at {where}: write one (see docs/OPERATOR_GUIDE.md) "
                          f"or point --config / ${CONFIG_ENV} at it") from None
    except (OSError, UnicodeDecodeError, RecursionError, yaml.YAMLError) as exc:  # RecursionError: deep nesting
        raise ConfigError(f"cannot read the bbctl configuration {where}: {exc}") from exc
    return _site(_cached_settings(text, data, where), data, where)


def _cached_settings(text: str, data: Any, where: Path) -> Mapping[str, Any]:
    """The validated settings of data (read from text), from the cache when it holds them.

    Settings that passed validation are kept under <work_dir>/SETTINGS_CACHE (written and
    read as bbctl.cache_file does: only this user may have written it), keyed by _cache_key:
    an unchanged bbctl.yml is not validated again, which would import ansible-core's
    validator on every call Slurm makes. Mistakes are never cached: their messages always
    come from the validator.
    """
    cache = _settings_cache(data)
    if cache is None:
        return _validated_settings(data, where)
    key = _cache_key(text)
    settings = cache_file.read(cache, key)
    if isinstance(settings, dict) and set(settings) == set(SETTINGS):
        return settings
    settings = _validated_settings(data, where)
    cache_file.write(cache, key, settings)
    return settings


def from_mapping(data: Any, where: Path) -> Site:
    """The Site of settings read from where; ConfigError naming every setting that is wrong."""
    return _site(_validated_settings(data, where), data, where)


def _validated_settings(data: Any, where: Path) -> dict[str, Any]:
    """Every setting of data, checked and with its default; ConfigError naming every setting that is wrong."""
    # Imported here, not with the module: an unchanged bbctl.yml comes from the cache without it.
    from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping of settings")
    odd = [repr(key) for key in data if not isinstance(key, str)]
    if odd:  # ansible-core's validator fails on them with TypeError
        raise ConfigError(f"{where}: setting names are words, not {', '.join(odd)}; "
                          f"known: {', '.join(sorted(SETTINGS))}")
    sections = _not_sections(SETTINGS, data)
    if sections:
        raise ConfigError(f"{where}: {'; '.join(f'{name}: expected a mapping of settings' for name in sections)}")
    # A copy: the validator fills sub-option defaults into a section's default dict in place.
    result = ArgumentSpecValidator(copy.deepcopy(SETTINGS)).validate(dict(data))
    if result.error_messages:
        problems = [_describe(error, result.unsupported_parameters) for error in result.errors]
        raise ConfigError(f"{where}: {'; '.join(problems)}")
    return result.validated_parameters


def _not_sections(spec: Mapping[str, Any], data: Mapping[str, Any], within: str = "") -> list[str]:
    """The sections (settings with options, e.g. policy) that data gives as something other than a
    mapping: ansible-core's validator fails on them with TypeError instead of naming them."""
    found = []
    for name, setting in spec.items():
        value = data.get(name)
        if "options" not in setting or value is None:
            continue
        if not isinstance(value, Mapping):
            found.append(within + name)
        else:
            found += _not_sections(setting["options"], value, f"{within}{name}.")
    return found


def _site(settings: Mapping[str, Any], data: Any, where: Path) -> Site:
    work_dir = Path(settings["work_dir"])
    optional = {key: Path(settings[key]) for key in ("slurm_dir", "burst_buffer_conf") if settings[key]}
    try:
        site_policy = policy.from_settings(settings["policy"], settings["pools"])
    except policy.ConfigProblem as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return Site(path=where, inventory=Path(settings["inventory"]),
                state=settings["state"] or str(work_dir / "state.db"), pools=settings["pools"],
                work_dir=work_dir, mount_root=Path(settings["mount_root"]), keep_runs=settings["keep_runs"],
                brick_wait=settings["brick_wait"], server_fail_limit=settings["server_fail_limit"],
                drain_nodes=settings["drain_nodes"], stage_nice=settings["stage_nice"],
                stage_workers=settings["stage_workers"], policy=site_policy,
                warm_runner_socket=Path(settings["warm_runner_socket"]), raw=data, **optional)


def _describe(error: AnsibleValidationError, unsupported: set[str]) -> str:
    """One problem for the user: unknown settings listed with the known ones; otherwise
    ansible-core's own words, which name the setting and what it expected."""
    from ansible.module_utils.errors import UnsupportedError  # loaded by then: see _validated_settings

    if not isinstance(error, UnsupportedError):
        return str(error)
    top = sorted(name for name in unsupported if isinstance(name, str))
    if top:
        return f"unknown setting(s) {', '.join(top)}; known: {', '.join(sorted(SETTINGS))}"
    # Within a section (policy): ansible-core reports the paths as tuples and lists the section's keys.
    inner = sorted(".".join(name) for name in unsupported)
    known = str(error).rpartition("Supported parameters include: ")[2].rstrip(".")
    return f"unknown setting(s) {', '.join(inner)}; known there: {known}"


def _settings_cache(data: Any) -> Path | None:
    """Where the validated settings of data are cached: <work_dir>/SETTINGS_CACHE, beside the state
    database's default place. None when they are not cached: data is not a mapping, its work_dir
    is not an absolute path as written, or a path setting names a $VARIABLE or ~ (validation expands
    those, so the result depends on the environment of the call, not on the file alone)."""
    if not isinstance(data, Mapping):
        return None
    paths = [data.get(key) for key, spec in SETTINGS.items() if spec["type"] == "path"]
    if any(value is not None and (not isinstance(value, str) or "$" in value or "~" in value) for value in paths):
        return None
    work_dir = data.get("work_dir", SETTINGS["work_dir"]["default"])
    return Path(work_dir) / SETTINGS_CACHE if isinstance(work_dir, str) and os.path.isabs(work_dir) else None


def _cache_key(text: str) -> str:
    """sha256 of what decides the validated settings: the file's text, the argument spec, this
    module's source (positive_int, the spec's defaults) and ansible-core's version."""
    digest = hashlib.sha256()
    spec = json.dumps(SETTINGS, sort_keys=True, default=lambda check: check.__qualname__)
    for part in (text.encode("utf-8", "surrogateescape"), spec.encode(), _source(__file__), _ansible_release()):
        digest.update(len(part).to_bytes(8, "big") + part)
    return digest.hexdigest()


def _ansible_release() -> bytes:
    """ansible-core's release.py (its version), found without importing ansible."""
    package = importlib.util.find_spec("ansible")
    locations = package.submodule_search_locations if package else None
    return _source(os.path.join(locations[0], "release.py")) if locations else b""


def _source(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError:
        return b""


def dump(settings: Mapping[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("# bbctl site configuration (see src/bbctl/site.py)\n"
                    + yaml.safe_dump(dict(settings), sort_keys=False))


# --- names ------------------------------------------------------------------------------

def job_key(job_id: str | int) -> str:
    text = str(job_id)
    if not JOB_ID_RE.match(text):
        raise BBError(f"job id {text!r}: expected digits only", exit_code=2)
    return text


def is_job_key(key: str) -> bool:
    return bool(JOB_ID_RE.match(key))


def volume_name(key: str) -> str:
    """The GlusterFS volume (or Lustre fsname source) of a buffer key: a valid, unique volume name.

    ``4711`` -> ``bbjob-4711``; ``results`` -> ``bbp-results``; a name GlusterFS would refuse
    (``test35.1``: volume names hold only letters, digits, ``_`` and ``-``) keeps its safe
    characters and gains a hash of the whole name: ``bbp-test35_1-0a1b2c3d``. A ``-`` before the
    hash never appears in the plain form, so the two forms cannot collide. burst_buffer.lua
    computes the same (tests compare them).
    """
    if is_job_key(key):
        return JOB_VOLUME_PREFIX + key
    if PLAIN_NAME_RE.match(key):
        return PERSISTENT_VOLUME_PREFIX + key
    safe = re.sub(r"[^A-Za-z0-9_]", "_", key)[:NAME_HASH_PREFIX]
    return f"{PERSISTENT_VOLUME_PREFIX}{safe}-{name_hash(key):08x}"


def lustre_fsname(key: str) -> str:
    """The Lustre fsname of a buffer key: unique per key, 8 characters at most (mkfs.lustre's limit).

    A job's is ``j`` and its id in base 36 (``4711`` -> ``j3mv``; the largest id, ten digits, takes
    seven); a persistent buffer's is ``p`` and its name's hash (name_hash) in base 36, which two names
    share with a chance of one in about 4e9. The volume name cut to 8 characters, the role's default
    for hand runs, is not unique: ``bbjob-4711`` and ``bbjob-4799`` both give ``bbjob-47``, and two
    buffers' targets on one server would then share a mount point.
    """
    number, kind = (int(key), "j") if is_job_key(key) else (name_hash(key), "p")
    digits = ""
    while True:
        number, digit = divmod(number, 36)
        digits = "0123456789abcdefghijklmnopqrstuvwxyz"[digit] + digits
        if not number:
            return kind + digits


def name_hash(name: str) -> int:
    """A polynomial hash of the name's UTF-8 bytes modulo a prime below 2**32 (Lua 5.1 has no bit operations)."""
    value = 0
    for byte in name.encode("utf-8", "surrogateescape"):
        value = (value * 131 + byte) % NAME_HASH_MODULUS
    return value


# --- paths --------------------------------------------------------------------------------

def stage_path(site: Site, key: str) -> Path:
    """Where the stage host (the controller running bbctl) mounts the buffer for staging."""
    return site.stage_root / volume_name(key)


def mount_path(site: Site, key: str) -> Path:
    """Where compute nodes mount the buffer: $DW_JOB_STRIPED or $DW_PERSISTENT_STRIPED_<name>."""
    return site.mount_root / volume_name(key)


def progress_path(site: Site, run_key: str, stage: str) -> Path:
    """Where bb_stage appends its progress snapshots (JSON lines) during a stage of run_key."""
    return site.runs_dir / run_key / f"{stage}.progress"


def cache_volume_path(site: Site, key: str) -> Path:
    """Where compute nodes mount the volume of a cache buffer: its upper directory is in it, and the
    job's cache (fuse-overlayfs) is at mount_path."""
    return site.mount_root / (volume_name(key) + CACHE_VOLUME_SUFFIX)


def private_mount_path(site: Site, key: str) -> Path:
    """Where each compute node mounts its own directory of the buffer: $DW_JOB_PRIVATE."""
    return site.mount_root / (volume_name(key) + "-private")


def buffer_variables(path: Any) -> tuple[str, ...]:
    """The variables that name the root of the buffer a directive path (bbctl.directives.BufferPath) lies in."""
    if path.area == "persistent":
        return (f"DW_PERSISTENT_STRIPED_{path.name}", f"BB_PERSISTENT_STRIPED_{path.name}")
    return (f"DW_JOB_{path.area.upper()}", f"BB_JOB_{path.area.upper()}")


def job_environment(site: Site, job_id: str, *, jobdw: bool, private: bool,
                    persistent: tuple[str, ...], max_file: int | None = None, cache: bool = False) -> dict[str, str]:
    """The variables a job sees (DataWarp names and their BB_ twins), a pure function of its inputs.

    ``max_file``: bytes one file of the job's buffer can hold when that is less than the buffer
    (bbctl.layouts.Layout.file_limit), as MAX_FILE_VARIABLE; DataWarp has no such variable, so no DW_ twin.
    ``cache``: the job buffer is a cache of pfs=DIR: its mount point is also CACHE_VARIABLE (and twin)
    and CACHE_DIR_VARIABLE.
    """
    env: dict[str, str] = {}
    key = job_key(job_id)
    if jobdw:
        env["DW_JOB_STRIPED"] = str(mount_path(site, key))
        if cache:
            env[CACHE_VARIABLE] = str(mount_path(site, key))
        if private:
            env["DW_JOB_PRIVATE"] = str(private_mount_path(site, key))
    for name in persistent:
        env[f"DW_PERSISTENT_STRIPED_{name}"] = str(mount_path(site, name))
    env.update({"BB_" + k[3:]: v for k, v in list(env.items())})
    if jobdw and cache:
        env[CACHE_DIR_VARIABLE] = str(mount_path(site, key))
    if jobdw and max_file is not None:
        env[MAX_FILE_VARIABLE] = str(max_file)
    return env
