"""The soft prompt: ``num_virtual_tokens`` trainable vectors in the model's embedding space.

"The model's embedding space" is what its embedding *module* outputs, the vectors its first layer
receives for real tokens; for most families that is a row of the embedding table, for Gemma the
row times sqrt(hidden). Every init below goes through the module (softprompt.core.decoder), so a
prompt initialised from a text starts exactly where that text as ordinary tokens would be.

Initialisation matters more than anything else for how fast prompt tuning learns (Lester et
al., 2021, section 3.2). PEFT's RANDOM draws N(0, 1) vectors whose norm (~sqrt(hidden)) is far
from real token embeddings (~3 for SmolLM2), which stalls learning; ``random`` here samples from
the embedding matrix's own per-dimension statistics instead, and ``peft-random`` keeps PEFT's
behaviour for comparisons.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import torch
from torch import nn
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from softprompt.core.adapter import load_adapter
from softprompt.core.config_types import check_types, shown
from softprompt.core.decoder import embed_tokens, run_slots
from softprompt.core.errors import ConfigError
from softprompt.core.files import require_dir
from softprompt.core.forms import Form, Prompt, virtual_tokens
from softprompt.core.frozen import FrozenModel


class Init(str, Enum):
    """``str`` subclass so configs round-trip through JSON and argparse unchanged."""

    RANDOM = "random"
    PEFT_RANDOM = "peft-random"
    TEXT = "text"
    VOCAB = "vocab"
    LABELS = "labels"
    FILE = "file"
    LIBRARY = "library"  # the best of a directory of earlier prompts on this task's validation (core.library)


# Lester et al. sample initial prompts from the 5,000 most common tokens; BPE vocabularies are
# ordered roughly by merge frequency, so the lowest ids are the most common ones.
FREQUENT_VOCAB = 5000

# Far beyond any useful prompt (Lester et al. use up to 150); the same bound adapter loading uses.
MAX_VIRTUAL_TOKENS = (1 << 24) - 1

# A residual MLP wider than this costs more than the model it steers.
MAX_REPARAM_HIDDEN = 1 << 16
# Vocabulary rows embedded at once when computing the embedding space's statistics.
VOCAB_CHUNK = 4096

# Maps our init names to PEFT's PromptTuningInit values for adapter_config.json.
PEFT_INIT_NAMES = {
    Init.RANDOM: "RANDOM",
    Init.PEFT_RANDOM: "RANDOM",
    Init.TEXT: "TEXT",
    Init.VOCAB: "SAMPLE_VOCAB",
    Init.LABELS: "SAMPLE_VOCAB",
    Init.FILE: "RANDOM",
    Init.LIBRARY: "RANDOM",
}


@dataclass(frozen=True)
class PromptConfig:
    num_virtual_tokens: int = field(default=8, metadata={"help": "number of virtual tokens (soft prompt length)"})
    init: Init = field(default=Init.TEXT, metadata={"help": "initialisation: " + ", ".join(i.value for i in Init)})
    init_text: str = field(
        default="Write a detailed role-play instruction for an AI assistant:",
        metadata={"help": "text whose token embeddings start the prompt (init=text)"},
    )
    init_labels: tuple[str, ...] = field(
        default=(), metadata={"help": "class label words (init=labels); taken from the data when empty"}
    )
    init_file: str | None = field(default=None, metadata={"help": "adapter directory to start from (init=file)"})
    init_library: str | None = field(
        default=None,
        metadata={
            "help": "directory of earlier prompts for one base model (init=library, or --init library:DIR): each "
            "that fits this prompt's form is scored on the validation rows, the best one starts training"
        },
    )
    reparam_hidden: int = field(
        default=0,
        metadata={
            "help": "width of a residual MLP that produces the prompt while training (P-tuning / residual prompt "
            "tuning); the saved adapter holds its output, a plain prompt. 0: train the vectors directly"
        },
    )
    form: Form = field(
        default=Form.VECTORS,
        metadata={
            "help": "vectors: virtual-token vectors (prompt tuning); kv: keys and values in every layer from the "
            "entry layer up (a deep prompt: prefix tuning, P-tuning v2)"
        },
    )
    entry_layer: int = field(
        default=0,
        metadata={
            "help": "decoder layer where the prompt enters (0: the input). Above 0, a late prompt: the layers below "
            "it see the init's own tokens, frozen, and their work on each row is computed once and reused"
        },
    )

    def __post_init__(self) -> None:
        if isinstance(self.init, str) and self.init.startswith("library:"):  # --init library:DIR
            object.__setattr__(self, "init_library", self.init.partition(":")[2] or None)
            object.__setattr__(self, "init", Init.LIBRARY)
        check_types(self)  # also turns init into an Init and init_labels into a tuple
        if not 1 <= self.num_virtual_tokens <= MAX_VIRTUAL_TOKENS:
            raise ConfigError(
                f"num_virtual_tokens must be between 1 and {MAX_VIRTUAL_TOKENS}, got {shown(self.num_virtual_tokens)}"
            )
        if self.init is Init.TEXT and not self.init_text.strip():
            raise ConfigError("init=text needs a non-empty init_text")
        if self.init is Init.FILE and not self.init_file:
            raise ConfigError("init=file needs init_file (an adapter directory)")
        if self.init is Init.LIBRARY and not self.init_library:
            raise ConfigError("init=library needs a library directory: --init library:DIR or --init-library DIR")
        if not 0 <= self.reparam_hidden <= MAX_REPARAM_HIDDEN:
            raise ConfigError(
                f"reparam_hidden must be between 0 and {MAX_REPARAM_HIDDEN}, got {shown(self.reparam_hidden)}"
            )
        if self.reparam_hidden and self.form is Form.KV:
            raise ConfigError("reparam_hidden produces vectors; a kv prompt trains its keys and values directly")
        if self.entry_layer < 0:
            raise ConfigError(f"entry_layer must be >= 0 (0 is the input), got {shown(self.entry_layer)}")

    def require_files(self) -> None:
        """The adapter to start from exists (init=file): checked before a model loads."""
        if self.init is Init.FILE and self.init_file:
            require_dir(self.init_file, "--init-file: adapter directory", ConfigError)
        if self.init is Init.LIBRARY and self.init_library:
            require_dir(self.init_library, "--init library: prompt library", ConfigError)

    def check_depth(self, base: FrozenModel) -> None:
        """The entry layer exists in this model (the config alone cannot know its depth)."""
        if self.entry_layer >= base.num_layers:
            raise ConfigError(
                f"--entry-layer {self.entry_layer} is outside {base.name!r}, whose decoder layers are "
                f"0 .. {base.num_layers - 1}"
            )


class SoftPrompt(nn.Module):
    """The trainable prompt: its weights, optionally produced by a residual MLP while training.

    ``vectors`` [P, H] or ``kv`` [layers - entry, 2, kv_heads, P, head_dim] weights, entering at
    layer ``entry`` (:mod:`softprompt.core.forms`); ``below`` [P, H] holds what the prompt slots
    see under that layer, a frozen buffer. With ``reparam_hidden`` the vectors are
    ``e + MLP(e)`` (Liu et al., 2021, P-tuning; Razdaibiedina et al., 2023, residual prompt
    tuning). The MLP's last layer starts at zero, so the prompt starts exactly at its
    initialisation. It depends on nothing but its own parameters, so inference needs only its
    output: :meth:`frozen`, which is what adapters store. Parameters are fp32 always and cast to
    the model's dtype where they are used.
    """

    def __init__(
        self,
        embedding: torch.Tensor,
        reparam_hidden: int = 0,
        *,
        form: Form = Form.VECTORS,
        entry: int = 0,
        below: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        checked = Prompt(Form(form), embedding.detach(), entry, None if below is None else below.detach())
        self.form, self.entry = checked.form, entry
        self.embedding = nn.Parameter(embedding.detach().clone().float())
        self.register_buffer("below", None if below is None else below.detach().clone().float(), persistent=False)
        self.mlp: nn.Sequential | None = None
        if reparam_hidden:
            if self.form is not Form.VECTORS:
                raise ConfigError("a residual MLP produces vectors; a kv prompt trains its keys and values directly")
            width = embedding.shape[1]
            last = nn.Linear(reparam_hidden, width)
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
            self.mlp = nn.Sequential(nn.Linear(width, reparam_hidden), nn.ReLU(), last).to(embedding.device)

    @classmethod
    def of(cls, value: Prompt) -> SoftPrompt:
        """A trainable copy of a prompt."""
        return cls(value.weights, form=value.form, entry=value.entry, below=value.below)

    @property
    def num_virtual_tokens(self) -> int:
        return virtual_tokens(self.form, self.embedding)

    def forward(self) -> torch.Tensor:
        """The weights as they are used: the vectors [P, H] that enter (through the MLP, if any), or the keys/values."""
        if self.mlp is None:
            return self.embedding
        return self.embedding + self.mlp(self.embedding)

    def value(self) -> Prompt:
        """The prompt as the core takes it, differentiable in the weights."""
        below = self.below
        assert below is None or isinstance(below, torch.Tensor)  # a buffer; narrows nn.Module's typing
        return Prompt(self.form, self(), self.entry, below)

    def frozen(self) -> Prompt:
        """The current prompt as plain detached tensors: what an adapter stores."""
        with torch.no_grad():
            return self.value().detach()

    def folded(self) -> torch.Tensor:
        """The current weights as a plain detached tensor (for vectors at the input: the whole prompt)."""
        return self.frozen().weights.clone()


def initial_prompt(config: PromptConfig, base: FrozenModel, generator: torch.Generator) -> Prompt:
    """The starting prompt of ``config``'s form and entry layer, as its init says.

    The init gives P input vectors (a text's embeddings, sampled tokens, an earlier prompt). For
    vectors at layer 0 they are the prompt. Otherwise the prompt starts as those vectors would
    be inside the model: their states entering the entry layer, or their keys/values in the
    layers from it up, and below the entry the slots keep them. So every form starts exactly
    where its init as a hard prompt (or as the earlier prompt) is; only ``peft-random`` keeps
    PEFT's N(0, 1) keys/values, for comparisons.
    """
    config.check_depth(base)
    if config.init is Init.LIBRARY:
        raise ConfigError("init=library is chosen before a prompt is built: softprompt.core.library.choose")
    entry = config.entry_layer
    resumed = _same_kind_file(config, base)
    if resumed is not None:
        return resumed
    inputs = initial_embedding(config, base, generator)  # [P, H]
    below = inputs if entry else None
    if config.form is Form.VECTORS:
        if entry == 0:
            return Prompt(Form.VECTORS, inputs)
        with torch.no_grad():
            states = run_slots(base, [inputs], 0, entry)[0][0]  # [P, H] entering the entry layer
        return Prompt(Form.VECTORS, states.float().cpu(), entry, below)
    if config.init is Init.PEFT_RANDOM:
        heads, dim = base.kv_shape
        shape = (base.num_layers - entry, 2, heads, config.num_virtual_tokens, dim)
        return Prompt(Form.KV, torch.randn(*shape, generator=generator), entry, below)
    with torch.no_grad():
        layers = run_slots(base, [inputs], 0, base.num_layers)[1][0]  # per layer (keys, values) [kv, P, d]
    weights = torch.stack([torch.stack([k, v]) for k, v in layers[entry:]]).float().cpu()
    return Prompt(Form.KV, weights, entry, below)


def _same_kind_file(config: PromptConfig, base: FrozenModel) -> Prompt | None:
    """init=file with an adapter of this very form and entry layer: continue from it as it is."""
    if config.init is not Init.FILE:
        return None
    loaded = load_adapter(Path(str(config.init_file))).prompt
    if (
        loaded.form is Form.VECTORS
        and loaded.entry == 0
        and not (config.form is Form.VECTORS and config.entry_layer == 0)
    ):
        return None  # a prompt-tuning adapter: its vectors are the inputs every other form starts from
    if (loaded.form, loaded.entry) != (config.form, config.entry_layer):
        raise ConfigError(
            f"init_file {config.init_file} is a {loaded.form.value} prompt entering at layer {loaded.entry}; start "
            f"a {config.form.value} prompt at layer {config.entry_layer} from a prompt-tuning adapter or one like it"
        )
    if loaded.num_virtual_tokens != config.num_virtual_tokens:
        raise ConfigError(
            f"init_file {config.init_file} holds {loaded.num_virtual_tokens} virtual tokens: "
            f"set num_virtual_tokens to {loaded.num_virtual_tokens}"
        )
    return loaded


def initial_embedding(config: PromptConfig, base: FrozenModel, generator: torch.Generator) -> torch.Tensor:
    """The starting prompt [num_virtual_tokens, hidden] for ``config.init``, in the model's embedding space."""
    n, hidden = config.num_virtual_tokens, base.hidden_size
    if config.init is Init.RANDOM:
        mean, std = vocab_statistics(base)
        return mean + std * torch.randn(n, hidden, generator=generator)
    if config.init is Init.PEFT_RANDOM:
        return torch.randn(n, hidden, generator=generator)
    if config.init is Init.TEXT:
        return embed_ids(base, _tile(_token_ids(base.tokenizer, config.init_text), n))
    if config.init is Init.VOCAB:
        return embed_ids(base, _sample_vocab(base, n, generator))
    if config.init is Init.LABELS:
        return embed_ids(base, _label_ids(config, base, generator))
    prompt = load_adapter(Path(str(config.init_file))).prompt
    if not prompt.is_input:
        raise ConfigError(f"init_file {config.init_file} is a {prompt.name}; its inputs are not plain vectors")
    loaded = prompt.weights
    if loaded.shape != (n, hidden):
        raise ConfigError(
            f"init_file {config.init_file} holds a prompt of shape {tuple(loaded.shape)}, "
            f"expected ({n}, {hidden}): set num_virtual_tokens to {loaded.shape[0]}"
        )
    return loaded


@torch.no_grad()
def embed_ids(base: FrozenModel, ids: list[int]) -> torch.Tensor:
    """[len(ids), H] fp32 on the CPU: the model's own input embeddings of these tokens."""
    return embed_tokens(base, torch.tensor(ids, dtype=torch.long, device=base.device)).float().cpu()


@torch.no_grad()
def vocab_statistics(base: FrozenModel) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean and standard deviation [H] of every token's input embedding."""
    vocab = base.embedding_weight.shape[0]
    total = torch.zeros(base.hidden_size, dtype=torch.float64)
    squares = torch.zeros_like(total)
    for start in range(0, vocab, VOCAB_CHUNK):
        rows = embed_ids(base, list(range(start, min(start + VOCAB_CHUNK, vocab)))).double()
        total += rows.sum(dim=0)
        squares += (rows * rows).sum(dim=0)
    mean = total / vocab
    variance = (squares - vocab * mean * mean) / max(vocab - 1, 1)  # unbiased, as torch.std
    return mean.float(), variance.clamp(min=0).sqrt().float()


def _token_ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ConfigError(f"init text {text!r} tokenizes to nothing")
    return list(ids)


def _tile(ids: list[int], n: int) -> list[int]:
    """Repeat or cut the ids to length n, as PEFT's TEXT init does."""
    return (ids * (n // len(ids) + 1))[:n]


def _sample_vocab(base: FrozenModel, n: int, generator: torch.Generator) -> list[int]:
    special = set(base.tokenizer.all_special_ids)
    vocab = base.embedding_weight.shape[0]
    pool = torch.tensor([i for i in range(min(FREQUENT_VOCAB, vocab)) if i not in special])
    return pool[torch.randint(len(pool), (n,), generator=generator)].tolist()


def _label_ids(config: PromptConfig, base: FrozenModel, generator: torch.Generator) -> list[int]:
    """The class-label words' tokens, then frequent vocabulary to fill the prompt."""
    if not config.init_labels:
        raise ConfigError("init=labels needs class label words (init_labels or a target column)")
    ids: list[int] = []
    for label in config.init_labels:
        ids.extend(_token_ids(base.tokenizer, " " + label))
    ids = ids[: config.num_virtual_tokens]
    rest = config.num_virtual_tokens - len(ids)
    return ids + (_sample_vocab(base, rest, generator) if rest else [])
