"""Composite layers: ``Sequential`` (the model) and ``ResidualBlock``.

Parameters of children are exposed under dotted names (``"3.W"``,
``"main.0.W"``); the dicts hold the very arrays the children own, so an
in-place optimiser step on ``model.params[k]`` updates the child.
"""

from __future__ import annotations

from .layers import Layer, ReLU

__all__ = ["Sequential", "ResidualBlock", "ReleasableCaches", "sub_dict", "leaf_shapes", "collect"]


class ReleasableCaches(list):
    """A forward pass's top-level caches that the backward may drop as it goes: ``Sequential.backward`` (and the
    direct rules' injection pass, ``rules.feedback``) calls ``release(i)`` once layer ``i``'s backward has run, so
    each layer's cache is freed then instead of when the step ends (issue 26: the step's peak memory), except the
    indices in ``keep``, which the rule reads afterwards.  Only ``Rule.step`` hands these out, with the indices
    the rule says it reads after the pass (``Rule.caches_read_after``); a plain list (the alignment tracker's BP
    pass, a rule that may read any cache afterwards) is never changed."""

    def __init__(self, caches, keep=()):
        super().__init__(caches)
        self.keep = frozenset(keep)

    def release(self, i: int) -> None:
        """Drop cache ``i`` (its layer's backward has run) unless the rule reads it afterwards."""
        if i not in self.keep:
            self[i] = None


def sub_dict(d, prefix):
    """Entries of ``d`` whose key starts with ``prefix + '.'``, prefix stripped."""
    if not d:
        return None
    p = prefix + "."
    out = {k[len(p) :]: v for k, v in d.items() if k.startswith(p)}
    return out or None


def leaf_shapes(model, in_shape):
    """``[(key, layer, in_shape, out_shape)]`` of every non-container layer of ``model`` in forward order, ``key``
    its parameter prefix (``"3"``, ``"2.main.0"``); shapes are per example.  A residual block's main branch and its
    shortcut both see the block's input; the block's output shape is the main branch's."""
    out = []

    def walk(layer, shape, prefix):
        if layer.kind == "sequential":
            for i, sub in enumerate(layer.layers):
                shape = walk(sub, shape, f"{prefix}{i}.")
            return shape
        if layer.kind == "residual":
            main = walk(layer.main, shape, prefix + "main.")
            walk(layer.shortcut, shape, prefix + "shortcut.")
            return main
        new = tuple(layer.output_shape(tuple(shape)))
        out.append((prefix[:-1], layer, tuple(shape), new))
        return new

    walk(model, tuple(in_shape), "")
    return out


def _gather(container: Sequential | ResidualBlock) -> None:
    """(Re)build a container's flat views of its children's parameters and buffers (``"3.W"``, ``"main.0.W"``)."""
    container.params = {f"{n}.{k}": v for n, c in container.children.items() for k, v in c.params.items()}
    container.buffers = {f"{n}.{k}": v for n, c in container.children.items() for k, v in c.buffers.items()}


class Sequential(Layer):
    """Layers applied in order.  ``forward`` returns ``(y, caches)``: one cache per layer.

    A whole model (``nn.build_model``, the golden vectors' models) also carries ``name``, ``input_shape`` (per
    example) and ``num_classes``, set by its builder."""

    kind = "sequential"
    name: str
    input_shape: tuple[int, ...]
    num_classes: int

    def __init__(self, layers):
        super().__init__()
        self.layers = list(layers)
        self.children = {str(i): l for i, l in enumerate(self.layers)}
        _gather(self)

    def __len__(self):
        return len(self.layers)

    def __getitem__(self, i):
        return self.layers[i]

    def forward(self, x, train=True):
        caches = []
        for layer in self.layers:
            x, c = layer.forward(x, train)
            caches.append(c)
        return x, caches

    def backward(self, dy, caches, need_dx=True, feedback=None, *, stop=0, signals=None):
        """BP's chain, eq. (2): ``delta a_{i-1} = (W_i^T delta a_i) o f'(a_{i-1})`` layer by layer, top down.

        The one chain of the engine (BP, SVD-BP, FA-type rules through ``rules.base.chain_updates``, and every
        nested container).  ``feedback``: flat weight key -> matrix used in place of that weight when the error
        is carried to the layer's input (FA-type rules; the parameter gradients stay the true local ones).
        ``stop``: the lowest layer run; the error is carried below it only when ``need_dx``.  ``signals``: if a
        dict, receives the error at the output of every layer run (``signals[i] = delta a_i``).  ``caches`` a
        ``ReleasableCaches``: ``caches[i]`` is dropped once layer ``i``'s backward has run.
        Returns ``(dx or None, grads)`` with grads keyed ``"<i>.<name>"``.
        """
        grads = {}
        release = isinstance(caches, ReleasableCaches)
        for i in range(len(self.layers) - 1, stop - 1, -1):
            if signals is not None:
                signals[i] = dy
            cache = caches[i]
            if release:
                caches.release(i)  # read by this layer's backward only (Rule.caches_read_after)
            dy, g = self.layers[i].backward(dy, cache, need_dx=need_dx or i > stop, feedback=sub_dict(feedback, str(i)))
            del cache  # not held over the layers below
            grads.update({f"{i}.{k}": v for k, v in g.items()})
        return dy, grads

    def named_params(self):
        """``[(key, array)]`` in forward order; the optimiser updates these arrays in place."""
        _gather(self)
        return list(self.params.items())

    def output_shape(self, in_shape):
        for layer in self.layers:
            in_shape = layer.output_shape(in_shape)
        return in_shape

    def __repr__(self):
        body = "\n".join(f"  ({i}) {l!r}".replace("\n", "\n  ") for i, l in enumerate(self.layers))
        return f"Sequential(\n{body}\n)"


class ResidualBlock(Layer):
    """``y = relu(main(x) + shortcut(x))``; an empty shortcut is the identity.

    ``children``: ``main`` and ``shortcut`` (both ``Sequential``) and the final ``relu``.
    """

    kind = "residual"

    def __init__(self, main, shortcut=None):
        super().__init__()
        self.main = main
        self.shortcut = shortcut if shortcut is not None else Sequential([])
        self.relu = ReLU()
        self.children = {"main": self.main, "shortcut": self.shortcut}
        _gather(self)

    def forward(self, x, train=True):
        h, c_main = self.main.forward(x, train)
        s, c_short = self.shortcut.forward(x, train)
        if h.shape != s.shape:
            raise ValueError(f"residual add: main branch {h.shape} != shortcut {s.shape}")
        y, c_relu = self.relu.forward(h + s)
        return y, (c_main, c_short, c_relu)

    def backward(self, dy, cache, need_dx=True, feedback=None):
        c_main, c_short, c_relu = cache
        dz, _ = self.relu.backward(dy, c_relu)
        # the residual add passes dz unchanged to both branches
        dx_main, g_main = self.main.backward(dz, c_main, need_dx, sub_dict(feedback, "main"))
        dx_short, g_short = self.shortcut.backward(dz, c_short, need_dx, sub_dict(feedback, "shortcut"))
        grads = {f"main.{k}": v for k, v in g_main.items()}
        grads.update({f"shortcut.{k}": v for k, v in g_short.items()})
        return (dx_main + dx_short if need_dx else None), grads

    def output_shape(self, in_shape):
        return self.main.output_shape(in_shape)

    def __repr__(self):
        return f"ResidualBlock(main={self.main!r}, shortcut={self.shortcut!r})"


def collect(layer):
    """Rebuild the flat param/buffer views of ``layer`` and of every container below it, bottom-up (after arrays or
    children were replaced: SVD conversion, rank cuts)."""
    children = getattr(layer, "children", None)
    if children:
        for c in children.values():
            collect(c)
        _gather(layer)
