"""Lua scripts that change a job's status together with everything that depends on it.

Each runs atomically in Redis: a status change, the per-status counters, the
in-flight set and the fields stored with it (a request_id above all) move
together or not at all. Job fields other than `status` hold JSON.
"""

#: KEYS: job, counts, in-flight set. ARGV: job id, "release" or "", allowed from-statuses
#: (JSON list, [] = any), to-status, expected field values (JSON object of field -> stored
#: JSON text; a missing field reads as "null"), then field/value pairs to set. With
#: "release" the job's slot in the in-flight window is freed in the same step.
#: Returns {1, old status} on success, {0, current status or false} when refused.
TRANSITION = """
local current = redis.call('HGET', KEYS[1], 'status')
if not current then return {0, false} end
local allowed = cjson.decode(ARGV[3])
local ok = #allowed == 0
for _, status in ipairs(allowed) do
  if status == current then ok = true end
end
if not ok then return {0, current} end
for field, expected in pairs(cjson.decode(ARGV[5])) do
  if (redis.call('HGET', KEYS[1], field) or 'null') ~= expected then return {0, current} end
end
if ARGV[4] ~= current then
  redis.call('HINCRBY', KEYS[2], current, -1)
  redis.call('HINCRBY', KEYS[2], ARGV[4], 1)
  redis.call('HSET', KEYS[1], 'status', ARGV[4])
end
for i = 6, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
if ARGV[2] == 'release' then redis.call('SREM', KEYS[3], ARGV[1]) end
return {1, current}
"""

#: KEYS: batch, in-flight set, waiting list, counts. ARGV: job key prefix.
#: Moves waiting jobs into free slots (WAITING -> ADMITTED) while the batch is open.
#: Returns the admitted job ids, to be given submit tasks.
ADMIT = """
if redis.call('HGET', KEYS[1], 'state') ~= '"open"' then return {} end
local limit = tonumber(redis.call('HGET', KEYS[1], 'max_in_flight'))
local admitted = {}
while redis.call('SCARD', KEYS[2]) < limit do
  local job_id = redis.call('LPOP', KEYS[3])
  if not job_id then break end
  local job = ARGV[1] .. job_id
  if redis.call('HGET', job, 'status') == 'waiting' then
    redis.call('SADD', KEYS[2], job_id)
    redis.call('HSET', job, 'status', 'admitted')
    redis.call('HINCRBY', KEYS[4], 'waiting', -1)
    redis.call('HINCRBY', KEYS[4], 'admitted', 1)
    table.insert(admitted, job_id)
  end
end
return admitted
"""

#: KEYS: job, counts, job order, waiting list. ARGV: job id, job JSON, fingerprint JSON, now JSON.
#: Records a manifest's job: new -> WAITING; same input -> kept; changed input of a
#: job not at fal -> WAITING again with the new input. Returns what it did.
SYNC_JOB = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then
  redis.call('HSET', KEYS[1], 'status', 'waiting', 'job', ARGV[2], 'fingerprint', ARGV[3],
             'queued_at', ARGV[4], 'attempts', '0', 'polls', '0', 'poll_token', '0')
  redis.call('HINCRBY', KEYS[2], 'waiting', 1)
  redis.call('RPUSH', KEYS[3], ARGV[1])
  redis.call('RPUSH', KEYS[4], ARGV[1])
  return 'added'
end
if redis.call('HGET', KEYS[1], 'fingerprint') == ARGV[3] then return 'kept' end
if status ~= 'succeeded' and status ~= 'failed' and status ~= 'cancelled' and status ~= 'waiting' then
  return 'in_flight'
end
redis.call('HINCRBY', KEYS[2], status, -1)
redis.call('HINCRBY', KEYS[2], 'waiting', 1)
redis.call('HSET', KEYS[1], 'status', 'waiting', 'job', ARGV[2], 'fingerprint', ARGV[3], 'queued_at', ARGV[4],
           'outputs', '[]', 'error_type', 'null', 'error_message', 'null', 'request_id', 'null')
if status ~= 'waiting' then redis.call('RPUSH', KEYS[4], ARGV[1]) end
return 'changed'
"""

#: KEYS: job, counts, waiting list. ARGV: job id, then field/value pairs.
#: A FAILED or CANCELLED job goes back to WAITING, at the end of the line; returns 1 if it did.
REQUEUE = """
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'failed' and status ~= 'cancelled' then return 0 end
redis.call('HINCRBY', KEYS[2], status, -1)
redis.call('HINCRBY', KEYS[2], 'waiting', 1)
redis.call('HSET', KEYS[1], 'status', 'waiting')
for i = 2, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
redis.call('RPUSH', KEYS[3], ARGV[1])
return 1
"""

#: KEYS: counts, end marker. ARGV: unfinished statuses (JSON list), now (JSON).
#: Sets the marker if every job of the batch (it has some) is final and it is not set yet,
#: in one step with reading the counts, so a retry cannot slip in between. Returns 1 if it did.
CLAIM_END = """
for _, status in ipairs(cjson.decode(ARGV[1])) do
  if tonumber(redis.call('HGET', KEYS[1], status) or '0') > 0 then return 0 end
end
local total = 0
for _, n in ipairs(redis.call('HVALS', KEYS[1])) do total = total + tonumber(n) end
if total == 0 then return 0 end
if redis.call('SET', KEYS[2], ARGV[2], 'NX') then return 1 end
return 0
"""
