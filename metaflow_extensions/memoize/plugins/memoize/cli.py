"""`python flow.py memoize ...`: parses, calls the cache, prints."""

from metaflow._vendor import click


@click.group()
def cli():
    pass


@cli.group(help="Inspect and manage the @memoize cache of this flow.")
@click.pass_obj
def memoize(obj):
    pass
