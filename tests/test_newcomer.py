"""A newcomer's first week (issue 35): the version flag, the first fine-tuning step's learning rate, ..."""

from __future__ import annotations

import pytest

from evolforge import __version__
from evolforge.cli import main
from evolforge.train.finetune import warmup_steps


def test_version_flag(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out.strip() == f"evolforge {__version__}"


@pytest.mark.parametrize("ratio, rows, kw, expected", [
    (0.03, 24, dict(epochs=1, max_steps=6, batch_size=4, grad_accum=1), 0),    # the shipped demo
    (0.5, 24, dict(epochs=1, max_steps=6, batch_size=4, grad_accum=1), 3),
    (0.1, 100, dict(epochs=2, max_steps=-1, batch_size=2, grad_accum=5), 2),  # 10 steps per epoch, 20 in all
    (0.0, 100, dict(epochs=1, max_steps=-1, batch_size=1, grad_accum=1), 0),
])
def test_warmup_steps_round_down(ratio, rows, kw, expected):
    assert warmup_steps(ratio, rows, **kw) == expected


def test_first_step_of_the_shipped_schedule_learns():
    """The scheduler transformers builds from the shipped finetune settings: step 1's learning rate is > 0."""
    import torch
    from transformers import get_scheduler

    from evolforge.core.params import load_params, load_section
    from report_fixture import REPO

    cfg = load_section(load_params(REPO / "params.yaml"), "finetune")
    total = cfg.max_steps if cfg.max_steps > 0 else 100
    warm = warmup_steps(cfg.warmup_ratio, 24, epochs=cfg.epochs, max_steps=cfg.max_steps, batch_size=cfg.batch_size,
                        grad_accum=cfg.grad_accum)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    scheduler = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=warm, num_training_steps=total)
    rates = []
    for _ in range(total):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates[0] == pytest.approx(cfg.lr) and all(r > 0 for r in rates)
    # the old rounding (a ratio transformers rounds up to one step) started at 0
    old = get_scheduler(cfg.lr_scheduler, torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr),
                        num_warmup_steps=1, num_training_steps=total)
    assert old.get_last_lr()[0] == 0.0
