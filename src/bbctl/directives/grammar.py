"""The directive grammar as data: prefixes, limits, kinds of values, directives and their keys, messages.

The one definition both validators read: bbctl.directives.parser (the reference) and the
Lua validator, whose tables bbctl.directives.lua renders from these. Decisions and
their reasons: bbctl.directives.
"""

from __future__ import annotations

from typing import Any

from bbctl.collection import sizes

PREFIXES = ("#BB_LUA", "#DW", "#BB")  # longest first: "#BB_LUA" also starts with "#BB"
IMPLICIT_JOBDW_PREFIX = "#BB_LUA"  # Slurm's lua docs: "#BB_LUA pool=pool1 capacity=1K" means a job buffer
WHITESPACE = " \t\r\v\f"  # C isspace() without newline: what Slurm skips

LIMITS = {
    "directive_bytes": 16384,  # one directive after joining continuation lines
    "path_bytes": 4095,  # PATH_MAX less the NUL
    "component_bytes": 255,  # NAME_MAX
    "size_bytes": 2**53,  # 8 PiB: beyond any buffer, and exact in Lua's doubles
    "echo_bytes": 64,  # longest token quoted back in a message
    "script_bytes": 4 * 1024 * 1024,  # scanned for misplaced directives: Slurm's default max_script_size
}

PATH_FORBIDDEN = "\"'`\\$*?[]{}"

BUFFER_VARIABLES = {
    "DW_JOB_STRIPED": "striped",
    "DW_JOB_PRIVATE": "private",
    "BB_JOB_STRIPED": "striped",
    "BB_JOB_PRIVATE": "private",
}
PERSISTENT_VARIABLE_PREFIXES = ("DW_PERSISTENT_STRIPED_", "BB_PERSISTENT_STRIPED_")

# A site-chosen name (a pool, a preset): the characters bbctl.yml's names may have.
_SITE_NAME = {"check": "name", "first": "A-Za-z0-9", "rest": "A-Za-z0-9_.-", "max": 64,
              "describe": "1 to 64 characters of A-Z a-z 0-9 _ . -, starting with a letter or digit"}

# What a key's value is. "check" picks the validator; the rest parameterise it.
KINDS: dict[str, dict[str, Any]] = {
    "size": {"check": "size", "expects": "a size such as 100GiB"},
    "pool": {**_SITE_NAME, "expects": "a pool name"},
    # A bundle of keys the site defines (bbctl.yml policy.presets); which names exist is the
    # site's, checked by bbctl.policy after the grammar.
    "preset": {**_SITE_NAME, "expects": "a preset name"},
    "buffer_name": {"check": "name", "expects": "a buffer name", "first": "A-Za-z_", "rest": "A-Za-z0-9_.-",
                    "max": 64,
                    "describe": "1 to 64 characters of A-Z a-z 0-9 _ . -, starting with a letter or _"},
    "swap_size": {"check": "swap_size", "expects": "a whole number of GiB such as 4GiB"},
    # DataWarp's placement hints (optimization_strategy=, max_mds=): accepted so that published
    # scripts run; GlusterFS places by its own rules, so they change nothing.
    "hint": {"check": "name", "expects": "a word", "first": "A-Za-z0-9", "rest": "A-Za-z0-9_", "max": 32,
             "describe": "a word of A-Z a-z 0-9 _ (DataWarp's hint; it changes nothing here)"},
    "access_mode": {"check": "enum", "values": ["striped", "private", "striped,private"]},
    "access": {"check": "enum", "values": ["striped", "private"]},
    "buffer_type": {"check": "enum", "values": ["scratch", "cache"]},
    "fs": {"check": "enum", "values": ["gluster", "lustre"]},
    "stage_type": {"check": "enum", "values": ["file", "directory", "list"]},
    "pfs_path": {"check": "pfs_path", "expects": "an absolute path"},
    "buffer_path": {"check": "buffer_path",
                    "expects": "a path under $DW_JOB_STRIPED, $DW_JOB_PRIVATE or $DW_PERSISTENT_STRIPED_<name>"},
}

# pfs= beside type=scratch is DataWarp's own documented form (and Slurm's): accepted, unused.
# type=cache pfs=DIR: the job's write-back cache of DIR (docs/OPERATOR_GUIDE.md, "Cache buffers"),
# striped only; a persistent buffer cannot be one.
JOBDW_RULES = [{"rule": "cache"}]
PERSISTENT_RULES = [
    {"rule": "not_yet", "key": "type", "value": "cache",
     "hint": "a persistent buffer cannot be a cache: cache a directory for one job with "
             "'jobdw type=cache pfs=DIR capacity=SIZE'"},
]

# directive -> keys (in order) and their kinds, required keys, bare flags,
# defaults, per-line rules. "once": at most one such line per job.
# "positional": the directive takes one bare value of that kind first.
# "aliases": another spelling -> the key it means. "slurm_reads": keys Slurm
# finds itself with strstr on this line (the first "key=" on the line wins).
GRAMMAR: dict[str, dict[str, Any]] = {
    "jobdw": {
        "keys": {"capacity": "size", "pool": "pool", "access_mode": "access_mode", "type": "buffer_type",
                 "fs": "fs", "pfs": "pfs_path", "optimization_strategy": "hint", "max_mds": "hint",
                 "preset": "preset"},
        "aliases": {"access": "access_mode"},
        "required": ["capacity"], "once": True, "slurm_reads": ["capacity", "pool"],
        "defaults": {"access_mode": "striped", "type": "scratch", "fs": "gluster"},
        "rules": JOBDW_RULES,
    },
    "stage_in": {
        "keys": {"type": "stage_type", "source": "pfs_path", "destination": "buffer_path"},
        "required": ["type", "source", "destination"], "rules": [{"rule": "file_needs_name"}],
    },
    "stage_out": {
        "keys": {"type": "stage_type", "source": "buffer_path", "destination": "pfs_path"},
        "required": ["type", "source", "destination"], "rules": [{"rule": "file_needs_name"}],
    },
    "persistentdw": {"keys": {"name": "buffer_name"}, "required": ["name"], "slurm_reads": ["name"]},
    "create_persistent": {
        "keys": {"name": "buffer_name", "capacity": "size", "access": "access", "type": "buffer_type",
                 "pool": "pool", "pfs": "pfs_path", "preset": "preset"},
        "aliases": {"access_mode": "access"},
        "required": ["name", "capacity"],
        "slurm_reads": ["name", "capacity", "pool", "type", "access_mode", "access"],
        "defaults": {"access": "striped", "type": "scratch"},
        "rules": PERSISTENT_RULES,
    },
    "destroy_persistent": {"keys": {"name": "buffer_name"}, "required": ["name"], "flags": ["hurry"],
                           "slurm_reads": ["name"]},
    "swap": {"positional": "swap_size", "keys": {"pool": "pool"}, "required": [], "once": True,
             "slurm_reads": ["pool"]},
}

# Two directives naming the same persistent buffer in one job.
CONFLICTS = [
    {"a": "create_persistent", "b": "persistentdw",
     "why": "a job cannot use a buffer it creates: use it from a later job"},
    {"a": "create_persistent", "b": "destroy_persistent", "why": "create and destroy a buffer in separate jobs"},
    {"a": "destroy_persistent", "b": "persistentdw", "why": "a job cannot use a buffer it destroys"},
]

MESSAGES = {
    "control_char": "line {line}: control character {token} in a directive line: directives are printable text",
    "no_space": "line {line}: '{token}' starts like a directive: write '{prefix} ' and then the directive, "
                "e.g. '{prefix} jobdw capacity=100GiB'",
    "dangling_continuation": "line {line}: the directive ends with '\\' but the next line is not a {prefix} line: "
                             "continue it on a '{prefix} ...' line or remove the '\\'",
    "late_directive": "line {line}: '{token}' comes after the script's first command (line {first}): Slurm reads "
                      "burst buffer directives only above it, so this line would be silently ignored: move it up",
    "too_long": "line {line}: directive '{token}' is longer than {limit} bytes",
    "unknown_directive": "line {line}: unknown directive '{token}': use one of {allowed}",
    "bare_options": "line {line}: '{token}' is not a directive: lines read '{prefix} DIRECTIVE key=value ...', "
                    "e.g. '{prefix} jobdw capacity=100GiB pool=nvme'",
    "second_directive": "line {line}: a second {directive} line (the first is line {first}): give {directive} once",
    "flag_value": "line {line}: {directive}: '{token}': {key} is a flag and takes no value: write just '{key}'",
    "unknown_key": "line {line}: {directive}: unknown key '{key}' in '{token}': allowed: {allowed}",
    "not_key_value": "line {line}: {directive}: '{token}' is not key=value: allowed: {allowed}",
    "conflicting_key": "line {line}: {directive}: '{token}': {key} is given twice with different values "
                       "('{first}' and '{second}'): give it once",
    "slurm_reads_first": "line {line}: {directive}: '{token}' holds '{key}=' inside another value; Slurm reads the "
                         "first '{key}=' on the line as the {key}, so it would read this line differently: "
                         "give {key}= before it, or rename the path",
    "empty_value": "line {line}: {directive}: '{token}' has an empty value: give {expects}",
    "bad_enum": "line {line}: {directive}: '{token}': {key} must be one of {choices}",
    "bad_name": "line {line}: {directive}: '{token}': {key} must be {describe}",
    "bad_size": "line {line}: {directive}: '{token}' is not a size: give a whole number of bytes "
                "with an optional unit: K M G T P or KiB..PiB (powers of 1024), KB..PB (powers of 1000)",
    "capacity_separator": "line {line}: {directive}: '{token}' is followed by a tab or carriage return: Slurm "
                          "reads the size up to a space and would book a different size: separate it with a space",
    "decimal_size": "line {line}: {directive}: '{token}': Slurm reads sizes up to the decimal point and would "
                    "book a different size than the buffer gets: write a whole number, e.g. {suggest}",
    "bad_swap": "line {line}: {directive}: '{token}' is not a swap size: Slurm counts swap in whole GiB per node "
                "(a bare number, or with G or GiB), e.g. 'swap 4GiB'",
    "node_size": "line {line}: {directive}: '{token}': node counts (N) are not supported: give bytes, e.g. 100GiB",
    "zero_size": "line {line}: {directive}: '{token}': the size must be more than 0 bytes",
    "huge_size": "line {line}: {directive}: '{token}' is larger than the limit of {limit}",
    "missing_positional": "line {line}: {directive}: missing {expects}: write '{directive} 4GiB'",
    "missing_key": "line {line}: {directive}: missing {key}=: required: {required}",
    "not_yet": "line {line}: {directive}: '{token}': {hint}",
    "cache_needs_pfs": "line {line}: {directive}: '{token}': a cache buffer needs pfs=DIR, the directory on the "
                       "parallel filesystem it caches, e.g. '{prefix} jobdw type=cache pfs=/lus/me/run "
                       "capacity=100GiB'",
    "cache_access": "line {line}: {directive}: '{token}': a cache buffer is striped only (the job finds its cache "
                    "of pfs=DIR at $DW_JOB_STRIPED): write access_mode=striped",
    "cache_stage": "line {line}: {directive}: '{token}': the job buffer is a cache of pfs=DIR (line {first}): the "
                   "job reads DIR through it and what it writes goes back to DIR at job end, so there is "
                   "nothing to stage: remove this line",
    "path_too_long": "line {line}: {directive}: '{token}': {key} is longer than {limit} bytes",
    "not_absolute": "line {line}: {directive}: '{token}': {key} must be an absolute path on the parallel "
                    "filesystem (starting with /)",
    "not_expanded": "line {line}: {directive}: '{token}': nothing expands $VARIABLES or ~ in {key} (DataWarp did "
                    "not either): give the absolute path on the parallel filesystem",
    "not_buffer_path": "line {line}: {directive}: '{token}': {key} must start with $DW_JOB_STRIPED, "
                       "$DW_JOB_PRIVATE or $DW_PERSISTENT_STRIPED_<name> (or their $BB_ twins), "
                       "then /path or nothing",
    "bad_persistent_var": "line {line}: {directive}: '{token}': '{name}' is not a persistent buffer name: "
                          "names are {describe}",
    "bad_char": "line {line}: {directive}: '{token}': '{char}' is not allowed in paths: nothing expands quotes, "
                "backslashes, $, backticks, braces or glob characters here",
    "dotdot": "line {line}: {directive}: '{token}': '..' is not allowed in paths: write the path without it",
    "long_component": "line {line}: {directive}: '{token}': a path component is longer than {limit} bytes",
    "file_needs_name": "line {line}: {directive}: '{token}': type=file needs a file name, not a directory root",
    "duplicate_name": "line {line}: {directive} name={name} appears twice (first on line {first}): give it once",
    "name_conflict": "line {line}: {directive} name={name} conflicts with {other} name={name} on line {first}: "
                     "{why}",
    "swap_needs_jobdw": "line {line}: swap needs a jobdw line: swap space comes from the job buffer; "
                        "add 'jobdw capacity=SIZE'",
    "needs_jobdw": "line {line}: {directive}: '{token}' uses ${var} but there is no jobdw line: add "
                   "'{prefix} jobdw capacity=SIZE' or use a persistent buffer",
    "needs_persistentdw": "line {line}: {directive}: '{token}' uses ${var} but there is no "
                          "'persistentdw name={name}' line",
    "needs_access": "line {line}: {directive}: '{token}' uses ${var}, but jobdw (line {first}) has "
                    "access_mode={mode}: use access_mode=striped,private",
    "stage_private": "line {line}: {directive}: '{token}': ${var} is a different directory on every compute node "
                     "and cannot be staged: stage into $DW_JOB_STRIPED",
}


def size_units() -> dict[str, int]:
    """Every unit sizes.py accepts (upper-cased) and its multiplier, found by asking sizes.py itself."""
    candidates = ["", "B"] + [letter + suffix for letter in map(chr, range(65, 91)) for suffix in ("", "B", "IB")]
    units = {}
    for unit in candidates:
        try:
            units[unit] = sizes.parse_size("1" + unit)
        except sizes.SizeError:
            continue
    return units


UNITS = size_units()
# Units a decimal size is suggested in, largest first, by family (what the user wrote).
SUGGEST_UNITS = {"binary": ["PiB", "TiB", "GiB", "MiB", "KiB"], "decimal": ["PB", "TB", "GB", "MB", "KB"]}


def expects(kind: dict[str, Any]) -> str:
    """What a value of this kind looks like, for messages."""
    return kind["expects"] if "expects" in kind else "one of " + " | ".join(kind["values"])


def allowed(spec: dict[str, Any]) -> str:
    """The keys (aliases included) and flags a directive takes, for messages."""
    keys = list(spec.get("keys", {})) + list(spec.get("aliases", {}))
    return ", ".join([key + "=" for key in keys] + list(spec.get("flags", ())))
