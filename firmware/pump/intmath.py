# Integer helpers the core needs on both runtimes (MicroPython's math module has no gcd).
# Everything here works on Python ints only; nothing rounds silently.


def gcd(a, b):
    a = -a if a < 0 else a
    b = -b if b < 0 else b
    while b:
        a, b = b, a % b
    return a


def lcm(a, b):
    return a // gcd(a, b) * b


def ceil_div(a, b):
    # Exact ceiling of a / b for b > 0 without floats.
    return -((-a) // b)


def fmt_milli(value, scale=1000, places=3):
    """Render an integer in units of 1/scale as a decimal string, e.g. 350500 -> '350.500'."""
    neg = value < 0
    if neg:
        value = -value
    whole = value // scale
    frac = value % scale
    digits = str(frac)
    while len(digits) < places:
        digits = "0" + digits
    return ("-" if neg else "") + str(whole) + ("." + digits if places else "")
