"""Helpers the flow imports. They live next to the flow file, so @memoize follows
them: editing a function here invalidates the steps that call it."""


def tokenize(text):
    return [word.strip(".,!?").lower() for word in text.split() if word.strip(".,!?")]


def bag_of_words(tokens, vocabulary):
    return [tokens.count(word) for word in vocabulary]
