--[[
burst_buffer.lua for Slurm's burst_buffer/lua plugin (hpc.burstbuffer).

Install beside slurm.conf. Three functions run inside slurmctld with its locks
held and must never fork: slurm_bb_job_process, slurm_bb_pools and
slurm_bb_paths. The pools answer is a file that bbctl keeps current by atomic
rename (bbctl-pools.json, beside this script).

Status: the lifecycle stages (setup .. teardown) are wired to bbctl by issue 4;
until then they log and succeed, so Slurm's side of the test bed can be proven.
]]

local script_dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local POOLS_FILE = script_dir .. "bbctl-pools.json"

local function read_file(path)
    local fh = io.open(path, "r")
    if fh == nil then
        return nil
    end
    local text = fh:read("*a")
    fh:close()
    return text
end

function slurm_bb_pools()
    local text = read_file(POOLS_FILE)
    if text == nil then
        return slurm.ERROR, "burst buffer pools file " .. POOLS_FILE .. " is missing: run bbctl pools --refresh"
    end
    return slurm.SUCCESS, text
end

function slurm_bb_job_process(job_script)
    return slurm.SUCCESS
end

function slurm_bb_paths(job_id, job_script, path_file)
    return slurm.SUCCESS
end

local function logged(name)
    return function(job_id, ...)
        slurm.log_info("%s: job %s", name, tostring(job_id))
        return slurm.SUCCESS
    end
end

slurm_bb_setup = logged("slurm_bb_setup")
slurm_bb_data_in = logged("slurm_bb_data_in")
slurm_bb_test_data_in = logged("slurm_bb_test_data_in")
slurm_bb_real_size = logged("slurm_bb_real_size")
slurm_bb_pre_run = logged("slurm_bb_pre_run")
slurm_bb_post_run = logged("slurm_bb_post_run")
slurm_bb_data_out = logged("slurm_bb_data_out")
slurm_bb_test_data_out = logged("slurm_bb_test_data_out")
slurm_bb_job_teardown = logged("slurm_bb_job_teardown")

function slurm_bb_get_status(...)
    return slurm.SUCCESS, "hpc.burstbuffer: status arrives with issue 4\n"
end
