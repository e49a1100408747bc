# Constant-time comparison for MACs, tags and fingerprints.


# True when a and b hold the same bytes. Time depends only on the lengths (public),
# never on where the first difference sits.
def equal(a, b):
    if len(a) != len(b):
        return False
    diff = 0
    for i in range(len(a)):
        diff |= a[i] ^ b[i]
    return diff == 0
