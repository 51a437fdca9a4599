"""Every kind of tokenizer latentlab can analyse, for `latentlab tokenizers`: built-in, registered plug-ins, diffusers."""

from __future__ import annotations

import importlib.util

from latentlab.tokenizers.external import CLASSES, PRETRAINED, SINGLE_FILE
from latentlab.tokenizers.config import ARCHS, SIZES
from latentlab.tokenizers.plugins import GROUP, registered_tokenizers

BUILT_IN_NOTES = {"ae": "plain autoencoder", "vae": "KL-VAE", "vavae": "VA-VAE (aligned to a teacher)",
                  "maetok": "MAETok (masking + auxiliary decoders)"}


def list_tokenizers() -> dict:
    """{'built_in': [...], 'registered': [...], 'diffusers': {...}}: what `--tokenizer` and study configs accept."""
    built_in = [{"name": n, "kind": "trainable", "sizes": list(SIZES), "about": BUILT_IN_NOTES.get(n, ""),
                 "spec": f"a run of `latentlab train-tokenizer --arch {n}`"} for n in ARCHS]
    built_in.append({"name": "pixels", "kind": "baseline", "sizes": [], "about": "raw pixels as (H*W, C) tokens",
                     "spec": "latentlab import-latents --dataset D --out STORE"})
    return {
        "built_in": built_in,
        "registered": registered_tokenizers(),
        "entry_point_group": GROUP,
        "diffusers": {"installed": importlib.util.find_spec("diffusers") is not None, "classes": list(CLASSES),
                      "pretrained": dict(PRETRAINED), "single_file_suffixes": list(SINGLE_FILE),
                      "spec": "diffusers:FOLDER | diffusers:FILE[:config=DIR] | diffusers:NAME_OR_REPO[:subfolder=vae]"},
        "python": {"spec": "python:MODULE:CALLABLE[:ARG=VALUE,...] (MODULE importable, or a .py file)"},
    }


def catalog_text(cat: dict) -> str:
    """The human-readable listing."""
    lines = ["built-in (train with `latentlab train-tokenizer`):"]
    lines += [f"  {t['name']:<8} {t['about']}" + (f" [sizes: {', '.join(t['sizes'])}]" if t["sizes"] else "")
              for t in cat["built_in"]]
    lines.append(f"registered plug-ins (entry-point group {cat['entry_point_group']}):")
    lines += [f"  {t['spec']:<24} {t['factory']}" + (f"  ({t['distribution']})" if t["distribution"] else "")
              for t in cat["registered"]] or ["  none installed"]
    d = cat["diffusers"]
    state = "installed" if d["installed"] else "not installed: pip install 'latentlab[external]'"
    lines.append(f"diffusers ({', '.join(d['classes'])}; {state}):")
    lines.append(f"  {d['spec']}")
    lines += [f"  diffusers:{k:<14} {v}" for k, v in d["pretrained"].items()]
    lines.append(f"your own code:\n  {cat['python']['spec']}")
    return "\n".join(lines)
