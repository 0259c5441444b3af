"""Learnability (Eq. 1) of responses under the configured student: the local model or its server."""

from __future__ import annotations

from typing import TYPE_CHECKING

from persyn.config import StudentConfig

if TYPE_CHECKING:
    from persyn.scoring.learnability import LearnabilityResult


def student_learnability(student: StudentConfig, prompts: list[str], responses: list[str]) -> LearnabilityResult:
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
                               batch_tokens=student.batch_tokens, pack=student.pack, compile=student.compile)
