"""The RPG network: recurrent prototypes + a per-token diffusion denoiser (RPG.md, steps 2-5).

The recurrent model never sees parameter values. Its input is, for every token, a fixed
position embedding plus a learned permutation-state embedding plus (optionally) the task
condition; its output is one "prototype" per token. The denoiser then models each token's
values given its prototype, so the diffusion part only ever sees one token at a time.
No IO here: bundles and training live elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from models.backbones import build_backbone
from models.config import RPGConfig
from models.diffusion import SAMPLERS, ConvUNetDenoiser, NoiseSchedule, diffusion_loss
from models.position import PositionEmbedding

# Called between token chunks with (tokens done, tokens total); may raise to stop sampling.
ChunkCallback = Callable[[int, int], None]


class RPGModel(nn.Module):
    """Positions (+ permutation state + condition) -> prototypes -> denoised parameter tokens."""

    def __init__(self, config: RPGConfig, positions: Tensor) -> None:
        super().__init__()
        self.config = config
        d_model = config.backbone.d_model
        self.num_tokens = int(positions.shape[0])
        self.position = PositionEmbedding(positions, d_model, kind=config.position)  # type: ignore[arg-type]
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
        self.backbone = build_backbone(
            config.backbone.kind,
            d_model=d_model,
            num_layers=config.backbone.num_layers,
            residual=config.backbone.residual,
            d_output=config.backbone.d_output,
            **config.backbone.options,
        )
        self.denoiser = ConvUNetDenoiser(
            config.token_size,
            self.backbone.d_output,
            channels=config.denoiser.channels,
            kernel_size=config.denoiser.kernel_size,
            time_dim=config.denoiser.time_dim,
            norm=config.denoiser.norm,  # type: ignore[arg-type]
            cond_projection=config.denoiser.cond_projection,  # type: ignore[arg-type]
        )
        self.schedule = NoiseSchedule(
            config.diffusion.num_timesteps,
            config.diffusion.beta_start,
            config.diffusion.beta_end,
            kind=config.diffusion.schedule,  # type: ignore[arg-type]
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
    ) -> Tensor:
        """The training loss: masked epsilon MSE on a random subset of `diffusion_batch`
        tokens of the batch (the loss is the forward pass so that DDP wraps the whole step).

        tokens: (B, L, token_size) with NaN padding; permutation_ids: (B,).
        ``checkpoint_chunk``: compute only the subset's prototypes, in checkpointed pieces
        (``selected_prototypes``); same loss up to float rounding, far less memory.
        """
        x0 = tokens.reshape(-1, tokens.shape[-1])  # (B*L, T)
        idx = None
        if diffusion_batch < x0.shape[0]:
            idx = torch.randperm(x0.shape[0], device=x0.device, generator=generator)[
                :diffusion_batch
            ]
        if checkpoint_chunk is not None:
            flat_index = torch.arange(x0.shape[0], device=x0.device) if idx is None else idx
            cond = self.selected_prototypes(
                permutation_ids, condition, flat_index, checkpoint_chunk
            )  # (n, D)
        else:
            proto = self.prototypes(permutation_ids, condition)  # (B, L, D)
            cond = proto.reshape(-1, proto.shape[-1])  # (B*L, D)
            if idx is not None:
                cond = cond[idx]
        if idx is not None:
            x0 = x0[idx]
        return diffusion_loss(self.denoiser, self.schedule, x0, cond, generator=generator)

    @torch.inference_mode()
    def sample_tokens(
        self,
        noise: Tensor,
        permutation_ids: Tensor,
        condition: Tensor | None = None,
        *,
        sampler: str = "ddim",
        steps: int = 50,
        eta: float = 0.0,
        chunk_size: int = 1024,
        generator: torch.Generator | None = None,
        autocast_dtype: torch.dtype | None = None,
        callback: ChunkCallback | None = None,
    ) -> Tensor:
        """Denoise `noise` (B, L, T) into parameter tokens, `chunk_size` tokens per denoiser call.

        All tokens of a model are independent given their prototypes, so chunks are denoised
        one after another with bounded memory. The caller sets eval mode.
        """
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; choose one of {sorted(SAMPLERS)}")
        if chunk_size < 1:
            raise ValueError("chunk_size must be >= 1")
        device_type = noise.device.type
        use_autocast = autocast_dtype is not None and autocast_dtype != torch.float32
        with torch.autocast(device_type, dtype=autocast_dtype, enabled=use_autocast):
            proto = self.prototypes(permutation_ids, condition).float()  # (B, L, D)
        flat_noise = noise.reshape(-1, noise.shape[-1])  # (B*L, T)
        flat_proto = proto.reshape(-1, proto.shape[-1])  # (B*L, D)
        total = flat_noise.shape[0]
        out = torch.empty_like(flat_noise)
        for start in range(0, total, chunk_size):
            stop = min(start + chunk_size, total)
            kwargs: dict[str, object] = {"generator": generator}
            if sampler == "ddim":
                kwargs.update(steps=steps, eta=eta)
            with torch.autocast(device_type, dtype=autocast_dtype, enabled=use_autocast):
                out[start:stop] = SAMPLERS[sampler](
                    self.denoiser,
                    self.schedule,
                    flat_noise[start:stop],
                    flat_proto[start:stop],
                    **kwargs,
                ).float()
            if callback is not None:
                callback(stop, total)
        return out.reshape(noise.shape)  # (B, L, T)
