"""BFCL (Berkeley Function Calling Leaderboard) through the chat seam, with BFCL's own data and checker.

Single-turn categories: simple_python, multiple, parallel, parallel_multiple. `reset` gives the
user question and the function docs as OpenAI tool schemas; `step(turn)` always ends the episode:
the assistant turn's tool calls are decoded as BFCL decodes an OpenAI function-calling model's
output ([{name: json.loads(arguments)}, ...]) and scored by BFCL's AST checker against
`possible_answer`. success = the checker's `valid`; score 1/0. A turn without calls, with
arguments that are not a JSON object, or that trips the checker is a failure, never a crash.

Multi-turn: multi_turn_base runs against BFCL's executable Python backends (GorillaFileSystem,
TwitterAPI, ...), tool results come back as `tool` messages, and BFCL's multi_turn_checker scores
the whole conversation at the end (see BFCLMultiTurnEnvironment). The other multi-turn categories
(miss_func, miss_param, long_context) are not wired.

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
  (`GORILLA_TO_OPENAPI`), `bfcl_eval.constants.default_prompts` (`MAXIMUM_STEP_LIMIT`),
  `bfcl_eval.constants.executable_backend_config` (`MULTI_TURN_FUNC_DOC_FILE_MAPPING`): constants.
- `bfcl_eval.eval_checker.multi_turn_eval.multi_turn_utils` (`execute_multi_turn_func_call`) and
  `.multi_turn_checker` (`multi_turn_checker`), which import the backends under
  `bfcl_eval.eval_checker.multi_turn_eval.func_source_code` (the eight multi-turn ones need only
  mpmath, already in this stack; web_search/memory_* need SDKs and are never imported).
- the data files `bfcl_eval/data/BFCL_v4_<category>.json` and `data/possible_answer/` (JSON lines).
BFCL's tool conversion (`bfcl_eval.model_handler.utils.convert_to_tool`) is NOT imported: that
module imports the tree_sitter Java/JavaScript parsers and `bfcl_eval.utils`, whose
`constants.eval_config` creates result/, score/ and .file_locks/ directories next to the package
(in site-packages) at import. `to_openai_tools` below restates its OpenAI-completions branch;
tests/test_bfcl.py checks it equals `convert_to_tool` on every task of the four categories.
"""

from __future__ import annotations

import ast
import copy
import hashlib
import importlib
import json
import re
import sys
import types
import uuid
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources

from bfcl_eval.constants.default_prompts import MAXIMUM_STEP_LIMIT
from bfcl_eval.constants.enums import Language
from bfcl_eval.constants.executable_backend_config import MULTI_TURN_FUNC_DOC_FILE_MAPPING
from bfcl_eval.constants.type_mappings import GORILLA_TO_OPENAPI
from bfcl_eval.eval_checker.multi_turn_eval import multi_turn_utils
from bfcl_eval.eval_checker.multi_turn_eval.multi_turn_checker import multi_turn_checker

from r2w.contracts import Message, ToolCall, ToolFunction
from r2w.environment import ChatStart, TaskSpec, TurnResult

ENV_NAME = "bfcl"
SINGLE_TURN_CATEGORIES = ("simple_python", "multiple", "parallel", "parallel_multiple")
MULTI_TURN_CATEGORIES = ("multi_turn_base",)
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
    answer: list  # possible_answer's ground_truth: [{func_name: {param: [allowed values]}}]; multi-turn:
    # one list of call strings per user turn, e.g. [["cd(folder='document')", "mkdir(dir_name='temp')"], ...]
    initial_config: dict = field(default_factory=dict)  # multi-turn: each backend class's starting state
    involved_classes: tuple = ()  # multi-turn: the backend classes (e.g. "GorillaFileSystem")


@lru_cache(maxsize=8)
def load_category(category: str) -> tuple[BFCLEntry, ...]:
    known = SINGLE_TURN_CATEGORIES + MULTI_TURN_CATEGORIES
    if category not in known:
        raise ValueError(f"bfcl: unsupported category {category!r} (expected one of {list(known)})")
    prompts = _read_jsonl(f"{DATA_PREFIX}{category}.json")
    answers = {a["id"]: a["ground_truth"] for a in _read_jsonl("possible_answer", f"{DATA_PREFIX}{category}.json")}
    return tuple(
        BFCLEntry(
            id=p["id"],
            index=i,
            question=p["question"],
            functions=p["function"] if "function" in p else _multi_turn_docs(p["involved_classes"]),
            answer=answers[p["id"]],
            initial_config=p.get("initial_config", {}),
            involved_classes=tuple(p.get("involved_classes", ())),
        )
        for i, p in enumerate(prompts)
    )


def _multi_turn_docs(involved_classes: list[str]) -> list[dict]:
    """The function docs of a multi-turn task: every function of every involved backend class, as
    bfcl_eval.utils.populate_test_cases_with_predefined_functions adds them (`excluded_function` is
    not applied there either)."""
    docs = []
    for name in involved_classes:
        docs.extend(_read_jsonl("multi_turn_func_doc", MULTI_TURN_FUNC_DOC_FILE_MAPPING[name]))
    return docs


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


def to_execution_strings(turn: Message, names: dict[str, str]) -> list[str]:
    """An assistant turn's calls as BFCL's executable strings ("cd(folder='document')"), as
    bfcl_eval.model_handler.utils.convert_to_function_call writes them. Raises ValueError on
    arguments that are not a JSON object."""
    out = []
    for call in decode_calls(turn):
        ((name, args),) = call.items()
        if not isinstance(args, dict):
            raise ValueError(f"arguments of {name!r} are not a JSON object")
        out.append(f"{names.get(name, name)}({','.join(f'{k}={v!r}' for k, v in args.items())})")
    return out


class BFCLMultiTurnEnvironment:
    """A multi-turn BFCL task against BFCL's executable Python backends (func_source_code), driven as
    BFCL's own FC inference loop drives a model (base_handler.inference_multi_turn_FC):

    - an assistant turn with tool calls is executed (`execute_multi_turn_func_call`) and answered with
      one `tool` message per call; more than MAXIMUM_STEP_LIMIT (20) such steps force-quit the task;
    - a turn without calls (or whose calls do not decode) ends the current user turn, and the next
      user question follows; after the last one the episode ends and BFCL's `multi_turn_checker`
      re-executes the model's calls and the ground truth on fresh backends and compares state and
      responses after every turn. success = its `valid`; score 1/0.

    BFCL keeps backend instances in multi_turn_utils' module globals, keyed by model name and task
    id, so a second episode of the same task would inherit the first one's state: each episode uses
    its own name (`r2w_<uuid>`) and deletes its instances when it ends.
    """

    def __init__(self, category: str) -> None:
        self.category = category
        self._entries = {e.id: e for e in load_category(category)}
        self.entry: BFCLEntry | None = None
        self.verdict: dict | None = None

    def reset(self, task: TaskSpec) -> ChatStart:
        if task.name not in self._entries:
            raise ValueError(f"bfcl: no task {task.name!r} in category {self.category!r}")
        self._forget()
        self.entry, self.verdict = self._entries[task.name], None
        self._run = f"r2w_{uuid.uuid4().hex}"
        self._turn, self._steps = 0, 0
        self._calls: list[list[list[str]]] = [[]]  # per user turn, per step: call strings
        tools = to_openai_tools(self.entry.functions)
        self._names = {tool_name(f["name"]): f["name"] for f in self.entry.functions}
        return ChatStart(messages=self._user_messages(0), tools=tools)

    def _user_messages(self, turn: int) -> list[Message]:
        return [Message(role=m["role"], content=m["content"]) for m in self.entry.question[turn]]

    def step(self, turn: Message) -> TurnResult:
        if self.entry is None:
            raise RuntimeError("step() before reset()")
        if self.verdict is not None:
            raise RuntimeError("bfcl: the episode is over")
        calls: list[str] = []
        if turn.tool_calls:
            try:
                calls = to_execution_strings(turn, self._names)
            except ValueError:
                calls = []  # BFCL: a response that does not decode ends the user turn
        if calls:
            results, _ = multi_turn_utils.execute_multi_turn_func_call(
                calls, self.entry.initial_config, list(self.entry.involved_classes), self._run, self.entry.id
            )
            self._calls[-1].append(calls)
            self._steps += 1
            replies = [
                Message(role="tool", content=str(r), tool_call_id=c.id, name=c.function.name)
                for c, r in zip(turn.tool_calls, results, strict=True)
            ]
            if self._steps > MAXIMUM_STEP_LIMIT:
                return self._finish(replies, forced=True)
            return TurnResult(messages=replies)
        self._turn += 1
        if self._turn < len(self.entry.question):
            self._calls.append([])
            return TurnResult(messages=self._user_messages(self._turn))
        return self._finish([], forced=False)

    def _finish(self, messages: list[Message], forced: bool) -> TurnResult:
        if forced or len(self._calls) != len(self.entry.answer):
            self.verdict = {"valid": False, "error_type": "multi_turn:force_terminated"}
        else:
            prompt = {
                "id": self.entry.id,
                "initial_config": self.entry.initial_config,
                "involved_classes": list(self.entry.involved_classes),
            }
            try:
                self.verdict = multi_turn_checker(self._calls, self.entry.answer, prompt, self.category, self._run)
            except Exception as exc:  # noqa: BLE001 - a checker error on odd calls is a failure
                self.verdict = {"valid": False, "error_type": "r2w:checker_exception", "error_message": repr(exc)}
        self._forget()
        ok = bool(self.verdict.get("valid"))
        text = (
            "Task complete: the final state and responses match."
            if ok
            else (f"Task failed ({self.verdict.get('error_type', '')}): {self.verdict.get('error_message', '')}")
        )
        return TurnResult(
            messages=[*messages, Message(role="user", content=text)], done=True, success=ok, score=float(ok)
        )

    def gold_turns(self) -> list[list[Message]]:
        """The ground truth as assistant turns: per user turn, one turn calling all its calls, then a
        turn without calls that ends the user turn."""
        if self.entry is None:
            raise RuntimeError("gold_turns() before reset()")
        out = []
        for calls in self.entry.answer:
            turns = []
            if calls:
                tool_calls = [
                    ToolCall(id=f"call_{i}", function=ToolFunction(name=name, arguments=json.dumps(args)))
                    for i, (name, args) in enumerate(parse_call(c, self.entry.functions) for c in calls)
                ]
                turns.append(Message(role="assistant", content="", tool_calls=tool_calls))
            turns.append(Message(role="assistant", content="Done."))
            out.append(turns)
        return out

    def _forget(self) -> None:
        """Drop this episode's backend instances from BFCL's module globals."""
        run = getattr(self, "_run", None)
        if run:
            store = vars(multi_turn_utils)
            for key in [k for k in store if k.startswith(run)]:
                del store[key]

    def close(self) -> None:
        self._forget()
        self.entry, self.verdict = None, None


def parse_call(call: str, functions: list[dict]) -> tuple[str, dict]:
    """A ground-truth call string ("mv(source='a', destination='b')", "sort('f.pdf')") as (name,
    keyword arguments); positional arguments are named in the order of the function doc's properties."""
    node = ast.parse(call, mode="eval").body
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
        raise ValueError(f"not a function call: {call!r}")
    name = node.func.id
    order = list(next((f for f in functions if f["name"] == name), {}).get("parameters", {}).get("properties", {}))
    if len(node.args) > len(order):
        raise ValueError(f"{call!r}: more positional arguments than {name!r} has parameters")
    args = {order[k]: ast.literal_eval(a) for k, a in enumerate(node.args)}
    args.update({kw.arg: ast.literal_eval(kw.value) for kw in node.keywords})
    return name, args


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

    def make(self) -> BFCLEnvironment | BFCLMultiTurnEnvironment:
        if self.category in MULTI_TURN_CATEGORIES:
            return BFCLMultiTurnEnvironment(self.category)
        return BFCLEnvironment(self.category)
