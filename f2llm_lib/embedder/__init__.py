"""Step 00, the embedder: a decoder backbone (``backbones``), F2LLM's tokenization with a forced EOS
(``tokenization``), last-token pooling (``pooling``), the encoder (``model``) and its sentence-transformers export
(``export``)."""
