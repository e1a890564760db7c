"""What the fine-tuned encoders (the tagger and the relation classifier) share: the training
loop, how annotations mix with extra examples, and the metadata file of a saved model directory."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from clinie import __version__
from clinie.clock import utc_now

CONFIG_FILE = "clinie.json"
#: The most optimiser steps a default training takes, whatever the data's size: 20 epochs of 100
#: sentences are 260 steps (batch 8), but 40 long case reports would be 2,820 (about 50 minutes
#: on 2 cores); past this budget, more text means fewer epochs, not more time.
STEP_BUDGET = 300
EPOCHS = 20  # the default number of epochs...
MIN_STEPS = 100  # ...raised for small training sets until training takes this many optimiser steps
#: The share of an epoch the annotations keep when extra examples (a teacher's sentences, a
#: sample of the pairs a listed file leaves out) outnumber them (``annotated_repeats``).
ANNOTATED_SHARE = 0.5
Example = TypeVar("Example")


def annotated_repeats(annotated: int, extra: int, share: float = ANNOTATED_SHARE) -> int:
    """How many times each of ``annotated`` examples enters an epoch beside ``extra`` ones that
    are not annotations (a teacher's labels, presumed negatives), so that the annotations make
    at least ``share`` of it (once when they already do): thousands of extra examples would
    otherwise drown a hundred annotations.

    >>> annotated_repeats(100, 2000), annotated_repeats(100, 40), annotated_repeats(10, 0)
    (20, 1, 1)
    """
    return max(1, math.ceil(share / (1 - share) * extra / max(annotated, 1)))


def planned_steps(n_examples: int, *, epochs: int, batch_size: int, max_steps: int | None = None) -> int:
    """The optimiser steps ``fine_tune`` takes: ``epochs`` passes over ``n_examples`` in batches,
    at most ``max_steps`` (told beforehand, so that a caller training several times can report
    its progress over all of them).

    >>> planned_steps(100, epochs=20, batch_size=8), planned_steps(100, epochs=20, batch_size=8, max_steps=50)
    (260, 50)
    """
    planned = math.ceil(n_examples / batch_size) * epochs
    return planned if max_steps is None else min(planned, max_steps)


def default_epochs(n_examples: int, *, batch_size: int, epochs: int | None) -> int:
    """``epochs`` when asked for, or by default ``EPOCHS`` and at least ``MIN_STEPS`` steps: a new
    head needs steps, and a few examples are few batches.

    >>> default_epochs(16, batch_size=8, epochs=None), default_epochs(800, batch_size=8, epochs=None)
    (50, 20)
    """
    batches = math.ceil(n_examples / batch_size)
    return epochs or max(EPOCHS, math.ceil(MIN_STEPS / max(batches, 1)))


def epochs_option(epochs: int) -> dict[str, Any]:
    """``epochs`` (``CLINIE_ENCODER_EPOCHS``) as the encoders' keyword when set, else none: 0 leaves
    them their default (``default_epochs``).

    >>> epochs_option(3), epochs_option(0)
    ({'epochs': 3}, {})
    """
    return {"epochs": epochs} if epochs else {}


def step_budget(*, epochs: int | None, max_steps: int | None) -> int | None:
    """``max_steps`` when given (it caps explicit epochs too), else ``STEP_BUDGET`` unless the
    epochs were given."""
    if max_steps is not None:
        return max_steps
    return None if epochs else STEP_BUDGET


def fine_tune(parameters: Sequence[Any], examples: list[Example], batch_loss: Callable[[list[Example]], Any], *,
              epochs: int, learning_rate: float, batch_size: int, seed: int, max_steps: int | None = None,
              progress: bool = False, desc: str = "fine-tuning",
              on_step: Callable[[int, int], None] | None = None) -> bool:
    """AdamW (weight decay 0.01), 10 % linear warm-up then linear decay, gradients clipped at 1;
    ``examples`` are reshuffled in place every epoch by a seeded generator, so the same seed
    and data give the same model. ``batch_loss`` returns the loss of a batch of examples.
    ``epochs`` passes over the data, stopping after ``max_steps`` optimiser steps if given (the
    schedule spans the steps actually taken). ``on_step(done, total)`` is called after every
    optimiser step (what a server shows of a training in flight). True when ``max_steps`` cut
    the epochs short."""
    import torch
    from tqdm.auto import tqdm
    from transformers import get_linear_schedule_with_warmup

    parameters = list(parameters)
    planned = planned_steps(len(examples), epochs=epochs, batch_size=batch_size)
    steps = planned_steps(len(examples), epochs=epochs, batch_size=batch_size, max_steps=max_steps)
    optimizer = torch.optim.AdamW(parameters, lr=learning_rate, weight_decay=0.01)
    schedule = get_linear_schedule_with_warmup(optimizer, int(0.1 * steps), steps)
    shuffler = random.Random(seed)
    taken = 0
    with tqdm(total=steps, desc=desc, unit="batch", disable=not progress) as bar:
        while taken < steps:
            shuffler.shuffle(examples)
            for b in range(0, len(examples), batch_size):
                if taken == steps:
                    break
                taken += 1
                loss = batch_loss(examples[b : b + batch_size])
                loss.backward()
                torch.nn.utils.clip_grad_norm_(parameters, 1.0)
                optimizer.step()
                schedule.step()
                optimizer.zero_grad()
                bar.update()
                bar.set_postfix(loss=f"{loss.item():.3f}")
                if on_step is not None:
                    on_step(taken, steps)
    return steps < planned


def write_meta(directory: Path, kind: str, **fields: Any) -> None:
    """``clinie.json``: what a saved model is, what it was trained from, by which clinie, when."""
    meta = {"kind": kind, **fields, "clinie_version": __version__,
            "created_at": utc_now()}
    (directory / CONFIG_FILE).write_text(json.dumps(meta, indent=2))


def read_meta(directory: Path, kind: str) -> dict[str, Any]:
    meta = json.loads((directory / CONFIG_FILE).read_text())
    if meta.get("kind") != kind:
        raise ValueError(f"{directory} holds a {meta.get('kind')!r}, not a {kind!r}")
    return meta
