"""The Lua scripts that write a namespace shard: each one atomic, one round trip.

They read records in the codec's format (see ``unistore._coretypes``) at its
fixed offsets, so a save keeps an upserted item's id and creation time and
unindexes what it replaces without a second round trip. Every key they touch
carries the shard's hash tag (:mod:`.layout`), so they run on Redis Cluster.
Times are microseconds; a record's are read as two 32-bit halves, exact in
Lua's doubles up to 2^53 µs (the year 2255).
"""

from __future__ import annotations

# What both scripts share: reading a record, and the index entries it has.
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
  return {created = int64(record, 33), expires = expires, content_type = content_type, tags = tags}
end

local function unindex(prefix, member, f)
  redis.call('SREM', prefix .. 'c:' .. f.content_type, member)
  for _, term in ipairs(f.tags) do redis.call('SREM', prefix .. 't:' .. term, member) end
  redis.call('ZREM', prefix .. 'created', member)
  redis.call('ZREM', prefix .. 'expires', member)
end

local function index(prefix, member, f)
  redis.call('SADD', prefix .. 'c:' .. f.content_type, member)
  for _, term in ipairs(f.tags) do redis.call('SADD', prefix .. 't:' .. term, member) end
  redis.call('ZADD', prefix .. 'created', f.created, member)
  if f.expires then redis.call('ZADD', prefix .. 'expires', f.expires, member) end
end

local function live(f, now) return f.expires == nil or f.expires > now end
"""

#: KEYS: the record key. ARGV: the new record, the item key, the shard prefix, now (µs).
#: Saves the record (with its expiry as PXAT), keeping the id and creation time of a
#: live record it replaces, and swaps the old index entries for the new; returns the
#: record as stored.
SAVE = (
    _RECORD
    + r"""
local record, member, prefix, now = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local old = redis.call('GET', KEYS[1])
if old then
  local before = fields(old)
  unindex(prefix, member, before)
  if live(before, now) then  -- the same item: its id, UUID and creation time stay
    record = string.sub(record, 1, 8) .. string.sub(old, 9, 40) .. string.sub(record, 41)
  end
end
local after = fields(record)
index(prefix, member, after)
if after.expires then
  redis.call('SET', KEYS[1], record, 'PXAT', math.max(math.ceil(after.expires / 1000), 1))
else
  redis.call('SET', KEYS[1], record)
end
return record
"""
)

#: KEYS: the record key. ARGV: the item key, the shard prefix, now (µs), the content
#: type that must match (empty: any). Deletes the record and its index entries;
#: returns 1 if a live item (of that content type) was removed, else 0. An expired
#: record met here is removed too.
DELETE = (
    _RECORD
    + r"""
local member, prefix, now, wanted = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local old = redis.call('GET', KEYS[1])
if not old then return 0 end
local f = fields(old)
if live(f, now) and wanted ~= '' and f.content_type ~= wanted then return 0 end
unindex(prefix, member, f)
redis.call('DEL', KEYS[1])
if live(f, now) then return 1 end
return 0
"""
)

__all__ = ["DELETE", "SAVE"]
