--[[
bbctl.policy in Lua, for burst_buffer.lua's in-slurmctld hooks: the site's presets expanded
(slurm_bb_job_process, slurm_bb_paths) and its limits checked at submit (slurm_bb_job_process).

Installed beside burst_buffer.lua by `bbctl slurm-install`, with its bytecode
(bbctl-policy.luac), and loaded only by jobs that ask for a buffer on a site with a policy.
Its facts come from bbctl-site.lua's `policy` table (Policy.lua_values: users and groups
already resolved to uids and gids, messages, presets as ordered pairs);
tests/unit/bbctl/test_lua_policy.py holds it to the Python, case by case.

The checks run in Policy.apply's order: every buffer's preset expanded (create_persistent
lines, then jobdw), then every buffer checked in the same order, then staging against the
access mode a preset gave. Each function returns nil, or the refusal for the user.
]]

local policy = {}

local function render(template, fields)
    return (template:gsub("{([%w_]+)}", function(field)
        return fields[field] ~= nil and tostring(fields[field]) or nil
    end))
end

local function number_text(value)
    return string.format("%.0f", value)
end

-- The refusal `reason` for buffer (a validator state's jobdw or create), quoting the token of key.
local function refuse(rules, buffer, reason, key, fields)
    fields.line, fields.directive, fields.token = buffer.line, buffer.directive, buffer.tokens[key]
    return render(rules.messages.at_line, fields) .. render(rules.messages[reason], fields)
end

local function takes(rules, directive, target, value)
    if target ~= "access" and target ~= "access_mode" then
        return true  -- every other value was checked as a jobdw line's when bbctl.yml was loaded
    end
    for _, allowed in ipairs(rules.access_values[directive]) do
        if value == allowed then
            return true
        end
    end
    return false
end

-- What the validator derives from the keys a preset may set: the access areas, striped.
local function derive(buffer)
    if buffer.directive == "jobdw" then
        buffer.modes = {}
        for area in buffer.access_mode:gmatch("[^,]+") do
            buffer.modes[area] = true
        end
        buffer.striped = buffer.fs == "gluster" and buffer.modes.striped == true
    else
        buffer.striped = buffer.access == "striped"
    end
end

local function expand(rules, buffer)
    if buffer.preset == nil then
        return nil
    end
    local preset = rules.presets[buffer.preset]
    if preset == nil then
        return refuse(rules, buffer, "unknown_preset", "preset",
                      {preset = buffer.preset, presets = rules.preset_names})
    end
    for _, pair in ipairs(preset) do
        local key, value = pair[1], pair[2]
        local target = rules.preset_keys[buffer.directive][key]
        if not (target == false and value == rules.persistent_fs) then
            if target == false or not takes(rules, buffer.directive, target, value) then
                return refuse(rules, buffer, "preset_not_for", "preset",
                              {preset = buffer.preset, key = key, value = value})
            end
            if buffer.tokens[target] == nil then
                buffer[target] = value
            end
        end
    end
    derive(buffer)
    return nil
end

local function in_group(group, uid, gid)
    return group.gid == gid or group.members[number_text(uid)] == true
end

local function may_create(rules, uid, gid)
    local creators = rules.creators
    if creators == nil or creators.uids[number_text(uid)] then
        return true
    end
    for _, group in ipairs(creators.groups) do
        if in_group(group, uid, gid) then
            return true
        end
    end
    return false
end

-- Policy.allowance: the user's own entry, else the largest of their groups', else the default.
local function allowance(rules, uid, gid)
    local own = rules.users[number_text(uid)]
    if own ~= nil then
        return own
    end
    local best
    for _, group in ipairs(rules.groups) do
        if in_group(group, uid, gid) and (best == nil or group.bytes > best.bytes or
                                          (group.bytes == best.bytes and group.setting > best.setting)) then
            best = group
        end
    end
    return best or rules.max_capacity
end

local function check(rules, buffer, default_pool, uid, gid)
    if buffer.directive == "create_persistent" and uid ~= nil and not may_create(rules, uid, gid) then
        return refuse(rules, buffer, "not_creator", "name", {uid = number_text(uid)})
    end
    local pool = buffer.pool or default_pool
    local limit = rules.pools[pool]
    if limit ~= nil and buffer.capacity > limit.bytes then
        return refuse(rules, buffer, "pool_max", "capacity", {pool = pool, limit = limit.limit,
                                                              setting = limit.setting})
    end
    limit = uid ~= nil and allowance(rules, uid, gid)
    if limit and buffer.capacity > limit.bytes then
        return refuse(rules, buffer, "user_max", "capacity", {uid = number_text(uid), limit = limit.limit,
                                                              setting = limit.setting})
    end
    return nil
end

-- A preset may leave the job's buffer private only: staging into its striped part has no place.
local function check_stage_access(rules, state, shorten)
    local jobdw = state.jobdw
    if jobdw == nil or jobdw.preset == nil then
        return nil
    end
    for _, stage in ipairs(state.stages) do
        local path = stage.path
        if (path.area == "striped" or path.area == "private") and not jobdw.modes[path.area] then
            local key = stage.where.directive == "stage_in" and "destination" or "source"
            return render(rules.messages.needs_access, {
                line = stage.where.line, directive = stage.where.directive,
                token = shorten(key .. "=$" .. path.variable .. path.subpath), var = path.variable,
                first = jobdw.line, mode = jobdw.access_mode})
        end
    end
    return nil
end

local function buffers(state)
    local list = {}
    for _, create in ipairs(state.creates) do
        list[#list + 1] = create
    end
    list[#list + 1] = state.jobdw
    return list
end

-- Policy.expand: each buffer of the validator's state gets the keys its preset sets and its line does not.
function policy.expand(rules, state)
    for _, buffer in ipairs(buffers(state)) do
        local refusal = expand(rules, buffer)
        if refusal then
            return refusal
        end
    end
    return nil
end

-- Policy.apply: expand, then the limits (the user's only when uid is known), then staging.
-- default_pool: the pool of a buffer without pool=; shorten: the validator's, for tokens.
function policy.apply(rules, state, default_pool, uid, gid, shorten)
    local refusal = policy.expand(rules, state)
    if refusal then
        return refusal
    end
    for _, buffer in ipairs(buffers(state)) do
        refusal = check(rules, buffer, default_pool, uid, gid)
        if refusal then
            return refusal
        end
    end
    return check_stage_access(rules, state, shorten)
end

return policy
