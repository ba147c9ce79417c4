"""The OOD baselines Atli et al. compare with, computed on the victim model itself.

Every score is "higher = more in-distribution", as in the papers that define them:
- max softmax probability (Hendrycks & Gimpel, 2017);
- ODIN (Liang et al., 2018): max softmax at temperature T after a small input step that raises
  it (T = 1000, eps = 0.0014 in [0, 1] pixel units, the paper's CIFAR defaults; not tuned on
  OOD data, which the baselines are not supposed to see);
- Mahalanobis (Lee et al., 2018): minus the smallest Mahalanobis distance of the penultimate
  features to the class means, with one tied covariance fitted on the victim's training data
  (the penultimate-layer variant, without input preprocessing or a layer ensemble);
- energy (Liu et al., 2020): T * logsumexp(logits / T), T = 1;
- kNN (Sun et al., 2022): minus the distance of the L2-normalized penultimate features to their
  k-th nearest neighbour among the victim's normalized training features (k = 50, the paper's
  CIFAR-10 setting with the full training set), the strongest simple baseline in OpenOOD.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from shared.models import Classifier
from shared.training import to_tensor

BASELINES = ("msp", "odin", "mahalanobis", "energy", "knn")


def msp(logits: torch.Tensor) -> np.ndarray:
    return torch.softmax(logits.double(), dim=1).max(dim=1).values.numpy()


def energy(logits: torch.Tensor, temperature: float = 1.0) -> np.ndarray:
    return (temperature * torch.logsumexp(logits.double() / temperature, dim=1)).numpy()


def odin(
    model: Classifier, x: torch.Tensor, temperature: float = 1000.0, epsilon: float = 0.0014
) -> np.ndarray:
    """ODIN score of a float [0, 1] batch: one signed-gradient step, then tempered max softmax."""
    device = next(model.parameters()).device
    x = x.to(device).clone().requires_grad_(True)
    logits = model(x) / temperature
    loss = torch.nn.functional.cross_entropy(logits, logits.argmax(dim=1))
    (grad,) = torch.autograd.grad(loss, x)
    with torch.no_grad():
        x2 = (x - epsilon * grad.sign()).clamp(0, 1)
        scores = torch.softmax(model(x2).double() / temperature, dim=1).max(dim=1).values
    return scores.cpu().numpy()


@dataclass
class Mahalanobis:
    """Class means and the tied precision matrix of the victim's penultimate features."""

    means: np.ndarray
    precision: np.ndarray

    @classmethod
    def fit(cls, features: np.ndarray, labels: np.ndarray) -> Mahalanobis:
        f = features.astype(np.float64)
        classes = np.unique(labels)
        means = np.stack([f[labels == c].mean(axis=0) for c in classes])
        centred = f - means[np.searchsorted(classes, labels)]
        cov = centred.T @ centred / len(f)
        cov += 1e-6 * np.trace(cov) / len(cov) * np.eye(len(cov))
        return cls(means, np.linalg.pinv(cov))

    def score(self, features: np.ndarray) -> np.ndarray:
        f = features.astype(np.float64)
        dist = np.stack(
            [(((f - mu) @ self.precision) * (f - mu)).sum(axis=1) for mu in self.means], axis=1
        )
        return -dist.min(axis=1)


@dataclass
class KNN:
    """The victim's L2-normalized training features; score = -(distance to the k-th nearest)."""

    bank: torch.Tensor
    k: int = 50

    @classmethod
    def fit(cls, features: np.ndarray, k: int = 50) -> KNN:
        return cls(_normalize(torch.from_numpy(np.asarray(features, dtype=np.float32))), k)

    def score(self, features: np.ndarray, chunk: int = 1024) -> np.ndarray:
        q = _normalize(torch.from_numpy(np.asarray(features, dtype=np.float32)))
        k = min(self.k, len(self.bank))
        out = []
        for s in range(0, len(q), chunk):
            sim = q[s : s + chunk] @ self.bank.T
            kth = sim.topk(k, dim=1).values[:, -1].double()
            out.append(-torch.sqrt((2 - 2 * kth).clamp_min(0)))
        return torch.cat(out).numpy() if out else np.empty(0)


def _normalize(f: torch.Tensor) -> torch.Tensor:
    return f / f.norm(dim=1, keepdim=True).clamp_min(1e-12)


@dataclass
class BaselineFit:
    """What the feature baselines learn from the victim's training data, fitted once."""

    mahalanobis: Mahalanobis
    knn: KNN

    @classmethod
    def fit(cls, features: np.ndarray, labels: np.ndarray, k: int = 50) -> BaselineFit:
        return cls(Mahalanobis.fit(features, labels), KNN.fit(features, k))


def victim_outputs(
    model: Classifier, images: np.ndarray, batch_size: int = 256, progress: bool = True
) -> tuple[np.ndarray, torch.Tensor]:
    """Penultimate features and logits (no autocast, so scores are exact) of uint8 images."""
    device = next(model.parameters()).device
    feats, logits = [], []
    with torch.no_grad():
        for s in tqdm(range(0, len(images), batch_size), disable=not progress, leave=False):
            x = to_tensor(images[s : s + batch_size]).float().div_(255).to(device)
            f = model.features(x)
            feats.append(f.float().cpu())
            logits.append(model.head(f).float().cpu())
    return torch.cat(feats).numpy(), torch.cat(logits)


def odin_scores(
    model: Classifier, images: np.ndarray, batch_size: int = 256, progress: bool = True
) -> np.ndarray:
    out = []
    for s in tqdm(range(0, len(images), batch_size), desc="odin", disable=not progress):
        out.append(odin(model, to_tensor(images[s : s + batch_size]).float().div_(255)))
    return np.concatenate(out)


def baseline_scores(
    model: Classifier, fitted: BaselineFit, images: np.ndarray, progress: bool = True
) -> dict[str, np.ndarray]:
    """Every baseline's in-distribution score for `images` (uint8 (N, H, W, 3))."""
    model.eval()
    features, logits = victim_outputs(model, images, progress=progress)
    scorers: dict[str, Callable[[], np.ndarray]] = {
        "msp": lambda: msp(logits),
        "odin": lambda: odin_scores(model, images, progress=progress),
        "mahalanobis": lambda: fitted.mahalanobis.score(features),
        "energy": lambda: energy(logits),
        "knn": lambda: fitted.knn.score(features),
    }
    return {name: scorers[name]() for name in BASELINES}
