"""Task instructions for MTEB(eng, v2), in F2LLM's (and Qwen3-Embedding's) query format.

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

BY_TASK = {
    "ArguAna": "Given a claim, find documents that refute the claim",
    "ArXivHierarchicalClusteringP2P": "Identify the main and secondary category of arXiv papers based on the titles "
                                      "and abstracts",
    "ArXivHierarchicalClusteringS2S": "Identify the main and secondary category of arXiv papers based on the titles",
    "AskUbuntuDupQuestions": "Retrieve duplicate questions from AskUbuntu forum",
    "BIOSSES": "Retrieve semantically similar text",
    "Banking77Classification": "Given an online banking query, find the corresponding intents",
    "BiorxivClusteringP2P.v2": "Identify the main category of Biorxiv papers based on the titles and abstracts",
    "CQADupstackGamingRetrieval": "Given a question, retrieve detailed question descriptions from Stackexchange "
                                  "that are duplicates to the given question",
    "CQADupstackUnixRetrieval": "Given a question, retrieve detailed question descriptions from Stackexchange that "
                                "are duplicates to the given question",
    "ClimateFEVERHardNegatives": "Given a claim about climate change, retrieve documents that support or refute "
                                 "the claim",
    "FEVERHardNegatives": "Given a claim, retrieve documents that support or refute the claim",
    "FiQA2018": "Given a financial question, retrieve user replies that best answer the question",
    "HotpotQAHardNegatives": "Given a multi-hop question, retrieve documents that can help answer the question",
    "ImdbClassification": "Classify the sentiment expressed in the given movie review text from the IMDB dataset",
    "MTOPDomainClassification": "Classify the intent domain of the given utterance in task-oriented conversation",
    "MassiveIntentClassification": "Given a user utterance as query, find the user intents",
    "MassiveScenarioClassification": "Given a user utterance as query, find the user scenarios",
    "MedrxivClusteringP2P.v2": "Identify the main category of Medrxiv papers based on the titles and abstracts",
    "MedrxivClusteringS2S.v2": "Identify the main category of Medrxiv papers based on the titles",
    "MindSmallReranking": "Retrieve relevant news articles based on user browsing history",
    "SCIDOCS": "Given a scientific paper title, retrieve paper abstracts that are cited by the given paper",
    "SICK-R": "Retrieve semantically similar text",
    "STS12": "Retrieve semantically similar text",
    "STS13": "Retrieve semantically similar text",
    "STS14": "Retrieve semantically similar text",
    "STS15": "Retrieve semantically similar text",
    "STS17": "Retrieve semantically similar text",
    "STS22.v2": "Retrieve semantically similar text",
    "STSBenchmark": "Retrieve semantically similar text",
    "SprintDuplicateQuestions": "Retrieve duplicate questions from Sprint forum",
    "StackExchangeClustering.v2": "Identify the topic or theme of StackExchange posts based on the titles",
    "StackExchangeClusteringP2P.v2": "Identify the topic or theme of StackExchange posts based on the given "
                                     "paragraphs",
    "TRECCOVID": "Given a query on COVID-19, retrieve documents that answer the query",
    "Touche2020Retrieval.v3": "Given a question, retrieve detailed and persuasive arguments that answer the question",
    "ToxicConversationsClassification": "Classify the given comments as either toxic or not toxic",
    "TweetSentimentExtractionClassification": "Classify the sentiment of a given tweet as either positive, negative, "
                                              "or neutral",
    "TwentyNewsgroupsClustering.v2": "Identify the topic or theme of the given news articles",
    "TwitterSemEval2015": "Retrieve tweets that are semantically similar to the given tweet",
    "TwitterURLCorpus": "Retrieve tweets that are semantically similar to the given tweet",
    "SummEvalSummarization.v2": "Given a news summary, retrieve other semantically similar summaries",
    "AmazonCounterfactualClassification": "Classify a given Amazon customer review text as either counterfactual or "
                                          "not-counterfactual",
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
