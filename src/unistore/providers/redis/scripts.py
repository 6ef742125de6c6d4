"""The Lua scripts that write a namespace shard: each one atomic, one round trip.

They read records in the codec's format (see ``unistore._coretypes``) at its
fixed offsets, so a save keeps an upserted item's id and creation time and
unindexes what it replaces without a second round trip. Every key they touch
carries the shard's hash tag (:mod:`.layout`), so they run on Redis Cluster.
Times are microseconds; a record's are read as two 32-bit halves, exact in
Lua's doubles up to 2^53 µs (the year 2255).
"""

from __future__ import annotations

# What every script shares: reading a record, and the index entries it has.
_RECORD = r"""
local function int64(s, at)  -- a little-endian signed 64-bit field at byte `at` (1-based)
  local low = struct.unpack('<I4', s, at)
  local high = struct.unpack('<i4', s, at + 4)
  return high * 4294967296 + low
end

local function fields(record)  -- what the index needs of a record
  local flags = string.byte(record, 2)
  local count = struct.unpack('<I4', record, 5)
  local key_len = struct.unpack('<I4', record, 57)
  local type_len = struct.unpack('<I4', record, 61)
  local at = 69 + key_len
  local content_type = string.sub(record, at, at + type_len - 1)
  at = at + type_len
  local tags = {}
  for i = 1, count do
    local tag_len = struct.unpack('<I4', record, at)
    local tag = string.sub(record, at + 4, at + 3 + tag_len)
    at = at + 4 + tag_len
    local value_len = struct.unpack('<I4', record, at)
    local value = string.sub(record, at + 4, at + 3 + value_len)
    at = at + 4 + value_len
    tags[i] = struct.pack('>I4', #tag) .. tag .. value  -- the index layer's tag term
  end
  local expires = nil
  if flags % 2 == 1 then expires = int64(record, 49) end
  return {created = int64(record, 33), expires = expires, content_type = content_type, tags = tags, payload_start = at}
end

-- A damaged record (one that does not parse): its posting sets cannot be known.
local DAMAGED = {damaged = true, tags = {}}

local function readable(record)  -- the fields of a record, or DAMAGED
  if #record < 68 or string.byte(record, 1) ~= 1 then return DAMAGED end
  local ok, f = pcall(fields, record)
  if ok then return f end
  return DAMAGED
end

local function unindex(prefix, member, f)  -- of a damaged record, what is keyed by its key alone
  if not f.damaged then redis.call('SREM', prefix .. 'c:' .. f.content_type, member) end
  for _, term in ipairs(f.tags) do redis.call('SREM', prefix .. 't:' .. term, member) end
  redis.call('ZREM', prefix .. 'created', member)
  redis.call('ZREM', prefix .. 'expires', member)
  redis.call('HDEL', prefix .. 'heads', member)
end

-- A record that expires also leaves its head (all but the payload) in the shard's
-- 'heads' hash, which has no TTL: once Redis has expired the record, purging still
-- knows which index entries were its.
local function index(prefix, member, f, record)
  redis.call('SADD', prefix .. 'c:' .. f.content_type, member)
  for _, term in ipairs(f.tags) do redis.call('SADD', prefix .. 't:' .. term, member) end
  redis.call('ZADD', prefix .. 'created', f.created, member)
  if f.expires then
    redis.call('ZADD', prefix .. 'expires', f.expires, member)
    redis.call('HSET', prefix .. 'heads', member, string.sub(record, 1, f.payload_start - 1))
  end
end

local function live(f, now) return f.expires == nil or f.expires > now end

-- The record under a key, and what the index holds for it: its fields, or, once
-- Redis has dropped an expired record, those of the head it left in 'heads'
-- (DAMAGED for one that does not parse: a save replaces it, a delete removes it).
local function held(prefix, record_key, member)
  local record = redis.call('GET', record_key)
  if record then return record, readable(record) end
  local head = redis.call('HGET', prefix .. 'heads', member)
  if head then return nil, readable(head) end
  return nil, nil
end
"""

# What SAVE and RESTORE share: writing records whole, one batch of a shard at a time.
_WRITE = r"""
-- KEYS: the record keys of the items. ARGV: the shard prefix, now (µs), then each
-- item's key and new record. Writes every record (with its expiry as PXAT) and swaps
-- the old index entries for the new; `keep`: a live record replaced keeps its id,
-- UUID and creation time. Returns the records as stored.
local function write(keep)
  local prefix, now = ARGV[1], tonumber(ARGV[2])
  -- Everything is read and checked first: Redis does not undo a script's writes when
  -- it fails, so a batch that cannot be written whole must fail before its first write.
  local plans, stored, seen = {}, {}, {}
  for i, record_key in ipairs(KEYS) do
    local member, record = ARGV[1 + 2 * i], ARGV[2 + 2 * i]
    if seen[record_key] then return redis.error_reply('a batch names one key twice') end
    seen[record_key] = true
    local old, before = held(prefix, record_key, member)
    if keep and old and not before.damaged and live(before, now) then  -- the same item: its id, UUID, creation time
      record = string.sub(record, 1, 8) .. string.sub(old, 9, 40) .. string.sub(record, 41)
    end
    plans[i] = {member = member, before = before, after = fields(record)}
    stored[i] = record
  end
  for i, record_key in ipairs(KEYS) do
    local plan = plans[i]
    if plan.before then unindex(prefix, plan.member, plan.before) end
    index(prefix, plan.member, plan.after, stored[i])
    if plan.after.expires then
      redis.call('SET', record_key, stored[i], 'PXAT', math.max(math.ceil(plan.after.expires / 1000), 1))
    else
      redis.call('SET', record_key, stored[i])
    end
  end
  return stored
end
"""

#: KEYS: the record keys of the items. ARGV: the shard prefix, now (µs), then each
#: item's key and new record. Saves every record, keeping the id and creation time
#: of a live record it replaces; returns the records as stored. One item is a save,
#: several are a shard's part of a ``save_many``: atomic either way.
SAVE = _RECORD + _WRITE + "return write(true)\n"

#: KEYS and ARGV as :data:`SAVE`'s. Writes every record as given (a migration's
#: ``restore_many``: id, UUID and times are the item's own), replacing what is
#: there, atomically; returns how many.
RESTORE = _RECORD + _WRITE + "return #write(false)\n"

#: KEYS: the record keys of the items. ARGV: the shard prefix, now (µs), the content
#: type that must match (empty: any), then each item's key and the record it must
#: still hold (empty: any). Deletes the records and their index entries; returns
#: how many live items were removed. An expired record met here is removed too.
DELETE = (
    _RECORD
    + r"""
local prefix, now, wanted = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local doomed, seen, removed = {}, {}, 0
for i, record_key in ipairs(KEYS) do  -- every record read and checked before the first write
  local member, expected = ARGV[2 + 2 * i], ARGV[3 + 2 * i]
  local old, f = nil, nil
  if not seen[record_key] then old, f = held(prefix, record_key, member) end
  seen[record_key] = true
  if f and (not old or not live(f, now)) then  -- nothing live: its leftovers go
    doomed[#doomed + 1] = {record_key = record_key, member = member, fields = f}
  elseif f and (f.damaged or wanted == '' or f.content_type == wanted) and (expected == '' or expected == old) then
    doomed[#doomed + 1] = {record_key = record_key, member = member, fields = f}
    removed = removed + 1
  end
end
for _, d in ipairs(doomed) do
  unindex(prefix, d.member, d.fields)
  redis.call('DEL', d.record_key)
end
return removed
"""
)

#: KEYS: the shard's expiry order. ARGV: the shard prefix, now (µs), how many at most.
#: Removes the index entries (and any record Redis has not dropped yet) of items
#: expired by now, oldest first; returns how many it met.
PURGE = (
    _RECORD
    + r"""
local prefix, now = ARGV[1], tonumber(ARGV[2])
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[3]))
for _, member in ipairs(due) do
  local record_key = prefix .. 'r:' .. member
  local record, f = held(prefix, record_key, member)
  if f == nil then
    redis.call('ZREM', KEYS[1], member)  -- an entry with nothing behind it
  elseif live(f, now) then  -- a live record under a stale entry: its own expiry, or none
    if f.expires then redis.call('ZADD', KEYS[1], f.expires, member) else redis.call('ZREM', KEYS[1], member) end
  else
    unindex(prefix, member, f)
    if record then redis.call('DEL', record_key) end
  end
end
return #due
"""
)

__all__ = ["DELETE", "PURGE", "RESTORE", "SAVE"]
