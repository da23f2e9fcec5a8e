-- wrk script for bench/api.py: with the argument "walk", each request continues from the
-- cursor of the last answer (back to the first page after the last one), so a run walks
-- the pages of an endpoint instead of asking for its first page again and again.
local walking = false
local cursor = nil

function init(args)
  walking = args[1] == "walk"
end

function request()
  local path = wrk.path
  if walking and cursor then
    local sep = string.find(path, "?", 1, true) and "&" or "?"
    path = path .. sep .. "cursor=" .. cursor
  end
  return wrk.format("GET", path)
end

function response(status, headers, body)
  if walking then
    cursor = string.match(body, '"cursor":"([^"]+)"')
  end
end
