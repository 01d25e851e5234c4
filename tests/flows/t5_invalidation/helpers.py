def normalize(word):
    return word.strip().lower()


def clean_text(word):
    return normalize(word).upper()
