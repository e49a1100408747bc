# MicroPython entry point: micropython run_vectors.py <backend> <kind> <file> [<kind> <file> ...]
# Prints one PASS/FAIL line per file; exits 1 if any record failed.
import sys

import vector_checks
from e2ee import crypto


def main(argv):
    suite = crypto.load(argv[1])
    for backend in suite.resolve().values():
        if backend != argv[1]:
            print("FAIL backend %s fell back to %s" % (argv[1], backend))
            sys.exit(1)
    failed = False
    for i in range(2, len(argv), 2):
        checked, skipped, failures = vector_checks.run(suite, argv[i], argv[i + 1])
        status = "FAIL" if failures or not checked else "PASS"
        print("%s %s %s [%s]: %d checked, %d skipped, %d failed"
              % (status, argv[i], argv[i + 1], suite.name, checked, skipped, len(failures)))
        for line in failures[:20]:
            print("  " + line)
        failed = failed or status == "FAIL"
    sys.exit(1 if failed else 0)


main(sys.argv)
