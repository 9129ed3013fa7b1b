# How the host tools word a failure for their users: one sentence on one line, click's own usage
# errors included (click prints three lines: the usage, a hint and the error).


def sentence(s):
    """s as one sentence: a capital first letter and a full stop (or ? or !) at the end."""
    s = " ".join(str(s).split())
    if not s:
        return "Something went wrong."
    s = s[0].upper() + s[1:]
    return s if s[-1] in ".!?" else s + "."


def usage_sentence(e):
    """A click.UsageError as one sentence (its message, without click's usage lines)."""
    return sentence(e.format_message())
