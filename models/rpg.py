"""The RPG network: recurrent prototypes + a per-token diffusion denoiser (RPG.md, steps 2-5).

The recurrent model never sees parameter values. Its input is, for every token, a fixed
position embedding plus a learned permutation-state embedding plus (optionally) the task
condition; its output is one "prototype" per token. The denoiser then models each token's
values given its prototype, so the diffusion part only ever sees one token at a time.

With ``config.mean_head`` a linear head also reads each token's mean straight from its
prototype, trained by plain regression, and the denoiser models only the residual around that
mean (regression first, diffusion for what is left, as in Mardani et al. 2023, "Residual
corrective diffusion"). A diffusion loss teaches the prototypes little about a small part of a
token that moves with the condition (the digits task zoo's first layer: docs/benchmarks,
"Task-conditioned generation"); a regression loss on the token itself teaches it directly.
No IO here: bundles and training live elsewhere.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from models.backbones import backbone_from_config
from models.config import RPGConfig
from models.diffusion import (
    NoiseSchedule,
    OnProgress,
    SamplerName,
    ShouldStop,
    denoiser_from_config,
    masked_mse,
)
from models.diffusion.objective import check_sampler, objective_loss, run_sampler
from models.position import PositionEmbedding

# Denoiser calls never get fewer rows than this: a short chunk is padded with zero rows whose
# results are dropped. CPU BLAS kernels take another code path for tiny batches (measured: a
# model's last 1-5 tokens came out with other bits when num_samples changed the chunk around
# them), and the padding costs at most a few rows.
MIN_DENOISER_ROWS = 16


class RPGModel(nn.Module):
    """Positions (+ permutation state + condition) -> prototypes -> denoised parameter tokens."""

    def __init__(self, config: RPGConfig, positions: Tensor) -> None:
        super().__init__()
        self.config = config
        d_model = config.backbone.d_model
        self.num_tokens = int(positions.shape[0])
        self.position = PositionEmbedding(positions, d_model, kind=config.position)
        self.permutation = nn.Embedding(config.num_permutation_states, d_model)
        nn.init.normal_(self.permutation.weight, std=0.02)
        self.condition: nn.Module | None = None
        self.condition_gate: nn.Module | None = None
        if config.condition_dim > 0:
            self.condition = nn.Sequential(
                nn.Linear(config.condition_dim, d_model),
                nn.SiLU(),
                nn.Linear(d_model, d_model),
            )
            if config.condition_mode == "gate":
                # A per-token scalar gate computed from the position lets the model learn which
                # tokens (typically the classifier head) the task should steer.
                self.condition_gate = nn.Linear(d_model, 1)
        self.backbone = backbone_from_config(config.backbone)
        self.denoiser = denoiser_from_config(config, self.backbone.d_output)
        self.mean_head: nn.Linear | None = None
        if config.mean_head:
            # Starts at 0, so the first steps train the denoiser on the tokens themselves.
            self.mean_head = nn.Linear(self.backbone.d_output, config.token_size)
            nn.init.zeros_(self.mean_head.weight)
            nn.init.zeros_(self.mean_head.bias)
        self.schedule = NoiseSchedule(
            config.diffusion.num_timesteps,
            config.diffusion.beta_start,
            config.diffusion.beta_end,
            kind=config.diffusion.schedule,
        )

    def prototypes(
        self,
        permutation_ids: Tensor,
        condition: Tensor | None = None,
        *,
        checkpoint_chunk: int | None = None,
    ) -> Tensor:
        """One prototype per token: (B,) ids [+ (B, condition_dim)] -> (B, num_tokens, d_model).

        ``checkpoint_chunk``: run the backbone in checkpointed pieces of that many tokens
        (bounded activation memory for long sequences; see ``BackboneStack.forward``).
        """
        x = self._inputs(permutation_ids, condition, 0, self.num_tokens)  # (B, L, D)
        out: Tensor = self.backbone(x, checkpoint_chunk=checkpoint_chunk)
        return out

    def _inputs(
        self, permutation_ids: Tensor, condition: Tensor | None, start: int, stop: int
    ) -> Tensor:
        """Backbone inputs of tokens start..stop: (B, stop - start, D)."""
        pos = self.position()[start:stop]  # (l, D)
        x = pos.unsqueeze(0) + self.permutation(permutation_ids).unsqueeze(1)  # (B, l, D)
        if self.condition is not None:
            if condition is None:
                raise ValueError(
                    f"this generator is conditional: pass a condition of shape (B, {self.config.condition_dim})"
                )
            c = self.condition(condition.to(x.dtype)).unsqueeze(1)  # (B, 1, D)
            if self.condition_gate is not None:
                c = c * torch.sigmoid(self.condition_gate(pos)).unsqueeze(0)  # (B, l, D)
            x = x + c
        elif condition is not None:
            raise ValueError("this generator is unconditional: condition must be None")
        return x

    def selected_prototypes(
        self,
        permutation_ids: Tensor,
        condition: Tensor | None,
        flat_index: Tensor,
        checkpoint_chunk: int,
    ) -> Tensor:
        """Prototypes of the tokens ``flat_index`` (indices into B*L) only: (n, D).

        The backbone runs in activation-checkpointed pieces of ``checkpoint_chunk`` tokens,
        carrying its recurrent state; each piece keeps only the prototypes asked for, so
        neither the inputs nor the prototypes of the whole batch are ever held, forward or
        backward: memory is one piece's activations plus the selected rows. Equal (up to
        float rounding) to ``prototypes(...).reshape(-1, D)[flat_index]``.
        """
        if not self.backbone.stateful:
            proto = self.prototypes(permutation_ids, condition, checkpoint_chunk=checkpoint_chunk)
            return proto.reshape(-1, proto.shape[-1])[flat_index]  # (B*L, D) -> (n, D)
        length = self.num_tokens
        row, col = flat_index // length, flat_index % length  # (n,) checkpoint, token
        probe = self._inputs(permutation_ids, condition, 0, 1)  # (B, 1, D): dtype, device
        flat = self.backbone.initial_state(probe)
        pieces, order = [], []
        for start in range(0, length, checkpoint_chunk):
            stop = min(start + checkpoint_chunk, length)
            inside = ((col >= start) & (col < stop)).nonzero().squeeze(1)  # (k,) into flat_index
            keep = torch.stack([row[inside], col[inside] - start])  # (2, k)
            selected, *flat = checkpoint(
                self._piece,
                permutation_ids,
                condition,
                start,
                stop,
                keep,
                *flat,
                use_reentrant=False,
            )
            pieces.append(selected)  # (k, D)
            order.append(inside)
        gathered = torch.cat(pieces)  # (n, D), grouped by piece
        return gathered[torch.argsort(torch.cat(order))]  # back in flat_index order

    def _piece(
        self,
        permutation_ids: Tensor,
        condition: Tensor | None,
        start: int,
        stop: int,
        keep: Tensor,
        *flat: Tensor,
    ) -> tuple[Tensor, ...]:
        """Tokens start..stop through the backbone; returns the kept rows and the new state."""
        x = self._inputs(permutation_ids, condition, start, stop)  # (B, l, D)
        y, *state = self.backbone.forward_chunk(x, *flat)  # (B, l, D)
        return (y[keep[0], keep[1]], *state)  # (k, D)

    def forward(
        self,
        tokens: Tensor,
        permutation_ids: Tensor,
        condition: Tensor | None = None,
        *,
        diffusion_batch: int = 512,
        generator: torch.Generator | None = None,
        checkpoint_chunk: int | None = None,
        token_weights: Tensor | None = None,
    ) -> Tensor:
        """The training loss: the objective's masked MSE (epsilon or flow) on a random subset
        of `diffusion_batch` tokens of the batch (the loss is the forward pass so that DDP
        wraps the whole step); with a mean head, plus the head's masked MSE on the same
        tokens, and the objective's MSE is taken on the residual.

        tokens: (B, L, token_size) with NaN padding; permutation_ids: (B,).
        ``checkpoint_chunk``: compute only the subset's prototypes, in checkpointed pieces
        (``selected_prototypes``); same loss up to float rounding, far less memory.
        ``token_weights``: (L,) relative odds of each token position (``draw_tokens``: with
        replacement, always drawn); None: a uniform subset, or all tokens if they fit.
        """
        x0 = tokens.reshape(-1, tokens.shape[-1])  # (B*L, T)
        idx = None
        if token_weights is not None or diffusion_batch < x0.shape[0]:
            idx = draw_tokens(
                tokens.shape[0],
                tokens.shape[1],
                diffusion_batch,
                token_weights,
                generator,
                x0.device,
            )
        cond = self._training_prototypes(
            permutation_ids, condition, idx, x0.shape[0], checkpoint_chunk
        )  # (n, D)
        if idx is not None:
            x0 = x0[idx]
        objective = self.config.diffusion.objective
        if self.mean_head is None:
            return objective_loss(
                objective, self.denoiser, self.schedule, x0, cond, generator=generator
            )
        # Regression for the token's mean, diffusion for what is left around it (the
        # residual is taken against the detached mean, so the two losses do not pull on each
        # other's target); NaN padding stays NaN in the residual and is masked in both.
        # The regression is a mean over the batch's tokens whatever the draw favoured: a token
        # drawn at odds w counts 1 / w (a one-token head drawn as often as a 16-token body
        # would otherwise outweigh the body 16 to 1).
        mean = self.mean_head(cond)  # (n, T)
        weights = None
        if token_weights is not None and idx is not None:
            weights = 1.0 / token_weights.to(x0.device)[idx % tokens.shape[1]]  # (n,)
        regression = masked_mse(mean, x0, weights)
        # The backbone learns from the regression alone: the denoiser reads the prototypes
        # detached. With the denoiser's gradients in the backbone too, the regression learned
        # the task zoo's first layer about 5x slower (docs/benchmarks; likely through Adam's shared
        # step-size estimates, which the noisy diffusion gradients inflate).
        residual = x0 - mean.detach()
        return regression + objective_loss(
            objective, self.denoiser, self.schedule, residual, cond.detach(), generator=generator
        )

    def _training_prototypes(
        self,
        permutation_ids: Tensor,
        condition: Tensor | None,
        idx: Tensor | None,
        num_rows: int,
        checkpoint_chunk: int | None,
    ) -> Tensor:
        """Prototypes of the drawn tokens ``idx`` (indices into B*L; None: all ``num_rows``).

        The backbone's input depends on a checkpoint only through its (permutation id,
        condition), so rows of the batch that share both get the same prototypes: the
        backbone runs once per distinct pair (``distinct_rows``) and each drawn token reads
        its pair's row. The same loss and gradients (the shared rows' gradients add up), with
        U / B of the backbone's work and activations, U distinct pairs in a batch of B (a zoo
        of one training run: one backbone pass per step whatever the batch).
        """
        length = self.num_tokens
        flat_index = torch.arange(num_rows, device=permutation_ids.device) if idx is None else idx
        ids, cond_rows, inverse = distinct_rows(permutation_ids, condition)
        if ids.shape[0] < permutation_ids.shape[0]:
            # token l of batch row b -> token l of its distinct row: (n,)
            flat_index = inverse[flat_index // length] * length + flat_index % length
            permutation_ids, condition = ids, cond_rows
        elif idx is None and checkpoint_chunk is None:
            flat_index = None  # type: ignore[assignment]
        if checkpoint_chunk is not None:
            return self.selected_prototypes(
                permutation_ids, condition, flat_index, checkpoint_chunk
            )  # (n, D)
        proto = self.prototypes(permutation_ids, condition)  # (U, L, D)
        flat = proto.reshape(-1, proto.shape[-1])  # (U*L, D)
        return flat if flat_index is None else flat[flat_index]  # (n, D)

    @torch.inference_mode()
    def sample_tokens(
        self,
        noise: Tensor,
        permutation_ids: Tensor,
        condition: Tensor | None = None,
        *,
        sampler: SamplerName = "ddim",
        steps: int = 50,
        eta: float = 0.0,
        chunk_size: int = 1024,
        generators: Sequence[torch.Generator] | None = None,
        autocast_dtype: torch.dtype | None = None,
        should_stop: ShouldStop | None = None,
        on_progress: OnProgress | None = None,
    ) -> Tensor:
        """Denoise `noise` (B, L, T) into parameter tokens, `chunk_size` tokens per denoiser call.

        All tokens are independent given their prototypes, so the B * L tokens form one
        stream cut into chunks that may hold tokens of several models: small targets share
        denoiser calls, and memory is bounded by the chunk (plus the prototypes of the models
        a chunk touches), not by B * L. `generators` (one per model, on noise's device) give
        each model's tokens their own fresh noise (DDPM, DDIM with eta > 0); with them, model b
        depends only on (noise[b], ids[b], condition[b], generators[b]), not on B.
        `should_stop()` is checked before every denoiser step (True raises `SamplingStopped`);
        `on_progress(fraction of this call)` is called after every denoiser step of every
        chunk. The caller sets eval mode.
        """
        check_sampler(sampler, self.config.diffusion.objective)
        if chunk_size < 1:
            raise ValueError("chunk_size must be >= 1")
        if eta != 0.0 and sampler != "ddim":
            raise ValueError(f"eta applies to the ddim sampler only; remove it for {sampler}")
        num_models, length, token_size = noise.shape
        if generators is not None and len(generators) != num_models:
            raise ValueError(
                f"pass one generator per model: got {len(generators)} for {num_models} models"
            )
        options: dict[str, object] = {"should_stop": should_stop}
        if sampler != "ddpm":
            options.update(steps=steps)
        if sampler == "ddim":
            options.update(eta=eta)
        autocast = _Autocast(noise.device.type, autocast_dtype)
        flat_noise = noise.reshape(-1, token_size)  # (B*L, T)
        total = flat_noise.shape[0]
        out = torch.empty(flat_noise.shape, dtype=torch.float32, device=noise.device)
        prototypes: dict[int, Tensor] = {}  # model index -> (L, D), only models in reach
        for start in range(0, total, chunk_size):
            stop = min(start + chunk_size, total)
            # 1. the conditions (prototypes) and noise generators of the chunk's rows
            first = start // length
            for done in [b for b in prototypes if b < first]:
                del prototypes[done]
            conds, row_generators = [], []
            for b in range(first, (stop - 1) // length + 1):
                if b not in prototypes:
                    # one model at a time: the backbone's work (and its bits) do not depend on B
                    with autocast():
                        cond_b = None if condition is None else condition[b : b + 1]  # (1, C)
                        proto = self.prototypes(permutation_ids[b : b + 1], cond_b)  # (1, L, D)
                    prototypes[b] = proto[0].float()  # (L, D)
                lo, hi = (
                    max(start, b * length) - b * length,
                    min(stop, (b + 1) * length) - b * length,
                )
                conds.append(prototypes[b][lo:hi])  # (hi - lo, D)
                if generators is not None:
                    row_generators.append((hi - lo, generators[b]))
            # 2. denoise the chunk, padded to MIN_DENOISER_ROWS
            x_chunk, cond_chunk = _pad_rows(
                flat_noise[start:stop], torch.cat(conds), row_generators
            )
            if on_progress is not None:
                options["on_progress"] = _chunk_progress(on_progress, start, stop, total)
            with autocast():
                result = run_sampler(
                    sampler,
                    self.denoiser,
                    self.schedule,
                    x_chunk,
                    cond_chunk,
                    generator=row_generators or None,
                    **options,
                )
            if self.mean_head is not None:
                # in float32 whatever the autocast dtype: the mean is most of a token's value
                result = result.float() + self.mean_head(cond_chunk)  # residual + mean: (n, T)
            out[start:stop] = result[: stop - start].float()
        return out.reshape(noise.shape)  # (B, L, T)


def distinct_rows(
    permutation_ids: Tensor, condition: Tensor | None
) -> tuple[Tensor, Tensor | None, Tensor]:
    """The distinct (permutation id, condition) pairs of a batch, in first-seen order, and
    each row's pair: (U,) ids, (U, C) conditions or None, (B,) inverse with
    ``ids[inverse] == permutation_ids``."""
    key = permutation_ids.unsqueeze(1).to(torch.float64)  # (B, 1)
    if condition is not None:
        key = torch.cat([key, condition.to(torch.float64)], dim=1)  # (B, 1 + C)
    _, inverse = torch.unique(key, dim=0, return_inverse=True)  # (B,) into sorted distinct rows
    # first-seen order, so a batch without repeats keeps its own order
    order = torch.full((int(inverse.max()) + 1,), len(inverse), device=inverse.device)
    order = order.scatter_reduce(
        0, inverse, torch.arange(len(inverse), device=inverse.device), "amin"
    )
    first = order.sort().values  # (U,) batch row of each distinct pair
    rank = torch.empty_like(order)
    rank[order.argsort()] = torch.arange(len(order), device=order.device)
    cond = None if condition is None else condition[first]
    return permutation_ids[first], cond, rank[inverse]


def draw_tokens(
    num_models: int,
    length: int,
    count: int,
    token_weights: Tensor | None,
    generator: torch.Generator | None,
    device: torch.device,
) -> Tensor:
    """``count`` indices into the ``num_models * length`` tokens of a batch: (count,).

    Without ``token_weights``: distinct and uniform. With them (L,): token ``i`` of each
    model has odds ``token_weights[i]``, drawn with replacement, so a heavily weighted token
    gets its full share even when the batch holds few copies of it (each draw gets its own
    timestep and noise in the loss: more diffusion samples of that token, not a duplicate).
    """
    if token_weights is None:
        return torch.randperm(num_models * length, device=device, generator=generator)[:count]
    odds = token_weights.to(device, torch.float32).repeat(num_models)  # (B*L,)
    return torch.multinomial(odds, count, replacement=True, generator=generator)


class _Autocast:
    """`torch.autocast` to `dtype` on `device_type`, or nothing for None / float32."""

    def __init__(self, device_type: str, dtype: torch.dtype | None) -> None:
        self.device_type, self.dtype = device_type, dtype
        self.enabled = dtype is not None and dtype != torch.float32

    def __call__(self) -> torch.autocast:
        return torch.autocast(self.device_type, dtype=self.dtype, enabled=self.enabled)


def _pad_rows(
    x: Tensor, cond: Tensor, row_generators: list[tuple[int, torch.Generator]]
) -> tuple[Tensor, Tensor]:
    """Pad a chunk shorter than MIN_DENOISER_ROWS with zero rows (their results are dropped);
    the padding draws its noise from a generator of its own, appended to `row_generators`."""
    pad = MIN_DENOISER_ROWS - x.shape[0]
    if pad <= 0:
        return x, cond
    if row_generators:
        row_generators.append((pad, torch.Generator(device=x.device).manual_seed(0)))
    x = torch.cat([x, x.new_zeros(pad, x.shape[1])])  # (MIN_DENOISER_ROWS, T)
    cond = torch.cat([cond, cond.new_zeros(pad, cond.shape[1])])  # (MIN_DENOISER_ROWS, D)
    return x, cond


def _chunk_progress(on_progress: OnProgress, start: int, stop: int, total: int) -> OnProgress:
    """Map a chunk's own fraction done to the fraction of all `total` tokens (weighted by rows,
    so the whole call rises evenly and never goes back)."""

    def report(fraction: float) -> None:
        on_progress(min(1.0, (start + fraction * (stop - start)) / total))

    return report
