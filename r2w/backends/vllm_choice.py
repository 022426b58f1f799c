"""Valid-action choice inside vLLM, as the same canonical-token trie the transformers backend uses.

vLLM's structured-output `choice` is a character-level grammar: every tokenization of an action
is allowed. Under sampling a 135M model then spends much of its mass on letter-by-letter
spellings (`t`,`a`,`k`,`e`... in 2 of 3 samples of a probe), so the sampled policy, the token
counts and the completions the student is later trained on differ from the transformers trie.
This per-request logits processor applies `hf._ActionTrie` (canonical tokenization of each
action + end-of-turn) in vLLM's worker, so both backends sample from the same constrained
distribution. It is loaded by FQCN (`LLM(logits_processors=[FQCN])` or the server's
`--logits-processors FQCN`); a request opts in with `extra_args` / `vllm_xargs`
`{"r2w_choices": [action, ...]}`.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING

import torch
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import AdapterLogitsProcessor

from r2w.backends.hf import _ActionTrie

if TYPE_CHECKING:
    from vllm.config import VllmConfig

CHOICES_ARG = "r2w_choices"
FQCN = "r2w.backends.vllm_choice:ActionChoiceLogitsProcessor"
_TRIE_CACHE = 4096


def end_of_turn_id(tokenizer) -> int:
    """ChatML's <|im_end|> when the vocabulary has it, else the tokenizer's eos (as hf.py does)."""
    eot = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if eot is None or eot == tokenizer.unk_token_id:
        eot = tokenizer.eos_token_id
    return eot


class _TrieMask:
    """Per-request callable: keep only the logits of tokens that continue a valid action."""

    def __init__(self, trie, pad_id: int) -> None:
        self.trie, self.pad_id = trie, pad_id

    def __call__(self, output_ids: list[int], logits: torch.Tensor) -> torch.Tensor:
        allowed = self.trie.allowed(list(output_ids), self.pad_id)
        masked = torch.full_like(logits, float("-inf"))
        index = torch.tensor(allowed, dtype=torch.long, device=logits.device)
        masked[index] = logits[index]
        return masked


class ActionChoiceLogitsProcessor(AdapterLogitsProcessor):
    """vLLM v1 logits processor: constrain requests that carry `r2w_choices` to those actions."""

    def __init__(self, vllm_config: VllmConfig, device: torch.device, is_pin_memory: bool) -> None:
        super().__init__(vllm_config, device, is_pin_memory)
        self._tokenizer_path = vllm_config.model_config.tokenizer
        self._tokenizer = None
        self._tries: OrderedDict[tuple[str, ...], object] = OrderedDict()

    @classmethod
    def validate_params(cls, params: SamplingParams) -> None:
        choices = (params.extra_args or {}).get(CHOICES_ARG)
        if choices is None:
            return
        if not isinstance(choices, list) or not choices or not all(isinstance(c, str) and c for c in choices):
            raise ValueError(f"{CHOICES_ARG}: expected a non-empty list of non-empty strings, got {choices!r}")

    def is_argmax_invariant(self) -> bool:
        return False

    def new_req_logits_processor(self, params: SamplingParams) -> _TrieMask | None:
        choices = (params.extra_args or {}).get(CHOICES_ARG)
        if not choices:
            return None
        tok = self._load_tokenizer()
        return _TrieMask(self._trie(tuple(choices)), tok.pad_token_id if tok.pad_token_id is not None else -1)

    def _load_tokenizer(self):
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self._tokenizer_path)
        return self._tokenizer

    def _trie(self, choices: tuple[str, ...]):

        trie = self._tries.get(choices)
        if trie is None:
            tok = self._load_tokenizer()
            trie = _ActionTrie(tok, list(choices), end_of_turn_id(tok))
            self._tries[choices] = trie
            if len(self._tries) > _TRIE_CACHE:
                self._tries.popitem(last=False)
        else:
            self._tries.move_to_end(choices)
        return trie
