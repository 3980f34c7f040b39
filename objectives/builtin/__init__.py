"""Build tools for the embedded models, beside the models they build.

``train_tiny`` trains ``builtin/tiny-sotu`` and ``tiny_corpus`` fixes its data
split and tokenizer. They run as ``python -m longrope.objectives.builtin.train_tiny``;
nothing in the runtime (scoring, search, runs) imports them (a test checks).
"""
