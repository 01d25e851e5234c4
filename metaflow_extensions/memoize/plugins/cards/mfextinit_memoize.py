# Registers the `memoize` card type (@card(type="memoize")) with Metaflow, which
# reads CARDS from each extension's plugins/cards package when it is imported.
from ..memoize.card.memoize_card import MemoizeCard

CARDS = [MemoizeCard]
