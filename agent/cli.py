"""The ``cvsweep`` command line."""
from __future__ import annotations

import sys

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli():
    """W&B Sweeps for timm image classifiers: online against W&B, or offline with a local controller."""


@cli.command("demo-data")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--per-class", default=12, show_default=True, help="training images per class")
@click.option("--test-per-class", default=4, show_default=True, help="test images per class")
@click.option("--seed", default=0, show_default=True)
def demo_data(out_dir, per_class, test_per_class, seed):
    """Write the synthetic 17-class document dataset to OUT_DIR (competition layout)."""
    from cvtrain.demo_data import make_demo_data

    out = make_demo_data(out_dir, per_class=per_class, test_per_class=test_per_class, seed=seed)
    click.echo(f"wrote demo data to {out} ({17 * per_class} train, {17 * test_per_class} test images)")


def main():
    sys.exit(cli(standalone_mode=True))
