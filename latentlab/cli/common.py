"""Shared click options and output helpers for the CLI modules."""

from __future__ import annotations

from typing import Any, Callable

import click

from latentlab.io import to_json

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


def parse_int_list(value: str, name: str) -> list[int]:
    """'1,2,5' -> [1, 2, 5]; anything else is a one-line usage error."""
    try:
        out = [int(v) for v in str(value).split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}", param_hint=name) from None
    if not out:
        raise click.BadParameter("give at least one value", param_hint=name)
    return out
