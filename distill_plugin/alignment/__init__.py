"""Cross-tokenizer alignment: token bytes and each id's first byte (``tokens``), span alignment from
byte offsets (``spans``), the teacher's own chat-template rendering (``templates``) and the collator
that puts the teacher's tokens and the alignment in each batch (``collator``)."""

from .spans import Region, aligned_pairs
from .tokens import NextByteClasses, next_byte_classes, token_bytes

__all__ = ["NextByteClasses", "Region", "aligned_pairs", "next_byte_classes", "token_bytes"]
