"""The OpenAI Batch API route: write requests as a Batch input file, read the provider's results file.

Input lines:  {"custom_id": KEY, "method": "POST", "url": "/v1/chat/completions", "body": {...}}
Result lines: {"id": ..., "custom_id": KEY, "response": {"status_code": 200, "request_id": ..., "body": {...}},
               "error": null}
or, for a request the provider could not run, "response": null and "error": {"code": ..., "message": ...}.
vLLM's run-batch writes its failures as "error": {"error": {"message": ..., "type": ..., "code": 400}} (or a
plain string) beside a response without a body. Prices are the teacher's, less its batch_discount.
The request bodies are the ones the `openai` backend sends, so a batch and a live run of the same teacher give
interchangeable results. Store-agnostic: keys in, GenResults out.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from persyn.backends.base import GenRequest, GenResult
from persyn.config import TeacherConfig
from persyn.errors import ConfigError, InputError
from persyn.files import write_atomic
from persyn.remote.openai_backend import request_body, result_from_body, teacher_template, uses_completions

MAX_BATCH_REQUESTS = 50_000  # the Batch API's per-file limit


def export_batch(requests: list[GenRequest], teacher: Any, path: str | Path) -> int:
    """Write one Batch API line per distinct request key; returns the number of lines written."""
    if not teacher.model:
        raise ConfigError("the Batch API needs the model name", key=f"teachers.{teacher.name}.model")
    few_shot = uses_completions(teacher)
    template = None if few_shot else teacher_template(teacher)
    lines: list[str] = []
    seen: set[str] = set()
    for req in requests:
        if req.key in seen:
            continue
        seen.add(req.key)
        route, body = request_body(teacher, req, few_shot=few_shot, template=template)
        line = {"custom_id": req.key, "method": "POST", "url": f"/v1{route}", "body": body}
        lines.append(json.dumps(line, ensure_ascii=False))
    if len(lines) > MAX_BATCH_REQUESTS:
        raise InputError(f"the Batch API takes at most {MAX_BATCH_REQUESTS} requests per file, got {len(lines)}; "
                         "export the requests in parts", file=str(path))
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, "".join(f"{line}\n" for line in lines))
    return len(lines)


def import_batch_results(path: str | Path, *, teacher: Any = None) -> list[GenResult]:
    """Parse a Batch API output (or error) file; per-request failures become GenResults with text=None.
    `teacher` (a TeacherConfig) prices the results and judges empty and truncated replies; None: free, defaults."""
    teacher = teacher if teacher is not None else TeacherConfig(name="batch", backend="openai")
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError("batch results file not found", file=str(p)) from None
    except UnicodeDecodeError as exc:
        raise InputError(f"not UTF-8 (byte {exc.start})", file=str(p)) from None
    results: list[GenResult] = []
    seen: set[str] = set()
    for number, raw in enumerate(text.split("\n"), start=1):  # JSON Lines: not str.splitlines (U+2028)
        if not raw.strip():
            continue
        result = _parse_line(raw, teacher, file=str(p), line=number)
        if result.key in seen:
            raise InputError(f"custom_id {result.key!r} appears twice", file=str(p), line=number,
                             field="custom_id")
        seen.add(result.key)
        results.append(result)
    return results


def _error_text(error: Any) -> str:
    """One line from a batch error: OpenAI's {"code", "message"}, vLLM's {"error": {...}}, or a string."""
    if isinstance(error, dict) and isinstance(error.get("error"), dict | str):
        error = error["error"]
    if not isinstance(error, dict):
        return " ".join(str(error).split())
    code, message = error.get("code"), error.get("message")
    if message is None:
        return json.dumps(error, ensure_ascii=False)
    return f"{code}: {message}" if code is not None else str(message)


def _parse_line(raw: str, teacher: Any, *, file: str, line: int) -> GenResult:
    def bad(message: str, field: str | None = None) -> InputError:
        return InputError(message, file=file, line=line, field=field)

    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise bad(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(obj, dict):
        raise bad("a result line must be a JSON object")
    key = obj.get("custom_id")
    if not isinstance(key, str) or not key:
        raise bad("missing or not a string", "custom_id")
    error, response = obj.get("error"), obj.get("response")
    if error:
        return GenResult(key=key, text=None, error=_error_text(error))
    if not isinstance(response, dict):
        raise bad("a line needs a response object or an error", "response")
    status, body = response.get("status_code"), response.get("body")
    if not isinstance(status, int):
        raise bad("missing or not an integer", "response.status_code")
    if status != 200:
        detail = body.get("error") if isinstance(body, dict) else None
        message = detail.get("message") if isinstance(detail, dict) else detail
        return GenResult(key=key, text=None, error=f"HTTP {status}: {message or 'no error message'}")
    choices = body.get("choices") if isinstance(body, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise bad("a successful response needs a non-empty choices list", "response.body.choices")
    result = result_from_body(key, body, 0.0, teacher, batch=True)
    result.extra["request_id"] = response.get("request_id")
    return result
