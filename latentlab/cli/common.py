"""Shared click options, value ranges and output helpers for the CLI modules.

Every numeric option takes one of the ranged types below, so click refuses an impossible value
(a zero step count, a negative seed, a learning rate <= 0) before any work starts, with an
error that names the flag. Defaults are never written here: an option defaults to None and the
library's config dataclass fills it in; the help text shows that dataclass's value.
"""

from __future__ import annotations

from typing import Any, Callable

import click

from latentlab.io import to_json


class Int(click.IntRange):
    """An integer option with a valid range (min/max, as click.IntRange)."""

    name = "integer"


class Float(click.FloatRange):
    """A number option with a valid range (min/max, open or closed, as click.FloatRange)."""

    name = "number"


class _CommaList(click.ParamType):
    """Comma-separated values of one type; subclasses check each value."""

    cast, what = int, "integers"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            out = tuple(self.cast(v) for v in str(value).split(",") if v.strip())
        except ValueError:
            self.fail(f"expected comma-separated {self.what}, got {value!r}", param, ctx)
        if not out:
            self.fail("give at least one value", param, ctx)
        return self.check(out, param, ctx)


class IntList(_CommaList):
    """Comma-separated integers, each >= `min`: '1,2,5' -> (1, 2, 5)."""

    name = "integer list"

    def __init__(self, min: int = 1):
        self.min = min

    def check(self, out: tuple, param, ctx) -> tuple:
        bad = [v for v in out if v < self.min]
        if bad:
            self.fail(f"every value must be >= {self.min}; got {bad[0]}", param, ctx)
        return out


class FloatList(_CommaList):
    """Comma-separated numbers, each in a range (as click.FloatRange): '0.1,0.5' -> (0.1, 0.5)."""

    name = "number list"
    cast, what = float, "numbers"

    def __init__(self, **bounds):
        self.range = click.FloatRange(**bounds)

    def check(self, out: tuple, param, ctx) -> tuple:
        return tuple(self.range.convert(v, param, ctx) for v in out)


COUNT = Int(min=1)                               # steps, batch sizes, samples, epochs, restarts, dimensions
NATURAL = Int(min=0)                             # seeds (numpy takes no negative seed), class indices
LEARNING_RATE = Float(min=0, min_open=True)      # > 0
GUIDANCE = Float(min=0)                          # classifier-free guidance scale (1 = none)
FRACTION = Float(min=0, max=1, max_open=True)    # [0, 1): held-out fractions, EMA decay
PROPORTION = Float(min=0, max=1, min_open=True)  # (0, 1]: explained variance kept
TIME = Float(min=0, max=1)                       # t in [0, 1]


def ordered_pair(ctx: click.Context, param: click.Parameter, value):
    """A callback for `nargs=2` options: LO <= HI."""
    if value is not None and value[0] > value[1]:
        raise click.BadParameter(f"LO must not exceed HI; got {value[0]:g} {value[1]:g}", ctx, param)
    return value


def given(**kw) -> dict:
    """The options the user gave (click passes None for the rest), for `latentlab.config.merge`."""
    return {k: v for k, v in kw.items() if v is not None}


json_option = click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout.")

tokenizer_option = click.option(
    "--tokenizer", "tokenizers", multiple=True, required=True, metavar="[LABEL=]SPEC",
    help="A latent store, store set, tokenizer run, workspace name, diffusers:PATH or "
         "python:MODULE:CALLABLE[:ARG=VALUE,...] (see `latentlab tokenizers`); repeat for several.")


def emit(summary: Any, as_json: bool, text: Callable[[Any], str] | str | None = None) -> None:
    """Print `summary` as JSON, or as human text (`text(summary)` or a string)."""
    if as_json:
        click.echo(to_json(summary))
    elif text is not None:
        click.echo(text(summary) if callable(text) else text)
