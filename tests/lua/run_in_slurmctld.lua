--[[
Calls the three functions burst_buffer.lua runs inside slurmctld, with every
way of starting a process replaced by one that fails loudly.

    lua5.1 tests/lua/run_in_slurmctld.lua BURST_BUFFER_LUA JOB_ID JOB_SCRIPT PATH_FILE

Prints "pools\t<rc>\t<answer>", "job_process\t<rc>\t<message>" and
"paths\t<rc>\t<message>" (one line each; the paths land in PATH_FILE). Any
attempt to fork makes the process exit 3 naming the call.
]]

dofile((arg[0]:match("^(.*/)") or "./") .. "slurm_stub.lua")

local script, job_id, job_script, path_file = arg[1], arg[2], arg[3], arg[4]
dofile(script)

local function forbidden(name)
    return function()
        io.stderr:write("forked inside slurmctld: " .. name .. "\n")
        os.exit(3)
    end
end
io.popen = forbidden("io.popen")
os.execute = forbidden("os.execute")
require = forbidden("require")
dofile = forbidden("dofile")

local function show(name, rc, text)
    text = tostring(text or ""):gsub("\n", "\\n")
    print(name .. "\t" .. tostring(rc or 0) .. "\t" .. text)
end

show("pools", slurm_bb_pools())
show("job_process", slurm_bb_job_process(job_script))
show("paths", slurm_bb_paths(job_id, job_script, path_file))
