"""The paper's two-tower recommender, in two implementations of the same model.

User tower: an ID embedding table (dim 128). Item tower: frozen (concatenated) item embeddings ->
MLP with `hidden` sizes, ReLU and dropout -> dim; `hidden=[]` is one linear layer. Score: dot
product; probability: sigmoid; loss: binary cross-entropy. Parameters start Gaussian (the paper says
only "Gaussian"; we scale by fan-in so the MLP's activations neither vanish nor explode).

Dropout acts on every hidden activation (after its ReLU); a linear tower has none, so it acts on the
input features instead and the dropout grid still means something.

- `TwoTower` is the plain reference: an nn.Module that runs the item tower once per sample.
- `StackedTwoTower` trains G copies (the grid points) at once: every parameter carries a leading
  grid axis, the towers run as batched matmuls, and the item tower runs once per distinct item of a
  batch. `StackedAdamW` is AdamW over those stacked tensors with one learning rate per grid point
  (same arithmetic as torch.optim.AdamW, which takes a single lr per parameter group).

`StackedTwoTower` can run the item tower's training matmuls in bf16 (train.precision, see
xreflect/training/precision.py); its parameters and everything else stay fp32.
"""
from __future__ import annotations

import hashlib

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

State = dict[str, np.ndarray]  # one model's parameters: "user", "w0", "b0", "w1", "b1", ...


def layer_sizes(d_in: int, hidden: list[int], dim: int) -> list[int]:
    return [d_in, *hidden, dim]


def init_state(n_users: int, d_in: int, hidden: list[int], dim: int, seed: int) -> State:
    """Gaussian initialisation: user vectors N(0, 1/dim); weights N(0, gain/fan_in) with gain 2
    before a ReLU and 1 for the output layer; biases zero."""
    rng = np.random.default_rng(seed)
    state: State = {"user": rng.normal(0.0, dim ** -0.5, (n_users, dim)).astype(np.float32)}
    sizes = layer_sizes(d_in, hidden, dim)
    for layer, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        gain = 2.0 if layer < len(sizes) - 2 else 1.0
        state[f"w{layer}"] = rng.normal(0.0, (gain / fan_in) ** 0.5, (fan_in, fan_out)).astype(np.float32)
        state[f"b{layer}"] = np.zeros(fan_out, dtype=np.float32)
    return state


def n_layers(state: State) -> int:
    return sum(1 for name in state if name.startswith("w"))


def seed_for(*parts: object) -> int:
    """A stable 63-bit seed from any values (so a grid point's random stream depends only on the
    point itself, never on which other points train beside it)."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def score_matrix(state: State, features: Tensor, users: Tensor) -> Tensor:
    """Evaluation scores (no dropout) of one model for every item: [n_users, n_items]; the item
    tower runs once for the whole catalog."""
    device = features.device
    h = features
    for layer in range(n_layers(state)):
        h = h @ torch.as_tensor(state[f"w{layer}"], device=device) + torch.as_tensor(state[f"b{layer}"], device=device)
        if layer < n_layers(state) - 1:
            h = torch.relu(h)
    user = torch.as_tensor(state["user"], device=device)[users]
    return user @ h.T


def score_state(state: State, features: Tensor, users: Tensor, items: Tensor) -> Tensor:
    """Evaluation scores of one model for `items` [n_users, width] of `users` [n_users]."""
    return score_matrix(state, features, users).gather(1, items)


class TwoTower(nn.Module):
    """Plain per-sample reference: the item tower runs on every sample of the batch."""

    def __init__(self, state: State, features: Tensor, dropout: float):
        super().__init__()
        self.register_buffer("features", features)
        self.user = nn.Embedding.from_pretrained(torch.as_tensor(state["user"]).clone(), freeze=False)
        self.linears = nn.ModuleList()
        for layer in range(n_layers(state)):
            w = torch.as_tensor(state[f"w{layer}"])
            linear = nn.Linear(w.shape[0], w.shape[1])
            with torch.no_grad():
                linear.weight.copy_(w.T)
                linear.bias.copy_(torch.as_tensor(state[f"b{layer}"]))
            self.linears.append(linear)
        self.dropout = nn.Dropout(dropout)

    def forward(self, users: Tensor, items: Tensor) -> Tensor:
        h = self.features[items]
        if len(self.linears) == 1:
            h = self.dropout(h)
        for layer, linear in enumerate(self.linears):
            h = linear(h)
            if layer < len(self.linears) - 1:
                h = self.dropout(torch.relu(h))
        return (self.user(users) * h).sum(-1)

    def state(self) -> State:
        state: State = {"user": self.user.weight.detach().cpu().numpy().copy()}
        for layer, linear in enumerate(self.linears):
            state[f"w{layer}"] = linear.weight.detach().T.cpu().numpy().copy()
            state[f"b{layer}"] = linear.bias.detach().cpu().numpy().copy()
        return state


class StackedTwoTower:
    """G two-tower models with the same shapes, trained together.

    Parameters: "user" [G, n_users, dim], "w<l>" [G, in, out], "b<l>" [G, 1, out].
    """

    def __init__(self, states: list[State], features: Tensor, dropout: list[float], seeds: list[int],
                 dtype: torch.dtype = torch.float32):
        device = features.device
        self.features = features
        # Training runs the item tower in `dtype` (see xreflect/training/precision.py): the frozen
        # features are cast once, the (small) weights once per batch; parameters, their gradients,
        # the loss and the optimizer state stay fp32. Evaluation always runs in fp32.
        self.dtype = dtype
        self.train_features = features.to(dtype)
        self.row_step = 1 if dtype == torch.float32 else BF16_ROW_STEP  # see pad_rows
        self.params: dict[str, Tensor] = {}
        for name in states[0]:
            stacked = np.stack([s[name] for s in states])
            if name.startswith("b"):
                stacked = stacked[:, None, :]
            self.params[name] = torch.tensor(stacked, device=device, requires_grad=True)
        self.layers = n_layers(states[0])
        self.dropout = torch.tensor(dropout, dtype=torch.float32, device=device)
        # One generator per grid point: its dropout masks do not depend on its neighbours.
        self.generators = []
        for seed in seeds:
            gen = torch.Generator(device=device)
            gen.manual_seed(seed)
            self.generators.append(gen)

    @property
    def size(self) -> int:
        return len(self.generators)

    def _dropout(self, h: Tensor) -> Tensor:
        """Inverted dropout with each grid point's own rate and random stream; h is [G, M, width].
        The noise is drawn in place per grid point (no stacking copy) and turned into the
        keep/scale factor in place: 3 passes over memory instead of 6. In bf16 the factor 1/keep is
        rounded to bf16 (at most 0.2% off: 1/0.9 becomes 1.109), a constant rescaling that the next
        layer's weights absorb; the bf16-vs-fp32 check (benchmarks/precision_check.py) covers it."""
        noise = torch.empty(h.shape, dtype=torch.float32, device=h.device)  # fp32 whatever h's dtype:
        for row, gen in enumerate(self.generators):                          # the same keep probability
            noise[row].uniform_(0.0, 1.0, generator=gen)
        keep = (1.0 - self.dropout).view(-1, 1, 1)
        return h * noise.lt_(keep).div_(keep).to(h.dtype)

    def item_vectors(self, items: Tensor, training: bool) -> Tensor:
        """[G, len(items), dim] fp32 item-tower outputs for `items` (each should be distinct),
        computed in the training dtype when `training`, else in fp32."""
        dtype = self.dtype if training else torch.float32
        # [M, d], shared by all grid points: [M, d] @ [G, d, out] broadcasts
        h = (self.train_features if training else self.features)[items]
        if training and self.layers == 1:
            h = self._dropout(h.expand(self.size, *h.shape))
        for layer in range(self.layers):
            if layer > 0:
                h = torch.relu(h)
                if training:
                    h = self._dropout(h)
            # .to() is a no-op in fp32; in bf16 its backward hands fp32 gradients to the fp32 weights
            h = torch.matmul(h, self.params[f"w{layer}"].to(dtype)) + self.params[f"b{layer}"].to(dtype)
        return h.float()

    def logits(self, users: Tensor, items: Tensor) -> Tensor:
        """Training logits [G, B] for the (user, item) samples of a batch.

        The item tower runs once per distinct item of the batch and its output is shared by every
        sample of that item. With dropout that means the samples of one item in one batch share one
        dropout mask instead of drawing one each. Each sample's mask still has exactly the dropout
        distribution, so the expected loss (a sum over samples of per-sample expectations) and hence
        the expected gradient are unchanged; only the correlation between those samples' noise,
        i.e. the gradient variance, differs. The optimisation target is the same model and loss.
        """
        distinct, inverse = torch.unique(items, return_inverse=True)
        distinct = pad_rows(distinct, self.row_step)
        # index_select's backward is an index_add_, far cheaper than advanced indexing's index_put_.
        item_vec = self.item_vectors(distinct, training=True).index_select(1, inverse)  # [G, B, dim]
        user_vec = self.params["user"].index_select(1, users)               # [G, B, dim]
        return (user_vec * item_vec).sum(-1)

    @torch.no_grad()
    def scores(self, users: Tensor, items: Tensor) -> Tensor:
        """Evaluation scores [G, n_users, width] for candidate matrix `items` [n_users, width]."""
        all_items = self.item_vectors(torch.arange(self.features.shape[0], device=self.features.device),
                                      training=False)
        out = []
        for g in range(self.size):  # one [n_users, n_items] matrix at a time keeps memory flat
            out.append((self.params["user"][g, users] @ all_items[g].T).gather(1, items))
        return torch.stack(out)

    def state(self, g: int) -> State:
        state: State = {}
        for name, p in self.params.items():
            value = p[g].detach()
            state[name] = (value[0] if name.startswith("b") else value).cpu().numpy().copy()
        return state

    def keep(self, rows: list[int]) -> None:
        """Drop every grid point not in `rows` (e.g. once it has stopped early)."""
        index = torch.tensor(rows, device=self.features.device)
        for name, p in self.params.items():
            self.params[name] = p.detach().index_select(0, index).requires_grad_(True)
        self.dropout = self.dropout[index]
        self.generators = [self.generators[r] for r in rows]


# oneDNN (the CPU's bf16 matmuls) compiles a kernel per matrix shape and caches a limited number;
# the distinct items of a batch vary in number (ML-1M: ~2,250-2,400), so in bf16 the tower runs
# on a multiple of this many rows, the extra rows repeating the first item and never selected.
BF16_ROW_STEP = 64


def pad_rows(index: Tensor, step: int) -> Tensor:
    """`index` padded with its first entry to a multiple of `step` entries."""
    extra = -len(index) % step
    return torch.cat([index, index[:1].expand(extra)]) if extra and len(index) else index


def point_losses(logits: Tensor, labels: Tensor) -> Tensor:
    """Each grid point's mean BCE over the batch: [n_points]."""
    return F.binary_cross_entropy_with_logits(logits, labels.expand_as(logits), reduction="none").mean(1)


def stacked_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Sum over grid points of each point's mean BCE, so each point's gradient is its own loss's."""
    return point_losses(logits, labels).sum()


class StackedAdamW:
    """AdamW (decoupled weight decay, bias-corrected moments) over stacked parameters with one
    learning rate per grid point: torch.optim.AdamW's arithmetic (torch's optimizers take one lr per
    parameter group, and a grid point is a slice here). Each grid point's slices go through torch's
    fused AdamW kernel, one pass over memory instead of ~10 plain ops: the dense update of the
    6,040 x 128 user table each step made the optimizer a quarter of a bf16 epoch on the CPU. Fused,
    CPU epochs ran 2-10% faster (timed batch by batch in turn, on a shared machine) and an H200's
    9-point-stack epoch went from 1.56 to 1.21 s (fewer kernel launches). Plain ops where a torch
    build lacks the kernel."""

    def __init__(self, params: dict[str, Tensor], lr: list[float], weight_decay: float,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, fused: bool | None = None):
        device = next(iter(params.values())).device
        self.fused = FUSED_ADAMW if fused is None else fused and FUSED_ADAMW
        self.lr = list(lr)
        self.weight_decay, self.betas, self.eps = weight_decay, betas, eps
        self.exp_avg = {name: torch.zeros_like(p) for name, p in params.items()}
        self.exp_avg_sq = {name: torch.zeros_like(p) for name, p in params.items()}
        self.steps = 0
        self.step_count = torch.zeros((), dtype=torch.float32, device=device)  # the fused kernel reads it

    @torch.no_grad()
    def step(self, params: dict[str, Tensor]) -> None:
        self.steps += 1
        self.step_count.fill_(self.steps)
        names = list(params)
        for g, lr in enumerate(self.lr):
            update = _fused_adamw if self.fused else _plain_adamw
            update([params[n][g] for n in names], [params[n].grad[g] for n in names],
                   [self.exp_avg[n][g] for n in names], [self.exp_avg_sq[n][g] for n in names],
                   self.step_count, self.steps, lr, self.betas, self.weight_decay, self.eps)
        for p in params.values():
            p.grad = None

    def keep(self, rows: list[int]) -> None:
        index = torch.tensor(rows, device=self.step_count.device)
        self.lr = [self.lr[r] for r in rows]
        for store in (self.exp_avg, self.exp_avg_sq):
            for name, value in store.items():
                store[name] = value.index_select(0, index)


FUSED_ADAMW = hasattr(torch, "_fused_adamw_")


def _fused_adamw(params, grads, exp_avgs, exp_avg_sqs, step_count, steps, lr, betas, weight_decay, eps):
    torch._fused_adamw_(params, grads, exp_avgs, exp_avg_sqs, [], [step_count] * len(params), lr=lr,
                        beta1=betas[0], beta2=betas[1], weight_decay=weight_decay, eps=eps, amsgrad=False,
                        maximize=False)


def _plain_adamw(params, grads, exp_avgs, exp_avg_sqs, step_count, steps, lr, betas, weight_decay, eps):
    correction1, correction2_sqrt = 1 - betas[0] ** steps, (1 - betas[1] ** steps) ** 0.5
    for p, grad, m, v in zip(params, grads, exp_avgs, exp_avg_sqs):
        p.mul_(1 - lr * weight_decay)
        m.lerp_(grad, 1 - betas[0])
        v.mul_(betas[1]).addcmul_(grad, grad, value=1 - betas[1])
        p.sub_(m / (v.sqrt() / correction2_sqrt).add_(eps) * (lr / correction1))
