-- One page of a user's codes in one book, in code order.
-- KEYS[1] meta hash  KEYS[2] user's zset  KEYS[3] assigned hash  KEYS[4] locks zset
-- ARGV[1] last code of the previous page ('' for the first page)  ARGV[2] page size
-- Returns {'ok', book id, code view, code view, ...} (each view flattened).
local m = redis.call('HMGET', KEYS[1], 'id', 'multipleRedeemsAllowed', 'maxRedeemsPerCode')
if not m[1] then return {'book_not_found'} end
local start = '-'
if ARGV[1] ~= '' then start = '(' .. ARGV[1] end
local codes = redis.call('ZRANGEBYLEX', KEYS[2], start, '+', 'LIMIT', 0, tonumber(ARGV[2]))
local now = now_ms()
local limit = redeem_limit(m[2], m[3])
local out = {'ok', m[1]}
for _, code in ipairs(codes) do
  local a = read_assignment(KEYS[3], code)
  if a then
    for _, value in ipairs(code_view(m[1], code, a, locked_until(KEYS[4], code, now), limit)) do
      out[#out + 1] = value
    end
  end
end
return out
