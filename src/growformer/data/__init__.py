"""Training data: the default stdlib corpus, user data, a byte-level BPE tokenizer, cached token
arrays and reproducible batches. ``load_dataset`` is the entry point."""

from growformer.data.cache import cache_dir
from growformer.data.corpus import Corpus, DataError, Document, split_documents, stdlib_corpus
from growformer.data.dataset import DEFAULT_DATA, STDLIB_DATA, Dataset, load_dataset
from growformer.data.loader import TokenSplit
from growformer.data.tokenizer import EOT, Tokenizer, corpus_tokenizer, train_tokenizer
from growformer.data.user_data import DEFAULT_TEXT_FIELD

__all__ = [
    "DEFAULT_DATA",
    "DEFAULT_TEXT_FIELD",
    "EOT",
    "STDLIB_DATA",
    "Corpus",
    "DataError",
    "Dataset",
    "Document",
    "TokenSplit",
    "Tokenizer",
    "cache_dir",
    "corpus_tokenizer",
    "load_dataset",
    "split_documents",
    "stdlib_corpus",
    "train_tokenizer",
]
