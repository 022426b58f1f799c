"""BFCL (Berkeley Function Calling Leaderboard) through the chat seam, with BFCL's own data and checker.

Single-turn categories: simple_python, multiple, parallel, parallel_multiple. `reset` gives the
user question and the function docs as OpenAI tool schemas; `step(turn)` always ends the episode:
the assistant turn's tool calls are decoded as BFCL decodes an OpenAI function-calling model's
output ([{name: json.loads(arguments)}, ...]) and scored by BFCL's AST checker against
`possible_answer`. success = the checker's `valid`; score 1/0. A turn without calls, with
arguments that are not a JSON object, or that trips the checker is a failure, never a crash.

Splits: BFCL has no folds, so a task is in `test` when a SHA-256 of its id falls below
`test_fraction`, else in `train`. Membership depends only on the id, so the splits never share a
task and never change; within a split tasks keep BFCL's file order. TaskSpec.name is BFCL's id
(e.g. "simple_python_12"), TaskSpec.seed its position in the category's file.

Install: `pip install --no-deps bfcl-eval==2026.3.23`. Its metadata pins numpy==1.26.4,
filelock==3.20.0, tree_sitter==0.21.3 and about twenty provider SDKs (openai, anthropic, cohere,
mistralai, google-genai, qwen-agent, writer-sdk, boto3, sentence-transformers, faiss-cpu, ...)
that conflict with this stack, and none of them is needed to read the data or run the checker.
No extra dependency is installed: tree_sitter is NOT needed.

BFCL modules imported (nothing else of bfcl_eval is imported):
- `bfcl_eval.eval_checker.ast_eval.ast_checker` (`ast_checker`): the AST checker. Its module
  imports `bfcl_eval.constants.model_config`, BFCL's model registry, which imports every model
  handler and so every SDK. It only reads `MODEL_CONFIG_MAPPING[model].underscore_to_dot`, so the
  registry is replaced, for the duration of that one import, by a stub holding the entry of the
  OpenAI function-calling model named in `CHECKER_MODEL` (underscore_to_dot=True: OpenAI tool
  names cannot contain ".", so BFCL, and this adapter, expose "math.factorial" as
  "math_factorial"). The stub is removed from sys.modules right after.
- `bfcl_eval.constants.enums` (`Language`), `bfcl_eval.constants.type_mappings`
  (`GORILLA_TO_OPENAPI`): plain constants (the checker imports them too).
- the data files `bfcl_eval/data/BFCL_v4_<category>.json` and `data/possible_answer/` (JSON lines).
BFCL's tool conversion (`bfcl_eval.model_handler.utils.convert_to_tool`) is NOT imported: that
module imports the tree_sitter Java/JavaScript parsers and `bfcl_eval.utils`, whose
`constants.eval_config` creates result/, score/ and .file_locks/ directories next to the package
(in site-packages) at import. `to_openai_tools` below restates its OpenAI-completions branch;
tests/test_bfcl.py checks it equals `convert_to_tool` on every task of the four categories.
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import json
import re
import sys
import types
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

from bfcl_eval.constants.enums import Language
from bfcl_eval.constants.type_mappings import GORILLA_TO_OPENAPI

from r2w.contracts import Message, ToolCall, ToolFunction
from r2w.environment import ChatStart, TaskSpec, TurnResult

ENV_NAME = "bfcl"
SINGLE_TURN_CATEGORIES = ("simple_python", "multiple", "parallel", "parallel_multiple")
SPLITS = ("train", "test")
DATA_PREFIX = "BFCL_v4_"
# The BFCL model whose checker settings apply: an OpenAI function-calling model (dots -> underscores).
CHECKER_MODEL = "gpt-4o-2024-11-20-FC"
_REGISTRY = "bfcl_eval.constants.model_config"
_AST_CHECKER = "bfcl_eval.eval_checker.ast_eval.ast_checker"


def _import_ast_checker() -> types.ModuleType:
    """BFCL's AST checker module, imported with a one-entry stand-in for its SDK-laden model registry."""
    if _AST_CHECKER in sys.modules or _REGISTRY in sys.modules:  # already importable as BFCL wrote it
        return importlib.import_module(_AST_CHECKER)
    stub = types.ModuleType(_REGISTRY)
    stub.MODEL_CONFIG_MAPPING = {CHECKER_MODEL: types.SimpleNamespace(underscore_to_dot=True)}
    sys.modules[_REGISTRY] = stub
    try:
        return importlib.import_module(_AST_CHECKER)
    finally:
        if sys.modules.get(_REGISTRY) is stub:
            del sys.modules[_REGISTRY]


ast_checker = _import_ast_checker().ast_checker


# ---------------------------------------------------------------------------------------------- data


def _read_jsonl(*parts: str) -> list[dict]:
    path = resources.files("bfcl_eval").joinpath("data", *parts)
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@dataclass(frozen=True)
class BFCLEntry:
    id: str
    index: int  # position in the category's file
    question: list  # BFCL's turns: a list of lists of {"role", "content"}
    functions: list  # BFCL's function docs (Gorilla types: "dict", "float", ...)
    answer: list  # possible_answer's ground_truth: [{func_name: {param: [allowed values]}}]


@lru_cache(maxsize=8)
def load_category(category: str) -> tuple[BFCLEntry, ...]:
    if category not in SINGLE_TURN_CATEGORIES:
        raise ValueError(f"bfcl: unsupported category {category!r} (expected one of {list(SINGLE_TURN_CATEGORIES)})")
    prompts = _read_jsonl(f"{DATA_PREFIX}{category}.json")
    answers = {a["id"]: a["ground_truth"] for a in _read_jsonl("possible_answer", f"{DATA_PREFIX}{category}.json")}
    return tuple(
        BFCLEntry(id=p["id"], index=i, question=p["question"], functions=p["function"], answer=answers[p["id"]])
        for i, p in enumerate(prompts)
    )


def split_of(task_id: str, test_fraction: float) -> str:
    """'test' when the id's SHA-256 (as a fraction of 2**64) is below test_fraction, else 'train'."""
    h = int.from_bytes(hashlib.sha256(task_id.encode("utf-8")).digest()[:8], "big")
    return "test" if h / 2**64 < test_fraction else "train"


# ---------------------------------------------------------------------------------------------- conversion


def tool_name(name: str) -> str:
    """The OpenAI-safe name of a BFCL function, as BFCL's OpenAI handler makes it ("." -> "_")."""
    return re.sub(r"\.", "_", name)


def _cast_to_openai_type(properties: dict, mapping: dict) -> dict:
    """bfcl_eval.model_handler.utils._cast_to_openai_type (2026.3.23), restated: Gorilla types to JSON schema."""
    for key, value in properties.items():
        if "type" not in value:
            properties[key]["type"] = "string"
        else:
            var_type = value["type"]
            if mapping == GORILLA_TO_OPENAPI and var_type == "float":
                properties[key]["format"] = "float"
                properties[key]["description"] = properties[key].get("description", "") + " This is a float type value."
            properties[key]["type"] = mapping.get(var_type, "string")
        if properties[key]["type"] in ("array", "object"):
            if "properties" in properties[key]:
                properties[key]["properties"] = _cast_to_openai_type(properties[key]["properties"], mapping)
            elif "items" in properties[key]:
                items = properties[key]["items"]
                items["type"] = mapping[items["type"]]
                if items["type"] == "array" and "items" in items:
                    items["items"]["type"] = mapping[items["items"]["type"]]
                elif items["type"] == "object" and "properties" in items:
                    items["properties"] = _cast_to_openai_type(items["properties"], mapping)
    return properties


def to_openai_tools(functions: list[dict]) -> list[dict]:
    """BFCL function docs -> OpenAI tool schemas, as BFCL's `convert_to_tool(functions,
    GORILLA_TO_OPENAPI, ModelStyle.OPENAI_COMPLETIONS)` does."""
    tools = []
    for item in copy.deepcopy(functions):
        item["name"] = tool_name(item["name"])
        item["parameters"]["type"] = "object"
        properties = item["parameters"].get("properties", {})
        item["parameters"]["properties"] = _cast_to_openai_type(properties, GORILLA_TO_OPENAPI)
        tools.append({"type": "function", "function": item})
    return tools


def decode_calls(turn: Message) -> list[dict]:
    """An assistant turn's tool calls in BFCL's decoded form, as BFCL's OpenAI FC handler decodes:
    [{name: json.loads(arguments)}]. Raises ValueError on arguments that are not JSON."""
    out = []
    for call in turn.tool_calls:
        try:
            args = json.loads(call.function.arguments or "{}")
        except json.JSONDecodeError as exc:
            raise ValueError(f"arguments of {call.function.name!r} are not valid JSON: {exc}") from None
        out.append({call.function.name: args})
    return out


def is_decoded_format(decoded: object) -> bool:
    """bfcl_eval.utils.is_function_calling_format_output, restated (that module has import side effects)."""
    return isinstance(decoded, list) and all(
        isinstance(item, dict) and len(item) == 1 and isinstance(next(iter(item.values())), dict) for item in decoded
    )


def _first_allowed(options: list):
    """One value the checker accepts for a parameter: the first allowed non-"" one, nested options resolved."""
    value = next((v for v in options if v != ""), "")
    if isinstance(value, dict):  # a dict parameter: each key maps to its own list of allowed values
        return _gold_args(value, required=())
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):  # a list of such dicts
        return [_gold_args(d, required=()) for d in value]
    return value


def _gold_args(params: dict, required) -> dict:
    """Arguments the checker accepts: "" among the allowed values means "may be omitted", so such a
    parameter is left out unless the function doc requires it (BFCL's data has both cases)."""
    return {p: _first_allowed(opts) for p, opts in params.items() if opts and ("" not in opts or p in required)}


def gold_turn(entry: BFCLEntry) -> Message:
    """The assistant turn that calls the ground truth, in OpenAI tool-call form."""
    docs = {f["name"]: f for f in entry.functions}
    calls = []
    for i, call in enumerate(entry.answer):
        ((name, params),) = call.items()
        required = docs.get(name, {}).get("parameters", {}).get("required", [])
        args = _gold_args(params, required)
        calls.append(ToolCall(id=f"call_{i}", function=ToolFunction(name=tool_name(name), arguments=json.dumps(args))))
    return Message(role="assistant", content="", tool_calls=calls)


def check(entry: BFCLEntry, category: str, turn: Message) -> dict:
    """BFCL's verdict on one assistant turn: {"valid": bool, "error": [...], "error_type": str}."""
    if not turn.tool_calls:
        return {"valid": False, "error": ["No function call."], "error_type": "r2w:no_tool_calls"}
    try:
        decoded = decode_calls(turn)
    except ValueError as exc:
        return {"valid": False, "error": [str(exc)], "error_type": "ast_decoder:decoder_failed"}
    if not is_decoded_format(decoded):
        return {
            "valid": False,
            "error": ["Arguments must be a JSON object."],
            "error_type": "ast_decoder:decoder_wrong_output_format",
        }
    try:
        verdict = ast_checker(entry.functions, decoded, entry.answer, Language.PYTHON, category, CHECKER_MODEL)
    except Exception as exc:  # noqa: BLE001 - the checker on odd model output (unhashable values, ...) is a failure
        return {"valid": False, "error": [f"checker error: {exc!r}"], "error_type": "r2w:checker_exception"}
    return {
        "valid": bool(verdict.get("valid")),
        "error": verdict.get("error", []),
        "error_type": verdict.get("error_type", ""),
    }


# ---------------------------------------------------------------------------------------------- seam


class BFCLEnvironment:
    """One single-turn BFCL task at a time: reset gives question + tools, the first step ends it."""

    def __init__(self, category: str) -> None:
        self.category = category
        self._entries = {e.id: e for e in load_category(category)}
        self.entry: BFCLEntry | None = None
        self.verdict: dict | None = None

    def reset(self, task: TaskSpec) -> ChatStart:
        if task.name not in self._entries:
            raise ValueError(f"bfcl: no task {task.name!r} in category {self.category!r}")
        self.entry, self.verdict = self._entries[task.name], None
        messages = [Message(role=m["role"], content=m["content"]) for m in self.entry.question[0]]
        return ChatStart(messages=messages, tools=to_openai_tools(self.entry.functions))

    def step(self, turn: Message) -> TurnResult:
        if self.entry is None:
            raise RuntimeError("step() before reset()")
        if self.verdict is not None:
            raise RuntimeError("bfcl: the episode is over (single-turn tasks take one assistant turn)")
        self.verdict = check(self.entry, self.category, turn)
        ok = self.verdict["valid"]
        text = (
            "Correct: the calls match the expected ones."
            if ok
            else (f"Incorrect ({self.verdict['error_type']}): " + " ".join(str(e) for e in self.verdict["error"]))
        )
        return TurnResult(messages=[Message(role="user", content=text)], done=True, success=ok, score=float(ok))

    def gold_turn(self) -> Message:
        if self.entry is None:
            raise RuntimeError("gold_turn() before reset()")
        return gold_turn(self.entry)

    def close(self) -> None:
        self.entry, self.verdict = None, None


class BFCLFactory:
    """Fixed train/test splits of one BFCL category, by a hash of each task's id."""

    name = ENV_NAME
    kind = "chat"

    def __init__(self, category: str = "simple_python", test_fraction: float = 0.5) -> None:
        if not 0.0 < test_fraction < 1.0:
            raise ValueError(f"bfcl: test_fraction must be in (0, 1), got {test_fraction}")
        load_category(category)  # an unknown category fails here, not mid-rollout
        self.category = category
        self.test_fraction = test_fraction

    def split_entries(self, split: str) -> list[BFCLEntry]:
        if split not in SPLITS:
            raise ValueError(f"bfcl: split {split!r}: expected one of {list(SPLITS)}")
        return [e for e in load_category(self.category) if split_of(e.id, self.test_fraction) == split]

    def tasks(self, split: str, n: int, offset: int = 0) -> list[TaskSpec]:
        entries = self.split_entries(split)
        if offset + n > len(entries):
            raise ValueError(
                f"bfcl: {self.category} has {len(entries)} {split} tasks; asked for {n} from offset {offset}"
            )
        return [
            TaskSpec(env=self.name, category=self.category, split=split, seed=e.index, name=e.id)
            for e in entries[offset : offset + n]
        ]

    def make(self) -> BFCLEnvironment:
        return BFCLEnvironment(self.category)
