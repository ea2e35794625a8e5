-- One atomic round trip per entity shard: read every feature aggregate of a payment, then record it.
-- Generated arguments come from features/online.py (see features/plan.py for the layout).
--
-- KEYS[i]  the key prefix of entity block i, hash-tagged ("af:{card:..}") so that all the keys a
--          block derives from it live in one Redis Cluster slot.
-- ARGV     "score", tx, t_ms, amount_milli, then per block: ntokens, tokens...
--          "peek" (the same arguments): read exactly as "score" does, write nothing at all
--          "feedback", tx, event_ms, event, then per block: ntokens, tokens...
--          tx is the transaction id's 53-bit fingerprint (features/fingerprint.py), never the id.
-- Scores are event times in ms; amounts are integers in thousandths of the currency unit, so sums
-- are exact. Every read happens before the block records anything: the aggregates describe the
-- state before this payment. Dedupe is all or nothing within a call: when any block holds the
-- transaction's fingerprint already, no block records anything and every block answers "duplicate".
--
-- Time never runs backwards for an entity. Each block reads at its *effective time*
-- te = max(t, the latest payment time the block has recorded): a payment older than that (late,
-- or stamped by a slow clock) sees the entity's windows as they stand now, never a past the state
-- no longer holds, and nothing of the entity is trimmed relative to a time before its latest.
-- The payment itself is recorded at its own time t (a late payment counts in the windows its time
-- falls in, and a fraud label finds it in the bucket of its own time), unless t is older than every
-- window of the block (then only its transaction id is kept). The card profile returns its first
-- and last times clamped to t, so that seconds since the previous payment and the age derived from
-- them are never negative; its first time moves earlier for a late payment only when that payment
-- is within the dedupe horizon of the card's latest one (no stale stamp can age a card).
--
-- Keys of a block (prefix ":" part):
--   s    STRING, a MessagePack array of numbers (and [2]'s event names): the block's state, read
--        with one GET and written with one SET (which refreshes its TTL, the longest any part needs):
--          [1] the dedupe ring: fingerprint and effective time (s) of at least the last `ring`
--              transactions the block recorded within the dedupe horizon, in arrival order (S),
--          [2] the feedback rings: event name -> the same, of the last `ring` feedback transactions
--              of that kind, whatever their age (written by feedback mode),
--          [3] the head and tails of the exact windows (E), or an empty array,
--          [4] the capped set of each distinct or novelty field (D), in token order,
--          [4 + k] the buckets of the k-th bucketed granularity (B: closed and open parts), in token order,
--          [4 + ngroups + k] the times of the feedback events of the k-th kind with windows (F),
--          [5 + ngroups + nfeedback] the latest payment time the block recorded (absent in a
--          state only feedback has written so far).
--   p    HASH first/last payment time (it lives longer than the rest: its own key).
-- Each part trims what fell out of its windows whenever it is written. A state of the layouts before
-- (no rings, or no distinct sets) is taken over on the entity's next call: see `load_state`.
local mode = ARGV[1]
local t = tonumber(ARGV[3])
-- the effective time of the block being read (see the top of the file); set per block
local te = t
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

-- The fingerprint of a text: the first `bits` bits (28 < bits <= 53) of its SHA-1, as
-- features/fingerprint.py computes it. Used only to take over, once per entity, the transaction
-- ids and field values the layouts before kept as text: every other fingerprint comes from the client.
local function fingerprint(text, bits)
  local h = redis.sha1hex(text)
  return tonumber(string.sub(h, 1, 7), 16) * 2 ^ (bits - 28)
    + math.floor(tonumber(string.sub(h, 8, 14), 16) / 2 ^ (56 - bits))
end

-- An idempotency ZSET of the layout before the rings (txid -> time in ms) as a ring (see
-- `ring_add`): its last `cap` ids by time, oldest first.
local function ring_of_zset(key, cap)
  local got = redis.call('ZREVRANGE', key, 0, cap - 1, 'WITHSCORES')
  local ring = {}
  for j = #got - 1, 1, -2 do
    ring[#ring + 1] = fingerprint(got[j], 53)
    ring[#ring + 1] = math.floor(tonumber(got[j + 1]) / 1000)
  end
  return ring
end

-- E: exact windows: the entity's last `cap` payments one by one (the head) and, once the head
-- overflows, each window's tail: per-bucket partial sums of the payments that left the head.
-- tokens: layout, old_layout, nw, w1..wn (ascending), g1..gn (each window's tail granularity),
-- spread_k, cap, flat_layout, nm, m1..mm, mfp
-- state[3] = { layout, head, tail_1, .., tail_n }:
--   layout  a number naming the windows, tails and cap it was written for (another: started anew,
--           but for `old_layout`, the same windows as the layout before fingerprints wrote them,
--           which also kept each distinct field's values here: taken over, see op D; and for
--           `flat_layout`, the same windows without the folded entity: taken over, see below)
--   head    time, amount of each payment kept one by one, in arrival order: at most `cap`, none
--           older than the longest window; with folded windows (nm > 0) also the 32-bit fingerprint
--           of the folded entity's extra key field (mfp: the card's merchant; -1 when unknown)
--   tail_k  the buckets of window k that have data: bucket (floor(time / g_k)), count, sum, max,
--           and for the spread window the sum of squared deviations from the bucket's mean (m2)
-- A payment leaving the head (evicted by the cap, or older than the longest window) is added to the
-- bucket of its own time in each tail that still keeps that bucket (the current bucket and the
-- w_k / g_k - 1 before it). A window is read from the head alone while the head holds fewer than
-- `cap` of its payments (then it holds them all: exact); otherwise from the head plus the tail
-- buckets of the window (the rule bucketed windows have): the last `cap` payments exactly, older
-- ones in whole buckets, so it may miss payments of at most one bucket at its lower edge.
-- features/offline.py (`exact_start`) computes the same set: docs/features.md.
-- Folded windows m1..mm (an entity kept within this one: card x merchant in the card) count, sum and
-- take the maximum of the head's payments with fingerprint mfp inside each: exact while the entity
-- holds fewer than `cap` payments in the window, else among its last `cap` (`folded_start` offline).
-- A head of `flat_layout` (written before the fold) is taken over: its payments get the fingerprint
-- -1 (an unknown merchant: counted by the entity's windows, by no folded one) until they leave it.
-- Pushes each window's count, sum, max, then the spread window's m2, then each folded window's.
local function op_events(st, a, i, rec, amount)
  local layout, old_layout, nw = tonumber(a[i]), tonumber(a[i + 1]), tonumber(a[i + 2])
  i = i + 1
  local ws, gs, nbs, bs, lows, strides = {}, {}, {}, {}, {}, {}
  local spread_k, cap = tonumber(a[i + 2 + 2 * nw]), tonumber(a[i + 3 + 2 * nw])
  local flat_layout, nm = tonumber(a[i + 4 + 2 * nw]), tonumber(a[i + 5 + 2 * nw])
  local mlows = {}
  for k = 1, nm do mlows[k] = te - tonumber(a[i + 5 + 2 * nw + k]) end
  local mfp = tonumber(a[i + 6 + 2 * nw + nm]) or -1
  local hs = nm > 0 and 3 or 2
  for k = 1, nw do
    ws[k], gs[k] = tonumber(a[i + 1 + k]), tonumber(a[i + 1 + nw + k])
    nbs[k] = math.floor(ws[k] / gs[k])
    bs[k] = math.floor(te / gs[k])
    lows[k] = te - ws[k]
    strides[k] = (k == spread_k) and 5 or 4
  end
  -- a payment leaving the head, into the bucket of its time in every tail still keeping it
  local function fold(v, tj, x)
    for k = 1, nw do
      local bk = math.floor(tj / gs[k])
      local age = bs[k] - bk
      if age >= 0 and age < nbs[k] then
        local tail, stride = v[2 + k], strides[k]
        local here
        for j = 1, #tail, stride do
          if tail[j] == bk then here = j; break end
        end
        if here then
          local n, sum = tail[here + 1], tail[here + 2]
          if stride == 5 then
            -- Welford: the bucket's m2 with one more payment
            tail[here + 4] = tail[here + 4] + (x - sum / n) * (x - (sum + x) / (n + 1))
          end
          tail[here + 1], tail[here + 2] = n + 1, sum + x
          if x > tail[here + 3] then tail[here + 3] = x end
        else
          local m = #tail
          tail[m + 1], tail[m + 2], tail[m + 3], tail[m + 4] = bk, 1, x, x
          if stride == 5 then tail[m + 5] = 0 end
        end
      end
    end
  end
  local v = st.s[3]
  local flat = false
  if v[1] == old_layout then
    -- the layout before fingerprints: the same head and tails, then each distinct field's values
    -- (value, last seen, ...; { 0 } once spilled into the ZSET d:<field>), for op D to take over
    st.old_values = {}
    for k = 3 + nw, #v do st.old_values[#st.old_values + 1] = v[k] end
    for k = #v, 3 + nw, -1 do v[k] = nil end
    v[1], flat = layout, nm > 0
  elseif v[1] == flat_layout and nm > 0 then
    v[1], flat = layout, true
  elseif v[1] ~= layout then
    v = { layout, {} }
    for k = 1, nw do v[2 + k] = {} end
  end
  if flat then
    -- a head of (time, amount) pairs: its payments' fingerprints are unknown
    local old, wide = v[2], {}
    for j = 1, #old, 2 do
      local n = #wide
      wide[n + 1], wide[n + 2], wide[n + 3] = old[j], old[j + 1], -1
    end
    v[2] = wide
  end
  st.s[3] = v
  local head = v[2]
  local nh = #head
  -- each head payment goes to the smallest window that holds it (slab k0); windows are nested, so
  -- a window's totals are its slab's plus every smaller one's
  local counts, sums, maxs = {}, {}, {}
  for k = 1, nw do counts[k], sums[k], maxs[k] = 0, 0, -1 end
  local mcounts, msums, mmaxs = {}, {}, {}
  for k = 1, nm do mcounts[k], msums[k], mmaxs[k] = 0, 0, -1 end
  local widest = lows[nw]
  for j = 1, nh, hs do
    local tj = head[j]
    if tj >= widest then
      local k0 = nw
      while k0 > 1 and tj >= lows[k0 - 1] do k0 = k0 - 1 end
      local x = head[j + 1]
      counts[k0] = counts[k0] + 1
      sums[k0] = sums[k0] + x
      if x > maxs[k0] then maxs[k0] = x end
      if hs == 3 and head[j + 2] == mfp then
        for k = 1, nm do
          if tj >= mlows[k] then
            mcounts[k], msums[k] = mcounts[k] + 1, msums[k] + x
            if x > mmaxs[k] then mmaxs[k] = x end
          end
        end
      end
    end
  end
  for k = 2, nw do
    counts[k] = counts[k] + counts[k - 1]
    sums[k] = sums[k] + sums[k - 1]
    if maxs[k - 1] > maxs[k] then maxs[k] = maxs[k - 1] end
  end
  -- a window holding `cap` head payments may hold older ones: its tail buckets are added
  local tiled = {}
  for k = 1, nw do
    if counts[k] >= cap then
      tiled[k] = true
      local tail, stride, top = v[2 + k], strides[k], bs[k]
      local bottom = top - nbs[k] + 1
      for j = 1, #tail, stride do
        local bj = tail[j]
        if bj >= bottom and bj <= top then
          counts[k] = counts[k] + tail[j + 1]
          sums[k] = sums[k] + tail[j + 2]
          if tail[j + 3] > maxs[k] then maxs[k] = tail[j + 3] end
        end
      end
    end
  end
  for k = 1, nw do push(counts[k]); push(sums[k]); push(maxs[k]) end
  if spread_k > 0 then
    -- squared deviations from the window's mean: the head's in a second pass (never
    -- sum(x^2) - sum^2/n, which cancels), each tail bucket's merged by Chan's formula
    local m2, c = 0, counts[spread_k]
    if c > 0 then
      local mean, low = sums[spread_k] / c, lows[spread_k]
      for j = 1, nh, hs do
        if head[j] >= low then
          local dx = head[j + 1] - mean
          m2 = m2 + dx * dx
        end
      end
      if tiled[spread_k] then
        local tail, top = v[2 + spread_k], bs[spread_k]
        local bottom = top - nbs[spread_k] + 1
        for j = 1, #tail, 5 do
          local bj = tail[j]
          if bj >= bottom and bj <= top then
            local n = tail[j + 1]
            local dx = tail[j + 2] / n - mean
            m2 = m2 + tail[j + 4] + n * dx * dx
          end
        end
      end
    end
    push(string.format('%.17g', m2))
  end
  for k = 1, nm do push(mcounts[k]); push(msums[k]); push(mmaxs[k]) end
  if rec then
    -- tail buckets out of their window go
    for k = 1, nw do
      local tail, stride, bottom = v[2 + k], strides[k], bs[k] - nbs[k] + 1
      local stale = false
      for j = 1, #tail, stride do
        if tail[j] < bottom then stale = true; break end
      end
      if stale then
        local kept = {}
        for j = 1, #tail, stride do
          if tail[j] >= bottom then
            for o = 0, stride - 1 do kept[#kept + 1] = tail[j + o] end
          end
        end
        v[2 + k] = kept
      end
    end
    -- payments older than the longest window leave the head (into the tails: the lowest bucket of
    -- a window may still hold them). The head is in arrival order, which is time order but for
    -- late payments: the trim looks at the first and filters them all.
    local oldest = lows[nw]
    if nh > 0 and head[1] < oldest then
      local kept = {}
      for j = 1, nh, hs do
        if head[j] >= oldest then
          for o = 0, hs - 1 do kept[#kept + 1] = head[j + o] end
        else
          fold(v, head[j], head[j + 1])
        end
      end
      head, nh = kept, #kept
    end
    -- this payment, at its own time (unless it is already outside every window: a late payment is
    -- then left out); past the cap, the first arrival leaves the head
    if t >= oldest then
      if nh >= hs * cap then
        fold(v, head[1], head[2])
        for _ = 1, hs do table.remove(head, 1) end
        nh = nh - hs
      end
      head[nh + 1], head[nh + 2] = t, tonumber(amount)
      if hs == 3 then head[nh + 3] = mfp end
    end
    v[2] = head
    st.s[3] = v
    if ws[nw] > st.ttl then st.ttl = ws[nw] end
  end
  return i + 7 + 2 * nw + nm
end

-- B: bucketed windows of one granularity g: the k-th B op of the block reads state[4 + k]. Its
-- buckets are those that have data, five numbers each: bucket (floor(time / g)), count, sum, max,
-- and the frauds known among the bucket's payments (added by feedback as labels arrive). A window of
-- nb buckets is the current bucket b and the nb - 1 before it; buckets after b (written by a fraud
-- label ahead of its payment) are not in it. b is the bucket of the effective time; the payment is
-- counted in the bucket of its own time (the one a fraud label about it names), unless that bucket
-- is already out of every window. Recording drops buckets that fell out of every window (<= b - keep).
-- A known-fraud window may be lagged: lag buckets before b, it covers buckets b - lag - nb + 1 to
-- b - lag (labels arrive late: the payments of a week ago are the ones whose labels are known).
-- state[4 + k] = { closed, b0, layout, sums, open }: the buckets before b0 ("closed": a MessagePack
-- string, decoded only when b0 is no longer the current bucket), the bucket the state was written
-- at, a number naming the windows (`layout`: sums written for other windows are not read), each
-- window's count, sum, max and frauds over the closed buckets as read at b0 (`sums`), and the
-- buckets from b0 on (`open`, usually b0's alone). While the current bucket is b0, a call decodes
-- and encodes a handful of numbers instead of every bucket (a merchant's 30 daily buckets: 150) and
-- reads each window from its sums and b0's bucket. A new bucket, a late payment into a closed one
-- or a fraud label about a closed bucket (feedback mode: `sums` marked stale by b0 = -1) reads every
-- bucket, as the layout before did (a plain list of buckets: taken over), and writes the parts anew.
-- tokens: g, keep, nw, nb1..nbn, nf, then per known-fraud window: lag, nb; then layout
local function op_buckets(st, a, i, rec, amount)
  local g, keep, nw = tonumber(a[i]), tonumber(a[i + 1]), tonumber(a[i + 2])
  local nf = tonumber(a[i + 3 + nw])
  local layout = tonumber(a[i + 4 + nw + 2 * nf])
  local nk = nw + nf
  st.group = st.group + 1
  local slot = 4 + st.group
  local b, own = math.floor(te / g), math.floor(t / g)
  local v = st.s[slot] or {}
  local ttl = (keep + 1) * g
  if rec and ttl > st.ttl then st.ttl = ttl end
  if type(v[1]) == 'string' and v[2] == b and v[3] == layout and not (rec and own < b) then
    -- the current bucket is b0: each window is its closed sums plus b0's bucket (lag 0 only)
    local sums, open = v[4], v[5]
    local here
    for j = 1, #open, 5 do if open[j] == b then here = j end end
    for k = 1, nk do
      local o = 4 * k - 4
      local c, s, m, f = sums[o + 1], sums[o + 2], sums[o + 3], sums[o + 4]
      if here and (k <= nw or a[i + 2 + nw + 2 * (k - nw)] == '0') then
        c, s, f = c + open[here + 1], s + open[here + 2], f + open[here + 4]
        if open[here + 3] > m then m = open[here + 3] end
      end
      if k <= nw then push(c); push(s); push(m) else push(c); push(f) end
    end
    if rec then
      local x = tonumber(amount)
      if here then
        open[here + 1], open[here + 2] = open[here + 1] + 1, open[here + 2] + x
        if x > open[here + 3] then open[here + 3] = x end
      else
        local n = #open
        open[n + 1], open[n + 2], open[n + 3], open[n + 4], open[n + 5] = b, 1, x, math.max(x, -1), 0
      end
    end
    return i + 5 + nw + 2 * nf
  end
  local sizes, lags = {}, {}
  for k = 1, nw do sizes[k], lags[k] = tonumber(a[i + 2 + k]), 0 end
  for k = 1, nf do
    lags[nw + k], sizes[nw + k] = tonumber(a[i + 2 + nw + 2 * k]), tonumber(a[i + 3 + nw + 2 * k])
  end
  -- every bucket: the closed ones and the open ones (or a list of the layout before)
  if type(v[1]) == 'string' then
    local all = cmsgpack.unpack(v[1])
    local n, open = #all, v[5]
    for j = 1, #open do all[n + j] = open[j] end
    v = all
  end
  local n = #v
  -- Each window is a run of bucket ages [lag, lag + nb). The window edges and age 1 cut the ages
  -- 0..keep - 1 into slabs (slab 1: age 0, the current bucket); each bucket is added to its slab
  -- once and a window sums its slabs (a loop over buckets x windows cost ~90 ns per pair).
  local edge = { [1] = true }
  for k = 1, nk do edge[lags[k]] = true; edge[lags[k] + sizes[k]] = true end
  local slab_of, ns = { [0] = 1 }, 1
  for age = 1, keep - 1 do
    if edge[age] then ns = ns + 1 end
    slab_of[age] = ns
  end
  local sc, ss, sm, sf = {}, {}, {}, {}
  for z = 1, ns do sc[z], ss[z], sm[z], sf[z] = 0, 0, -1, 0 end
  local here
  for j = 1, n, 5 do
    local bj = v[j]
    if bj == own then here = j end
    -- (a bucket past every window, age >= keep, has no slab: left out, and out of the parts below)
    local z = bj <= b and slab_of[b - bj]
    if z then
      sc[z], ss[z], sf[z] = sc[z] + v[j + 1], ss[z] + v[j + 2], sf[z] + v[j + 4]
      if v[j + 3] > sm[z] then sm[z] = v[j + 3] end
    end
  end
  -- window k's slabs, from the first (at age lag; `from` at least) to the one before age lag + nb
  local function window(k, from)
    local c, s, m, f = 0, 0, -1, 0
    local last = slab_of[lags[k] + sizes[k]]
    last = last and last - 1 or ns
    for z = math.max(slab_of[lags[k]], from), last do
      c, s, f = c + sc[z], s + ss[z], f + sf[z]
      if sm[z] > m then m = sm[z] end
    end
    return c, s, m, f
  end
  for k = 1, nk do
    local c, s, m, f = window(k, 1)
    if k <= nw then push(c); push(s); push(m) else push(c); push(f) end
  end
  if not rec then return i + 5 + nw + 2 * nf end
  local x = tonumber(amount)
  -- (a late payment whose bucket is already out of every window is not counted anywhere)
  if b - own < keep then
    if here then
      v[here + 1], v[here + 2] = v[here + 1] + 1, v[here + 2] + x
      if x > v[here + 3] then v[here + 3] = x end
    else
      v[n + 1], v[n + 2], v[n + 3], v[n + 4], v[n + 5] = own, 1, x, math.max(x, -1), 0
      n = n + 5
    end
    if own < b then
      -- a late payment into a closed bucket: in its slab too, for the closed sums below
      local z = slab_of[b - own]
      sc[z], ss[z] = sc[z] + 1, ss[z] + x
      if x > sm[z] then sm[z] = x end
    end
  end
  -- the parts anew at b: closed buckets still in some window, the open ones, the closed sums
  local closed, open, nc, no = {}, {}, 0, 0
  for j = 1, n, 5 do
    local bj = v[j]
    if bj >= b then
      open[no + 1], open[no + 2], open[no + 3], open[no + 4], open[no + 5] = bj, v[j + 1], v[j + 2], v[j + 3], v[j + 4]
      no = no + 5
    elseif b - bj < keep then
      closed[nc + 1], closed[nc + 2], closed[nc + 3], closed[nc + 4], closed[nc + 5] = bj, v[j + 1], v[j + 2], v[j + 3], v[j + 4]
      nc = nc + 5
    end
  end
  local sums = {}
  for k = 1, nk do
    local o = 4 * k - 4
    sums[o + 1], sums[o + 2], sums[o + 3], sums[o + 4] = window(k, 2)
  end
  st.s[slot] = { cmsgpack.pack(closed), b, layout, sums, open }
  return i + 5 + nw + 2 * nf
end

-- The values of a distinct field as the layout before fingerprints kept them, as a capped set (op
-- D): op E's list (value, last seen, ...) or, once spilled and on an entity without exact windows,
-- the ZSET d:<field> (deleted when the state is written). Its `cap` values seen most recently
-- within the retention, by fingerprint (the later time when two values share one).
local function take_over_values(st, field, retention, cap)
  local list = st.old_values and st.old_values[st.distinct]
  if not list or list[1] == 0 then
    local key = st.prefix .. ':d:' .. field
    list = redis.call('ZREVRANGEBYSCORE', key, '+inf', int(te - retention), 'WITHSCORES', 'LIMIT', 0, cap)
    st.zsets[#st.zsets + 1] = key
  end
  local last_of, order = {}, {}
  for j = 1, #list, 2 do
    local fp, seen = fingerprint(list[j], 32), tonumber(list[j + 1])
    if not last_of[fp] then
      order[#order + 1] = fp
      last_of[fp] = seen
    elseif seen > last_of[fp] then
      last_of[fp] = seen
    end
  end
  table.sort(order, function(x, y) return last_of[x] < last_of[y] end)
  local set = {}
  for j = math.max(1, #order - cap + 1), #order do
    set[#set + 1] = order[j]; set[#set + 1] = last_of[order[j]]
  end
  return set
end

-- D: distinct values of a field and novelty, from a capped set: state[4][d] for the d-th D op holds
-- (fingerprint, last time seen) of the `cap` values of the field seen most recently, in the order
-- they were last seen (a 32-bit fingerprint the client computes: features/fingerprint.py). The
-- count of a window is the number of values last seen inside it: min(exact, cap), since only the
-- least recently seen value is ever evicted; a value is new unless it is in the set and was seen
-- within the look-back. Recording moves the value to the end with the later of its times, drops
-- values last seen before te - retention and, past `cap`, the one seen least recently (ties: the
-- first in the set). features/offline.py computes the same (`_DistinctInRanges`).
-- tokens: field, value ('' when missing), retention, lookback, cap, nw, w1..wn
local function op_distinct(st, a, i, rec)
  local value, retention, lookback = tonumber(a[i + 1]), tonumber(a[i + 2]), tonumber(a[i + 3])
  local cap, nw = tonumber(a[i + 4]), tonumber(a[i + 5])
  st.distinct = st.distinct + 1
  local sets = st.s[4]
  local set = sets[st.distinct]
  if not set then set = st.legacy and take_over_values(st, a[i], retention, cap) or {} end
  local n, here = #set, nil
  if value then
    for j = 1, n, 2 do
      if set[j] == value then here = j; break end
    end
  end
  if not value or lookback == 0 then
    push(-1)
  else
    push((here and set[here + 1] >= te - lookback) and 0 or 1)
  end
  local oldest = te - retention
  local counts, lows, stale = {}, {}, false
  for k = 1, nw do counts[k], lows[k] = 0, te - tonumber(a[i + 5 + k]) end
  for j = 2, n, 2 do
    local last = set[j]
    for k = 1, nw do
      if last >= lows[k] then counts[k] = counts[k] + 1 end
    end
    if last < oldest then stale = true end
  end
  for k = 1, nw do push(counts[k]) end
  if rec then
    -- in place (a hot entity's set is full: no copy per payment)
    local last = t
    if here then
      if set[here + 1] > t then last = set[here + 1] end
      table.remove(set, here)
      table.remove(set, here)
    end
    if value and last >= oldest then set[#set + 1] = value; set[#set + 1] = last end
    if stale then
      local kept = {}
      for j = 1, #set, 2 do
        if set[j + 1] >= oldest then kept[#kept + 1] = set[j]; kept[#kept + 1] = set[j + 1] end
      end
      set = kept
    end
    if #set > 2 * cap then
      -- the value seen least recently leaves (one at most: one was added)
      local least = 2
      for j = 4, #set, 2 do
        if set[j] < set[least] then least = j end
      end
      table.remove(set, least)
      table.remove(set, least - 1)
    end
    sets[st.distinct] = set
    if retention > st.ttl then st.ttl = retention end
  end
  return i + 6 + nw
end

-- F: feedback events of one kind reported in each window, from the k-th feedback list of the
-- state (times, written by the feedback mode). Only events reported before the effective time
-- count: one stamped later (a bad clock) waits for its time. tokens: event, nw, w1..wn
local function op_feedback(st, a, i, rec)
  local nw = tonumber(a[i + 1])
  st.feed = st.feed + 1
  local slot = 4 + st.ngroups + st.feed
  local v = st.s[slot]
  local n = #v
  for k = 1, nw do
    local low, c = te - tonumber(a[i + 1 + k]), 0
    for j = 1, n do
      local x = v[j]
      if x >= low and x < te then c = c + 1 end
    end
    push(c)
  end
  if rec and n > 0 then
    local retention = 0
    for k = 1, nw do retention = math.max(retention, tonumber(a[i + 1 + k])) end
    local oldest = te - retention
    local kept = {}
    for j = 1, n do if v[j] >= oldest then kept[#kept + 1] = v[j] end end
    st.s[slot] = kept
    if #kept > 0 and retention > st.ttl then st.ttl = retention end
  end
  return i + 2 + nw
end

-- P: the entity's first and last payment times, and when its TTL was last set.
-- tokens: ttl, late (the spec's dedupe horizon)
-- Both are returned clamped to t: a late payment is 0 s after the previous one, and as old as the
-- entity was at its own time (0 before its first payment). The first time moves earlier only for
-- a payment at most `late` before the latest one, so it never goes more than `late` before the
-- entity's first payment in arrival order: no stale stamp can age an entity.
local function op_profile(st, a, i, rec)
  local key = st.prefix .. ':p'
  local v = redis.call('HMGET', key, 'first', 'last', 'r')
  local first, last = tonumber(v[1]), tonumber(v[2])
  push(first and math.min(first, t) or -1); push(last and math.min(last, t) or -1)
  if rec then
    if not first or (t < first and t >= last - tonumber(a[i + 1])) then first = t end
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
  return i + 2
end

local ops = { E = op_events, B = op_buckets, D = op_distinct, F = op_feedback, P = op_profile }

local function ring_has(ring, fp)
  for j = 1, #ring, 2 do
    if ring[j] == fp then return true end
  end
  return false
end

-- A ring (fingerprint, time in seconds, ... in arrival order) with one more entry, at time `at`
-- (ms). It holds at least the last `cap` entries from `oldest` (ms; nil: no bound) on: when it
-- holds a quarter more than `cap`, or its first entry is older, it keeps only the entries from
-- `oldest` on and of those the last cap - 1 (so that a hot entity's ring is rebuilt once per
-- cap / 4 payments, not at every one; seconds: 5 bytes of MessagePack where ms take 9).
local function ring_add(ring, fp, at, oldest, cap)
  local n = #ring
  local from = oldest and math.floor(oldest / 1000)
  if n >= 2 * (cap + math.max(1, math.floor(cap / 4))) or (n > 0 and from and ring[2] < from) then
    local kept = {}
    for j = 1, n, 2 do
      if not from or ring[j + 1] >= from then kept[#kept + 1] = ring[j]; kept[#kept + 1] = ring[j + 1] end
    end
    local over = #kept - 2 * (cap - 1)
    if over > 0 then
      local last = {}
      for j = over + 1, #kept do last[j - over] = kept[j] end
      kept = last
    end
    ring, n = kept, #kept
  end
  ring[n + 1], ring[n + 2] = fp, math.floor(at / 1000)
  return ring
end

-- The block's state, or a new one with `nslots` bucket and feedback lists; the latest payment time
-- it recorded (nil: none yet); and whether it was written by the layout before the rings (its
-- dedupe record then was the ZSET `ev`: read into the ring here, deleted when the state is written).
-- A state of the layout before fingerprints (no distinct sets: the list [4] missing) gets `false`
-- there: op D takes its values over on the entity's next payment (feedback mode keeps the `false`).
local function load_state(prefix, nslots, cap)
  local blob = redis.call('GET', prefix .. ':s')
  local s = blob and cmsgpack.unpack(blob)
  local n = type(s) == 'table' and #s or 0
  -- written for this spec: its lists, then the latest payment time (or none yet)
  local latest = n > 0 and type(s[n]) == 'number'
  if n == (latest and 5 or 4) + nslots then return s, s[5 + nslots], false end
  if n > 0 and n == (latest and 4 or 3) + nslots then
    table.insert(s, 4, false)
    local rings = type(s[1]) == 'table'
    if not rings then s[1], s[2] = ring_of_zset(prefix .. ':ev', cap), {} end
    return s, s[5 + nslots], not rings
  end
  s = { {}, {}, {}, {} }
  for k = 1, nslots do s[4 + k] = {} end
  return s, nil, false
end

if mode == 'score' or mode == 'peek' then
  local record = mode == 'score'
  local tx, amount = tonumber(ARGV[2]), ARGV[4]
  -- First every block's state, then the reads and writes: whether the payment is a duplicate is
  -- known for all blocks before any of them records anything.
  -- S tokens: horizon, ring, ngroups, nfeedback: the ring keeps the fingerprints of the last `ring`
  -- payments the block recorded within `horizon` (the dedupe horizon) of effective time.
  -- per block (plain arrays: no table per block): ARGV position, state, effective time, whether
  -- the state is of the layout before the rings, number of lists in the state
  local bpos, bstate, bte, blegacy, bslots = {}, {}, {}, {}, {}
  local dup = false
  local pos = 5
  for b = 1, #KEYS do
    local nslots = tonumber(ARGV[pos + 4]) + tonumber(ARGV[pos + 5])
    local s, latest, legacy = load_state(KEYS[b], nslots, tonumber(ARGV[pos + 3]))
    if not dup and ring_has(s[1], tx) then dup = true end
    bpos[b], bstate[b], blegacy[b], bslots[b] = pos, s, legacy, nslots
    bte[b] = (latest and latest > t) and latest or t
    pos = pos + 1 + tonumber(ARGV[pos])
  end
  local rec = record and not dup
  for b = 1, #KEYS do
    local prefix, p = KEYS[b], bpos[b]
    local stop = p + tonumber(ARGV[p])
    local horizon, cap, ngroups = tonumber(ARGV[p + 2]), tonumber(ARGV[p + 3]), tonumber(ARGV[p + 4])
    te = bte[b]
    push(dup and 1 or 0)
    -- the state lives at least the horizon after its last write (its ring must)
    local st = {
      prefix = prefix, ttl = horizon, group = 0, feed = 0, distinct = 0, ngroups = ngroups, s = bstate[b],
      legacy = not bstate[b][4], zsets = {},
    }
    if st.legacy then st.s[4] = {} end
    local i = p + 6
    while i <= stop do
      i = ops[ARGV[i]](st, ARGV, i + 1, rec, amount)
    end
    if rec then
      st.s[1] = ring_add(st.s[1], tx, te, te - horizon, cap)
      st.s[5 + bslots[b]] = te
      redis.call('SET', prefix .. ':s', cmsgpack.pack(st.s), 'PX', int(st.ttl))
      if blegacy[b] then redis.call('DEL', prefix .. ':ev') end
      for _, key in ipairs(st.zsets) do redis.call('DEL', key) end
    end
  end
  return out
end

if mode == 'feedback' then
  -- tokens per block: retention, ring, kept (how many times of this kind the list keeps at most),
  -- fraud_g (0: none), fraud_keep, the fraud granularity's
  -- position among the block's bucketed ones (0: none), the position of this event's list among
  -- the block's feedback lists (0: none), the numbers of bucketed granularities and feedback lists,
  -- the bucket of the payment this event is about (fraud_g's; 0: none).
  -- All or nothing like payments: when any block's ring of this event holds the transaction, no
  -- block records anything and every block answers 0.
  local tx, event = tonumber(ARGV[2]), ARGV[4]
  local bpos, bstate, blatest, blegacy, bzset = {}, {}, {}, {}, {}
  local dup = false
  local pos = 5
  for b = 1, #KEYS do
    local prefix, cap = KEYS[b], tonumber(ARGV[pos + 2])
    local s, latest, legacy = load_state(prefix, tonumber(ARGV[pos + 8]) + tonumber(ARGV[pos + 9]), cap)
    if not s[2][event] then
      -- the first event of this kind in this state: the layout before the rings kept its ids in
      -- the ZSET `f:<event>` (taken over, deleted when the state is written)
      s[2][event] = ring_of_zset(prefix .. ':f:' .. event, cap)
      bzset[b] = #s[2][event] > 0
    end
    if not dup and ring_has(s[2][event], tx) then dup = true end
    bpos[b], bstate[b], blatest[b], blegacy[b] = pos, s, latest, legacy
    pos = pos + 1 + tonumber(ARGV[pos])
  end
  for b = 1, #KEYS do
    local prefix, p, s, latest = KEYS[b], bpos[b], bstate[b], blatest[b]
    if not dup then
      local retention, cap, most = tonumber(ARGV[p + 1]), tonumber(ARGV[p + 2]), tonumber(ARGV[p + 3])
      local g, keep = tonumber(ARGV[p + 4]), tonumber(ARGV[p + 5])
      local gidx, fidx = tonumber(ARGV[p + 6]), tonumber(ARGV[p + 7])
      local ngroups, paid = tonumber(ARGV[p + 8]), tonumber(ARGV[p + 10])
      -- The event's effective time is never before the entity's latest payment (a late report, or
      -- one stamped by a bad clock, is listed as a timely one), and nothing is trimmed relative to a
      -- time after that latest payment: an event stamped in the future drops no other. Without a
      -- payment recorded yet, nothing is trimmed (TTLs bound it).
      local fte = (latest and latest > t) and latest or t
      local oldest = latest and latest - retention
      -- The ring keeps the last `cap` ids of the kind whatever their age: a report sent again long
      -- after the first (whose time may have been too old to count) must not count then.
      s[2][event] = ring_add(s[2][event], tx, fte, nil, cap)
      local ttl = retention
      if fidx > 0 then
        -- this event's time, in the list the F op counts (old ones dropped, and past `most` times
        -- the first arrivals: a window counts min(exact, most) in time order)
        local v, kept = s[4 + ngroups + fidx], {}
        for j = 1, #v do if not oldest or v[j] >= oldest then kept[#kept + 1] = v[j] end end
        if not oldest or t >= oldest then kept[#kept + 1] = t end
        local over = #kept - most
        if over > 0 then
          local last = {}
          for j = over + 1, #kept do last[j - over] = kept[j] end
          kept = last
        end
        s[4 + ngroups + fidx] = kept
      end
      -- a known fraud counts only while its payment's bucket is still in some window: one more
      -- known fraud among the payments of the paid bucket (see op_buckets for the layout)
      if gidx > 0 and math.floor(fte / g) - paid < keep then
        local v = s[4 + gidx]
        if type(v[1]) == 'string' then
          -- op B's parts: a bucket from b0 on is an open one (the closed sums stand); a closed
          -- one is counted among every bucket, kept open until the next payment writes the parts
          -- anew (b0 = -1: the sums are no longer read)
          if v[2] >= 0 and paid >= v[2] then
            v = v[5]
          else
            local all, open = cmsgpack.unpack(v[1]), v[5]
            local m = #all
            for j = 1, #open do all[m + j] = open[j] end
            s[4 + gidx] = { cmsgpack.pack({}), -1, v[3], {}, all }
            v = all
          end
        end
        local n, here = #v, nil
        for j = 1, n, 5 do if v[j] == paid then here = j end end
        if here then
          v[here + 4] = v[here + 4] + 1
        else
          v[n + 1], v[n + 2], v[n + 3], v[n + 4], v[n + 5] = paid, 0, 0, -1, 1
        end
        ttl = math.max(ttl, (keep + 1) * g)
      end
      local skey = prefix .. ':s'
      if redis.call('PTTL', skey) >= ttl then
        redis.call('SET', skey, cmsgpack.pack(s), 'KEEPTTL')
      else
        redis.call('SET', skey, cmsgpack.pack(s), 'PX', int(ttl))
      end
      if blegacy[b] then redis.call('DEL', prefix .. ':ev') end
      if bzset[b] then redis.call('DEL', prefix .. ':f:' .. event) end
    end
    push(dup and 0 or 1)
  end
  return out
end

return redis.error_reply('unknown mode ' .. tostring(mode))
