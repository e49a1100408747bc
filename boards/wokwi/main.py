# Frozen main of the Wokwi builds (boards/<board>/manifest_wokwi.py): the crypto self test.
import selftest  # noqa: F401  (runs on import and prints E2EE SELFTEST PASS/FAIL)
