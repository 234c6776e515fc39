"""Built-in and user datasets, with a fixed held-out global test set.

A label task is a classification written for a causal LM: the model reads
`"{text}\\n{label_prefix}"` and the answer is `" {label}"`; accuracy scores each candidate
label by log-likelihood. Instruction records (prompt/response, chat turns) and multiple
choice go through a prompt template instead (gossipmed.learn.data, gossipmed.learn.templates),
and free text is scored by loss and perplexity. Train/test splits are made by a stable hash
of a record id, so the test set never depends on the seed or the partition (and the
base-model pretraining corpus can exclude it).
"""

from __future__ import annotations

from gossipmed.learn.datasets.core import Example, TaskDataset, load_dataset, stable_fraction

__all__ = ["Example", "TaskDataset", "load_dataset", "stable_fraction"]
