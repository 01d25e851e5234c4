# Registers @memoize and the `memoize` flow command group with Metaflow.
STEP_DECORATORS_DESC = [("memoize", ".memoize.runtime.decorator.MemoizeDecorator")]
CLIS_DESC = [("memoize", ".memoize.cli.commands.cli")]
