"""The release ledger's charge, as one Redis Lua script: consumes the keys of one dataset's
release ledger (meta, verdicts, per-subject curves, totals, datasets) and the release (budgets,
δ, release id, per-subject RDP curve, orders, subjects); produces the verdict as JSON (`new` or,
for a known release id, `replay` of the first one) and, when charged, the composed curves and
the next release epoch. All or nothing: a refused release changes no curve."""

CHARGE_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {'missing'} end
local prior = redis.call('HGET', KEYS[2], ARGV[5])
if prior then return {'replay', prior} end
local sb, db, delta = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local function parse(s)
  local t = {}
  for x in string.gmatch(s, '[^,]+') do t[#t + 1] = tonumber(x) end
  return t
end
local function fmt(c)
  local t = {}
  for i = 1, #c do t[i] = string.format('%.17g', c[i]) end
  return table.concat(t, ',')
end
local orders, curve = parse(ARGV[7]), parse(ARGV[6])
local n = #orders
local function verdict(v)
  local text = cjson.encode(v)
  redis.call('HSET', KEYS[2], ARGV[5], text)
  return {'new', text}
end
if #curve ~= n or n == 0 then return verdict({status = 'refused', reason = 'invalid_charge'}) end
for i = 1, n do
  if curve[i] == nil or curve[i] ~= curve[i] or curve[i] < 0 then
    return verdict({status = 'refused', reason = 'invalid_charge'})
  end
end
local function eps(c)
  local best = math.huge
  for i = 1, n do
    local a, v = orders[i], c[i]
    if v < 1e300 then
      local e = v - (math.log(delta) + math.log(a)) / (a - 1) + math.log((a - 1) / a)
      if e < best then best = e end
    end
  end
  if best < 0 then best = 0 end
  return best
end
local function add(a, b)
  local t = {}
  for i = 1, n do t[i] = math.min(a[i] + b[i], 1e308) end
  return t
end
local zero = {}
for i = 1, n do zero[i] = 0 end
local stored = redis.call('HGET', KEYS[4], 'curve')
local dnew = add(stored and parse(stored) or zero, curve)
local deps = eps(dnew)
local release_eps = eps(curve)
if deps > db then
  return verdict({status = 'refused', reason = 'dataset_budget_exhausted',
                  epsilon = release_eps, dataset_epsilon = deps})
end
local updates, maxeps, over = {}, 0, 0
for i = 8, #ARGV do
  local cur = redis.call('HGET', KEYS[3], ARGV[i])
  local nc = add(cur and parse(cur) or zero, curve)
  local e = eps(nc)
  if e > sb then over = over + 1 end
  if e > maxeps then maxeps = e end
  updates[#updates + 1] = ARGV[i]
  updates[#updates + 1] = fmt(nc)
end
if over > 0 then
  return verdict({status = 'refused', reason = 'subject_budget_exhausted', over = over,
                  epsilon = release_eps, max_subject_epsilon = maxeps})
end
for i = 1, #updates, 2000 do
  redis.call('HSET', KEYS[3], unpack(updates, i, math.min(i + 1999, #updates)))
end
local epoch = redis.call('HINCRBY', KEYS[4], 'epoch', 1)
redis.call('HSET', KEYS[4], 'curve', fmt(dnew), 'last', ARGV[6])
redis.call('SADD', KEYS[5], ARGV[1])
return verdict({status = 'charged', epsilon = release_eps, max_subject_epsilon = maxeps,
                subjects = (#ARGV - 7), dataset_epsilon = deps, epoch = epoch})
"""
