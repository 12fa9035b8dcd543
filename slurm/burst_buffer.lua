--[[
burst_buffer.lua for Slurm's burst_buffer/lua plugin (hpc.burstbuffer).

Install beside slurm.conf with `bbctl slurm-install`, which also writes the
three files this script reads from the same directory:
- bbctl-directives.lua: the directive validator (generated from bbctl.directives),
  and bbctl-directives.luac, the same precompiled (loaded first: slurmctld loads
  this script afresh for every call);
- bbctl-site.lua: how to call bbctl, what job paths are made of (bbctl.site) and the
  pools buffers are planned in (bbctl.pools, bbctl.layouts);
- bbctl-pools.json: the pools answer, which bbctl keeps current by atomic rename
  (job_process also reads each pool's bricks there).

Slurm's hooks come first, in the order of a job's life; the helpers they call
follow. Three hooks run inside slurmctld with its locks held and never fork:
slurm_bb_job_process (validates the directives and refuses a buffer its pool
can never hold), slurm_bb_pools and slurm_bb_paths (the job's environment, a
pure function of the job id, the directives and bbctl-site.lua). The forked
hooks (setup .. teardown) run bbctl and return slurm.ERROR with its last line
of output when it fails. All 13 functions Slurm 24.05+ requires are defined;
none relies on SLURM_CONF.
]]

local script_dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local POOLS_FILE = script_dir .. "bbctl-pools.json"
local POOLS_MISSING = "burst buffer pools file " .. POOLS_FILE .. " is missing: run bbctl pools (it writes the file)"
local SITE_FILE = script_dir .. "bbctl-site.lua"
local DIRECTIVES_FILE = script_dir .. "bbctl-directives.lua"
local DIRECTIVES_BYTECODE = script_dir .. "bbctl-directives.luac"  -- the same, precompiled at install
local helpers = {}  -- defined below the hooks

-- ---------------------------------------------------------------- inside slurmctld: no fork

function slurm_bb_job_process(job_script)
    local ok, state = helpers.validate(job_script)
    if not ok then
        return slurm.ERROR, state
    end
    local problem = helpers.check_fits(state)
    if problem ~= nil then
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
    local fh, open_problem = io.open(path_file, "a")
    if fh == nil then
        return slurm.ERROR, "cannot write the paths file: " .. tostring(open_problem)
    end
    fh:write(helpers.job_environment(site, job_id, state))
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

-- `scontrol show bbstat [ARGS]`: 22.05 passes the arguments only; 23.02+ puts uid, gid first.
function slurm_bb_get_status(...)
    return helpers.bbctl({"status"})
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

function helpers.job_environment(site, job_id, state)
    local env = {}
    if state.jobdw ~= nil then
        local striped = site.mount_root .. "/" .. site.job_volume_prefix .. job_id
        env[#env + 1] = {"JOB_STRIPED", striped}
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
    local max_file = helpers.max_file(site, state.jobdw)
    if max_file ~= nil then
        lines[#lines + 1] = site.max_file_variable .. "=" .. string.format("%.0f", max_file) .. "\n"
    end
    return table.concat(lines)
end

-- Layouts: bbctl.layouts in Lua, from the pools in bbctl-site.lua (tests compare the two).
-- Sizes are whole numbers in doubles, exact up to 2^53 (the grammar's largest size): divisions
-- go through math.fmod, which is exact, never through a rounded quotient.

local function ceil_div(a, b)
    local rest = math.fmod(a, b)
    return (a - rest) / b + (rest > 0 and 1 or 0)
end

local function site_pool(site, name)
    for _, pool in ipairs(site.pools or {}) do  -- none in a site file older than this script
        if name == nil or pool.name == name then
            return pool  -- no name: the first, the default (as bbctl.lifecycle.Lifecycle.pool)
        end
    end
    return nil
end

-- layouts.plan for a buffer of granules granules: data bricks, disperse sets, redundancy per set.
function helpers.plan(site, granules, striped, striped_layout)
    if not striped or striped_layout == "distribute" or granules < 2 then
        return {data = granules, sets = 1, redundancy = 0}
    end
    local sets = ceil_div(granules, site.max_data_bricks)
    return {data = ceil_div(granules, sets) * sets, sets = sets, redundancy = 1}
end

local function bricks(layout)
    return layout.data + layout.sets * layout.redundancy
end

local function file_bricks(layout)
    return layout.redundancy > 0 and layout.data / layout.sets or 1
end

-- layouts.Layout.file_limit of the job's own buffer: nil unless a file holds less than the buffer.
function helpers.max_file(site, jobdw)
    local pool = jobdw ~= nil and jobdw.striped and site_pool(site, jobdw.pool)
    if not pool then
        return nil
    end
    local layout = helpers.plan(site, ceil_div(jobdw.capacity, pool.granularity), true, pool.striped_layout)
    if file_bricks(layout) < layout.data then
        return file_bricks(layout) * pool.granularity
    end
    return nil
end

-- bbctl.collection.sizes.format_size: the largest exact binary unit.
function helpers.format_size(nbytes)
    for power = 5, 1, -1 do
        local unit = 1024 ^ power
        if nbytes ~= 0 and math.fmod(nbytes, unit) == 0 then
            return string.format("%.0f%siB", nbytes / unit, ("KMGTP"):sub(power, power))
        end
    end
    return string.format("%.0f", nbytes)
end

local function describe(layout)
    local sets = layout.sets > 1 and (string.format("%.0f", layout.sets) .. " x ") or ""
    return string.format("%sdisperse %.0f+%.0f", sets, layout.data / layout.sets, layout.redundancy)
end

-- layouts.check_fits: nil, or the refusal naming the largest buffer the pool's quantity bricks can hold.
function helpers.too_big(site, pool, quantity, capacity, striped)
    local layout = helpers.plan(site, ceil_div(capacity, pool.granularity), striped, pool.striped_layout)
    local needed = bricks(layout)
    if needed <= quantity then
        return nil
    end
    striped = layout.redundancy > 0
    local largest = 0
    for granules = quantity, 1, -1 do
        if bricks(helpers.plan(site, granules, striped, pool.striped_layout)) <= quantity then
            largest = granules
            break
        end
    end
    local what = string.format("%.0f bricks", needed)
    if striped then
        what = describe(layout) .. ", " .. what
    end
    local fields = {capacity = helpers.format_size(capacity), what = what, pool = pool.name,
                    quantity = string.format("%.0f", quantity),
                    granularity = helpers.format_size(pool.granularity),
                    largest = helpers.format_size(largest * pool.granularity)}
    return (site.too_big:gsub("{([%w_]+)}", fields))
end

-- Bricks per pool id, from the answer slurm_bb_pools gives Slurm: bbctl rewrites bbctl-pools.json on
-- every allocation and release, so it counts the inventory's bricks as they are now (bbctl-site.lua
-- holds what only changes with bbctl.yml). The file is bbctl's own json.dump of flat objects, one a
-- pool, each with its "id" and "quantity". nil if the file cannot be read.
function helpers.pool_bricks()
    local text = helpers.read_file(POOLS_FILE)
    if text == nil then
        return nil
    end
    local quantities = {}
    for entry in text:gmatch("{[^{}]*}") do
        local id, quantity = entry:match('"id"%s*:%s*"([^"]*)"'), entry:match('"quantity"%s*:%s*(%d+)')
        if id ~= nil and quantity ~= nil then
            quantities[id] = tonumber(quantity)
        end
    end
    return quantities
end

-- The buffers a job asks for (its create_persistent lines, then its jobdw) that their pools
-- could never hold: the first one's refusal, or nil. A pool bbctl-site.lua or bbctl-pools.json
-- does not list is left to Slurm's own pool check and to setup, which refuse it by name.
function helpers.check_fits(state)
    if state.jobdw == nil and #state.creates == 0 then
        return nil
    end
    local site, problem = helpers.load_site()
    if site == nil then
        return problem
    end
    if site.pools == nil then
        return "burst buffer site file " .. SITE_FILE .. " is older than burst_buffer.lua: run bbctl slurm-install"
    end
    local quantities = helpers.pool_bricks()
    if quantities == nil then
        return POOLS_MISSING
    end
    local wanted = {}
    for _, create in ipairs(state.creates) do
        wanted[#wanted + 1] = create
    end
    wanted[#wanted + 1] = state.jobdw
    for _, buffer in ipairs(wanted) do
        local pool = site_pool(site, buffer.pool)
        local quantity = pool and quantities[pool.name]
        local refusal = quantity and helpers.too_big(site, pool, quantity, buffer.capacity, buffer.striped)
        if refusal then
            return refusal
        end
    end
    return nil
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
