"""Cross-tokenizer alignment: token bytes and the vocabulary agreement map (``tokens``), span
alignment from byte offsets (``spans``), the teacher's own chat-template rendering (``templates``) and
the collator that puts the teacher's tokens and the alignment in each batch (``collator``)."""

from .spans import Region, aligned_pairs
from .tokens import VocabMap, token_bytes, vocab_agreement

__all__ = ["Region", "VocabMap", "aligned_pairs", "token_bytes", "vocab_agreement"]
