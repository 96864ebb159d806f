"""The LightningModule: trains the unfrozen part of a LayerGraph with the fine-tune config."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
import torchmetrics
from torchmetrics.classification import BinaryAUROC, BinaryF1Score, MulticlassAccuracy, MulticlassF1Score

from tlexp import finetune as ft
from tlexp.config import Loss
from tlexp.errors import ConfigError
from tlexp.graph import LayerGraph, get_layer_type

__all__ = ["TransferModule", "output_kind", "make_metrics", "LOSSES"]

#: tlexp.config.Loss's values (bce: one output unit, sigmoid or logit, for two classes)
LOSSES = tuple(loss.value for loss in Loss)


def output_kind(graph: LayerGraph) -> str:
    """'probs' when the output layer ends in softmax, 'log_probs' for log_softmax, else 'logits'.

    DL4J output layers carry their softmax; timm heads return logits. The loss reads which.
    """
    node = graph.node(graph.outputs[0]) if graph.outputs[0] in graph else None
    if node is None:
        return "logits"
    if node.spec is None:
        return "logits"
    args = node.spec.args
    lt = get_layer_type(node.spec.type)
    act = args.get("name") if lt.is_activation else args.get("activation") if lt.takes_activation else None
    return {"softmax": "probs", "log_softmax": "log_probs", "sigmoid": "sigmoid"}.get(act, "logits")


def log_probs(out: torch.Tensor, kind: str) -> torch.Tensor:
    if out.shape[-1] == 1:
        # one unit for two classes (finetune.loss=bce): [log p(0), log p(1)], so that the
        # negative log-likelihood of these two columns is binary cross-entropy
        if kind == "sigmoid":
            p = out[..., 0].clamp(1e-7, 1 - 1e-7)
            return torch.stack([torch.log1p(-p), torch.log(p)], dim=-1)
        z = out[..., 0]
        return torch.stack([F.logsigmoid(-z), F.logsigmoid(z)], dim=-1)
    if kind == "probs":
        return torch.log(out.clamp_min(1e-12))
    if kind == "log_probs":
        return out
    return F.log_softmax(out, dim=-1)


def make_metrics(num_classes: int) -> torchmetrics.MetricCollection:
    if num_classes == 2:
        return torchmetrics.MetricCollection(
            {"accuracy": MulticlassAccuracy(2, average="micro"), "f1": BinaryF1Score(), "auroc": BinaryAUROC()}
        )
    return torchmetrics.MetricCollection(
        {"accuracy": MulticlassAccuracy(num_classes, average="micro"), "f1": MulticlassF1Score(num_classes, average="macro")}
    )


def update_metrics(metrics: torchmetrics.MetricCollection, logp: torch.Tensor, y: torch.Tensor, num_classes: int) -> None:
    probs = logp.exp()
    if num_classes == 2:
        for name, m in metrics.items():
            m.update(probs if name == "accuracy" else probs[:, 1], y)
    else:
        metrics.update(probs, y)


class TransferModule(pl.LightningModule):
    """Holds the trainable graph (the suffix, or the whole model with its frozen prefix)."""

    def __init__(
        self,
        model: LayerGraph,
        finetune: Mapping[str, Any],
        num_classes: int,
        class_weights: torch.Tensor | None = None,
        optimizer_state: Mapping[str, Any] | None = None,
        monitor: str = "val/loss",
        training_terms: Any = None,
        eval_modules: Any = (),
    ) -> None:
        super().__init__()
        self.model = model
        # a source's own training terms (Keras regularizers and constraints, when enforced):
        # ``penalty(model)`` joins the loss, ``after_step(model)`` follows each optimizer step
        self.training_terms = training_terms
        if training_terms is not None:
            training_terms.attach(model)
        self.finetune = dict(finetune)
        # parsed once: the per-step calls (l2, gradient normalization) then read plain attributes
        self.settings = ft.parse_finetune(self.finetune)
        self.num_classes = num_classes
        self.kind = output_kind(model)
        self.register_buffer("class_weights", class_weights, persistent=False)
        self.optimizer_state = optimizer_state
        self.automatic_optimization = False
        self._step_scheduler: Any = None
        self._epoch_scheduler: Any = None
        #: where a continued run starts (a saved run's counters, DL4J's iteration/epoch counts)
        #: and what this run did: optimizer steps, the lr of its first and last step
        self.progress_before: dict[str, Any] = dict((optimizer_state or {}).get("progress") or {})
        self.schedule_restored: bool | str = False
        self.steps_done = 0
        self.lr_first: float | None = None
        self.lr_last: float | None = None
        self.test_metrics = make_metrics(num_classes).clone(prefix="test/")
        #: val/auroc is computed per epoch only when it chooses the epoch (it needs every score)
        self.val_auroc = monitor == "val/auroc" and num_classes == 2
        #: trainable modules kept in inference mode (BatchNorm of newly unfrozen layers,
        #: unfreeze.bn=frozen); a plain list, not registered as submodules
        self.eval_modules = list(eval_modules)
        for m in self.eval_modules:  # Lightning keeps each submodule's mode as it finds it
            m.eval()

    def train(self, mode: bool = True) -> TransferModule:
        super().train(mode)
        for m in getattr(self, "eval_modules", ()):
            m.eval()
        return self

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        out = self.model(*xs)
        return out[0] if isinstance(out, tuple) else out

    def _logp(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = batch
        xs = tuple(x) if isinstance(x, (tuple, list)) else (x,)
        return log_probs(self(*xs), self.kind), y

    # One optimizer step per batch, written out (manual optimization): Lightning's closure
    # machinery and per-step logging cost more than a whole step of a small head. Losses are
    # summed on the tensor side and logged once per epoch.
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        optimizer = self.optimizers()
        logp, y = self._logp(batch)
        loss = F.nll_loss(logp, y, weight=self.class_weights)
        optimizer.zero_grad(set_to_none=True)
        extra = self.training_terms.penalty(self.model) if self.training_terms is not None else 0.0
        self.manual_backward(loss + ft.regularization_loss(self.model, self.settings) + extra)
        ft.normalize_gradients(self.model, self.settings)
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        self.steps_done += 1
        self.lr_last = float(lr)
        if self.lr_first is None:
            self.lr_first = float(lr)
        ft.apply_constraints(self.model, self.settings)
        if self.training_terms is not None:
            self.training_terms.after_step(self.model)
        if self._step_scheduler is not None:
            self._step_scheduler.step()
        self._train_sum = self._train_sum + loss.detach() * len(y)
        self._train_n += len(y)
        return loss

    def on_train_epoch_start(self) -> None:
        for m in self.eval_modules:
            m.eval()
        self._train_sum, self._train_n = torch.zeros((), device=self.device), 0

    def on_train_epoch_end(self) -> None:
        if self._epoch_scheduler is not None:
            self._epoch_scheduler.step()
        if self._train_n:
            self.log("train/loss", self._train_sum / self._train_n, prog_bar=True)

    def on_validation_epoch_start(self) -> None:
        zero = torch.zeros((), device=self.device)
        self._val_sum, self._val_correct, self._val_n = zero, zero.clone(), 0
        self._val_scores: list[torch.Tensor] = []
        self._val_labels: list[torch.Tensor] = []

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        # loss and accuracy only; the full metrics (F1, AUROC) are computed once, on the
        # reassembled model, after training
        logp, y = self._logp(batch)
        self._val_sum = self._val_sum + F.nll_loss(logp, y, weight=self.class_weights, reduction="sum")
        self._val_correct = self._val_correct + (logp.argmax(-1) == y).sum()
        self._val_n += len(y)
        if self.val_auroc:
            self._val_scores.append(logp[:, 1].detach())
            self._val_labels.append(y)

    def on_validation_epoch_end(self) -> None:
        if self._val_n:
            self.log("val/loss", self._val_sum / self._val_n, prog_bar=True)
            self.log("val/accuracy", self._val_correct.float() / self._val_n, prog_bar=True)
        if self.val_auroc and self._val_scores:
            from torchmetrics.functional.classification import binary_auroc

            # log p(class 1) ranks the samples as p does
            auroc = binary_auroc(torch.cat(self._val_scores).exp(), torch.cat(self._val_labels))
            self.log("val/auroc", auroc, prog_bar=True)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        logp, y = self._logp(batch)
        update_metrics(self.test_metrics, logp, y, self.num_classes)

    def on_test_epoch_end(self) -> None:
        self.log_dict({k: v for k, v in self.test_metrics.compute().items()})
        self.test_metrics.reset()

    def configure_optimizers(self) -> Any:
        optimizer = ft.build_optimizer(self.model, self.settings)
        if self.optimizer_state is not None:
            state = self.optimizer_state
            if "by_name" in state:
                state = state_by_name(optimizer, self.model, state["by_name"])
            ft.load_optimizer_state(optimizer, state)
        self._step_scheduler = self._epoch_scheduler = None
        if self.settings.schedule == "none":
            return optimizer
        steps = max(1, int(self.trainer.estimated_stepping_batches // max(1, self.trainer.max_epochs or 1)))
        scheduler = ft.build_scheduler(optimizer, self.settings, max_epochs=int(self.trainer.max_epochs or 1), steps_per_epoch=steps)
        if scheduler is None:
            return optimizer
        saved = self.progress_before.get("schedule")
        if saved and self.optimizer_state is not None:
            self.schedule_restored = self._restore_schedule(optimizer, scheduler, saved, steps)
        # stepped by training_step / on_train_epoch_end (manual optimization steps nothing itself)
        if scheduler.get("interval", "epoch") == "step":
            self._step_scheduler = scheduler["scheduler"]
        else:
            self._epoch_scheduler = scheduler["scheduler"]
        return optimizer

    def _restore_schedule(self, optimizer: torch.optim.Optimizer, scheduler: Mapping[str, Any],
                          saved: Mapping[str, Any], steps_per_epoch: int) -> bool | str:
        """Continue the saved run's schedule where it stopped (True), or say why it starts fresh."""
        why = _same_schedule(saved, self.settings)
        if why is not None:
            return f"started fresh: {why}"
        state = saved.get("state") or {}
        total = state.get("total_steps")
        if total is not None:  # OneCycleLR cannot step past its cycle
            left = int(total) - int(state.get("last_epoch", 0))
            need = steps_per_epoch * int(self.trainer.max_epochs or 1)
            if need > left:
                raise ConfigError(
                    f"finetune.schedule: the saved onecycle schedule has {left} steps left, this run takes {need}; "
                    "set trainer.max_epochs lower or choose another finetune.schedule (it starts fresh)"
                )
        ft.restore_scheduler(optimizer, scheduler["scheduler"], state, (self.optimizer_state or {}).get("param_groups"))
        return True

    def progress(self, epochs: int) -> dict[str, Any]:
        """The counters a continued run starts from (saved with the optimizer state) and this
        run's own: epochs and optimizer steps in all, the lr of the first and last step."""
        before = self.progress_before
        out: dict[str, Any] = {
            "epochs": int(before.get("epochs", 0)) + epochs,
            "global_step": int(before.get("global_step", 0)) + self.steps_done,
            "lr_first": self.lr_first,
            "lr_last": self.lr_last,
        }
        if before:
            out["continued_from"] = {k: before[k] for k in ("epochs", "global_step") if k in before}
            out["schedule_restored"] = self.schedule_restored
        sched = self._step_scheduler or self._epoch_scheduler
        if sched is not None:
            out["schedule"] = _schedule_record(self.settings, sched)
        return out


def _same_schedule(saved: Mapping[str, Any], settings: Any) -> str | None:
    """Why a saved schedule cannot continue as this run's (None: it can)."""
    if saved.get("name") != settings.schedule:
        return f"the saved run used schedule {saved.get('name')!r}, this run {settings.schedule!r}"
    if _plain_json(saved.get("args") or {}) != _plain_json(dict(settings.schedule_args)):
        return f"schedule_args differ from the saved run's ({saved.get('args')})"
    return None


def _schedule_record(settings: Any, scheduler: Any) -> dict[str, Any]:
    return {"name": settings.schedule, "args": _plain_json(dict(settings.schedule_args)),
            "state": ft.scheduler_state(scheduler)}


def _plain_json(value: Any) -> Any:
    import json

    return json.loads(json.dumps(value, default=str))


def state_by_name(optimizer: torch.optim.Optimizer, model: torch.nn.Module, by_name: Mapping[str, Any]) -> dict[str, Any]:
    """An optimizer state keyed by parameter name (a source's, e.g. DL4J's updater state) as
    ``optimizer.state_dict()`` keys it; parameters the state does not name start fresh."""
    names = {id(p): n for n, p in model.named_parameters()}
    ref = optimizer.state_dict()
    state: dict[int, Any] = {}
    for group, saved in zip(optimizer.param_groups, ref["param_groups"]):
        for p, pid in zip(group["params"], saved["params"]):
            n = names.get(id(p))
            if n is not None and n in by_name:
                state[pid] = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in by_name[n].items()}
    return {"state": state, "param_groups": ref["param_groups"]}


@torch.no_grad()
def evaluate(model: LayerGraph, loader: Any, num_classes: int, device: torch.device | str = "cpu") -> dict[str, float]:
    """Loss and metrics of the whole model on raw data (inference mode)."""
    kind = output_kind(model)
    metrics = make_metrics(num_classes).to(device)
    was = model.training
    model.eval().to(device)
    total, count = 0.0, 0
    try:
        for x, y in loader:
            xs = tuple(x) if isinstance(x, (tuple, list)) else (x,)
            xs = tuple(t.to(device) for t in xs)
            y = y.to(device)
            out = model(*xs)
            logp = log_probs(out[0] if isinstance(out, tuple) else out, kind)
            total += float(F.nll_loss(logp, y, reduction="sum"))
            count += len(y)
            update_metrics(metrics, logp, y, num_classes)
    finally:
        model.train(was)
    result = {k: float(v) for k, v in metrics.compute().items()}
    result["loss"] = total / max(count, 1)
    result["samples"] = count
    return result
