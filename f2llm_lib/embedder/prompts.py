"""F2LLM's one query format, used by every path that embeds a query: the encoder, the tokenized training data, the
sentence-transformers export and the mining scorers.

F2LLM writes every query as ``Instruct: {task instruction}\\nQuery: {text}`` and gives documents no instruction
(F2LLM technical report, arXiv 2510.02294, section 3; the official code's data preparation in
codefuse-ai/CodeFuse-Embeddings, ``F2LLM/``). Evaluation on MTEB tasks uses the strings the authors registered in
mteb instead (see ``evaluation.mteb_model``), which follow the same template.
"""

from __future__ import annotations

QUERY_TEMPLATE = "Instruct: {instruction}\nQuery: {text}"


def query_prompt(instruction: str) -> str:
    """The text that goes before a query: a sentence-transformers ``prompt`` (``"Instruct: ...\\nQuery: "``)."""
    return QUERY_TEMPLATE.format(instruction=instruction, text="")


def format_query(text: str, instruction: str | None) -> str:
    """F2LLM's query format; documents (and ``instruction=None`` or ``""``) get no instruction.

    Example::

        >>> format_query("sort a list", "Given a question, retrieve code that answers it")
        'Instruct: Given a question, retrieve code that answers it\\nQuery: sort a list'
    """
    return text if not instruction else QUERY_TEMPLATE.format(instruction=instruction, text=text)
