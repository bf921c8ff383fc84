-- Claims codes for a book in the directory (a code belongs to one book, forever).
-- All KEYS share one directory hash tag, so a bulk load needs one call per tag.
-- KEYS[1], KEYS[2], ...: directory bucket hashes
-- ARGV[1] book number  ARGV[2], ARGV[3], ...: pairs of (index into KEYS, code)
-- Returns one character per code: 'n' newly claimed, 's' already this book's,
-- 'o' owned by another book.
local book = ARGV[1]
local flags = {}
for i = 2, #ARGV, 2 do
  local bucket, code = KEYS[tonumber(ARGV[i])], ARGV[i + 1]
  if redis.call('HSETNX', bucket, code, book) == 1 then
    flags[#flags + 1] = 'n'
  elseif redis.call('HGET', bucket, code) == book then
    flags[#flags + 1] = 's'
  else
    flags[#flags + 1] = 'o'
  end
end
return table.concat(flags)
