# Reader for the test-vector line format (tests/vectors/README.md), on CPython and MicroPython.
# One record per line: space-separated name=value fields, hex values except `id` and `result`.
# Lines starting with '#' are provenance comments. Streams: one line in memory at a time.
from binascii import unhexlify

_TEXT_FIELDS = ("id", "result")


# Yields one dict per record: hex fields decoded to bytes, text fields kept as str.
def records(path):
    with open(path) as f:
        for line in f:
            if line[0] in "#\r\n":
                continue
            rec = {}
            for field in line.split():
                name, _, value = field.partition("=")
                rec[name] = value if name in _TEXT_FIELDS else unhexlify(value)
            yield rec


# Writes records (dicts of str/bytes/int) in the same format; used by the CPython side to
# convert Wycheproof JSON and randomized cases for the device runner.
def write(path, header, recs):
    from binascii import hexlify

    with open(path, "w") as f:
        for line in header.splitlines():
            f.write("# " + line + "\n")
        for rec in recs:
            fields = []
            for name, value in rec.items():
                if isinstance(value, int) and not isinstance(value, bool):
                    value = value.to_bytes(2, "big")
                if not isinstance(value, str):
                    value = hexlify(value).decode()
                fields.append(name + "=" + value)
            f.write(" ".join(fields) + "\n")


# A numeric field: big-endian hex in files, or already an int in generated records.
def as_int(b):
    return b if isinstance(b, int) else int.from_bytes(b, "big")
