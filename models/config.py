"""Configuration of an RPG generator: one dataclass per part, saved in the bundle's config.json.

Every dataclass round-trips through plain JSON (`to_dict()` / `from_dict()`), which is how a
bundle rebuilds its model (`RPGConfig.from_dict(saved)`), nanoGPT-style.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from models.sampler_names import OBJECTIVES, Objective, SamplerName

# The kinds a config may name; the modules that implement them import these.
BackboneKind = Literal["mamba", "lstm", "transformer", "gmlp"]
ConditionMode = Literal["all", "gate"]
CondProjection = Literal["per_layer", "shared"]
DenoiserKind = Literal["unet", "mlp"]
DENOISER_KINDS: tuple[DenoiserKind, ...] = ("unet", "mlp")
NormKind = Literal["batch", "group"]
PositionKind = Literal["2d", "1d", "learned"]
ScheduleKind = Literal["linear", "cosine"]


def _from_dict(cls: Any, data: dict[str, Any]) -> Any:
    """Build dataclass `cls` from `data`, rejecting unknown keys with a clear message."""
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(
            f"{cls.__name__}: unknown field(s) {unknown}; valid fields: {sorted(names)}"
        )
    return cls(**data)


@dataclass
class BackboneConfig:
    """The recurrent model that turns positions (+ permutation state + condition) into prototypes."""

    kind: BackboneKind = "mamba"
    d_model: int = 256
    num_layers: int = 2
    options: dict[str, Any] = field(default_factory=lambda: {"d_state": 32})
    # False: bare mixers, no norms (the official code); True: pre-norm residual blocks.
    residual: bool = True
    d_output: int | None = None  # the last layer's width (official "post_d_model"); mamba only


@dataclass
class DenoiserConfig:
    """The network that denoises one token at a time, given its prototype.

    `kind="unet"`: the paper's 1-D conv U-Net (`channels`, `kernel_size`, `norm`,
    `cond_projection`); `kind="mlp"`: the GEMM-shaped `MLPDenoiser` (`width`, `depth`,
    `mlp_ratio`). Both read `time_dim`. Bundles saved before kinds existed have no `kind`: U-Net.
    """

    kind: DenoiserKind = "unet"
    channels: tuple[int, ...] = (1, 32, 64, 128, 64, 32, 1)
    kernel_size: int = 7
    time_dim: int = 128
    norm: NormKind = "batch"
    # "shared": one condition projection for all layers (the official code); "per_layer": one each
    cond_projection: CondProjection = "per_layer"
    width: int = 256
    depth: int = 3
    mlp_ratio: int = 2

    def __post_init__(self) -> None:
        self.channels = tuple(int(c) for c in self.channels)
        if self.kind not in DENOISER_KINDS:
            raise ValueError(
                f"denoiser kind must be one of {list(DENOISER_KINDS)}, got {self.kind!r}"
            )


@dataclass
class DiffusionConfig:
    """Training objective and noise schedule (RPG.md: epsilon prediction, linear betas
    1e-4..0.02, T = 1000).

    `objective="flow"`: rectified flow (x_s = (1 - s) x0 + s noise, s in [0, 1]) with the
    denoiser predicting clean data; the beta schedule is then unused, and `num_timesteps`
    only scales the time the denoiser sees (s * num_timesteps). Bundles saved before
    objectives existed have none: epsilon.
    """

    num_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    schedule: ScheduleKind = "linear"
    objective: Objective = "epsilon"

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {list(OBJECTIVES)}, got {self.objective!r}")


@dataclass
class RPGConfig:
    """Everything needed to rebuild the RPG network (not the tokenizer, which has its own dict)."""

    token_size: int = 256
    position: PositionKind = "2d"
    num_permutation_states: int = 1
    condition_dim: int = 0
    condition_mode: ConditionMode = "all"
    # True: a linear head reads each token's mean from its prototype (trained by regression)
    # and the denoiser models only the residual around it (RPGModel, "mean head").
    mean_head: bool = False
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    denoiser: DenoiserConfig = field(default_factory=DenoiserConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)

    def __post_init__(self) -> None:
        if self.token_size < 1:
            raise ValueError(f"token_size must be >= 1, got {self.token_size}")
        if self.num_permutation_states < 1:
            raise ValueError("num_permutation_states must be >= 1")
        if self.condition_dim < 0:
            raise ValueError("condition_dim must be >= 0 (0 = unconditional)")
        if self.condition_mode not in ("all", "gate"):
            raise ValueError(f"condition_mode must be 'all' or 'gate', got {self.condition_mode!r}")
        if self.position not in ("2d", "1d", "learned"):
            raise ValueError(f"position must be '2d', '1d' or 'learned', got {self.position!r}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (tuples become lists)."""
        data = asdict(self)
        data["denoiser"]["channels"] = list(self.denoiser.channels)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RPGConfig:
        """Inverse of `to_dict`."""
        data = dict(data)
        backbone = _from_dict(BackboneConfig, dict(data.pop("backbone", {})))
        denoiser = _from_dict(DenoiserConfig, dict(data.pop("denoiser", {})))
        diffusion = _from_dict(DiffusionConfig, dict(data.pop("diffusion", {})))
        config: RPGConfig = _from_dict(
            cls, data | {"backbone": backbone, "denoiser": denoiser, "diffusion": diffusion}
        )
        return config


@dataclass(frozen=True)
class Recipe:
    """How long and on what batches a preset trains (what `rpg train`'s flags override), and
    with which denoiser widths when they differ from the preset's (`TrainConfig.channels`)."""

    lr: float
    batch_size: int  # checkpoints per step
    diffusion_batch: int  # tokens the denoiser trains on per step
    steps: int
    channels: tuple[int, ...] | None = None  # the denoiser's widths, if not the preset's
    mean_head: bool = False  # RPGConfig.mean_head: regress each token's mean, diffuse the rest


@dataclass(frozen=True)
class MLPRecipe:
    """A preset's recipe for the `mlp` denoiser kind: its widths and training recipes (the
    U-Net's are the preset's own `channels`, `training` and `conditional`)."""

    width: int
    depth: int
    mlp_ratio: int
    training: Recipe
    conditional: Recipe | None = None  # the recipe on a conditional zoo; None: the same


@dataclass(frozen=True)
class Preset:
    """A row of the size-preset table: architecture, training recipe and sampling defaults.

    The one source of these settings: the trainer (`build_model_config`, `TrainConfig`
    defaults), `rpg train`'s defaults, the demo's recipe and the bundle's default sampler
    (config.json "defaults") all read this table. ``official`` names the file of the official
    code (NUS-HPC-AI-Lab/Recurrent-Parameter-Generation) whose configuration the row follows.
    """

    name: str
    d_model: int
    d_state: int
    token_size: int
    channels: tuple[int, ...]
    sampler: SamplerName  # the bundle's default sampler and steps
    sampler_steps: int
    training: Recipe  # the training recipe (on a conditional zoo: `conditional`, if set)
    max_params: int | None  # upper bound of the preset's target range; None = unbounded
    residual: bool = True  # pre-norm residual blocks around the mixers (ours) or bare (official)
    d_output: int | None = None  # the last backbone layer's width (official "post_d_model")
    cond_projection: CondProjection = "per_layer"  # denoiser: per-layer or one shared (official)
    ema_decay: float | None = None  # None: no EMA (official)
    official: str = ""
    # The recipe on a conditional zoo (one task embedding per checkpoint); None: the same.
    conditional: Recipe | None = None
    # The denoiser kind `rpg train` builds by default, and the mlp kind's recipe (None: the
    # preset offers the U-Net only). Each kind trains with its objective by default
    # (`objective_for`) and samples with that objective's default (`sampling`).
    denoiser: DenoiserKind = "unet"
    mlp: MLPRecipe | None = None
    flow_sampler: SamplerName = "flow-midpoint"  # the flow objective's default, and steps
    flow_sampler_steps: int = 4

    def recipe(self, conditional: bool, kind: DenoiserKind = "unet") -> Recipe:
        """The training recipe for a conditional or an unconditional zoo, for denoiser `kind`."""
        if kind == "mlp":
            mlp = self.mlp_recipe()
            if conditional and mlp.conditional is not None:
                return mlp.conditional
            return mlp.training
        if conditional and self.conditional is not None:
            return self.conditional
        return self.training

    def mlp_recipe(self) -> MLPRecipe:
        """The mlp kind's recipe; ValueError (with the fix) where the preset has none."""
        if self.mlp is None:
            with_mlp = sorted(name for name, p in PRESETS.items() if p.mlp is not None)
            raise ValueError(
                f"preset {self.name!r} has no recipe for the mlp denoiser; use --denoiser unet "
                f"or a preset with one: {with_mlp}"
            )
        return self.mlp

    @staticmethod
    def objective_for(kind: DenoiserKind) -> Objective:
        """The objective a denoiser kind trains with by default: the U-Net keeps the paper's
        epsilon prediction, the mlp kind uses rectified flow (docs/explanation/denoisers.md)."""
        return "flow" if kind == "mlp" else "epsilon"

    def sampling(self, objective: Objective) -> tuple[SamplerName, int]:
        """The default (sampler, steps) of a generator trained with `objective`."""
        if objective == "flow":
            return self.flow_sampler, self.flow_sampler_steps
        return self.sampler, self.sampler_steps


_PAPER_UNET = (1, 32, 64, 128, 64, 32, 1)

PRESETS: dict[str, Preset] = {
    # small, base and large follow the official configuration file named in `official`
    # (bare Mamba2 stack, one shared condition projection, no EMA; docs/benchmarks "Presets" compares
    # parameter counts). The tiny preset is ours, measured on this project's CPU: residual +
    # norm blocks, per-layer projections, EMA, and a CPU recipe (the official small-net file
    # trains 30k steps at lr 1e-4 on a GPU; ~1000 steps at 4e-3 with warm-up, cosine decay and
    # EMA reach the zoo's accuracy in minutes here: docs/benchmarks, "Results"). Its default sampler is
    # DPM-Solver++ with 8 steps: within 0.1 point of DDIM-50 on both digits zoos (docs/benchmarks,
    # "Samplers").
    "tiny": Preset(
        name="tiny", d_model=256, d_state=32, token_size=256, channels=_PAPER_UNET,
        sampler="dpm-solver++", sampler_steps=8,
        training=Recipe(lr=4e-3, batch_size=8, diffusion_batch=128, steps=1000),
        max_params=50_000, ema_decay=0.995,
        official="workspace/compare/ours_cnnsmall.py",
        # Conditional zoos (the task zoo): 4x the checkpoints, a lower peak rate, and a
        # denoiser of half the widths (a quarter of the FLOPs per token) that trains on 8x
        # the tokens per step: 3x the tokens per second here, and the task lives in how many
        # tokens the denoiser sees (docs/benchmarks, "Task-conditioned generation").
        conditional=Recipe(
            lr=2e-3, batch_size=32, diffusion_batch=1024, steps=3000,
            channels=(1, 16, 32, 64, 32, 16, 1), mean_head=True,
        ),
        denoiser="mlp",
        mlp=MLPRecipe(
            width=256, depth=3, mlp_ratio=2,
            training=Recipe(lr=4e-3, batch_size=8, diffusion_batch=512, steps=1000),
            conditional=Recipe(
                lr=2e-3, batch_size=32, diffusion_batch=1024, steps=3000, mean_head=True
            ),
        ),
    ),
    # Ours, for targets of 50K-2M parameters on a CPU (docs/benchmarks/real-size.md): the
    # paper's small row is a 225M-parameter generator for a 1M-parameter ResNet, 42 GiB to train
    # at batch 4. Tokens of 2048 values (627 per digits ResNet), a 768-wide backbone, the mean
    # head (regression for each token's mean, the denoiser for the rest) and the mlp denoiser
    # with rectified flow (the U-Net, narrow, with --denoiser unet).
    "compact": Preset(
        name="compact", d_model=768, d_state=32, token_size=2048, channels=(1, 8, 16, 8, 1),
        sampler="dpm-solver++", sampler_steps=8,
        training=Recipe(lr=1e-3, batch_size=8, diffusion_batch=512, steps=1000, mean_head=True),
        max_params=2_000_000, cond_projection="shared", ema_decay=0.995,
        denoiser="mlp",
        mlp=MLPRecipe(
            width=256, depth=3, mlp_ratio=2,
            training=Recipe(
                lr=1e-3, batch_size=8, diffusion_batch=512, steps=1000, mean_head=True
            ),
        ),
    ),
    # Ours, for targets of 2M-20M parameters on a CPU (ResNet-18's 11.2M: docs/benchmarks/
    # real-size.md "ResNet-18"): compact's backbone and mlp denoiser over tokens 8x longer, so
    # that a ResNet-18 is ~800 tokens (the backbone's cost follows the token count) and the
    # prototypes' rank (d_model + 1) still covers min(tokens, token size) for the mean head.
    "medium": Preset(
        name="medium", d_model=1024, d_state=32, token_size=16384, channels=(1, 8, 16, 8, 1),
        sampler="dpm-solver++", sampler_steps=8,
        training=Recipe(lr=1e-3, batch_size=8, diffusion_batch=256, steps=1000, mean_head=True),
        max_params=20_000_000, cond_projection="shared", ema_decay=0.995,
        denoiser="mlp",
        mlp=MLPRecipe(
            width=256, depth=3, mlp_ratio=2,
            training=Recipe(
                lr=1e-3, batch_size=8, diffusion_batch=256, steps=1000, mean_head=True
            ),
        ),
    ),
    "small": Preset(
        name="small", d_model=4096, d_state=128, token_size=4096, channels=_PAPER_UNET,
        sampler="ddpm", sampler_steps=1000,
        training=Recipe(lr=3e-5, batch_size=4, diffusion_batch=768, steps=50_000),
        max_params=10_000_000, residual=False, cond_projection="shared",
        official="workspace/ablation/token_dim/dim_4096.py",
    ),
    "base": Preset(
        name="base", d_model=8192, d_state=128, token_size=8192, channels=_PAPER_UNET,
        sampler="ddpm", sampler_steps=1000,
        training=Recipe(lr=3e-5, batch_size=8, diffusion_batch=1024, steps=80_000),
        max_params=50_000_000, residual=False, cond_projection="shared",
        official="workspace/main/resnet18_8192.py",
    ),
    "large": Preset(
        name="large", d_model=12288, d_state=128, token_size=16384, channels=(1, 64, 96, 64, 1),
        sampler="ddim", sampler_steps=60,
        training=Recipe(lr=1e-5, batch_size=2, diffusion_batch=512, steps=120_000),
        max_params=None, residual=False, d_output=16384,
        cond_projection="shared", official="workspace/main/vitbase_16384.py",
    ),
}  # fmt: skip


def preset_for(num_parameters: int) -> str:
    """The smallest preset whose target range holds `num_parameters`."""
    for name, preset in PRESETS.items():
        if preset.max_params is None or num_parameters < preset.max_params:
            return name
    return "large"
