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
--
-- Keys of a block (prefix ":" part):
--   ev   ZSET txid -> time: the idempotency record, kept for the dedupe horizon (see S below).
--   s    STRING, a MessagePack array: the block's state, read with one GET and written with one
--        SET (which refreshes its TTL, the longest any part needs):
--          [1] the server time (ms) "ev" was last given its TTL,
--          [2] the payment time "ev" was last trimmed at,
--          [3] the events of the exact windows (E), or an empty array,
--          [3 + k] the buckets of the k-th bucketed granularity (B), in token order,
--          [3 + ngroups + k] the times of the feedback events of the k-th kind with windows (F).
--   f:<event>  ZSET txid -> time reported: the feedback events' idempotency record;
--   p    HASH first/last payment time (it lives longer than the rest: its own key);
--   d:<field>  ZSET value -> last time seen (only for an entity without exact windows).
-- Each part trims what fell out of its windows whenever it is written.

local mode = ARGV[1]
local txid = ARGV[2]
local t = tonumber(ARGV[3])
local out = {}
local nout = 0

local function int(x) return string.format('%d', x) end
local function push(v) nout = nout + 1; out[nout] = v end

-- Server time in ms, for TTL refreshes that are skipped while recent (read once, when needed).
local now_ms
local function now()
  if not now_ms then
    local tm = redis.call('TIME')
    now_ms = tonumber(tm[1]) * 1000 + math.floor(tonumber(tm[2]) / 1000)
  end
  return now_ms
end

-- A "slack" of a tenth of a TTL: a key whose TTL was set to ttl + slack less than slack ago still
-- has more than ttl to live, so its TTL need not be set again (nor its old entries trimmed) yet.
local function slack_of(ttl) return math.floor(ttl / 10) end

-- E: exact windows over the entity's events, and the distinct values of some of its fields.
-- tokens: nw, w1..wn (ascending), spread_k, retention, nd, then per distinct field:
--   value ('' when missing), lookback, nwd, wd1..wdn
-- state[3] is the stride (2 + nd), then per event, in arrival order, its time, amount and the nd
-- field values, kept for `retention` (the longest exact window, distinct window or look-back).
-- A field value's "last time seen" is the latest of its events: the distinct count of a window is
-- the number of values last seen inside it, and a value is new when not seen within the look-back.
-- The distinct aggregates are left in `folded[d]` for the Q op to push in their place.
local folded = {}
local function op_events(st, a, i, dup, amount)
  local nw = tonumber(a[i])
  local spread_k = tonumber(a[i + 1 + nw])
  local retention, nd = tonumber(a[i + 2 + nw]), tonumber(a[i + 3 + nw])
  local nexti = i + 4 + nw
  local stride = 2 + nd
  local fields, lasts = {}, {}
  for d = 1, nd do
    local nwd = tonumber(a[nexti + 2])
    local lows = {}
    for k = 1, nwd do lows[k] = t - tonumber(a[nexti + 2 + k]) end
    lasts[d] = {}
    fields[d] = { value = a[nexti], lookback = tonumber(a[nexti + 1]), lows = lows, last = lasts[d] }
    nexti = nexti + 3 + nwd
  end
  local lows = {}
  for k = 1, nw do lows[k] = t - tonumber(a[i + k]) end
  local v = st.s[3]
  if v[1] ~= stride then v = { stride } end  -- none yet, or written for another spec
  local n = #v
  -- each event goes to the smallest window that holds it (slab k0); windows are nested, so a
  -- window's totals are its slab's plus every smaller one's
  local counts, sums, maxs = {}, {}, {}
  for k = 1, nw do counts[k], sums[k], maxs[k] = 0, 0, -1 end
  local widest = lows[nw]
  for j = 2, n, stride do
    local tj = v[j]
    if tj >= widest then
      local k0 = nw
      while k0 > 1 and tj >= lows[k0 - 1] do k0 = k0 - 1 end
      local x = v[j + 1]
      counts[k0] = counts[k0] + 1
      sums[k0] = sums[k0] + x
      if x > maxs[k0] then maxs[k0] = x end
    end
    -- each field value's last time seen
    for d = 1, nd do
      local value = v[j + 1 + d]
      if value ~= '' then
        local last = lasts[d]
        local seen = last[value]
        if not seen or tj > seen then last[value] = tj end
      end
    end
  end
  for k = 2, nw do
    counts[k] = counts[k] + counts[k - 1]
    sums[k] = sums[k] + sums[k - 1]
    if maxs[k - 1] > maxs[k] then maxs[k] = maxs[k - 1] end
  end
  for k = 1, nw do push(counts[k]); push(sums[k]); push(maxs[k]) end
  if spread_k > 0 then
    -- two passes: the squared deviations from the mean, never sum(x^2) - sum^2/n, which cancels
    local m2 = 0
    if counts[spread_k] > 0 then
      local mean, low = sums[spread_k] / counts[spread_k], lows[spread_k]
      for j = 2, n, stride do
        if v[j] >= low then
          local dx = v[j + 1] - mean
          m2 = m2 + dx * dx
        end
      end
    end
    push(string.format('%.17g', m2))
  end
  for d = 1, nd do
    local f = fields[d]
    local r = {}
    if f.value == '' or f.lookback == 0 then
      r[1] = -1
    else
      local seen = f.last[f.value]
      r[1] = (seen and seen >= t - f.lookback) and 0 or 1
    end
    local flows = f.lows
    for k = 1, #flows do r[k + 1] = 0 end
    for _, seen in pairs(f.last) do
      for k = 1, #flows do
        if seen >= flows[k] then r[k + 1] = r[k + 1] + 1 end
      end
    end
    folded[d] = r
  end
  if not dup then
    -- keep what is still inside the retention, then this payment
    local oldest = t - retention
    if n > 1 and v[2] < oldest then
      local kept = { stride }
      for j = 2, n, stride do
        if v[j] >= oldest then
          for o = 0, stride - 1 do kept[#kept + 1] = v[j + o] end
        end
      end
      v, n = kept, #kept
    end
    v[n + 1] = t
    v[n + 2] = tonumber(amount)
    for d = 1, nd do v[n + 2 + d] = fields[d].value end
    st.s[3] = v
    if retention > st.ttl then st.ttl = retention end
  end
  return nexti
end

-- Q: the aggregates of distinct field d computed by E. tokens: d
local function op_folded(_, a, i)
  for _, x in ipairs(folded[tonumber(a[i])]) do push(x) end
  return i + 1
end

-- B: bucketed windows of one granularity g: state[3 + k] for the k-th B op of the block holds the
-- buckets that have data, five numbers each: bucket (floor(time / g)), count, sum, max, and the
-- frauds known among the bucket's payments (added by feedback as labels arrive). A window of nb buckets is the current bucket b and the nb - 1 before it; buckets after
-- b (written out of time order) are not in it. Recording drops buckets that fell out of every
-- window (<= b - keep).
-- A known-fraud window may be lagged: lag buckets before b, it covers buckets b - lag - nb + 1 to
-- b - lag (labels arrive late: the payments of a week ago are the ones whose labels are known).
-- tokens: g, keep, nw, nb1..nbn, nf, then per known-fraud window: lag, nb
local function op_buckets(st, a, i, dup, amount)
  local g, keep, nw = tonumber(a[i]), tonumber(a[i + 1]), tonumber(a[i + 2])
  local nf = tonumber(a[i + 3 + nw])
  local sizes, lags = {}, {}
  for k = 1, nw do sizes[k], lags[k] = tonumber(a[i + 2 + k]), 0 end
  for k = 1, nf do
    lags[nw + k], sizes[nw + k] = tonumber(a[i + 2 + nw + 2 * k]), tonumber(a[i + 3 + nw + 2 * k])
  end
  local nk = nw + nf
  st.group = st.group + 1
  local slot = 3 + st.group
  local b = math.floor(t / g)
  local v = st.s[slot] or {}
  local n = #v
  local c, s, m, f = {}, {}, {}, {}
  for k = 1, nk do c[k], s[k], m[k], f[k] = 0, 0, -1, 0 end
  local here, stale = nil, false
  for j = 1, n, 5 do
    local age = b - v[j]
    if age == 0 then here = j end
    if age >= 0 then
      for k = 1, nk do
        if age >= lags[k] and age < lags[k] + sizes[k] then
          c[k] = c[k] + v[j + 1]
          s[k] = s[k] + v[j + 2]
          if v[j + 3] > m[k] then m[k] = v[j + 3] end
          f[k] = f[k] + v[j + 4]
        end
      end
      if age >= keep then stale = true end
    end
  end
  for k = 1, nw do push(c[k]); push(s[k]); push(m[k]) end
  for k = nw + 1, nk do push(c[k]); push(f[k]) end
  if not dup then
    local x = tonumber(amount)
    if stale then
      local kept = {}
      for j = 1, n, 5 do
        if b - v[j] < keep then
          for o = 0, 4 do kept[#kept + 1] = v[j + o] end
        end
      end
      v, n, here = kept, #kept, nil
      for j = 1, n, 5 do if v[j] == b then here = j end end
    end
    if here then
      v[here + 1] = v[here + 1] + 1
      v[here + 2] = v[here + 2] + x
      if x > v[here + 3] then v[here + 3] = x end
    else
      v[n + 1], v[n + 2], v[n + 3], v[n + 4], v[n + 5] = b, 1, x, math.max(x, -1), 0
    end
    st.s[slot] = v
    local ttl = (keep + 1) * g
    if ttl > st.ttl then st.ttl = ttl end
  end
  return i + 4 + nw + 2 * nf
end

-- D: distinct values of a field (member = value, score = last time seen) and novelty, in a key of
-- their own (an entity with exact windows folds them into its events instead: see E and Q).
-- tokens: field, value ('' when missing), retention, lookback, nw, w1..wn
local function op_distinct(st, a, i, dup)
  local value, retention, lookback, nw = a[i + 1], tonumber(a[i + 2]), tonumber(a[i + 3]), tonumber(a[i + 4])
  local key = st.prefix .. ':d:' .. a[i]
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

-- F: feedback events of one kind reported in each window, from the k-th feedback list of the
-- state (times, written by the feedback mode). tokens: event, nw, w1..wn
local function op_feedback(st, a, i, dup)
  local nw = tonumber(a[i + 1])
  st.feed = st.feed + 1
  local slot = 3 + st.ngroups + st.feed
  local v = st.s[slot]
  local n = #v
  for k = 1, nw do
    local low, c = t - tonumber(a[i + 1 + k]), 0
    for j = 1, n do if v[j] >= low then c = c + 1 end end
    push(c)
  end
  if not dup and n > 0 then
    local retention = 0
    for k = 1, nw do retention = math.max(retention, tonumber(a[i + 1 + k])) end
    local oldest = t - retention
    local kept = {}
    for j = 1, n do if v[j] >= oldest then kept[#kept + 1] = v[j] end end
    st.s[slot] = kept
    if #kept > 0 and retention > st.ttl then st.ttl = retention end
  end
  return i + 2 + nw
end

-- P: the entity's first and last payment times, and when its TTL was last set. tokens: ttl
local function op_profile(st, a, i, dup)
  local key = st.prefix .. ':p'
  local v = redis.call('HMGET', key, 'first', 'last', 'r')
  local first, last = tonumber(v[1]), tonumber(v[2])
  push(first or -1); push(last or -1)
  if not dup then
    if not first or t < first then first = t end
    if not last or t > last then last = t end
    local ttl = tonumber(a[i])
    local slack = slack_of(ttl)
    if now() - (tonumber(v[3]) or 0) >= slack then
      redis.call('HSET', key, 'first', int(first), 'last', int(last), 'r', int(now()))
      redis.call('PEXPIRE', key, int(ttl + slack))
    else
      redis.call('HSET', key, 'first', int(first), 'last', int(last))
    end
  end
  return i + 1
end

local ops = { E = op_events, B = op_buckets, D = op_distinct, Q = op_folded, F = op_feedback, P = op_profile }

-- The block's state string, or a new one with `nslots` bucket and feedback lists.
local function load_state(key, nslots)
  local blob = redis.call('GET', key)
  local s = blob and cmsgpack.unpack(blob)
  if type(s) ~= 'table' or #s ~= 3 + nslots then
    s = { 0, 0, {} }
    for k = 1, nslots do s[3 + k] = {} end
  end
  return s, blob ~= false
end

if mode == 'score' then
  local amount = ARGV[4]
  local pos = 5
  for b = 1, #KEYS do
    local prefix = KEYS[b]
    local stop = pos + tonumber(ARGV[pos])
    -- S: tokens dedupe_retention, ngroups, nfeedback. The idempotency record first: whether this
    -- block has already recorded the payment. It holds the ids of the last dedupe_retention (+ slack).
    local dedupe, ngroups, nfeed = tonumber(ARGV[pos + 2]), tonumber(ARGV[pos + 3]), tonumber(ARGV[pos + 4])
    local ev = prefix .. ':ev'
    local dup = redis.call('ZADD', ev, 'NX', int(t), txid) == 0
    push(dup and 1 or 0)
    local skey = prefix .. ':s'
    local st = { prefix = prefix, ttl = 0, group = 0, feed = 0, ngroups = ngroups }
    st.s = load_state(skey, ngroups + nfeed)
    local i = pos + 5
    while i <= stop do
      i = ops[ARGV[i]](st, ARGV, i + 1, dup, amount)
    end
    if not dup then
      -- trimmed every slack of payment time, its TTL set again every slack of server time: it
      -- holds at most dedupe + slack of ids, and lives at least dedupe after its last write
      local slack = slack_of(dedupe)
      if t - st.s[2] >= slack or t < st.s[2] then
        redis.call('ZREMRANGEBYSCORE', ev, '-inf', '(' .. int(t - dedupe))
        st.s[2] = t
      end
      if now() - st.s[1] >= slack then
        redis.call('PEXPIRE', ev, int(dedupe + slack))
        st.s[1] = now()
      end
      -- the state outlives the record's TTL, so that a lapsed record is always given one again
      local ttl = math.max(st.ttl, dedupe + slack)
      redis.call('SET', skey, cmsgpack.pack(st.s), 'PX', int(ttl))
    end
    pos = stop + 1
  end
  return out
end

if mode == 'feedback' then
  -- tokens per block: retention, fraud_g (0: none), fraud_keep, the fraud granularity's position
  -- among the block's bucketed ones (0: none), the position of this event's list among the
  -- block's feedback lists (0: none), the numbers of bucketed granularities and feedback lists,
  -- the bucket of the payment this event is about (fraud_g's; 0: none)
  local event = ARGV[4]
  local pos = 5
  for b = 1, #KEYS do
    local prefix = KEYS[b]
    local retention, g, keep = tonumber(ARGV[pos + 1]), tonumber(ARGV[pos + 2]), tonumber(ARGV[pos + 3])
    local gidx, fidx = tonumber(ARGV[pos + 4]), tonumber(ARGV[pos + 5])
    local ngroups, nfeed = tonumber(ARGV[pos + 6]), tonumber(ARGV[pos + 7])
    local paid = tonumber(ARGV[pos + 8])
    local key = prefix .. ':f:' .. event
    local added = redis.call('ZADD', key, 'NX', int(t), txid)
    if added == 1 then
      redis.call('ZREMRANGEBYSCORE', key, '-inf', '(' .. int(t - retention))
      redis.call('PEXPIRE', key, int(retention))
      -- a known fraud counts only while its payment's bucket is still in some window
      local counted = gidx > 0 and math.floor(t / g) - paid < keep
      if counted or fidx > 0 then
        local skey = prefix .. ':s'
        local s = load_state(skey, ngroups + nfeed)
        local ttl = 0
        if fidx > 0 then
          -- this event's time, in the list the F op counts (old ones dropped)
          local v, kept = s[3 + ngroups + fidx], {}
          for j = 1, #v do if v[j] >= t - retention then kept[#kept + 1] = v[j] end end
          kept[#kept + 1] = t
          s[3 + ngroups + fidx] = kept
          ttl = retention
        end
        if counted then
          -- one more known fraud among the payments of the paid bucket (see op_buckets for the
          -- layout)
          local v = s[3 + gidx]
          local n, here = #v, nil
          for j = 1, n, 5 do if v[j] == paid then here = j end end
          if here then
            v[here + 4] = v[here + 4] + 1
          else
            v[n + 1], v[n + 2], v[n + 3], v[n + 4], v[n + 5] = paid, 0, 0, -1, 1
          end
          ttl = math.max(ttl, (keep + 1) * g)
        end
        if redis.call('PTTL', skey) >= ttl then
          redis.call('SET', skey, cmsgpack.pack(s), 'KEEPTTL')
        else
          redis.call('SET', skey, cmsgpack.pack(s), 'PX', int(ttl))
        end
      end
    end
    push(added)
    pos = pos + 1 + tonumber(ARGV[pos])
  end
  return out
end

return redis.error_reply('unknown mode ' .. tostring(mode))
