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
  (same arithmetic as torch.optim.AdamW, which takes a single lr per parameter group). Its rows
  may also be several splits' grid points (placement.stack_splits), each row on its own split's batch.

`StackedTwoTower` can run the item tower's training matmuls in bf16 (train.precision, see
xreflect/training/precision.py); its parameters and everything else stay fp32.
"""
from __future__ import annotations

import hashlib
import math
from typing import Callable, Iterator

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from xreflect.training import cpu_kernels
from xreflect.training.random_bits import SplitMix64Streams

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
                 dtype: torch.dtype = torch.float32, row_split: list[int] | None = None):
        device = features.device
        self.features = features
        # Several splits stacked (placement.stack_splits): row g trains on split row_split[g]'s batches,
        # and logits() takes one batch per split ([S, B]); None: every row shares one batch ([B]).
        self.row_split = None if row_split is None else torch.tensor(row_split, device=device)
        self.row_split_list = None if row_split is None else list(row_split)  # read per batch: no device sync
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
        self._keep_rates()
        # One generator per grid point: its dropout masks do not depend on its neighbours.
        self.generators = []
        for seed in seeds:
            gen = torch.Generator(device=device)
            gen.manual_seed(seed)
            self.generators.append(gen)
        # The low-precision path's dropout bits on the CPU: each point's SplitMix64 stream, computed
        # by torch ops into the mask itself (xreflect/training/random_bits.py); on a GPU, torch's own
        # generators (Philox, one launch per row).
        self.bit_streams = SplitMix64Streams(seeds) if device.type == "cpu" else None
        self.blocked_pair_dots: bool | None = None  # None: where it pays (pair_dots); the same bits either way

    def _keep_rates(self) -> None:
        """The low-precision path's dropout (_keep_masks): each point keeps a unit with probability
        keep_units / 65536, its keep rate 1 - dropout rounded to 1/65536 (0.9 becomes 0.899994),
        and scales the kept units by 65536 / keep_units, so the expected activation is unchanged."""
        keep_units = torch.clamp(torch.round((1.0 - self.dropout.double()) * 65536), 1, 65536)
        self.keep_below = (keep_units - 32769).to(torch.int16)  # uniform int16 <= keep_below: kept
        self.keep_below_list = self.keep_below.tolist()  # read per batch by the C kernel: no tensor reads
        self.keep_scale = (65536 / keep_units).float()

    @property
    def size(self) -> int:
        return len(self.generators)

    def _dropout(self, h: Tensor, used: list[int] | None = None) -> Tensor:
        """Inverted dropout with each grid point's own rate and random stream; h is [G, M, width].
        With `used` (stacked splits), row g draws noise for its first used[g] items only, the
        items of its own split's batch, so its stream is the one it draws unstacked; the padding
        rows after them are dropped (their outputs are never read).
        The noise is drawn in place per grid point (no stacking copy) and turned into the
        keep/scale factor in place: 3 passes over memory instead of 6. fp32 training uses it; bf16
        training draws cheaper masks (_keep_masks, _low_precision_vectors)."""
        noise = torch.empty(h.shape, dtype=torch.float32, device=h.device)  # fp32 whatever h's dtype:
        for row, gen in enumerate(self.generators):                          # the same keep probability
            if used is None:
                noise[row].uniform_(0.0, 1.0, generator=gen)
            else:
                noise[row, :used[row]].uniform_(0.0, 1.0, generator=gen)
                noise[row, used[row]:].fill_(1.0)
        keep = (1.0 - self.dropout).view(-1, 1, 1)
        return h * noise.lt_(keep).div_(keep).to(h.dtype)

    def item_vectors(self, items: Tensor, training: bool, used: list[int] | None = None) -> Tensor:
        """[G, len(items), dim] fp32 item-tower outputs for `items` (each should be distinct),
        computed in the training dtype when `training`, else in fp32. With stacked splits,
        `items` is [S, M] (each split's batch items, padded) and `used` each row's unpadded count."""
        if training and self.dtype != torch.float32:
            return self._low_precision_vectors(items, used)
        dtype = self.dtype if training else torch.float32
        # [M, d], shared by all grid points: [M, d] @ [G, d, out] broadcasts
        h = feature_rows(self.train_features if training else self.features, items)
        if items.dim() == 2:  # [S, M, d]: each row its own split's items
            h = h.index_select(0, self.row_split)
        if training and self.layers == 1:
            h = self._dropout(h.expand(self.size, *h.shape[-2:]), used)
        for layer in range(self.layers):
            if layer > 0:
                h = torch.relu(h)
                if training:
                    h = self._dropout(h, used)
            # .to() is a no-op in fp32; in bf16 its backward hands fp32 gradients to the fp32 weights
            h = torch.matmul(h, self.params[f"w{layer}"].to(dtype)) + self.params[f"b{layer}"].to(dtype)
        return h.float()

    def _keep_masks(self, shape: tuple[int, ...], used: list[int] | None = None) -> Tensor:
        """Which units each grid point keeps, from its own random stream: int16 [G, *shape], all bits
        set (-1) where kept and 0 where dropped, to AND into a bf16 tensor's bits. 16 random bits
        per unit, drawn 64 at a time (int64 random_ is ~4x cheaper per unit than the fp32 uniform_
        of _dropout, and every step is an int16 op that torch vectorises, where bool masks and
        masked_fill_ are not): a unit is kept when its 16 bits, read as int16, are <= keep_below,
        with probability keep_units / 65536 (the keep rate rounded to 1/65536, see _keep_rates).
        The bits: on the CPU each point's SplitMix64 stream (random_bits.py), on a GPU torch's
        generators (Philox, one launch per row). With `used` (stacked splits), row g draws bits
        for its first used[g] items only."""
        if self.bit_streams is not None:
            return torch.stack([keep.clone() for keep in self._cpu_keep_rows(shape, used)])
        n = math.prod(shape)
        words = (torch.empty if used is None else torch.zeros)((self.size, -(-n // 4)), dtype=torch.int64,
                                                                device=self.features.device)
        for row, gen in enumerate(self.generators):  # with `used`: only the row's own split's items
            row_words = words[row] if used is None else words[row, :-(-used[row] * (n // shape[0]) // 4)]
            row_words.random_(-2 ** 63, None, generator=gen)  # all 64 bits
        bits = words.view(torch.int16)[:, :n].reshape(self.size, *shape)
        return _bits_to_keep(bits, self.keep_below.view(-1, *[1] * len(shape)))

    def _cpu_keep_rows(self, shape: tuple[int, ...], used: list[int] | None) -> Iterator[Tensor]:
        """Each point's keep mask in turn, made when it is asked for in one buffer that the next row
        overwrites (so a row's bits, its mask and the activations it is applied to stay in the cache)."""
        n = math.prod(shape)
        words = torch.empty(-(-n // 4), dtype=torch.int64)
        for row in range(self.size):  # with `used`: only the row's own split's items, the rest zero
            drawn = len(words) if used is None else -(-used[row] * (n // shape[0]) // 4)
            self.bit_streams.fill(row, words[:drawn])
            words[drawn:].zero_()
            yield _bits_to_keep(words.view(torch.int16), self.keep_below[row])[:n].view(shape)

    def _bias_relu_drop(self, pre: Tensor, bias: Tensor, used: list[int] | None) -> Tensor:
        """relu(pre + bias) with the units each point drops zeroed (their bits all cleared): a hidden
        layer's output in the low-precision path, pre [G, M, width], bias [G, 1, width]. On the CPU
        one point at a time, in one pass of the C kernel where it is built (cpu_kernels.py),
        else in torch ops, the same bits either way; on a GPU all points at once, one launch per op."""
        if self.bit_streams is None:
            out = torch.relu(pre + bias)
            return out.view(torch.int16).bitwise_and_(self._keep_masks(tuple(pre.shape[1:]), used)).view(out.dtype)
        out = torch.empty_like(pre)
        rows, width = pre.shape[1:]
        kernels = cpu_kernels.load() if width % 4 == 0 else None  # a word's 4 units in one row
        if kernels is None:
            for row, keep in enumerate(self._cpu_keep_rows((rows, width), used)):
                torch.add(pre[row], bias[row], out=out[row]).clamp_min_(0).view(torch.int16).bitwise_and_(keep)
            return out
        for row in range(self.size):
            drawn = rows if used is None else used[row]
            state = self.bit_streams.take(row, drawn * width // 4)
            cpu_kernels.bias_relu_drop(kernels, pre[row], bias[row], out[row], drawn, state,
                                       self.keep_below_list[row])
        return out

    def _low_precision_vectors(self, items: Tensor, used: list[int] | None = None) -> Tensor:
        """item_vectors(items, training=True) in a low-precision dtype (bf16), with fewer passes over
        the activations than the fp32 path (measured batch by batch, benchmarks/train_speed.py):
        - a hidden layer's bias, ReLU and dropout are one pass forward (_BiasReluDrop; on the CPU
          a C loop that draws the bits too) and one backward;
        - inverted dropout's 1/keep scale multiplies the next layer's weights (fp32, [in, out],
          before their cast) instead of the activations ([M, width]): the same product, one pass
          fewer, and no rounding of 1/keep to bf16;
        - the activations stay in the low dtype from the features to the last layer."""
        dtype = self.dtype
        h = feature_rows(self.train_features, items)  # [M, d] bf16, shared by every grid point
        if items.dim() == 2:  # stacked splits: [S, M, d] -> each row its own split's items
            h = h.index_select(0, self.row_split)
        elif self.size > 1:  # one copy per row, so the first layer's weight gradient needs no transposing copy
            h = h.expand(self.size, *h.shape).contiguous()
        if self.layers == 1:  # a linear tower drops input features (frozen: no gradient to carry)
            keep = self._keep_masks(tuple(h.shape[-2:]), used)
            h = torch.bitwise_and(h.view(torch.int16), keep).view(dtype)
        for layer in range(self.layers):
            w = self.params[f"w{layer}"]
            if layer > 0 or self.layers == 1:  # the units this layer reads went through dropout
                w = _ScaledCast.apply(w, self.keep_scale.view(-1, 1, 1), dtype)
            else:
                w = w.to(dtype)
            h, bias = torch.matmul(h, w), self.params[f"b{layer}"].to(dtype)
            if layer < self.layers - 1:  # a hidden layer: ReLU and dropout
                h = _BiasReluDrop.apply(h, bias, lambda pre, b: self._bias_relu_drop(pre, b, used))
            else:
                h = h + bias
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
        if self.row_split is not None:
            return self._split_logits(users, items)
        distinct, inverse = distinct_items(items, self.features.shape[0])
        distinct = pad_rows(distinct, self.row_step)
        return pair_dots(self.params["user"], self.item_vectors(distinct, training=True), users, inverse,
                         self.blocked_pair_dots)

    def _split_logits(self, users: Tensor, items: Tensor) -> Tensor:
        """logits() with stacked splits: users and items are [S, B], one batch per split (the
        splits' epochs have as many samples). Each split's distinct items go through the tower of
        its own rows, padded to one length, and each row reads its split's samples: what each row
        computes unstacked, in one launch per operation."""
        parts = [distinct_items(split_items, self.features.shape[0]) for split_items in items]
        distinct = [pad_rows(d, self.row_step) for d, _ in parts]
        width = max(len(d) for d in distinct)
        index = torch.stack([pad_rows(d, width) if len(d) < width else d for d in distinct])  # [S, M]
        used = [len(distinct[s]) for s in self.row_split_list]
        item_vec = self.item_vectors(index, training=True, used=used)                        # [G, M, dim]
        rows = torch.arange(self.size, device=items.device)[:, None]
        inverse = torch.stack([inv for _, inv in parts]).index_select(0, self.row_split)     # [G, B]
        dim = item_vec.shape[-1]
        item_vec = item_vec.reshape(-1, dim).index_select(0, (rows * width + inverse).reshape(-1))
        user = self.params["user"]
        user_rows = (rows * user.shape[1] + users.index_select(0, self.row_split)).reshape(-1)
        user_vec = user.reshape(-1, dim).index_select(0, user_rows)
        return (user_vec * item_vec).sum(-1).view(self.size, -1)

    def row_labels(self, labels: Tensor) -> Tensor:
        """A batch's labels per row: [B] as given, or with stacked splits [S, B] -> [G, B]."""
        return labels if self.row_split is None else labels.index_select(0, self.row_split)

    @torch.no_grad()
    def scores(self, users: Tensor, items: Tensor) -> Tensor:
        """Evaluation scores [G, n_users, width] for candidate matrix `items` [n_users, width]."""
        all_items = self.item_vectors(torch.arange(self.features.shape[0], device=self.features.device),
                                      training=False)
        out = []
        for g in range(self.size):  # one [n_users, n_items] matrix at a time keeps memory flat
            out.append((self.params["user"][g, users] @ all_items[g].T).gather(1, items))
        return torch.stack(out)

    @torch.no_grad()
    def scores_each(self, candidates: list[tuple[Tensor, Tensor]]) -> list[Tensor]:
        """Evaluation scores of each row g for its own candidates (users [n_users], items
        [n_users, width]) = candidates[g] (stacked splits: each row its split's validation)."""
        all_items = self.item_vectors(torch.arange(self.features.shape[0], device=self.features.device),
                                      training=False)
        return [(self.params["user"][g, users] @ all_items[g].T).gather(1, items)
                for g, (users, items) in enumerate(candidates)]

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
        self._keep_rates()
        if self.row_split is not None:
            self.row_split = self.row_split[index]
            self.row_split_list = [self.row_split_list[r] for r in rows]
        self.generators = [self.generators[r] for r in rows]
        if self.bit_streams is not None:
            self.bit_streams.keep(rows)


def distinct_items(items: Tensor, n_items: int) -> tuple[Tensor, Tensor]:
    """torch.unique(items, return_inverse=True) for item ids in [0, n_items): the distinct ids in
    ascending order and each entry's position among them, from a presence table and its running
    count instead of a sort (a 4,096-sample batch: 34 us against 114 us)."""
    present = torch.zeros(n_items, dtype=torch.int64, device=items.device).index_fill_(0, items, 1)
    distinct = present.nonzero().squeeze(1)
    return distinct, present.cumsum_(0).sub_(1).index_select(0, items)


def feature_rows(features: Tensor, items: Tensor) -> Tensor:
    """features[items] for items of any shape, by index_select: the same rows, and for a bf16
    batch's ~2,300 rows of 384 it took 24 us where advanced indexing took 200 us."""
    return features.index_select(0, items.reshape(-1)).view(*items.shape, features.shape[1])


def gather_rows(table: Tensor, index: Tensor) -> Tensor:
    """table[:, index] for a [G, N, dim] table: [G, len(index), dim], as one index_select along
    dim 0 of the [G * N, dim] view. The same values as table.index_select(1, index), and its
    backward the same sums in the same order, but both run 2-3x faster on the CPU (measured:
    index_add_ along dim 0 of a 2-d tensor takes torch's fast path, along dim 1 it does not).
    index_select's backward is an index_add_, far cheaper than advanced indexing's index_put_."""
    groups, _, dim = table.shape
    return table.reshape(-1, dim).index_select(0, _flat_rows(table, index)).view(groups, len(index), dim)


def pair_dots(users_table: Tensor, items_table: Tensor, users: Tensor, items: Tensor,
              blocked: bool | None = None) -> Tensor:
    """Each sample's score [G, B]: the dot product of row users[b] of users_table [G, N, dim] and
    row items[b] of items_table [G, M, dim], for every grid point g; the same bits blocked
    (_PairDots in blocks) or not. `blocked` None: where it pays, on a CPU thread of its own (a process
    of placement.workers on as many cores) with a product too large for its cache (see BLOCKED_MIN)."""
    if blocked is None:
        blocked = (users_table.device.type == "cpu" and torch.get_num_threads() == 1
                   and users_table.shape[0] * len(users) * users_table.shape[2] >= BLOCKED_MIN)
    if not blocked and users_table.device.type != "cpu":  # a GPU: autograd's own backward, fewest launches
        return (gather_rows(users_table, users) * gather_rows(items_table, items)).sum(-1)
    return _PairDots.apply(users_table, items_table, users, items, PAIR_BLOCK if blocked else None)


# Where blocking pays, measured forward and backward on 2 Intel Xeon cores (ratios of the unblocked
# to the blocked time): on one thread a [G, 4096, 128] product of 6 or 9 grid points (12-19 MB)
# 1.50x (the demo's 300 users x 398 items) and 1.07-1.10x (MovieLens-1M's 6,040 x 2,300), of one
# point (2 MB) 0.88-0.95x; on two threads 0.93-1.07x for 6-9 points, 0.83-0.85x for one.
BLOCKED_MIN = 1 << 21  # elements (8 MiB fp32) of the product [G, B, dim]
# Samples per block: a block's gathered rows (2,048 x 128 fp32, 1 MiB) stay in the core's cache
# between the gather, the product and the sum.
PAIR_BLOCK = 2048


class _PairDots(torch.autograd.Function):
    """(gather_rows(users_table, users) * gather_rows(items_table, items)).sum(-1) and its backward,
    whole or a block of samples at a time (`block`), with the same operations in the same order
    on every value: the same bits either way, forward and backward (each index_add_ adds its
    samples to a destination row in sample order). Unblocked, the batch's gathered rows and their
    products ([G, B, dim]; a 9-point demo batch: 19 MB each) go through memory; blocked, they stay
    in the cache. Nothing of [G, B, dim] size is kept for the backward, which on the CPU runs as one
    C loop where it is built (cpu_kernels.py: the same sums, without writing the products out)."""

    @staticmethod
    def forward(ctx, users_table: Tensor, items_table: Tensor, users: Tensor, items: Tensor,  # noqa: D102
                block: int | None) -> Tensor:
        groups, dim = users_table.shape[0], users_table.shape[2]
        user_rows, item_rows = _flat_rows(users_table, users), _flat_rows(items_table, items)
        flat_users, flat_items = users_table.reshape(-1, dim), items_table.reshape(-1, dim)
        out = torch.empty(len(user_rows), dtype=users_table.dtype, device=users_table.device)
        for part in batches(len(user_rows), block or len(user_rows)):
            product = flat_users.index_select(0, user_rows[part]).mul_(flat_items.index_select(0, item_rows[part]))
            torch.sum(product, -1, out=out[part])
        ctx.save_for_backward(users_table, items_table, user_rows, item_rows)
        ctx.block = block
        return out.view(groups, len(users))

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor, None, None, None]:  # noqa: D102
        users_table, items_table, user_rows, item_rows = ctx.saved_tensors
        dim = users_table.shape[2]
        flat_users, flat_items = users_table.reshape(-1, dim), items_table.reshape(-1, dim)
        kernels = (cpu_kernels.load() if users_table.device.type == "cpu" and users_table.dtype == torch.float32
                   else None)
        if kernels is not None:
            users_grad, items_grad = cpu_kernels.pair_dots_backward(kernels, flat_users, flat_items, user_rows,
                                                                    item_rows, grad.reshape(-1))
            return users_grad.view_as(users_table), items_grad.view_as(items_table), None, None, None
        users_grad, items_grad = torch.zeros_like(flat_users), torch.zeros_like(flat_items)
        grad = grad.reshape(-1, 1)
        for part in batches(len(user_rows), ctx.block or len(user_rows)):
            users_grad.index_add_(0, user_rows[part], grad[part] * flat_items.index_select(0, item_rows[part]))
            items_grad.index_add_(0, item_rows[part], grad[part] * flat_users.index_select(0, user_rows[part]))
        return users_grad.view_as(users_table), items_grad.view_as(items_table), None, None, None


def _flat_rows(table: Tensor, index: Tensor) -> Tensor:
    """Row numbers of table[:, index] in the [G * N, dim] view (as gather_rows reads them)."""
    return (torch.arange(table.shape[0], device=index.device)[:, None] * table.shape[1] + index).reshape(-1)


def batches(n: int, size: int) -> list[slice]:
    """Consecutive slices of `size` covering range(n) (an epoch's batches, a batch's blocks)."""
    return [slice(start, min(start + size, n)) for start in range(0, n, size)]


def _bits_to_keep(bits: Tensor, keep_below: Tensor) -> Tensor:
    """Random int16 bits -> the keep mask, in place: dropped (> keep_below) -> 1 -> 0, kept -> 0 -> -1
    (sub_; an int16 neg_ measured far slower on the CPU)."""
    return torch.gt(bits, keep_below, out=bits).sub_(1)


class _ScaledCast(torch.autograd.Function):
    """(w * scale).to(dtype) in one pass over the weights (the product is computed in fp32 and
    rounded once on writing), and its backward (grad * scale in fp32) in one more."""

    @staticmethod
    def forward(ctx, w: Tensor, scale: Tensor, dtype: torch.dtype) -> Tensor:  # noqa: D102
        ctx.save_for_backward(scale)
        return torch.mul(w, scale, out=torch.empty(w.shape, dtype=dtype, device=w.device))

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:  # noqa: D102
        scale, = ctx.saved_tensors
        return torch.mul(grad, scale, out=torch.empty(grad.shape, dtype=scale.dtype, device=grad.device)), None, None


class _BiasReluDrop(torch.autograd.Function):
    """relu(pre + bias) with the dropped units zeroed, computed by `forward_out(pre, bias)`
    (StackedTwoTower._bias_relu_drop), and its backward in one pass: the gradient flows where the
    output is > 0, ReLU's and the mask's condition at once; the bias's is its sum over the rows.
    The scale of inverted dropout is applied by the caller, to the next layer's weights."""

    @staticmethod
    def forward(ctx, pre: Tensor, bias: Tensor, forward_out: Callable[[Tensor, Tensor], Tensor]) -> Tensor:  # noqa: D102
        out = forward_out(pre, bias)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor, None]:  # noqa: D102
        out, = ctx.saved_tensors
        grad_pre = torch.ops.aten.threshold_backward(grad, out, 0)
        return grad_pre, grad_pre.sum(-2, keepdim=True), None


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
        update = _fused_adamw if self.fused else _plain_adamw
        # one call per distinct lr (3 for the paper's grid, not 9): the kernel updates each tensor
        # on its own, so grouping the grid points changes no value, only the number of launches
        for lr, rows in _rows_by_value(self.lr).items():
            update([params[n][g] for g in rows for n in names], [params[n].grad[g] for g in rows for n in names],
                   [self.exp_avg[n][g] for g in rows for n in names], [self.exp_avg_sq[n][g] for g in rows for n in names],
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


def _rows_by_value(values: list[float]) -> dict[float, list[int]]:
    rows: dict[float, list[int]] = {}
    for row, value in enumerate(values):
        rows.setdefault(value, []).append(row)
    return rows


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
