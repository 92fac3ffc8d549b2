"""α schedules: which α each tensor gets.

A tensor belongs to a *layer* when its name holds a stack prefix followed by a layer index, as in
``model.layers.7.mlp.up_proj.weight`` (Llama, Mistral, Qwen, Gemma, Phi),
``transformer.h.7.attn.c_attn.weight`` (GPT-2, Falcon), ``gpt_neox.layers.7.`` (GPT-NeoX),
``vision_model.encoder.layers.7.`` (CLIP) or ``model.language_model.layers.7.`` (LLaVA). Each
stack (the text before the index) is counted on its own, so a vision tower and a language model
in one checkpoint each have their own L and their own layer groups.

Precedence for one tensor, first that applies: a regex rule; the per-layer list; the layer
groups; ``non_layer_alpha`` for tensors outside every stack; the uniform ``alpha``. When layer
α are given without ``non_layer_alpha``, tensors outside the layers (embeddings, final norm,
lm_head) take the first group's α — what mergekit does with a layer gradient.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..errors import PlanError, UsageError

LAYER_PATTERN = re.compile(r"^(?P<stack>(?:.*\.)?(?:layers|h|blocks|layer))\.(?P<index>\d+)\.")


@dataclass(frozen=True)
class LayerRef:
    stack: str
    index: int
    count: int  # layers in this stack (L)


def find_layer(name: str) -> tuple[str, int] | None:
    """``(stack, index)`` for a tensor inside a layer stack, else None."""
    m = LAYER_PATTERN.match(name)
    return (m.group("stack"), int(m.group("index"))) if m else None


def layer_table(names: list[str]) -> dict[str, LayerRef]:
    """LayerRef for every layer tensor; L per stack is its largest index + 1."""
    found = {n: find_layer(n) for n in names}
    counts: dict[str, int] = {}
    for hit in found.values():
        if hit:
            counts[hit[0]] = max(counts.get(hit[0], 0), hit[1] + 1)
    return {n: LayerRef(h[0], h[1], counts[h[0]]) for n, h in found.items() if h}


def group_of(index: int, layers: int, groups: int) -> int:
    """Group j of k contiguous groups, group j starting at floor(j*L/k).

    >>> [group_of(i, 32, 3) for i in (0, 9, 10, 20, 21, 31)]
    [0, 0, 1, 1, 2, 2]
    """
    j = 0
    while j + 1 < groups and (j + 1) * layers // groups <= index:
        j += 1
    return j


@dataclass(frozen=True)
class Rule:
    pattern: str
    alpha: float

    def matches(self, name: str) -> bool:
        return re.search(self.pattern, name) is not None


@dataclass(frozen=True)
class Schedule:
    """One α assignment over a model's tensors (one output model).

    Exactly one of ``alpha``, ``layer_alphas`` or ``per_layer`` is the base; ``rules`` and
    ``non_layer_alpha`` refine it.
    """

    alpha: float | None = None
    layer_alphas: tuple[float, ...] | None = None
    per_layer: tuple[float, ...] | None = None
    non_layer_alpha: float | None = None
    rules: tuple[Rule, ...] = field(default=())

    def __post_init__(self):
        bases = [x is not None for x in (self.alpha, self.layer_alphas, self.per_layer)]
        if sum(bases) != 1:
            raise UsageError("give exactly one of alpha, layer_alphas or per_layer")
        if self.layer_alphas is not None and not self.layer_alphas:
            raise UsageError("layer_alphas needs at least one value")

    @property
    def is_layerwise(self) -> bool:
        return self.alpha is None

    @property
    def label(self) -> str:
        """Directory name for this schedule among several outputs."""
        if self.alpha is not None:
            return f"alpha-{self.alpha:g}"
        values = self.layer_alphas if self.layer_alphas is not None else self.per_layer
        return "layers-" + "-".join(f"{a:g}" for a in values)

    def alpha_for(self, name: str, layer: LayerRef | None) -> tuple[float, str]:
        """``(alpha, why)`` for one tensor; ``why`` names the rule that decided."""
        for rule in self.rules:
            if rule.matches(name):
                return rule.alpha, f"rule /{rule.pattern}/"
        if layer is None:
            if self.non_layer_alpha is not None:
                return self.non_layer_alpha, "non-layer"
            if self.alpha is not None:
                return self.alpha, "uniform"
            first = self.layer_alphas[0] if self.layer_alphas else self.per_layer[0]
            return first, "non-layer (first layer α)"
        if self.alpha is not None:
            return self.alpha, "uniform"
        if self.per_layer is not None:
            if len(self.per_layer) != layer.count:
                raise PlanError(
                    f"per-layer list has {len(self.per_layer)} values but stack "
                    f"{layer.stack!r} has {layer.count} layers (tensor {name!r})"
                )
            return self.per_layer[layer.index], f"layer {layer.index}"
        j = group_of(layer.index, layer.count, len(self.layer_alphas))
        return self.layer_alphas[j], f"group {j}"
