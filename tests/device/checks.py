# Helpers shared by the device check scripts (tests/device/check_*.py); runs on MicroPython and
# CPython, like the scripts that import it.


# A raises(error, fn, *args) function whose expected errors must also belong to `family` (a
# class or a tuple of classes: the typed error family of the module under test).
# raises(error, fn, *args) calls fn(*args), which must raise `error`, and returns the error's
# message (for checks that it names ids and sizes, never key bytes). Nothing raised, another
# exception class, or an error outside the family is an AssertionError saying so.
def raises_in(family):
    def raises(error, fn, *args):
        try:
            fn(*args)
        except error as e:
            if not isinstance(e, family):
                raise AssertionError("%s is not one of %s" % (type(e).__name__, _names(family)))
            return str(e)
        except Exception as e:  # the wrong class: name both
            raise AssertionError("expected %s, got %s: %s" % (error.__name__, type(e).__name__, e))
        raise AssertionError("expected %s, nothing raised by %s" % (error.__name__, fn))

    return raises


# raises(error, fn, *args) for any error class.
raises = raises_in(BaseException)


def _names(family):
    if isinstance(family, tuple):
        return ", ".join([c.__name__ for c in family])
    return family.__name__


# An in-memory socket for the MQTT client (client._bind): reads from `data`, keeps what is written.
class Stream:
    def __init__(self, data=b""):
        self.data = memoryview(bytes(data))
        self.out = bytearray()

    def readinto(self, mv):
        n = min(len(mv), len(self.data))
        mv[:n] = self.data[:n]
        self.data = self.data[n:]
        return n

    def read(self, n):
        got = bytes(self.data[:n])
        self.data = self.data[n:]
        return got

    def write(self, b):
        self.out += b
        return len(b)

    def close(self):
        pass
