"""Feature extractors for Fréchet distances, behind a registry with one base class.

    inception            FID: the standard TF-ported Inception-v3 pool features, via torch-fidelity
    inception:WEIGHTS    the same with a local weights file (offline)
    dinov2[:vit-X-14]    FD-DINOv2 via torch-fidelity (default ViT-L/14, as in Stein et al. 2023)
    lenet                FD-lenet: a small CNN trained on the dataset's train split (offline stand-in)
    torchscript:PATH     any TorchScript network: float (N, C, H, W) in [-1, 1] -> (N, D) features,
                         or a tuple (features, logits)

Every extractor takes images as float (N, C, H, W) in [-1, 1] (the project's convention),
fixes the channel count and size for its network, and returns (features (N, D), logits (N, K)
or None). `metric` names the distance it gives ("fid" only for Inception), `is_metric` the
Inception-score variant when it is a classifier; `identity()` (with a weights hash) keys caches.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Callable

import torch

from latentlab.errors import LatentlabError
from latentlab.io import file_hash, workspace_root
from latentlab.metrics.images import fit_images
from latentlab.metrics.lenet import load_or_train_lenet
from latentlab.utils import get_device

FIDELITY_HINT = ("pip install 'latentlab[fid]' (torch-fidelity, which also needs a working torchvision "
                 "matching your torch)")
INCEPTION_WEIGHTS = "weights-inception-2015-12-05-6726825d.pth"


class FeatureExtractor:
    """Base class: subclasses set `name`, `metric`, `is_metric` and implement `_forward`."""

    name: str = "base"
    metric: str = "fd"                  # the distance's name in every output
    is_metric: str | None = None        # the Inception-score name when the network classifies
    channels: int | None = None         # input channels the network wants (None: any)
    image_size: int | None = None       # input size the network wants (None: any)
    dataset_classes: bool = False       # its logits are the dataset's own classes (conditional accuracy)

    def __init__(self, device: str | torch.device = "cpu"):
        self.device = torch.device(device)

    def identity(self) -> dict:
        """What makes these features these features (name and weights hash): the cache key."""
        raise NotImplementedError

    def describe(self) -> dict:
        """identity() plus facts a reader needs to judge the extractor."""
        return {**self.identity(), "metric": self.metric, "is_metric": self.is_metric}

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """Fit images (N, C, H, W) in [-1, 1] to the network's channel count and size, on its device."""
        return fit_images(images.to(self.device, torch.float32), self.channels, self.image_size, self.name)

    @torch.no_grad()
    def extract(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(features (N, D), logits (N, K) or None) as float32 on the extractor's device."""
        feats, logits = self._forward(self.prepare(images))
        return feats.float(), (None if logits is None else logits.float())


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] -> uint8 [0, 255], as torch-fidelity's networks expect."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


WEIGHTS_HINT = {
    "inception": (f"its weights ({INCEPTION_WEIGHTS}, 92 MB) are downloaded on first use into "
                  "$TORCH_HOME/hub/checkpoints (default ~/.cache/torch/hub/checkpoints); offline, copy the file "
                  "there or pass --extractor inception:PATH"),
    "dinov2": ("its code and weights come through torch.hub into $TORCH_HOME/hub (default ~/.cache/torch/hub: "
               "facebookresearch_dinov2_main/ and checkpoints/dinov2_*_pretrain.pth); offline, copy them there"),
}


def _import_fidelity(what: str):
    """Import torch_fidelity lazily, turning any failure into an install hint."""
    try:
        import torch_fidelity  # noqa: F401
        return torch_fidelity
    except Exception as e:  # ImportError, or torchvision failing to load its operators
        why = str(e).splitlines()[0] if str(e) else ""
        raise LatentlabError(f"the {what} extractor needs torch-fidelity, which could not be imported "
                             f"({type(e).__name__}: {why}); {FIDELITY_HINT}; {WEIGHTS_HINT[what]}; "
                             "or use --extractor lenet (FD-lenet, offline) or torchscript:PATH") from None


class InceptionExtractor(FeatureExtractor):
    """The standard FID network: torch-fidelity's Inception-v3 (2048-d pool3 features, 1008 logits)."""

    name, metric, is_metric, channels = "inception", "fid", "isc", 3

    def __init__(self, device: str | torch.device = "cpu", weights: str | None = None):
        super().__init__(device)
        _import_fidelity("inception")
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        weights = weights or os.environ.get("LATENTLAB_INCEPTION_WEIGHTS")
        if weights and not Path(weights).is_file():
            raise LatentlabError(f"Inception weights not found at {weights}; download {INCEPTION_WEIGHTS} "
                                 "from the torch-fidelity v0.2.0 release and give its path")
        self.weights_hash = file_hash(weights) if weights else INCEPTION_WEIGHTS
        try:
            self.net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                                   feature_extractor_weights_path=weights).to(self.device).eval()
        except Exception as e:
            raise LatentlabError(f"could not load the Inception weights ({type(e).__name__}); "
                                 f"{WEIGHTS_HINT['inception']}") from None

    def identity(self) -> dict:
        return {"name": "inception-v3-compat", "weights": self.weights_hash, "features": "2048"}

    def _forward(self, x):
        feats, logits = self.net(_to_uint8(x))        # (N, 2048), (N, 1008); resized to 299 inside
        return feats, logits


class DinoV2Extractor(FeatureExtractor):
    """FD-DINOv2: torch-fidelity's DINOv2 ViT (CLS features); loaded through torch.hub."""

    name, metric, channels = "dinov2", "fd_dinov2", 3
    VARIANTS = ("vit-s-14", "vit-b-14", "vit-l-14", "vit-g-14")

    def __init__(self, device: str | torch.device = "cpu", variant: str | None = None):
        super().__init__(device)
        variant = variant or "vit-l-14"
        if variant not in self.VARIANTS:
            raise LatentlabError(f"unknown DINOv2 variant {variant!r}; use one of {', '.join(self.VARIANTS)}")
        _import_fidelity("dinov2")
        from torch_fidelity.feature_extractor_dinov2 import FeatureExtractorDinoV2

        self.variant = variant
        try:
            self.net = FeatureExtractorDinoV2(f"dinov2-{variant}", ["dinov2"]).to(self.device).eval()
        except Exception as e:
            raise LatentlabError(f"could not load DINOv2 {variant} ({type(e).__name__}); "
                                 f"{WEIGHTS_HINT['dinov2']}") from None

    def identity(self) -> dict:
        return {"name": f"dinov2-{self.variant}", "weights": "torch.hub:facebookresearch/dinov2"}

    def _forward(self, x):
        return self.net(_to_uint8(x))[0], None       # (N, D)


class LeNetExtractor(FeatureExtractor):
    """FD-lenet: penultimate features of a small CNN trained on the dataset (see latentlab.metrics.lenet)."""

    name, metric, is_metric, dataset_classes = "lenet", "fd_lenet", "is_lenet", True

    def __init__(self, device: str | torch.device = "cpu", dataset: str = "mnist5k", image_size: int | None = None,
                 cache_root: str | os.PathLike | None = None, config=None):
        super().__init__(device)
        root = Path(cache_root) if cache_root is not None else workspace_root() / "extractors"
        self.net, self.record = load_or_train_lenet(dataset, root, image_size, config)
        self.net = self.net.to(self.device)
        self.channels, self.image_size = self.record["channels"], self.record["image_size"]

    def identity(self) -> dict:
        r = self.record
        return {"name": "lenet", "dataset": r["dataset"], "image_size": r["image_size"], "weights": r["weights_hash"]}

    def describe(self) -> dict:
        r = self.record
        return {**super().describe(), "test_accuracy": r["test_accuracy"], "n_test": r["n_test"],
                "n_train": r["n_train"], "seed": r["config"]["seed"], "path": r["path"]}

    def _forward(self, x):
        return self.net(x)                             # (N, feature_dim), (N, classes)


class TorchScriptExtractor(FeatureExtractor):
    """Any user network saved with torch.jit.save: float (N, C, H, W) in [-1, 1] -> features (or (features, logits))."""

    name, metric, is_metric = "torchscript", "fd_torchscript", "is_torchscript"  # IS only if it returns logits

    def __init__(self, device: str | torch.device = "cpu", path: str | None = None):
        super().__init__(device)
        if not path:
            raise LatentlabError("give the network's file as --extractor torchscript:PATH")
        p = Path(os.path.expanduser(path))
        if not p.is_file():
            raise LatentlabError(f"TorchScript extractor not found: {p}; save one with torch.jit.save")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)   # torch >= 2.9 deprecates TorchScript
                self.net = torch.jit.load(str(p), map_location=self.device).eval()
        except Exception as e:
            raise LatentlabError(f"{p} is not a TorchScript file ({type(e).__name__}); "
                                 "save it with torch.jit.save") from None
        self.path, self.weights_hash = str(p), file_hash(p)

    def identity(self) -> dict:
        return {"name": "torchscript", "file": Path(self.path).name, "weights": self.weights_hash}

    def _forward(self, x):
        out = self.net(x)
        feats, logits = (out[0], out[1]) if isinstance(out, (tuple, list)) else (out, None)
        if feats.ndim != 2:
            feats = feats.flatten(1)                   # (N, D)
        return feats, logits


EXTRACTORS: dict[str, Callable[..., FeatureExtractor]] = {
    "inception": lambda device, arg, **kw: InceptionExtractor(device, weights=arg),
    "dinov2": lambda device, arg, **kw: DinoV2Extractor(device, variant=arg),
    "lenet": lambda device, arg, **kw: LeNetExtractor(device, **kw),
    "torchscript": lambda device, arg, **kw: TorchScriptExtractor(device, path=arg),
}


def get_extractor(spec: str, dataset: str = "mnist5k", image_size: int | None = None,
                  device: str | torch.device | None = None, cache_root: str | os.PathLike | None = None,
                  ) -> FeatureExtractor:
    """Build an extractor from 'NAME' or 'NAME:ARG' ("lenet", "inception", "torchscript:net.pt", ...).

    `dataset` and `image_size` choose the data a `lenet` is trained on; the others ignore them.
    """
    name, _, arg = (spec or "").partition(":")
    if name not in EXTRACTORS:
        raise LatentlabError(f"unknown extractor {spec!r}; use one of inception, inception:WEIGHTS, "
                             "dinov2[:vit-s-14|vit-b-14|vit-l-14|vit-g-14], lenet, torchscript:PATH")
    if name == "lenet" and arg:
        raise LatentlabError("lenet takes no argument: it is trained on the --real dataset")
    return EXTRACTORS[name](get_device(device), arg or None, dataset=dataset, image_size=image_size,
                            cache_root=cache_root)
