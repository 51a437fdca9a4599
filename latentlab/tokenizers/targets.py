"""Auxiliary and alignment targets: one feature vector per image patch.

  hog                 histogram of oriented gradients as torch ops (Sobel, 9 unsigned orientation
                      bins, cells of min(8, patch) pixels, L2-normalised per cell); runs on any device
  pixels              the raw patch pixels
  torchscript:PATH    any TorchScript module mapping images (B, 3, S, S) in [-1, 1] to features
                      (B, L, D) tokens or (B, D, h, w) maps
  dinov2[:NAME_OR_PATH], clip[:...], siglip[:...]
                      vision teachers through timm / open_clip when installed, weights from a local
                      file or the library's cache (no download at run time)

A target is `Target(images) -> (B, N, D)` on the tokenizer's patch grid; `.dim` is D and `.name`
is the label recorded in run configs and tables (e.g. "hog", never "dinov2" for the HOG stand-in).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from latentlab.errors import LatentlabError
from latentlab.tokenizers.blocks import patchify

_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])


def to_gray(images: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, 1, H, W) luminance (ITU-R 601 for RGB)."""
    if images.shape[1] == 3:
        w = images.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        return (images * w).sum(1, keepdim=True)
    return images.mean(1, keepdim=True)


def sobel(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sobel gradients (gx, gy), each (B, 1, H, W), with replicate padding (a constant image gives 0)."""
    g = F.pad(to_gray(images), (1, 1, 1, 1), mode="replicate")  # (B, 1, H+2, W+2)
    kx = _SOBEL_X.to(images).view(1, 1, 3, 3)
    return F.conv2d(g, kx), F.conv2d(g, kx.transpose(2, 3))


def hog_cells(images: torch.Tensor, cell: int = 8, bins: int = 9, eps: float = 1e-6) -> torch.Tensor:
    """HOG per cell: (B, bins, H/cell, W/cell), each cell's histogram L2-normalised (zero stays zero)."""
    gx, gy = sobel(images.float())
    mag = torch.sqrt(gx**2 + gy**2 + 1e-12) * (gx.abs() + gy.abs() > 0)  # (B, 1, H, W)
    ang = torch.atan2(gy, gx) % math.pi  # unsigned orientation in [0, pi)
    pos = ang / math.pi * bins - 0.5  # bin centres at (k + 0.5) * pi / bins
    lo = torch.floor(pos)
    frac = pos - lo
    lo_i = lo.long() % bins
    hi_i = (lo_i + 1) % bins
    hist = torch.zeros(images.shape[0], bins, *images.shape[2:], device=images.device)  # (B, bins, H, W)
    hist.scatter_add_(1, lo_i, mag * (1 - frac))
    hist.scatter_add_(1, hi_i, mag * frac)
    cells = F.avg_pool2d(hist, cell) * cell * cell  # (B, bins, H/c, W/c) sums of magnitude
    norm = cells.norm(dim=1, keepdim=True)
    return cells / torch.where(norm > eps, norm, torch.ones_like(norm))


class Target(nn.Module):
    """Base class: images (B, C, H, W) in [-1, 1] -> per-patch targets (B, N, dim)."""

    name: str = "target"
    dim: int = 0


class HOGTarget(Target):
    """HOG features per patch: the (patch/cell)^2 cell histograms of the patch, concatenated."""

    def __init__(self, patch: int, channels: int, cell: int = 8, bins: int = 9):
        super().__init__()
        self.patch, self.cell, self.bins = patch, min(cell, patch), bins
        if patch % self.cell:
            raise LatentlabError(f"HOG cell size {self.cell} must divide the patch size {patch}")
        self.name = "hog"
        self.dim = bins * (patch // self.cell) ** 2

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        cells = hog_cells(images, self.cell, self.bins)  # (B, bins, H/c, W/c)
        return patchify(cells, self.patch // self.cell)  # (B, N, dim)


class PixelTarget(Target):
    """The patch pixels themselves."""

    def __init__(self, patch: int, channels: int):
        super().__init__()
        self.patch, self.name, self.dim = patch, "pixels", patch * patch * channels

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return patchify(images, self.patch)  # (B, N, p*p*C)


class TeacherTarget(Target):
    """A frozen vision network's features resized onto the tokenizer's patch grid."""

    def __init__(self, net: nn.Module, name: str, dim: int, grid: tuple[int, int], input_size: int = 224,
                 mean: tuple = (0.485, 0.456, 0.406), std: tuple = (0.229, 0.224, 0.225), prefix: int = 0,
                 normalize_input: bool = True):
        super().__init__()
        for q in net.parameters():  # works for ScriptModules too (they lack requires_grad_())
            q.requires_grad_(False)
        self.net = net.eval()
        self.name, self.dim, self.grid, self.input_size, self.prefix = name, dim, grid, input_size, prefix
        self.normalize_input = normalize_input
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float().expand(-1, 3, -1, -1) if images.shape[1] == 1 else images.float()
        x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        if self.normalize_input:
            x = ((x + 1) / 2 - self.mean) / self.std
        f = self.net(x)
        if isinstance(f, (tuple, list)):
            f = f[0]
        if f.ndim == 3:  # (B, L, D) tokens, maybe with prefix (cls/register) tokens
            f = f[:, self.prefix:]
            side = int(round(math.sqrt(f.shape[1])))
            if side * side != f.shape[1]:
                raise LatentlabError(f"teacher {self.name} returned {f.shape[1]} tokens, not a square grid; "
                                     "give a network that returns patch tokens or a feature map")
            f = f.transpose(1, 2).reshape(f.shape[0], f.shape[2], side, side)  # (B, D, s, s)
        f = F.interpolate(f.float(), size=self.grid, mode="bilinear", align_corners=False)  # (B, D, gh, gw)
        return f.flatten(2).transpose(1, 2)  # (B, N, D)


def _torchscript_teacher(path: str, grid: tuple[int, int], input_size: int) -> TeacherTarget:
    if not Path(path).is_file():
        raise LatentlabError(f"TorchScript teacher not found: {path}; give the path of a torch.jit.save file")
    try:
        net = torch.jit.load(path, map_location="cpu")
    except Exception as e:
        raise LatentlabError(f"{path} is not a TorchScript module ({type(e).__name__}); export it with torch.jit.save") from None
    with torch.no_grad():
        f = net(torch.zeros(1, 3, input_size, input_size))
    f = f[0] if isinstance(f, (tuple, list)) else f
    dim = f.shape[-1] if f.ndim == 3 else f.shape[1]
    return TeacherTarget(net, f"torchscript:{Path(path).name}", int(dim), grid, input_size, normalize_input=False)


_TIMM_NAMES = {"dinov2": "vit_base_patch14_dinov2.lvd142m"}
_OPEN_CLIP_NAMES = {"clip": ("ViT-B-16", "openai"), "siglip": ("ViT-B-16-SigLIP", "webli")}


def _timm_teacher(kind: str, arg: str | None, grid: tuple[int, int]) -> TeacherTarget:
    try:
        import timm
    except ImportError:
        raise LatentlabError(f"teacher {kind!r} needs timm: pip install 'latentlab[teachers]' "
                             "(or use --teacher hog, or torchscript:PATH)") from None
    name, path = _TIMM_NAMES[kind], None
    if arg and os.path.exists(os.path.expanduser(arg)):
        path = os.path.expanduser(arg)
    elif arg:
        name = arg
    try:
        if path:
            net = timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": path}, num_classes=0)
        else:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            net = timm.create_model(name, pretrained=True, num_classes=0)
    except Exception as e:
        raise LatentlabError(f"could not load {kind} weights for {name!r} ({type(e).__name__}); put the checkpoint "
                             f"file somewhere and pass --teacher {kind}:/path/to/weights (or pre-fill the Hugging Face "
                             "cache ~/.cache/huggingface); offline default: --teacher hog") from None
    size = net.pretrained_cfg.get("input_size", (3, 224, 224))[-1]
    return TeacherTarget(_Fn(net.forward_features, net), kind, net.num_features, grid, size,
                         prefix=getattr(net, "num_prefix_tokens", 1))


def _open_clip_teacher(kind: str, arg: str | None, grid: tuple[int, int]) -> TeacherTarget:
    try:
        import open_clip
    except ImportError:
        raise LatentlabError(f"teacher {kind!r} needs open_clip: pip install 'latentlab[teachers]' "
                             "(or use --teacher hog, or torchscript:PATH)") from None
    arch, tag = _OPEN_CLIP_NAMES[kind]
    pretrained = os.path.expanduser(arg) if arg else tag
    if arg and not os.path.exists(pretrained):
        raise LatentlabError(f"{kind} weights not found at {arg}; download the open_clip checkpoint for {arch} "
                             f"and pass --teacher {kind}:/path/to/open_clip_pytorch_model.bin")
    try:
        model = open_clip.create_model(arch, pretrained=pretrained)
    except Exception as e:
        raise LatentlabError(f"could not load {kind} weights ({type(e).__name__}); pass --teacher {kind}:/path/to/weights "
                             "or pre-fill the open_clip cache; offline default: --teacher hog") from None
    visual = model.visual
    visual.output_tokens = True

    def feats(x):
        return visual(x)[1]  # patch tokens (B, L, D)

    with torch.no_grad():
        dim = feats(torch.zeros(1, 3, 224, 224)).shape[-1]
    mean = getattr(visual, "image_mean", None) or (0.48145466, 0.4578275, 0.40821073)
    std = getattr(visual, "image_std", None) or (0.26862954, 0.26130258, 0.27577711)
    return TeacherTarget(_Fn(feats, visual), kind, int(dim), grid, 224, mean, std)


class _Fn(nn.Module):
    """Wrap a callable (and the module owning its weights) as a module."""

    def __init__(self, fn, owner: nn.Module):
        super().__init__()
        self.fn, self.owner = fn, owner

    def forward(self, x):
        return self.fn(x)


TARGET_KINDS = ("hog", "pixels", "torchscript", "dinov2", "clip", "siglip")
TEACHER_PACKAGES = {"dinov2": "timm", "clip": "open_clip", "siglip": "open_clip"}  # teacher kind -> module it needs


def make_target(spec: str, patch: int, channels: int, image_size: int) -> Target:
    """Build a target from its spec ("hog", "pixels", "torchscript:PATH", "dinov2[:PATH]", ...)."""
    kind, _, arg = spec.partition(":")
    grid = (image_size // patch, image_size // patch)
    if kind == "hog":
        return HOGTarget(patch, channels)
    if kind == "pixels":
        return PixelTarget(patch, channels)
    if kind == "torchscript":
        return _torchscript_teacher(os.path.expanduser(arg), grid, 224)
    if kind == "dinov2":
        return _timm_teacher(kind, arg or None, grid)
    if kind in ("clip", "siglip"):
        return _open_clip_teacher(kind, arg or None, grid)
    raise LatentlabError(f"unknown target {spec!r}; use one of {', '.join(TARGET_KINDS)} "
                         "(teachers as dinov2:PATH, clip:PATH, siglip:PATH, torchscript:PATH)")
