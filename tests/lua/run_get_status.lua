--[[
Calls burst_buffer.lua's slurm_bb_get_status with the words given, as slurmscriptd
would for `scontrol show bbstat WORDS`, and prints its exit code and text:

    lua5.1 run_get_status.lua BURST_BUFFER_LUA [WORD ...]
]]

local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "slurm_stub.lua")
dofile(arg[1])
local words = {}
for i = 2, #arg do
    words[#words + 1] = arg[i]
end
local rc, text = slurm_bb_get_status(unpack(words))
io.write(tostring(rc), "\n", tostring(text))
