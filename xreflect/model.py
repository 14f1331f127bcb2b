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

    def __init__(self, states: list[State], features: Tensor, dropout: list[float], seeds: list[int]):
        device = features.device
        self.features = features
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
        keep/scale factor in place: 3 passes over memory instead of 6."""
        noise = torch.empty_like(h)
        for row, gen in enumerate(self.generators):
            noise[row].uniform_(0.0, 1.0, generator=gen)
        keep = (1.0 - self.dropout).view(-1, 1, 1)
        return h * noise.lt_(keep).div_(keep)

    def item_vectors(self, items: Tensor, training: bool) -> Tensor:
        """[G, len(items), dim] item-tower outputs for `items` (each should be distinct)."""
        h = self.features[items]  # [M, d], shared by all grid points: [M, d] @ [G, d, out] broadcasts
        if training and self.layers == 1:
            h = self._dropout(h.expand(self.size, *h.shape))
        for layer in range(self.layers):
            if layer > 0:
                h = torch.relu(h)
                if training:
                    h = self._dropout(h)
            h = torch.matmul(h, self.params[f"w{layer}"]) + self.params[f"b{layer}"]
        return h

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


def stacked_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Sum over grid points of each point's mean BCE, so each point's gradient is its own loss's."""
    per_point = F.binary_cross_entropy_with_logits(logits, labels.expand_as(logits), reduction="none").mean(1)
    return per_point.sum()


class StackedAdamW:
    """AdamW (decoupled weight decay, bias-corrected moments) over stacked parameters with one
    learning rate per grid point; arithmetic follows torch.optim.AdamW's default implementation
    (torch's optimizers take one lr per parameter group, and a grid point is a slice here).
    torch's fused AdamW kernel applied per slice measured only 2-3% faster, so plain ops it is."""

    def __init__(self, params: dict[str, Tensor], lr: list[float], weight_decay: float,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        device = next(iter(params.values())).device
        self.lr = torch.tensor(lr, dtype=torch.float32, device=device)
        self.weight_decay, self.betas, self.eps = weight_decay, betas, eps
        self.exp_avg = {name: torch.zeros_like(p) for name, p in params.items()}
        self.exp_avg_sq = {name: torch.zeros_like(p) for name, p in params.items()}
        self.steps = 0

    @torch.no_grad()
    def step(self, params: dict[str, Tensor]) -> None:
        self.steps += 1
        beta1, beta2 = self.betas
        correction1 = 1 - beta1 ** self.steps
        correction2_sqrt = (1 - beta2 ** self.steps) ** 0.5
        for name, p in params.items():
            lr = self.lr.view(-1, *([1] * (p.dim() - 1)))  # one learning rate per grid point
            m, v, grad = self.exp_avg[name], self.exp_avg_sq[name], p.grad
            p.mul_(1 - lr * self.weight_decay)
            m.lerp_(grad, 1 - beta1)
            v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            denom = (v.sqrt() / correction2_sqrt).add_(self.eps)
            p.sub_(m / denom * (lr / correction1))
            p.grad = None

    def keep(self, rows: list[int]) -> None:
        index = torch.tensor(rows, device=self.lr.device)
        self.lr = self.lr[index]
        for store in (self.exp_avg, self.exp_avg_sq):
            for name, value in store.items():
                store[name] = value.index_select(0, index)
