"""Records each execution of a step body, so tests can prove a hit skipped it."""

import os
import uuid


def record(step_name, detail=""):
    directory = os.environ.get("MEMOIZE_TEST_COUNTERS")
    if not directory:
        return
    # one file per process avoids concurrent appends to a shared file
    path = os.path.join(directory, "%s--%d-%s" % (step_name, os.getpid(), uuid.uuid4().hex[:6]))
    with open(path, "a") as f:
        f.write("%s\n" % detail)
