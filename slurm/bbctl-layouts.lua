--[[
bbctl.layouts in Lua, for burst_buffer.lua's in-slurmctld hooks: how a job's buffers are
laid out in their pools, whether a pool can ever hold them (slurm_bb_job_process), and
the largest file a striped buffer holds (slurm_bb_paths: BB_JOB_STRIPED_MAX_FILE).

Installed beside burst_buffer.lua by `bbctl slurm-install`, with its bytecode
(bbctl-layouts.luac), and loaded only by jobs that ask for a buffer. Its facts come
from bbctl-site.lua (each pool's granularity and striped_layout, GlusterFS's data
bricks per disperse set, check_fits's message) and bbctl-pools.json (each pool's
bricks); tests/unit/bbctl/test_lua_layouts.py holds it to the Python, case by case.

Sizes are whole numbers in doubles, exact up to 2^53 (the grammar's largest size):
divisions go through math.fmod, which is exact, never through a rounded quotient.
]]

local layouts = {}

local function ceil_div(a, b)
    local rest = math.fmod(a, b)
    return (a - rest) / b + (rest > 0 and 1 or 0)
end

local function site_pool(site, name)
    for _, pool in ipairs(site.pools or {}) do  -- none in a site file older than burst_buffer.lua
        if name == nil or pool.name == name then
            return pool  -- no name: the first, the default (as bbctl.lifecycle.Lifecycle.pool)
        end
    end
    return nil
end

-- layouts.plan for a buffer of granules granules: data bricks, disperse sets, redundancy per set.
local function plan(site, granules, striped, striped_layout)
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

-- Layout.file_limit of the job's own buffer (state.jobdw of the validator): nil unless a file
-- holds less than the buffer.
function layouts.max_file(site, jobdw)
    local pool = jobdw ~= nil and jobdw.striped and site_pool(site, jobdw.pool)
    if not pool then
        return nil
    end
    local layout = plan(site, ceil_div(jobdw.capacity, pool.granularity), true, pool.striped_layout)
    if file_bricks(layout) < layout.data then
        return file_bricks(layout) * pool.granularity
    end
    return nil
end

-- bbctl.collection.sizes.format_size: the largest exact binary unit.
local function format_size(nbytes)
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
local function too_big(site, pool, quantity, capacity, striped)
    local layout = plan(site, ceil_div(capacity, pool.granularity), striped, pool.striped_layout)
    local needed = bricks(layout)
    if needed <= quantity then
        return nil
    end
    striped = layout.redundancy > 0
    local largest = 0
    for granules = quantity, 1, -1 do
        if bricks(plan(site, granules, striped, pool.striped_layout)) <= quantity then
            largest = granules
            break
        end
    end
    local what = string.format("%.0f bricks", needed)
    if striped then
        what = describe(layout) .. ", " .. what
    end
    local fields = {capacity = format_size(capacity), what = what, pool = pool.name,
                    quantity = string.format("%.0f", quantity), granularity = format_size(pool.granularity),
                    largest = format_size(largest * pool.granularity)}
    return (site.too_big:gsub("{([%w_]+)}", fields))
end

-- Bricks per pool id from the text of bbctl-pools.json: bbctl's own json.dump of flat
-- objects, one a pool, each with its "id" and "quantity".
function layouts.pool_bricks(text)
    local quantities = {}
    for entry in text:gmatch("{[^{}]*}") do
        local id, quantity = entry:match('"id"%s*:%s*"([^"]*)"'), entry:match('"quantity"%s*:%s*(%d+)')
        if id ~= nil and quantity ~= nil then
            quantities[id] = tonumber(quantity)
        end
    end
    return quantities
end

-- The buffers a job asks for (its create_persistent lines, then its jobdw: state.creates and
-- state.jobdw of the validator) that their pools could never hold: the first one's refusal, or
-- nil. A pool bbctl-site.lua or bbctl-pools.json does not list is left to Slurm's own pool check
-- and to setup, which refuse it by name.
function layouts.check_fits(site, quantities, state)
    local wanted = {}
    for _, create in ipairs(state.creates) do
        wanted[#wanted + 1] = create
    end
    wanted[#wanted + 1] = state.jobdw
    for _, buffer in ipairs(wanted) do
        local pool = site_pool(site, buffer.pool)
        local quantity = pool and quantities[pool.name]
        local refusal = quantity and too_big(site, pool, quantity, buffer.capacity, buffer.striped)
        if refusal then
            return refusal
        end
    end
    return nil
end

return layouts
