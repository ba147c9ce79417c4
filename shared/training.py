"""The one training loop: victims and knockoffs both use it.

Data is held as uint8 tensors (N, 3, H, W); batches are augmented on the fly (random crop with
padding, optional flip) on the training device. The model kept is the one with the best
validation accuracy (or, with `keep_best=False`, the last epoch's), so no test data ever chooses
a checkpoint.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from shared.device import autocast
from shared.errors import TestbedError

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 array -> (N, 3, H, W) uint8 tensor."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()


def augment(x: torch.Tensor, pad: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """Per-image random translation (reflect padding) and horizontal flip of a float batch."""
    n, _, h, w = x.shape
    if pad > 0:
        padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
        dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(x.device)
        dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(x.device)
        rows = (torch.arange(h, device=x.device)[None, :] + dy[:, None])[:, None, :, None]
        cols = (torch.arange(w, device=x.device)[None, :] + dx[:, None])[:, None, None, :]
        batch = torch.arange(n, device=x.device)[:, None, None, None]
        chan = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
        x = padded[batch, chan, rows, cols]
    if flip:
        mask = (torch.rand(n, generator=generator) < 0.5).to(x.device)
        x = torch.where(mask[:, None, None, None], x.flip(3), x)
    return x


def one_cycle(total_steps: int, warmup_fraction: float = 0.25) -> Callable[[int], float]:
    """Linear warm-up to the peak rate, then linear decay to zero; sane for any step count."""
    warmup = max(1, int(total_steps * warmup_fraction))
    decay = max(1, total_steps - warmup)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / decay)

    return factor


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 256
    lr: float = 0.2
    weight_decay: float = 5e-4
    pad: int = 4
    flip: bool = True
    seed: int = 0
    amp: bool = True
    progress: bool = True
    description: str = "train"
    keep_best: bool = True
    """False: keep the last epoch's weights (validation is still measured and reported)."""

    def __post_init__(self) -> None:
        check_schedule(self.epochs, self.batch_size, self.lr)


def check_schedule(epochs: int, batch_size: int, lr: float) -> None:
    """Refuse a schedule that trains nothing (0 epochs wrote an untrained model, exit 0)."""
    for name, value in (("epochs", epochs), ("batch size", batch_size), ("learning rate", lr)):
        if not value > 0:
            raise TestbedError(f"the {name} must be above 0, not {value}")


@dataclass
class FitResult:
    best_epoch: int
    """The epoch whose weights were kept (the last one with `keep_best=False`)."""
    best_val_accuracy: float
    """Those weights' validation accuracy (-1 without validation data)."""
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0


def fit(
    model: nn.Module,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    loss_fn: LossFn,
    config: TrainConfig,
    device: torch.device,
    x_val: torch.Tensor | None = None,
    val_labels: torch.Tensor | None = None,
) -> FitResult:
    """SGD (Nesterov), one-cycle learning rate; keeps the weights best on validation, or the
    last epoch's (`config.keep_best`)."""
    start = time.perf_counter()
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    model.to(device).to(memory_format=torch.channels_last)
    params_decay = [p for p in model.parameters() if p.ndim > 1]
    params_other = [p for p in model.parameters() if p.ndim <= 1]
    optimizer = torch.optim.SGD(
        [
            {"params": params_decay, "weight_decay": config.weight_decay},
            {"params": params_other, "weight_decay": 0.0},
        ],
        lr=config.lr,
        momentum=0.9,
        nesterov=True,
    )
    n = len(x_train)
    steps_per_epoch = max(1, (n + config.batch_size - 1) // config.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, one_cycle(config.epochs * steps_per_epoch, warmup_fraction=0.25)
    )
    best_state, best_acc, best_epoch = None, -1.0, -1
    history: list[dict] = []
    bar = tqdm(range(config.epochs), desc=config.description, disable=not config.progress)
    for epoch in bar:
        model.train()
        order = torch.randperm(n, generator=generator)
        # summed on the device and read once an epoch: a read every step would make the CPU
        # wait for the GPU's step before it may queue the next one
        total_loss, seen = torch.zeros((), device=device), 0
        for s in range(steps_per_epoch):
            idx = order[s * config.batch_size : (s + 1) * config.batch_size]
            if len(idx) < 2:
                continue
            xb = x_train[idx].to(device, non_blocking=True).float().div_(255)
            xb = augment(xb, config.pad, config.flip, generator)
            xb = xb.contiguous(memory_format=torch.channels_last)
            yb = y_train[idx].to(device, non_blocking=True)
            with autocast(device, config.amp):
                logits = model(xb)
            loss = loss_fn(logits.float(), yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total_loss += loss.detach() * len(idx)
            seen += len(idx)
        record = {"epoch": epoch + 1, "train_loss": float(total_loss) / max(seen, 1)}
        if x_val is not None and val_labels is not None and len(x_val):
            acc = accuracy(model, x_val, val_labels, device, amp=config.amp)
            record["val_accuracy"] = acc
            if not config.keep_best:
                best_acc = acc
            elif acc > best_acc:
                best_acc, best_epoch = acc, epoch + 1
                best_state = copy.deepcopy(model.state_dict())
        history.append(record)
        bar.set_postfix({k: round(v, 4) for k, v in record.items() if k != "epoch"})
    if best_state is not None:
        model.load_state_dict(best_state)
    else:
        best_epoch = config.epochs
    model.eval()
    return FitResult(best_epoch, best_acc, history, time.perf_counter() - start)


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    x: torch.Tensor,
    device: torch.device,
    batch_size: int = 512,
    amp: bool = True,
) -> torch.Tensor:
    """Logits (float32, on CPU) for a uint8 image tensor (N, 3, H, W), in eval mode."""
    was_training = model.training
    model.eval()
    out = []
    for s in range(0, len(x), batch_size):
        xb = x[s : s + batch_size].to(device).float().div_(255)
        xb = xb.contiguous(memory_format=torch.channels_last)
        with autocast(device, amp):
            out.append(model(xb).float().cpu())
    model.train(was_training)
    if not out:
        return torch.empty(0, getattr(model, "num_classes", 0))
    return torch.cat(out)


def accuracy(
    model: nn.Module, x: torch.Tensor, labels: torch.Tensor, device: torch.device, amp: bool = True
) -> float:
    preds = predict_logits(model, x, device, amp=amp).argmax(1)
    return float((preds == labels.cpu()).float().mean())


def dataset_stats(x: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of a uint8 image tensor, for the model's normalization."""
    sample = x[: min(len(x), 10_000)].float().div(255)
    mean = sample.mean(dim=(0, 2, 3))
    std = sample.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return mean.tolist(), std.tolist()
