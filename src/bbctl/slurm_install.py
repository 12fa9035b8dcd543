"""Install burst_buffer.lua beside slurm.conf, with the three files it reads.

- bbctl-directives.lua: the directive validator (its grammar generated from bbctl.directives),
  and bbctl-directives.luac, the same compiled by luac5.1: slurmctld loads the script into a
  fresh Lua state for every call, and bytecode loads about six times faster than the source
  compiles (docs/BENCHMARKS.md);
- bbctl-layouts.lua: bbctl.layouts in Lua, for jobs that ask for a buffer, and its bytecode;
- bbctl-policy.lua: bbctl.policy in Lua (presets, limits), for jobs that ask for a buffer, and its bytecode;
- bbctl-site.lua: how to call bbctl, the values paths are computed from, the pools
  (granularity, striped_layout) that job_process and paths plan buffers with, and the
  site's policy with its users and groups resolved to numbers (rerun after membership changes),
  written from bbctl's configuration (bbctl.site, bbctl.pools and bbctl.layouts are the definitions);
- bbctl-pools.json: the pools answer, rewritten by every bbctl allocation.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bbctl import host, layouts, policy
from bbctl import site as sitecfg
from bbctl.collection import COLLECTION_ROOT
from bbctl.directives.lua import lua_value
from bbctl.errors import BBError
from bbctl.pools import Pool, load_pools, pools_document, write_pools_json

LUA_SCRIPT = COLLECTION_ROOT / "slurm" / "burst_buffer.lua"
LUA_VALIDATOR = COLLECTION_ROOT / "slurm" / "bbctl-directives.lua"
LUA_LAYOUTS = COLLECTION_ROOT / "slurm" / "bbctl-layouts.lua"
LUA_POLICY = COLLECTION_ROOT / "slurm" / "bbctl-policy.lua"
LUA_FILES = (LUA_SCRIPT, LUA_VALIDATOR, LUA_LAYOUTS, LUA_POLICY)  # copied as they are
LUA_COMPILED = (LUA_VALIDATOR, LUA_LAYOUTS, LUA_POLICY)  # and these compiled beside them
LUAC = "luac5.1"  # the compiler of the Lua Slurm links (Debian's burst_buffer/lua: liblua5.1)


def bbctl_program() -> Path:
    """The bbctl of this Python (its venv's bin): the one Slurm's hooks and the test bed's services run."""
    return Path(sys.executable).parent / "bbctl"


def site_values(site: sitecfg.Site, pools: Mapping[str, Pool],
                site_policy: dict[str, Any] | None = None) -> dict[str, Any]:
    """What burst_buffer.lua needs to know, from bbctl.site's, bbctl.pools' and bbctl.layouts' own definitions.

    ``pools`` in configuration order (the first is the default, as Lifecycle.pool has it), with what
    only bbctl.yml changes (granularity, striped_layout): what slurm_bb_paths needs to compute the
    job's MAX_FILE_VARIABLE (layouts.Layout.file_limit) and, with each pool's bricks from
    bbctl-pools.json (current after every allocation), slurm_bb_job_process to refuse a buffer its
    pool can never hold (layouts.check_fits). Rerun ``bbctl slurm-install`` after changing pools.
    ``site_policy``: bbctl.policy.Policy.lua_values of the site's policy (None: no policy table, so that
    job_process answers for the directives and pools alone, as tests of those want).
    """
    mount = sitecfg.mount_path(site, "1")
    private = sitecfg.private_mount_path(site, "1")
    return {
        "bbctl": str(bbctl_program()),
        "config": str(site.path.resolve()),
        "mount_root": str(site.mount_root),
        "job_volume_prefix": sitecfg.JOB_VOLUME_PREFIX,
        "persistent_volume_prefix": sitecfg.PERSISTENT_VOLUME_PREFIX,
        "name_hash_modulus": str(sitecfg.NAME_HASH_MODULUS),
        "name_hash_prefix": str(sitecfg.NAME_HASH_PREFIX),
        "private_suffix": str(private)[len(str(mount)):],
        "max_file_variable": sitecfg.MAX_FILE_VARIABLE,
        "max_data_bricks": layouts.MAX_DATA_BRICKS,
        "too_big": layouts.TOO_BIG,
        "pools": [{"name": pool.name, "granularity": pool.granularity, "striped_layout": pool.striped_layout}
                  for pool in pools.values()],
        "policy": site_policy or False,  # never absent: absent means a site file older than the policy
    }


def bytecode_path(source: Path) -> Path:
    return source.with_suffix(".luac")


def compile_lua(source: Path) -> Path:
    """``source`` compiled beside it (``.luac``, written atomically) by luac5.1.

    Without luac5.1 the stale bytecode of an earlier install must not shadow the new source:
    then the bytecode is removed and burst_buffer.lua loads the source (slower, same result).
    """
    target = bytecode_path(source)
    luac = shutil.which(LUAC)
    if luac is None:
        target.unlink(missing_ok=True)
        return source
    partial = target.with_name(target.name + ".tmp")
    host.run([luac, "-o", str(partial), str(source)])
    os.replace(partial, target)
    return target


def render_site_lua(values: Mapping[str, Any]) -> str:
    return f"-- Written by `bbctl slurm-install`; regenerate rather than edit.\nreturn {lua_value(dict(values))}\n"


def install(site: sitecfg.Site, directory: Path | None = None,
            users: policy.Directory | None = None) -> dict[str, Any]:
    """Install the Lua files into ``directory`` (default: the site's slurm_dir) and write bbctl-site.lua.

    ``users``: where the policy's user and group names are looked up (default: this host's). The
    result lists the files, and under ``unknown`` the names it does not know (left out: sbatch
    cannot match them; setup looks them up again).
    """
    target = directory or site.slurm_dir
    if target is None:
        raise BBError("where is slurm.conf? give --dir or set slurm_dir in the bbctl configuration", exit_code=2)
    target.mkdir(parents=True, exist_ok=True)
    for source in LUA_FILES:
        shutil.copyfile(source, target / source.name)
    for source in LUA_COMPILED:
        compile_lua(target / source.name)
    pools = load_pools(site.raw, site.inventory)
    site_policy, unknown = site.policy.lua_values(users or policy.SystemDirectory())
    (target / "bbctl-site.lua").write_text(render_site_lua(site_values(site, pools, site_policy)))
    if not (target / "bbctl-pools.json").exists():
        write_pools_json(target / "bbctl-pools.json", pools_document(pools.values(), {}))
    names = ([source.name for source in LUA_FILES] + [bytecode_path(source).name for source in LUA_COMPILED]
             + ["bbctl-site.lua", "bbctl-pools.json"])
    report: dict[str, Any] = {"installed": [str(target / name) for name in names]}
    if unknown:
        report["unknown"] = unknown
    return report
