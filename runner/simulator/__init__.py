"""A simulator of fal's queue API: the real protocol on 127.0.0.1, with seeded faults.

    with run_simulator(SimConfig(concurrency=2, run_time="fixed:0.2")) as sim:
        sim.base_url   # "http://127.0.0.1:PORT"
        sim.stats()    # the JSON of GET {base_url}/_stats

It serves `fal-ai/wan/v2.2-a14b/image-to-image`, `fal-ai/wan-25-preview/image-to-image`
and the echo app `wan-batch-sim/echo[/path]`, with real output images under
`{base_url}/files/`. See `shared/fal-queue-protocol.md` for the protocol.
"""

from runner.simulator.config import FaultRates, SimConfig, parse_run_time
from runner.simulator.faults import FaultKind
from runner.simulator.outputs import ECHO_APP
from runner.simulator.server import RunningSimulator, run_simulator, serve_until_interrupted

__all__ = [
    "ECHO_APP",
    "FaultKind",
    "FaultRates",
    "RunningSimulator",
    "SimConfig",
    "parse_run_time",
    "run_simulator",
    "serve_until_interrupted",
]
