--[[
Runs slurm_bb_job_process of slurm/burst_buffer.lua outside slurmctld.

    lua5.1 tests/lua/run_job_process.lua BURST_BUFFER_LUA DIR_OR_FILE

With a file, prints "<rc>\t<message>". With a directory holding case files
named 1, 2, 3 ... (no gaps), prints "<n>\t<rc>\t<message>" for each, so one
process runs every case. Messages are escaped (\\, \n, \t) to stay on one line.
The stub slurm table is in slurm_stub.lua, beside this file.
]]

dofile((arg[0]:match("^(.*/)") or "./") .. "slurm_stub.lua")

local script, target = arg[1], arg[2]
if script == nil or target == nil then
    io.stderr:write("usage: lua5.1 run_job_process.lua BURST_BUFFER_LUA DIR_OR_FILE\n")
    os.exit(2)
end
dofile(script)

local function escape(text)
    return (tostring(text or ""):gsub("[\\\n\t]", {["\\"] = "\\\\", ["\n"] = "\\n", ["\t"] = "\\t"}))
end

local function run(path)
    local rc, message = slurm_bb_job_process(path)
    return tostring(rc or slurm.SUCCESS) .. "\t" .. escape(message)
end

local probe = io.open(target .. "/1", "rb")
if probe == nil then
    print(run(target))
    os.exit(0)
end
probe:close()
local n = 1
while true do
    local path = target .. "/" .. n
    local fh = io.open(path, "rb")
    if fh == nil then
        break
    end
    fh:close()
    print(n .. "\t" .. run(path))
    n = n + 1
end
