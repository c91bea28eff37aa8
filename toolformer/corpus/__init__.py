"""The corpus: records (documents, texts, skips), readers by format, chunking. Which texts a tool annotates is
the tool's own rule (``Tool.select``, in ``toolformer/tools/``), not the reader's."""

from toolformer.corpus.chunking import chunk_document, texts_of
from toolformer.corpus.readers import (corpus_documents, embedded_ccnet_records, embedded_wikipedia_file,
                                       expand_paths, is_uri, json_records, read_documents, read_jsonl)
from toolformer.corpus.records import DATE_FIELDS, Document, SkipLog, TextChunk, ccnet_digest, record_to_document

__all__ = ["DATE_FIELDS", "Document", "SkipLog", "TextChunk", "ccnet_digest", "chunk_document", "corpus_documents",
           "embedded_ccnet_records", "embedded_wikipedia_file", "expand_paths", "is_uri", "json_records",
           "read_documents", "read_jsonl",
           "record_to_document", "texts_of"]
