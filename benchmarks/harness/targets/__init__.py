"""The targets, by number. Each module measures one target (``measure(bench)``), renders its
report section (``section(report, result)``) and says where its time goes (``FINDINGS``)."""

from . import (
    cache_commands,
    copy_in,
    hit_cost,
    key_cost,
    miss_cost,
    prune,
    rerun_vs_resume,
    wide_foreach,
)

TARGETS = {
    1: hit_cost,
    2: copy_in,
    3: miss_cost,
    4: key_cost,
    5: rerun_vs_resume,
    6: prune,
    7: wide_foreach,
    8: cache_commands,
}
TITLES = {number: target.TITLE for number, target in TARGETS.items()}

# order matters: 1 needs blobs present; 3 adds misses; 2 deletes and restores blobs
RUN_ORDER = [1, 4, 3, 2, 5, 6, 7, 8]
#: the targets that talk to the moto S3 server
NEED_S3 = {1, 2, 3, 6, 7, 8}
#: the targets that time listings of many thousand objects, each on a moto server of its
#: own: a server that held the objects of earlier targets (deleted since) answers more
#: slowly. Target 8's first `stats` at 10,000 entries took 7.8 s on a fresh server and
#: 10.0 s after target 6 had filled and emptied another bucket; AWS S3 has no such history
OWN_S3_SERVER = {6, 8}
assert OWN_S3_SERVER <= NEED_S3, "the runner swaps servers only while the shared one runs"
