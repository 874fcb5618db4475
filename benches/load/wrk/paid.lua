-- Every request carries a fresh pre-signed payment header.
-- Arguments (after `--`): FILE OFFSET THREADS [HEADER]. Thread i of T takes lines OFFSET+i, +T, +2T, ...
-- so no header is sent twice in a run; `used` reports how far the run got, so the next run
-- (warm-up, then measurement) continues after it.
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(dir .. "report.lua")

local lines, pos, stride, name = {}, 1, 1, "PAYMENT-SIGNATURE"
used = 0

function init(args)
  local file, offset = args[1], tonumber(args[2] or "0")
  stride = tonumber(args[3] or "1")
  name = args[4] or name
  local id = tonumber(wrk.thread:get("id") or 0)
  local i = 0
  for line in io.lines(file) do
    if i >= offset and (i - offset) % stride == id then
      lines[#lines + 1] = line
    end
    i = i + 1
  end
  if #lines == 0 then
    error("no pre-signed headers left in " .. file .. " after offset " .. offset)
  end
end

function request()
  local h = lines[pos]
  if h == nil then
    -- Out of headers: repeat the last one, which the server must refuse (counted as non-2xx).
    h = lines[#lines]
  else
    pos = pos + 1
    used = pos - 1
  end
  return wrk.format(nil, nil, { [name] = h })
end
