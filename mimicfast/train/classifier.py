"""The training loop of the bundled Fashion-MNIST classifier (architecture: :mod:`mimicfast.classifier`)."""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from mimicfast.classifier import FashionCNN
from mimicfast.evaluate import accuracy
from mimicfast.seeding import derive_seed, generator
from mimicfast.train.common import (
    AUGMENT,
    DROPOUT,
    batches,
    export_safetensors,
    load_checkpoint,
    save_checkpoint,
)
from mimicfast.train.configs import ClassifierConfig
from mimicfast.train.data import fashion_mnist_tensors


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random horizontal flip and a random shift of up to 2 pixels (zero fill), per image."""
    n = x.shape[0]
    flip = torch.rand(n, generator=gen) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    padded = F.pad(x, (2, 2, 2, 2))
    dx = torch.randint(0, 5, (n,), generator=gen)
    dy = torch.randint(0, 5, (n,), generator=gen)
    rows = (dy[:, None] + torch.arange(32)[None, :])[:, None, :, None].expand(n, 1, 32, 36)
    x = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(32)[None, :])[:, None, None, :].expand(n, 1, 32, 32)
    return x.gather(3, cols)


def train_classifier(cfg: ClassifierConfig, run_dir: str | Path, export: str | Path | None = None,
                     data: tuple[torch.Tensor, torch.Tensor] | None = None,
                     test_data: tuple[torch.Tensor, torch.Tensor] | None = None, until: int | None = None) -> dict:
    """Train (or resume) the classifier in ``run_dir``; return ``{"step", "test_accuracy", "wall_s"}``.

    Adam with a cosine learning-rate decay to 0 over ``cfg.steps``; a checkpoint
    (``run_dir/classifier.pt``) every ``cfg.checkpoint_every`` steps and at the end. ``export`` writes
    the final weights as safetensors. ``data``/``test_data`` override Fashion-MNIST (tests). ``until`` stops
    after that many steps (a later call resumes); export and the test accuracy happen only at ``cfg.steps``.
    """
    torch.manual_seed(cfg.seed)
    ckpt_path = Path(run_dir) / "classifier.pt"
    x, y = data if data is not None else fashion_mnist_tensors("train")
    model = FashionCNN(cfg.width)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / cfg.steps)))
    start, wall = 0, 0.0
    if ckpt_path.is_file():
        state = load_checkpoint(ckpt_path)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start, wall = state["step"], state["wall_s"]

    def checkpoint(step: int) -> None:
        save_checkpoint(ckpt_path, {"model": model.state_dict(), "optimizer": opt.state_dict(),
                                    "scheduler": sched.state_dict(), "step": step, "wall_s": wall,
                                    "config": asdict(cfg)})

    stop = cfg.steps if until is None else min(until, cfg.steps)
    model.train()
    t0 = time.perf_counter()
    bar = tqdm(batches(x.shape[0], cfg.batch_size, cfg.seed, start, stop), total=cfg.steps,
               initial=start, desc="classifier", dynamic_ncols=True, disable=not sys.stderr.isatty())
    for step, idx in bar:
        torch.manual_seed(derive_seed(cfg.seed, DROPOUT, step))  # dropout, per step
        xb = augment(x[idx], generator(cfg.seed, AUGMENT, step))
        loss = F.cross_entropy(model(xb), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
        if (step + 1) % cfg.checkpoint_every == 0:
            wall += time.perf_counter() - t0
            t0 = time.perf_counter()
            checkpoint(step + 1)
    wall += time.perf_counter() - t0
    checkpoint(max(start, stop))
    if stop < cfg.steps:
        return {"step": max(start, stop), "wall_s": wall}
    xt, yt = test_data if test_data is not None else fashion_mnist_tensors("test")
    result = {"step": cfg.steps, "test_accuracy": accuracy(model, xt, yt), "wall_s": wall}
    if export is not None:
        export_safetensors(model.state_dict(), export, config={"width": cfg.width, **result})
    return result
