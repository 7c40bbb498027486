import torch

from f2llm_lib.embedder.model import F2LLMEncoder, format_query
from f2llm_lib.embedder.pooling import last_token_pool
from f2llm_lib.embedder.tokenization import pad_batch, tokenize_with_eos


def test_eos_is_last_even_after_truncation(tiny):
    _, tokenizer = tiny
    ids = tokenize_with_eos(tokenizer, ["word " * 500, "short", ""], max_length=16)
    assert [len(x) for x in ids][0] == 16
    assert all(x[-1] == tokenizer.eos_token_id for x in ids)
    assert ids[2] == [tokenizer.eos_token_id]  # an empty text still has its EOS to pool


def test_masks_come_from_lengths_even_when_eos_equals_pad(tiny):
    _, tokenizer = tiny
    ids = tokenize_with_eos(tokenizer, ["a longer sentence here", "hi"], max_length=32)
    # Pad with the EOS id, as a tokenizer with pad == EOS would: the mask must still keep every EOS.
    input_ids, mask, lengths = pad_batch(ids, pad_id=tokenizer.eos_token_id)
    assert mask.sum(1).tolist() == lengths.tolist()
    assert input_ids[1, lengths[1] - 1] == tokenizer.eos_token_id and mask[1, lengths[1] - 1] == 1


def test_right_and_left_padding_pool_the_same_token():
    hidden_right = torch.randn(2, 5, 3)
    lengths = torch.tensor([5, 2])
    hidden_left = torch.zeros_like(hidden_right)
    hidden_left[0] = hidden_right[0]
    hidden_left[1, 3:] = hidden_right[1, :2]
    torch.testing.assert_close(last_token_pool(hidden_right, lengths, "right"),
                               last_token_pool(hidden_left, lengths, "left"))


def test_batched_embedding_equals_one_at_a_time(tiny):
    encoder = F2LLMEncoder(*tiny)
    texts = ["one", "a much longer second text with many words in it", "three words here"]
    batched = encoder.encode(texts, batch_size=3, convert_to="torch")
    single = torch.cat([encoder.encode([t], convert_to="torch") for t in texts])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-4)


def test_query_instruction_format():
    assert format_query("q", "Find code") == "Instruct: Find code\nQuery: q"
    assert format_query("doc", None) == "doc"


def test_fast_path_gives_the_same_ids_as_the_tokenizer_call(tiny):
    from f2llm_lib.embedder.backbones import load_tokenizer
    from f2llm_lib.embedder.tokenization import tokenize_with_eos

    texts = ["def f(x):\n    return x", "  leading spaces and ünïcödé", "Instruct: find\nQuery: a b c", "x" * 300]
    for tokenizer in (tiny[1], load_tokenizer("tiny-qwen3-bpe")):
        slow = [ids[:63] + [tokenizer.eos_token_id] for ids in
                tokenizer(texts, add_special_tokens=False, truncation=False)["input_ids"]]
        assert tokenize_with_eos(tokenizer, texts, 64) == slow
