# -*- coding: utf-8 -*-
# Copyright: hpc.burstbuffer developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The pure layers of the gluster_volume module: check the request, plan, describe.

* validation: (parameters, the volume as gluster described it) -> messages;
* planning: (what was observed, parameters) -> the gluster argv lists, in order;
* describing: the volume before and after, as ``--diff`` shows it.

Nothing here reads or runs anything: the module observes (module_utils.gluster's
GlusterCli) and runs the plan through its CommandRunner.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.hpc.burstbuffer.plugins.module_utils.gluster import (
    quota_enable_argv,
    quota_limit_argv,
    volume_create_argv,
    volume_delete_argv,
    volume_set_argv,
    volume_start_argv,
    volume_stop_argv,
)
from ansible_collections.hpc.burstbuffer.plugins.module_utils.gluster_rules import (
    ALLOW_INSECURE_OPTION,
    QUOTA_OPTION_KEYS,
    brick_problems,
    is_allow_insecure,
    layout_problems,
    normalise_option_value,
    option_changes,
    option_text,
    resolve_option_key,
    turns_allow_insecure_off,
    volfile_name_problem,
    volume_name_problem,
)
from ansible_collections.hpc.burstbuffer.plugins.module_utils.sizes import (
    SizeError,
    format_size,
    parse_size,
)

LAYOUT_KEYS = ("replica", "arbiter", "disperse", "redundancy")
QUOTA_PATH = "/"


# --- validation: pure ---------------------------------------------------------------------

def request_problems(params, volume):
    """Everything wrong with the request given the volume as it is (None = absent)."""
    problems = []
    name_problem = volume_name_problem(params["name"])
    if name_problem:
        return [name_problem]
    if params["state"] == "absent":
        return []
    if params["remove_brick_dirs"]:
        return ["remove_brick_dirs is for state: absent only"]
    bricks = params["bricks"] or []
    problems += brick_problems(bricks)
    problems += option_problems(params["options"])
    problems += dispersed_option_problems(params, volume)
    problems += quota_problems(params["quota"])
    if volume is None:
        problems += creation_problems(params, bricks)
    else:
        problems += mismatch_problems(params, volume)
    return problems


def creation_problems(params, bricks):
    if not bricks:
        return [f"volume {params['name']} does not exist: give bricks to create it"]
    layout = {key: params[key] for key in LAYOUT_KEYS}
    problems = layout_problems(bricks, **layout)
    volfile_problem = volfile_name_problem(params["name"], bricks)
    return problems + ([volfile_problem] if volfile_problem else [])


def mismatch_problems(params, volume):
    """The module creates volumes but never reshapes them: say so instead of ignoring it."""
    name, problems = volume["name"], []
    current = [brick["name"] for brick in volume["bricks"]]
    if params["bricks"] and params["bricks"] != current:
        problems.append(f"volume {name} exists with bricks {current}; this module does not add, "
                        "remove or replace bricks: give its bricks as they are (or leave bricks "
                        "out), or delete the volume first")
    for key in LAYOUT_KEYS:
        if params[key] is not None and params[key] != volume[key]:
            problems.append(f"volume {name} has {key} {volume[key]}, not {params[key]}; "
                            "a volume's layout cannot be changed here")
    if params["transport"] != volume["transport"]:
        problems.append(f"volume {name} uses transport {volume['transport']}, "
                        f"not {params['transport']}")
    return problems


def option_problems(options):
    problems = [f"option {key} has no value; give one (gluster volume reset is not done here)"
                for key, value in options.items() if value is None]
    quota_keys = sorted(key for key in options if key in QUOTA_OPTION_KEYS)
    if quota_keys:
        problems.append(f"options {', '.join(quota_keys)}: set the quota with the quota option")
    return problems


# Options a dispersed volume must not have. performance.iot-pass-through on: three writers of
# 256 MiB (dd, fsync) into a disperse 2+1 volume with quota all got ENOTCONN, the bricks
# dropping the client; with the defaults, or cache-invalidation, they finished (2026-11-29).
DISPERSED_REFUSED = {"performance.iot-pass-through": "on"}


def dispersed_option_problems(params, volume):
    """Options refused on a dispersed volume (asked for with disperse, or one already)."""
    dispersed = params.get("disperse") or (volume is not None and (volume.get("disperse") or 0) > 1)
    if not dispersed:
        return []
    return [f"option {key} {params['options'][key]}: dispersed volumes drop their clients under writes with it "
            "(GlusterFS 10.3); leave it off" for key, bad in DISPERSED_REFUSED.items()
            if normalise_option_value(params["options"].get(key)) == bad]


def quota_problems(quota):
    if quota is None:
        return []
    try:
        nbytes = parse_size(quota)
    except SizeError as error:
        return [f"quota: {error}"]
    return [] if nbytes > 0 else ["quota must be larger than 0"]


# --- planning: (observed, params) -> argv lists; pure -------------------------------------------

def plan(observed, params):
    """(commands, warnings): the gluster argv lists that reach the wanted state, in order."""
    volume, state = observed["volume"], params["state"]
    if state == "absent":
        return plan_absent(volume, params), []
    if volume is None:
        return plan_create(params)
    return plan_existing(observed, params)


def plan_absent(volume, params):
    if volume is None:
        return []
    socket, name = params["glusterd_socket"], params["name"]
    stop = [volume_stop_argv(socket, name)] if volume["started"] else []
    return [*stop, volume_delete_argv(socket, name)]


def plan_create(params):
    socket, name = params["glusterd_socket"], params["name"]
    layout = {key: params[key] for key in LAYOUT_KEYS}
    commands = [volume_create_argv(socket, name, params["bricks"], layout, params["transport"],
                                   params["force"])]
    first, last = split_allow_insecure_off(params, params["options"].items())
    if params["state"] != "started":
        return commands + first + last, quota_warnings(params)
    commands += [*first, volume_start_argv(socket, name)]
    fresh_quota = {"enabled": False, "readable": True, "limit": None}
    return commands + quota_commands(fresh_quota, params) + last, []


def plan_existing(observed, params):
    volume, state = observed["volume"], params["state"]
    socket, name = params["glusterd_socket"], params["name"]
    commands, last = split_allow_insecure_off(
        params, option_changes(observed["options"], params["options"]))
    quota = observed["quota"]
    if state == "started" and not volume["started"]:
        return [*commands, volume_start_argv(socket, name), *quota_commands(quota, params),
                *last], []
    if not volume["started"]:
        return commands + last, quota_warnings(params)
    commands += quota_commands(quota, params) + last
    if state == "stopped":
        commands.append(volume_stop_argv(socket, name))
    return commands, []


def split_allow_insecure_off(params, changes):
    """(volume set argv lists to run first, those to run after quota): turning server.allow-insecure
    waits until quota has been enabled (why: module_utils.gluster_rules.ALLOW_INSECURE_OPTION)."""
    socket, name = params["glusterd_socket"], params["name"]
    first, last = [], []
    for key, value in changes:
        (last if turns_allow_insecure_off(key, value) else first).append(
            volume_set_argv(socket, name, key, value))
    return first, last


def quota_commands(quota, params):
    """Enable quota and set the limit on /, as far as they differ from what gluster reported."""
    if params["quota"] is None:
        return []
    socket, name, wanted = params["glusterd_socket"], params["name"], parse_size(params["quota"])
    commands = [] if quota["enabled"] else [quota_enable_argv(socket, name)]
    if quota["limit"] != wanted:
        commands.append(quota_limit_argv(socket, name, QUOTA_PATH, wanted))
    return commands


def allow_insecure_problems(params, observed):
    """Quota cannot be enabled while server.allow-insecure is off (module_utils.gluster_rules.ALLOW_INSECURE_OPTION)."""
    volume, quota = observed["volume"], observed["quota"]
    if volume is None or params["quota"] is None or quota is None or quota["enabled"]:
        return []
    if normalise_option_value(volume["options"].get(ALLOW_INSECURE_OPTION)) != "off":
        return []
    if any(is_allow_insecure(key) and not turns_allow_insecure_off(key, value)
           for key, value in params["options"].items()):
        return []  # this task turns it on first
    return [f"volume {params['name']} has {ALLOW_INSECURE_OPTION} off, so quota cannot be enabled on "
            "it: GlusterFS's quota crawler connects from an unprivileged port, and refused it "
            "leaves the bricks' usage unaccounted (quota unenforced). Enable quota in the task "
            f"that creates the volume (this module turns it off after quota), or set "
            f"{ALLOW_INSECURE_OPTION}: on in this task"]


def quota_warnings(params):
    if params["quota"] is None:
        return []
    return [f"quota of volume {params['name']} not checked or applied: gluster reads and sets "
            "quota only on a started volume; a task with state: started applies it"]


# --- describing: before / after for --diff -------------------------------------------------------

def summary(volume, options=None, quota=None):
    """The volume as --diff shows it; options are those asked for, as gluster holds them."""
    if volume is None:
        return {"state": "absent"}
    return {"state": "started" if volume["started"] else "stopped",
            "bricks": [brick["name"] for brick in volume["bricks"]],
            "options": dict(sorted((options or {}).items())),
            "quota": format_size(quota["limit"]) if quota and quota["limit"] else None}


def asked_options(effective, params):
    return {resolve_option_key(key, effective): effective.get(resolve_option_key(key, effective))
            for key in params["options"]}


def predicted_summary(before, observed, params):
    """What summary() would show after a real run of the plan (for check mode)."""
    if params["state"] == "absent":
        return {"state": "absent"}
    after = dict(before)
    if before["state"] == "absent":
        after = {"state": "stopped", "bricks": list(params["bricks"]), "options": {},
                 "quota": None}
    if params["state"] in ("started", "stopped"):
        after["state"] = params["state"]
    options = dict(after["options"])
    for key, value in params["options"].items():
        options[resolve_option_key(key, observed["options"])] = option_text(value)
    after["options"] = dict(sorted(options.items()))
    if params["quota"] is not None and (after["state"] == "started"
                                        or before["state"] == "started"):
        after["quota"] = format_size(parse_size(params["quota"]))
    return after
