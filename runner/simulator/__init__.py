"""A simulator of fal's queue API: the real protocol on 127.0.0.1, with seeded faults.

    with run_simulator(SimConfig(concurrency=2, run_time="fixed:0.2")) as sim:
        sim.base_url   # "http://127.0.0.1:PORT"
        sim.stats()    # the JSON of GET {base_url}/_stats

It serves `fal-ai/wan/v2.2-a14b/image-to-image`, `fal-ai/wan-25-preview/image-to-image`
and the echo app `wan-batch-sim/echo[/path]`, with real output images under
`{base_url}/files/`, and fal's request history (Platform API, base URL `{base_url}/v1`):
`GET {base_url}/v1/models/requests/by-endpoint`, fal's pricing API (`GET {base_url}/v1/models/pricing`,
`POST {base_url}/v1/models/pricing/estimate`, with the prices `SimConfig.prices` sets; see
`runner.simulator.pricing`), and fal storage: a token from
`POST {base_url}/storage/auth/token?storage_type=fal-cdn-v3` uploads to `{base_url}/cdn/files/upload`,
whose files are served under `{base_url}/cdn/files/` (see `runner.simulator.storage`). A request submitted
with `?fal_webhook=URL` is POSTed there when it ends, signed with the key published at
`{base_url}/.well-known/jwks.json` (see `runner.simulator.webhooks`).
See `shared/fal-queue-protocol.md`.

Where it is simpler than fal:

- Cancelling an IN_PROGRESS request ends it at once (COMPLETED, result 499);
  fal's cancel of a running request is best effort, and it may still finish.
- A result is kept `retention_s` after completion (fal: 1 hour), or
  `large_result_retention_s` when its body is 10 KB or more (fal: 6 minutes);
  then the request's input, result and output files are dropped (files 404 too,
  where fal's CDN keeps them by the lifecycle preference). /_stats keeps its timings,
  and the request history its input, for as long as the simulator runs (fal: 30 days).
- Input images (`image_url`, `image_urls`, the known endpoints' image fields) are read
  when the request is submitted, not when it starts, so the submit's answer waits for them
  (up to `fetch_timeout_s` each), and an image that goes away while its request waits in
  the queue still counts as read. Only those on 127.0.0.1, localhost or ::1 are fetched
  unless `fetch_inputs="all"`; the others are assumed readable. An unreadable one ends the
  request at its start with a 422 (`file_download_error`, `image_load_error`, `file_too_large`).
- The request history lists only finished requests, each `history_lag_s` after it
  completed (fal: unconfirmed); `json_output` is there only while the result is held
  here (made on the first result fetch, dropped at the purge).
- Uploads are held in memory until they expire (`storage_mb`; past it an upload answers 507) and take at most
  `upload_max_mb` each (fal: 100 MiB); multipart uploads are not served. An output
  derives from an uploaded input image only while the upload is held.

Pass `run_simulator(config, clock=ManualClock())` to move time by hand in tests.
"""

from runner.simulator.clock import Clock, ManualClock, SystemClock
from runner.simulator.config import LARGE_RESULT_BYTES, FaultRates, SimConfig, parse_run_time
from runner.simulator.faults import FaultKind
from runner.simulator.outputs import ECHO_APP
from runner.simulator.server import RunningSimulator, run_simulator, serve_until_interrupted

__all__ = [
    "ECHO_APP",
    "LARGE_RESULT_BYTES",
    "Clock",
    "FaultKind",
    "FaultRates",
    "ManualClock",
    "RunningSimulator",
    "SimConfig",
    "SystemClock",
    "parse_run_time",
    "run_simulator",
    "serve_until_interrupted",
]
