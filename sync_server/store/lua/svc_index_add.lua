-- Adds a service to the account's service index, in creation order.
-- KEYS[1]  the index (sorted set)           sync:{services}:index
-- KEYS[2]  the creation counter             sync:{services}:seq
-- KEYS[3]  the store's layout version       sync:{services}:layout
-- ARGV[1]  the service SID
-- ARGV[2]  the layout version this code writes (set if absent: a store with services is marked)
-- Returns  the service's sequence number (the existing one when it was indexed already)
redis.call('SET', KEYS[3], ARGV[2], 'NX')
local seq = redis.call('ZSCORE', KEYS[1], ARGV[1])
if seq then return tonumber(seq) end
seq = redis.call('INCR', KEYS[2])
redis.call('ZADD', KEYS[1], seq, ARGV[1])
return seq
