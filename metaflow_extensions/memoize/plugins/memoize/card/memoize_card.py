"""The ``memoize`` card type: ``@card(type="memoize")``, usually on the end step.

Metaflow imports the card types of every extension when it is imported itself
(plugins/cards/mfextinit_memoize.py lists this class), so this module imports
nothing of the extension at import time: rendering does, in the ``card create``
process Metaflow starts after the task.
"""

from __future__ import annotations

from metaflow.plugins.cards.card_modules.card import MetaflowCard

from . import CARD_TYPE


class MemoizeCard(MetaflowCard):
    """What @memoize decided for every task of the run: hit, cloned hit, miss,
    refresh, ...; why (with the root cause upstream); the task each hit reused;
    the time saved per step; the run's totals.

    Read from the metadata of the run's tasks when the card is rendered (after
    its own task finished): on the end step, every other task is done.
    """

    type = CARD_TYPE

    def __init__(self, options=None, components=None, graph=None, flow=None, **kwargs):
        self._graph_dict = graph if isinstance(graph, dict) else None
        self._flow = flow  # Metaflow 2.16 and later pass the flow

    def render(self, task) -> str:
        from .. import metaflow_compat as mf
        from .data import build_report, read_run
        from .render import render_html

        run = task.parent.parent
        flow_name = run.parent.id
        flow_class, graph = None, None
        try:
            flow_class, graph = mf.flow_class_and_graph(self._flow, flow_name)
        except Exception:  # root causes are a hint: the card renders without them
            pass
        order = mf.sorted_steps(graph) if graph is not None else list(self._graph_dict or ())
        report = build_report(
            run.pathspec,
            read_run(run, order),
            flow_class=flow_class,
            graph=graph,
            rendered_in=task.pathspec,
        )
        return render_html(report)
