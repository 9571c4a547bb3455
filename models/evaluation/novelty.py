"""Evaluate generated models against their zoo: accuracy, and novelty (are they just copies?).

For every evaluated model (a generated one, a zoo checkpoint, or a zoo checkpoint plus Gaussian
noise) we report:

- accuracy on the zoo's test split (fraction 0..1);
- **max IoU**: the IoU of its wrong-prediction set (indices of the test examples it gets wrong)
  with that of the zoo checkpoint whose wrong set it overlaps most (the "nearest" by behaviour;
  ties go to the closest in L2). IoU of two empty sets is 1.0: two flawless models agree;
- **min L2**: the Euclidean distance to the closest zoo checkpoint in the normalized parameter
  space of a ``ParameterTokenizer`` fitted on the zoo (every tensor scaled by its zoo std, so
  large layers do not dominate by scale alone).

Reference rows put these numbers in context: the zoo itself (each checkpoint against the others,
leave-one-out) and each checkpoint plus noise of sigma 0.01 / 0.05 (against the zoo without the
checkpoint it came from). A generated model with max IoU 1.0 and min L2 near 0 is a copy; one
that sits between the zoo's own spread and the noised copies is new but zoo-like.

The baselines of Zeng et al. 2025 (``baselines``, scored by ``baseline_sets``: noise matched to
the generated accuracy, averages of k checkpoints, a per-value Gaussian) ask the sharper
question: does the generator make anything these cheap recipes cannot?

Everything here returns plain, JSON-safe dicts (non-finite floats become None);
``models.evaluation.plot`` draws them and ``rpg evaluate`` (``models.cli.evaluate``) prints them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from models.adapters.merge import AdaptedModule
from models.errors import EvaluationError
from models.evaluation.baseline_sets import baseline_settings, score_baselines
from models.evaluation.baselines import add_noise
from models.evaluation.generated import check_generated
from models.evaluation.metrics import (
    accuracy_summary,
    iou_matrix,
    l2_matrix,
    nearest,
    summary_stats,
)
from models.limits import DEFAULT_LIMITS
from models.safefiles import UnsafeFileError, inside, load_safetensors
from models.tokenizer import ParameterTokenizer
from models.zoo import digits
from models.zoo.store import Zoo, ZooError

__all__ = [
    "NOISE_SIGMAS",
    "add_noise",
    "check_generated",
    "evaluate_generated",
    "evaluate_state_dicts",
    "load_generated_dir",
    "noise_set_name",
    "normalized_vectors",
    "novelty_set",
    "wrong_predictions",
]

NOISE_SIGMAS: tuple[float, ...] = (0.01, 0.05)
# Below this many parameters, forward passes run single-threaded (see wrong_predictions).
_SMALL_MODEL = 1_000_000


# ---------------------------------------------------------------------------- models


@torch.no_grad()
def wrong_predictions(
    module: nn.Module,
    state_dicts: Sequence[Mapping[str, Tensor]],
    x: Tensor,
    y: Tensor,
    *,
    batch_size: int = 1024,
) -> Tensor:
    """Boolean ``(len(state_dicts), len(y))``: True where checkpoint i mispredicts example j.

    One module instance serves all checkpoints (``load_state_dict`` each); eval mode, no grad.
    """
    was_training = module.training
    module.eval()
    wrong = torch.zeros(len(state_dicts), len(y), dtype=torch.bool)
    threads = torch.get_num_threads()
    # Small models do too little work per op to amortise intra-op thread sync; on a busy CPU
    # the spinning threads made a digits-mlp forward 50x slower than one thread.
    if sum(p.numel() for p in module.parameters()) < _SMALL_MODEL:
        torch.set_num_threads(1)
    try:
        for i, sd in enumerate(state_dicts):
            module.load_state_dict(sd, strict=True)
            for start in range(0, len(y), batch_size):
                logits = module(x[start : start + batch_size])
                wrong[i, start : start + batch_size] = (
                    logits.argmax(1) != y[start : start + batch_size]
                )
    finally:
        module.train(was_training)
        torch.set_num_threads(threads)
    return wrong


def noise_set_name(sigma: float) -> str:
    """The novelty-set key of zoo checkpoints plus noise of ``sigma``, e.g. ``noise_0.01``."""
    return f"noise_{sigma:g}"


def normalized_vectors(
    tokenizer: ParameterTokenizer, state_dicts: Sequence[Mapping[str, Tensor]]
) -> tuple[Tensor, int]:
    """``(n, d)`` normalized vectors; a row of NaN (and a count) for unnormalizable models."""
    rows, bad = [], 0
    for sd in state_dicts:
        try:
            rows.append(tokenizer.normalized_vector(sd))
        except ValueError:  # NaN/inf weights or negative variances: no place in the space
            rows.append(torch.full((tokenizer.num_parameters,), math.nan))
            bad += 1
    return torch.stack(rows), bad


def novelty_set(
    names: Sequence[str],
    wrong: Tensor | None,
    vectors: Tensor,
    zoo_wrong: Tensor | None,
    zoo_vectors: Tensor,
    exclude: Sequence[int | None],
) -> dict[str, Any]:
    """One set's report: accuracy, max IoU and min L2 to the zoo (never column ``exclude[i]``)."""
    sim = None if wrong is None or zoo_wrong is None else iou_matrix(wrong, zoo_wrong)
    ious, iou_idx, l2, l2_idx = nearest(sim, l2_matrix(vectors, zoo_vectors), exclude)
    accs: list[float | None] = [None] * len(names)
    acc_summary = None
    if wrong is not None:
        n_test = wrong.shape[1]
        correct = [(n_test - w) / n_test for w in wrong.sum(1).tolist()]  # as digits.accuracy
        accs, acc_summary = list(correct), accuracy_summary(correct)
    # Unavailable figures (no test set) are lists of None, with a None summary.
    return {
        "n": len(names),
        "names": list(names),
        "accuracy": accs,
        "max_iou": ious,
        "nearest_by_iou": iou_idx,
        "min_l2": l2,
        "nearest_by_l2": l2_idx,
        "summary": {
            "accuracy": acc_summary,
            "max_iou": None if sim is None else summary_stats(ious),
            "min_l2": summary_stats(l2),
        },
    }


def evaluate_state_dicts(
    zoo_state_dicts: Sequence[Mapping[str, Tensor]],
    generated: Sequence[Mapping[str, Tensor]],
    *,
    module: nn.Module | None = None,
    data: tuple[Tensor, Tensor] | None = None,
    zoo_names: Sequence[str] | None = None,
    names: Sequence[str] | None = None,
    seed: int = 0,
    noise_sigmas: Sequence[float] = NOISE_SIGMAS,
    batch_size: int = 1024,
    baselines: bool = True,
) -> dict[str, Any]:
    """The evaluation report of ``generated`` against ``zoo_state_dicts`` (JSON-safe dict).

    ``module`` (an instance of the architecture) and ``data`` (test inputs, labels) enable
    accuracy and IoU; without them only L2 novelty is computed. Noise is seeded by ``seed``
    (one stream per sigma). Keys: ``zoo`` and ``generated`` (accuracy summaries or None),
    ``novelty`` (sets ``zoo_loo``, ``noise_<sigma>``..., ``generated``), ``per_model`` (one
    entry per generated model), ``zoo_files``, ``num_test``, ``settings``, ``notes``, and
    with ``baselines`` the Zeng et al. sets (``baseline_sets.score_baselines``) under
    ``baselines``, each scored like ``generated`` (else ``baselines`` is None).
    """
    if not zoo_state_dicts:
        raise EvaluationError("the zoo is empty; evaluation needs at least one zoo checkpoint")
    if not generated:
        raise EvaluationError("no generated models to evaluate; pass at least one state dict")
    zoo_names = list(zoo_names or [f"zoo[{i}]" for i in range(len(zoo_state_dicts))])
    names = list(names or [f"generated[{i}]" for i in range(len(generated))])
    if len(zoo_names) != len(zoo_state_dicts) or len(names) != len(generated):
        raise EvaluationError("need exactly one name per zoo checkpoint and per generated model")
    if any(s < 0 or not math.isfinite(s) for s in noise_sigmas):
        raise EvaluationError(f"noise sigmas must be finite and >= 0, got {list(noise_sigmas)}")
    check_generated(names, generated, zoo_state_dicts[0])
    notes: list[str] = []

    def wrong_of(sds: Sequence[Mapping[str, Tensor]]) -> Tensor | None:
        if module is None or data is None:
            return None
        return wrong_predictions(module, sds, data[0], data[1], batch_size=batch_size)

    # Zoo wrong-sets and vectors are computed once and shared by every compared set.
    tokenizer = ParameterTokenizer.fit(zoo_state_dicts)
    zoo_wrong = wrong_of(zoo_state_dicts)
    zoo_vectors, _ = normalized_vectors(tokenizer, zoo_state_dicts)
    n_zoo = len(zoo_state_dicts)
    sets: dict[str, dict[str, Any]] = {
        "zoo_loo": novelty_set(
            zoo_names, zoo_wrong, zoo_vectors, zoo_wrong, zoo_vectors, list(range(n_zoo))
        )
    }
    for i, sigma in enumerate(noise_sigmas):
        stream = int(np.random.SeedSequence([seed, i]).generate_state(1, dtype=np.uint32)[0])
        gen = torch.Generator().manual_seed(stream)
        noised = [add_noise(sd, sigma, gen) for sd in zoo_state_dicts]
        vectors, _ = normalized_vectors(tokenizer, noised)
        sets[noise_set_name(sigma)] = novelty_set(
            [f"{z}+noise({sigma:g})" for z in zoo_names],
            wrong_of(noised),
            vectors,
            zoo_wrong,
            zoo_vectors,
            list(range(n_zoo)),  # the copy of checkpoint i is compared with the zoo minus i
        )
    gen_vectors, bad = normalized_vectors(tokenizer, generated)
    if bad:
        notes.append(f"{bad} generated model(s) have NaN/inf weights: their L2 distance is null")
    gen_set = novelty_set(
        names, wrong_of(generated), gen_vectors, zoo_wrong, zoo_vectors, [None] * len(names)
    )
    sets["generated"] = gen_set
    baseline_report = None
    if baselines:

        def score(set_names: Sequence[str], sds: Sequence[Mapping[str, Tensor]]) -> dict[str, Any]:
            vectors = normalized_vectors(tokenizer, sds)[0]
            return novelty_set(
                set_names, wrong_of(sds), vectors, zoo_wrong, zoo_vectors, [None] * len(sds)
            )

        target = gen_set["summary"]["accuracy"]
        buffers = None if module is None else dict(module.named_buffers())
        baseline_report, baseline_notes = score_baselines(
            zoo_state_dicts,
            len(generated),
            None if target is None else target["mean"],
            score,
            zoo_names=zoo_names,
            seed=seed,
            buffers=buffers,
        )
        notes += baseline_notes
    if n_zoo < 2:
        notes.append("the zoo has one checkpoint: leave-one-out and noise rows have no neighbour")

    def file_of(i: int | None) -> str | None:
        return None if i is None else zoo_names[i]

    per_model = [
        {
            "name": name,
            "accuracy": gen_set["accuracy"][j],
            "max_iou": gen_set["max_iou"][j],
            "nearest_by_iou": gen_set["nearest_by_iou"][j],
            "nearest_by_iou_file": file_of(gen_set["nearest_by_iou"][j]),
            "min_l2": gen_set["min_l2"][j],
            "nearest_by_l2": gen_set["nearest_by_l2"][j],
            "nearest_by_l2_file": file_of(gen_set["nearest_by_l2"][j]),
        }
        for j, name in enumerate(names)
    ]
    return {
        "zoo": sets["zoo_loo"]["summary"]["accuracy"],
        "generated": gen_set["summary"]["accuracy"],
        "novelty": sets,
        "per_model": per_model,
        "baselines": baseline_report,
        "zoo_files": zoo_names,
        "num_test": None if data is None or module is None else len(data[1]),
        "settings": {
            "seed": seed,
            "noise_sigmas": [float(s) for s in noise_sigmas],
            "distance_space": "normalized (ParameterTokenizer fitted on the zoo)",
            "num_parameters": tokenizer.num_parameters,
            "baselines": baseline_settings() if baselines else None,
        },
        "notes": notes,
    }


def evaluate_generated(
    zoo: Zoo,
    generated: Sequence[Mapping[str, Tensor]],
    names: Sequence[str] | None = None,
    *,
    seed: int = 0,
    noise_sigmas: Sequence[float] = NOISE_SIGMAS,
    batch_size: int = 1024,
    baselines: bool = True,
) -> dict[str, Any]:
    """``evaluate_state_dicts`` on a loaded zoo, with its test split rebuilt from ``zoo.dataset``.

    Unconditional zoos only. A zoo without a dataset spec (or architecture) gets L2 novelty
    only, with a note saying why. The report also names the zoo, architecture and dataset.
    """
    if zoo.condition.get("kind") != "none":
        raise EvaluationError(
            f"zoo {zoo.path} is conditioned on task vectors (condition kind "
            f"{zoo.condition.get('kind')!r}); evaluating a folder of generated models is for "
            "unconditional zoos, since each task needs its own comparison"
        )
    notes: list[str] = []
    module: nn.Module | None = None
    data: tuple[Tensor, Tensor] | None = None
    if zoo.dataset is None:
        notes.append(
            "the zoo has no dataset spec, and accuracy and IoU need a test set: only L2 novelty "
            "is reported (record one with `rpg zoo import ... --evaluate digits`)"
        )
    elif zoo.architecture is None:
        notes.append("the zoo names no architecture, so models cannot be run: only L2 novelty")
    else:
        try:
            split = digits.split_from_spec(zoo.dataset)
        except ValueError as e:
            raise EvaluationError(
                f"cannot rebuild the test set of zoo {zoo.path}: {e}; only the built-in "
                f"{digits.DATASET_NAME!r} dataset is known (set 'dataset' to null in zoo.json "
                "for L2-only novelty)"
            ) from e
        if zoo.is_adapter_zoo:  # adapters are scored merged into the zoo's base
            from models.evaluation.adapters import adapter_scorer

            module = adapter_scorer(zoo)
        else:
            try:
                module = zoo.build_module()
            except ZooError as e:
                raise EvaluationError(str(e)) from e
        data = (split.x_test, split.y_test)
    report = evaluate_state_dicts(
        zoo.state_dicts(),
        generated,
        module=module,
        data=data,
        zoo_names=[c.file for c in zoo.checkpoints],
        names=names,
        seed=seed,
        noise_sigmas=noise_sigmas,
        batch_size=batch_size,
        baselines=baselines,
    )
    report["notes"] = notes + report["notes"]
    if isinstance(module, AdaptedModule) and data is not None:
        # The base alone, from its own weights (the module holds the last adapter merged in).
        base_wrong = wrong_predictions(module.inner, [module.base_state], data[0], data[1])
        report["base"] = {"accuracy": 1.0 - float(base_wrong.float().mean())}
    arch = zoo.architecture
    report["zoo_path"] = str(zoo.path)
    report["architecture"] = None if arch is None else arch.get("name", arch["builder"])
    report["dataset"] = zoo.dataset
    return report


# ---------------------------------------------------------------------------- files (IO edge)


def load_generated_dir(path: Path | str) -> tuple[list[str], list[dict[str, Tensor]]]:
    """File names and state dicts of every ``.safetensors`` in ``path`` (sorted by name)."""
    path = Path(path)
    if not path.is_dir():
        raise EvaluationError(f"generated-models folder {path} does not exist")
    files = sorted(p for p in path.glob("*.safetensors") if p.is_file())
    if len(files) > DEFAULT_LIMITS.max_tensors:
        raise EvaluationError(f"{path} holds more than {DEFAULT_LIMITS.max_tensors} files")
    if not files:
        raise EvaluationError(
            f"{path} holds no .safetensors files; sample some first "
            "(`rpg sample BUNDLE --out DIR -n 20`)"
        )
    state_dicts = []
    for f in files:
        try:
            state_dicts.append(load_safetensors(inside(path, f.name)))
        except UnsafeFileError as e:
            raise EvaluationError(f"{f.name} is not a readable .safetensors file: {e}") from None
    return [f.name for f in files], state_dicts
