# A tiny deterministic PRNG (xorshift32) shared by the board and the host reference, so adapter
# initialisation and sample order are identical everywhere for the same seed.
_MASK = 0xFFFFFFFF


class XorShift32:
    def __init__(self, seed):
        self.state = (seed * 2654435761 + 1) & _MASK or 1

    def next_u32(self):
        x = self.state
        x ^= (x << 13) & _MASK
        x ^= x >> 17
        x ^= (x << 5) & _MASK
        self.state = x
        return x

    def uniform(self, low, high):
        # 24 random bits: exactly representable in float32 and in MicroPython's small ints
        return low + (high - low) * ((self.next_u32() >> 8) / 16777216.0)

    def below(self, n):
        return self.next_u32() % n

    def shuffle(self, items, n=None):
        # Fisher-Yates, in place, of items[:n] (all of them by default)
        for i in range((len(items) if n is None else n) - 1, 0, -1):
            j = self.below(i + 1)
            items[i], items[j] = items[j], items[i]
