"""A flow a team shares one cache for: whoever runs a step first, everyone else hits.

    # local cache (the default): <datastore>/.metaflow/memoize-cache
    python s3_team_cache_flow.py run

    # shared cache on S3 (credentials from the usual AWS chain)
    export METAFLOW_MEMOIZE_ROOT=s3://my-bucket/memoize
    python s3_team_cache_flow.py run

The flow is the same either way: where the cache lives is configuration.
"""

from pathlib import Path

from metaflow import FlowSpec, Parameter, memoize, step
from text_utils import bag_of_words, tokenize

# A Path object is not plain data, so it stays out of the key: a string holding
# this absolute path would make keys differ between two checkouts of the repo.
# The file's content enters the key through depends_on below.
VOCABULARY_FILE = Path(__file__).resolve().with_name("vocabulary.txt")

SENTENCES = [
    "The team runs the flow.",
    "Every step of the flow writes data.",
    "A cache hit skips the step!",
    "Metaflow stores the model, the cache stores the step.",
]


class S3TeamCacheFlow(FlowSpec):
    copies = Parameter("copies", default=250, help="How many times to repeat the corpus")

    @memoize(ttl="30d")
    @step
    def start(self):
        self.documents = SENTENCES * self.copies
        self.next(self.featurize)

    # lock=True: when two teammates start the same computation at once, one runs
    # it and the other waits for its entry instead of computing it twice.
    # depends_on: the vocabulary file's content is part of the key.
    @memoize(ttl="30d", lock=True, depends_on=["vocabulary.txt"])
    @step
    def featurize(self):
        lines = VOCABULARY_FILE.read_text().splitlines()
        self.vocabulary = [line.strip() for line in lines if line.strip()]
        self.vectors = [bag_of_words(tokenize(doc), self.vocabulary) for doc in self.documents]
        self.next(self.summarize)

    @memoize(ttl="30d")
    @step
    def summarize(self):
        totals = [sum(column) for column in zip(*self.vectors)]
        self.word_counts = dict(zip(self.vocabulary, totals))
        self.next(self.end)

    @step
    def end(self):
        top = sorted(self.word_counts.items(), key=lambda kv: (-kv[1], kv[0]))[:3]
        print("documents:", len(self.vectors), "most frequent:", top)


if __name__ == "__main__":
    S3TeamCacheFlow()
