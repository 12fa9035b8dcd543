"""Site policy: how large a buffer may be, who may create persistent buffers, and presets.

bbctl.yml's ``policy`` section (its settings are declared, with their documentation, in
bbctl.site.SETTINGS)::

    policy:
      max_capacity: 1TiB                   # one buffer, anyone not listed below
      user_max_capacity: {alice: 4TiB}     # one buffer of this user (wins over groups and the default)
      group_max_capacity: {bigdata: 8TiB}  # one buffer of a member (the largest of the user's groups)
      pool_max_capacity: {nvme: 2TiB}      # one buffer in this pool, whoever asks
      persistent_creators: {users: [alice], groups: [hpcadmin]}  # absent: anyone may
      presets:                             # preset=fast on a jobdw or create_persistent line
        fast: {pool: nvme, access_mode: striped, type: scratch, fs: gluster}

Policy.apply checks a JobRequest and returns it with its presets expanded. It runs twice
for a job: at submit, inside slurmctld, in Lua (slurm/bbctl-policy.lua, from the values
lua_values renders into bbctl-site.lua; tests/unit/bbctl/test_lua_policy.py holds the two
to the same verdicts and messages), and again, authoritatively, at setup and
create_persistent. Decisions:

- Sizes are per buffer: a jobdw line's or a create_persistent line's capacity= (swap is
  not counted: it grows with the node count Slurm picks later).
- A user's allowance is the most specific entry: the user's own, else the largest of the
  groups the user is in (primary and supplementary), else max_capacity, else none. The
  pool's limit applies to everyone, on top.
- Presets bundle keys Slurm does not read itself (pool, access_mode, type, fs). A key the
  line gives wins over the preset's; the limits then apply to what results. capacity= is
  not a preset key: Slurm reads it on the line to book the space.
- Who asks is only known where Slurm says: slurm_bb_job_process gets the uid and gid from
  Slurm 23.02 on, dw_wlm_cli job_process never. Without them the user checks wait for
  setup (the job is held with the reason) or create_persistent (refused).
- Names in the policy are resolved to uids and gids when bbctl-site.lua is written
  (``bbctl slurm-install``): Lua inside slurmctld cannot look groups up cheaply. A change
  of group membership or of a policy reaches sbatch at the next slurm-install; setup looks
  names up afresh (os.getgrouplist) and has the last word.
"""

from __future__ import annotations

import dataclasses
import grp
import os
import pwd
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn, Protocol, TypeVar

from bbctl.collection import sizes
from bbctl.directives import (
    GRAMMAR,
    KINDS,
    MESSAGES,
    CreatePersistent,
    DirectiveError,
    JobDW,
    JobRequest,
    check_buffer_type,
    shorten,
)
from bbctl.errors import BBError

SETTING = "policy"
# Where a refusal is: a script line, or a buffer named outside a script (dw_wlm_cli create_persistent).
AT_LINE = "line {line}: {directive}: "
AT_NAME = "{directive} name={name}: "
# The refusals; {token} is the key=value the line gave (the capacity, the preset, the name).
REFUSALS = {
    "unknown_preset": "'{token}': no preset {preset}; the site's presets: {presets}",
    "preset_not_for": "'{token}': preset {preset} sets {key}={value}, which {directive} cannot take: "
                      "use another preset",
    "pool_max": "'{token}' is more than pool {pool} allows in one buffer: at most {limit} ({setting})",
    "user_max": "'{token}' is more than uid {uid} may have in one buffer: at most {limit} ({setting})",
    "not_creator": "'{token}': uid {uid} may not create persistent buffers (policy.persistent_creators): "
                   "ask the site's administrators",
}
# Preset keys and the directive key each sets (create_persistent spells access_mode as access).
PRESET_KEYS = {"jobdw": {"pool": "pool", "access_mode": "access_mode", "type": "type", "fs": "fs"},
               "create_persistent": {"pool": "pool", "access_mode": "access", "type": "type", "fs": None}}
PERSISTENT_FS = "gluster"  # what create_persistent builds: a preset's other fs cannot be honoured


B = TypeVar("B", JobDW, CreatePersistent)


class PolicyError(BBError):
    """A request the site's policy refuses (exit 2: it will not pass later either)."""

    exit_code = 2


class ConfigProblem(ValueError):
    """A policy setting that is wrong; bbctl.site turns it into a ConfigError naming the file."""


@dataclass(frozen=True)
class Limit:
    """At most ``bytes`` in one buffer, set by ``setting`` (``policy.user_max_capacity.alice``)."""

    bytes: int
    setting: str


@dataclass(frozen=True)
class Identity:
    """Who asks: a uid, its user name (None: no passwd entry) and the names of its groups."""

    uid: int
    name: str | None
    groups: frozenset[str]


class Directory(Protocol):
    """Users and groups by name and number (SystemDirectory: this host's; tests give their own)."""

    def uid(self, user: str) -> int | None: ...

    def group(self, group: str) -> tuple[int, frozenset[int]] | None:
        """(gid, uids of its members: listed, and those whose primary group it is), None if unknown."""

    def identity(self, uid: int, gid: int) -> Identity: ...


class SystemDirectory:
    """This host's users and groups (NSS: passwd, group, os.getgrouplist)."""

    def uid(self, user: str) -> int | None:
        try:
            return pwd.getpwnam(user).pw_uid
        except KeyError:
            return None

    def group(self, group: str) -> tuple[int, frozenset[int]] | None:
        try:
            entry = grp.getgrnam(group)
        except KeyError:
            return None
        members = {uid for uid in map(self.uid, entry.gr_mem) if uid is not None}
        # Users whose primary group it is are not in gr_mem. Enumerating passwd is slow on a large
        # directory (and empty where sssd does not enumerate): this runs at slurm-install only.
        members |= {user.pw_uid for user in pwd.getpwall() if user.pw_gid == entry.gr_gid}
        return entry.gr_gid, frozenset(members)

    def identity(self, uid: int, gid: int) -> Identity:
        try:
            name: str | None = pwd.getpwuid(uid).pw_name
        except KeyError:
            name = None
        gids = set(os.getgrouplist(name, gid)) if name else {gid}
        return Identity(uid, name, frozenset(filter(None, map(_group_name, gids))))


def _group_name(gid: int) -> str | None:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return None


@dataclass(frozen=True)
class Policy:
    max_capacity: Limit | None = None
    users: Mapping[str, Limit] = dataclasses.field(default_factory=dict)
    groups: Mapping[str, Limit] = dataclasses.field(default_factory=dict)
    pools: Mapping[str, Limit] = dataclasses.field(default_factory=dict)
    creators: tuple[frozenset[str], frozenset[str]] | None = None  # (users, groups); None: anyone
    presets: Mapping[str, Mapping[str, str]] = dataclasses.field(default_factory=dict)

    @property
    def defined(self) -> bool:
        """Whether the site sets any policy at all (else burst_buffer.lua loads bbctl-policy.lua only
        to refuse a preset=)."""
        return self != Policy()

    # --- the checks ---------------------------------------------------------------------------
    def apply(self, request: JobRequest, *, default_pool: str, who: Identity | None = None) -> JobRequest:
        """``request`` with its presets expanded (expand), or PolicyError for the first buffer the policy refuses.

        Buffers are checked in bbctl.layouts' order (create_persistent lines, then jobdw); ``default_pool``
        is the pool a buffer without pool= gets; ``who``: None when the caller does not know (then only
        the checks that do not depend on the user run).
        """
        expanded = self.expand(request)
        for buffer in (*expanded.create_persistent, *filter(None, [expanded.jobdw])):
            self.check(buffer, default_pool=default_pool, who=who)
        _check_stage_access(expanded)
        return expanded

    def expand(self, request: JobRequest) -> JobRequest:
        """``request`` with each buffer's preset expanded: the keys its line does not give come from the preset.

        PolicyError for a preset the site does not define, or one setting what the directive cannot take.
        """
        creates = tuple(self._expanded(create) for create in request.create_persistent)
        jobdw = request.jobdw and self._expanded(request.jobdw)
        return dataclasses.replace(request, create_persistent=creates, jobdw=jobdw)

    def check(self, buffer: JobDW | CreatePersistent, *, default_pool: str, who: Identity | None = None) -> None:
        """Refuse (PolicyError) a buffer (presets expanded) its pool's or its user's limit does not allow,
        or a persistent buffer its user may not create."""
        if isinstance(buffer, CreatePersistent) and who is not None and not self.may_create(who):
            _refuse(buffer, "not_creator", "name", uid=who.uid)
        pool = buffer.pool or default_pool
        pool_limit = self.pools.get(pool)
        if pool_limit is not None and buffer.capacity > pool_limit.bytes:
            _refuse(buffer, "pool_max", "capacity", pool=pool, **_limit_fields(pool_limit))
        if who is None:
            return
        user_limit = self.allowance(who)
        if user_limit is not None and buffer.capacity > user_limit.bytes:
            _refuse(buffer, "user_max", "capacity", uid=who.uid, **_limit_fields(user_limit))

    def _expanded(self, buffer: B) -> B:
        if buffer.preset is None:
            return buffer
        preset = self.presets.get(buffer.preset)
        if preset is None:
            _refuse(buffer, "unknown_preset", "preset", preset=buffer.preset,
                    presets=", ".join(self.presets) or "none")
        directive = _directive(buffer)
        changes = {}
        for key, value in preset.items():
            target = PRESET_KEYS[directive][key]
            if target is None and value == PERSISTENT_FS:
                continue  # create_persistent builds only that
            if target is None or not _takes(directive, target, value):
                _refuse(buffer, "preset_not_for", "preset", preset=buffer.preset, key=key, value=value)
            if target not in buffer.tokens:
                changes[target] = value
        return dataclasses.replace(buffer, **changes)

    def allowance(self, who: Identity) -> Limit | None:
        """The most one buffer of ``who`` may hold: their own entry, the largest of their groups', the default."""
        if who.name is not None and who.name in self.users:
            return self.users[who.name]
        groups = [self.groups[name] for name in who.groups if name in self.groups]
        if groups:
            return max(groups, key=lambda limit: (limit.bytes, limit.setting))
        return self.max_capacity

    def may_create(self, who: Identity) -> bool:
        """Whether ``who`` may create persistent buffers."""
        if self.creators is None:
            return True
        users, groups = self.creators
        return (who.name is not None and who.name in users) or bool(who.groups & groups)

    # --- what bbctl-site.lua carries ---------------------------------------------------------
    def lua_values(self, directory: Directory) -> tuple[dict[str, Any], list[str]]:
        """(bbctl-site.lua's ``policy`` table, the names the directory does not know: left out).

        Users become uids, groups gids with their members' uids (bbctl-policy.lua reads them).
        """
        if not self.defined:  # only a preset= is refused then: what that takes, nothing to parse beyond it
            return {"defined": False, "messages": {"at_line": AT_LINE, "unknown_preset": REFUSALS["unknown_preset"]},
                    "presets": {}, "preset_names": "none"}, []
        unknown: list[str] = []
        users = {str(uid): _lua_limit(limit) for uid, limit in
                 ((_lua_uid(directory, name, unknown), limit) for name, limit in self.users.items())
                 if uid is not None}
        groups = [{**found, **_lua_limit(limit)} for found, limit in
                  ((_lua_group(directory, name, unknown), limit) for name, limit in self.groups.items()) if found]
        values: dict[str, Any] = {
            "defined": self.defined,  # false: burst_buffer.lua loads bbctl-policy.lua only for a preset=
            "messages": {"at_line": AT_LINE, **REFUSALS, "needs_access": MESSAGES["needs_access"]},
            "users": users, "groups": groups,
            "pools": {name: _lua_limit(limit) for name, limit in self.pools.items()},
            "presets": {name: [[key, value] for key, value in preset.items()]  # pairs: Lua keeps their order
                        for name, preset in self.presets.items()},
            "preset_names": ", ".join(self.presets) or "none",
            "preset_keys": {directive: {key: target or False for key, target in keys.items()}
                            for directive, keys in PRESET_KEYS.items()},
            "persistent_fs": PERSISTENT_FS,
            "access_values": {directive: KINDS[GRAMMAR[directive]["keys"][keys["access_mode"]]]["values"]
                              for directive, keys in PRESET_KEYS.items()},
        }
        if self.max_capacity is not None:
            values["max_capacity"] = _lua_limit(self.max_capacity)
        if self.creators is not None:
            creator_users, creator_groups = self.creators
            uids = (_lua_uid(directory, name, unknown) for name in sorted(creator_users))
            values["creators"] = {
                "uids": {str(uid): True for uid in uids if uid is not None},
                "groups": list(filter(None, (_lua_group(directory, name, unknown) for name in sorted(creator_groups))))}
        return values, sorted(set(unknown))


def _lua_uid(directory: Directory, name: str, unknown: list[str]) -> int | None:
    uid = directory.uid(name)
    if uid is None:
        unknown.append(f"user {name}")
    return uid


def _lua_limit(limit: Limit) -> dict[str, Any]:
    return {"bytes": limit.bytes, "limit": sizes.format_size(limit.bytes), "setting": limit.setting}


def _lua_group(directory: Directory, name: str, unknown: list[str]) -> dict[str, Any] | None:
    found = directory.group(name)
    if found is None:
        unknown.append(f"group {name}")
        return None
    gid, members = found
    return {"gid": gid, "members": {str(uid): True for uid in sorted(members)}}


def _takes(directive: str, key: str, value: str) -> bool:
    kind = KINDS[GRAMMAR[directive]["keys"][key]]
    return kind["check"] != "enum" or value in kind["values"]


def _directive(buffer: JobDW | CreatePersistent) -> str:
    return "jobdw" if isinstance(buffer, JobDW) else "create_persistent"


def _token(buffer: JobDW | CreatePersistent, key: str) -> str:
    """The key's token as the line gave it; for a buffer named outside a script, key=value."""
    return buffer.tokens.get(key, f"{key}={getattr(buffer, key)}")


def _limit_fields(limit: Limit) -> dict[str, str]:
    return {"limit": sizes.format_size(limit.bytes), "setting": limit.setting}


def _refuse(buffer: JobDW | CreatePersistent, reason: str, quoting: str, **fields: Any) -> NoReturn:
    """Raise the refusal ``reason`` for ``buffer``, quoting the token of its key ``quoting``."""
    directive = _directive(buffer)
    if buffer.line:
        where = AT_LINE.format(line=buffer.line, directive=directive)
    else:
        where = AT_NAME.format(directive=directive, name=getattr(buffer, "name", ""))
    raise PolicyError(where + REFUSALS[reason].format(directive=directive, token=_token(buffer, quoting), **fields))


def _check_stage_access(request: JobRequest) -> None:
    """A preset may leave the job's buffer private only: staging into its striped part then has no place.

    The grammar's own check ran before the preset was known; this is it again, on what the preset made.
    """
    jobdw = request.jobdw
    if jobdw is None or jobdw.preset is None:
        return
    for stage in sorted((*request.stage_in, *request.stage_out), key=lambda stage: stage.line):
        path = stage.buffer_path
        if path.area in ("striped", "private") and path.area not in jobdw.access_modes:
            key = "destination" if stage.direction == "in" else "source"
            raise PolicyError(MESSAGES["needs_access"].format(
                line=stage.line, directive=f"stage_{stage.direction}", token=shorten(f"{key}={path}"),
                var=path.variable, first=jobdw.line, mode=jobdw.access_mode))


# --- from bbctl.yml ---------------------------------------------------------------------------

def from_settings(settings: Mapping[str, Any] | None, pools: Iterable[str]) -> Policy:
    """The Policy of bbctl.yml's validated ``policy`` settings; ConfigProblem naming the setting that is wrong.

    ``pools``: the configured pool names (a limit or preset naming another pool is a mistake).
    """
    settings = settings or {}
    pools = list(pools)
    creators = settings.get("persistent_creators")
    return Policy(
        max_capacity=_limit(settings.get("max_capacity"), f"{SETTING}.max_capacity"),
        users=_limits(settings, "user_max_capacity"),
        groups=_limits(settings, "group_max_capacity"),
        pools=_limits(settings, "pool_max_capacity", known=pools),
        creators=None if creators is None else (frozenset(creators.get("users") or ()),
                                                frozenset(creators.get("groups") or ())),
        presets={name: _preset(name, preset, pools) for name, preset in (settings.get("presets") or {}).items()},
    )


def _limit(value: Any, setting: str) -> Limit | None:
    if value is None:
        return None
    try:
        nbytes = sizes.parse_size(str(value))
    except sizes.SizeError as exc:
        raise ConfigProblem(f"{setting}: {exc}") from None
    if nbytes < 1:
        raise ConfigProblem(f"{setting}: give a size above 0, e.g. 2TiB")
    return Limit(nbytes, setting)


def _limits(settings: Mapping[str, Any], name: str, known: list[str] | None = None) -> dict[str, Limit]:
    entries = settings.get(name) or {}
    limits = {}
    for key, value in entries.items():
        setting = f"{SETTING}.{name}.{key}"
        if known is not None and key not in known:
            raise ConfigProblem(f"{setting}: no pool {key!r}; configured: {', '.join(known)}")
        limit = _limit(value, setting)
        if limit is None:
            raise ConfigProblem(f"{setting}: give a size, e.g. 2TiB")
        limits[str(key)] = limit
    return limits


def _preset(name: Any, preset: Any, pools: list[str]) -> dict[str, str]:
    """A preset's keys, each value checked as a jobdw line's (and its pool one the site configures)."""
    setting = f"{SETTING}.presets.{name}"
    if not _PRESET_NAME.fullmatch(str(name)):
        raise ConfigProblem(f"{setting}: preset names are {KINDS['preset']['describe']}")
    if not isinstance(preset, Mapping) or not preset:
        raise ConfigProblem(f"{setting}: give the keys it sets, some of {', '.join(PRESET_KEYS['jobdw'])}")
    values = {}
    for key, value in preset.items():
        if key not in PRESET_KEYS["jobdw"]:
            raise ConfigProblem(f"{setting}: unknown key {key!r}; a preset sets some of "
                                f"{', '.join(PRESET_KEYS['jobdw'])}")
        values[key] = _preset_value(f"{setting}.{key}", GRAMMAR["jobdw"]["keys"][key], str(value))
        if key == "pool" and values[key] not in pools:
            raise ConfigProblem(f"{setting}.pool: no pool {value!r}; configured: {', '.join(pools)}")
    return values


def _preset_value(setting: str, kind_name: str, value: str) -> str:
    kind = KINDS[kind_name]
    if kind["check"] == "enum" and value not in kind["values"]:
        raise ConfigProblem(f"{setting}: {value!r}: give one of {' | '.join(kind['values'])}")
    if kind["check"] == "name" and not _name_re(kind).fullmatch(value):
        raise ConfigProblem(f"{setting}: {value!r}: give {kind['describe']}")
    if kind_name == "buffer_type" and value == "cache":
        # A cache is of one directory a job names: its pfs=DIR cannot come from a site-wide bundle.
        raise ConfigProblem(f"{setting}: type=cache: a preset cannot make a cache buffer (it needs the job's "
                            "own pfs=DIR): write type=cache pfs=DIR on the jobdw line")
    if kind_name == "buffer_type":
        try:
            check_buffer_type(value)  # the grammar's rules on type=
        except DirectiveError as exc:
            raise ConfigProblem(f"{setting}: {exc}") from None
    return value


def _name_re(kind: Mapping[str, Any]) -> re.Pattern[str]:
    return re.compile(f"[{kind['first']}][{kind['rest']}]{{0,{kind['max'] - 1}}}")


_PRESET_NAME = _name_re(KINDS["preset"])
