"""F2LLM's single-stage finetuning: ``python -m f2llm_lib.train --config cfg.yaml`` (same under accelerate launch)."""
