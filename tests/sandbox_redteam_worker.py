"""A reward worker for the red-team suite: runs the programs it is sent in ``rlkit.sandbox``.

One JSON request per line on stdin (``{"code": ..., "limits": {...}}``), one JSON
``SandboxResult`` per line on stdout. It is a process of its own so an attack that kills the
process running the sandbox ends this one, not the test.
"""

import dataclasses
import json
import sys

from rlkit.sandbox import SandboxLimits, run_python

for line in sys.stdin:
    request = json.loads(line)
    result = run_python(request["code"], limits=SandboxLimits(**request["limits"]))
    print(json.dumps(dataclasses.asdict(result)), flush=True)
