"""What a task zoo asks of a generator, tensor by tensor: `python -m models.evaluation.task_zoo_stats ZOO`.

For every tensor: how much it varies between tasks and within a task, relative to the spread
the tokenizer normalizes by (the mean per-checkpoint std), and what accuracy the held-out
tasks keep when that tensor is replaced by the zoo average, or by the average moved only part
of the way towards the task's own tensor. A tensor whose task-specific part is small against
its spread, yet costs accuracy when averaged, is the one a generator must learn precisely
(docs/benchmarks, "Task-conditioned generation").
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from models.evaluation.tasks import Task, predict, zoo_tasks
from models.safefiles import load_safetensors
from models.zoo import digits
from models.zoo.architecture import add_trust_argument, command_trust
from models.zoo.store import load_zoo
from models.zoo.tasks import binary_labels

__all__ = ["tensor_spread"]

FRACTIONS = (0.0, 0.25, 0.5, 0.75, 1.0)


def tensor_spread(tasks: Sequence[Sequence[Mapping[str, Tensor]]], name: str) -> dict[str, float]:
    """Spread of tensor ``name`` over ``tasks`` (each a list of that task's state dicts).

    ``tensor_std``: mean per-checkpoint std (what the tokenizer divides by); ``across``: mean
    per-value std of the task means; ``within``: mean per-value std inside a task.
    """
    stacks = [torch.stack([sd[name].double().flatten() for sd in sds]) for sds in tasks]
    tensor_std = statistics.fmean(float(v.std(correction=0)) for s in stacks for v in s)
    across = float(torch.stack([s.mean(0) for s in stacks]).std(0).mean())
    within = statistics.fmean(float(s.std(0, correction=0).mean()) for s in stacks)
    return {"tensor_std": tensor_std, "across": across, "within": within}


def _states(zoo_path: str, task: Task) -> list[dict[str, Tensor]]:
    return [load_safetensors(f"{zoo_path}/{c.file}") for c in task.checkpoints]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m models.evaluation.task_zoo_stats", description=__doc__
    )
    parser.add_argument("zoo", help="a task zoo (rpg zoo build digits-tasks)")
    add_trust_argument(parser)
    args = parser.parse_args(argv)
    zoo = load_zoo(args.zoo, trust_builders=command_trust(args))
    tasks = zoo_tasks(zoo)
    training = [_states(args.zoo, t) for t in tasks if not t.heldout]
    heldout = [(t, _states(args.zoo, t)) for t in tasks if t.heldout]
    if zoo.dataset is None or not heldout:
        parser.error("the zoo needs a dataset and held-out tasks (rpg zoo build digits-tasks)")
    names = [n for n, v in training[0][0].items() if v.is_floating_point()]
    average = {n: torch.stack([sds[0][n] for sds in training]).mean(0) for n in names}
    split = digits.split_from_spec(zoo.dataset)
    module = zoo.build_module()

    def heldout_accuracy(replace: str | None, fraction: float) -> float:
        accs = []
        for task, sds in heldout:
            own = sds[0]
            state = dict(own)
            if replace is not None:
                state[replace] = average[replace] + fraction * (own[replace] - average[replace])
            pred = predict(module, [state], split.x_test)[0]
            accs.append(float((pred == binary_labels(split.y_test, task.mask)).float().mean()))
        return statistics.fmean(accs)

    print(f"{len(training)} training tasks, {len(heldout)} held out; spreads per value:")
    print(f"{'tensor':<16} {'tensor std':>10} {'across tasks':>16} {'within a task':>18}")
    for name in names:
        s = tensor_spread(training, name)
        print(
            f"{name:<16} {s['tensor_std']:>10.4f} {s['across']:>9.5f} ({s['across'] / s['tensor_std']:.3f})"
            f" {s['within']:>10.6f} ({s['within'] / s['tensor_std']:.4f})"
        )
    print(f"\nheld-out accuracy of the trained models: {heldout_accuracy(None, 1.0):.4f}")
    print("with one tensor = zoo average + f * (the task's own - average):")
    print(f"{'tensor':<16} " + " ".join(f"{'f=' + str(f):>7}" for f in FRACTIONS))
    for name in names:
        row = " ".join(f"{heldout_accuracy(name, f):>7.4f}" for f in FRACTIONS)
        print(f"{name:<16} {row}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
