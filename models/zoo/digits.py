"""Training the compression cascade's pair (compact and full classifiers) on scikit-learn's digits.

This module owns the one real, labelled data set the zoo trains on and the training recipe. The
data are the 1,797 8x8 grey-scale handwritten digits that scikit-learn ships (UCI optical
recognition of handwritten digits), so nothing is downloaded. The split is a fixed stratified
75/25 split; training is deterministic: a seeded generator for initialisation and batch order,
one intra-op thread while training (the thread pool's reduction order would otherwise vary), and
a fixed number of epochs with Adam. Both models train in a few seconds on one core.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from models.zoo.arch import ARCHITECTURES

__all__ = ["DigitsData", "accuracy", "load", "train"]

SEED = 0
EPOCHS = 40
BATCH = 64
LR = 3e-3


@dataclass(frozen=True)
class DigitsData:
    """Pixels scaled to [0, 1] as ``[n, 1, 8, 8]`` float32, labels ``[n]`` int64."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def load() -> DigitsData:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=SEED, stratify=y)
    return DigitsData(x_train, y_train, x_test, y_test)


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    model.eval()
    with torch.no_grad():
        pred = model(torch.from_numpy(x)).argmax(1).numpy()
    return float((pred == y).mean())


def train(name: str, data: DigitsData | None = None) -> nn.Sequential:
    """Train ``digits_compact`` or ``digits_full`` from a fixed seed; the same call gives the same weights."""
    data = data or load()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(SEED)
        model = ARCHITECTURES[name]()
        gen = torch.Generator().manual_seed(SEED)
        x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
        opt = torch.optim.Adam(model.parameters(), lr=LR)
        loss_fn = nn.CrossEntropyLoss()
        model.train()
        for _ in range(EPOCHS):
            order = torch.randperm(len(x), generator=gen)
            for start in range(0, len(x), BATCH):
                idx = order[start : start + BATCH]
                opt.zero_grad()
                loss_fn(model(x[idx]), y[idx]).backward()
                opt.step()
        return model.eval()
    finally:
        torch.set_num_threads(threads)
