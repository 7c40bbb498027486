"""Our instructions for tasks F2LLM's registered mteb entry has no prompt for (the offline pycode tasks, local ones).

Queries are written ``Instruct: {instruction}\\nQuery: {text}``; for retrieval and reranking only the query side
gets the instruction, for symmetric tasks (STS, clustering, classification, pair classification, summarization)
every input does.
"""

from __future__ import annotations

SYMMETRIC_TYPES = {"STS", "Clustering", "Classification", "PairClassification", "Summarization",
                   "MultilabelClassification", "BitextMining"}

BY_TYPE = {
    "Retrieval": "Given a query, retrieve relevant documents that answer the query",
    "Reranking": "Given a query, retrieve relevant documents that answer the query",
    "STS": "Retrieve semantically similar text",
    "Clustering": "Identify the topic or theme of the given text",
    "Classification": "Classify the given text",
    "PairClassification": "Retrieve text that is semantically equivalent to the given text",
    "Summarization": "Given a news summary, retrieve other semantically similar summaries",
}

# The 41 tasks of MTEB(eng, v2) take the F2LLM authors' own registered prompts (see mteb_model.py); this table
# is only for tasks that registration has no prompt for.
BY_TASK = {
    # Offline tasks of this project.
    "PyCodeRetrieval": "Given a description of Python functionality, retrieve the code that implements it",
    "PyCodeClustering": "Identify the Python module that a docstring comes from",
    "PyCodeClassification": "Classify a Python docstring by the package it belongs to",
}


def instruction_for(task_name: str, task_type: str, is_query: bool) -> str | None:
    """The instruction for one input, or None (documents of asymmetric tasks get none)."""
    if task_type not in SYMMETRIC_TYPES and not is_query:
        return None
    return BY_TASK.get(task_name) or BY_TYPE.get(task_type) or BY_TYPE["Retrieval"]
