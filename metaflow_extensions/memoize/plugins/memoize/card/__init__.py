"""The memoize card: what @memoize decided for every task of a run, as a
self-contained HTML page (``@card(type="memoize")``, or ``METAFLOW_MEMOIZE_CARD=1``
/ ``run --memoize-card`` to add it to the end step).

``data.py`` reads the run's decisions from task metadata (summary.py's reader),
``render.py`` turns them into HTML (pure), ``memoize_card.py`` is the card type
Metaflow registers (``plugins/cards/mfextinit_memoize.py``).
"""

#: ``@card(type=...)`` of the memoize card
CARD_TYPE = "memoize"
