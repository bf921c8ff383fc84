-- Shared helpers. scripts.py prepends this file to every script when it
-- registers them, so each operation stays one file and one atomic call.

-- Arguments passed through one unpack() at most: Lua's C stack holds about
-- 8,000 values, and a bulk load's slices must stay well below that.
local UNPACK_MAX = 1000

-- Server time in milliseconds: one clock for every API process.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- The `assigned` hash holds, per code, "owner|assignedAt|timesRedeemed|lastRedeemedAt|version".
local function read_assignment(assigned_key, code)
  local raw = redis.call('HGET', assigned_key, code)
  if not raw then return nil end
  local owner, at, times, last, v = string.match(raw, '^([^|]*)|(%d+)|(%d+)|(%d+)|(%d+)$')
  return {owner = owner, at = tonumber(at), times = tonumber(times),
          last = tonumber(last), v = tonumber(v)}
end

local function write_assignment(assigned_key, code, a)
  redis.call('HSET', assigned_key, code,
    a.owner .. '|' .. a.at .. '|' .. a.times .. '|' .. a.last .. '|' .. a.v)
end

-- How many times a code of this book may be redeemed; -1 means no limit.
local function redeem_limit(multiple_allowed, max_redeems)
  if multiple_allowed ~= '1' then return 1 end
  return tonumber(max_redeems) or -1
end

local function outside_window(valid_from, valid_until, now)
  local from, untl = tonumber(valid_from), tonumber(valid_until)
  return (from ~= nil and now < from) or (untl ~= nil and now >= untl)
end

-- Lock expiry (ms) of a code from the locks zset, 0 when not locked now.
local function locked_until(locks_key, code, now)
  local until_ms = tonumber(redis.call('ZSCORE', locks_key, code))
  if until_ms and until_ms > now then return until_ms end
  return 0
end

-- When a live lock expires: the locks zset holds the exact moment it was set
-- for; PTTL is the fallback (and 1 ms coarser).
local function live_lock_until(locks_key, lock_key, code, now)
  return tonumber(redis.call('ZSCORE', locks_key, code)) or now + redis.call('PTTL', lock_key)
end

-- What a client sees of an assigned code, in the order store.py parses it.
local function code_view(book_id, code, a, lock_until, limit)
  local status = 'assigned'
  if limit >= 0 and a.times >= limit then status = 'redeemed'
  elseif lock_until > 0 then status = 'locked' end
  return {book_id, code, a.owner, a.at, a.times, a.last, lock_until, status, a.v}
end

-- Appends one outbox event; every state change calls this exactly once.
local function emit(stream, kind, book_id, code, user, at, version, ...)
  redis.call('XADD', stream, '*', 'type', kind, 'book', book_id, 'code', code,
    'user', user, 'at', at, 'v', version, ...)
end

-- An event about one code carries the code's whole state after the change, so
-- the writer can apply events idempotently and in any order (highest v wins).
local function emit_code(stream, kind, book_id, code, a, at, ...)
  emit(stream, kind, book_id, code, a.owner, at, a.v,
    'assignedAt', a.at, 'times', a.times, 'last', a.last, ...)
end

-- A lock that ran out (its key expired by itself) stays in the book's locks
-- zset until recorded: this drops the entry and, for a code still assigned,
-- emits `lock_expired` one version up, dated when the lock ended (its score).
local function record_lock_expiry(assigned_key, locks_key, stream, book_id, code, a, ended_at)
  redis.call('ZREM', locks_key, code)
  if not a then return end
  a.v = a.v + 1
  write_assignment(assigned_key, code, a)
  emit_code(stream, 'lock_expired', book_id, code, a, ended_at)
end

-- Records the code's own lock, when it ended and is not yet recorded (the
-- caller knows its key is gone).
local function record_own_ended_lock(assigned_key, locks_key, stream, book_id, code, a)
  local ended = redis.call('ZSCORE', locks_key, code)
  if ended then
    record_lock_expiry(assigned_key, locks_key, stream, book_id, code, a, tonumber(ended))
  end
end

-- Records up to `limit` of a book's locks that ended before `now`, oldest
-- first; returns how many. A lock key lives while `now` <= its end (its
-- PXAT deadline is its score, and Redis expires a key once the clock is
-- past it), so only entries strictly before `now` are gone for sure.
local function record_expired_locks(assigned_key, locks_key, stream, book_id, now, limit)
  local ended = redis.call('ZRANGEBYSCORE', locks_key, '-inf', '(' .. now,
    'WITHSCORES', 'LIMIT', 0, limit)
  for i = 1, #ended, 2 do
    local code = ended[i]
    record_lock_expiry(assigned_key, locks_key, stream, book_id, code,
      read_assignment(assigned_key, code), tonumber(ended[i + 1]))
  end
  return #ended / 2
end

-- The optional KEYS after an assign script's fixed ones. On one Redis the
-- caller passes the book's number (ARGV) and the user's index of books, and
-- the script adds the book there with the assignment; on a cluster the index
-- lives on another node, so the caller writes it before the script and passes
-- '' instead. The idempotency list, when asked for, comes last.
local function index_and_idem_keys(first, book_number)
  if book_number and book_number ~= '' then return KEYS[first], KEYS[first + 1] end
  return nil, KEYS[first]
end

local function note_user_book(index_key, book_number)
  if index_key then redis.call('SADD', index_key, book_number) end
end

-- Idempotency: the stored result of an earlier call with this key, a
-- mismatch marker when the key was used with another request, or nil.
local function idem_replay(key, fingerprint)
  if key == nil then return nil end
  local stored = redis.call('LRANGE', key, 0, -1)
  if #stored == 0 then return nil end
  if stored[1] ~= fingerprint then return {'idempotency_mismatch'} end
  table.remove(stored, 1)
  stored[1] = 'replayed'
  return stored
end

local function idem_store(key, fingerprint, ttl_ms, result)
  if key == nil then return end
  redis.call('RPUSH', key, fingerprint, unpack(result))
  redis.call('PEXPIRE', key, ttl_ms)
end

-- Copies a view into a reply that starts with a status word.
local function reply(status, view, ...)
  local out = {status}
  for _, value in ipairs(view) do out[#out + 1] = value end
  for _, value in ipairs({...}) do out[#out + 1] = value end
  return out
end
