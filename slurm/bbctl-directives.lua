--[[
bbctl-directives.lua: the directive validator burst_buffer.lua runs inside slurmctld.

slurm_bb_job_process and slurm_bb_paths run inside slurmctld, so the directive
rules run here in plain Lua 5.1 (no fork, no external library). Installed beside
burst_buffer.lua by `bbctl slurm-install`, which loads it once per load of the
script. bbctl.directives (Python) is the reference: the GRAMMAR table below is
rendered from it (`python -m bbctl.directives --write-lua slurm/bbctl-directives.lua`),
the code mirrors its order of checks, and tests/unit/bbctl/test_lua_validator.py
holds both to the same cases, message for message.

Returns {validate = function(text) -> state (raises a Rejection), read_script =
function(path) -> text or nil, problem, Rejection = the metatable of refusals, shorten =
function(text) -> text as messages quote it}.
]]


-- BEGIN GENERATED GRAMMAR (bbctl.directives)
-- Rendered from src/bbctl/directives/grammar.py; do not edit here. Refresh with:
--   python -m bbctl.directives --write-lua slurm/bbctl-directives.lua
local GRAMMAR = {
    prefixes = {
        "#BB_LUA",
        "#DW",
        "#BB",
    },
    limits = {
        directive_bytes = 16384,
        path_bytes = 4095,
        component_bytes = 255,
        size_bytes = 9007199254740992,
        echo_bytes = 64,
        script_bytes = 4194304,
    },
    size_limit_text = "8PiB",
    units = {
        [""] = 1,
        B = 1,
        G = 1073741824,
        GB = 1000000000,
        GIB = 1073741824,
        K = 1024,
        KB = 1000,
        KIB = 1024,
        M = 1048576,
        MB = 1000000,
        MIB = 1048576,
        P = 1125899906842624,
        PB = 1000000000000000,
        PIB = 1125899906842624,
        T = 1099511627776,
        TB = 1000000000000,
        TIB = 1099511627776,
    },
    suggest_units = {
        binary = {
            "PiB",
            "TiB",
            "GiB",
            "MiB",
            "KiB",
        },
        decimal = {
            "PB",
            "TB",
            "GB",
            "MB",
            "KB",
        },
    },
    implicit_jobdw_prefix = "#BB_LUA",
    path_forbidden_pattern = "[%\"%'%`%\\%$%*%?%[%]%{%}]",
    buffer_variables = {
        DW_JOB_STRIPED = "striped",
        DW_JOB_PRIVATE = "private",
        BB_JOB_STRIPED = "striped",
        BB_JOB_PRIVATE = "private",
    },
    persistent_variable_prefixes = {
        "DW_PERSISTENT_STRIPED_",
        "BB_PERSISTENT_STRIPED_",
    },
    kinds = {
        size = {
            check = "size",
            expects = "a size such as 100GiB",
        },
        pool = {
            check = "name",
            first = "A-Za-z0-9",
            rest = "A-Za-z0-9_.-",
            max = 64,
            describe = "1 to 64 characters of A-Z a-z 0-9 _ . -, starting with a letter or digit",
            expects = "a pool name",
            pattern = "^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        },
        preset = {
            check = "name",
            first = "A-Za-z0-9",
            rest = "A-Za-z0-9_.-",
            max = 64,
            describe = "1 to 64 characters of A-Z a-z 0-9 _ . -, starting with a letter or digit",
            expects = "a preset name",
            pattern = "^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        },
        buffer_name = {
            check = "name",
            expects = "a buffer name",
            first = "A-Za-z_",
            rest = "A-Za-z0-9_.-",
            max = 64,
            describe = "1 to 64 characters of A-Z a-z 0-9 _ . -, starting with a letter or _",
            pattern = "^[A-Za-z_][A-Za-z0-9_.-]*$",
        },
        swap_size = {
            check = "swap_size",
            expects = "a whole number of GiB such as 4GiB",
        },
        hint = {
            check = "name",
            expects = "a word",
            first = "A-Za-z0-9",
            rest = "A-Za-z0-9_",
            max = 32,
            describe = "a word of A-Z a-z 0-9 _ (DataWarp's hint; it changes nothing here)",
            pattern = "^[A-Za-z0-9][A-Za-z0-9_]*$",
        },
        access_mode = {
            check = "enum",
            values = {
                "striped",
                "private",
                "striped,private",
            },
            expects = "one of striped | private | striped,private",
            choices = "striped | private | striped,private",
        },
        access = {
            check = "enum",
            values = {
                "striped",
                "private",
            },
            expects = "one of striped | private",
            choices = "striped | private",
        },
        buffer_type = {
            check = "enum",
            values = {
                "scratch",
                "cache",
            },
            expects = "one of scratch | cache",
            choices = "scratch | cache",
        },
        fs = {
            check = "enum",
            values = {
                "gluster",
                "lustre",
            },
            expects = "one of gluster | lustre",
            choices = "gluster | lustre",
        },
        stage_type = {
            check = "enum",
            values = {
                "file",
                "directory",
                "list",
            },
            expects = "one of file | directory | list",
            choices = "file | directory | list",
        },
        pfs_path = {
            check = "pfs_path",
            expects = "an absolute path",
        },
        buffer_path = {
            check = "buffer_path",
            expects = "a path under $DW_JOB_STRIPED, $DW_JOB_PRIVATE or $DW_PERSISTENT_STRIPED_<name>",
        },
    },
    directive_order = {
        "jobdw",
        "stage_in",
        "stage_out",
        "persistentdw",
        "create_persistent",
        "destroy_persistent",
        "swap",
    },
    directive_list = "jobdw, stage_in, stage_out, persistentdw, create_persistent, destroy_persistent, swap",
    directives = {
        jobdw = {
            keys = {
                capacity = "size",
                pool = "pool",
                access_mode = "access_mode",
                type = "buffer_type",
                fs = "fs",
                pfs = "pfs_path",
                optimization_strategy = "hint",
                max_mds = "hint",
                preset = "preset",
            },
            aliases = {
                access = "access_mode",
            },
            required = {
                "capacity",
            },
            once = true,
            slurm_reads = {
                "capacity",
                "pool",
            },
            defaults = {
                access_mode = "striped",
                type = "scratch",
                fs = "gluster",
            },
            rules = {
                {
                    rule = "cache",
                },
            },
            key_order = {
                "capacity",
                "pool",
                "access_mode",
                "type",
                "fs",
                "pfs",
                "optimization_strategy",
                "max_mds",
                "preset",
            },
            allowed = "capacity=, pool=, access_mode=, type=, fs=, pfs=, optimization_strategy=, max_mds=, preset=, access=",
            required_text = "capacity=",
            flags = {},
        },
        stage_in = {
            keys = {
                type = "stage_type",
                source = "pfs_path",
                destination = "buffer_path",
            },
            required = {
                "type",
                "source",
                "destination",
            },
            rules = {
                {
                    rule = "file_needs_name",
                },
            },
            key_order = {
                "type",
                "source",
                "destination",
            },
            allowed = "type=, source=, destination=",
            required_text = "type=, source=, destination=",
            flags = {},
        },
        stage_out = {
            keys = {
                type = "stage_type",
                source = "buffer_path",
                destination = "pfs_path",
            },
            required = {
                "type",
                "source",
                "destination",
            },
            rules = {
                {
                    rule = "file_needs_name",
                },
            },
            key_order = {
                "type",
                "source",
                "destination",
            },
            allowed = "type=, source=, destination=",
            required_text = "type=, source=, destination=",
            flags = {},
        },
        persistentdw = {
            keys = {
                name = "buffer_name",
            },
            required = {
                "name",
            },
            slurm_reads = {
                "name",
            },
            key_order = {
                "name",
            },
            allowed = "name=",
            required_text = "name=",
            flags = {},
        },
        create_persistent = {
            keys = {
                name = "buffer_name",
                capacity = "size",
                access = "access",
                type = "buffer_type",
                pool = "pool",
                pfs = "pfs_path",
                preset = "preset",
            },
            aliases = {
                access_mode = "access",
            },
            required = {
                "name",
                "capacity",
            },
            slurm_reads = {
                "name",
                "capacity",
                "pool",
                "type",
                "access_mode",
                "access",
            },
            defaults = {
                access = "striped",
                type = "scratch",
            },
            rules = {
                {
                    rule = "not_yet",
                    key = "type",
                    value = "cache",
                    hint = "a persistent buffer cannot be a cache: cache a directory for one job with 'jobdw type=cache pfs=DIR capacity=SIZE'",
                },
            },
            key_order = {
                "name",
                "capacity",
                "access",
                "type",
                "pool",
                "pfs",
                "preset",
            },
            allowed = "name=, capacity=, access=, type=, pool=, pfs=, preset=, access_mode=",
            required_text = "name=, capacity=",
            flags = {},
        },
        destroy_persistent = {
            keys = {
                name = "buffer_name",
            },
            required = {
                "name",
            },
            flags = {
                hurry = true,
            },
            slurm_reads = {
                "name",
            },
            key_order = {
                "name",
            },
            allowed = "name=, hurry",
            required_text = "name=",
        },
        swap = {
            positional = "swap_size",
            keys = {
                pool = "pool",
            },
            required = {},
            once = true,
            slurm_reads = {
                "pool",
            },
            key_order = {
                "pool",
            },
            allowed = "pool=",
            required_text = "",
            flags = {},
        },
    },
    conflicts = {
        {
            a = "create_persistent",
            b = "persistentdw",
            why = "a job cannot use a buffer it creates: use it from a later job",
        },
        {
            a = "create_persistent",
            b = "destroy_persistent",
            why = "create and destroy a buffer in separate jobs",
        },
        {
            a = "destroy_persistent",
            b = "persistentdw",
            why = "a job cannot use a buffer it destroys",
        },
    },
    messages = {
        control_char = "line {line}: control character {token} in a directive line: directives are printable text",
        no_space = "line {line}: '{token}' starts like a directive: write '{prefix} ' and then the directive, e.g. '{prefix} jobdw capacity=100GiB'",
        dangling_continuation = "line {line}: the directive ends with '\\' but the next line is not a {prefix} line: continue it on a '{prefix} ...' line or remove the '\\'",
        late_directive = "line {line}: '{token}' comes after the script's first command (line {first}): Slurm reads burst buffer directives only above it, so this line would be silently ignored: move it up",
        too_long = "line {line}: directive '{token}' is longer than {limit} bytes",
        unknown_directive = "line {line}: unknown directive '{token}': use one of {allowed}",
        bare_options = "line {line}: '{token}' is not a directive: lines read '{prefix} DIRECTIVE key=value ...', e.g. '{prefix} jobdw capacity=100GiB pool=nvme'",
        second_directive = "line {line}: a second {directive} line (the first is line {first}): give {directive} once",
        flag_value = "line {line}: {directive}: '{token}': {key} is a flag and takes no value: write just '{key}'",
        unknown_key = "line {line}: {directive}: unknown key '{key}' in '{token}': allowed: {allowed}",
        not_key_value = "line {line}: {directive}: '{token}' is not key=value: allowed: {allowed}",
        conflicting_key = "line {line}: {directive}: '{token}': {key} is given twice with different values ('{first}' and '{second}'): give it once",
        slurm_reads_first = "line {line}: {directive}: '{token}' holds '{key}=' inside another value; Slurm reads the first '{key}=' on the line as the {key}, so it would read this line differently: give {key}= before it, or rename the path",
        empty_value = "line {line}: {directive}: '{token}' has an empty value: give {expects}",
        bad_enum = "line {line}: {directive}: '{token}': {key} must be one of {choices}",
        bad_name = "line {line}: {directive}: '{token}': {key} must be {describe}",
        bad_size = "line {line}: {directive}: '{token}' is not a size: give a whole number of bytes with an optional unit: K M G T P or KiB..PiB (powers of 1024), KB..PB (powers of 1000)",
        capacity_separator = "line {line}: {directive}: '{token}' is followed by a tab or carriage return: Slurm reads the size up to a space and would book a different size: separate it with a space",
        decimal_size = "line {line}: {directive}: '{token}': Slurm reads sizes up to the decimal point and would book a different size than the buffer gets: write a whole number, e.g. {suggest}",
        bad_swap = "line {line}: {directive}: '{token}' is not a swap size: Slurm counts swap in whole GiB per node (a bare number, or with G or GiB), e.g. 'swap 4GiB'",
        node_size = "line {line}: {directive}: '{token}': node counts (N) are not supported: give bytes, e.g. 100GiB",
        zero_size = "line {line}: {directive}: '{token}': the size must be more than 0 bytes",
        huge_size = "line {line}: {directive}: '{token}' is larger than the limit of {limit}",
        missing_positional = "line {line}: {directive}: missing {expects}: write '{directive} 4GiB'",
        missing_key = "line {line}: {directive}: missing {key}=: required: {required}",
        not_yet = "line {line}: {directive}: '{token}': {hint}",
        cache_needs_pfs = "line {line}: {directive}: '{token}': a cache buffer needs pfs=DIR, the directory on the parallel filesystem it caches, e.g. '{prefix} jobdw type=cache pfs=/lus/me/run capacity=100GiB'",
        cache_access = "line {line}: {directive}: '{token}': a cache buffer is striped only (the job finds its cache of pfs=DIR at $DW_JOB_STRIPED): write access_mode=striped",
        cache_stage = "line {line}: {directive}: '{token}': the job buffer is a cache of pfs=DIR (line {first}): the job reads DIR through it and what it writes goes back to DIR at job end, so there is nothing to stage: remove this line",
        path_too_long = "line {line}: {directive}: '{token}': {key} is longer than {limit} bytes",
        not_absolute = "line {line}: {directive}: '{token}': {key} must be an absolute path on the parallel filesystem (starting with /)",
        not_expanded = "line {line}: {directive}: '{token}': nothing expands $VARIABLES or ~ in {key} (DataWarp did not either): give the absolute path on the parallel filesystem",
        not_buffer_path = "line {line}: {directive}: '{token}': {key} must start with $DW_JOB_STRIPED, $DW_JOB_PRIVATE or $DW_PERSISTENT_STRIPED_<name> (or their $BB_ twins), then /path or nothing",
        bad_persistent_var = "line {line}: {directive}: '{token}': '{name}' is not a persistent buffer name: names are {describe}",
        bad_char = "line {line}: {directive}: '{token}': '{char}' is not allowed in paths: nothing expands quotes, backslashes, $, backticks, braces or glob characters here",
        dotdot = "line {line}: {directive}: '{token}': '..' is not allowed in paths: write the path without it",
        long_component = "line {line}: {directive}: '{token}': a path component is longer than {limit} bytes",
        file_needs_name = "line {line}: {directive}: '{token}': type=file needs a file name, not a directory root",
        duplicate_name = "line {line}: {directive} name={name} appears twice (first on line {first}): give it once",
        name_conflict = "line {line}: {directive} name={name} conflicts with {other} name={name} on line {first}: {why}",
        swap_needs_jobdw = "line {line}: swap needs a jobdw line: swap space comes from the job buffer; add 'jobdw capacity=SIZE'",
        needs_jobdw = "line {line}: {directive}: '{token}' uses ${var} but there is no jobdw line: add '{prefix} jobdw capacity=SIZE' or use a persistent buffer",
        needs_persistentdw = "line {line}: {directive}: '{token}' uses ${var} but there is no 'persistentdw name={name}' line",
        needs_access = "line {line}: {directive}: '{token}' uses ${var}, but jobdw (line {first}) has access_mode={mode}: use access_mode=striped,private",
        stage_private = "line {line}: {directive}: '{token}': ${var} is a different directory on every compute node and cannot be staged: stage into $DW_JOB_STRIPED",
    },
}
-- END GENERATED GRAMMAR

local WHITESPACE = {[" "] = true, ["\t"] = true, ["\r"] = true, ["\v"] = true, ["\f"] = true}
local TOKEN = "[^ \t\r\v\f]+"
local CONTROL = "[%z\1-\8\14-\31\127]"
local Rejection = {}  -- metatable of the errors we raise on purpose

local function render(name, fields)
    return (GRAMMAR.messages[name]:gsub("{([%w_]+)}", function(field)
        return fields[field] ~= nil and tostring(fields[field]) or nil
    end))
end

local function fail(name, fields)
    error(setmetatable({message = render(name, fields)}, Rejection), 0)
end

local function fail_at(where, name, token, fields)
    fields = fields or {}
    fields.line, fields.prefix, fields.directive, fields.token = where.line, where.prefix, where.directive, token
    fail(name, fields)
end

-- At most echo_bytes of text, cut on a UTF-8 character boundary.
local function shorten(text)
    local limit = GRAMMAR.limits.echo_bytes
    if #text <= limit then
        return text
    end
    local cut = limit - 4
    while cut > 0 do
        local byte = text:byte(cut + 1)
        if byte < 128 or byte >= 192 then
            break
        end
        cut = cut - 1
    end
    return text:sub(1, cut) .. "..."
end

local function first_token(text)
    return text:match(TOKEN) or ""
end

local function split_path(path)
    local parts, start = {}, 1
    while true do
        local slash = path:find("/", start, true)
        if slash == nil then
            parts[#parts + 1] = path:sub(start)
            return parts
        end
        parts[#parts + 1] = path:sub(start, slash - 1)
        start = slash + 1
    end
end

local function any_part(parts, test)
    for _, part in ipairs(parts) do
        if test(part) then
            return true
        end
    end
    return false
end

-- path starts with "/"; normalised as POSIX reads it: "//", "." and a trailing "/" go.
local function check_path_chars(where, path, shown)
    local bad = path:find(GRAMMAR.path_forbidden_pattern)
    if bad then
        fail_at(where, "bad_char", shown, {char = path:sub(bad, bad)})
    end
    local parts = {}
    for _, part in ipairs(split_path(path:sub(2))) do
        if part ~= "" and part ~= "." then
            parts[#parts + 1] = part
        end
    end
    if any_part(parts, function(part) return part == ".." end) then
        fail_at(where, "dotdot", shown)
    end
    local limit = GRAMMAR.limits.component_bytes
    if any_part(parts, function(part) return #part > limit end) then
        fail_at(where, "long_component", shown, {limit = limit})
    end
    return "/" .. table.concat(parts, "/")
end

local function is_name(kind, value)
    return #value <= kind.max and value:find(kind.pattern) ~= nil
end

local function check_buffer_path(where, key, value, shown)
    local variable, rest = value:match("^%$([A-Za-z0-9_%.%-]+)(.*)$")
    if variable == nil or not (rest == "" or rest:sub(1, 1) == "/") then
        fail_at(where, "not_buffer_path", shown, {key = key})
    end
    local area, name = GRAMMAR.buffer_variables[variable], nil
    if area == nil then
        for _, prefix in ipairs(GRAMMAR.persistent_variable_prefixes) do
            if variable:sub(1, #prefix) == prefix then
                area, name = "persistent", variable:sub(#prefix + 1)
                break
            end
        end
        if area == nil then
            fail_at(where, "not_buffer_path", shown, {key = key})
        end
        local kind = GRAMMAR.kinds.buffer_name
        if not is_name(kind, name) then
            fail_at(where, "bad_persistent_var", shown, {name = shorten(name), describe = kind.describe})
        end
    end
    local subpath = rest ~= "" and check_path_chars(where, rest, shown) or ""
    return {variable = variable, area = area, name = name, subpath = subpath == "/" and "" or subpath}
end

-- A decimal size as a whole number of the largest exact unit of its family (7.5GiB -> 7680MiB).
local function whole_size(number, unit)
    local nbytes = math.ceil(tonumber(number) * GRAMMAR.units[unit])
    local decimal = unit:sub(-1) == "B" and unit:sub(-2) ~= "IB"
    for _, name in ipairs(GRAMMAR.suggest_units[decimal and "decimal" or "binary"]) do
        local multiplier = GRAMMAR.units[name:upper()]
        if nbytes % multiplier == 0 then
            return string.format("%.0f%s", nbytes / multiplier, name)
        end
    end
    return string.format("%.0f", nbytes)
end

-- Whether the whole number written as digits, times multiplier, exceeds bound, exactly: doubles
-- hold every integer up to 2^53 but round those above (9007199254740993 reads as 9007199254740992),
-- so the digits are compared with floor(bound / multiplier) by length, then in two exact parts.
local function exceeds(digits, multiplier, bound)
    digits = digits:gsub("^0+", "")
    local most = string.format("%.0f", math.floor(bound / multiplier))
    if #digits ~= #most then
        return #digits > #most
    end
    local head, most_head = tonumber(digits:sub(1, -2)) or 0, tonumber(most:sub(1, -2)) or 0
    return head > most_head or (head == most_head and digits:byte(-1) > most:byte(-1))
end

local function check_size(where, value, shown)
    local number, fraction, unit = value:match("^([0-9]+)(%.?[0-9]*)([A-Za-z]*)$")
    if number == nil or fraction == "." then
        fail_at(where, "bad_size", shown)
    end
    unit = unit:upper()
    if unit == "N" then
        fail_at(where, "node_size", shown)
    end
    local multiplier = GRAMMAR.units[unit]
    if multiplier == nil then
        fail_at(where, "bad_size", shown)
    end
    local limit = GRAMMAR.limits.size_bytes
    if exceeds(number, multiplier, limit) or (fraction ~= "" and exceeds(number, multiplier, limit - 1)) then
        fail_at(where, "huge_size", shown, {limit = GRAMMAR.size_limit_text})
    end
    if fraction ~= "" then
        fail_at(where, "decimal_size", shown, {suggest = whole_size(number .. fraction, unit)})
    end
    local nbytes = tonumber(number) * multiplier  -- exact: at most the limit
    if nbytes == 0 then
        fail_at(where, "zero_size", shown)
    end
    return nbytes
end

-- Slurm counts swap in whole GiB per node: a bare number, or with G or GiB.
local function check_swap_size(where, value, shown)
    local number, unit = value:match("^([0-9]+)([A-Za-z]*)$")
    unit = unit and unit:upper()
    if number == nil or not (unit == "" or unit == "G" or unit == "GIB") or tonumber(number) == 0 then
        fail_at(where, "bad_swap", shown)
    end
    local nbytes = tonumber(number) * GRAMMAR.units.G
    if nbytes > GRAMMAR.limits.size_bytes then
        fail_at(where, "huge_size", shown, {limit = GRAMMAR.size_limit_text})
    end
    return nbytes
end

local function check_value(where, kind_name, key, value, token)
    local kind, shown = GRAMMAR.kinds[kind_name], shorten(token)
    if value == "" then
        fail_at(where, "empty_value", shown, {expects = kind.expects})
    end
    if kind.check == "enum" then
        for _, allowed in ipairs(kind.values) do
            if value == allowed then
                return value
            end
        end
        fail_at(where, "bad_enum", shown, {key = key, choices = kind.choices})
    elseif kind.check == "name" then
        if not is_name(kind, value) then
            fail_at(where, "bad_name", shown, {key = key, describe = kind.describe})
        end
        return value
    elseif kind.check == "size" then
        return check_size(where, value, shown)
    elseif kind.check == "swap_size" then
        return check_swap_size(where, value, shown)
    end
    if #value > GRAMMAR.limits.path_bytes then
        fail_at(where, "path_too_long", shown, {key = key, limit = GRAMMAR.limits.path_bytes})
    end
    if kind.check == "pfs_path" then
        if value:sub(1, 1) == "$" or value:sub(1, 1) == "~" then
            fail_at(where, "not_expanded", shown, {key = key})
        end
        if value:sub(1, 1) ~= "/" then
            fail_at(where, "not_absolute", shown, {key = key})
        end
        return check_path_chars(where, value, shown)
    end
    return check_buffer_path(where, key, value, shown)
end

-- Checked values compare by content: a buffer path is a table.
local function same_value(a, b)
    if type(a) == "table" and type(b) == "table" then
        return a.variable == b.variable and a.subpath == b.subpath
    end
    return a == b
end

local function value_of(token)
    local eq = token:find("=", 1, true)
    return eq and token:sub(eq + 1) or token
end

-- Refuse a line where Slurm's strstr would find "key=" inside another value first.
local function check_slurm_reads(where, spec, tokens, first)
    for _, key in ipairs(spec.slurm_reads or {}) do
        local needle = key .. "="
        for i = first, #tokens do
            if tokens[i]:find(needle, 1, true) then
                if tokens[i]:sub(1, #needle) ~= needle then
                    fail_at(where, "slurm_reads_first", shorten(tokens[i]), {key = key})
                end
                break
            end
        end
    end
end

-- Slurm reads a size up to a space: a tab (or CR) after capacity= would change what it books.
local function check_capacity_separator(where, spec, body)
    local reads_capacity = false
    for _, key in ipairs(spec.slurm_reads or {}) do
        reads_capacity = reads_capacity or key == "capacity"
    end
    local start = reads_capacity and body:find("capacity=", 1, true)
    if not start then
        return
    end
    local stop = body:find("[ \t\r\v\f]", start)
    if stop and body:sub(stop, stop) ~= " " then
        fail_at(where, "capacity_separator", shorten(body:sub(start, stop - 1)))
    end
end

-- key -> {token, checked value}; a flag maps to {token, true}; an alias is stored
-- under the key it means; a key repeated with an equal value is accepted.
local function key_values(where, spec, tokens, first, values)
    local aliases = spec.aliases or {}
    for i = first, #tokens do
        local token = tokens[i]
        local eq = token:find("=", 1, true)
        local given = eq and token:sub(1, eq - 1) or token
        local key = aliases[given] or given
        local shown = shorten(token)
        if not eq and not spec.flags[key] then
            fail_at(where, "not_key_value", shown, {allowed = spec.allowed})
        end
        if eq and spec.flags[key] then
            fail_at(where, "flag_value", shown, {key = key})
        end
        if eq and not spec.keys[key] then
            fail_at(where, "unknown_key", shown, {key = shorten(given), allowed = spec.allowed})
        end
        local value = true
        if eq then
            value = check_value(where, spec.keys[key], key, token:sub(eq + 1), token)
        end
        if values[key] then
            if not same_value(values[key][2], value) then
                fail_at(where, "conflicting_key", shown, {key = key, first = shorten(value_of(values[key][1])),
                                                          second = shorten(value_of(token))})
            end
        else
            values[key] = {token, value}
        end
    end
    return values
end

local function effective(spec, values, key)
    if values[key] then
        return values[key][2]
    end
    return spec.defaults and spec.defaults[key]
end

local RULES = {
    not_yet = function(where, spec, rule, values)
        if values[rule.key] and values[rule.key][2] == rule.value then
            fail_at(where, "not_yet", shorten(values[rule.key][1]), {hint = rule.hint})
        end
    end,
    cache = function(where, spec, rule, values)  -- type=cache needs pfs= and is striped only
        if effective(spec, values, "type") ~= "cache" then
            return
        end
        if values.pfs == nil then
            fail_at(where, "cache_needs_pfs", shorten(values.type[1]))
        end
        if effective(spec, values, "access_mode") ~= "striped" then
            fail_at(where, "cache_access", shorten(values.access_mode[1]))
        end
    end,
    file_needs_name = function(where, spec, rule, values)
        if values.type[2] ~= "file" then
            return
        end
        for _, key in ipairs(spec.key_order) do
            local token, value = values[key][1], values[key][2]
            if value == "/" or (type(value) == "table" and value.subpath == "") then
                fail_at(where, "file_needs_name", shorten(token))
            end
        end
    end,
}

-- A persistent buffer name, refused when repeated or used in conflicting ways.
local function claim_name(where, name, state)
    local seen = state.names[where.directive] or {}
    state.names[where.directive] = seen
    if seen[name] then
        fail_at(where, "duplicate_name", name, {name = name, first = seen[name]})
    end
    for _, conflict in ipairs(GRAMMAR.conflicts) do
        local other
        if where.directive == conflict.a then
            other = conflict.b
        elseif where.directive == conflict.b then
            other = conflict.a
        end
        if other and state.names[other] and state.names[other][name] then
            fail_at(where, "name_conflict", name,
                    {name = name, other = other, first = state.names[other][name], why = conflict.why})
        end
    end
    seen[name] = where.line
end

local function build_stage(where, values, state)
    local key = where.directive == "stage_in" and "destination" or "source"
    state.stages[#state.stages + 1] = {where = where, token = values[key][1], path = values[key][2]}
end

local function build_named(where, values, state)
    claim_name(where, values.name[2], state)
end

-- key -> its token as messages quote it, for each key the line gives (bbctl-policy.lua's refusals).
local function tokens_of(values)
    local tokens = {}
    for key, pair in pairs(values) do
        tokens[key] = shorten(pair[1])
    end
    return tokens
end

-- capacity (bytes) and pool (nil: the default) of the buffers a job asks for, which
-- bbctl-layouts.lua plans (bbctl.layouts); striped as bbctl.lifecycle builds them. preset and
-- tokens are for bbctl-policy.lua, which expands the preset before anything is planned;
-- state.presets says whether any line names one.
local BUILDERS = {
    jobdw = function(where, values, state)
        local spec = GRAMMAR.directives.jobdw
        local mode = effective(spec, values, "access_mode")
        local modes = {}
        for area in mode:gmatch("[^,]+") do
            modes[area] = true
        end
        local fs = effective(spec, values, "fs")
        state.jobdw = {line = where.line, directive = where.directive, access_mode = mode, modes = modes, fs = fs,
                       capacity = values.capacity[2], pool = values.pool and values.pool[2],
                       striped = fs == "gluster" and modes.striped == true,
                       cache = effective(spec, values, "type") == "cache",
                       preset = values.preset and values.preset[2], tokens = tokens_of(values)}
        state.presets = state.presets or values.preset ~= nil
    end,
    stage_in = build_stage,
    stage_out = build_stage,
    persistentdw = build_named,
    create_persistent = function(where, values, state)
        build_named(where, values, state)
        local access = effective(GRAMMAR.directives.create_persistent, values, "access")
        state.creates[#state.creates + 1] = {
            line = where.line, directive = where.directive, name = values.name[2], access = access,
            capacity = values.capacity[2], pool = values.pool and values.pool[2], striped = access == "striped",
            preset = values.preset and values.preset[2], tokens = tokens_of(values)}
        state.presets = state.presets or values.preset ~= nil
    end,
    destroy_persistent = build_named,
    swap = function(where, values, state)
        state.swap_line = where.line
    end,
}

local function positional(where, spec, tokens)
    if #tokens < 2 or tokens[2]:find("=", 1, true) then
        fail_at(where, "missing_positional", "", {expects = GRAMMAR.kinds[spec.positional].expects})
    end
    return {tokens[2], check_value(where, spec.positional, "", tokens[2], tokens[2])}
end

local function parse_record(state, line, prefix, body)
    local tokens = {}
    for token in body:gmatch(TOKEN) do
        tokens[#tokens + 1] = token
    end
    if #tokens == 0 then
        return  -- a bare "#BB_LUA" line: Slurm's minimal form
    end
    local name = tokens[1]
    if prefix == GRAMMAR.implicit_jobdw_prefix and name:find("=", 1, true) then
        name = "jobdw"  -- Slurm's lua form "#BB_LUA pool=P capacity=SIZE"
        table.insert(tokens, 1, name)
    end
    local comment = #tokens + 1  -- a word starting with "#" begins a comment
    for i = 2, #tokens do
        if tokens[i]:sub(1, 1) == "#" then
            comment = i
            break
        end
    end
    local spec = GRAMMAR.directives[name]
    if spec == nil then
        local message = name:find("=", 1, true) and "bare_options" or "unknown_directive"
        fail(message, {line = line, token = shorten(name), prefix = prefix, allowed = GRAMMAR.directive_list})
    end
    local where = {line = line, prefix = prefix, directive = name}
    if spec.once then
        if state.first[name] then
            fail_at(where, "second_directive", name, {first = state.first[name]})
        end
        state.first[name] = line
    end
    local values, first = {}, 2
    if spec.positional then
        local before = {}
        for i = 1, comment - 1 do
            before[i] = tokens[i]
        end
        values[""], first = positional(where, spec, before), 3
    end
    check_slurm_reads(where, spec, tokens, first)  -- Slurm reads a trailing comment's text too
    check_capacity_separator(where, spec, body)
    local kept = {}
    for i = 1, comment - 1 do
        kept[i] = tokens[i]
    end
    key_values(where, spec, kept, first, values)
    for _, key in ipairs(spec.required) do
        if values[key] == nil then
            fail_at(where, "missing_key", key, {key = key, required = spec.required_text})
        end
    end
    for _, rule in ipairs(spec.rules or {}) do
        RULES[rule.rule](where, spec, rule, values)
    end
    BUILDERS[name](where, values, state)
end

local function prefix_of(line)
    for _, prefix in ipairs(GRAMMAR.prefixes) do
        if line:sub(1, #prefix) == prefix then
            return prefix
        end
    end
    return nil
end

local function directive_body(number, line, prefix)
    local at = line:find(CONTROL)
    if at then
        fail("control_char", {line = number, token = string.format("\\x%02x", line:byte(at))})
    end
    local body = line:sub(#prefix + 1)
    if body ~= "" and not WHITESPACE[body:sub(1, 1)] then
        fail("no_space", {line = number, token = shorten(first_token(line)), prefix = prefix})
    end
    return body
end

local function dangling(pending)
    fail("dangling_continuation", {line = pending.line, token = "\\", prefix = pending.prefix})
end

-- Directive lines of the leading comment block (continuations joined), each
-- handed to on_record as soon as it is complete, as Slurm's _xlate_batch reads them.
-- Returns where the block ends: the line number and position of the first command (nil if none).
local function scan(text, on_record)
    local pending, number, pos, command = nil, 0, 1, nil
    while true do
        local newline = text:find("\n", pos, true)
        local line = text:sub(pos, newline and newline - 1 or -1)
        number = number + 1
        if line ~= "" then
            if line:sub(1, 1) ~= "#" then
                command = number
                break
            end
            local prefix = prefix_of(line)
            if prefix == nil or (pending and prefix ~= pending.prefix) then
                if pending then
                    dangling(pending)
                end
            else
                local body, first = directive_body(number, line, prefix), number
                if pending then
                    body, first = pending.body .. body, pending.line
                end
                if #body > GRAMMAR.limits.directive_bytes then
                    fail("too_long", {line = first, token = shorten(first_token(body)),
                                      limit = GRAMMAR.limits.directive_bytes})
                end
                if body:sub(-1) == "\\" then
                    pending = {line = first, prefix = prefix, body = body:sub(1, -2)}
                else
                    pending = nil
                    on_record(first, prefix, body)
                end
            end
        end
        if newline == nil then
            break
        end
        pos = newline + 1
    end
    if pending then
        dangling(pending)
    end
    return command, pos
end

local function check_buffers(state)
    if state.swap_line and state.jobdw == nil then
        fail("swap_needs_jobdw", {line = state.swap_line, token = "swap"})
    end
    local persistent = state.names.persistentdw or {}
    for _, stage in ipairs(state.stages) do
        local path, shown = stage.path, shorten(stage.token)
        if path.area == "private" then
            fail_at(stage.where, "stage_private", shown, {var = path.variable})
        end
        if path.area == "persistent" then
            if not persistent[path.name] then
                fail_at(stage.where, "needs_persistentdw", shown, {var = path.variable, name = path.name})
            end
        elseif state.jobdw == nil then
            fail_at(stage.where, "needs_jobdw", shown, {var = path.variable})
        elseif state.jobdw.cache then
            fail_at(stage.where, "cache_stage", shown, {first = state.jobdw.line})
        elseif not state.jobdw.modes[path.area] then
            fail_at(stage.where, "needs_access", shown,
                    {var = path.variable, first = state.jobdw.line, mode = state.jobdw.access_mode})
        end
    end
end

-- A directive below the first command: Slurm never reads it, so its staging would be lost.
-- The scan goes on from the first command (line first_command at pos, where scan stopped)
-- to the end of the first script_bytes.
local function check_late_directives(text, first_command, pos)
    text = text:sub(1, GRAMMAR.limits.script_bytes)
    local number, newline = first_command, text:find("\n", pos, true)
    while newline do
        pos, number = newline + 1, number + 1
        newline = text:find("\n", pos, true)
        local line = text:sub(pos, newline and newline - 1 or -1)
        local prefix = prefix_of(line)
        local words = prefix and line:sub(#prefix + 1) or ""
        local name = first_token(words)
        if prefix and WHITESPACE[words:sub(1, 1)] and GRAMMAR.directives[name] then
            fail("late_directive", {line = number, token = shorten(prefix .. " " .. name), first = first_command})
        end
    end
end

local function validate_directives(text)
    local state = {first = {}, names = {}, stages = {}, creates = {}}
    local first_command, pos = scan(text, function(line, prefix, body)
        parse_record(state, line, prefix, body)
    end)
    if first_command then
        check_late_directives(text, first_command, pos)
    end
    check_buffers(state)
    return state
end

-- The script, up to script_bytes (Slurm's default limit on a batch script): the
-- leading comment block and what follows, where misplaced directives are looked for.
local function read_script(path)
    local fh, problem = io.open(path, "rb")
    if fh == nil then
        return nil, problem
    end
    local text = fh:read(GRAMMAR.limits.script_bytes) or ""
    fh:close()
    return text
end

return {validate = validate_directives, read_script = read_script, Rejection = Rejection, shorten = shorten}
