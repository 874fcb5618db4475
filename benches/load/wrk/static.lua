-- The same request every time (wrk's fast static path), plus the shared report.
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(dir .. "report.lua")
