"""The Lua scripts that write a namespace shard: each one atomic, each with every key it
reads or writes declared in its KEYS; and the one that reads a time order from a position
(:data:`WALK`, read-only).

Declared keys are what let Redis Cluster move a shard while it is written: a script whose
keys are all declared is routed, redirected (``ASK``) and held back (``TRYAGAIN``, while a
migration has split its keys) as a whole, and never runs half on one node. A write learns
some of its keys only when it reads the record it replaces (an upsert's old tags, a delete's
content type): when one of those is not declared, the script writes nothing and answers
``{"NEED", key...}``; the client runs it again with them declared. A save of a new key or an
upsert with unchanged tags is one round trip.

Each script reads everything first and then writes each key at most once per kind of
change, adding before removing: a key that a removal empties (Redis deletes an empty set)
is never touched again in that script. On a node migrating the shard's slot, touching a
key that is gone would end the script half done.

Replies are tables whose first element says what happened: ``OK`` (then the results),
``NEED`` (then the keys to declare), ``MARKER`` (the shard's marker is missing: the client
checks the namespace's shard count, then runs the script again saying so) or ``SHARDS``
(then the shard count recorded, which is not the caller's).

The record format is the codec's (``unistore._coretypes``); its fixed header is read at
fixed offsets. Times are microseconds, read as two 32-bit halves, exact in Lua's doubles
up to 2^53 µs (the year 2255). The scripts carry Redis 7 flags (``#!lua``): a write is
refused before it begins on a read-only replica or, for saves, on a server at
``maxmemory``; deletes and purges run at ``maxmemory`` too (``allow-oom``), so memory can be
freed.

Counted deletes are idempotent: each run carries a token, and the count it answered is
kept under the shard's ``done:<token>`` key for a minute, so a run that the client sends
again (its connection lost before the answer came) answers the same count, not zero.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

#: How long a counted delete's answer is kept for a retry of the same run, in ms.
TOKEN_TTL_MS = 60_000

# What every script shares: reading a record, and the index keys it has.
_RECORD = r"""
local function int64(s, at)  -- a little-endian signed 64-bit field at byte `at` (1-based)
  local low = struct.unpack('<I4', s, at)
  local high = struct.unpack('<i4', s, at + 4)
  return high * 4294967296 + low
end

local function fields(record)  -- what the index holds of a record
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

-- A damaged record (one that does not parse): its posting sets cannot be known.
local DAMAGED = {damaged = true, tags = {}}

local function readable(record)  -- the fields of a record, or DAMAGED
  if #record < 68 or string.byte(record, 1) ~= 1 then return DAMAGED end
  local ok, f = pcall(fields, record)
  if ok then return f end
  return DAMAGED
end

local function live(f, now) return f.expires == nil or f.expires > now end

-- The posting sets (as Redis keys) a record's fields put its key in.
local function postings(prefix, f)
  local keys = {}
  if f.damaged then return keys end
  keys[1] = prefix .. 'c:' .. f.content_type
  for _, term in ipairs(f.tags) do keys[#keys + 1] = prefix .. 't:' .. term end
  return keys
end

-- The record under a key, and what the index holds for it: its fields, or, once
-- Redis has dropped an expired record, those of the head it left in 'heads' (a
-- record that expires leaves its head, all but the payload, in the shard's 'heads'
-- hash, which has no TTL, so that purging knows which entries were its).
local function held(heads_key, record_key, member)
  local record = redis.call('GET', record_key)
  if record then return record, readable(record) end
  local head = redis.call('HGET', heads_key, member)
  if head then return nil, readable(head) end
  return nil, nil
end

-- ARGV[1] of every script: '1' on a cluster, where every key must be declared (a key a
-- record names that is not is asked for: NEED); '0' on one server, which routes nothing,
-- and on a cluster once the shard's probe key (which never exists) is declared: Redis then
-- runs the script only while its slot is not migrating, so the keys it learns are safe.
local STRICT = ARGV[1] == '1'

-- Stops the script (before it writes: it is called while reading) if `key` holds another
-- type than `kind`: someone's key under our name, or damage; `check --repair` removes it.
local function expect(key, kind)
  local found = redis.call('TYPE', key)['ok']
  if found ~= 'none' and found ~= kind then
    error({err = 'WRONGTYPE ' .. key .. ' holds a ' .. found .. ', not a ' .. kind .. ' (run unistore check --repair)'})
  end
end

local function expect_all(keys, kind)
  for _, key in ipairs(keys) do expect(key, kind) end
end

local function declared_set()
  local declared = {}
  for _, key in ipairs(KEYS) do declared[key] = true end
  return declared
end

-- Adds to `missing` each of `keys` not declared (once): on a cluster only.
local function require_keys(declared, missing, keys)
  if not STRICT then return end
  for _, key in ipairs(keys) do
    if not declared[key] then
      declared[key] = true
      missing[#missing + 1] = key
    end
  end
end

-- Batched changes: key -> list of arguments, each key written once per kind.
local function push(changes, key, value)
  local list = changes[key]
  if list then list[#list + 1] = value else changes[key] = {value} end
end

local function push2(changes, key, first, second)  -- a score and a member, a field and a value
  local list = changes[key]
  if list then
    list[#list + 1] = first
    list[#list + 1] = second
  else
    changes[key] = {first, second}
  end
end

local function apply(command, changes)
  for key, arguments in pairs(changes) do
    for start = 1, #arguments, 4000 do  -- unpack() takes a bounded number of values
      redis.call(command, key, unpack(arguments, start, math.min(start + 3999, #arguments)))
    end
  end
end

local function need(missing)  -- the reply that asks for more declared keys
  local reply = {'NEED'}
  for _, key in ipairs(missing) do reply[#reply + 1] = key end
  return reply
end

"""

# What DELETE and PURGE share: a counted run's answer, kept for a retry of that run.
_TOKENS = r"""
-- A counted delete's answer from a run before this one, if the client sends it again.
local function answered(token_key)
  local count = redis.call('GET', token_key)
  if count then return {'OK', tonumber(count)} end
  return nil
end

local function answer(token_key, count)
  redis.call('SET', token_key, count, 'PX', tonumber(ARGV[#ARGV]))
  return {'OK', count}
end
"""

# What SAVE and RESTORE share: writing records whole, one batch of a shard at a time.
_WRITE = r"""
-- KEYS: the shard's marker, created order, expiry order, heads hash, key order and updated
-- order; then per item its record key and the posting sets of its new record; then any other key to declare.
-- ARGV: the cluster flag, the shard prefix, now (µs), the shard count, '1' if the
-- namespace's count was just checked, the number of items; then per item its key, new
-- record and how many posting sets follow its record key in KEYS.
-- `keep`: a live record replaced keeps its id, UUID and creation time (a save; a
-- restore writes records as given). Answers {'OK', patch...}: per item, the 32 bytes
-- (id, UUID, creation time) it kept of a replaced record, or '' when none.
local function write(keep)
  local marker_key, created_key, expires_key, heads_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
  local keys_key, updated_key = KEYS[5], KEYS[6]
  local prefix, now, shards, checked, n = ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5], tonumber(ARGV[6])
  local marker = redis.call('GET', marker_key)
  if marker and marker ~= shards then return {'SHARDS', marker} end
  if not marker and checked ~= '1' then return {'MARKER'} end
  -- Everything is read and checked first: Redis does not undo a script's writes when
  -- it fails, so a batch that cannot be written whole must stop before its first write.
  expect(created_key, 'zset')
  expect(expires_key, 'zset')
  expect(heads_key, 'hash')
  expect(keys_key, 'zset')
  expect(updated_key, 'zset')
  local declared, missing, items, seen = nil, {}, {}, {}
  local k, a = 7, 7
  for i = 1, n do
    local record_key, member, record, count = KEYS[k], ARGV[a], ARGV[a + 1], tonumber(ARGV[a + 2])
    if seen[record_key] then return redis.error_reply('a batch names one key twice') end
    seen[record_key] = true
    local new_postings = {}
    for j = 1, count do new_postings[j] = KEYS[k + j] end
    k, a = k + 1 + count, a + 3
    local old, before = held(heads_key, record_key, member)
    local old_postings = {}
    if before then
      old_postings = postings(prefix, before)
      if STRICT then declared = declared or declared_set() end  -- (built only when there is something to check)
      require_keys(declared, missing, old_postings)
      expect_all(old_postings, 'set')
    end
    expect_all(new_postings, 'set')
    local patch = ''
    if keep and old and not before.damaged and live(before, now) then
      patch = string.sub(old, 9, 40)
      record = string.sub(record, 1, 8) .. patch .. string.sub(record, 41)
    end
    local expires, head = nil, nil  -- read here, where a record too short to read stops the batch whole
    if string.byte(record, 2) % 2 == 1 then
      expires = int64(record, 49)
      local payload_start = 69 + struct.unpack('<I4', record, 57) + struct.unpack('<I4', record, 61)
        + struct.unpack('<I4', record, 65)
      head = string.sub(record, 1, payload_start - 1)
    end
    items[i] = {record_key = record_key, member = member, record = record, patch = patch, before = before,
                created = int64(record, 33), updated = int64(record, 41), expires = expires, head = head,
                new_postings = new_postings, old_postings = old_postings}
  end
  if #missing > 0 then return need(missing) end
  local adds, removes, ordered, expiring, unexpiring, heads, unheads = {}, {}, {}, {}, {}, {}, {}
  local reply = {'OK'}
  for i, item in ipairs(items) do
    local member, before = item.member, item.before
    reply[i + 1] = item.patch
    if #item.old_postings == 0 then  -- a new item (the common case): every posting set is new to it
      for _, key in ipairs(item.new_postings) do push(adds, key, member) end
    else
      local was, is = {}, {}
      for _, key in ipairs(item.old_postings) do was[key] = true end
      for _, key in ipairs(item.new_postings) do is[key] = true end
      for key in pairs(is) do if not was[key] then push(adds, key, member) end end
      for key in pairs(was) do if not is[key] then push(removes, key, member) end end
    end
    push2(ordered, created_key, item.created, member)
    push2(ordered, updated_key, item.updated, member)
    push2(ordered, keys_key, 0, member)  -- (one score: the set keeps its members in byte order)
    if item.expires then
      push2(expiring, expires_key, item.expires, member)
      push2(heads, heads_key, member, item.head)
      redis.call('SET', item.record_key, item.record, 'PXAT', math.max(math.ceil(item.expires / 1000), 1))
    else
      if before and (before.damaged or before.expires) then
        push(unexpiring, expires_key, member)
        push(unheads, heads_key, member)
      end
      redis.call('SET', item.record_key, item.record)
    end
  end
  if not marker then redis.call('SET', marker_key, shards) end
  apply('SADD', adds)
  apply('SREM', removes)
  apply('ZADD', ordered)
  apply('ZADD', expiring)
  apply('ZREM', unexpiring)
  apply('HSET', heads)
  apply('HDEL', unheads)
  return reply
end
"""

# What DELETE and PURGE share: removing items whole.
_REMOVE = r"""
-- Removes the items of `doomed` ({record_key, member, record, fields}) with every index
-- entry they have, each key written once: `orders` are the sorted sets every item is in
-- (created, key and updated orders); `rescored` (expiry order entries to set first) and
-- `stray` (expiry order members to drop) come along in the same writes.
local function remove(prefix, doomed, orders, expires_key, heads_key, rescored, stray)
  local removes, unordered, unexpiring, unheads, records = {}, {}, {}, {}, {}
  for _, member in ipairs(stray) do push(unexpiring, expires_key, member) end
  for _, d in ipairs(doomed) do
    for _, key in ipairs(postings(prefix, d.fields)) do push(removes, key, d.member) end
    for _, key in ipairs(orders) do push(unordered, key, d.member) end
    push(unexpiring, expires_key, d.member)
    push(unheads, heads_key, d.member)
    if d.record then records[#records + 1] = d.record_key end
  end
  apply('SREM', removes)
  apply('ZREM', unordered)
  apply('ZADD', rescored)
  apply('ZREM', unexpiring)
  apply('HDEL', unheads)
  for start = 1, #records, 4000 do redis.call('DEL', unpack(records, start, math.min(start + 3999, #records))) end
end
"""


# How DELETE and PURGE begin: KEYS[1..6] are the shard's created order, expiry order, heads
# hash, key order, updated order and the run's token key; a run sent again answers what its
# first run did.
_COUNTED = (
    "#!lua flags=allow-oom\n"
    + _RECORD
    + _TOKENS
    + _REMOVE
    + r"""
local created_key, expires_key, heads_key, keys_key, updated_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local token_key = KEYS[6]
local orders = {created_key, keys_key, updated_key}
local earlier = answered(token_key)
if earlier then return earlier end
expect(created_key, 'zset')
expect(expires_key, 'zset')
expect(heads_key, 'hash')
expect(keys_key, 'zset')
expect(updated_key, 'zset')
"""
)


@dataclass(frozen=True)
class Script:
    """A script's source and its SHA-1 (what EVALSHA names it by)."""

    name: str
    source: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.source.encode()).hexdigest())


#: See :func:`write`'s comment for KEYS and ARGV. Saves every record, keeping the id and
#: creation time of a live record it replaces. One item is a save, several are a shard's
#: part of a ``save_many``: atomic either way.
SAVE = Script("save", "#!lua\n" + _RECORD + _WRITE + "return write(true)\n")

#: As :data:`SAVE`, but writes every record as given (a migration's ``restore_many``:
#: id, UUID and times are the item's own), replacing what is there, atomically.
RESTORE = Script("restore", "#!lua\n" + _RECORD + _WRITE + "return write(false)\n")

#: KEYS: the shard's created order, expiry order, heads hash, key order, updated order and
#: this run's token key;
#: the record keys of the items; then any other key to declare. ARGV: the cluster flag, the
#: shard prefix, now (µs), the content type that must match (empty: any), the number of items; then per
#: item its key and the stamp (record bytes 9 to 56: ids and times) it must still hold
#: (empty: any); last, the token's lifetime in ms. Deletes the records and their index
#: entries; answers {'OK', how many live items were removed}. An expired record met here
#: is removed too.
DELETE = Script(
    "delete",
    _COUNTED
    + r"""
local prefix, now, wanted, n = ARGV[2], tonumber(ARGV[3]), ARGV[4], tonumber(ARGV[5])
local declared, missing, doomed, seen, removed = STRICT and declared_set(), {}, {}, {}, 0
for i = 1, n do  -- every record read and checked before the first write
  local record_key, member, stamp = KEYS[6 + i], ARGV[4 + 2 * i], ARGV[5 + 2 * i]
  if not seen[record_key] then
    seen[record_key] = true
    local old, f = held(heads_key, record_key, member)
    local gone = f and (not old or not live(f, now))  -- nothing live: its leftovers go
    local wanted_here = f and (f.damaged or wanted == '' or f.content_type == wanted)
      and (stamp == '' or (old and string.sub(old, 9, 56) == stamp))
    if gone or wanted_here then
      require_keys(declared, missing, postings(prefix, f))
      expect_all(postings(prefix, f), 'set')
      doomed[#doomed + 1] = {record_key = record_key, member = member, record = old, fields = f}
      if not gone then removed = removed + 1 end
    end
  end
end
if #missing > 0 then return need(missing) end
remove(prefix, doomed, orders, expires_key, heads_key, {}, {})
return answer(token_key, removed)
""",
)

#: KEYS: as :data:`DELETE`'s (the record keys those of the members). ARGV: the cluster flag,
#: the shard prefix, now (µs), the number of members, the members (read from the expiry order, due
#: by now); last, the token's lifetime in ms. Removes the index entries (and any record
#: Redis has not dropped yet) of the members expired by now; an entry with nothing behind
#: it is dropped, one whose record is live is set to its record's expiry. Answers
#: {'OK', how many expired items were purged}.
PURGE = Script(
    "purge",
    _COUNTED
    + r"""
local prefix, now, n = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local declared, missing, doomed, rescored, stray = STRICT and declared_set(), {}, {}, {}, {}
for i = 1, n do
  local record_key, member = KEYS[6 + i], ARGV[4 + i]
  local record, f = held(heads_key, record_key, member)
  if f == nil then
    stray[#stray + 1] = member  -- an entry with nothing behind it
  elseif live(f, now) then  -- a live record under a stale entry: its own expiry, or none
    if f.expires then push2(rescored, expires_key, f.expires, member) else stray[#stray + 1] = member end
  else
    require_keys(declared, missing, postings(prefix, f))
    expect_all(postings(prefix, f), 'set')
    doomed[#doomed + 1] = {record_key = record_key, member = member, record = record, fields = f}
  end
end
if #missing > 0 then return need(missing) end
remove(prefix, doomed, orders, expires_key, heads_key, rescored, stray)
return answer(token_key, #doomed)
""",
)

#: KEYS: a time order (created or updated). ARGV: the position's score (µs, ``-inf`` or
#: ``+inf``), its member ('': none, the whole score is at the position), '1' to start
#: strictly past the position (else at it), '1' to walk down, how many entries. Answers
#: the entries from the position on, as ZRANGE WITHSCORES does, in ascending order (down:
#: those before the position, the last of them nearest it). A sorted set keeps the members
#: of one score in byte order, and ZRANGE by score cannot start inside a score: the rank
#: is found by ZCOUNT and a binary search of that score's members, so a page in a run of
#: items saved in the same microsecond costs what a page costs elsewhere. Members are
#: compared byte by byte: Lua's ``<`` follows the server's collation locale.
WALK = Script(
    "walk",
    r"""#!lua flags=no-writes
local function below(a, b)  -- whether a comes before b, byte by byte
  local n = math.min(#a, #b)
  local i = 1
  while i <= n and string.byte(a, i) == string.byte(b, i) do i = i + 1 end
  if i > n then return #a < #b end
  return string.byte(a, i) < string.byte(b, i)
end

local key, score, member = KEYS[1], ARGV[1], ARGV[2]
local strict, down, n = ARGV[3] == '1', ARGV[4] == '1', tonumber(ARGV[5])
local first = redis.call('ZCOUNT', key, '-inf', '(' .. score)  -- the rank of the score's first entry
local last = redis.call('ZCOUNT', key, '-inf', score)  -- past its last
local start = first  -- the rank where the entries past the position begin (down: end)
if down then start = last end
if member ~= '' then  -- the first of the score's members past it (or at it)
  local past = strict ~= down
  local low, high = first, last
  while low < high do
    local middle = math.floor((low + high) / 2)
    local at = redis.call('ZRANGE', key, middle, middle)[1]
    if below(at, member) or (past and at == member) then low = middle + 1 else high = middle end
  end
  start = low
end
if not down then return redis.call('ZRANGE', key, start, start + n - 1, 'WITHSCORES') end
if start == 0 then return {} end
return redis.call('ZRANGE', key, math.max(start - n, 0), start - 1, 'WITHSCORES')
""",
)

__all__ = ["DELETE", "PURGE", "RESTORE", "SAVE", "TOKEN_TTL_MS", "WALK", "Script"]
