"""`Generator`: a trained RPG model with its tokenizer and config, loadable from a bundle.

    gen = Generator.from_pretrained("runs/digits-mlp")          # or "hf://org/repo"
    weights = gen.sample(num_samples=4, seed=0, sampler="ddim", steps=50)
    module = gen.build_module(); module.load_state_dict(weights[0], strict=True)

A bundle's architecture names a builder; `build_module()` runs it only when it is one of the
project's, or when `from_pretrained(..., trust_builders=["mypkg"])` trusted it
(`models.zoo.architecture`).

Same seed + same settings = same weights, bit for bit, on the same device. Sample i of a
request depends only on (seed, i), not on how many samples were asked for.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from models.bundle import (
    check_digest,
    pinned_source,
    read_config,
    read_weights,
    resolve_bundle,
    weights_digest,
    write_bundle,
)
from models.bundle_check import check_bundle
from models.diffusion.samplers import OnProgress, ShouldStop
from models.heap import keep_freed_memory
from models.limits import DEFAULT_LIMITS, FileLimits
from models.request_check import check_condition, default_sampling
from models.rpg import RPGModel
from models.sampler_names import SamplerName
from models.tokenizer import ParameterTokenizer
from models.zoo.architecture import build_module, parse_trust

if TYPE_CHECKING:
    from models.adapters.base import AdapterBase

__all__ = ["DTYPES", "ConditionError", "Generator", "derive_seed"]

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


class ConditionError(ValueError):
    """A condition (task embedding) does not fit the generator's condition spec."""


def derive_seed(seed: int, index: int) -> int:
    """A 63-bit seed for sample `index` of a request seeded with `seed` (no overlap between
    neighbouring request seeds, unlike `seed + index`)."""
    digest = hashlib.sha256(f"rpg:{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class Generator:
    """An RPG generator: tokenizer + RPG network + bundle config."""

    def __init__(
        self,
        model: RPGModel,
        tokenizer: ParameterTokenizer,
        config: dict[str, Any],
        *,
        digest: str | None = None,
        trust_builders: Iterable[str] = (),
        directory: Path | None = None,
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.config = config
        self.digest = digest
        # What the caller trusts (never read from config.json): see build_module().
        self.trust_builders = parse_trust(trust_builders)
        # Where the bundle lives (an adapter generator's base weights may sit beside it).
        self.directory = directory
        # Where it was loaded from; a Hub bundle as hf://org/repo@<commit> (what was read).
        self.source: str | None = None if directory is None else str(directory)

    # ------------------------------------------------------------------ properties
    @property
    def name(self) -> str:
        """The generator's name (defaults to the architecture's name)."""
        return str(self.config.get("name") or self.architecture.get("name") or "generator")

    @property
    def generator_id(self) -> str:
        """`name@<first 12 hex of the weights' sha256>`: stamped on every generated file."""
        return f"{self.name}@{(self.digest or 'unsaved')[:12]}"

    @property
    def architecture(self) -> dict[str, Any]:
        """The architecture spec: `{"name", "builder": "module:function", "kwargs"}`."""
        return dict(self.config.get("architecture") or {})

    @property
    def condition_spec(self) -> dict[str, Any]:
        """`{"kind": "none"}` or `{"kind": "vector", "dim": D, "labels": [...], ...}`."""
        return dict(self.config.get("condition") or {"kind": "none"})

    @property
    def is_conditional(self) -> bool:
        """Whether sampling needs a condition (task embedding)."""
        return self.condition_spec.get("kind") == "vector"

    @property
    def is_adapter(self) -> bool:
        """Whether samples are LoRA adapters of a base network (written as PEFT folders)."""
        return self.config.get("adapter") is not None

    def adapter_base(self) -> AdapterBase:
        """The base of an adapter generator: its spec, architecture and checked weights."""
        from models.adapters.base import AdapterBase

        if not self.is_adapter:
            raise ValueError(f"generator {self.name!r} makes whole networks, not adapters")
        if self.directory is None:
            raise ValueError("save or load the generator from a bundle before using its base")
        return AdapterBase(
            self.config["adapter"], self.directory, trust_builders=self.trust_builders
        )

    @property
    def num_parameters(self) -> int:
        """How many parameter values one generated model has (tokenized tensors)."""
        return self.tokenizer.num_parameters

    @property
    def device(self) -> torch.device:
        """Where the network lives."""
        return next(self.model.parameters()).device

    def to(self, device: str | torch.device) -> Generator:
        """Move the network to `device` (in place) and return self."""
        self.model.to(device)
        return self

    # ------------------------------------------------------------------ bundles
    def build_module(self) -> nn.Module:
        """A fresh module of the architecture this generator makes (to load samples into).

        Runs the builder named in config.json only if it is the project's or was trusted
        (`trust_builders`); otherwise raises `UntrustedBuilderError` saying how to trust it.
        """
        return build_module(self.architecture, trust_builders=self.trust_builders)

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike[str],
        *,
        device: str | torch.device = "cpu",
        trust_builders: Iterable[str] = (),
        limits: FileLimits = DEFAULT_LIMITS,
    ) -> Generator:
        """Load a bundle from a local directory or `hf://org/repo[@revision]`.

        Loading runs no code named in the bundle; `trust_builders` (modules or
        `module:function`) says which non-project builders `build_module()` may run.
        Before anything is built, config.json is checked against the weights' header and
        `limits`, and the weights against the sha256 config.json recorded (`BundleError`).
        """
        directory = resolve_bundle(path)
        config = read_config(directory, limits)
        checked = check_bundle(directory, config, limits)
        digest = weights_digest(directory)
        check_digest(directory, config, digest)
        model = RPGModel(checked.model_config, checked.tokenizer.positions())
        model.load_state_dict(read_weights(directory, limits), strict=True)
        generator = cls(
            model,
            checked.tokenizer,
            config,
            digest=digest,
            trust_builders=trust_builders,
            directory=directory,
        )
        generator.source = pinned_source(os.fspath(path), directory)
        return generator.to(device)

    def save_pretrained(self, path: str | os.PathLike[str]) -> Path:
        """Write this generator as a bundle directory (config.json + model.safetensors)."""
        directory = Path(path)
        config = dict(self.config)
        config["tokenizer"] = self.tokenizer.to_dict()
        config["model"] = self.model.config.to_dict()
        config.pop("format", None)
        config.pop("version", None)
        write_bundle(directory, config, self.model.state_dict())
        self.config = read_config(directory)
        self.digest = weights_digest(directory)
        self.directory = directory
        return directory

    # ------------------------------------------------------------------ conditions
    def make_condition(self, condition: Any) -> Tensor | None:
        """Check a condition against the spec and return it as a float32 (dim,) tensor.

        Accepts a list/tensor of `dim` finite floats, or `{"positive_classes": [...]}` (class
        labels) mapped through the spec's labels into a 0/1 mask. The rules are
        `models.request_check`'s, the same the gateway and the worker apply.
        """
        positive = None
        embedding = condition
        if isinstance(condition, dict):
            positive, embedding = list(condition.get("positive_classes") or []), None
        elif isinstance(condition, Tensor):
            embedding = condition.detach().double().flatten().tolist()
        elif condition is not None:
            embedding = [
                float(v) for v in torch.as_tensor(condition, dtype=torch.float64).flatten()
            ]
        values, errors = check_condition(self.config, embedding, positive)
        if errors:
            raise ConditionError("; ".join(f"{e.field}: {e.message}" for e in errors))
        return None if values is None else torch.tensor(values, dtype=torch.float32)

    # ------------------------------------------------------------------ sampling
    def _sampling(self, sampler: SamplerName | None, steps: int | None) -> tuple[SamplerName, int]:
        """The sampler and steps a call runs: as given, else the defaults `sample` documents."""
        if self.model.config.diffusion.objective == "epsilon":
            return sampler or "ddim", 50 if steps is None else steps
        default_sampler, default_steps = default_sampling(self.config)
        if sampler is None:
            sampler = default_sampler
        if steps is None:
            steps = default_steps if sampler == default_sampler else 4
        return sampler, steps

    def sample(
        self,
        num_samples: int = 1,
        condition: Any = None,
        seed: int | None = None,
        sampler: SamplerName | None = None,
        steps: int | None = None,
        *,
        eta: float = 0.0,
        permutation_state: int | None = None,
        dtype: str | torch.dtype = "float32",
        chunk_size: int = 1024,
        should_stop: ShouldStop | None = None,
        on_progress: OnProgress | None = None,
    ) -> list[dict[str, Tensor]]:
        """Generate `num_samples` state dicts of the target architecture.

        `sampler` / `steps` None: DDIM with 50 steps for an epsilon generator (as always), the
        bundle's default sampler and steps for a flow generator (DDIM cannot sample it).
        `dtype` is the compute precision (autocast); the returned tensors keep the zoo's
        dtypes. `should_stop()` is checked before every denoiser step; when it returns True
        sampling ends and `SamplingStopped` is raised. `on_progress(fraction)` is called after
        every denoiser step with the fraction (0..1, never decreasing) of the whole call done.
        """
        if num_samples < 1:
            raise ValueError("num_samples must be >= 1")
        sampler, steps = self._sampling(sampler, steps)
        cond = self.make_condition(condition)
        seed = secrets.randbits(63) if seed is None else int(seed)
        compute_dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
        states = self.model.config.num_permutation_states
        if permutation_state is not None and not 0 <= permutation_state < states:
            raise ValueError(f"permutation_state must be in [0, {states - 1}]")
        device = self.device
        shape = (num_samples, self.tokenizer.num_tokens, self.tokenizer.token_size)
        noise = torch.empty(shape, device=device)  # (N, L, T)
        ids = torch.empty((num_samples,), dtype=torch.long, device=device)  # (N,)
        generators = []
        for index in range(num_samples):
            # Sample i's permutation state, initial noise and every later noise draw come from
            # its own generator, so it is the same whatever num_samples is.
            rng = torch.Generator(device=device).manual_seed(derive_seed(seed, index))
            ids[index] = int(torch.randint(0, states, (1,), device=device, generator=rng))
            noise[index].normal_(generator=rng)
            generators.append(rng)
        if permutation_state is not None:
            ids.fill_(permutation_state)
        batch_cond = None if cond is None else cond.to(device).expand(num_samples, -1)  # (N, dim)
        if device.type == "cpu":
            keep_freed_memory()  # each denoiser step re-allocates the same feature maps
        was_training = self.model.training
        self.model.eval()
        try:
            tokens = self.model.sample_tokens(
                noise,
                ids,
                batch_cond,
                sampler=sampler,
                steps=steps,
                eta=eta,
                chunk_size=chunk_size,
                generators=generators,
                autocast_dtype=compute_dtype,
                should_stop=should_stop,
                on_progress=on_progress,
            )  # (N, L, T)
        finally:
            self.model.train(was_training)
        del noise
        return [self.tokenizer.decode(tokens[index]) for index in range(num_samples)]
