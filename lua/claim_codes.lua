-- Claims codes in one directory bucket for a book (a code belongs to one book, forever).
-- KEYS[1] directory bucket hash
-- ARGV[1] book number  ARGV[2..] codes (all in this bucket)
-- Returns one character per code: 'n' newly claimed, 's' already this book's,
-- 'o' owned by another book.
local book = ARGV[1]
local flags = {}
for i = 2, #ARGV do
  local code = ARGV[i]
  if redis.call('HSETNX', KEYS[1], code, book) == 1 then
    flags[#flags + 1] = 'n'
  elseif redis.call('HGET', KEYS[1], code) == book then
    flags[#flags + 1] = 's'
  else
    flags[#flags + 1] = 'o'
  end
end
return table.concat(flags)
