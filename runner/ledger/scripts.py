"""The Lua scripts that change jobs and timers, each atomic in Redis.

Every change of a job's status goes through the one Lua function
`enter_status` of `LIBRARY` (its counters, its per-status index scored by
time, the count of failures by error type, its revision), called by `APPLY`
(one job, one move of `jobs.lifecycle`), `ADMIT` (waiting jobs into free
slots) and `RECORD` (a manifest's row). No status name is written here: each
script gets them from `jobs.status.JobStatus` through its arguments. Job
fields other than `status` and `revision` hold JSON.

Timers (`CLAIM_DUE`, `BEGIN`, `RENEW`, `FINISH`, `SCHEDULE`) keep what must
happen later in a sorted set scored by when it is due, with who holds it in a
hash: "d" once a dispatcher sent it, "r:<token>" while a worker runs it (the
score is then when that worker's lease ends).
"""

from __future__ import annotations

#: Functions the job scripts share. `c` is the decoded JSON context every job script gets as ARGV[1]:
#: key names and prefixes, status names, the names of the fields kept in side hashes (`side`), `now` (a
#: number) and `now_json` (its stored text). A field whose value is JSON null is removed, never stored.
LIBRARY = """
local function write_fields(c, job_key, job_id, fields)
  local set, unset = {}, {}
  for name, value in pairs(fields) do
    if c.side[name] then
      if value == 'null' then redis.call('HDEL', c.side_prefix .. name, job_id)
      else redis.call('HSET', c.side_prefix .. name, job_id, value) end
    elseif value == 'null' then
      table.insert(unset, name)
    else
      table.insert(set, name)
      table.insert(set, value)
    end
  end
  if #set > 0 then redis.call('HSET', job_key, unpack(set)) end
  if #unset > 0 then redis.call('HDEL', job_key, unpack(unset)) end
end

local function enter_status(c, job_key, job_id, from, to, error_type)
  if from and from ~= to then
    redis.call('HINCRBY', c.counts, from, -1)
    redis.call('ZREM', c.index_prefix .. from, job_id)
  end
  if from == c.failed then
    redis.call('HINCRBY', c.errors, redis.call('HGET', job_key, 'error_type') or 'null', -1)
  end
  if from ~= to then
    redis.call('HINCRBY', c.counts, to, 1)
    redis.call('HSET', job_key, 'status', to)
  end
  if to == c.failed then
    redis.call('HINCRBY', c.errors, error_type or 'null', 1)
  end
  redis.call('ZADD', c.index_prefix .. to, c.now, job_id)
  redis.call('HINCRBY', job_key, 'revision', 1)
end

local function admit(c)
  if redis.call('HGET', c.batch, 'state') ~= c.open_state then return {} end
  local limit = tonumber(redis.call('HGET', c.batch, 'max_in_flight'))
  local admitted = {}
  while redis.call('SCARD', c.in_flight) < limit do
    local job_id = redis.call('LPOP', c.waiting)
    if not job_id then break end
    local job_key = c.job_prefix .. job_id
    if redis.call('HGET', job_key, 'status') == c.waiting_status then
      enter_status(c, job_key, job_id, c.waiting_status, c.admitted_status, nil)
      redis.call('HSET', job_key, 'updated_at', c.now_json)
      redis.call('SADD', c.in_flight, job_id)
      local member = c.step_prefix .. job_id
      redis.call('ZADD', c.timers, c.now, member)
      redis.call('HDEL', c.claims, member)
      table.insert(admitted, job_id)
    end
  end
  return admitted
end

local function reopen(c)
  if redis.call('HGET', c.batch, 'state') == c.done_state then redis.call('HSET', c.batch, 'state', c.open_state) end
  redis.call('HDEL', c.batch, 'ended_at')
  redis.call('ZREM', c.timers, c.end_member)
  redis.call('HDEL', c.claims, c.end_member)  -- a report being written now no longer holds it
end

local function settle(c)
  for _, status in ipairs(c.unfinished) do
    if tonumber(redis.call('HGET', c.counts, status) or '0') > 0 then return 0 end
  end
  local state = redis.call('HGET', c.batch, 'state')
  if state == c.done_state or redis.call('HEXISTS', c.batch, 'ended_at') == 1 then return 0 end
  if state == c.open_state then redis.call('HSET', c.batch, 'state', c.done_state) end
  redis.call('HSET', c.batch, 'ended_at', c.now_json)
  if redis.call('HGET', c.batch, 'report_when_done') == 'true' then
    redis.call('ZADD', c.timers, 'NX', c.now, c.end_member)
  end
  return 1
end
"""

#: KEYS: job. ARGV[1]: the context (see LIBRARY) plus the move: job_id, from, to, revision (the one the
#: mover read, as text), token (unique to the call, so that a retried call whose answer was lost knows it
#: was applied; also in `fields` as applied_by), fields (name -> stored text), slot ("take", "keep",
#: "release", "rejoin"), requeue (refused in a cancelled batch), tally, exclusive (the request_id must not be
#: held by another job), charge (what the move adds to the batch's estimated spend `spent`, nano-dollars as
#: text: a positive one is refused past the batch's `max_cost_nusd`), error_type (stored JSON text, when the
#: job fails), final, request_id and request_value (to index, or ""), due_at (when its next step is due; -1:
#: none), keep_claim ("r:<token>" of the worker that runs the next step at once, or "") and lease_until.
#: Applies the move if the job is still at `from` and `revision` (and, with keep_claim, if that worker still
#: holds the job's step). Returns {1, old status, admitted job ids}, {0, current status} or {0, current
#: status, "over_budget", spent, cap}; a repeated call that was applied returns no admitted ids (their
#: submits are due already). With `tally` (a name, or ""), counts the move in the batch's tallies.
APPLY = (
    LIBRARY
    + """
local c = cjson.decode(ARGV[1])
local job_key = KEYS[1]
local current = redis.call('HGET', job_key, 'status')
if not current then return {0, false} end
if current ~= c.from or (redis.call('HGET', job_key, 'revision') or '0') ~= c.revision then
  -- The same call again (its answer was lost to a dropped connection): it was applied.
  if redis.call('HGET', job_key, 'applied_by') == c.token then return {1, c.from, {}} end
  return {0, current}
end
local member = c.step_prefix .. c.job_id
if c.keep_claim ~= '' and redis.call('HGET', c.claims, member) ~= c.keep_claim then
  return {0, current}  -- the mover no longer holds the job's step (its lease lapsed and another took it)
end
if c.requeue and redis.call('HGET', c.batch, 'state') == c.cancelled_state then
  return {0, current}  -- back in line in a cancelled batch: it would wait forever; its step sees the cancel
end
if c.exclusive and c.request_id ~= '' then
  local holder = redis.call('HGET', c.requests, c.request_id)
  if holder and holder ~= c.request_value then return {0, current} end  -- another job follows that request
end
local charge = tonumber(c.charge)
if charge > 0 then
  local cap = redis.call('HGET', c.batch, 'max_cost_nusd') or ''
  local spent = redis.call('GET', c.spent) or '0'
  if tonumber(cap) and tonumber(spent) + charge > tonumber(cap) then return {0, current, 'over_budget', spent, cap} end
end
if charge ~= 0 then redis.call('INCRBY', c.spent, c.charge) end  -- first: a write that fails leaves nothing half done
enter_status(c, job_key, c.job_id, current, c.to, c.error_type)
write_fields(c, job_key, c.job_id, c.fields)
if c.slot == 'release' then redis.call('SREM', c.in_flight, c.job_id) end
if c.slot == 'rejoin' then redis.call('SADD', c.in_flight, c.job_id) end
if c.tally ~= '' then redis.call('HINCRBY', c.tallies, c.tally, 1) end
if c.requeue then
  redis.call('RPUSH', c.waiting, c.job_id)
  reopen(c)
end
if c.request_id ~= '' then redis.call('HSET', c.requests, c.request_id, c.request_value) end
if c.due_at < 0 then
  redis.call('ZREM', c.timers, member)
  redis.call('HDEL', c.claims, member)
elseif c.keep_claim ~= '' then
  redis.call('ZADD', c.timers, c.lease_until, member)
else
  redis.call('ZADD', c.timers, c.due_at, member)
  redis.call('HDEL', c.claims, member)
end
local admitted = {}
if c.slot == 'release' or c.requeue then admitted = admit(c) end
if c.final then settle(c) end
return {1, current, admitted}
"""
)

#: ARGV[1]: the context. Moves waiting jobs into free slots of the window while the batch is open, each
#: with its submit due now; then ends the batch if nothing is left to do. Returns {admitted job ids, ended}.
ADMIT = (
    LIBRARY
    + """
local c = cjson.decode(ARGV[1])
local admitted = admit(c)
return {admitted, settle(c)}
"""
)

#: KEYS: job, job order. ARGV[1]: the context plus job_id, job (stored JSON), fingerprint (hex),
#: in_flight_statuses, reset (field -> stored JSON of a job recorded again). Records a manifest's job: new
#: -> waiting; same input -> kept; changed input of a job with nothing at fal -> waiting again, with the
#: new input. Returns what it did: "added", "kept", "in_flight" or "changed".
RECORD = (
    LIBRARY
    + """
local c = cjson.decode(ARGV[1])
local job_key = KEYS[1]
local status = redis.call('HGET', job_key, 'status')
if not status then
  redis.call('HSET', job_key, 'fingerprint', c.fingerprint, 'queued_at', c.now_json, 'updated_at', c.now_json,
             'attempts', '0', 'polls', '0', 'revision', '0')
  redis.call('HSET', c.side_prefix .. 'job', c.job_id, c.job)
  enter_status(c, job_key, c.job_id, false, c.waiting_status, nil)
  redis.call('RPUSH', KEYS[2], c.job_id)
  redis.call('RPUSH', c.waiting, c.job_id)
  reopen(c)
  return 'added'
end
if redis.call('HGET', job_key, 'fingerprint') == c.fingerprint then return 'kept' end
for _, busy in ipairs(c.in_flight_statuses) do
  if status == busy then return 'in_flight' end
end
enter_status(c, job_key, c.job_id, status, c.waiting_status, nil)
redis.call('HSET', job_key, 'fingerprint', c.fingerprint, 'queued_at', c.now_json, 'updated_at', c.now_json)
redis.call('HSET', c.side_prefix .. 'job', c.job_id, c.job)
write_fields(c, job_key, c.job_id, c.reset)
if status ~= c.waiting_status then redis.call('RPUSH', c.waiting, c.job_id) end
reopen(c)
return 'changed'
"""
)

#: KEYS: timers, claims. ARGV: now, until (when a dispatch claim lapses), limit, the dispatch mark, and
#: the time before which a worker's lapsed lease may be taken over ("" : none may be: this dispatcher
#: has not been connected long enough for live workers to renew theirs after an outage). Claims up to
#: `limit` timers due by `now` for a dispatcher and returns them; each comes due again at `until` unless
#: a worker begins it. A timer a worker ran is taken over only if its lease lapsed before that time: a
#: grace period, so that a live worker back from an outage renews first.
CLAIM_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', 0, 4 * tonumber(ARGV[3]))
local claimed = {}
for i = 1, #due, 2 do
  local member, score = due[i], tonumber(due[i + 1])
  local claim = redis.call('HGET', KEYS[2], member)
  local running = claim and string.sub(claim, 1, 2) == 'r:'
  if not running or (ARGV[5] ~= '' and score < tonumber(ARGV[5])) then
    redis.call('ZADD', KEYS[1], ARGV[2], member)
    redis.call('HSET', KEYS[2], member, ARGV[4])
    table.insert(claimed, member)
    if #claimed >= tonumber(ARGV[3]) then break end
  end
end
return claimed
"""

#: KEYS: timers, claims. ARGV: member, the worker's mark ("r:<token>"), now, lease end, the dispatch mark.
#: A worker begins a timer it got a message for: "ok" (it holds it until its lease ends), "busy" (another
#: worker holds it: only a dispatcher takes a timer over from a worker that died), "early" (it is not
#: due: the message is stale) or "gone".
BEGIN = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score then return 'gone' end
local claim = redis.call('HGET', KEYS[2], ARGV[1])
if claim == ARGV[2] then return 'ok' end  -- the same call again: its answer was lost
if claim and claim ~= ARGV[5] then return 'busy' end
if not claim and tonumber(score) > tonumber(ARGV[3]) then return 'early' end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[1], ARGV[4], ARGV[1])
return 'ok'
"""

#: KEYS: timers, claims. ARGV: lease end, then member/mark pairs. Extends the leases still held.
RENEW = """
local renewed = 0
for i = 2, #ARGV, 2 do
  if redis.call('HGET', KEYS[2], ARGV[i]) == ARGV[i + 1] then
    redis.call('ZADD', KEYS[1], 'XX', ARGV[1], ARGV[i])
    renewed = renewed + 1
  end
end
return renewed
"""

#: KEYS: timers, claims, tries. ARGV: member, mark, due ('' removes the timer), "1" to count a try. A worker
#: that holds the timer lets it go: due again then (counting one more try), or done. Returns 1 if it still
#: held it.
FINISH = """
if redis.call('HGET', KEYS[2], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[2], ARGV[1])
if ARGV[3] == '' then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[3], ARGV[1])
else
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
  if ARGV[4] == '1' then redis.call('HINCRBY', KEYS[3], ARGV[1], 1) end
end
return 1
"""

#: KEYS: timers, claims. ARGV: due, then members. Makes each timer due at `due` unless a worker runs it
#: now under a live lease (its claim is left alone); `due` is also `now`. Returns how many it set.
SCHEDULE = """
local set = 0
for i = 2, #ARGV do
  local claim = redis.call('HGET', KEYS[2], ARGV[i])
  local score = redis.call('ZSCORE', KEYS[1], ARGV[i])
  local running = claim and string.sub(claim, 1, 2) == 'r:' and score and tonumber(score) > tonumber(ARGV[1])
  if not running then
    redis.call('ZADD', KEYS[1], ARGV[1], ARGV[i])
    redis.call('HDEL', KEYS[2], ARGV[i])
    set = set + 1
  end
end
return set
"""
