--[[
The part of Slurm's `slurm` table that burst_buffer.lua may use, for the
harnesses that run it outside slurmctld. Errors go to stderr (a test that
fails shows them); the other log levels are dropped.

    dofile(HARNESS_DIR .. "slurm_stub.lua")
]]

slurm = {
    SUCCESS = 0,
    ERROR = -1,
    log_info = function(...) end,
    log_verbose = function(...) end,
    log_debug = function(...) end,
    log_error = function(fmt, ...)
        io.stderr:write(string.format(fmt, ...), "\n")
    end,
}
