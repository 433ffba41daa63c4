"""Teachers: loading an online teacher model, and the sources that turn a batch into teacher signals."""

from .loading import check_same_tokenizer, load_teacher
from .sources import AlignedTeacherSource, CombinedSources, StoredTopKSource, TeacherModelSource, TeacherSource

__all__ = ["AlignedTeacherSource", "CombinedSources", "StoredTopKSource", "TeacherModelSource", "TeacherSource", "check_same_tokenizer", "load_teacher"]
