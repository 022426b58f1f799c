"""In-process transformers backend: used by tests and as the fallback without vLLM.

Valid-action choice is enforced with a token trie in `prefix_allowed_tokens_fn`, so the
model can only emit one of the given strings followed by end-of-turn. A reply's JSON schema (tool calls,
`agent.constrain_tool_calls`) is enforced by xgrammar's transformers logits processor, the same grammar
engine vLLM's structured outputs use.
"""

from __future__ import annotations

from pathlib import Path

import torch

from r2w.backends.base import (
    ChoiceScores,
    Completion,
    SamplingParams,
    check_choices,
    check_tools,
    draw_seed,
    render_prompt,
)
from r2w.contracts import Message

MICRO_BATCH = 32


class TransformersBackend:
    name = "transformers"

    def __init__(
        self,
        model_path: str | Path,
        adapter_path: str | Path | None = None,
        dtype: str = "bfloat16",
        seed: int = 0,
    ) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, dtype))
        if adapter_path is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(adapter_path))
        # a GPU when torch sees one (the identity below leaves it out: same weights, same cache keys)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = model.to(self.device).eval()
        self.eos_id = self.tokenizer.convert_tokens_to_ids("<|im_end|>")
        if self.eos_id is None or self.eos_id == self.tokenizer.unk_token_id:
            self.eos_id = self.tokenizer.eos_token_id
        self.seed = seed
        self._calls = 0
        self.micro_batch = MICRO_BATCH
        self.model_path = Path(model_path)
        self.adapter_path = Path(adapter_path) if adapter_path is not None else None
        self.identity = f"transformers:{Path(model_path).resolve()}:{adapter_ref(adapter_path)}:{dtype}:{seed}"

    constrains_json = True  # `schemas`: each reply decoded to its JSON schema (xgrammar.contrib.hf)

    def close(self) -> None:
        """Nothing to stop: the model lives in this process (the GenerationBackend protocol asks for close)."""

    native_tools = True  # `tools`: per prompt, rendered by the model's chat template (r2w/tool_calls.py)

    def render(self, messages: list[Message], tools: list[dict] | None = None) -> str:
        return render_prompt(self.tokenizer, messages, tools)

    @torch.inference_mode()
    def generate(
        self,
        prompts: list[list[Message]],
        params: SamplingParams,
        choices: list[list[str]] | None = None,
        schemas: list[str | None] | None = None,
        tools: list[list[dict] | None] | None = None,
    ) -> list[Completion]:
        check_choices(prompts, choices)
        check_tools(prompts, tools)
        if schemas is not None and (len(schemas) != len(prompts) or (choices and any(schemas))):
            raise ValueError("schemas: one per prompt (or None), and not together with choices")
        texts = [self.render(p, tools[i] if tools else None) for i, p in enumerate(prompts)]
        rows = [(i, j) for i in range(len(texts)) for j in range(params.n)]
        if schemas:  # constrained rows first, so a micro-batch is all constrained or all free
            rows.sort(key=lambda row: schemas[row[0]] is None)
        outputs: dict[int, Completion] = {}
        self._calls += 1
        if params.draw is None:
            torch.manual_seed(params.seed + self.seed * 1_000_003 + self._calls)
        else:  # the batch's own draw: the same samples wherever and after whatever this batch is played
            torch.manual_seed(draw_seed(params, self.seed, self._calls))
        start = 0
        while start < len(rows):
            part = rows[start : start + self.micro_batch]
            if schemas:
                part = [r for r in part if (schemas[r[0]] is None) == (schemas[part[0][0]] is None)]
            batch_texts = [texts[i] for i, _ in part]
            batch_choices = [choices[i] for i, _ in part] if choices else None
            batch_schemas = [schemas[i] for i, _ in part] if schemas and schemas[part[0][0]] else None
            try:
                gen, prompt_lens = self._generate_batch(batch_texts, params, batch_choices, batch_schemas)
            except (torch.OutOfMemoryError, MemoryError):
                if self.micro_batch == 1:
                    raise
                self.micro_batch //= 2  # out of memory on a batch: retry it smaller
                continue
            start += len(part)
            for (i, _), (text, n_new), n_prompt in zip(part, gen, prompt_lens, strict=True):
                comp = outputs.setdefault(i, Completion(texts=[], prompt_tokens=n_prompt))
                comp.texts.append(text)
                comp.completion_tokens.append(n_new)
        return [outputs[i] for i in range(len(texts))]

    @torch.inference_mode()
    def score(self, prompts: list[list[Message]], choices: list[list[str]]) -> list[ChoiceScores]:
        """Total log-likelihood of each choice (+ end of turn) after its prompt.

        One forward pass per prompt: the prompt followed by every choice, with a tree-shaped attention
        mask (each choice sees the prompt and its own earlier tokens, never another choice) and positions
        that restart after the prompt. Scoring k actions then costs about one pass over prompt + all
        choice tokens, not k full passes (and no k-fold copy of the prompt's key/value cache).
        """
        check_choices(prompts, choices)
        tok = self.tokenizer
        results = []
        for messages, options in zip(prompts, choices, strict=True):
            if not options:
                raise ValueError("score: every prompt needs at least one choice")
            p_ids = tok(self.render(messages), add_special_tokens=False)["input_ids"]
            ids = [tok(o, add_special_tokens=False)["input_ids"] + [self.eos_id] for o in options]
            n_prompt, total = len(p_ids), len(p_ids) + sum(len(x) for x in ids)
            allowed = torch.zeros((total, total), dtype=torch.bool)
            allowed[:n_prompt, :n_prompt] = torch.ones(n_prompt, n_prompt, dtype=torch.bool).tril()
            positions, spans, start = list(range(n_prompt)), [], n_prompt
            for x in ids:
                end = start + len(x)
                allowed[start:end, :n_prompt] = True
                allowed[start:end, start:end] = torch.ones(len(x), len(x), dtype=torch.bool).tril()
                positions += range(n_prompt, n_prompt + len(x))
                spans.append(start)
                start = end
            dtype = next(self.model.parameters()).dtype
            mask = torch.zeros((1, 1, total, total), dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)
            input_ids = torch.tensor([p_ids + [t for x in ids for t in x]], device=self.device)
            # token t of a choice is predicted at the position before it: the prompt's last for t = 0;
            # only those rows go through the vocabulary head (`logits_to_keep`), in this order
            rows = [[n_prompt - 1, *range(begin, begin + len(x) - 1)] for x, begin in zip(ids, spans, strict=True)]
            logits = self.model(
                input_ids=input_ids,
                attention_mask=mask.to(self.device),
                position_ids=torch.tensor([positions], device=self.device),
                logits_to_keep=torch.tensor([r for row in rows for r in row], device=self.device),
            ).logits
            logp = torch.log_softmax(logits[0].float(), dim=-1).cpu()
            targets = torch.tensor([t for x in ids for t in x])  # kept row i predicts target i
            picked = logp[torch.arange(len(targets)), targets]
            totals = [float(part.sum()) for part in picked.split([len(x) for x in ids])]
            results.append(ChoiceScores(totals, n_prompt, [len(x) for x in ids]))
        return results

    def _grammar(self, schema: str):
        """The schema compiled for this tokenizer (cached: every turn of a task shares its tools)."""
        import xgrammar as xgr

        if not hasattr(self, "_grammars"):
            info = xgr.TokenizerInfo.from_huggingface(
                self.tokenizer, vocab_size=self.model.config.vocab_size, stop_token_ids=[self.eos_id]
            )
            self._compiler, self._grammars = xgr.GrammarCompiler(info), {}
        if schema not in self._grammars:  # compact JSON: free whitespace would let a weak model pad forever
            self._grammars[schema] = self._compiler.compile_json_schema(schema, any_whitespace=False)
        return self._grammars[schema]

    def _generate_batch(
        self,
        texts: list[str],
        params: SamplingParams,
        choices: list[list[str]] | None,
        schemas: list[str] | None = None,
    ) -> tuple[list[tuple[str, int]], list[int]]:
        tok = self.tokenizer
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        prompt_len = enc["input_ids"].shape[1]
        max_new = params.max_tokens
        kwargs: dict = {}
        if choices is not None:
            tries = [_ActionTrie(tok, actions, self.eos_id) for actions in choices]
            max_new = max(max_new, max(t.depth for t in tries) + 1)
            pad_id = tok.pad_token_id

            def allowed(batch_id: int, input_ids: torch.Tensor) -> list[int]:
                return tries[batch_id].allowed(input_ids[prompt_len:].tolist(), pad_id)

            kwargs["prefix_allowed_tokens_fn"] = allowed
        if schemas:
            from transformers import LogitsProcessorList
            from xgrammar.contrib.hf import LogitsProcessor

            # one matcher per row; a new processor per generate call, as xgrammar requires
            kwargs["logits_processor"] = LogitsProcessorList([LogitsProcessor([self._grammar(s) for s in schemas])])
        if params.temperature > 0:
            kwargs.update(do_sample=True, temperature=params.temperature, top_p=params.top_p)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if params.stop:  # stop strings end a row as in vLLM; the text is cut before them below
            kwargs.update(stop_strings=list(params.stop), tokenizer=tok)
        out = self.model.generate(
            **enc,
            max_new_tokens=max_new,
            eos_token_id=self.eos_id,
            pad_token_id=tok.pad_token_id,
            **kwargs,
        )
        results = []
        for row in out[:, prompt_len:].tolist():
            ids = []
            for t in row:
                if t == self.eos_id or t == tok.pad_token_id:
                    break
                ids.append(t)
            n_new = len(ids) + (1 if len(ids) < len(row) and row[len(ids)] == self.eos_id else 0)
            results.append((_cut_at_stop(tok.decode(ids, skip_special_tokens=True), params.stop).strip(), n_new))
        prompt_lens = enc["attention_mask"].sum(dim=1).tolist()
        return results, prompt_lens


def _cut_at_stop(text: str, stop: tuple[str, ...]) -> str:
    """The text before the first stop string (vLLM and OpenAI servers leave stop strings out)."""
    cuts = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    return text[: min(cuts)] if cuts else text


def adapter_ref(adapter_path: str | Path | None) -> str:
    """'<path>@<sha256[:12] of its files>' so episodes and cache keys name the adapter's weights, not just a folder."""
    if adapter_path is None:
        return "-"
    import hashlib

    root = Path(adapter_path)
    digest = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(f.relative_to(root)).encode())
        digest.update(f.read_bytes())
    return f"{root.resolve()}@{digest.hexdigest()[:12]}"


class _ActionTrie:
    """Token-level prefix tree over the valid actions, each ending in end-of-turn."""

    def __init__(self, tokenizer, actions: list[str], eos_id: int) -> None:
        self.root: dict[int, dict] = {}
        self.eos_id = eos_id
        self.depth = 1
        for action in actions:
            ids = tokenizer(action, add_special_tokens=False)["input_ids"] + [eos_id]
            self.depth = max(self.depth, len(ids))
            node = self.root
            for t in ids:
                node = node.setdefault(t, {})

    def allowed(self, generated: list[int], pad_id: int) -> list[int]:
        node = self.root
        for t in generated:
            if t == self.eos_id or t == pad_id:
                return [pad_id]
            node = node.get(t)
            if node is None:  # cannot happen under the constraint; end the turn safely
                return [self.eos_id]
        return list(node) or [self.eos_id]
