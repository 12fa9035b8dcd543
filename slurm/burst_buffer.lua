--[[
burst_buffer.lua for Slurm's burst_buffer/lua plugin (hpc.burstbuffer).

Install beside slurm.conf with `bbctl slurm-install`, which also writes the
four files this script reads from the same directory:
- bbctl-directives.lua: the directive validator (generated from bbctl.directives),
  and bbctl-directives.luac, the same precompiled (loaded first: slurmctld loads
  this script afresh for every call);
- bbctl-layouts.lua: bbctl.layouts in Lua (how a pool holds a buffer), and its
  bytecode bbctl-layouts.luac, loaded only for jobs that ask for a buffer;
- bbctl-policy.lua: bbctl.policy in Lua (presets, the site's limits), and its bytecode
  bbctl-policy.luac, loaded only for jobs that ask for a buffer on a site with a policy;
- bbctl-site.lua: how to call bbctl, what job paths are made of (bbctl.site), the
  pools buffers are planned in (bbctl.pools, bbctl.layouts) and the site's policy
  (bbctl.policy, users and groups resolved to numbers when it was written);
- bbctl-pools.json: the pools answer, which bbctl keeps current by atomic rename
  (job_process also reads each pool's bricks there).

Slurm's hooks come first, in the order of a job's life; the helpers they call
follow. Three hooks run inside slurmctld with its locks held and never fork:
slurm_bb_job_process (validates the directives, applies the site's policy and
refuses a buffer its pool can never hold), slurm_bb_pools and slurm_bb_paths (the job's environment, a
pure function of the job id, the directives and bbctl-site.lua). The forked
hooks (setup .. teardown) run bbctl and return slurm.ERROR with its last line
of output when it fails. All 13 functions Slurm 24.05+ requires are defined;
none relies on SLURM_CONF.
]]

local script_dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local POOLS_FILE = script_dir .. "bbctl-pools.json"
local POOLS_MISSING = "burst buffer pools file " .. POOLS_FILE .. " is missing: run bbctl pools (it writes the file)"
local SITE_FILE = script_dir .. "bbctl-site.lua"
local SITE_OLD = "burst buffer site file " .. SITE_FILE .. " is older than burst_buffer.lua: run bbctl slurm-install"
local DIRECTIVES_FILE = script_dir .. "bbctl-directives.lua"
local DIRECTIVES_BYTECODE = script_dir .. "bbctl-directives.luac"  -- the same, precompiled at install
local LAYOUTS_FILE = script_dir .. "bbctl-layouts.lua"  -- bbctl.layouts in Lua: jobs asking for a buffer
local LAYOUTS_BYTECODE = script_dir .. "bbctl-layouts.luac"
local POLICY_FILE = script_dir .. "bbctl-policy.lua"  -- bbctl.policy in Lua: sites with a policy
local POLICY_BYTECODE = script_dir .. "bbctl-policy.luac"
local helpers = {}  -- defined below the hooks

-- ---------------------------------------------------------------- inside slurmctld: no fork

-- uid and gid: Slurm 23.02+ passes them (22.05 does not: the policy's user checks wait for setup).
function slurm_bb_job_process(job_script, uid, gid)
    local ok, state = helpers.validate(job_script)
    if not ok then
        return slurm.ERROR, state
    end
    if state.jobdw == nil and #state.creates == 0 then
        return slurm.SUCCESS
    end
    local site, problem = helpers.load_site()  -- once: the policy and the pools' check both read it
    if site == nil then
        return slurm.ERROR, problem
    end
    local policy, rules
    policy, problem, rules = helpers.policy(site, state)
    if policy then
        problem = helpers.apply_policy(policy, rules, site, state, tonumber(uid), tonumber(gid or uid))
    end
    problem = problem or helpers.check_fits(site, state)
    if problem then
        return slurm.ERROR, problem
    end
    return slurm.SUCCESS
end

function slurm_bb_pools()
    local text = helpers.read_file(POOLS_FILE)
    if text == nil then
        return slurm.ERROR, POOLS_MISSING
    end
    return slurm.SUCCESS, text
end

function slurm_bb_paths(job_id, job_script, path_file)
    local site, problem = helpers.load_site()
    if site == nil then
        return slurm.ERROR, problem
    end
    local ok, state = helpers.validate(job_script)
    if not ok then
        return slurm.ERROR, state
    end
    if state.presets then  -- the job's environment follows what its presets set
        local policy, preset_problem, rules = helpers.policy(site, state)
        preset_problem = preset_problem or policy.expand(rules, state)
        if preset_problem then
            return slurm.ERROR, preset_problem
        end
    end
    local max_file  -- BB_JOB_STRIPED_MAX_FILE, when a file holds less than the job's striped buffer
    if state.jobdw ~= nil and state.jobdw.striped then
        local layouts, missing = helpers.layouts()
        if layouts == nil then
            return slurm.ERROR, missing
        end
        max_file = layouts.max_file(site, state.jobdw)
    end
    local fh, open_problem = io.open(path_file, "a")
    if fh == nil then
        return slurm.ERROR, "cannot write the paths file: " .. tostring(open_problem)
    end
    fh:write(helpers.job_environment(site, job_id, state, max_file))
    fh:close()
    return slurm.SUCCESS
end

-- ---------------------------------------------------------------- forked (slurmscriptd): bbctl

function slurm_bb_setup(job_id, uid, gid, pool, bb_size, job_script)
    local args = helpers.script_args("setup", job_id, job_script)
    for _, pair in ipairs({{"--uid", uid}, {"--gid", gid}}) do
        args[#args + 1], args[#args + 2] = pair[1], pair[2]
    end
    if pool ~= nil and pool ~= "" and pool ~= "(null)" then
        args[#args + 1], args[#args + 2] = "--pool", pool
    end
    if bb_size ~= nil and tostring(bb_size):match("^[1-9][0-9]*$") then
        args[#args + 1], args[#args + 2] = "--size", bb_size
    end
    return helpers.bbctl(args)
end

function slurm_bb_data_in(job_id, job_script)
    return helpers.bbctl(helpers.script_args("stage-in", job_id, job_script))
end

-- Slurm 24.05+ polls these after data_in/data_out; our stages finish inside the call.
function slurm_bb_test_data_in(job_id, job_script)
    return slurm.SUCCESS, "SUCCESS"
end

function slurm_bb_real_size(job_id)
    local rc, output = helpers.bbctl({"real-size", "--job-id", job_id})
    if rc ~= slurm.SUCCESS then
        return rc, output
    end
    return slurm.SUCCESS, (output:match("(%d+)%s*$") or "0")
end

function slurm_bb_pre_run(job_id, job_script)
    return helpers.bbctl(helpers.script_args("pre-run", job_id, job_script))
end

function slurm_bb_post_run(job_id, job_script)
    return helpers.bbctl(helpers.script_args("post-run", job_id, job_script))
end

function slurm_bb_data_out(job_id, job_script)
    return helpers.bbctl(helpers.script_args("stage-out", job_id, job_script))
end

function slurm_bb_test_data_out(job_id, job_script)
    return slurm.SUCCESS, "SUCCESS"
end

function slurm_bb_job_teardown(job_id, job_script, hurry)
    local args = helpers.script_args("teardown", job_id, job_script)
    if hurry == "true" or hurry == true then
        args[#args + 1] = "--hurry"
    end
    return helpers.bbctl(args)
end

-- `scontrol show bbstat [job=N|name=X]`: 22.05 passes the words only, 23.02+ puts uid and gid
-- first; bbctl bbstat reads both (and exits 0: Slurm shows nothing of a status call that fails).
function slurm_bb_get_status(...)
    local args = {"bbstat"}
    for i = 1, select("#", ...) do
        args[#args + 1] = tostring((select(i, ...)))
    end
    return helpers.bbctl(args)
end

-- ================================================================ helpers

function helpers.read_file(path)
    local fh = io.open(path, "r")
    if fh == nil then
        return nil
    end
    local text = fh:read("*a")
    fh:close()
    return text
end

-- The validator is loaded once per load of this script, and slurmctld loads the script into a
-- fresh Lua state for every call: its bytecode loads in a sixth of the time its source compiles.
local directives, directives_problem = loadfile(DIRECTIVES_BYTECODE)
if directives == nil then
    directives, directives_problem = loadfile(DIRECTIVES_FILE)
end
if directives ~= nil then
    directives = directives()
else
    directives_problem = "burst buffer directive validator " .. DIRECTIVES_FILE ..
                         " cannot be loaded (" .. tostring(directives_problem) .. "): run bbctl slurm-install"
end

-- true, state; or false, the message for the user (a refusal) or the operator (anything else).
function helpers.validate(job_script)
    if directives == nil then
        return false, directives_problem
    end
    local text, problem = directives.read_script(job_script)
    if text == nil then
        return false, "cannot read the job script: " .. tostring(problem)
    end
    local ok, result = pcall(directives.validate, text)
    if ok then
        return true, result
    end
    if getmetatable(result) == directives.Rejection then
        return false, result.message
    end
    slurm.log_error("burst_buffer.lua: internal error validating directives: %s", tostring(result))
    return false, "internal error in burst_buffer.lua while validating directives: " .. tostring(result)
end

function helpers.load_site()
    local chunk = loadfile(SITE_FILE)
    if chunk == nil then
        return nil, "burst buffer site file " .. SITE_FILE .. " is missing: run bbctl slurm-install"
    end
    return chunk()
end

-- Paths: a pure function of the job id, the directives and bbctl-site.lua.

-- bbctl.site.volume_name for a persistent buffer: plain names as they are, others
-- sanitised and suffixed with a hash of the whole name (exact in doubles: no bit ops in 5.1).
local function persistent_volume(site, name)
    if name:find("^[A-Za-z0-9_]+$") then
        return site.persistent_volume_prefix .. name
    end
    local modulus, hash = tonumber(site.name_hash_modulus), 0
    for i = 1, #name do
        hash = (hash * 131 + name:byte(i)) % modulus
    end
    local safe = name:gsub("[^A-Za-z0-9_]", "_"):sub(1, tonumber(site.name_hash_prefix))
    return site.persistent_volume_prefix .. safe .. "-" .. string.format("%08x", hash)
end

function helpers.job_environment(site, job_id, state, max_file)
    local env = {}
    if state.jobdw ~= nil then
        local striped = site.mount_root .. "/" .. site.job_volume_prefix .. job_id
        env[#env + 1] = {"JOB_STRIPED", striped}
        if state.jobdw.cache then  -- a cache of pfs=DIR: DataWarp's name for it too
            env[#env + 1] = {"JOB_STRIPED_CACHE", striped}
        end
        if state.jobdw.modes.private then
            env[#env + 1] = {"JOB_PRIVATE", striped .. site.private_suffix}
        end
    end
    local names = {}
    for name in pairs(state.names.persistentdw or {}) do
        names[#names + 1] = name
    end
    table.sort(names)
    for _, name in ipairs(names) do
        env[#env + 1] = {"PERSISTENT_STRIPED_" .. name, site.mount_root .. "/" .. persistent_volume(site, name)}
    end
    local lines = {}
    for _, prefix in ipairs({"DW_", "BB_"}) do
        for _, pair in ipairs(env) do
            lines[#lines + 1] = prefix .. pair[1] .. "=" .. pair[2] .. "\n"
        end
    end
    if state.jobdw ~= nil and state.jobdw.cache then  -- and the name Kyoto-style scripts look for
        lines[#lines + 1] = "BB_CACHE_DIR=" .. site.mount_root .. "/" .. site.job_volume_prefix .. job_id .. "\n"
    end
    if max_file ~= nil then
        lines[#lines + 1] = site.max_file_variable .. "=" .. string.format("%.0f", max_file) .. "\n"
    end
    return table.concat(lines)
end

-- A Lua file slurm-install put beside this script, its bytecode first (as the validator's), or
-- nil and what to run: bbctl-layouts.lua (jobs with a buffer), bbctl-policy.lua.
function helpers.load_installed(source, bytecode, what)
    local chunk, problem = loadfile(bytecode)
    if chunk == nil then
        chunk, problem = loadfile(source)
    end
    if chunk == nil then
        return nil, "burst buffer " .. what .. " " .. source .. " cannot be loaded (" .. tostring(problem) ..
                    "): run bbctl slurm-install"
    end
    return chunk()
end

function helpers.layouts()
    return helpers.load_installed(LAYOUTS_FILE, LAYOUTS_BYTECODE, "layouts")
end

-- bbctl-policy.lua and the rules bbctl-site.lua holds for it, for a job with a buffer on a site with
-- a policy or with a preset=; nil when it needs neither, or nil and what is missing.
function helpers.policy(site, state)
    local rules = site.policy
    if rules == nil then
        return nil, SITE_OLD
    elseif not (rules and (rules.defined or state.presets)) then  -- false: the directives alone
        return nil
    end
    local policy, missing = helpers.load_installed(POLICY_FILE, POLICY_BYTECODE, "policy")
    return policy, missing, rules
end

-- bbctl.policy.Policy.apply: nil, or why the policy refuses the job's buffers (presets expanded in state).
function helpers.apply_policy(policy, rules, site, state, uid, gid)
    local default_pool = site.pools and site.pools[1] and site.pools[1].name
    return policy.apply(rules, state, default_pool, uid, gid, directives.shorten)
end

-- nil, or why the job cannot have the buffers it asks for: bbctl.layouts.check_fits's words for
-- one its pool could never hold (its bricks counted in bbctl-pools.json), or what file is missing.
function helpers.check_fits(site, state)
    if site.pools == nil then
        return SITE_OLD
    end
    local pools = helpers.read_file(POOLS_FILE)
    if pools == nil then
        return POOLS_MISSING
    end
    local layouts, missing = helpers.layouts()
    return missing or layouts.check_fits(site, layouts.pool_bricks(pools), state)
end

-- Slurm forks these (slurmscriptd) and kills the process group when they
-- return, so each runs bbctl to completion. Lua 5.1: io.popen():close() gives
-- no status, so the shell appends it as the last line. Every argument is
-- single-quoted: nothing Slurm passes reaches the shell as syntax.

local function shell_quote(text)
    return "'" .. tostring(text):gsub("'", "'\\''") .. "'"
end

function helpers.bbctl(args)
    local site, problem = helpers.load_site()
    if site == nil then
        return slurm.ERROR, problem
    end
    local words = {shell_quote(site.bbctl), "--config", shell_quote(site.config)}
    for _, arg in ipairs(args) do
        words[#words + 1] = shell_quote(arg)
    end
    local pipe = io.popen(table.concat(words, " ") .. " </dev/null 2>&1; echo \"bbctl-exit:$?\"")
    local output = pipe:read("*a")
    pipe:close()
    local body, status = output:match("^(.-)bbctl%-exit:(%d+)%s*$")
    if status == nil then
        return slurm.ERROR, "bbctl gave no exit status: " .. output
    end
    if tonumber(status) == 0 then
        return slurm.SUCCESS, body
    end
    local last = body:match("([^\n]+)\n*$") or ("bbctl exited " .. status)
    slurm.log_error("burst_buffer.lua: bbctl %s: %s", tostring(args[1]), body)
    return slurm.ERROR, last
end

function helpers.script_args(stage, job_id, job_script)
    return {stage, "--job-id", job_id, "--script", job_script}
end
