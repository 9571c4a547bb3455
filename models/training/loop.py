"""The training loop of an RPG generator on a zoo: `rpg train ZOO --out BUNDLE`.

AdamW + linear warm-up + cosine decay, gradient clipping, bf16 autocast on CUDA, periodic
bundle saves with a resumable training state (safetensors + JSON, no pickle), and DDP when
launched under `torchrun` (WORLD_SIZE > 1) with no code change.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import Tensor, nn

from models.adapters.bundle import bundle_section, copy_base
from models.config import PRESETS
from models.fileio import save_safetensors
from models.generator import Generator
from models.heap import keep_freed_memory
from models.naming import choose_name
from models.rpg import RPGModel
from models.tokenizer import ParameterTokenizer
from models.training.data import ZooTokens, fit_tokenizer
from models.training.ema import EMA
from models.training.options import (
    TrainConfig,
    TrainResult,
    build_model_config,
    checkpoint_chunk_for,
    cosine_lr,
    default_diffusion_batch,
    distinct_pairs,
    permutation_ids,
    pick_device,
    token_weights_for,
    zoo_conditions,
)
from models.zoo.store import Zoo, load_zoo

STATE_FILE = "training_state.safetensors"


def train(
    zoo_path: str | os.PathLike[str], out: str | os.PathLike[str], options: TrainConfig
) -> TrainResult:
    """Train a generator on the zoo at `zoo_path` and write the bundle to `out`."""
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    rank = 0
    if distributed:
        import torch.distributed as dist

        backend = "nccl" if torch.cuda.is_available() and options.device != "cpu" else "gloo"
        dist.init_process_group(backend)
        rank = dist.get_rank()
        if backend == "nccl":
            local_rank = int(os.environ.get("LOCAL_RANK", "0"))
            torch.cuda.set_device(local_rank)
            options.device = f"cuda:{local_rank}"
    try:
        return _train(Path(zoo_path), Path(out), options, rank, distributed)
    finally:
        if distributed:
            import torch.distributed as dist

            dist.destroy_process_group()


def _train(
    zoo_path: Path, out: Path, options: TrainConfig, rank: int, distributed: bool
) -> TrainResult:
    device = pick_device(options.device)
    keep_freed_memory()  # every step frees and re-allocates the same activations
    # Held-out checkpoints (tasks kept for evaluation) never reach the generator: every
    # per-checkpoint list below (state dicts, permutation ids, conditions) comes from this view.
    zoo = load_zoo(zoo_path).training_zoo()
    files = zoo.files()
    probe = ParameterTokenizer.fit([zoo.read(files[0])], token_size=1)
    ids, num_states = permutation_ids(zoo, options.permutation_states)
    config, preset_name = build_model_config(zoo, probe.num_parameters, options, num_states)
    preset = PRESETS[preset_name]
    tokenizer = fit_tokenizer(files, token_size=config.token_size, granularity=options.granularity)
    # The encoded zoo stays on the CPU (or on disk); each step moves only its batch.
    data = ZooTokens(files, tokenizer, resident_bytes=options.resident_bytes)
    perm = torch.tensor(ids, dtype=torch.long, device=device)  # (N,)
    conds = zoo_conditions(zoo)
    conds = None if conds is None else conds.to(device)  # (N, dim)
    weighting = options.token_weighting or ("tensor" if conds is not None else "uniform")
    token_weights = token_weights_for(tokenizer, weighting)  # (L,), once, on the device
    token_weights = None if token_weights is None else token_weights.to(device)

    recipe = preset.recipe(conditional=conds is not None, kind=config.denoiser.kind)
    total_steps = options.steps or recipe.steps
    lr = options.lr or recipe.lr
    batch_size = min(options.batch_size or recipe.batch_size, len(data))
    diffusion_batch = options.diffusion_batch or default_diffusion_batch(
        recipe.diffusion_batch, batch_size, tokenizer.num_tokens
    )
    micro = min(options.micro_batch or batch_size, batch_size)
    # the backbone runs once per distinct (permutation id, condition) of a pass (RPGModel)
    rows = min(micro, distinct_pairs(ids, conds))
    chunk = checkpoint_chunk_for(options.checkpoint_chunk, rows, tokenizer.num_tokens)
    warmup = (
        options.warmup_steps
        if options.warmup_steps is not None
        else max(1, min(200, total_steps // 20))
    )

    torch.manual_seed(options.seed)
    model = RPGModel(config, tokenizer.positions()).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=options.weight_decay)
    rng = torch.Generator(device=device).manual_seed(options.seed * 1_000_003 + rank)
    start_step, losses = 0, list[float]()
    ema_decay = preset.ema_decay if options.ema_decay is None else options.ema_decay
    ema = EMA(model, ema_decay) if ema_decay else None
    if options.resume and (out / STATE_FILE).is_file():
        start_step, losses = _load_state(out, model, optimizer, rng, ema)
    ddp_model: nn.Module = model
    if distributed:
        from torch.nn.parallel import DistributedDataParallel

        ddp_model = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )

    meta = _bundle_meta(
        zoo, zoo_path, options, preset_name, lr, batch_size, diffusion_batch, total_steps, device
    )
    sampler, sampler_steps = preset.sampling(config.diffusion.objective)
    meta["defaults"] = {"sampler": sampler, "steps": sampler_steps}
    adapter = bundle_section(zoo)
    if adapter is not None:  # the bundle's samples are PEFT folders of this base
        meta["adapter"] = adapter
        if rank == 0:
            copy_base(zoo, out)
    meta["training"]["ema_decay"] = ema_decay or None
    meta["training"]["token_weighting"] = weighting
    # The bundle holds the averaged weights when EMA is on: those are what sampling uses.
    generator = Generator(ema.model if ema else model, tokenizer, meta)
    use_bf16 = device.type == "cuda"
    bar = _progress_bar(total_steps, start_step, options.progress and rank == 0)
    started = time.perf_counter()
    model.train()
    end_step = min(total_steps, options.stop_at_step or total_steps)
    for step in range(start_step, end_step):
        for group in optimizer.param_groups:
            group["lr"] = lr * cosine_lr(step, total_steps, warmup)
        idx = torch.randint(0, len(data), (batch_size,), device=device, generator=rng)
        optimizer.zero_grad(set_to_none=True)
        step_loss = 0.0
        for part in idx.split(micro):
            # Micro-batches accumulate gradients; each trains on its share of diffusion_batch.
            share = len(part) / batch_size
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                loss = ddp_model(
                    data.batch(part.tolist()).to(device),
                    perm[part],
                    None if conds is None else conds[part],
                    diffusion_batch=max(1, round(diffusion_batch * share)),
                    generator=rng,
                    checkpoint_chunk=chunk,
                    token_weights=token_weights,
                )
            (loss if micro == batch_size else loss * share).backward()
            step_loss += float(loss.detach()) * share
        nn.utils.clip_grad_norm_(model.parameters(), options.grad_clip)
        optimizer.step()
        if ema is not None:
            ema.update(model, step)
        losses.append(step_loss)
        bar(step + 1, losses[-1])
        if (
            rank == 0
            and options.save_every
            and (step + 1) % options.save_every == 0
            and step + 1 < end_step
        ):
            _save(generator, out, model, optimizer, rng, step + 1, losses, started)
    seconds = time.perf_counter() - started
    if rank == 0:
        _save(generator, out, model, optimizer, rng, end_step, losses, started)
    bar(None, None)
    done = max(1, end_step - start_step)
    window = max(1, min(50, len(losses) // 10 or 1))
    return TrainResult(
        bundle=out,
        steps=end_step,
        seconds=seconds,
        steps_per_second=done / seconds if seconds > 0 else float("inf"),
        first_loss=sum(losses[:window]) / window if losses else float("nan"),
        final_loss=sum(losses[-window:]) / window if losses else float("nan"),
        losses=losses,
    )


def _bundle_meta(
    zoo: Zoo,
    zoo_path: Path,
    options: TrainConfig,
    preset: str,
    lr: float,
    batch_size: int,
    diffusion_batch: int,
    total_steps: int,
    device: torch.device,
) -> dict[str, Any]:
    known = [float(a) for a in zoo.accuracies() if a is not None]
    name, _ = choose_name(options.name, zoo.architecture, zoo_path)
    return {
        "name": name,
        "architecture": zoo.architecture,
        "dataset": zoo.dataset,
        "condition": zoo.condition or {"kind": "none"},
        "zoo": {
            "path": str(zoo_path),
            "num_checkpoints": len(zoo.checkpoints),
            "accuracy_mean": sum(known) / len(known) if known else None,
        },
        "training": {
            "preset": preset,
            "options": asdict(options),
            "lr": lr,
            "batch_size": batch_size,
            "diffusion_batch": diffusion_batch,
            "steps": total_steps,
            "device": str(device),
            "torch": torch.__version__,
        },
    }


def _save(
    generator: Generator,
    out: Path,
    model: RPGModel,
    optimizer: torch.optim.Optimizer,
    rng: torch.Generator,
    step: int,
    losses: list[float],
    started: float,
) -> None:
    """Write the resumable training state, then the bundle.

    The training state is ONE safetensors file (weights, optimizer tensors, RNG state, and the
    JSON-safe rest in its string metadata), written atomically, so a crash at any point leaves
    a state whose parts agree with each other; resume reads only that file.
    """
    tensors, meta = _flatten_optimizer(optimizer)
    for name, value in model.state_dict().items():
        tensors[f"model.{name}"] = value.detach().cpu().contiguous()
    if generator.model is not model:  # EMA weights
        for name, value in generator.model.state_dict().items():
            tensors[f"ema.{name}"] = value.detach().cpu().contiguous()
    tensors["rng_state"] = rng.get_state()
    record = json.dumps({"step": step, "losses": losses, "optimizer": meta})
    save_safetensors(tensors, out / STATE_FILE, {"training_state": record})
    generator.config["training"].update(
        {
            "completed_steps": step,
            "final_loss": losses[-1] if losses else None,
            "seconds": time.perf_counter() - started,
        }
    )
    generator.save_pretrained(out)


def _flatten_optimizer(
    optimizer: torch.optim.Optimizer,
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Optimizer state as flat tensors + JSON (safetensors cannot hold nested dicts)."""
    state = optimizer.state_dict()
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, entry in state["state"].items():
        for key, value in entry.items():
            if isinstance(value, Tensor):
                tensors[f"optim.{pid}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(pid), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _load_state(
    out: Path,
    model: RPGModel,
    optimizer: torch.optim.Optimizer,
    rng: torch.Generator,
    ema: EMA[RPGModel] | None,
) -> tuple[int, list[float]]:
    path = out / STATE_FILE
    with safe_open(str(path), framework="pt") as handle:
        meta = json.loads((handle.metadata() or {})["training_state"])
    tensors = load_file(str(path))
    rng.set_state(tensors.pop("rng_state"))
    weights = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
    model.load_state_dict(weights, strict=True)
    if ema is not None:
        averaged = {k.removeprefix("ema."): v for k, v in tensors.items() if k.startswith("ema.")}
        if not averaged:
            raise ValueError(f"{path}: the run being resumed had no EMA; resume with --ema-decay 0")
        ema.model.load_state_dict(averaged, strict=True)
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, pid, key = name.split(".", 2)
            state.setdefault(int(pid), {})[key] = value
    for pid, extra in meta["optimizer"]["scalars"].items():
        state.setdefault(int(pid), {}).update(extra)
    optimizer.load_state_dict({"state": state, "param_groups": meta["optimizer"]["param_groups"]})
    return int(meta["step"]), [float(x) for x in meta["losses"]]


def _progress_bar(
    total: int, initial: int, enabled: bool
) -> Callable[[int | None, float | None], None]:
    if not enabled:
        return lambda step, loss: None
    from tqdm import tqdm

    bar = tqdm(
        total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True, mininterval=1.0
    )
    last = [initial]
    ema: list[float] = []

    def update(step: int | None, loss: float | None) -> None:
        if step is None or loss is None:
            bar.close()
            return
        ema[:] = [loss if not ema else 0.98 * ema[0] + 0.02 * loss]  # smoothed for display
        bar.update(step - last[0])
        last[0] = step
        bar.set_postfix(loss=f"{ema[0]:.4f}")

    return update
