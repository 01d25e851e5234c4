"""`metaflow-memoize --root URL [--flow NAME] COMMAND`: the cache commands without a flow file.

For cron jobs and CI: the same list/show/stats/invalidate/prune as
`python flow.py memoize ...`, on one cache root, for one flow or all of them.
"""

import metaflow  # noqa: F401  (loads Metaflow before its extension's modules)
from metaflow._vendor import click

from .. import config
from .commands import SCOPE, STANDALONE_COMMANDS, RootScope, memoize


@click.group(
    help="Inspect and manage a @memoize cache root without a flow file.\n\n"
    "Acts on every flow under the root unless --flow is given."
)
@click.option(
    "--root",
    metavar="URL",
    default=None,
    help="Cache root: a directory or s3://bucket/prefix (default: $%s)." % config.ENV_ROOT,
)
@click.option("--flow", metavar="NAME", default=None, help="Only this flow's entries.")
@click.pass_context
def cli(ctx, root, flow):
    ctx.meta[SCOPE] = RootScope(root or config.cache_root_setting(), flow)


for _name in STANDALONE_COMMANDS:
    cli.add_command(memoize.commands[_name])


def main(args=None):
    cli.main(args=args, prog_name="metaflow-memoize")


if __name__ == "__main__":
    main()
