"""EF regressor: torchvision's R(2+1)D-18 video ResNet with a one-output head that predicts EF in %.

``width=64`` is exactly torchvision's ``r2plus1d_18`` (same layers and parameter names, so its Kinetics-400
weights load); smaller widths scale every layer's channels (64/128/256/512 -> w/2w/4w/8w) for CPU demos.
Input ``(B, C=3, T, H, W)`` float in [0, 1]; output ``(B,)`` EF in %.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.models.video import R2Plus1D_18_Weights
from torchvision.models.video.resnet import BasicBlock, Conv2Plus1D, VideoResNet

from echodiff import weights
from echodiff.data.transforms import resize

#: Architectures this module builds, for checkpoints and error messages.
ARCHITECTURES = ("r2plus1d_18",)


class _Stem(nn.Sequential):
    """R(2+1)D stem at any width: a (1, 7, 7) spatial then a (3, 1, 1) temporal convolution."""

    def __init__(self, width: int):
        mid = 45 * width // 64  # torchvision's 45 mid-planes at width 64
        super().__init__(
            nn.Conv3d(3, mid, (1, 7, 7), (1, 2, 2), (0, 3, 3), bias=False), nn.BatchNorm3d(mid), nn.ReLU(inplace=True),
            nn.Conv3d(mid, width, (3, 1, 1), (1, 1, 1), (1, 0, 0), bias=False), nn.BatchNorm3d(width),
            nn.ReLU(inplace=True),
        )


class EFRegressor(nn.Module):
    """R(2+1)D-18 at ``width`` with a linear EF head whose bias starts at ``bias`` (EF %, the training mean).

    Input is always video in [0, 1]; ``mean``/``std`` (per channel, [0, 1] scale) normalise it inside the model,
    so a regressor trained with dataset statistics (EchoNet-Dynamic's recipe) is used like any other.
    """

    def __init__(self, width: int = 64, bias: float = 55.6, mean: tuple[float, ...] = (0.0, 0.0, 0.0),
                 std: tuple[float, ...] = (1.0, 1.0, 1.0)):
        super().__init__()
        self.config = {"arch": "r2plus1d_18", "width": int(width), "bias": float(bias),
                       "mean": [float(m) for m in mean], "std": [float(s) for s in std]}
        self.register_buffer("input_mean", torch.tensor(self.config["mean"]).view(1, 3, 1, 1, 1))
        self.register_buffer("input_std", torch.tensor(self.config["std"]).view(1, 3, 1, 1, 1))
        net = VideoResNet(BasicBlock, [Conv2Plus1D] * 4, [2, 2, 2, 2], lambda: _Stem(64), num_classes=1)
        if width != 64:
            net.inplanes = width
            net.stem = _Stem(width)
            net.layer1 = net._make_layer(BasicBlock, Conv2Plus1D, width, 2, stride=1)
            net.layer2 = net._make_layer(BasicBlock, Conv2Plus1D, 2 * width, 2, stride=2)
            net.layer3 = net._make_layer(BasicBlock, Conv2Plus1D, 4 * width, 2, stride=2)
            net.layer4 = net._make_layer(BasicBlock, Conv2Plus1D, 8 * width, 2, stride=2)
            for m in net.modules():  # torchvision's initialisation, for the re-built layers
                if isinstance(m, nn.Conv3d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                elif isinstance(m, nn.BatchNorm3d):
                    nn.init.ones_(m.weight)
                    nn.init.zeros_(m.bias)
        net.fc = nn.Linear(8 * width, 1)
        with torch.no_grad():
            net.fc.bias.fill_(bias)
        self.model = net

    def features(self, video: torch.Tensor) -> torch.Tensor:
        """``(B, 3, T, H, W)`` in [0, 1] -> the pooled features the EF head reads, ``(B, 8 * width)``."""
        if video.ndim != 5 or video.shape[1] != 3:
            raise ValueError(f"EFRegressor expects (B, 3, T, H, W), got {tuple(video.shape)}")
        net = self.model
        x = net.stem((video - self.input_mean) / self.input_std)
        x = net.layer4(net.layer3(net.layer2(net.layer1(x))))
        return net.avgpool(x).flatten(1)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """``(B, 3, T, H, W)`` in [0, 1] -> EF ``(B,)`` in %."""
        return self.model.fc(self.features(video)).squeeze(1)


def kinetics_weights_path() -> Path:
    """Where torchvision keeps the Kinetics-400 R(2+1)D-18 weights: ``$TORCH_HOME/hub/checkpoints/<file>``."""
    return weights.cache_path(os.path.basename(R2Plus1D_18_Weights.KINETICS400_V1.url))


def build_ef_regressor(width: int = 64, bias: float = 55.6, pretrained: str | os.PathLike | None = None,
                       mean: tuple[float, ...] = (0.0, 0.0, 0.0), std: tuple[float, ...] = (1.0, 1.0, 1.0)
                       ) -> EFRegressor:
    """Build the regressor; ``pretrained="kinetics"`` loads torchvision's Kinetics-400 weights from the local
    torch cache (no download), a path loads that file; the EF head is always new.

    Raises ``FileNotFoundError`` naming the file and where to put it when the weights are absent.
    """
    model = EFRegressor(width, bias, mean, std)
    if pretrained is None or pretrained is False:
        return model
    if width != 64:
        raise ValueError(f"Kinetics weights exist for width 64 only, got width={width}")
    purpose = "pretrained: kinetics (set pretrained: null to start from random weights)"
    path = weights.require(kinetics_weights_path().name, R2Plus1D_18_Weights.KINETICS400_V1.url, purpose,
                           None if str(pretrained) == "kinetics" else pretrained)
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    missing, unexpected = model.model.load_state_dict(state, strict=False)
    if unexpected or set(missing) != {"fc.weight", "fc.bias"}:
        raise ValueError(f"{path}: not R(2+1)D-18 weights (missing {missing[:5]}, unexpected {unexpected[:5]})")
    return model


def regressor_from_checkpoint(checkpoint: dict[str, Any], source: str = "checkpoint") -> EFRegressor:
    """Rebuild a regressor from a checkpoint dict holding ``model_config`` and ``model`` (state dict)."""
    config = checkpoint.get("model_config")
    if not isinstance(config, dict) or config.get("arch") not in ARCHITECTURES:
        raise ValueError(f"{source}: not an echodiff EF-regressor checkpoint (model_config={config!r})")
    model = EFRegressor(config["width"], config["bias"], config.get("mean", (0.0,) * 3), config.get("std", (1.0,) * 3))
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as exc:
        raise ValueError(f"{source}: weights do not fit {config} ({str(exc).splitlines()[0]})") from exc
    train = checkpoint.get("train_config") or {}
    model.clip_spec = {k: train[k] for k in ("frames", "fps", "image_size") if train.get(k) is not None}
    model.train_config = dict(train)  # the settings it was trained with ({} for a checkpoint that has none)
    return model


@torch.no_grad()
def regress_ef(model: EFRegressor, videos: torch.Tensor, fps: float | None = None, features: bool = False,
               batch_size: int = 16) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """EF in % ``(B,)`` of videos ``(B, 3, T, H, W)`` in [0, 1]; with ``features``, also the pooled features
    the EF head reads, ``(B, 8 * width)``.

    Videos are resized to the size the regressor was trained at; their length and frame rate must match its
    training clips (``model.clip_spec``, read from the checkpoint), since EF is read from the motion.
    """
    spec = getattr(model, "clip_spec", {})
    if videos.ndim != 5 or videos.shape[1] != 3:
        raise ValueError(f"videos must be (B, 3, T, H, W) in [0, 1], got {tuple(videos.shape)}")
    if "frames" in spec and videos.shape[2] != spec["frames"]:
        raise ValueError(f"the EF regressor was trained on {spec['frames']}-frame clips, got {videos.shape[2]} "
                         "frames: use a regressor trained on the generator's clip length and frame rate")
    if fps is not None and spec.get("fps") is not None and abs(float(fps) - float(spec["fps"])) > 1e-6:
        raise ValueError(f"the EF regressor was trained on clips at {spec['fps']} fps, got {fps} fps")
    device = next(model.parameters()).device
    model.eval()
    feats = []
    for chunk in videos.split(batch_size):
        chunk = resize(chunk.to(device), spec["image_size"]) if "image_size" in spec else chunk.to(device)
        feats.append(model.features(chunk).float())
    feats = torch.cat(feats)
    ef = model.model.fc(feats).squeeze(1).cpu()
    return (ef, feats.cpu()) if features else ef
