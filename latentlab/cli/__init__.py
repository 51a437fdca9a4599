"""The `latentlab` command line: a click group; each command lives in a module of this package.

Every command parses options, calls one library function and prints a text summary or,
with --json, the summary as JSON. Bad input is a one-line `error: ...` and exit code 2.
"""

from __future__ import annotations

import os
import sys

import click

from latentlab.errors import LatentlabError


class _Group(click.Group):
    """A click group that turns LatentlabError and usage errors into one line and exit code 2."""

    def main(self, args=None, prog_name=None, **kw):  # noqa: D401
        try:
            rv = super().main(args=args, prog_name=prog_name or "latentlab", standalone_mode=False, **kw)
        except click.exceptions.Exit as e:
            sys.exit(e.exit_code)
        except (LatentlabError, click.ClickException) as e:
            msg = e.format_message() if isinstance(e, click.ClickException) else str(e)
            click.echo(f"error: {' '.join(msg.split())}", err=True)
            sys.exit(2)
        except OSError as e:  # the disk filled up, a folder became read-only, ... while a command was writing
            if isinstance(e, BrokenPipeError):  # `latentlab ... | head`: the reader left, nothing to report
                sys.exit(0)
            where = f" ({e.filename})" if e.filename else ""
            click.echo(f"error: {e.strerror or type(e).__name__}{where}; free space or choose another --out",
                       err=True)
            sys.exit(2)
        except click.Abort:
            click.echo("aborted", err=True)
            sys.exit(130)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        sys.exit(rv if isinstance(rv, int) else 0)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="latentlab")
def cli() -> None:
    """latentlab: is this latent space easy for a diffusion model to learn, and why?

    Train tokenizers and a SiT generator, extract latents, measure their structure
    (PCA + GMM NLL vs components, linear probes, kNN, UMAP) and relate it to SiT loss
    and gFID. Run `latentlab COMMAND --help` for each command.
    """
    os.environ.setdefault("PYTHONWARNINGS", "ignore::FutureWarning")
    if os.environ.get("WORLD_SIZE", "1") != "1":  # under torchrun every command sees its rank (this imports torch)
        from latentlab.utils import init_distributed_from_env

        init_distributed_from_env()


def main() -> None:
    """Console entry point."""
    cli.main()


# Commands register themselves on `cli` when their module is imported.
from latentlab.cli import data as _data  # noqa: E402,F401
from latentlab.cli import sit as _sit  # noqa: E402,F401
from latentlab.cli import tokenizers as _tokenizers  # noqa: E402,F401
from latentlab.cli import analysis as _analysis  # noqa: E402,F401
from latentlab.cli import metrics as _metrics  # noqa: E402,F401
from latentlab.cli import probe as _probe  # noqa: E402,F401
from latentlab.cli import diffusability as _diffusability  # noqa: E402,F401
from latentlab.cli import study as _study  # noqa: E402,F401
