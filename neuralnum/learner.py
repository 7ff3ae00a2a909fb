"""Train a sequence model on an objective with a recipe, then use it as a solver.

``Learner(arch, target, recipe)`` wraps a token model ``(B, n, width) → (B, n, width)``
(a :func:`neuralnum.arch.build_model` name or any ``nn.Module``), an objective
(:mod:`neuralnum.objectives`: the GD update rule, or ``x*`` end-to-end) and a
:class:`~neuralnum.recipe.Recipe`.

* :meth:`Learner.fit` — the training loop, readable top to bottom: fresh problems (or a
  pool) each step, the recipe's LR / noise control, a progress bar (loss, MSE, digits),
  JSON-lines metrics, atomic checkpoints and exact resume (same trajectory as an
  uninterrupted run). Under ``torchrun --nproc_per_node=N`` it runs unchanged: every
  rank draws the same global batch from the same generator and keeps its own slice, so
  the trajectory matches the single-process one up to reduction order.
* :meth:`Learner.step` — one learned iterate; :meth:`Learner.solve` — CG / Chebyshev /
  GD driven only by the learned operator (:mod:`neuralnum.operator_solvers`).
* :meth:`Learner.save` / :meth:`Learner.load` — checkpoints loaded with
  ``torch.load(weights_only=True)``; an incompatible one raises
  :class:`~neuralnum.runtime.CheckpointError`.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch.func import functional_call

from neuralnum import operator_solvers
from neuralnum.objectives import Objective, as_objective, objective_from_dict
from neuralnum.operator_solvers import LearnedOperator, SolveInfo
from neuralnum.recipe import (
    BatchSchedule,
    GradientFilter,
    LRController,
    Recipe,
    WeightAverage,
    cosine_similarity,
    loss_fn,
    make_optimizer,
)
from neuralnum.reference import digits, mse, relative_error
from neuralnum.runtime import (
    CheckpointError,
    Distributed,
    MetricsLog,
    generator_state,
    init_distributed,
    load_checkpoint,
    make_generator,
    progress,
    restore_generator,
    save_checkpoint,
)
from neuralnum.tokens import TokenLayout
from neuralnum.validation import check_problem, check_tensor

__all__ = ["ARCHS", "FORMAT", "Learner", "SolveInfo", "default_arch"]

FORMAT = "neuralnum.learner/1"

def default_arch(name: str, d: int) -> tuple[int, int, dict[str, Any]]:
    """Default ``(d_model, n_layers, options)`` of architecture ``name`` for ``d`` unknowns.

    The polynomial models default to the shapes of the exact GD constructions
    (:mod:`neuralnum.arch.construct`): BaseConv 3 layers of width ``4d + 1`` with the
    ``"delta_sum"`` init (learns from scratch far faster than ``"random"``); linear
    attention 1 layer of width ``2d + 1`` with head dimension ``d + 1``. The end-to-end
    softmax Transformer: 4 layers of width 64, 4 heads, on ``2d + 1``-wide tokens.
    """
    if name == "baseconv":
        return 4 * d + 1, 3, {"init": "delta_sum"}
    if name == "linear_attention":
        return 2 * d + 1, 1, {"head_dim": d + 1}
    if name == "transformer":
        return 2 * d + 1, 4, {"width": 64, "n_heads": 4}
    raise ValueError(f"unknown arch {name!r}; choose from {list(ARCHS)}")


ARCHS = ("baseconv", "linear_attention", "transformer")

Callback = Callable[["Learner", dict[str, Any]], bool | None]


def _build_arch(name: str, d_model: int, n_layers: int, n: int, dtype: torch.dtype,
                seed: int, options: dict[str, Any]) -> torch.nn.Module:
    from neuralnum.arch import build_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model(name, d_model=d_model, n_layers=n_layers, seq_len=n, dtype=dtype,
                           **options)


def _cast_module(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """``model.to(dtype)``, also updating a ``dtype`` attribute the model validates with."""
    model = model.to(dtype)
    if isinstance(getattr(model, "dtype", None), torch.dtype):
        model.dtype = dtype
    return model


class Learner:
    """A trainable learned solver step (or end-to-end predictor) for ``n × d`` problems.

    ``arch``: a :func:`neuralnum.arch.build_model` name (``d_model``, ``n_layers`` and
    ``arch_options`` default to :func:`default_arch`; weights seeded by ``seed``) or an
    ``nn.Module`` mapping ``(B, n, d_model)`` tokens to the same shape.
    ``target``: a :class:`~neuralnum.targets.GDStep`, an objective, ``"gd"`` or
    ``"solution"``. Parameters live in the recipe's master dtype on ``device``; problems
    are drawn on the CPU (seeded) and moved there. Under ``torchrun`` with CUDA each rank
    uses ``cuda:LOCAL_RANK``.
    """

    def __init__(
        self,
        arch: str | torch.nn.Module,
        target: object = "gd",
        recipe: Recipe | None = None,
        *,
        n: int = 20,
        d: int = 5,
        d_model: int | None = None,
        n_layers: int | None = None,
        arch_options: dict[str, Any] | None = None,
        seed: int = 0,
        device: str | torch.device = "cpu",
    ):
        self.recipe = recipe if recipe is not None else Recipe()
        if not isinstance(self.recipe, Recipe):
            raise TypeError(f"recipe must be a Recipe, got {type(self.recipe).__name__}")
        self.objective: Objective = as_objective(target)
        self.precision = self.recipe.precision
        self.n, self.d = n, d
        self.device = torch.device(device)
        if isinstance(arch, str):
            default_width, default_layers, default_options = default_arch(arch, d)
            d_model = d_model or default_width
            n_layers = n_layers or default_layers
            options = default_options if arch_options is None else dict(arch_options)
            model = _build_arch(arch, d_model, n_layers, n, self.precision.param_dtype, seed,
                                options)
            self.arch_config: dict[str, Any] | None = {
                "name": arch, "d_model": d_model, "n_layers": n_layers, "seed": seed,
                "options": options}
        elif isinstance(arch, torch.nn.Module):
            d_model = d_model or getattr(arch, "d_model", 2 * d + 1)
            model = _cast_module(arch, self.precision.param_dtype)
            self.arch_config = None
        else:
            raise TypeError(f"arch must be an architecture name or nn.Module, got "
                            f"{type(arch).__name__}")
        self.layout = TokenLayout(n, d, width=d_model)
        self.model = model.to(self.device)
        self._compute_model = (_cast_module(copy.deepcopy(model), self.precision.compute_dtype)
                               if self.precision.mixed else model)
        self.step_count = 0
        self.last_solve: SolveInfo | None = None
        self._train: dict[str, Any] | None = None

    # ------------------------------------------------------------------ config
    @property
    def dtype(self) -> torch.dtype:
        """The dtype problems are given in (the master / parameter dtype)."""
        return self.precision.param_dtype

    def config(self) -> dict[str, Any]:
        """What is needed to rebuild this learner (saved in every checkpoint)."""
        return {"arch": self.arch_config, "n": self.n, "d": self.d,
                "d_model": self.layout.width, "objective": self.objective.to_dict(),
                "recipe": self.recipe.to_dict()}

    def parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def to(self, device: str | torch.device) -> Learner:
        """Move the model (and its mixed-precision compute copy) to ``device``; problems
        given to :meth:`step` / :meth:`solve` must then live there too."""
        self.device = torch.device(device)
        self.model.to(self.device)
        self._compute_model.to(self.device)
        return self

    @torch.no_grad()
    def init_construction(self, noise: float = 0.0, seed: int = 0) -> Learner:
        """Set the weights to the exact GD construction (``η = 1/n``: the model computes
        ``x − Aᵀ(Ax − b)/n``, zero loss) plus ``noise``·N(0, 1) on every parameter.

        For BaseConv / linear attention learners of the default shape and the update
        objective: the starting point of the precision-refinement studies.
        """
        from neuralnum.arch import construct

        builders = {"baseconv": construct.construct_baseconv_gd,
                    "linear_attention": construct.construct_linear_attention_gd}
        name = (self.arch_config or {}).get("name")
        if name not in builders or not self.objective.iterative:
            raise ValueError("init_construction needs a baseconv or linear_attention learner "
                             "with the update objective")
        exact = builders[name](self.n, self.d, 1.0 / self.n, dtype=self.dtype)
        state = exact.state_dict()
        current = self.model.state_dict()
        if set(state) != set(current) or any(state[k].shape != current[k].shape
                                             for k in state):
            raise ValueError(f"the construction needs {name} of the default shape "
                             f"{default_arch(name, self.d)}")
        self.model.load_state_dict(state)
        gen = make_generator(seed)
        for p in self.model.parameters():
            p.add_(noise * torch.randn(p.shape, generator=gen, dtype=p.dtype).to(p.device))
        return self

    # ------------------------------------------------------------------ forward
    def _layout_for(self, n: int) -> TokenLayout:
        return self.layout if n == self.n else TokenLayout(n, self.d, width=self.layout.width)

    def forward(self, A: torch.Tensor, b: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The model's prediction ``(B, d)`` (master dtype), read from the last token's ``x``
        slot by the objective (``x − out_x`` for the update rule, ``out_x`` end-to-end).

        Under the ``"mixed"`` recipe the forward pass runs in float32 on float32 copies of
        the float64 master weights (gradients flow back to the masters).
        """
        out = self._raw_forward(A, b, x)
        if not torch.isfinite(out).all():
            raise FloatingPointError("the model produced NaN/Inf (training diverged or the "
                                     "input is far outside the training distribution)")
        return out

    def _raw_forward(self, A: torch.Tensor, b: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` without the finiteness check of the output."""
        check_problem(A, b, x)
        layout = self._layout_for(A.shape[1])
        tokens = layout.encode(A, b, x)
        if self.precision.mixed:
            compute = self.precision.compute_dtype
            weights = {k: v.to(compute) for k, v in self.model.named_parameters()}
            weights.update({k: v.to(compute) if v.is_floating_point() else v
                            for k, v in self.model.named_buffers()})
            out = functional_call(self._compute_model, weights, (tokens.to(compute),))
        else:
            out = self.model(tokens)
        if out.shape != tokens.shape:
            raise ValueError(f"model output shape {tuple(out.shape)} != token shape "
                             f"{tuple(tokens.shape)}")
        return self.objective.read(x, out[:, -1, layout.x_slice].to(self.dtype))

    def _check_dtype(self, A: torch.Tensor) -> None:
        if A.dtype != self.dtype:
            raise TypeError(f"A.dtype {A.dtype} differs from the learner's dtype {self.dtype}"
                            f" (recipe dtype {self.recipe.dtype!r})")

    @torch.no_grad()
    def step(self, A: torch.Tensor, b: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """One learned iterate ``x⁺`` for ``A: (B, n, d)``, ``b: (B, n)``, ``x: (B, d)``."""
        check_problem(A, b, x)
        self._check_dtype(A)
        return self.objective.next_iterate(A, x, self.forward(A, b, x), self.n)

    @torch.no_grad()
    def solve(
        self,
        A: torch.Tensor,
        b: torch.Tensor,
        method: str | None = None,
        iters: int | None = None,
        tol: float | None = None,
        x0: torch.Tensor | None = None,
        **options: Any,
    ) -> torch.Tensor:
        """Solve ``min ‖A x − b‖`` touching ``A``, ``b`` only through the learned model;
        returns ``x: (B, d)`` (or ``(d,)`` for unbatched ``A: (n, d)``, ``b: (n,)``).

        An update learner runs ``method`` (``"cg"`` default, ``"chebyshev"``, ``"gd"``) of
        :func:`neuralnum.operator_solvers.solve` on its :class:`LearnedOperator`
        (equilibrated, so scale-invariant; no SVD of ``A``); ``iters``, ``tol``, ``x0``
        and ``options`` (``max_iters``, ``patience``, ``accept``, ``record``, ``warn``) go
        there. An end-to-end learner predicts once from ``x = 0``. :attr:`last_solve`
        records per problem iterations, model calls and the status.
        """
        unbatched = isinstance(A, torch.Tensor) and A.ndim == 2
        if unbatched:
            check_tensor(b, "b", 1)
            A, b = A.unsqueeze(0), b.unsqueeze(0)
            x0 = None if x0 is None else check_tensor(x0, "x0", 1).unsqueeze(0)
        check_problem(A, b, x0, x_name="x0")
        self._check_dtype(A)
        if self.objective.iterative:
            x, self.last_solve = operator_solvers.solve(
                LearnedOperator(self, A, b), method or "cg", x0, iters=iters, tol=tol,
                **options)
        else:
            if method is not None:
                raise ValueError(f"an end-to-end learner predicts once; method={method!r} "
                                 f"needs an update learner")
            x = self.forward(A, b, A.new_zeros(A.shape[0], A.shape[2]))
            self.last_solve = SolveInfo.single_call(A.shape[0], A.device)
        return x[0] if unbatched else x

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, A: torch.Tensor, b: torch.Tensor, x: torch.Tensor,
                 label: torch.Tensor) -> dict[str, float]:
        """One-step metrics on a batch: mean ``mse``, mean squared relative error
        ``rel_mse`` and median correct ``digits`` (:mod:`neuralnum.reference` metrics)."""
        out = self.forward(A, b, x)
        return {"mse": float(mse(out, label).mean()),
                "rel_mse": float(relative_error(out, label).pow(2).mean()),
                "digits": float(digits(out, label).median())}

    # ------------------------------------------------------------------ training
    def _init_training(self, dist: Distributed, steps: int | None) -> dict[str, Any]:
        params = self.parameters()
        return {
            "optimizer": make_optimizer(params, self.recipe),
            "lr": LRController(self.recipe, steps),
            "batch": BatchSchedule(self.recipe, dist.world_size),
            "filter": GradientFilter(params, self.recipe.grad_ema, self.recipe.grad_ema_coef),
            "average": WeightAverage(params, self.recipe.weight_ema),
        }

    def _training_state(self, gen: torch.Generator, seed: int) -> dict[str, Any]:
        t = self._train
        assert t is not None
        return {"step": self.step_count, "seed": seed, "generator": generator_state(gen),
                **{k: t[k].state_dict() for k in ("optimizer", "lr", "batch", "filter",
                                                  "average")}}

    def _restore_training(self, state: dict[str, Any], gen: torch.Generator) -> None:
        t = self._train
        assert t is not None
        for k in ("optimizer", "lr", "batch", "filter", "average"):
            t[k].load_state_dict(state[k])
        restore_generator(gen, state["generator"])
        self.step_count = int(state["step"])

    def _draw(self, family: Any, batch: int, gen: torch.Generator,
              pool: tuple[torch.Tensor, ...] | None) -> tuple[torch.Tensor, ...]:
        """``(A, b, x, label)`` for ``batch`` problems: fresh, or indices into ``pool``."""
        if pool is not None:
            idx = torch.randint(pool[0].shape[0], (batch,), generator=gen).to(self.device)
            return tuple(t[idx] for t in pool)
        problems = family.sample(batch, gen, self.dtype)
        A, b, x_star = problems.A, problems.b, problems.x_star
        if A.shape[1:] != (self.n, self.d):
            raise ValueError(f"family produces {tuple(A.shape[1:])} problems but the learner "
                             f"was built for (n, d) = {(self.n, self.d)}")
        if x_star is None:
            if not self.objective.iterative:
                raise ValueError("the end-to-end objective needs families that know x_star "
                                 "(noise = 0)")
            x_star = A.new_zeros(A.shape[0], A.shape[2])  # iterates drawn around 0
        x = self.objective.sample_iterate(x_star, gen)
        batch_ = (A, b, x, self.objective.label(A, b, x, x_star))
        return tuple(t.to(self.device) for t in batch_)

    def _loss_backward(self, batch: tuple[torch.Tensor, ...]) -> float:
        A, b, x, label = batch
        loss = loss_fn(self.forward(A, b, x), label, relative=self.recipe.relative_loss)
        loss.backward()
        return float(loss.detach())

    def _train_step(self, batch: tuple[torch.Tensor, ...], dist: Distributed,
                    adaptive: bool) -> tuple[float, float | None]:
        """Gradients of this rank's slice, averaged over ranks; the half-batch cosine on
        adaptive steps (the two halves' mean is the full-batch gradient: no extra cost)."""
        params = self.parameters()
        for p in params:
            p.grad = None
        if not adaptive:
            loss = self._loss_backward(batch)
            dist.average_gradients(params)
            return loss, None
        half = batch[0].shape[0] // 2
        if half < 1:
            raise ValueError("the adaptive LR needs at least 2 problems per process")
        halves = []
        losses = []
        for part in (slice(0, half), slice(half, 2 * half)):
            losses.append(self._loss_backward(tuple(t[part] for t in batch)))
            dist.average_gradients(params)
            halves.append([p.grad.clone() for p in params])
            for p in params:
                p.grad = None
        for p, g1, g2 in zip(params, *halves, strict=True):
            p.grad = (g1 + g2) / 2
        return sum(losses) / 2, cosine_similarity(*halves)

    def _finish(self, family: Any, gen: torch.Generator, dist: Distributed) -> None:
        """Optional L-BFGS finisher on one fixed global batch of ``max_batch_size``."""
        batch = self._draw(family, self.recipe.max_batch_size, gen, None)
        local = dist.shard(self.recipe.max_batch_size)
        mine = tuple(t[dist.rank * local:(dist.rank + 1) * local] for t in batch)
        params = self.parameters()
        lbfgs = torch.optim.LBFGS(params, lr=1.0, max_iter=self.recipe.finisher_steps,
                                  tolerance_grad=0.0, tolerance_change=0.0,
                                  line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            lbfgs.zero_grad()
            A, b, x, label = mine
            loss = loss_fn(self.forward(A, b, x), label, relative=self.recipe.relative_loss)
            loss.backward()
            dist.average_gradients(params)
            return dist.all_reduce_mean(loss.detach().clone())

        lbfgs.step(closure)

    def fit(
        self,
        family: Any,
        steps: int | None = None,
        *,
        until_mse: float | None = None,
        callbacks: Iterable[Callback] = (),
        seed: int = 0,
        log_every: int = 10,
        eval_batch: int = 256,
        metrics: str | os.PathLike[str] | None = None,
        checkpoint: str | os.PathLike[str] | None = None,
        checkpoint_every: int = 100,
        resume: bool = False,
        distributed: Distributed | None = None,
        show_progress: bool = True,
    ) -> list[dict[str, Any]]:
        """Train on problems from ``family`` for ``steps`` total steps or until the eval MSE
        ≤ ``until_mse`` (checked every ``log_every`` steps); returns the metric records.

        ``family.sample(batch, generator, dtype)`` must return problems with ``A, b,
        x_star``. Every ``log_every`` steps a record ``{step, loss, lr, batch, mse, rel_mse,
        digits}`` (eval on a fixed held-out batch of ``eval_batch``) goes to ``metrics``
        (JSON lines) and the callbacks; a callback returning True stops training.
        ``checkpoint`` is written atomically every ``checkpoint_every`` steps and at the
        end; with ``resume=True`` an existing one is loaded and training continues to the
        same ``steps``, reproducing the uninterrupted trajectory exactly.
        """
        if steps is None and until_mse is None:
            raise ValueError("give steps, until_mse, or both")
        if steps is not None and (not isinstance(steps, int) or steps < 0):
            raise ValueError(f"steps must be a non-negative int, got {steps!r}")
        if log_every < 1 or checkpoint_every < 1:
            raise ValueError("log_every and checkpoint_every must be >= 1")
        dist = distributed or init_distributed(
            device=None if self.device.type == "cuda" else self.device)  # cuda:LOCAL_RANK
        if dist.device != self.device:
            self.to(dist.device)
        gen = make_generator(seed)
        self._train = self._init_training(dist, steps)
        start_step = 0
        if resume and checkpoint is not None and Path(checkpoint).is_file():
            state = self._check_compatible(load_checkpoint(checkpoint), checkpoint)
            self.model.load_state_dict(state["model"])
            if "train" not in state:
                raise CheckpointError(f"{checkpoint} holds no training state to resume")
            self._restore_training(state["train"], gen)
            start_step = self.step_count
        else:
            self.step_count = 0
        log = MetricsLog(metrics if dist.is_main else None,
                         resume_step=start_step if resume else None)
        eval_gen = make_generator(seed + 1_000_003)
        eval_set = self._draw(family, eval_batch, eval_gen, None)
        pool = None
        if not self.recipe.fresh:
            pool = self._draw(family, self.recipe.pool_size, make_generator(seed + 2_000_003),
                              None)
        t = self._train
        total = steps if steps is not None else None
        bar = progress(total=total, initial=start_step, desc="fit",
                       enabled=show_progress and dist.is_main)
        callbacks = list(callbacks)
        stop = False
        try:
            while not stop and (steps is None or self.step_count < steps):
                size = t["batch"].size
                batch = self._draw(family, size, gen, pool)
                local = dist.shard(size)
                mine = tuple(x[dist.rank * local:(dist.rank + 1) * local] for x in batch)
                lr = t["lr"].lr(self.step_count)
                for group in t["optimizer"].param_groups:
                    group["lr"] = lr
                adaptive = t["lr"].adaptive_due(self.step_count)
                loss, cos = self._train_step(mine, dist, adaptive)
                loss = float(dist.all_reduce_mean(
                    torch.tensor(loss, dtype=torch.float64, device=dist.device)))
                if not math.isfinite(loss):
                    raise FloatingPointError(f"training loss became {loss} at step "
                                             f"{self.step_count}")
                t["filter"].apply()
                t["optimizer"].step()
                t["average"].update()
                t["lr"].observe(loss, cos)
                t["batch"].observe(loss)
                self.step_count += 1
                bar.update(1)
                if self.step_count % log_every == 0 or self.step_count == steps:
                    record = log.log(self.step_count, loss=loss, lr=lr, batch=size,
                                     **self._eval(eval_set))
                    bar.set_postfix(loss=f"{loss:.2e}", mse=f"{record['mse']:.2e}",
                                    digits=f"{record['digits']:.1f}")
                    stop = any(bool(cb(self, record)) for cb in callbacks)
                    stop |= until_mse is not None and record["mse"] <= until_mse
                if checkpoint is not None and self.step_count % checkpoint_every == 0:
                    self._save_training(checkpoint, gen, seed, dist)
        finally:
            bar.close()
        if self.recipe.finisher_steps:
            self._finish(family, gen, dist)
        if t["average"].enabled:
            t["average"].copy_to_params()
        if self.recipe.finisher_steps or t["average"].enabled:
            log.log(self.step_count, final=True, **self._eval(eval_set))
        if checkpoint is not None:
            self._save_training(checkpoint, gen, seed, dist)
        return log.records

    def _eval(self, eval_set: tuple[torch.Tensor, ...]) -> dict[str, float]:
        t = self._train
        if t is not None and t["average"].enabled:
            live = [p.detach().clone() for p in self.parameters()]
            t["average"].copy_to_params()
            try:
                return self.evaluate(*eval_set)
            finally:
                with torch.no_grad():
                    for p, v in zip(self.parameters(), live, strict=True):
                        p.copy_(v)
        return self.evaluate(*eval_set)

    def _save_training(self, path: str | os.PathLike[str], gen: torch.Generator, seed: int,
                       dist: Distributed) -> None:
        if dist.is_main:
            save_checkpoint(path, {"format": FORMAT, "config": self.config(),
                                   "model": self.model.state_dict(),
                                   "train": self._training_state(gen, seed)})
        dist.barrier()

    # ------------------------------------------------------------------ save / load
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Atomically write config + weights (no training state) to ``path``."""
        return save_checkpoint(path, {"format": FORMAT, "config": self.config(),
                                      "model": self.model.state_dict()})

    def _check_compatible(self, state: dict[str, Any], path: object) -> dict[str, Any]:
        if state.get("format") != FORMAT:
            raise CheckpointError(f"{path} is not a neuralnum learner checkpoint "
                                  f"(format {state.get('format')!r})")
        saved, mine = state["config"], self.config()
        def arch_shape(cfg: dict[str, Any] | None) -> object:
            return None if cfg is None else (cfg["name"], cfg["d_model"], cfg["n_layers"],
                                             cfg["options"])

        saved = {**saved, "arch": arch_shape(saved.get("arch"))}
        mine = {**mine, "arch": arch_shape(mine.get("arch"))}
        for key in ("arch", "n", "d", "d_model", "objective"):
            if key == "arch" and None in (saved["arch"], mine["arch"]):
                continue
            if saved.get(key) != mine.get(key):
                raise CheckpointError(f"{path} is incompatible: {key} = {saved.get(key)!r}, "
                                      f"this learner has {mine.get(key)!r}")
        current = self.model.state_dict()
        model = state["model"]
        if set(model) != set(current) or any(model[k].shape != current[k].shape
                                             for k in current):
            raise CheckpointError(f"{path} is incompatible: its weights do not match this "
                                  f"model's parameter names/shapes")
        return state

    def load_weights(self, path: str | os.PathLike[str]) -> Learner:
        """Load weights saved by :meth:`save` / :meth:`fit` into this learner (checked)."""
        state = self._check_compatible(load_checkpoint(path), path)
        self.model.load_state_dict(
            {k: v.to(self.dtype) if v.is_floating_point() else v
             for k, v in state["model"].items()})
        return self

    @classmethod
    def load(cls, path: str | os.PathLike[str], arch: torch.nn.Module | None = None,
             recipe: Recipe | None = None) -> Learner:
        """Rebuild a learner from a checkpoint (``arch`` needed for custom modules)."""
        state = load_checkpoint(path)
        if state.get("format") != FORMAT:
            raise CheckpointError(f"{path} is not a neuralnum learner checkpoint")
        cfg = state["config"]
        recipe = recipe or Recipe.from_dict(cfg["recipe"])
        if arch is None:
            if cfg["arch"] is None:
                raise CheckpointError(f"{path} was saved from a custom module: pass arch=")
            arch_cfg = cfg["arch"]
            learner = cls(arch_cfg["name"], objective_from_dict(cfg["objective"]), recipe,
                          n=cfg["n"], d=cfg["d"], d_model=arch_cfg["d_model"],
                          n_layers=arch_cfg["n_layers"], arch_options=arch_cfg["options"],
                          seed=arch_cfg["seed"])
        else:
            learner = cls(arch, objective_from_dict(cfg["objective"]), recipe, n=cfg["n"],
                          d=cfg["d"], d_model=cfg["d_model"])
        return learner.load_weights(path)
