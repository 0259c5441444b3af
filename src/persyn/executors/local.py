"""The in-process executor: one backend per teacher and one student model, reused across stages.

Memory stays bounded: at most `max_resident_models` local models (transformers teachers and the student) are
loaded at once. Loading one more releases the least recently used, and the pipeline releases a teacher as soon
as no pending work of the stage needs it. A teacher that is also the student is one model, loaded once.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from typing import Any, Protocol

from persyn.backends.base import Backend, GenRequest, GenResult, make_backend
from persyn.config import RunConfig, StudentConfig, TeacherConfig
from persyn.scoring.student import student_learnability

ModelKey = tuple[str, str, str, bool]  # persyn.models.causal_lm_key


class Executor(Protocol):
    def generate(self, teacher: TeacherConfig, requests: list[GenRequest]) -> Iterator[GenResult]: ...

    def learnability(self, student: StudentConfig, prompts: list[str], responses: list[str]) -> Any: ...

    def release(self, teacher: TeacherConfig | None = None) -> None:
        """No pending work of the stage needs this teacher (None: the student) any more."""
        ...

    def close(self) -> None: ...


class LocalExecutor:
    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        self.backends: dict[str, Backend] = {}
        self.calls = 0  # backend generate() requests issued, for tests and the summary
        self.max_resident = cfg.max_resident_models
        self.resident: OrderedDict[ModelKey, None] = OrderedDict()  # least recently used first
        self.evictions = 0

    def backend(self, teacher: TeacherConfig) -> Backend:
        if teacher.name not in self.backends:
            self.backends[teacher.name] = make_backend(
                teacher, batch_size=teacher.batch_size or self.cfg.generation.batch_size,
                dtype=self.cfg.generation.dtype,  # the run default; the backend prefers teacher.dtype
            )
        return self.backends[teacher.name]

    # Resident models --------------------------------------------------------------------------------------------

    def teacher_key(self, teacher: TeacherConfig) -> ModelKey | None:
        """The model a local teacher loads (None for teachers that load none: recorded, openai)."""
        if teacher.backend != "transformers" or not teacher.model:
            return None
        from persyn.models import causal_lm_key

        return causal_lm_key(teacher.model, dtype=teacher.dtype or self.cfg.generation.dtype,
                             trust_remote_code=teacher.trust_remote_code)

    def student_key(self, student: StudentConfig | None = None) -> ModelKey | None:
        student = student or self.cfg.student
        if student is None or student.server_url:
            return None
        from persyn.models import causal_lm_key

        return causal_lm_key(student.model, dtype=student.dtype, trust_remote_code=student.trust_remote_code)

    def _use(self, key: ModelKey | None) -> None:
        """Mark `key` as in use, first releasing the least recently used models when it would exceed the cap."""
        if key is None:
            return
        if key in self.resident:
            self.resident.move_to_end(key)
            return
        while len(self.resident) >= self.max_resident:
            self._evict(next(iter(self.resident)))
        self.resident[key] = None

    def _evict(self, key: ModelKey) -> None:
        from persyn.models import unload

        self.resident.pop(key, None)
        for teacher in self.cfg.teachers:  # a backend holds its model: let go of it before the cache does
            if teacher.name in self.backends and self.teacher_key(teacher) == key:
                self.backends[teacher.name].close()
        unload(key)
        self.evictions += 1

    def release(self, teacher: TeacherConfig | None = None) -> None:
        key = self.student_key() if teacher is None else self.teacher_key(teacher)
        if key is None or key not in self.resident:
            return
        if teacher is not None and key == self.student_key() and self.cfg.reward.needs_learnability:
            return  # the student will need this very model to score the teacher's responses
        self._evict(key)

    def student_model(self, student: StudentConfig) -> Any:
        """The student's causal LM, shared with learnability scoring (and a teacher of the same model)."""
        from persyn.models import load_causal_lm

        self._use(self.student_key(student))
        model, _ = load_causal_lm(student.model, dtype=student.dtype, trust_remote_code=student.trust_remote_code)
        return model

    # Executor interface -----------------------------------------------------------------------------------------

    def generate(self, teacher: TeacherConfig, requests: list[GenRequest]) -> Iterator[GenResult]:
        self.calls += len(requests)
        if requests:
            self._use(self.teacher_key(teacher))
        yield from self.backend(teacher).generate(requests)

    def learnability(self, student: StudentConfig, prompts: list[str], responses: list[str]) -> Any:
        self._use(self.student_key(student))
        return student_learnability(student, prompts, responses)

    def close(self) -> None:
        for backend in self.backends.values():
            backend.close()
        self.backends.clear()
        for key in list(self.resident):  # the process may go on (a notebook, compare): free what this run held
            self._evict(key)
