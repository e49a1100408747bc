# Power-cut writer: stores record "session" over and over, each version a counter plus filler of
# a session's size; prints "acked <n>" after put() returned for version n. The test kills this
# process with SIGKILL at random instants. Usage: store_power_cut.py <directory> <start>
import sys

from e2ee.protocol.store import RecordStore


def main(directory, start):
    store = RecordStore(directory, "sessions", bytes(range(32)))
    filler = bytes(900)
    n = start
    while True:
        n += 1
        store.put("session", n.to_bytes(4, "big") + filler)
        print("acked", n)


main(sys.argv[1], int(sys.argv[2]))
