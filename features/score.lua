-- One atomic round trip per entity shard: read every feature aggregate of a payment, then record it.
-- Generated arguments come from features/online.py (see features/plan.py for the layout).
--
-- KEYS[i]  the key prefix of entity block i, hash-tagged ("af:{card:..}") so that all the keys a
--          block derives from it live in one Redis Cluster slot.
-- ARGV     "score", txid, t_ms, amount_milli, then per block: ntokens, tokens...
--          "feedback", txid, event_ms, event, then per block: ntokens, tokens...
-- Scores are event times in ms; amounts are integers in thousandths of the currency unit, so sums
-- are exact. Every read happens before the block records anything: the aggregates describe the
-- state before this payment. A transaction id the block has already recorded is not recorded again.

local mode = ARGV[1]
local txid = ARGV[2]
local t = tonumber(ARGV[3])
local out = {}

local function int(x) return string.format('%d', x) end
local function push(v) out[#out + 1] = v end

-- HMGET/HDEL with many fields, in chunks that fit Lua's unpack limit.
local function hmget_many(key, fields)
  local values = {}
  for i = 1, #fields, 2000 do
    local chunk = redis.call('HMGET', key, unpack(fields, i, math.min(i + 1999, #fields)))
    for j = 1, #chunk do values[#values + 1] = chunk[j] end
  end
  return values
end
local function hdel_many(key, fields)
  for i = 1, #fields, 2000 do
    redis.call('HDEL', key, unpack(fields, i, math.min(i + 1999, #fields)))
  end
end

-- E: exact windows over the entity's event log. tokens: retention, nw, w1..wn, spread_k
local function op_events(prefix, a, i, dup, amount)
  local retention, nw = tonumber(a[i]), tonumber(a[i + 1])
  local windows = {}
  for k = 1, nw do windows[k] = tonumber(a[i + 1 + k]) end
  local spread_k = tonumber(a[i + 2 + nw])
  local ev, amt = prefix .. ':ev', prefix .. ':amt'
  if nw > 0 then
    local counts, sums, maxs = {}, {}, {}
    for k = 1, nw do counts[k], sums[k], maxs[k] = 0, 0, -1 end
    local rows = redis.call('ZRANGEBYSCORE', ev, int(t - windows[nw]), '+inf', 'WITHSCORES')
    local ids, times = {}, {}
    for j = 1, #rows, 2 do
      if rows[j] ~= txid then
        ids[#ids + 1] = rows[j]
        times[#times + 1] = tonumber(rows[j + 1])
      end
    end
    local values = {}
    if #ids > 0 then values = hmget_many(amt, ids) end
    for j = 1, #ids do
      local x = tonumber(values[j]) or 0
      values[j] = x
      for k = 1, nw do
        if times[j] >= t - windows[k] then
          counts[k] = counts[k] + 1
          sums[k] = sums[k] + x
          if x > maxs[k] then maxs[k] = x end
        end
      end
    end
    for k = 1, nw do push(counts[k]); push(sums[k]); push(maxs[k]) end
    if spread_k > 0 then
      -- two passes: the squared deviations from the mean, never sum(x^2) - sum^2/n, which cancels
      local m2 = 0
      if counts[spread_k] > 0 then
        local mean = sums[spread_k] / counts[spread_k]
        for j = 1, #ids do
          if times[j] >= t - windows[spread_k] then m2 = m2 + (values[j] - mean) ^ 2 end
        end
      end
      push(string.format('%.17g', m2))
    end
  end
  if not dup then
    redis.call('ZADD', ev, 'NX', int(t), txid)
    if nw > 0 then
      -- amounts are only needed by exact windows; a dedupe-only log keeps ids alone
      redis.call('HSET', amt, txid, amount)
      local old = redis.call('ZRANGEBYSCORE', ev, '-inf', '(' .. int(t - retention))
      if #old > 0 then hdel_many(amt, old) end
      redis.call('PEXPIRE', amt, int(retention))
    end
    redis.call('ZREMRANGEBYSCORE', ev, '-inf', '(' .. int(t - retention))
    redis.call('PEXPIRE', ev, int(retention))
  end
  return i + 3 + nw
end

-- B: bucketed windows of one granularity, in one hash whose fields are "<bucket>:c|s|m|f"
-- (count, sum, max, frauds reported). A window is the current bucket plus the completed buckets
-- before it; the completed part only changes when the bucket does, so it is summed once per bucket
-- and cached in the hash ("pb" = the bucket it was computed at, "P<nb>:c|s|m|f" = the sums over
-- the nb-1 buckets before it). A write into a bucket older than "pb" drops the cache.
-- tokens: g, keep, nw, nb1..nbn, nf, fb1..fbn
local function op_buckets(prefix, a, i, dup, amount)
  local g, keep, nw = tonumber(a[i]), tonumber(a[i + 1]), tonumber(a[i + 2])
  local nf = tonumber(a[i + 3 + nw])
  local sizes = {}
  for k = 1, nw do sizes[k] = tonumber(a[i + 2 + k]) end
  for k = 1, nf do sizes[nw + k] = tonumber(a[i + 3 + nw + k]) end
  local key = prefix .. ':b:' .. int(g)
  local b = math.floor(t / g)
  local cur = int(b) .. ':'
  local head = { cur .. 'c', cur .. 's', cur .. 'm', cur .. 'f', 'pb' }
  for k = 1, #sizes do
    local p = 'P' .. int(sizes[k]) .. ':'
    head[#head + 1] = p .. 'c'
    head[#head + 1] = p .. 's'
    head[#head + 1] = p .. 'm'
    head[#head + 1] = p .. 'f'
  end
  local v = redis.call('HMGET', key, unpack(head))
  local past = {}
  if tonumber(v[5]) == b then
    for k = 1, #sizes do
      local o = 5 + 4 * (k - 1)
      past[k] = { tonumber(v[o + 1]) or 0, tonumber(v[o + 2]) or 0, tonumber(v[o + 3]) or -1, tonumber(v[o + 4]) or 0 }
    end
  else
    local longest = 1
    for k = 1, #sizes do if sizes[k] > longest then longest = sizes[k] end end
    local fields = {}
    for o = 1, longest - 1 do
      local p = int(b - o) .. ':'
      fields[#fields + 1] = p .. 'c'
      fields[#fields + 1] = p .. 's'
      fields[#fields + 1] = p .. 'm'
      fields[#fields + 1] = p .. 'f'
    end
    local pv = {}
    if #fields > 0 then pv = redis.call('HMGET', key, unpack(fields)) end
    local cache = { 'pb', int(b) }
    for k = 1, #sizes do
      local c, s, m, f = 0, 0, -1, 0
      for o = 1, sizes[k] - 1 do
        local j = 4 * (o - 1)
        c = c + (tonumber(pv[j + 1]) or 0)
        s = s + (tonumber(pv[j + 2]) or 0)
        local mo = tonumber(pv[j + 3])
        if mo and mo > m then m = mo end
        f = f + (tonumber(pv[j + 4]) or 0)
      end
      past[k] = { c, s, m, f }
      local p = 'P' .. int(sizes[k]) .. ':'
      for _, pair in ipairs({ { 'c', c }, { 's', s }, { 'm', m }, { 'f', f } }) do
        cache[#cache + 1] = p .. pair[1]
        cache[#cache + 1] = int(pair[2])
      end
    end
    redis.call('HSET', key, unpack(cache))
  end
  local cc, cs, cm, cf = tonumber(v[1]) or 0, tonumber(v[2]) or 0, tonumber(v[3]) or -1, tonumber(v[4]) or 0
  for k = 1, nw do
    push(past[k][1] + cc); push(past[k][2] + cs); push(math.max(past[k][3], cm))
  end
  for k = 1, nf do
    push(past[nw + k][1] + cc); push(past[nw + k][4] + cf)
  end
  if not dup then
    if redis.call('HINCRBY', key, cur .. 'c', 1) == 1 then
      -- first payment of a new bucket: drop buckets that fell out of every window
      local stale = {}
      for _, name in ipairs(redis.call('HKEYS', key)) do
        local nb = tonumber(string.match(name, '^(%-?%d+):'))
        if nb and nb <= b - keep then stale[#stale + 1] = name end
      end
      if #stale > 0 then hdel_many(key, stale) end
    end
    redis.call('HINCRBY', key, cur .. 's', amount)
    if cm < tonumber(amount) then redis.call('HSET', key, cur .. 'm', amount) end
    redis.call('PEXPIRE', key, int((keep + 1) * g))
  end
  return i + 4 + nw + nf
end

-- D: distinct values of a field (member = value, score = last time seen) and novelty.
-- tokens: field, value ('' when missing), retention, lookback, nw, w1..wn
local function op_distinct(prefix, a, i, dup)
  local value, retention, lookback, nw = a[i + 1], tonumber(a[i + 2]), tonumber(a[i + 3]), tonumber(a[i + 4])
  local key = prefix .. ':d:' .. a[i]
  if value == '' or lookback == 0 then
    push(-1)
  else
    local seen = redis.call('ZSCORE', key, value)
    if seen and tonumber(seen) >= t - lookback then push(0) else push(1) end
  end
  for k = 1, nw do push(redis.call('ZCOUNT', key, int(t - tonumber(a[i + 4 + k])), '+inf')) end
  if not dup and value ~= '' then
    redis.call('ZADD', key, 'GT', int(t), value)
    redis.call('ZREMRANGEBYSCORE', key, '-inf', '(' .. int(t - retention))
    redis.call('PEXPIRE', key, int(retention))
  end
  return i + 5 + nw
end

-- F: feedback events of one kind reported in each window. tokens: event, nw, w1..wn
local function op_feedback(prefix, a, i)
  local key, nw = prefix .. ':f:' .. a[i], tonumber(a[i + 1])
  for k = 1, nw do push(redis.call('ZCOUNT', key, int(t - tonumber(a[i + 1 + k])), '+inf')) end
  return i + 2 + nw
end

-- P: the entity's first and last payment times. tokens: ttl
local function op_profile(prefix, a, i, dup)
  local key = prefix .. ':p'
  local v = redis.call('HMGET', key, 'first', 'last')
  local first, last = tonumber(v[1]), tonumber(v[2])
  push(first or -1); push(last or -1)
  if not dup then
    if not first or t < first then redis.call('HSET', key, 'first', int(t)) end
    if not last or t > last then redis.call('HSET', key, 'last', int(t)) end
    redis.call('PEXPIRE', key, a[i])
  end
  return i + 1
end

local ops = { E = op_events, B = op_buckets, D = op_distinct, F = op_feedback, P = op_profile }

if mode == 'score' then
  local amount = ARGV[4]
  local pos = 5
  for b = 1, #KEYS do
    local prefix = KEYS[b]
    local stop = pos + tonumber(ARGV[pos])
    local dup = redis.call('ZSCORE', prefix .. ':ev', txid) ~= false
    push(dup and 1 or 0)
    local i = pos + 1
    while i <= stop do
      i = ops[ARGV[i]](prefix, ARGV, i + 1, dup, amount)
    end
    pos = stop + 1
  end
  return out
end

if mode == 'feedback' then
  -- tokens per block: retention, fraud_g (0: none), fraud_keep
  local event = ARGV[4]
  local pos = 5
  for b = 1, #KEYS do
    local prefix = KEYS[b]
    local retention, g, keep = tonumber(ARGV[pos + 1]), tonumber(ARGV[pos + 2]), tonumber(ARGV[pos + 3])
    local key = prefix .. ':f:' .. event
    local added = redis.call('ZADD', key, 'NX', int(t), txid)
    if added == 1 then
      redis.call('ZREMRANGEBYSCORE', key, '-inf', '(' .. int(t - retention))
      redis.call('PEXPIRE', key, int(retention))
      if event == 'fraud' and g > 0 then
        local bucket_key = prefix .. ':b:' .. int(g)
        local x = math.floor(t / g)
        redis.call('HINCRBY', bucket_key, int(x) .. ':f', 1)
        local pb = tonumber(redis.call('HGET', bucket_key, 'pb'))
        if pb and x < pb then redis.call('HDEL', bucket_key, 'pb') end
        if redis.call('PTTL', bucket_key) < 0 then redis.call('PEXPIRE', bucket_key, int((keep + 1) * g)) end
      end
    end
    push(added)
    pos = pos + 1 + tonumber(ARGV[pos])
  end
  return out
end

return redis.error_reply('unknown mode ' .. tostring(mode))
