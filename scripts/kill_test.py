"""The long SIGKILL run of shared pools (docs/testing.md): workers on one pool in shared memory,
one killed with SIGKILL at a random moment each round, the pool checked after every kill and
every page accounted for at the end of each epoch.

    .venv/bin/python scripts/kill_test.py [KILLS] [SEED]
"""

import json
import platform
import sys
import time

from pagebuddy._shared import kill_rounds

kills = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
seed = int(sys.argv[2]) if len(sys.argv) > 2 else 1
t0 = time.perf_counter()
report = kill_rounds(kills, seed)
report["seconds"] = round(time.perf_counter() - t0, 1)
report["cpu"] = platform.processor() or platform.machine()
print(json.dumps(report, indent=1))
sys.exit(0 if report["accounted"] and not report["overlaps"] and not report["stamp_errors"] else 1)
