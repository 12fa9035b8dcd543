--[[
Runs slurm_bb_job_process and slurm_bb_paths of an installed burst_buffer.lua on many job scripts.

    lua5.1 tests/lua/run_job_hooks.lua BURST_BUFFER_LUA DIR JOB_ID

DIR holds case files named 1, 2, 3 ... (no gaps). For each, prints one line
"<n>\t<job_process rc>\t<message>\t<paths rc>\t<message>" (messages escaped as
in run_job_process.lua); the paths land in DIR/<n>.paths. A file DIR/<n>.who holding
"UID GID" makes job_process get them, as Slurm 23.02+ passes them (as strings).
]]

dofile((arg[0]:match("^(.*/)") or "./") .. "slurm_stub.lua")

local script, target, job_id = arg[1], arg[2], arg[3]
if script == nil or target == nil or job_id == nil then
    io.stderr:write("usage: lua5.1 run_job_hooks.lua BURST_BUFFER_LUA DIR JOB_ID\n")
    os.exit(2)
end
dofile(script)

local function escape(text)
    return (tostring(text or ""):gsub("[\\\n\t]", {["\\"] = "\\\\", ["\n"] = "\\n", ["\t"] = "\\t"}))
end

local n = 1
while true do
    local path = target .. "/" .. n
    local fh = io.open(path, "rb")
    if fh == nil then
        break
    end
    fh:close()
    local who, uid, gid = io.open(path .. ".who", "r"), nil, nil
    if who ~= nil then
        uid, gid = who:read("*a"):match("^(%d+) (%d+)")
        who:close()
    end
    local rc, message = slurm_bb_job_process(path, uid, gid)
    local paths = target .. "/" .. n .. ".paths"
    io.open(paths, "w"):close()
    local paths_rc, paths_message = slurm_bb_paths(job_id, path, paths)
    print(table.concat({n, tostring(rc or slurm.SUCCESS), escape(message),
                        tostring(paths_rc or slurm.SUCCESS), escape(paths_message)}, "\t"))
    n = n + 1
end
