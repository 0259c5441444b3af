"""The in-process executor: one backend per teacher and one student model, reused across stages."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

from persyn.backends.base import Backend, GenRequest, GenResult, make_backend
from persyn.config import RunConfig, StudentConfig, TeacherConfig


class Executor(Protocol):
    def generate(self, teacher: TeacherConfig, requests: list[GenRequest]) -> Iterator[GenResult]: ...

    def learnability(self, student: StudentConfig, prompts: list[str], responses: list[str]) -> Any: ...

    def close(self) -> None: ...


class LocalExecutor:
    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        self.backends: dict[str, Backend] = {}
        self.calls = 0  # backend generate() requests issued, for tests and the summary

    def backend(self, teacher: TeacherConfig) -> Backend:
        if teacher.name not in self.backends:
            self.backends[teacher.name] = make_backend(
                teacher, batch_size=teacher.batch_size or self.cfg.generation.batch_size,
                dtype=self.cfg.generation.dtype,  # the run default; the backend prefers teacher.dtype
            )
        return self.backends[teacher.name]

    def generate(self, teacher: TeacherConfig, requests: list[GenRequest]) -> Iterator[GenResult]:
        self.calls += len(requests)
        yield from self.backend(teacher).generate(requests)

    def learnability(self, student: StudentConfig, prompts: list[str], responses: list[str]) -> Any:
        return student_learnability(student, prompts, responses)

    def close(self) -> None:
        for backend in self.backends.values():
            backend.close()
        self.backends.clear()


def student_learnability(student: StudentConfig, prompts: list[str], responses: list[str]) -> Any:
    """Eq. 1 with the local student (shared with teacher backends through the model cache) or a server."""
    from persyn.models import load_causal_lm
    from persyn.scoring.learnability import learnability_scores

    if student.server_url:
        from persyn.models import load_tokenizer
        from persyn.scoring.server_logprobs import student_server_learnability

        tokenizer = load_tokenizer(student.model, trust_remote_code=student.trust_remote_code)
        return student_server_learnability(student, tokenizer, prompts, responses)
    model, tokenizer = load_causal_lm(student.model, dtype=student.dtype, trust_remote_code=student.trust_remote_code)
    return learnability_scores(model, tokenizer, prompts, responses, chat_template=student.chat_template,
                               few_shot=student.few_shot, max_length=student.max_length,
                               batch_tokens=student.batch_tokens)
